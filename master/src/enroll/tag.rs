//! `swarm tag --host H --add T… --remove T…`: change an enrolled host's tags.

use pki::HostName;
use serde::Serialize;

use crate::cli::TagArgs;
use crate::error::{Error, Result};
use crate::home::Home;
use crate::inventory::Tag;
use crate::output::{self, outln};

#[derive(Serialize)]
struct TagDoc {
    host: String,
    tags: Vec<Tag>,
}

/// `swarm tag`.
pub(crate) fn tag(home: &Home, args: &TagArgs) -> Result<()> {
    let host = HostName::new(args.host.trim())?;
    let add = Tag::parse_all(&args.add)?;
    let remove = Tag::parse_all(&args.remove)?;
    if add.is_empty() && remove.is_empty() {
        return Err(Error::usage(
            "nothing to do: give --add TAG and/or --remove TAG",
        ));
    }
    if let Some(both) = add.iter().find(|t| remove.contains(t)) {
        return Err(Error::usage(format!(
            "tag {both} is both added and removed; give it once"
        )));
    }
    let mut inv = home.inventory()?;
    inv.retag(&host, &add, &remove)?;
    let tags = inv.find(&host)?.map(|r| r.tags).unwrap_or_default();
    let doc = TagDoc {
        host: host.to_string(),
        tags,
    };
    if args.json {
        return output::json(&doc);
    }
    if doc.tags.is_empty() {
        outln!("{host}: no tags")
    } else {
        let list: Vec<&str> = doc.tags.iter().map(Tag::as_str).collect();
        outln!("{host}: tags {}", list.join(", "))
    }
}
