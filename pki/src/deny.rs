//! The certificate deny list (issue 15): fingerprints of certificates the
//! master revoked (a decommissioned host's, a removed operator's). The
//! master pushes the whole list with `POST /deny`; `serve` refuses every
//! request of a denied peer with 403, checked per request so a list that
//! arrives while a connection is open applies to it at once.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use crate::{Fingerprint, PkiError};

/// The most fingerprints a list may hold (a cap on what a body may make
/// the updater keep).
pub const MAX_DENIED: usize = 100_000;

/// `POST /deny` body and the persisted `deny.json`: the whole list and its
/// version (the master's, only growing).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DenyBody {
    pub version: i64,
    pub fingerprints: Vec<String>,
}

impl DenyBody {
    /// The fingerprints, checked: each 64 hex digits, at most [`MAX_DENIED`].
    pub fn parse(&self) -> Result<HashSet<Fingerprint>, PkiError> {
        if self.fingerprints.len() > MAX_DENIED {
            return Err(PkiError::Parse(format!(
                "deny list of {} entries is over the cap of {MAX_DENIED}",
                self.fingerprints.len()
            )));
        }
        if self.version < 0 {
            return Err(PkiError::Parse(format!(
                "deny list version {} is negative",
                self.version
            )));
        }
        self.fingerprints.iter().map(|f| f.parse()).collect()
    }
}

#[derive(Debug, Default)]
struct Inner {
    version: i64,
    set: HashSet<Fingerprint>,
}

/// A shared, replaceable deny list (cheap to clone; all clones see one list).
#[derive(Clone, Debug, Default)]
pub struct DenyList(Arc<RwLock<Inner>>);

impl DenyList {
    /// A list holding `body` (checked).
    pub fn from_body(body: &DenyBody) -> Result<DenyList, PkiError> {
        let list = DenyList::default();
        list.replace(body.version, body.parse()?);
        Ok(list)
    }

    pub fn contains(&self, fp: &Fingerprint) -> bool {
        self.read(|i| i.set.contains(fp))
    }

    pub fn version(&self) -> i64 {
        self.read(|i| i.version)
    }

    /// Replace the whole list.
    pub fn replace(&self, version: i64, set: HashSet<Fingerprint>) {
        // A poisoned lock only means a panic elsewhere mid-replace of two
        // plain fields; the data is still a whole list.
        let mut inner = self.0.write().unwrap_or_else(|p| p.into_inner());
        *inner = Inner { version, set };
    }

    fn read<T>(&self, f: impl FnOnce(&Inner) -> T) -> T {
        f(&self.0.read().unwrap_or_else(|p| p.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_checked_and_lists_replaced_whole() {
        let a = Fingerprint::of_der(b"a");
        let b = Fingerprint::of_der(b"b");
        let list = DenyList::from_body(&DenyBody {
            version: 3,
            fingerprints: vec![a.to_string()],
        })
        .unwrap();
        assert!(list.contains(&a) && !list.contains(&b));
        assert_eq!(list.version(), 3);
        let clone = list.clone();
        clone.replace(4, [b].into_iter().collect());
        assert!(!list.contains(&a) && list.contains(&b));
        assert_eq!(list.version(), 4);
        for bad in [
            DenyBody {
                version: 1,
                fingerprints: vec!["zz".into()],
            },
            DenyBody {
                version: -1,
                fingerprints: vec![],
            },
            DenyBody {
                version: 1,
                fingerprints: vec![a.to_string(); MAX_DENIED + 1],
            },
        ] {
            assert!(DenyList::from_body(&bad).is_err(), "{bad:?}");
        }
    }
}
