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
    /// `POST /renew`: new agent and updater certificates (issue 15).
    Renew,
    /// `POST /verify` (issue 12): re-hash the kept releases.
    Verify,
    /// `POST /update-from-store` (issue 16): install a release the updater
    /// downloads from an object store with presigned URLs.
    UpdateFromStore,
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
            (&Method::POST, "/renew") => Endpoint::Renew,
            (&Method::POST, "/verify") => Endpoint::Verify,
            (&Method::POST, "/update-from-store") => Endpoint::UpdateFromStore,
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
        | Endpoint::Deny
        | Endpoint::Renew
        | Endpoint::Verify
        | Endpoint::UpdateFromStore => {
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
        assert_eq!(
            Endpoint::of(&Method::POST, "/verify"),
            Some(Endpoint::Verify)
        );
        assert_eq!(Endpoint::of(&Method::GET, "/verify"), None);
        assert_eq!(
            Endpoint::of(&Method::POST, "/update-from-store"),
            Some(Endpoint::UpdateFromStore)
        );
        assert_eq!(Endpoint::of(&Method::GET, "/update-from-store"), None);
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
                Endpoint::Verify,
                Endpoint::UpdateFromStore,
            ] {
                assert_eq!(authorize(w, e).is_ok(), *w == Identity::Master, "{w} {e:?}");
            }
        }
    }

    /// Every endpoint, so a new one cannot be left out of the matrix.
    const ALL: [Endpoint; 13] = [
        Endpoint::Health,
        Endpoint::Status,
        Endpoint::Releases,
        Endpoint::Update,
        Endpoint::UpdateSelf,
        Endpoint::Rollback,
        Endpoint::History,
        Endpoint::Logs,
        Endpoint::AgentRestart,
        Endpoint::Deny,
        Endpoint::Renew,
        Endpoint::Verify,
        Endpoint::UpdateFromStore,
    ];

    /// Issue 15: identities read from real certificates. A named operator
    /// is the master's role (and names itself); agents and any host's
    /// updater may only read health and status. (A removed operator is the
    /// deny list's business, checked before the policy in `serve`.)
    #[test]
    fn matrix_from_real_certificates() {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject;
        let ca = crate::Ca::generate().unwrap();
        let w1 = HostName::new("w1").unwrap();
        let w2 = HostName::new("w2").unwrap();
        let alice = crate::OperatorName::new("alice").unwrap();
        let der = |spec: crate::LeafSpec| {
            let leaf = ca.issue(&spec).unwrap();
            CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap()
        };
        let cases = [
            ("master", der(crate::LeafSpec::master()), true, "master"),
            (
                "operator",
                der(crate::LeafSpec::operator(&alice)),
                true,
                "operator:alice",
            ),
            (
                "agent",
                der(crate::LeafSpec::agent(&w1, "10.0.0.1", &[]).unwrap()),
                false,
                "w1",
            ),
            (
                "own updater",
                der(crate::LeafSpec::updater(&w1, "10.0.0.1", &[]).unwrap()),
                false,
                "updater@w1",
            ),
            (
                "other updater",
                der(crate::LeafSpec::updater(&w2, "10.0.0.2", &[]).unwrap()),
                false,
                "updater@w2",
            ),
        ];
        for (what, cert, may_act, by) in &cases {
            let who = Identity::from_client_cert(cert);
            let info = crate::identity::CertInfo::parse(cert).unwrap();
            assert_eq!(who.acted_by(info.operator.as_ref()), *by, "{what}");
            for e in ALL {
                let open = matches!(e, Endpoint::Health | Endpoint::Status);
                assert_eq!(authorize(&who, e).is_ok(), open || *may_act, "{what} {e:?}");
            }
        }
        assert_eq!(Endpoint::of(&Method::POST, "/deny"), Some(Endpoint::Deny));
        assert_eq!(Endpoint::of(&Method::GET, "/deny"), None);
    }
}
