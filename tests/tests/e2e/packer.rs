//! What `swarm update` leaves at home, end to end: private keys the old
//! 8 KiB head sniff missed (issue 10, "The packer misses private keys")
//! are found by the real `swarm` binary, left out of the tarball a real
//! updater installs, and listed, in `--dry-run` and in a real push.

use std::path::Path;

use serde_json::Value;
use tests::Swarm;
use tests::release::toml_array;

fn write(root: &Path, rel: &str, bytes: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(p, bytes).expect("write");
}

/// The files that hold a key, as the issue found them shipped.
const KEYS: [&str; 4] = [
    "haproxy/cert+key.pem",
    "creds/service-account.json",
    "keys/signing.p8",
    "keys/tls.der",
];

/// A tree with a reference agent and, next to harmless files, every key
/// shape the old sniff missed: a HAProxy `cert+key.pem` whose key starts
/// after 8 KiB, a cloud credential with the PEM key inside a JSON string,
/// and DER PKCS#8 keys named `.p8` and `.der`.
fn tree_with_hidden_keys(s: &Swarm) -> std::path::PathBuf {
    let tree = s.tree("keys");
    let agent = [
        tests::bin("worker-agent").display().to_string(),
        "--listen".to_owned(),
        "127.0.0.1:${AGENT_PORT}".to_owned(),
    ];
    let toml = format!(
        "[agent]\ncommand = {}\nhealth_url = \"https://127.0.0.1:${{AGENT_PORT}}/health\"\n",
        toml_array(&agent)
    );
    write(&tree, "swarm.toml", toml.as_bytes());
    write(&tree, "VERSION", b"1");

    let key = rcgen::KeyPair::generate().expect("key pair");
    let params = rcgen::CertificateParams::new(vec!["haproxy.example".to_owned()]).expect("params");
    let cert = params.self_signed(&key).expect("self-signed cert");
    // HAProxy's combined file: the certificate (and a chain) first, so the
    // key block starts well past the first 8 KiB.
    let mut combined = String::new();
    while combined.len() < 9 * 1024 {
        combined.push_str(&cert.pem());
    }
    let key_at = combined.len();
    combined.push_str(&key.serialize_pem());
    assert!(key_at > 8 * 1024);
    write(&tree, KEYS[0], combined.as_bytes());

    let sa = serde_json::json!({
        "type": "service_account",
        "project_id": "demo",
        "private_key_id": "0123",
        "private_key": key.serialize_pem(),
        "client_email": "deploy@demo.iam.example",
    });
    write(&tree, KEYS[1], sa.to_string().as_bytes());
    write(&tree, KEYS[2], &key.serialize_der());
    write(&tree, KEYS[3], &key.serialize_der());

    // Neighbours that must ship: a certificate alone, JSON without a key,
    // binary data that is not a key.
    write(&tree, "haproxy/chain.pem", cert.pem().as_bytes());
    write(
        &tree,
        "creds/config.json",
        br#"{"region":"eu","private_key":null}"#,
    );
    write(&tree, "keys/cert.der", cert.der());
    tree
}

fn skipped(release: &Value) -> Vec<String> {
    let mut v: Vec<String> = release["skipped_secrets"]
        .as_array()
        .expect("skipped_secrets")
        .iter()
        .map(|s| s.as_str().expect("path").to_owned())
        .collect();
    v.sort();
    v
}

fn sorted_keys() -> Vec<String> {
    let mut want: Vec<String> = KEYS.iter().map(|s| (*s).to_owned()).collect();
    want.sort();
    want
}

#[test]
fn keys_the_head_sniff_missed_are_left_out_and_listed_by_a_dry_run() {
    let s = Swarm::new();
    let _w1 = s.enroll("w1");
    let tree = tree_with_hidden_keys(&s);
    let root = tree.to_str().expect("utf-8");

    let doc = s.json(
        &["update", "--all", "--root", root, "--dry-run", "--json"],
        0,
    );
    assert_eq!(skipped(&doc["release"]), sorted_keys(), "{doc}");

    let text = s.ok(&["update", "--all", "--root", root, "--dry-run"]);
    let line = text
        .lines()
        .find(|l| l.starts_with("secrets left out: "))
        .unwrap_or_else(|| panic!("no left-out line in:\n{text}"));
    for k in KEYS {
        assert!(line.contains(k), "{k} not listed: {line}");
    }
}

#[test]
fn keys_the_head_sniff_missed_never_reach_a_worker() {
    let s = Swarm::new();
    let w = s.worker("w1");
    let tree = tree_with_hidden_keys(&s);
    let root = tree.to_str().expect("utf-8");

    let doc = s.json(&["update", "--all", "--root", root, "--json"], 0);
    assert_eq!(doc["hosts"][0]["agent"], "updated", "{doc}");
    assert_eq!(skipped(&doc["release"]), sorted_keys(), "{doc}");

    let current = w.install_dir.join("current");
    for k in KEYS {
        assert!(!current.join(k).exists(), "{k} was shipped");
    }
    for shipped in [
        "haproxy/chain.pem",
        "creds/config.json",
        "keys/cert.der",
        "VERSION",
    ] {
        assert!(current.join(shipped).is_file(), "{shipped} was left out");
    }

    // The human-readable push says what it left out, too.
    write(&tree, "VERSION", b"2");
    let out = s.ok(&["update", "--all", "--root", root]);
    let line = out
        .lines()
        .find(|l| l.starts_with("left out 4 secret(s): "))
        .unwrap_or_else(|| panic!("no left-out line in:\n{out}"));
    for k in KEYS {
        assert!(line.contains(k), "{k} not listed: {line}");
    }
}
