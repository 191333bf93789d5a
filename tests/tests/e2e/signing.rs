//! Signed releases (issue 15) end to end: `swarm ca init`/`key init` make
//! the release key, every updater bundle carries `release.pub` (or `swarm
//! renew` delivers it), and such an updater refuses unsigned, tampered,
//! foreign and replayed releases with 403 and nothing changed, takes a
//! signed downgrade, keeps its highest `seq` across a restart, and takes a
//! curl push signed by `swarm sign`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use pki::sign::{Claim, ReleaseKey};
use pki::wire::{OpResponse, WorkerHistory};
use serde_json::Value;
use tests::Swarm;
use tests::release::{ReleaseTree, release_form, sha256_hex};
use tests::worker::Worker;

/// Tree `name` (the reference agent, `VERSION` = `version`) on disk, and
/// its gzip tarball as `tar czf` makes it.
fn tree(s: &Swarm, w: &Worker, name: &str, version: &str) -> (PathBuf, Vec<u8>) {
    let dir = s.tree(name);
    ReleaseTree::new()
        .reference_agent(w.agent_port, &[])
        .file("VERSION", version.as_bytes())
        .write_to(&dir);
    let tgz = s.scratch().join(format!("{name}.tgz"));
    let out = Command::new("tar")
        .arg("-czf")
        .arg(&tgz)
        .arg("-C")
        .arg(&dir)
        .arg(".")
        .output()
        .expect("tar");
    assert!(out.status.success(), "tar: {out:?}");
    (dir, std::fs::read(&tgz).expect("tgz"))
}

fn root(dir: &Path) -> &str {
    dir.to_str().expect("utf-8")
}

/// `swarm sign --root DIR --json [extra…]`: (release_id, seq, signature).
fn sign(s: &Swarm, dir: &Path, extra: &[&str]) -> (String, u64, String) {
    let mut args = vec!["sign", "--root", root(dir), "--json"];
    args.extend_from_slice(extra);
    let doc = s.json(&args, 0);
    (
        doc["release_id"].as_str().expect("release_id").to_owned(),
        doc["seq"].as_u64().expect("seq"),
        doc["signature"].as_str().expect("signature").to_owned(),
    )
}

/// A raw push of `tgz` with `signature` (if any): the code and the answer.
fn push(s: &Swarm, w: &Worker, tgz: &[u8], signature: Option<&str>) -> (u16, OpResponse) {
    let extra: Vec<(&str, &str)> = signature
        .map(|sig| ("signature", sig))
        .into_iter()
        .collect();
    tests::block_on(async {
        let r = s
            .master_client(&w.bundles.host.updater_cn())
            .post(w.url("/update"))
            .multipart(release_form(tgz, &sha256_hex(tgz), &extra))
            .send()
            .await
            .expect("push");
        let code = r.status().as_u16();
        let text = r.text().await.expect("body");
        let body: OpResponse =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        (code, body)
    })
}

/// The release_id `swarm update` would push for `dir` (a dry run).
fn release_id(s: &Swarm, dir: &Path) -> String {
    let doc = s.json(
        &[
            "update",
            "--all",
            "--root",
            root(dir),
            "--dry-run",
            "--json",
        ],
        0,
    );
    doc["release"]["release_id"]
        .as_str()
        .expect("release_id")
        .to_owned()
}

fn active_id(w: &Worker) -> Option<String> {
    let text = std::fs::read(w.install_dir.join("releases/active/.swarm-release.json")).ok()?;
    let m: pki::wire::Manifest = serde_json::from_slice(&text).ok()?;
    m.release_id
}

fn last_journal(s: &Swarm, w: &Worker) -> pki::wire::JournalEntry {
    tests::block_on(async {
        let r = s
            .master_client(&w.bundles.host.updater_cn())
            .get(w.url("/history?limit=1"))
            .send()
            .await
            .expect("history");
        let h: WorkerHistory = r.json().await.expect("history json");
        h.entries.last().cloned().expect("an entry")
    })
}

/// A refused push: 403 whose error says `needle`, the live release and
/// the slots untouched, no staging left, a journal entry.
fn refused(s: &Swarm, w: &Worker, tgz: &[u8], sig: Option<&str>, needle: &str) {
    let live = active_id(w);
    let (code, body) = push(s, w, tgz, sig);
    let error = body.error.clone().unwrap_or_default();
    assert_eq!(code, 403, "{needle}: {body:?}");
    assert!(error.contains(needle), "{needle}: {error}");
    assert!(error.contains("nothing changed"), "{error}");
    assert_eq!(active_id(w), live, "{needle}: the live release changed");
    assert!(
        !w.install_dir.join("releases/active.new").exists(),
        "{needle}: staging left"
    );
    let entry = last_journal(s, w);
    assert_eq!(entry.outcome, "error", "{entry:?}");
    assert!(entry.detail.contains(needle), "{entry:?}");
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn a_signing_updater_refuses_unsigned_tampered_foreign_and_replayed_releases() {
    let s = Swarm::new();
    assert_eq!(mode(&s.home().join("ca/release.key")), 0o600);
    let mut w = s.worker("w1");
    assert_eq!(mode(&w.bundles.updater_dir.join("release.pub")), 0o644);
    let (a, a_tgz) = tree(&s, &w, "a", "1");
    let (b, b_tgz) = tree(&s, &w, "b", "2");
    let (_, c_tgz) = tree(&s, &w, "c", "3");

    // swarm update signs: taken.
    s.ok(&["update", "--host", "w1", "--root", root(&a)]);
    let (a_id, _, a_sig) = sign(&s, &a, &[]);
    assert_eq!(active_id(&w).as_deref(), Some(a_id.as_str()));

    refused(&s, &w, &b_tgz, None, "takes only signed releases");
    // A valid signature over another tree: the release_id differs.
    let (b_id, b_seq, b_sig) = sign(&s, &b, &[]);
    refused(&s, &w, &c_tgz, Some(&b_sig), "tampered");
    // Another key's signature, however new its seq.
    let foreign = ReleaseKey::generate().expect("key").sign(Claim {
        release_id: b_id.clone(),
        seq: 1_000_000,
        created_at: "2026-12-02T00:00:00Z".into(),
        signer: "master".into(),
        downgrade: false,
    });
    refused(&s, &w, &b_tgz, Some(&foreign.to_json()), "does not verify");
    refused(&s, &w, &b_tgz, Some("{not json"), "not the JSON");

    // b goes in signed (a newer seq); a's older signature is a replay.
    let (code, body) = push(&s, &w, &b_tgz, Some(&b_sig));
    assert_eq!(code, 200, "{body:?}");
    assert_eq!(active_id(&w).as_deref(), Some(b_id.as_str()));
    refused(&s, &w, &a_tgz, Some(&a_sig), "below");
    // The highest seq survives a restart of the updater.
    w.restart();
    tests::eventually(std::time::Duration::from_secs(20), "w1 answering", || {
        let out = s.run(&["status", "--json"]);
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["hosts"][0]["updater"] == "ok").then_some(())
    });
    refused(&s, &w, &a_tgz, Some(&a_sig), "below");

    // Rollback to a kept release needs no signature.
    s.ok(&["rollback", "--host", "w1"]);
    assert_eq!(active_id(&w).as_deref(), Some(a_id.as_str()));
    s.ok(&["rollback", "--host", "w1", "--to", &b_id[..12]]);
    assert_eq!(active_id(&w).as_deref(), Some(b_id.as_str()));

    // A home restored from an old backup signs with seqs the updater has
    // passed: refused, until the operator signs a downgrade.
    let db = rusqlite::Connection::open(s.home().join("inventory.db")).expect("db");
    db.execute("UPDATE release_signing SET seq = 0", [])
        .expect("reset seq");
    drop(db);
    let out = s.code(&["update", "--host", "w1", "--root", root(&a)], 1);
    assert!(out.contains("below"), "{out}");
    assert_eq!(active_id(&w).as_deref(), Some(b_id.as_str()));
    let (_, down_seq, down_sig) = sign(&s, &a, &["--allow-downgrade"]);
    assert!(down_seq < b_seq, "{down_seq} {b_seq}");
    let claim: Value = serde_json::from_str(&down_sig).expect("signature json");
    assert_eq!(claim["downgrade"], true, "{claim}");
    assert_eq!(claim["signer"], "master", "{claim}");
    let (code, body) = push(&s, &w, &a_tgz, Some(&down_sig));
    assert_eq!(code, 200, "{body:?}");
    assert_eq!(active_id(&w).as_deref(), Some(a_id.as_str()));
    s.ok(&[
        "update",
        "--host",
        "w1",
        "--root",
        root(&b),
        "--allow-downgrade",
    ]);
    assert_eq!(active_id(&w).as_deref(), Some(b_id.as_str()));
}

#[test]
fn a_curl_push_with_swarm_sign_output_is_taken() {
    let s = Swarm::new();
    let w = s.worker("w1");
    let (dir, tgz) = tree(&s, &w, "app", "1");
    let file = s.scratch().join("app.tgz");
    let signature = s.ok(&["sign", "--root", root(&dir)]);
    let master = s.home().join("master");
    let curl = |with_signature: bool| {
        let mut c = Command::new("curl");
        c.args([
            "-sS",
            "--max-time",
            "60",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .arg("--cacert")
        .arg(master.join("ca.crt"))
        .arg("--cert")
        .arg(master.join("master.crt"))
        .arg("--key")
        .arg(master.join("master.key"))
        .arg("-F")
        .arg(format!("sha256={}", sha256_hex(&tgz)))
        .arg("-F")
        .arg(format!("tarball=@{}", file.display()));
        if with_signature {
            c.arg("-F").arg(format!("signature={}", signature.trim()));
        }
        let out = c.arg(w.url("/update")).output().expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(curl(false), "403");
    assert_eq!(curl(true), "200");
    assert_eq!(active_id(&w), Some(release_id(&s, &dir)));
}

#[test]
fn renew_delivers_release_pub_to_an_updater_that_took_unsigned_pushes() {
    let s = Swarm::unsigned();
    let w = s.worker("w1");
    let pub_file = w.bundles.updater_dir.join("release.pub");
    assert!(!pub_file.exists());
    let (a, a_tgz) = tree(&s, &w, "a", "1");
    let (_, b_tgz) = tree(&s, &w, "b", "2");
    // Without release.pub: unsigned pushes, as before.
    let (code, body) = push(&s, &w, &a_tgz, None);
    assert_eq!(code, 200, "{body:?}");
    s.fails(&["sign", "--root", root(&a)], 3, "swarm key init");
    let doc = s.json(&["key", "init", "--json"], 0);
    assert_eq!(
        mode(Path::new(doc["key_file"].as_str().expect("key_file"))),
        0o600
    );
    s.fails(&["key", "init"], 2, "--force");
    // Still unsigned until the updater is given the key.
    let (code, body) = push(&s, &w, &b_tgz, None);
    assert_eq!(code, 200, "{body:?}");
    let doc = s.json(&["renew", "--host", "w1", "--json"], 0);
    assert_eq!(doc["hosts"][0]["renewed"], true, "{doc}");
    assert_eq!(mode(&pub_file), 0o644);
    assert_eq!(
        std::fs::read_to_string(&pub_file).expect("release.pub"),
        std::fs::read_to_string(s.home().join("ca/release.pub")).expect("home release.pub")
    );
    refused(&s, &w, &a_tgz, None, "takes only signed releases");
    s.ok(&["update", "--host", "w1", "--root", root(&a)]);
    assert_eq!(active_id(&w), Some(release_id(&s, &a)));
    // A second renew (no key change) keeps it.
    s.json(&["renew", "--host", "w1", "--json"], 0);
    assert!(pub_file.exists());
}

#[test]
fn a_key_file_elsewhere_is_recorded_not_copied_and_can_be_given_per_command() {
    let s = Swarm::uninitialised();
    let media = s.scratch().join("media");
    let key = media.join("release.key");
    let doc = s.json(
        &[
            "ca",
            "init",
            "--key-file",
            key.to_str().expect("utf-8"),
            "--json",
        ],
        0,
    );
    assert_eq!(
        doc["release_key"]["key_file"],
        key.to_str().expect("utf-8"),
        "{doc}"
    );
    assert_eq!(mode(&key), 0o600);
    assert!(
        !s.home().join("ca/release.key").exists(),
        "never a copy in the home"
    );
    assert!(s.home().join("ca/release.pub").exists());
    let w = s.worker("w1");
    let (a, _) = tree(&s, &w, "a", "1");
    let (b, _) = tree(&s, &w, "b", "2");
    s.ok(&["update", "--host", "w1", "--root", root(&a)]);
    // The media unplugged: signing commands say so, and push nothing.
    let moved = s.scratch().join("elsewhere.key");
    std::fs::rename(&key, &moved).expect("move the key");
    s.fails(
        &["update", "--host", "w1", "--root", root(&b)],
        3,
        "not there",
    );
    assert_eq!(active_id(&w), Some(release_id(&s, &a)));
    let moved_s = moved.to_str().expect("utf-8");
    s.ok(&[
        "update",
        "--host",
        "w1",
        "--root",
        root(&b),
        "--key-file",
        moved_s,
    ]);
    assert_eq!(active_id(&w), Some(release_id(&s, &b)));
    // Another key is refused before anything is sent.
    let other = s.scratch().join("other.key");
    ReleaseKey::generate()
        .expect("key")
        .save(&other)
        .expect("save");
    s.fails(
        &[
            "update",
            "--host",
            "w1",
            "--root",
            root(&a),
            "--key-file",
            other.to_str().expect("utf-8"),
        ],
        3,
        "not the one",
    );
}

#[test]
fn a_rotated_key_reaches_updaters_by_renew_only_with_the_old_keys_endorsement() {
    let s = Swarm::new();
    let w = s.worker("w1");
    let pub_file = w.bundles.updater_dir.join("release.pub");
    let held = std::fs::read_to_string(&pub_file).expect("release.pub");
    // A master key alone (stolen) cannot swap in a release key of its own,
    // endorsed by nobody or by itself.
    let foreign = ReleaseKey::generate().expect("key");
    let self_endorsed = foreign.endorse(&foreign.public());
    for endorsement in [None, Some(self_endorsed)] {
        let body = pki::renew::RenewBody::new(&w.bundles.agent, &w.bundles.updater)
            .with_release_pub(&foreign.public(), endorsement)
            .expect("body");
        let (code, text) = tests::block_on(async {
            let r = s
                .master_client(&w.bundles.host.updater_cn())
                .post(w.url("/renew"))
                .json(&body)
                .send()
                .await
                .expect("renew");
            (r.status().as_u16(), r.text().await.unwrap_or_default())
        });
        assert_eq!(code, 400, "{text}");
        assert!(text.contains("nothing changed"), "{text}");
        assert_eq!(
            std::fs::read_to_string(&pub_file).expect("release.pub"),
            held
        );
    }
    // Rotation: the old key endorses the new one.
    let doc = s.json(&["key", "init", "--force", "--json"], 0);
    assert!(doc["endorsed_by"].is_string(), "{doc}");
    let (a, _) = tree(&s, &w, "a", "1");
    let out = s.code(&["update", "--host", "w1", "--root", root(&a)], 1);
    assert!(out.contains("does not verify"), "{out}");
    let doc = s.json(&["renew", "--host", "w1", "--json"], 0);
    assert_eq!(doc["hosts"][0]["renewed"], true, "{doc}");
    let now = std::fs::read_to_string(&pub_file).expect("release.pub");
    assert_ne!(now, held);
    assert_eq!(
        now,
        std::fs::read_to_string(s.home().join("ca/release.pub")).expect("home release.pub")
    );
    s.ok(&["update", "--host", "w1", "--root", root(&a)]);
    assert_eq!(active_id(&w), Some(release_id(&s, &a)));
}
