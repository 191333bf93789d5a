//! Issue 9's master bugs end to end, each against the real `swarm` binary:
//! a closed stdout ends quietly (#6), a worker whose clock is wrong is named
//! as the culprit after a real TLS handshake (#8), and a push interrupted
//! by Ctrl-C keeps every host that answered in `swarm history` (#9).

use std::net::TcpListener;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use pki::Bundle;
use tests::release::toml_array;
use tests::{Daemon, Swarm, bin, eventually};

/// Issue 9 #6: every command that prints ends quietly on a closed stdout
/// (it used to panic in `println!`, exit 101).
#[test]
fn a_closed_stdout_ends_every_command_quietly() {
    let s = Swarm::new();
    // Nothing listens on the enrolled ports.
    let _w1 = s.enroll("w1");
    let tree = s.tree("app");
    std::fs::write(tree.join("VERSION"), "1").expect("write");
    let root = tree.to_str().expect("utf-8");
    let commands: [&[&str]; 7] = [
        &["status", "--json"],
        &["status"],
        &["list", "--json"],
        &["list"],
        &["history", "--json"],
        &["update", "--all", "--root", root, "--dry-run"],
        &["decommission", "--host", "w1"],
    ];
    for args in commands {
        let (read, write) = nix::unistd::pipe().expect("pipe");
        drop(read); // the reader is gone before swarm writes a byte
        let out = s
            .command()
            .args(args)
            .stdout(Stdio::from(write))
            .stderr(Stdio::piped())
            .output()
            .expect("run swarm");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "swarm {args:?}: {stderr}");
        assert!(stderr.trim().is_empty(), "swarm {args:?} said: {stderr}");
        assert_eq!(
            out.status.code(),
            Some(EXIT_BROKEN_PIPE),
            "swarm {args:?}: {stderr}"
        );
    }
}

/// The quiet exit code of a closed stdout (the shell's for SIGPIPE).
const EXIT_BROKEN_PIPE: i32 = 141;

/// A clock `offset` away from the real one, for a TLS server.
#[derive(Debug)]
struct SkewedClock(Duration);

impl rustls::time_provider::TimeProvider for SkewedClock {
    fn current_time(&self) -> Option<rustls::pki_types::UnixTime> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?;
        Some(rustls::pki_types::UnixTime::since_unix_epoch(now + self.0))
    }
}

/// Issue 9 #8: a worker whose clock runs years ahead rejects the master's
/// (valid) certificate as expired; the master says the worker's clock is
/// probably wrong instead of only relaying the TLS alert.
#[test]
fn a_worker_with_a_wrong_clock_is_named_as_the_culprit() {
    let s = Swarm::new();
    let w1 = s.enroll("w1");
    let listener = TcpListener::bind(w1.listen).expect("bind the enrolled updater port");
    let updater = Bundle::load(&w1.bundles.updater_dir).expect("updater bundle");

    // A real rustls server with the enrolled updater identity, whose
    // client verifier believes it is 20 years from now.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(updater.ca.clone()).expect("root");
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .expect("verifier");
    let twenty_years = Duration::from_secs(20 * 365 * 24 * 3600);
    let mut config =
        rustls::ServerConfig::builder_with_details(provider, Arc::new(SkewedClock(twenty_years)))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(updater.chain().to_vec(), updater.key.clone_key())
            .expect("server config");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let config = Arc::new(config);
    listener.set_nonblocking(false).expect("blocking");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut tcp) = stream else { continue };
            let config = config.clone();
            std::thread::spawn(move || {
                let Ok(mut conn) = rustls::ServerConnection::new(config) else {
                    return;
                };
                let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
                // Runs the handshake until the verifier refuses the client.
                while conn.is_handshaking() {
                    if conn.complete_io(&mut tcp).is_err() {
                        break;
                    }
                }
                let _ = conn.complete_io(&mut tcp);
            });
        }
    });

    let doc = s.json(&["status", "--host", "w1", "--json"], 1);
    let row = &doc["hosts"][0];
    assert_eq!(row["updater_reachable"], false, "{row}");
    let err = row["updater_error"].as_str().expect("updater_error");
    assert!(
        err.contains("the worker's clock is probably wrong (it rejected a certificate valid from "),
        "{err}"
    );
}

/// Issue 9 #9: Ctrl-C during a push with `--include-self`, after both
/// agents updated and while the master waits for the updaters to switch,
/// used to leave `swarm history` empty (a host was recorded only when its
/// whole task ended). Now each agent's outcome is recorded as it arrives.
#[test]
fn an_interrupted_push_keeps_the_hosts_that_answered_in_history() {
    let s = Swarm::new();
    let _workers = [s.worker("w1"), s.worker("w2")];
    let tree = s.tree("app");
    let agent = [
        bin("worker-agent").display().to_string(),
        "--listen".to_owned(),
        "127.0.0.1:${AGENT_PORT}".to_owned(),
    ];
    std::fs::write(
        tree.join("swarm.toml"),
        format!(
            "[agent]\ncommand = {}\nhealth_url = \"https://127.0.0.1:${{AGENT_PORT}}/health\"\n",
            toml_array(&agent)
        ),
    )
    .expect("swarm.toml");
    // An updater that passes its --check and then never serves: the
    // master waits (up to --self-timeout) for it to report the release.
    std::fs::create_dir_all(tree.join("bin")).expect("mkdir bin");
    let hang = "#!/bin/sh\ncase \" $* \" in *\" --check \"*) exit 0;; esac\nexec sleep 600\n";
    let script = tree.join("bin/worker-updater");
    std::fs::write(&script, hang).expect("script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");

    let root = tree.to_str().expect("utf-8");
    let mut cmd = s.command();
    cmd.args([
        "update",
        "--all",
        "--root",
        root,
        "--include-self",
        "--self-timeout",
        "120",
    ]);
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let mut push = Daemon::start(&mut cmd);

    // Both agents' outcomes reach the inventory while the push still runs.
    let db = s.home().join("inventory.db");
    let hosts = eventually(
        Duration::from_secs(60),
        "both agent outcomes recorded",
        || {
            let conn = rusqlite::Connection::open(&db).ok()?;
            let mut stmt = conn
                .prepare("SELECT host FROM pushes WHERE outcome = 'updated' ORDER BY host")
                .ok()?;
            let hosts: Vec<String> = stmt
                .query_map([], |r| r.get(0))
                .ok()?
                .collect::<Result<_, _>>()
                .ok()?;
            (hosts.len() == 2).then_some(hosts)
        },
    );
    assert_eq!(hosts, ["w1", "w2"]);
    assert!(
        push.try_wait().is_none(),
        "the push must still be waiting for the updaters"
    );
    push.signal(nix::sys::signal::Signal::SIGINT)
        .expect("SIGINT");
    let status = push.wait(Duration::from_secs(60)).expect("wait");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(nix::sys::signal::Signal::SIGINT as i32),
        "{status:?}"
    );

    let history = s.json(&["history", "--json"], 0);
    let entries = history["history"].as_array().expect("history");
    let mut got: Vec<(String, String)> = entries
        .iter()
        .map(|e| {
            (
                e["host"].as_str().unwrap_or("").to_owned(),
                e["outcome"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("w1".to_owned(), "updated".to_owned()),
            ("w2".to_owned(), "updated".to_owned())
        ],
        "{history}"
    );
}
