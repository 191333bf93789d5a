//! Host tags: the [`Tag`] type (names like host names, checked once at the
//! edge), and tagging, untagging and listing the tags in use.

use std::collections::BTreeSet;
use std::fmt;

use pki::HostName;
use serde::Serialize;

use super::Inventory;
use crate::error::{Error, Result};

/// A host tag (`web`, `eu`, `canary`): the same rules as a host name,
/// compared as written.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub(crate) struct Tag(String);

impl Tag {
    /// Check `s` (trimmed): a usage error says what a tag may be.
    pub(crate) fn new(s: &str) -> Result<Tag> {
        let s = s.trim();
        HostName::new(s).map(|_| Tag(s.to_owned())).map_err(|_| {
            Error::usage(format!(
                "invalid tag {s:?}: a tag is a name like a host name ([A-Za-z0-9._-], starting with a letter or digit, at most 63 characters between dots)"
            ))
        })
    }

    /// Every tag of `raw`, checked, without duplicates, in order.
    pub(crate) fn parse_all(raw: &[String]) -> Result<Vec<Tag>> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for r in raw {
            let t = Tag::new(r)?;
            if seen.insert(t.clone()) {
                out.push(t);
            }
        }
        Ok(out)
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// Tags as stored in a row: space separated (a tag holds no space).
    pub(super) fn from_column(s: Option<String>) -> Vec<Tag> {
        let mut tags: Vec<Tag> = s
            .unwrap_or_default()
            .split_whitespace()
            .map(|t| Tag(t.to_owned()))
            .collect();
        tags.sort();
        tags.dedup();
        tags
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The tags column of a host query (`SELECT … , <this> AS tags FROM hosts`).
pub(super) const TAGS_COLUMN: &str =
    "(SELECT group_concat(tag, ' ') FROM host_tags WHERE host_tags.host_id = hosts.id) AS tags";

impl Inventory {
    /// Add `add` to and remove `remove` from the active host `host`, in one
    /// transaction; returns its tags afterwards.
    pub(crate) fn retag(&mut self, host: &HostName, add: &[Tag], remove: &[Tag]) -> Result<()> {
        let path = self.path.clone();
        let db = |source| Error::Db {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(db)?;
        let id: Option<i64> = tx
            .query_row(
                "SELECT id FROM hosts WHERE name = ?1 AND status = 'active'",
                [host.as_str()],
                |r| r.get(0),
            )
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })
            .map_err(db)?;
        let Some(id) = id else {
            return Err(Error::usage(format!(
                "host {host} is not an active host (see `swarm list`)"
            )));
        };
        for t in remove {
            tx.execute(
                "DELETE FROM host_tags WHERE host_id = ?1 AND tag = ?2",
                rusqlite::params![id, t.as_str()],
            )
            .map_err(db)?;
        }
        insert_tags(&tx, id, add).map_err(db)?;
        tx.commit().map_err(db)
    }

    /// Every tag some active host carries, sorted.
    pub(crate) fn known_tags(&self) -> Result<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT DISTINCT tag FROM host_tags JOIN hosts ON hosts.id = host_tags.host_id
                 WHERE hosts.status = 'active' ORDER BY tag",
            )
            .map_err(|e| self.db(e))?;
        let tags = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(|e| self.db(e))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.db(e))?;
        Ok(tags)
    }
}

/// Tag host row `id` with `tags` (ones it has already are kept).
pub(super) fn insert_tags(
    conn: &rusqlite::Connection,
    id: i64,
    tags: &[Tag],
) -> rusqlite::Result<()> {
    for t in tags {
        conn.execute(
            "INSERT OR IGNORE INTO host_tags (host_id, tag) VALUES (?1, ?2)",
            rusqlite::params![id, t.as_str()],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_names() {
        assert_eq!(Tag::new(" web ").unwrap().as_str(), "web");
        for bad in ["", "-x", "a b", "a,b", "é"] {
            assert!(Tag::new(bad).is_err(), "{bad:?}");
        }
        let all = Tag::parse_all(&["eu".into(), "web".into(), "eu".into()]).unwrap();
        assert_eq!(all, [Tag::new("eu").unwrap(), Tag::new("web").unwrap()]);
        assert_eq!(
            Tag::from_column(Some("web eu web".into())),
            [Tag::new("eu").unwrap(), Tag::new("web").unwrap()]
        );
        assert!(Tag::from_column(None).is_empty());
    }
}
