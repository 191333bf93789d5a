//! The one authorization policy: which identity may call which endpoint.
//! Both daemons route every request through [`authorize`] (via
//! the `server` feature's `serve` middleware); nothing else decides access.

use http::Method;

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
    /// `GET /history` (the updater's journal).
    History,
    /// `GET /logs` (the agent's output).
    Logs,
    /// `POST /agent/restart`.
    AgentRestart,
    /// `POST /deny`: the whole certificate deny list (issue 15).
    Deny,
}

impl Endpoint {
    /// The endpoint a request addresses, or `None` for anything we do not
    /// serve. `HEAD` is the same endpoint as `GET` (axum routes it there).
    pub fn of(method: &Method, path: &str) -> Option<Endpoint> {
        let read = method == Method::GET || method == Method::HEAD;
        Some(match (method, path) {
            (_, "/health") if read => Endpoint::Health,
            (_, "/status") if read => Endpoint::Status,
            (_, "/releases") if read => Endpoint::Releases,
            (&Method::POST, "/update") => Endpoint::Update,
            (&Method::POST, "/update-self") => Endpoint::UpdateSelf,
            (&Method::POST, "/rollback") => Endpoint::Rollback,
            (_, "/history") if read => Endpoint::History,
            (_, "/logs") if read => Endpoint::Logs,
            (&Method::POST, "/agent/restart") => Endpoint::AgentRestart,
            (&Method::POST, "/deny") => Endpoint::Deny,
            _ => return None,
        })
    }
}

/// Whether `who` may call `endpoint`. Anyone our CA signed may ask for
/// health and status; only the master may read releases or change anything.
pub fn authorize(who: &Identity, endpoint: Endpoint) -> Result<(), String> {
    match endpoint {
        Endpoint::Health | Endpoint::Status => Ok(()),
        Endpoint::Releases
        | Endpoint::Update
        | Endpoint::UpdateSelf
        | Endpoint::Rollback
        | Endpoint::History
        | Endpoint::Logs
        | Endpoint::AgentRestart
        | Endpoint::Deny => {
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
    fn head_is_get_and_the_rest_is_unknown() {
        assert_eq!(
            Endpoint::of(&Method::HEAD, "/releases"),
            Some(Endpoint::Releases)
        );
        assert_eq!(
            Endpoint::of(&Method::HEAD, "/health"),
            Some(Endpoint::Health)
        );
        assert_eq!(Endpoint::of(&Method::GET, "/update"), None);
        assert_eq!(Endpoint::of(&Method::POST, "/releases"), None);
        assert_eq!(Endpoint::of(&Method::GET, "/releases/"), None);
        assert_eq!(Endpoint::of(&Method::OPTIONS, "/health"), None);
    }

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
