//! Trust over time (issue 15) end to end: named operators (`swarm operator
//! add/list/remove`), the certificate deny list (`swarm decommission`,
//! `POST /deny`, delivery on a host's next contact) and the policy matrix
//! against a real `worker-updater` holding bundles `swarm enroll` issued.

use std::path::Path;
use std::time::Duration;

use pki::identity::CertInfo;
use pki::{Bundle, Ca, LeafSpec};
use serde_json::Value;
use tests::release::ReleaseTree;
use tests::worker::{Worker, client_for};
use tests::{Swarm, eventually_async};

/// Every route of the updater with the method it takes.
const ROUTES: [(&str, &str); 11] = [
    ("GET", "/health"),
    ("GET", "/releases"),
    ("GET", "/history"),
    ("GET", "/logs"),
    ("POST", "/update"),
    ("POST", "/update-self"),
    ("POST", "/rollback"),
    ("POST", "/agent/restart"),
    ("POST", "/deny"),
    ("POST", "/renew"),
    ("POST", "/verify"),
];

/// What one request gave: its status, or the transport error in words.
async fn call(
    client: &reqwest::Client,
    w: &Worker,
    method: &str,
    path: &str,
) -> Result<u16, String> {
    let url = w.url(path);
    let req = if method == "GET" {
        client.get(url)
    } else {
        client.post(url)
    };
    match req.send().await {
        Ok(r) => Ok(r.status().as_u16()),
        Err(e) => Err(pki::error_chain(&e)),
    }
}

fn bundle(dir: &Path) -> Bundle {
    Bundle::load(dir).unwrap_or_else(|e| panic!("bundle {}: {e}", dir.display()))
}

/// `swarm operator add NAME` into `scratch/op-NAME`; its bundle.
fn add_operator(s: &Swarm, name: &str) -> Bundle {
    let dir = s.out(&format!("op-{name}"));
    let doc = s.json(
        &[
            "operator",
            "add",
            name,
            "--out-dir",
            dir.to_str().expect("utf-8"),
            "--json",
        ],
        0,
    );
    assert_eq!(doc["operator"], name, "{doc}");
    assert_eq!(doc["cn"], "master", "{doc}");
    bundle(&dir)
}

#[test]
fn a_named_operator_acts_as_master_and_is_recorded_by_name() {
    let s = Swarm::unsigned();
    let w = s.worker("w1");
    let alice = add_operator(&s, "alice");
    let info = CertInfo::parse(&alice.chain()[0]).expect("cert");
    assert_eq!(info.cn, "master");
    assert!(info.client_auth && !info.server_auth, "{info:?}");
    assert_eq!(info.operator.as_ref().map(|o| o.as_str()), Some("alice"));
    // Names follow host-name rules; a second active alice is refused.
    s.fails(
        &[
            "operator",
            "add",
            "bad name",
            "--out-dir",
            s.out("x").to_str().unwrap(),
        ],
        2,
        "invalid operator name",
    );
    s.fails(
        &[
            "operator",
            "add",
            "alice",
            "--out-dir",
            s.out("y").to_str().unwrap(),
        ],
        2,
        "already exists",
    );
    let list = s.json(&["operator", "list", "--json"], 0);
    assert_eq!(list["operators"][0]["name"], "alice", "{list}");
    assert_eq!(list["operators"][0]["status"], "active", "{list}");

    let tgz = ReleaseTree::new()
        .reference_agent(w.agent_port, &[])
        .tarball();
    tests::block_on(async {
        let as_alice = client_for(&alice, &w.bundles.host.updater_cn());
        let (code, body) = w.push(&as_alice, &tgz).await;
        assert_eq!(code, 200, "{body:?}");
        let releases = w.releases(&as_alice).await;
        let active = releases.active.expect("an active release");
        assert_eq!(active.pushed_by, "operator:alice");
        let hist: pki::wire::WorkerHistory = as_alice
            .get(w.url("/history"))
            .send()
            .await
            .expect("history")
            .json()
            .await
            .expect("history json");
        let last = hist.entries.last().expect("a journal entry");
        assert_eq!(
            (last.op.as_str(), last.by.as_str()),
            ("update", "operator:alice"),
            "{last:?}"
        );
        // The master's own certificate is still plain `master`.
        let master = s.master_client(&w.bundles.host.updater_cn());
        let (code, body) = w.rollback(&master).await;
        assert_eq!(code, 404, "{body:?}");
        let hist: pki::wire::WorkerHistory = master
            .get(w.url("/history"))
            .send()
            .await
            .expect("history")
            .json()
            .await
            .expect("history json");
        let last = hist.entries.last().expect("a journal entry");
        assert_eq!(last.by, "master", "{last:?}");
    });
}

/// Every route for master, a named operator, a removed operator, an agent,
/// another host's updater and a foreign CA, against a real updater.
#[test]
fn policy_matrix_with_real_certificates() {
    let s = Swarm::new();
    let w = s.worker("w1");
    let other = s.enroll("w2");
    let alice = add_operator(&s, "alice");
    let bob = add_operator(&s, "bob");
    let cn = w.bundles.host.updater_cn();
    // A master certificate from another CA beside our CA's certificate: the
    // client trusts our updater, so only the updater can refuse it.
    let foreign_dir = s.scratch().join("foreign");
    {
        let ca = Ca::generate().expect("ca");
        let leaf = ca.issue(&LeafSpec::master()).expect("leaf");
        let ours = std::fs::read_to_string(s.home().join("ca").join("ca.crt")).expect("ca.crt");
        Bundle::write(&foreign_dir, pki::BundleKind::Master, &ours, &leaf).expect("write");
    }
    let foreign = client_for(&bundle(&foreign_dir), &cn);
    tests::block_on(async {
        let master = s.master_client(&cn);
        let as_alice = client_for(&alice, &cn);
        let as_bob = client_for(&bob, &cn);
        let agent = w.agent_identity_client();
        let other_updater = client_for(&bundle(&other.bundles.updater_dir), &cn);
        for (method, path) in ROUTES {
            for (who, c) in [("master", &master), ("alice", &as_alice), ("bob", &as_bob)] {
                let got = call(c, &w, method, path).await;
                assert!(
                    matches!(got, Ok(code) if code != 403),
                    "{who} {method} {path}: {got:?}"
                );
            }
            for (who, c) in [("agent", &agent), ("w2's updater", &other_updater)] {
                let got = call(c, &w, method, path).await;
                let want = if path == "/health" { 200 } else { 403 };
                assert_eq!(got, Ok(want), "{who} {method} {path}");
            }
            let got = call(&foreign, &w, method, path).await;
            assert!(
                matches!(&got, Err(e) if e.contains("DecryptError") || e.contains("UnknownCA")),
                "foreign CA {method} {path}: {got:?}"
            );
        }
        // Remove bob: the list reaches w1 now, and bob is refused everywhere.
        let doc = s.json(&["operator", "remove", "bob", "--json"], 0);
        assert_eq!(doc["delivered"], serde_json::json!(["w1"]), "{doc}");
        for (method, path) in ROUTES {
            assert_eq!(
                call(&as_bob, &w, method, path).await,
                Ok(403),
                "removed bob {method} {path}"
            );
            let got = call(&as_alice, &w, method, path).await;
            assert!(
                matches!(got, Ok(code) if code != 403),
                "alice {method} {path}: {got:?}"
            );
        }
    });
    let list = s.json(&["operator", "list", "--json"], 0);
    let ops = list["operators"].as_array().expect("operators");
    let bob_row = ops.iter().find(|o| o["name"] == "bob").expect("bob listed");
    assert_eq!(bob_row["status"], "removed", "{list}");
    let denied = s.json(&["list", "--denied", "--json"], 0);
    assert_eq!(denied["denied"][0]["subject"], "operator:bob", "{denied}");
}

/// The subjects `swarm list --denied --json` names.
fn denied_subjects(s: &Swarm) -> Vec<String> {
    let v: Value = s.json(&["list", "--denied", "--json"], 0);
    v["denied"]
        .as_array()
        .expect("denied array")
        .iter()
        .map(|d| d["subject"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn a_decommissioned_hosts_certificates_are_refused_and_an_unreachable_host_gets_the_list_later() {
    let s = Swarm::new();
    let mut w1 = s.worker("w1");
    let mut w2 = s.worker("w2");
    let w3 = s.worker("w3");
    let w3_agent = bundle(&w3.bundles.agent_dir);
    let w3_updater = bundle(&w3.bundles.updater_dir);
    w2.terminate_updater();
    let doc = s.json(&["decommission", "--host", "w3", "--json"], 0);
    assert_eq!(doc["delivered"], serde_json::json!(["w1"]), "{doc}");
    assert_eq!(doc["pending"][0]["host"], "w2", "{doc}");
    assert_eq!(doc["denied"].as_array().map(Vec::len), Some(2), "{doc}");
    assert_eq!(denied_subjects(&s), ["w3", "updater@w3"]);
    assert!(w1.install_dir.join("deny.json").exists());
    tests::block_on(async {
        for b in [&w3_agent, &w3_updater] {
            let c = client_for(b, &w1.bundles.host.updater_cn());
            assert_eq!(call(&c, &w1, "GET", "/health").await, Ok(403));
        }
    });
    // Persisted: a restarted updater still refuses them.
    w1.restart();
    tests::block_on(async {
        let c = client_for(&w3_agent, &w1.bundles.host.updater_cn());
        let got = eventually_async(Duration::from_secs(20), "w1 answering again", || async {
            call(&c, &w1, "GET", "/health").await.ok()
        })
        .await;
        assert_eq!(got, 403);
    });
    // w2 was down: it does not know yet, and learns on its next contact.
    w2.restart();
    tests::block_on(async {
        let c = client_for(&w3_agent, &w2.bundles.host.updater_cn());
        let got = eventually_async(Duration::from_secs(20), "w2 answering again", || async {
            call(&c, &w2, "GET", "/health").await.ok()
        })
        .await;
        assert_eq!(got, 200, "w2 cannot have the list yet");
    });
    // Exit 1: no agent runs yet; the updaters answer.
    let status = s.json(&["status", "--json"], 1);
    assert_eq!(
        status["hosts"].as_array().map(Vec::len),
        Some(2),
        "{status}"
    );
    assert_eq!(status["hosts"][1]["updater"], "ok", "{status}");
    // Days until expiry, in status and list alike (825-day leaves).
    let days = status["hosts"][0]["expires_in_days"]
        .as_i64()
        .expect("expires_in_days");
    assert!((823..=825).contains(&days), "{status}");
    let listed = s.list();
    assert!(
        listed
            .iter()
            .all(|h| h["expires_in_days"].as_i64() == Some(days)),
        "{listed:?}"
    );
    tests::block_on(async {
        let c = client_for(&w3_agent, &w2.bundles.host.updater_cn());
        assert_eq!(call(&c, &w2, "GET", "/health").await, Ok(403));
        // And the master still gets through.
        let m = s.master_client(&w2.bundles.host.updater_cn());
        assert_eq!(call(&m, &w2, "GET", "/releases").await, Ok(200));
    });
}

#[test]
fn a_stale_or_malformed_deny_list_is_refused_and_nothing_changes() {
    let s = Swarm::new();
    let w = s.worker("w1");
    let _w2 = s.worker("w2");
    s.ok(&["decommission", "--host", "w2"]);
    let before = std::fs::read(w.install_dir.join("deny.json")).expect("deny.json");
    tests::block_on(async {
        let m = s.master_client(&w.bundles.host.updater_cn());
        let stale = m
            .post(w.url("/deny"))
            .json(&serde_json::json!({"version": 0, "fingerprints": []}))
            .send()
            .await
            .expect("stale");
        assert_eq!(stale.status().as_u16(), 409);
        let bad = m
            .post(w.url("/deny"))
            .json(&serde_json::json!({"version": 99, "fingerprints": ["not hex"]}))
            .send()
            .await
            .expect("bad");
        assert_eq!(bad.status().as_u16(), 400);
    });
    assert_eq!(
        std::fs::read(w.install_dir.join("deny.json")).expect("deny.json"),
        before
    );
}

/// The fingerprint of the certificate a bundle directory holds now.
fn fingerprint_in(dir: &Path) -> String {
    bundle(dir).fingerprint().to_string()
}

/// Whether a client accepting only `fp` (with CN `cn`) gets `url`'s `/health`.
async fn presents(s: &Swarm, url: &str, cn: &str, fp: &str) -> bool {
    let master = bundle(&s.home().join("master"));
    let expect = pki::ServerExpectation::pinned(cn, fp.parse().expect("fingerprint"));
    let c = pki::http_client(&master, expect)
        .expect("client")
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    matches!(c.get(url).send().await, Ok(r) if r.status().is_success())
}

/// Push a release whose agent is the reference agent; wait until it runs.
fn start_agent(s: &Swarm, w: &Worker) {
    let tgz = ReleaseTree::new()
        .reference_agent(w.agent_port, &[])
        .tarball();
    tests::block_on(async {
        let m = s.master_client(&w.bundles.host.updater_cn());
        let (code, body) = w.push(&m, &tgz).await;
        assert_eq!(code, 200, "{body:?}");
    });
}

fn listed_updater_fp(s: &Swarm, host: &str) -> String {
    let hosts = s.list();
    let h = hosts.iter().find(|h| h["host"] == host).expect("listed");
    h["updater_fingerprint"]
        .as_str()
        .expect("fingerprint")
        .to_owned()
}

#[test]
fn renew_delivers_new_certificates_and_pins_them_once_presented() {
    let s = Swarm::unsigned();
    let w = s.worker("w1");
    start_agent(&s, &w);
    let old_updater = fingerprint_in(&w.bundles.updater_dir);
    let old_agent = fingerprint_in(&w.bundles.agent_dir);
    let old_pid = w.agent_pid().expect("agent pid");
    let doc = s.json(&["renew", "--host", "w1", "--days", "40", "--json"], 0);
    let row = &doc["hosts"][0];
    assert_eq!(row["renewed"], true, "{doc}");
    assert_eq!(row["agent_healthy"], true, "{doc}");
    assert!(
        (39..=40).contains(&row["expires_in_days"].as_i64().unwrap_or(0)),
        "{doc}"
    );
    let new_updater = fingerprint_in(&w.bundles.updater_dir);
    let new_agent = fingerprint_in(&w.bundles.agent_dir);
    assert_ne!(new_updater, old_updater);
    assert_ne!(new_agent, old_agent);
    assert_eq!(row["updater_fingerprint"], new_updater.as_str(), "{doc}");
    assert_eq!(row["agent_fingerprint"], new_agent.as_str(), "{doc}");
    // Keys stay private.
    use std::os::unix::fs::PermissionsExt;
    for key in [
        w.bundles.updater_dir.join("updater.key"),
        w.bundles.agent_dir.join("worker.key"),
    ] {
        let mode = std::fs::metadata(&key).expect("key").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", key.display());
    }
    // Pinned now, and the same updater process presents it; the agent was
    // restarted onto its new bundle.
    assert_eq!(listed_updater_fp(&s, "w1"), new_updater);
    let pid = w.agent_pid().expect("agent pid");
    assert_ne!(pid, old_pid);
    tests::block_on(async {
        assert!(presents(&s, &w.url("/health"), "updater@w1", &new_updater).await);
        assert!(presents(&s, &w.agent_url(), "w1", &new_agent).await);
    });
    let listed = s.list();
    assert!(
        (39..=40).contains(&listed[0]["expires_in_days"].as_i64().unwrap_or(0)),
        "{listed:?}"
    );
    // Everything else goes on over the new pin.
    let status = s.json(&["status", "--json"], 0);
    assert_eq!(status["hosts"][0]["updater"], "ok", "{status}");
    // The replaced pair is denied (a renewal rotates a key that may have
    // leaked), and the status above delivered the list.
    assert_eq!(
        denied_subjects(&s),
        ["w1 (renewed)", "updater@w1 (renewed)"]
    );
    let old_dir = s.scratch().join("old-updater");
    let ca_pem = std::fs::read_to_string(s.home().join("ca").join("ca.crt")).expect("ca.crt");
    Bundle::write(
        &old_dir,
        pki::BundleKind::Updater,
        &ca_pem,
        &w.bundles.updater,
    )
    .expect("write");
    tests::block_on(async {
        let c = client_for(&bundle(&old_dir), "updater@w1");
        assert_eq!(call(&c, &w, "GET", "/health").await, Ok(403));
    });
}

#[test]
fn a_renew_whose_certificates_are_not_for_the_host_is_refused_with_nothing_changed() {
    let s = Swarm::new();
    let w = s.worker("w1");
    let other = s.enroll("w2");
    let before = (
        fingerprint_in(&w.bundles.updater_dir),
        fingerprint_in(&w.bundles.agent_dir),
    );
    let foreign = Ca::generate().expect("ca");
    let host = pki::HostName::new("w1").expect("host");
    let foreign_pair = (
        foreign
            .issue(&LeafSpec::agent(&host, "127.0.0.1", &[]).expect("spec"))
            .expect("leaf"),
        foreign
            .issue(&LeafSpec::updater(&host, "127.0.0.1", &[]).expect("spec"))
            .expect("leaf"),
    );
    let mismatched_key = {
        let mut b = pki::renew::RenewBody::new(&w.bundles.agent, &w.bundles.updater);
        b.updater_key_pem = other.bundles.updater.key_pem.clone();
        b
    };
    let bodies = [
        (
            "another host's",
            pki::renew::RenewBody::new(&other.bundles.agent, &other.bundles.updater),
        ),
        (
            "agent and updater swapped",
            pki::renew::RenewBody::new(&w.bundles.updater, &w.bundles.agent),
        ),
        (
            "another CA's",
            pki::renew::RenewBody::new(&foreign_pair.0, &foreign_pair.1),
        ),
        ("a key of another certificate", mismatched_key),
    ];
    tests::block_on(async {
        let m = s.master_client(&w.bundles.host.updater_cn());
        for (what, body) in &bodies {
            let r = m
                .post(w.url("/renew"))
                .json(body)
                .send()
                .await
                .expect("renew");
            let code = r.status().as_u16();
            let text = r.text().await.unwrap_or_default();
            assert_eq!(code, 400, "{what}: {text}");
            assert!(text.contains("nothing changed"), "{what}: {text}");
        }
        // Only the master may renew.
        let r = w
            .agent_identity_client()
            .post(w.url("/renew"))
            .json(&bodies[0].1)
            .send()
            .await
            .expect("renew");
        assert_eq!(r.status().as_u16(), 403);
    });
    assert_eq!(
        (
            fingerprint_in(&w.bundles.updater_dir),
            fingerprint_in(&w.bundles.agent_dir)
        ),
        before
    );
    let status = s.json(&["status", "--json"], 1);
    assert_eq!(status["hosts"][0]["updater"], "ok", "{status}");
}

/// kill -9 of the updater at each step of a renewal: the master reaches it
/// again over the old or the new certificate, and a second renew finishes.
#[test]
fn kill_9_in_the_middle_of_a_renew_never_locks_the_master_out() {
    const CRASH_AT: &str = "SWARM_UPDATER_CRASH_AT";
    for step in [
        "renew-after-agent-bundle",
        "renew-after-updater-bundle",
        "renew-after-swap",
    ] {
        let s = Swarm::unsigned();
        let mut w = s.worker("w1");
        start_agent(&s, &w);
        let pinned = listed_updater_fp(&s, "w1");
        w.options.env.push((CRASH_AT.into(), step.into()));
        w.restart();
        tests::block_on(async {
            let m = s.master_client(&w.bundles.host.updater_cn());
            eventually_async(Duration::from_secs(20), "the updater answering", || async {
                call(&m, &w, "GET", "/health")
                    .await
                    .ok()
                    .filter(|c| *c == 200)
            })
            .await;
        });
        let doc = s.json(&["renew", "--host", "w1", "--json"], 1);
        assert_eq!(doc["hosts"][0]["renewed"], false, "{step}: {doc}");
        assert_eq!(
            listed_updater_fp(&s, "w1"),
            pinned,
            "{step}: pinned before it was seen"
        );
        w.options.env.retain(|(k, _)| k != CRASH_AT);
        w.restart();
        // Reachable again over whichever certificate is on disk.
        let status = tests::eventually(Duration::from_secs(30), "status reaching w1", || {
            let out = s.run(&["status", "--json"]);
            let v: Value = serde_json::from_slice(&out.stdout).ok()?;
            (v["hosts"][0]["updater"] == "ok").then_some(v)
        });
        assert_eq!(status["hosts"][0]["updater"], "ok", "{step}");
        let doc = s.json(&["renew", "--host", "w1", "--json"], 0);
        assert_eq!(doc["hosts"][0]["renewed"], true, "{step}: {doc}");
        assert_eq!(
            listed_updater_fp(&s, "w1"),
            fingerprint_in(&w.bundles.updater_dir),
            "{step}"
        );
    }
}

fn denied_fingerprints(s: &Swarm) -> Vec<String> {
    let v: Value = s.json(&["list", "--denied", "--json"], 0);
    v["denied"]
        .as_array()
        .expect("denied array")
        .iter()
        .map(|d| d["fingerprint"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// A renewal cut short after the updater switched (kill -9) is pinned by
/// the next `swarm renew` (settle): the pair it replaced is denied then,
/// as it would have been had the first run finished.
#[test]
fn a_pending_renewal_pinned_later_denies_the_pair_it_replaced() {
    const CRASH_AT: &str = "SWARM_UPDATER_CRASH_AT";
    let s = Swarm::unsigned();
    let mut w = s.worker("w1");
    start_agent(&s, &w);
    let original = [
        fingerprint_in(&w.bundles.updater_dir),
        fingerprint_in(&w.bundles.agent_dir),
    ];
    w.options
        .env
        .push((CRASH_AT.into(), "renew-after-swap".into()));
    w.restart();
    let answering = |s: &Swarm| {
        tests::eventually(Duration::from_secs(30), "status reaching w1", || {
            let out = s.run(&["status", "--json"]);
            let v: Value = serde_json::from_slice(&out.stdout).ok()?;
            (v["hosts"][0]["updater"] == "ok").then_some(())
        })
    };
    answering(&s);
    let doc = s.json(&["renew", "--host", "w1", "--json"], 1);
    assert_eq!(doc["hosts"][0]["renewed"], false, "{doc}");
    w.options.env.retain(|(k, _)| k != CRASH_AT);
    w.restart();
    answering(&s);
    let pending = fingerprint_in(&w.bundles.updater_dir);
    assert!(!original.contains(&pending));
    let doc = s.json(&["renew", "--host", "w1", "--json"], 0);
    assert_eq!(doc["hosts"][0]["renewed"], true, "{doc}");
    let denied = denied_fingerprints(&s);
    for fp in original.iter().chain([&pending]) {
        assert!(denied.contains(fp), "{fp} not denied: {denied:?}");
    }
}

/// `swarm verify`, `releases`, `logs` and `history --worker` bring a
/// host's deny list up to date before anything else, like every other
/// command that contacts an updater.
#[test]
fn every_command_that_contacts_an_updater_delivers_the_deny_list_first() {
    let s = Swarm::new();
    let mut w = s.worker("w1");
    let commands: [&[&str]; 4] = [
        &["verify", "--host", "w1", "--json"],
        &["releases", "--host", "w1", "--json"],
        &["logs", "--host", "w1"],
        &["history", "--host", "w1", "--worker", "--json"],
    ];
    for (i, args) in commands.iter().enumerate() {
        let name = format!("op{i}");
        let op = add_operator(&s, &name);
        w.terminate_updater();
        s.run(&["operator", "remove", &name, "--json"]);
        w.restart();
        tests::block_on(async {
            let c = client_for(&op, &w.bundles.host.updater_cn());
            let got = eventually_async(Duration::from_secs(20), "w1 answering again", || async {
                call(&c, &w, "GET", "/health").await.ok()
            })
            .await;
            assert_eq!(got, 200, "{args:?}: w1 cannot have the list yet");
        });
        let out = s.run(args);
        assert_ne!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            tests::swarm::show(&out)
        );
        tests::block_on(async {
            let c = client_for(&op, &w.bundles.host.updater_cn());
            assert_eq!(
                call(&c, &w, "GET", "/health").await,
                Ok(403),
                "{args:?} did not deliver the deny list"
            );
        });
    }
}
