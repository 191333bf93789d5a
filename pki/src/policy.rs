//! The one authorization policy: which identity may call which endpoint.
//! Both daemons route every request through [`authorize`] (via
//! [`crate::serve`]'s middleware); nothing else decides access.

use axum::http::Method;

use crate::Identity;

/// Every endpoint a swarm daemon serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Health,
    Status,
    Releases,
    Update,
    UpdateSelf,
    Rollback,
}

impl Endpoint {
    /// The endpoint a request addresses, or `None` for a path we do not serve.
    pub fn of(method: &Method, path: &str) -> Option<Endpoint> {
        Some(match (method, path) {
            (&Method::GET, "/health") => Endpoint::Health,
            (&Method::GET, "/status") => Endpoint::Status,
            (&Method::GET, "/releases") => Endpoint::Releases,
            (&Method::POST, "/update") => Endpoint::Update,
            (&Method::POST, "/update-self") => Endpoint::UpdateSelf,
            (&Method::POST, "/rollback") => Endpoint::Rollback,
            _ => return None,
        })
    }
}

/// Whether `who` may call `endpoint`. Anyone our CA signed may ask for
/// health and status; only the master may read releases or change anything.
pub fn authorize(who: &Identity, endpoint: Endpoint) -> Result<(), String> {
    match endpoint {
        Endpoint::Health | Endpoint::Status => Ok(()),
        Endpoint::Releases | Endpoint::Update | Endpoint::UpdateSelf | Endpoint::Rollback => {
            if *who == Identity::Master {
                Ok(())
            } else {
                Err(format!(
                    "{who} may not call {endpoint:?}: only the master certificate (CN master) may"
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HostName;

    #[test]
    fn matrix() {
        let h = HostName::new("w1").unwrap();
        let who = [
            Identity::Master,
            Identity::Agent(h.clone()),
            Identity::Updater(h),
            Identity::Other("x".into()),
        ];
        for w in &who {
            assert!(authorize(w, Endpoint::Health).is_ok());
            assert!(authorize(w, Endpoint::Status).is_ok());
            for e in [
                Endpoint::Releases,
                Endpoint::Update,
                Endpoint::UpdateSelf,
                Endpoint::Rollback,
            ] {
                assert_eq!(authorize(w, e).is_ok(), *w == Identity::Master, "{w} {e:?}");
            }
        }
    }
}
