//! Issue 12: content-addressed releases. The `release_id` (the SHA-256 of
//! the canonical tree index) names a tree however it was compressed; the
//! updater keeps the index beside the manifest; zstd and gzip uploads.
//! Real updaters, real agents, real tarballs.

use std::io::Write;
use std::path::Path;

use pki::index::{INDEX_FILE, IndexEntry, TreeIndex};
use pki::wire::{MANIFEST_FILE, Manifest, OpStatus};
use tests::release::{ReleaseTree, agent_toml, raw, sha256_hex, write_file as write};
use tests::worker::{Worker, WorkerOptions};
use tests::{Swarm, TestPki};

/// The same files as [`ReleaseTree::tarball`], gzip-compressed at `level`.
fn tgz_at(tree: &ReleaseTree, level: u32) -> Vec<u8> {
    let tar = gunzip(&tree.tarball());
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}

fn gunzip(tgz: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(tgz), &mut out).unwrap();
    out
}

fn manifest(dir: &Path) -> Manifest {
    Manifest::read(dir).unwrap_or_else(|| panic!("no manifest in {}", dir.display()))
}

#[tokio::test]
async fn one_tree_compressed_twice_is_one_release() {
    let pki = TestPki::new();
    let w = Worker::start(&pki, "w1", WorkerOptions::default());
    let client = w.master_client(&pki);
    let tree = ReleaseTree::new()
        .file("VERSION", b"1")
        .file("dir/data.txt", &b"0123456789".repeat(1000));
    let fast = tgz_at(&tree, 1);
    let best = tgz_at(&tree, 9);
    assert_ne!(
        sha256_hex(&fast),
        sha256_hex(&best),
        "two different uploads"
    );

    let (code, body) = w.push(&client, &fast).await;
    assert_eq!(code, 200, "{body:?}\n{}", w.log());
    let pushed = body.release.expect("a manifest");
    let id = pushed
        .release_id
        .clone()
        .expect("the manifest has a release_id");
    assert_eq!(
        pushed.sha256,
        sha256_hex(&fast),
        "sha256 stays the upload's"
    );

    // The index is kept beside the manifest, and names the release.
    let active = w.install_dir.join("releases/active");
    let bytes = std::fs::read(active.join(INDEX_FILE)).expect(".swarm-index");
    assert_eq!(sha256_hex(&bytes), id);
    let index = TreeIndex::parse(&bytes, 1000).unwrap();
    let paths: Vec<_> = index.entries().iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        ["VERSION", "dir", "dir/data.txt"],
        "manifest and index are no entries"
    );
    let data = index.get("dir/data.txt").unwrap();
    assert_eq!(
        data.sha256.as_deref(),
        Some(sha256_hex(&b"0123456789".repeat(1000)).as_str())
    );
    assert_eq!(manifest(&active).release_id.as_deref(), Some(id.as_str()));

    // The same tree, compressed otherwise: the same release, unchanged.
    let (code, body) = w.push(&client, &best).await;
    assert_eq!(code, 200, "{body:?}");
    assert_eq!(body.status, OpStatus::Unchanged, "{body:?}");
    assert_eq!(body.release.and_then(|m| m.release_id), Some(id.clone()));
    // One byte more: another release.
    let other = tree.clone().file("VERSION2", b"2").tarball();
    let (code, body) = w.push(&client, &other).await;
    assert_eq!((code, body.status), (200, OpStatus::Updated), "{body:?}");
    assert_ne!(body.release.and_then(|m| m.release_id), Some(id));
}

#[tokio::test]
async fn an_index_or_manifest_in_the_upload_is_refused() {
    let pki = TestPki::new();
    let w = Worker::start(&pki, "w1", WorkerOptions::default());
    let client = w.master_client(&pki);
    for name in [INDEX_FILE, MANIFEST_FILE] {
        let tgz = raw::tgz(&[
            raw::file(b"VERSION", b"1"),
            raw::file(name.as_bytes(), b"x"),
        ]);
        let (code, body) = w.push(&client, &tgz).await;
        assert_eq!(code, 400, "{name}: {body:?}");
        let why = body.error.unwrap_or_default();
        assert!(why.contains("reserved"), "{why}");
        assert!(!w.install_dir.join("releases/active.new").exists());
        assert!(w.current_target().is_none(), "nothing rotated");
    }
}

#[test]
fn the_master_and_the_updater_compute_the_same_release_id() {
    let s = Swarm::new();
    let w = s.worker("w1");
    let tree = s.tree("app");
    write(&tree, "swarm.toml", agent_toml(&[]));
    write(&tree, "VERSION", "1");
    write(&tree, "deep/er/file.txt", "hello");
    std::os::unix::fs::symlink("./er/file.txt", tree.join("deep/link")).unwrap();
    let root = tree.to_str().unwrap();
    let dry = s.json(
        &[
            "update",
            "--host",
            "w1",
            "--root",
            root,
            "--dry-run",
            "--json",
        ],
        0,
    );
    let want = dry["release"]["release_id"]
        .as_str()
        .expect("dry run shows release_id")
        .to_owned();
    assert_eq!(want.len(), 64);
    s.ok(&["update", "--host", "w1", "--root", root]);
    let active = manifest(&w.install_dir.join("releases/active"));
    assert_eq!(
        active.release_id.as_deref(),
        Some(want.as_str()),
        "{}",
        std::fs::read_to_string(w.install_dir.join("releases/active").join(INDEX_FILE)).unwrap()
    );
    // The agent's /health reports it too.
    let h = w.wait_agent_release_blocking(&active.sha256);
    assert_eq!(h.release.and_then(|m| m.release_id), Some(want));
}

#[test]
fn verify_reports_a_file_changed_by_hand_on_the_worker() {
    let s = Swarm::new();
    let w = s.worker("w1");
    let tree = s.tree("app");
    write(&tree, "swarm.toml", agent_toml(&[]));
    write(&tree, "VERSION", "1");
    write(&tree, "lib/code.txt", "original");
    let root = tree.to_str().unwrap();
    s.ok(&["update", "--host", "w1", "--root", root]);
    write(&tree, "VERSION", "2");
    s.ok(&["update", "--host", "w1", "--root", root]);

    let clean = s.json(&["verify", "--host", "w1", "--json"], 0);
    assert_eq!(clean["clean"], true, "{clean}");
    let slots: Vec<_> = clean["hosts"][0]["slots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["slot"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(slots, ["active", "prev"]);

    // By hand on the worker: one file changed in the live release, one
    // added, one removed from prev.
    let active = w.install_dir.join("releases/active");
    std::fs::write(active.join("lib/code.txt"), "tampered").unwrap();
    std::fs::write(active.join("dropped.txt"), "new").unwrap();
    std::fs::remove_file(w.install_dir.join("releases/prev/VERSION")).unwrap();
    let dirty = s.json(&["verify", "--host", "w1", "--json"], 1);
    assert_eq!(dirty["clean"], false, "{dirty}");
    let a = &dirty["hosts"][0]["slots"][0];
    assert_eq!(a["slot"], "active");
    assert_eq!(a["modified"], serde_json::json!(["lib/code.txt"]), "{a}");
    assert_eq!(a["added"], serde_json::json!(["dropped.txt"]), "{a}");
    let p = &dirty["hosts"][0]["slots"][1];
    assert_eq!(p["missing"], serde_json::json!(["VERSION"]), "{p}");
    // The table says it too, and exits 1.
    let out = s.code(&["verify", "--all"], 1);
    assert!(
        out.contains("differs") && out.contains("lib/code.txt"),
        "{out}"
    );
}

#[tokio::test]
async fn only_the_master_may_verify() {
    let pki = TestPki::new();
    let w = Worker::start(&pki, "w1", WorkerOptions::default());
    let resp = w
        .agent_identity_client()
        .post(w.url("/verify"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    // Nothing installed yet: a clean, empty report.
    let resp = w
        .master_client(&pki)
        .post(w.url("/verify"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let r: pki::wire::VerifyReport = resp.json().await.unwrap();
    assert!(r.slots.is_empty());
}

/// `n` incompressible bytes, the same for the same `seed`.
fn noise(seed: &str, n: usize) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut out = Vec::with_capacity(n + 32);
    let mut i = 0u64;
    while out.len() < n {
        out.extend_from_slice(&Sha256::digest(format!("{seed}-{i}").as_bytes()));
        i += 1;
    }
    out.truncate(n);
    out
}

/// A tree of 20 files of 100 KB of noise each, and an agent.
fn large_tree(s: &Swarm) -> std::path::PathBuf {
    let tree = s.tree("large");
    write(&tree, "swarm.toml", agent_toml(&[]));
    write(&tree, "VERSION", "1");
    for i in 0..20 {
        let p = tree.join(format!("data/{}/blob-{i}.bin", i % 4));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, noise(&format!("blob{i}"), 100_000)).unwrap();
    }
    tree
}

#[test]
fn one_changed_file_in_a_large_tree_is_a_small_upload() {
    let s = Swarm::new();
    let w = s.worker("w1");
    let tree = large_tree(&s);
    let root = tree.to_str().unwrap();
    let first = s.json(&["update", "--host", "w1", "--root", root, "--json"], 0);
    let full = first["hosts"][0]["wire_bytes"]
        .as_u64()
        .expect("wire_bytes");
    assert!(full > 2_000_000, "the first push is whole: {first}");
    assert_eq!(first["hosts"][0].get("delta"), None, "{first}");

    write(&tree, "VERSION", "2");
    let second = s.json(&["update", "--host", "w1", "--root", root, "--json"], 0);
    let host = &second["hosts"][0];
    assert_eq!(host["agent"], "updated", "{second}");
    assert_eq!(host["delta"], true, "{second}");
    let sent = host["wire_bytes"].as_u64().expect("wire_bytes");
    assert!(
        sent < 64 * 1024,
        "one changed file sent {sent} bytes: {second}"
    );
    // And the updater says it received that little.
    let received = host["timings"]["received_bytes"]
        .as_u64()
        .expect("received_bytes");
    assert!(received > 0 && received <= sent, "{second}");
    // The host runs the new release, whole, under the release's
    // release_id (its sha256 is the delta's: what it was sent).
    assert_eq!(
        second["release"]["sha256"],
        serde_json::Value::Null,
        "{second}"
    );
    let sha = host["release"]["sha256"].as_str().unwrap();
    let id = second["release"]["release_id"].as_str().unwrap();
    let h = w.wait_agent_release_blocking(sha);
    assert_eq!(h.release.and_then(|m| m.release_id).as_deref(), Some(id));
    let active = w.install_dir.join("releases/active");
    assert_eq!(
        std::fs::read_to_string(active.join("VERSION")).unwrap(),
        "2"
    );
    assert_eq!(
        std::fs::read(active.join("data/3/blob-7.bin")).unwrap(),
        noise("blob7", 100_000)
    );
    assert_eq!(
        s.json(&["verify", "--host", "w1", "--json"], 0)["clean"],
        true
    );
    // --full: the whole release, never a delta.
    write(&tree, "VERSION", "3");
    let third = s.json(
        &["update", "--host", "w1", "--root", root, "--full", "--json"],
        0,
    );
    assert_eq!(third["hosts"][0].get("delta"), None, "{third}");
    assert!(
        third["hosts"][0]["wire_bytes"].as_u64().unwrap() > 2_000_000,
        "{third}"
    );
}

#[test]
fn content_only_an_older_kept_release_has_is_not_sent_again() {
    let s = Swarm::new();
    let w = s.worker("w1");
    let tree = large_tree(&s);
    let root = tree.to_str().unwrap();
    let big = "data/0/blob-0.bin";
    let a = noise("blob0", 100_000);
    s.ok(&["update", "--host", "w1", "--root", root]); // v1: big is A
    std::fs::write(tree.join(big), noise("other", 100_000)).unwrap();
    s.ok(&["update", "--host", "w1", "--root", root]); // v2: big is B
    write(&tree, "VERSION", "3");
    s.ok(&["update", "--host", "w1", "--root", root]); // v3
    // A now lives only in the oldest kept release (not active, not prev).
    std::fs::write(tree.join(big), &a).unwrap();
    write(&tree, "VERSION", "4");
    let doc = s.json(&["update", "--host", "w1", "--root", root, "--json"], 0);
    let host = &doc["hosts"][0];
    assert_eq!(host["agent"], "updated", "{doc}");
    assert_eq!(host["delta"], true, "{doc}");
    let sent = host["wire_bytes"].as_u64().expect("wire_bytes");
    assert!(sent < 64 * 1024, "A was sent again ({sent} bytes): {doc}");
    let active = w.install_dir.join("releases/active");
    assert_eq!(std::fs::read(active.join(big)).unwrap(), a);
    assert_eq!(
        std::fs::read_to_string(active.join("VERSION")).unwrap(),
        "4"
    );
    let id = doc["release"]["release_id"].as_str().unwrap();
    assert_eq!(w.slot_id("active").as_deref(), Some(id));
    // The master's view of the same release, pushed again: nothing at all.
    let again = s.json(&["update", "--host", "w1", "--root", root, "--json"], 0);
    assert_eq!(again["hosts"][0]["agent"], "unchanged", "{again}");
    // And back to v3's tree, which the worker keeps as prev: a delta with
    // no file content (not a whole push).
    std::fs::write(tree.join(big), noise("other", 100_000)).unwrap();
    write(&tree, "VERSION", "3");
    let back = s.json(&["update", "--host", "w1", "--root", root, "--json"], 0);
    assert_eq!(back["hosts"][0]["delta"], true, "{back}");
    assert!(
        back["hosts"][0]["wire_bytes"].as_u64().unwrap() < 64 * 1024,
        "{back}"
    );
}

#[test]
fn a_tampered_kept_file_is_rehashed_not_reused() {
    let s = Swarm::new();
    let w = s.worker("w1");
    let tree = large_tree(&s);
    let root = tree.to_str().unwrap();
    s.ok(&["update", "--host", "w1", "--root", root]);
    // Changed on the worker, size kept: only its hash tells.
    let kept = w.install_dir.join("releases/active/data/1/blob-5.bin");
    let mut bytes = std::fs::read(&kept).unwrap();
    bytes[10] ^= 0xff;
    std::fs::write(&kept, &bytes).unwrap();

    write(&tree, "VERSION", "2");
    let out = s.json(&["update", "--host", "w1", "--root", root, "--json"], 0);
    let host = &out["hosts"][0];
    assert_eq!(host["agent"], "updated", "{out}");
    assert_eq!(host.get("delta"), None, "the delta was refused: {out}");
    let detail = host["detail"].as_str().unwrap();
    assert!(
        detail.contains("sent whole") && detail.contains("blob-5.bin"),
        "{detail}"
    );
    assert!(host["wire_bytes"].as_u64().unwrap() > 2_000_000, "{out}");
    let active = w.install_dir.join("releases/active");
    assert_eq!(
        std::fs::read(active.join("data/1/blob-5.bin")).unwrap(),
        noise("blob5", 100_000)
    );
}

/// Release A of the delta tests, pushed whole: `VERSION`, `keep/a.txt`,
/// `keep/b.txt`, and the reference agent. Its release_id.
async fn base_release(w: &Worker, client: &reqwest::Client) -> String {
    let tgz = ReleaseTree::new()
        .file("VERSION", b"A")
        .file("keep/a.txt", &noise("a", 50_000))
        .file("keep/b.txt", &noise("b", 50_000))
        .reference_agent(w.agent_port, &[])
        .tarball();
    let (code, body) = w.push(client, &tgz).await;
    assert_eq!(code, 200, "{body:?}\n{}", w.log());
    w.wait_agent_release(&sha256_hex(&tgz)).await;
    body.release.and_then(|m| m.release_id).expect("release_id")
}

/// The index of release B: A with `VERSION` = `version`, plus `extra`.
fn index_b(w: &Worker, version: &[u8], extra: Vec<IndexEntry>) -> Vec<IndexEntry> {
    let active = w.install_dir.join("releases/active");
    let toml = std::fs::read(active.join("swarm.toml")).unwrap();
    let mut e = vec![
        IndexEntry::file("VERSION", 0o644, version.len() as u64, sha256_hex(version)),
        IndexEntry::dir("keep", 0o755),
        IndexEntry::file("keep/a.txt", 0o644, 50_000, sha256_hex(&noise("a", 50_000))),
        IndexEntry::file("keep/b.txt", 0o644, 50_000, sha256_hex(&noise("b", 50_000))),
        IndexEntry::file("swarm.toml", 0o644, toml.len() as u64, sha256_hex(&toml)),
    ];
    e.extend(extra);
    e
}

/// The delta tarball: `VERSION` and the `keep/` directory.
fn delta_tgz(version: &[u8]) -> Vec<u8> {
    raw::tgz(&[
        raw::entry(b"keep/", b'5', b"", 0o755, b""),
        raw::file(b"VERSION", version),
    ])
}

async fn push_delta(
    w: &Worker,
    client: &reqwest::Client,
    tgz: &[u8],
    base: &str,
    index: &str,
) -> (u16, pki::wire::OpResponse) {
    let form =
        tests::release::release_form(tgz, &sha256_hex(tgz), &[("base", base), ("index", index)]);
    let resp = client
        .post(w.url("/update"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let code = resp.status().as_u16();
    (code, resp.json().await.unwrap())
}

fn text(entries: Vec<IndexEntry>) -> String {
    String::from_utf8(TreeIndex::new(entries).unwrap().to_bytes()).unwrap()
}

#[tokio::test]
async fn a_delta_is_completed_from_the_live_release_and_bad_ones_are_refused() {
    let pki = TestPki::new();
    let w = Worker::start(&pki, "w1", WorkerOptions::default());
    let client = w.master_client(&pki);
    let a = base_release(&w, &client).await;
    let nothing_rotated = |what: &str| {
        assert!(
            !w.install_dir.join("releases/active.new").exists(),
            "{what}: staging removed"
        );
        assert_eq!(
            manifest(&w.install_dir.join("releases/active"))
                .release_id
                .as_deref(),
            Some(a.as_str()),
            "{what}: A still live"
        );
    };

    // A base this worker does not have: 412, for the master to push whole.
    let good = text(index_b(&w, b"B", vec![]));
    let (code, body) = push_delta(&w, &client, &delta_tgz(b"B"), &"0".repeat(64), &good).await;
    assert_eq!(code, 412, "{body:?}");
    assert!(
        body.error
            .unwrap_or_default()
            .contains("push the whole release")
    );
    nothing_rotated("unknown base");

    // A file whose content differs from the index.
    let (code, body) = push_delta(&w, &client, &delta_tgz(b"C"), &a, &good).await;
    assert_eq!(code, 400, "{body:?}");
    assert!(
        body.error
            .unwrap_or_default()
            .contains("differs from the index")
    );
    nothing_rotated("hash differs");

    // An entry missing from the upload and from every kept release.
    let more = text(index_b(
        &w,
        b"B",
        vec![IndexEntry::file("keep/z.txt", 0o644, 3, sha256_hex(b"zzz"))],
    ));
    let (code, body) = push_delta(&w, &client, &delta_tgz(b"B"), &a, &more).await;
    assert_eq!(code, 400, "{body:?}");
    assert!(
        body.error
            .unwrap_or_default()
            .contains("missing from the upload and from every")
    );
    nothing_rotated("missing content");

    // A duplicate path, an unsafe path, a setuid mode.
    let dup = good.clone() + good.lines().nth(1).unwrap() + "\n";
    let evil = |e: IndexEntry| text(index_b(&w, b"B", vec![e]));
    for (what, index) in [
        ("duplicate", dup),
        (
            "dot-dot",
            evil(IndexEntry::file("keep/../../x", 0o644, 1, sha256_hex(b"x"))),
        ),
        (
            "setuid",
            evil(IndexEntry::file(
                "keep/s",
                0o4755,
                50_000,
                sha256_hex(&noise("a", 50_000)),
            )),
        ),
    ] {
        let (code, body) = push_delta(&w, &client, &delta_tgz(b"B"), &a, &index).await;
        assert_eq!(code, 400, "{what}: {body:?}");
        nothing_rotated(what);
    }

    // An index patch that does not rebuild the release_id it claims.
    let a_index = TreeIndex::parse(
        &std::fs::read(w.install_dir.join("releases/active").join(INDEX_FILE)).unwrap(),
        100,
    )
    .unwrap();
    let want_b = TreeIndex::new(index_b(&w, b"B", vec![])).unwrap();
    let patch = a_index.patch_to(&want_b);
    assert_eq!(patch.lines().count(), 2, "one changed path: {patch}");
    let tgz = delta_tgz(b"B");
    let patched = |id: String| {
        let form = tests::release::release_form(
            &tgz,
            &sha256_hex(&tgz),
            &[
                ("base", a.as_str()),
                ("index_patch", patch.as_str()),
                ("release_id", &id),
            ],
        );
        client.post(w.url("/update")).multipart(form).send()
    };
    let resp = patched("f".repeat(64)).await.unwrap();
    assert_eq!(resp.status(), 400);
    let why: pki::wire::OpResponse = resp.json().await.unwrap();
    assert!(why.error.unwrap_or_default().contains("gives release"));
    nothing_rotated("a patch that gives another release");

    // The good delta: only VERSION travelled, the rest came from A.
    let tgz = delta_tgz(b"B");
    let (code, body) = push_delta(&w, &client, &tgz, &a, &good).await;
    assert_eq!(code, 200, "{body:?}\n{}", w.log());
    assert_eq!(body.status, OpStatus::Updated);
    let m = body.release.unwrap();
    assert_eq!(
        m.release_id,
        Some(
            TreeIndex::new(index_b(&w, b"B", vec![]))
                .unwrap()
                .release_id()
        )
    );
    assert_eq!(m.files, 4);
    // The tarball and the index sent with it.
    assert_eq!(
        body.timings.unwrap().received_bytes,
        (tgz.len() + good.len()) as u64
    );
    w.wait_agent_release(&m.sha256).await;
    let active = w.install_dir.join("releases/active");
    assert_eq!(
        std::fs::read(active.join("keep/b.txt")).unwrap(),
        noise("b", 50_000)
    );
    assert_eq!(std::fs::read(active.join("VERSION")).unwrap(), b"B");
}

#[tokio::test]
async fn kill_9_during_a_delta_push_is_repaired() {
    for step in ["store-linking", "delta-copying", "delta-materialized"] {
        let pki = TestPki::new();
        let mut w = Worker::start(&pki, "w1", WorkerOptions::default());
        let client = w.master_client(&pki);
        let a = base_release(&w, &client).await;
        let good = text(index_b(&w, b"B", vec![]));
        w.options
            .env
            .push(("SWARM_UPDATER_CRASH_AT".into(), step.into()));
        let pid = w.updater_pid() as i32;
        w.restart();
        tests::process::wait_dead(pid, "the previous updater");
        let form = tests::release::release_form(
            &delta_tgz(b"B"),
            &sha256_hex(&delta_tgz(b"B")),
            &[("base", &a), ("index", &good)],
        );
        let sent = client.post(w.url("/update")).multipart(form).send().await;
        assert!(
            sent.is_err() || !sent.unwrap().status().is_success(),
            "{step}"
        );
        w.options.env.retain(|(k, _)| k != "SWARM_UPDATER_CRASH_AT");
        let pid = w.updater_pid() as i32;
        tests::process::wait_dead(pid, "the crashed updater");
        w.restart();
        // Repaired: A whole and live, staging gone, and the delta lands now.
        let v = w
            .master_client(&pki)
            .post(w.url("/verify"))
            .send()
            .await
            .unwrap();
        let v: pki::wire::VerifyReport = v.json().await.unwrap();
        assert!(v.clean, "{step}: {v:?}");
        assert!(
            !w.install_dir.join("releases/active.new").exists(),
            "{step}"
        );
        let (code, body) = push_delta(&w, &client, &delta_tgz(b"B"), &a, &good).await;
        assert_eq!(code, 200, "{step}: {body:?}\n{}", w.log());
    }
}

#[test]
fn rollback_to_the_third_newest_kept_release_is_probed() {
    let s = Swarm::new();
    let w = s.worker("w1");
    let tree = s.tree("app");
    write(&tree, "swarm.toml", agent_toml(&[]));
    let root = tree.to_str().unwrap();
    for v in 1..=4 {
        write(&tree, "VERSION", v.to_string());
        s.ok(&["update", "--host", "w1", "--root", root]);
    }
    let r = s.json(&["releases", "--host", "w1", "--json"], 0);
    let kept: Vec<String> = r["kept"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["release_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kept.len(), 4, "{r}");
    assert_eq!(r["active"]["release_id"].as_str(), Some(kept[0].as_str()));
    assert_eq!(r["prev"]["release_id"].as_str(), Some(kept[1].as_str()));
    let table = s.ok(&["releases", "--host", "w1"]);
    assert!(
        table.contains(&kept[2][..12]) && table.contains("kept"),
        "{table}"
    );

    let target = &kept[2];
    let out = s.json(
        &["rollback", "--host", "w1", "--to", &target[..10], "--json"],
        0,
    );
    let host = &out["hosts"][0];
    assert_eq!(host["agent"], "rolled-back", "{out}");
    assert!(
        !host["probes"].as_array().unwrap().is_empty(),
        "probed: {out}"
    );
    let sha = host["release"]["sha256"].as_str().unwrap();
    let h = w.wait_agent_release_blocking(sha);
    assert_eq!(
        h.release.and_then(|m| m.release_id).as_deref(),
        Some(target.as_str())
    );
    let active = w.install_dir.join("releases/active");
    assert_eq!(
        std::fs::read_to_string(active.join("VERSION")).unwrap(),
        "2"
    );
    // The release that ran is prev now; nothing was lost.
    let r = s.json(&["releases", "--host", "w1", "--json"], 0);
    assert_eq!(
        r["prev"]["release_id"].as_str(),
        Some(kept[0].as_str()),
        "{r}"
    );
    assert_eq!(r["kept"].as_array().unwrap().len(), 4, "{r}");
    // To the active one: nothing to do.
    let again = s.json(
        &["rollback", "--host", "w1", "--to", &target[..10], "--json"],
        0,
    );
    assert_eq!(again["hosts"][0]["agent"], "unchanged", "{again}");
}

#[tokio::test]
async fn kept_releases_are_bounded_and_ids_must_be_unambiguous() {
    let pki = TestPki::new();
    let options = |keep: &str| WorkerOptions {
        env: vec![("SWARM_UPDATER_KEEP_RELEASES".into(), keep.into())],
        ..WorkerOptions::default()
    };
    // 17 releases kept: two of them share a first hex digit.
    let w = Worker::start(&pki, "w1", options("17"));
    let client = w.master_client(&pki);
    let mut ids = Vec::new();
    for v in 0..17 {
        let tgz = ReleaseTree::new()
            .file("VERSION", format!("{v}").as_bytes())
            .tarball();
        let (code, body) = w.push(&client, &tgz).await;
        assert_eq!(code, 200, "{body:?}\n{}", w.log());
        ids.push(body.release.and_then(|m| m.release_id).unwrap());
    }
    let r = w.releases(&client).await;
    let kept: Vec<String> = r.kept.iter().filter_map(|m| m.release_id.clone()).collect();
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(kept, newest_first);
    let rollback = |body: serde_json::Value| {
        let client = client.clone();
        let url = w.url("/rollback");
        async move {
            let resp = client.post(url).json(&body).send().await.unwrap();
            let code = resp.status().as_u16();
            let v: serde_json::Value = resp.json().await.unwrap();
            (code, v["error"].as_str().unwrap_or_default().to_owned())
        }
    };
    let c = (0..16u8)
        .map(|d| format!("{d:x}"))
        .find(|c| ids.iter().filter(|i| i.starts_with(c.as_str())).count() >= 2)
        .expect("pigeonhole: 17 ids, 16 digits");
    let (code, why) = rollback(serde_json::json!({ "release_id": c })).await;
    assert_eq!(code, 400, "{why}");
    assert!(why.contains("ambiguous"), "{why}");
    for i in ids.iter().filter(|i| i.starts_with(c.as_str())) {
        assert!(why.contains(i.as_str()), "candidates listed: {why}");
    }
    let unknown = (0..=0xffffu32)
        .map(|n| format!("{n:04x}"))
        .find(|p| !ids.iter().any(|i| i.starts_with(p.as_str())))
        .unwrap();
    let (code, why) = rollback(serde_json::json!({ "release_id": unknown })).await;
    assert_eq!(code, 404, "{why}");
    assert!(why.contains(&ids[0][..12]), "candidates listed: {why}");
    // Neither changed anything.
    let active = w.releases(&client).await.active.and_then(|m| m.release_id);
    assert_eq!(active.as_deref(), Some(ids[16].as_str()));

    // --keep-releases 3: active, prev and one in kept/; the rest deleted.
    let w3 = Worker::start(&pki, "w3", options("3"));
    let client3 = w3.master_client(&pki);
    for v in 0..6 {
        let tgz = ReleaseTree::new()
            .file("VERSION", format!("{v}").as_bytes())
            .tarball();
        let (code, body) = w3.push(&client3, &tgz).await;
        assert_eq!(code, 200, "{body:?}");
    }
    assert_eq!(w3.releases(&client3).await.kept.len(), 3);
    let kept_dir = w3.install_dir.join("releases/kept");
    tests::eventually(
        std::time::Duration::from_secs(10),
        "pruned kept releases deleted",
        || {
            let n = std::fs::read_dir(&kept_dir).ok()?.count();
            let trash = std::fs::read_dir(w3.install_dir.join("releases"))
                .ok()?
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with(".trash-"))
                .count();
            (n == 1 && trash == 0).then_some(())
        },
    );
}

/// The release ids in `releases/kept/`, each dir whole (its manifest and
/// index there, the index hashing to the manifest's id).
fn kept_on_disk(w: &Worker) -> Vec<String> {
    let mut ids = Vec::new();
    let Ok(rd) = std::fs::read_dir(w.install_dir.join("releases/kept")) else {
        return ids;
    };
    for e in rd {
        let dir = e.unwrap().path();
        let m = manifest(&dir);
        let index = std::fs::read(dir.join(INDEX_FILE)).unwrap();
        assert_eq!(
            Some(sha256_hex(&index)),
            m.release_id,
            "{} whole",
            dir.display()
        );
        ids.push(m.release_id.unwrap());
    }
    ids
}

#[tokio::test]
async fn kill_9_during_garbage_collection_or_a_rollback_to_a_kept_release_is_repaired() {
    let pki = TestPki::new();
    let mut w = Worker::start(
        &pki,
        "w1",
        WorkerOptions {
            env: vec![("SWARM_UPDATER_KEEP_RELEASES".into(), "3".into())],
            ..WorkerOptions::default()
        },
    );
    let client = w.master_client(&pki);
    let mut ids = Vec::new();
    let port = w.agent_port;
    let tree = |v: usize| {
        ReleaseTree::new()
            .file("VERSION", format!("{v}").as_bytes())
            .reference_agent(port, &[])
            .tarball()
    };
    for v in 0..3 {
        let (code, body) = w.push(&client, &tree(v)).await;
        assert_eq!(code, 200, "{body:?}");
        ids.push(body.release.and_then(|m| m.release_id).unwrap());
    }
    assert_eq!(kept_on_disk(&w), [ids[0].clone()]);

    // Killed right after the prune renamed release 0 to trash.
    let restart = |w: &mut Worker, step: Option<&str>| {
        w.options.env.retain(|(k, _)| k != "SWARM_UPDATER_CRASH_AT");
        if let Some(s) = step {
            w.options
                .env
                .push(("SWARM_UPDATER_CRASH_AT".into(), s.into()));
        }
        let pid = w.updater_pid() as i32;
        w.restart();
        tests::process::wait_dead(pid, "the previous updater");
    };
    restart(&mut w, Some("kept-pruned"));
    let form = tests::release::release_form(&tree(3), &sha256_hex(&tree(3)), &[]);
    assert!(
        client
            .post(w.url("/update"))
            .multipart(form)
            .send()
            .await
            .is_err()
    );
    let pid = w.updater_pid() as i32;
    tests::process::wait_dead(pid, "the crashed updater");
    restart(&mut w, None);
    tests::eventually(
        std::time::Duration::from_secs(10),
        "trash swept at start-up",
        || {
            let trash = std::fs::read_dir(w.install_dir.join("releases"))
                .ok()?
                .filter_map(|e| e.ok())
                .any(|e| e.file_name().to_string_lossy().starts_with(".trash-"));
            (!trash).then_some(())
        },
    );
    assert_eq!(
        kept_on_disk(&w),
        [ids[1].clone()],
        "the kept release whole, the pruned one gone"
    );
    let r = w.releases(&client).await;
    assert_eq!(r.kept.len(), 3, "{r:?}");

    // Killed between moving prev into kept/ and the kept release into prev.
    restart(&mut w, Some("kept-demoted"));
    let sent = client
        .post(w.url("/rollback"))
        .json(&serde_json::json!({ "release_id": &ids[1][..12] }))
        .send()
        .await;
    assert!(sent.is_err(), "{sent:?}");
    let pid = w.updater_pid() as i32;
    tests::process::wait_dead(pid, "the crashed updater");
    restart(&mut w, None);
    let mut on_disk = kept_on_disk(&w);
    on_disk.sort();
    let mut both = vec![ids[1].clone(), ids[2].clone()];
    both.sort();
    assert_eq!(on_disk, both, "both releases whole in kept/");
    // And the rollback to it works now.
    let resp = client
        .post(w.url("/rollback"))
        .json(&serde_json::json!({ "release_id": &ids[1][..12] }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", w.log());
    let active = w.releases(&client).await.active.and_then(|m| m.release_id);
    assert_eq!(active.as_deref(), Some(ids[1].as_str()));
}

/// Inode and permission bits of `path`.
fn inode(path: &Path) -> (u64, u32) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let m = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (m.ino(), m.permissions().mode() & 0o7777)
}

/// The objects in the content store with a link count of 1 (what the
/// collection removes), by name.
fn unlinked_objects(w: &Worker) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let Ok(rd) = std::fs::read_dir(w.install_dir.join("releases/store")) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter(|e| e.metadata().is_ok_and(|m| m.nlink() == 1))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn unchanged_files_of_two_releases_share_one_read_only_inode() {
    let s = Swarm::new();
    let w = s.worker("w1");
    let tree = large_tree(&s);
    std::fs::set_permissions(
        tree.join("data/0/blob-0.bin"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let root = tree.to_str().unwrap();
    s.ok(&["update", "--host", "w1", "--root", root]);
    write(&tree, "VERSION", "2");
    s.ok(&["update", "--host", "w1", "--root", root]);
    let (active, prev) = (
        w.install_dir.join("releases/active"),
        w.install_dir.join("releases/prev"),
    );
    for (file, mode) in [("data/1/blob-5.bin", 0o444), ("data/0/blob-0.bin", 0o555)] {
        let (a, p) = (inode(&active.join(file)), inode(&prev.join(file)));
        assert_eq!(a.0, p.0, "{file}: one inode for both releases");
        assert_eq!(a.1, mode, "{file}: read-only, exec bits kept");
    }
    let (a, p) = (inode(&active.join("VERSION")), inode(&prev.join("VERSION")));
    assert_ne!(a.0, p.0, "changed content is its own inode");
    assert_eq!(std::fs::read_to_string(prev.join("VERSION")).unwrap(), "1");
    // The index keeps the canonical mode: the release_id is the master's.
    let index = TreeIndex::parse(&std::fs::read(active.join(INDEX_FILE)).unwrap(), 1000).unwrap();
    assert_eq!(index.get("data/1/blob-5.bin").unwrap().mode, 0o644);
    assert_eq!(index.get("data/0/blob-0.bin").unwrap().mode, 0o755);
    assert_eq!(
        s.json(&["verify", "--host", "w1", "--json"], 0)["clean"],
        true
    );
}

#[test]
fn a_stored_file_changed_with_its_mtime_put_back_is_rehashed_not_reused() {
    let s = Swarm::new();
    let w = s.worker("w1");
    let tree = large_tree(&s);
    let root = tree.to_str().unwrap();
    s.ok(&["update", "--host", "w1", "--root", root]);
    // Changed in place, size kept, and its mtime put back to the
    // nanosecond: size, mtime and inode are as stored; only the content
    // (and the ctime no user call can set) tells.
    let kept = w.install_dir.join("releases/active/data/2/blob-6.bin");
    let stamp = std::process::Command::new("stat")
        .args(["-c", "%y"])
        .arg(&kept)
        .output()
        .unwrap();
    let stamp = String::from_utf8(stamp.stdout).unwrap().trim().to_owned();
    let before = inode(&kept).0;
    let mut bytes = std::fs::read(&kept).unwrap();
    bytes[99] ^= 0x5a;
    std::fs::write(&kept, &bytes).unwrap();
    let touched = std::process::Command::new("touch")
        .arg("-d")
        .arg(&stamp)
        .arg(&kept)
        .status()
        .unwrap();
    assert!(touched.success());
    let again = std::process::Command::new("stat")
        .args(["-c", "%y"])
        .arg(&kept)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(again.stdout).unwrap().trim(), stamp);
    assert_eq!(inode(&kept).0, before);

    write(&tree, "VERSION", "2");
    let out = s.json(&["update", "--host", "w1", "--root", root, "--json"], 0);
    let host = &out["hosts"][0];
    assert_eq!(host["agent"], "updated", "{out}");
    assert_eq!(host.get("delta"), None, "the delta was refused: {out}");
    let detail = host["detail"].as_str().unwrap();
    assert!(detail.contains("blob-6.bin"), "{detail}");
    // The whole push that followed ends on the right release, whole.
    let sha = out["release"]["sha256"].as_str().unwrap();
    w.wait_agent_release_blocking(sha);
    let active = w.install_dir.join("releases/active");
    assert_eq!(
        std::fs::read(active.join("data/2/blob-6.bin")).unwrap(),
        noise("blob6", 100_000)
    );
    assert_eq!(
        std::fs::read_to_string(active.join("VERSION")).unwrap(),
        "2"
    );
    let v = s.json(&["verify", "--host", "w1", "--json"], 1);
    let slots = v["hosts"][0]["slots"].as_array().unwrap();
    assert_eq!(slots[0]["clean"], true, "active is whole: {v}");
    assert_eq!(
        slots[1]["modified"],
        serde_json::json!(["data/2/blob-6.bin"]),
        "prev still holds the change made by hand: {v}"
    );
}

#[tokio::test]
async fn a_delta_against_prev_takes_content_from_every_kept_release() {
    let pki = TestPki::new();
    let w = Worker::start(&pki, "w1", WorkerOptions::default());
    let client = w.master_client(&pki);
    let a = base_release(&w, &client).await;
    let a_dir_index =
        std::fs::read(w.install_dir.join("releases/active").join(INDEX_FILE)).unwrap();
    // B, whole: A plus only-b.txt. A becomes prev.
    let only_b = noise("only-b", 30_000);
    let b = ReleaseTree::new()
        .file("VERSION", b"B")
        .file("keep/a.txt", &noise("a", 50_000))
        .file("keep/b.txt", &noise("b", 50_000))
        .file("keep/only-b.txt", &only_b)
        .reference_agent(w.agent_port, &[])
        .tarball();
    let (code, body) = w.push(&client, &b).await;
    assert_eq!(code, 200, "{body:?}");
    // C against A (prev, not live): A's files and B's only-b.txt, none sent.
    let c = index_b(
        &w,
        b"C",
        vec![IndexEntry::file(
            "keep/only-b.txt",
            0o644,
            only_b.len() as u64,
            sha256_hex(&only_b),
        )],
    );
    let want = TreeIndex::new(c.clone()).unwrap();
    let patch = TreeIndex::parse(&a_dir_index, 100).unwrap().patch_to(&want);
    let tgz = delta_tgz(b"C");
    let form = tests::release::release_form(
        &tgz,
        &sha256_hex(&tgz),
        &[
            ("base", a.as_str()),
            ("index_patch", patch.as_str()),
            ("release_id", want.release_id().as_str()),
        ],
    );
    let resp = client
        .post(w.url("/update"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let code = resp.status().as_u16();
    let body: pki::wire::OpResponse = resp.json().await.unwrap();
    assert_eq!(code, 200, "{body:?}\n{}", w.log());
    let m = body.release.unwrap();
    assert_eq!(m.release_id.as_deref(), Some(want.release_id().as_str()));
    assert_eq!(
        m.sha256,
        sha256_hex(&tgz),
        "no release_sha256: the delta's own"
    );
    w.wait_agent_release(&m.sha256).await;
    let active = w.install_dir.join("releases/active");
    assert_eq!(std::fs::read(active.join("VERSION")).unwrap(), b"C");
    assert_eq!(
        std::fs::read(active.join("keep/only-b.txt")).unwrap(),
        only_b
    );
    let prev = w.install_dir.join("releases/prev");
    assert_eq!(
        inode(&active.join("keep/only-b.txt")).0,
        inode(&prev.join("keep/only-b.txt")).0
    );
    // A is in kept/ now: still a base.
    let d = text(index_b(&w, b"D", vec![]));
    let (code, body) = push_delta(&w, &client, &delta_tgz(b"D"), &a, &d).await;
    assert_eq!(code, 200, "{body:?}\n{}", w.log());
    assert_eq!(std::fs::read(active.join("VERSION")).unwrap(), b"D");
}

#[tokio::test]
async fn a_curl_tgz_push_is_stored_like_any_other() {
    let pki = TestPki::new();
    let w = Worker::start(&pki, "w1", WorkerOptions::default());
    let client = w.master_client(&pki);
    base_release(&w, &client).await;
    let tgz = ReleaseTree::new()
        .file("VERSION", b"curl")
        .file("keep/a.txt", &noise("a", 50_000))
        .reference_agent(w.agent_port, &[])
        .tarball();
    let file = pki.path().join("tree.tgz");
    std::fs::write(&file, &tgz).unwrap();
    let (code, body) =
        super::receive::curl_push(&pki, &w, &file, &sha256_hex(&tgz)).expect("curl runs");
    assert_eq!(code, 200, "{body}\n{}", w.log());
    w.wait_agent_release(&sha256_hex(&tgz)).await;
    let rel = w.install_dir.join("releases");
    assert_eq!(
        inode(&rel.join("active/keep/a.txt")),
        inode(&rel.join("prev/keep/a.txt")),
        "the content it shares with A is A's inode"
    );
    assert!(!rel.join("active/keep/b.txt").exists());
}

#[tokio::test]
async fn kill_9_during_the_content_store_collection_is_repaired() {
    let pki = TestPki::new();
    let mut w = Worker::start(
        &pki,
        "w1",
        WorkerOptions {
            env: vec![("SWARM_UPDATER_KEEP_RELEASES".into(), "3".into())],
            ..WorkerOptions::default()
        },
    );
    let client = w.master_client(&pki);
    let port = w.agent_port;
    let tree = |v: usize| {
        ReleaseTree::new()
            .file("VERSION", format!("{v}").as_bytes())
            .file("shared.bin", &noise("shared", 40_000))
            .reference_agent(port, &[])
            .tarball()
    };
    let mut ids = Vec::new();
    for v in 0..3 {
        let (code, body) = w.push(&client, &tree(v)).await;
        assert_eq!(code, 200, "{body:?}");
        ids.push(body.release.and_then(|m| m.release_id).unwrap());
    }
    // The next push prunes release 0: its VERSION is linked by nothing
    // then, and the collection dies removing it.
    w.options
        .env
        .push(("SWARM_UPDATER_CRASH_AT".into(), "gc-unlinking".into()));
    let pid = w.updater_pid() as i32;
    w.restart();
    tests::process::wait_dead(pid, "the previous updater");
    let form = tests::release::release_form(&tree(3), &sha256_hex(&tree(3)), &[]);
    // The answer may or may not leave before the collection kills it.
    let _ = client.post(w.url("/update")).multipart(form).send().await;
    let pid = w.updater_pid() as i32;
    tests::process::wait_dead(pid, "the updater killed in the collection");
    w.options.env.retain(|(k, _)| k != "SWARM_UPDATER_CRASH_AT");
    w.restart();
    // Repaired: every kept release whole, the live one and prev verified,
    // and the collection at start-up finished what the crash left.
    let v: pki::wire::VerifyReport = client
        .post(w.url("/verify"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(v.clean, "{v:?}");
    assert_eq!(kept_on_disk(&w), [ids[1].clone()]);
    let r = w.releases(&client).await;
    let kept: Vec<_> = r.kept.iter().filter_map(|m| m.release_id.clone()).collect();
    assert_eq!(kept.len(), 3, "{r:?}");
    assert_eq!(kept[1..], [ids[2].clone(), ids[1].clone()], "{r:?}");
    tests::eventually(
        std::time::Duration::from_secs(10),
        "the start-up collection removes what nothing links",
        || unlinked_objects(&w).is_empty().then_some(()),
    );
    // Every kept release can still run, and the next push works.
    let resp = client
        .post(w.url("/rollback"))
        .json(&serde_json::json!({ "release_id": &ids[1][..12] }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", w.log());
    let (code, body) = w.push(&client, &tree(4)).await;
    assert_eq!(code, 200, "{body:?}\n{}", w.log());
}

#[test]
fn a_refused_signature_writes_nothing_into_the_content_store() {
    let s = Swarm::new();
    let mut w = s.worker("w1");
    let tree = s.tree("app");
    write(&tree, "swarm.toml", agent_toml(&[]));
    write(&tree, "VERSION", "1");
    let root = tree.to_str().unwrap();
    s.ok(&["update", "--host", "w1", "--root", root]);
    let store = w.install_dir.join("releases/store");
    let objects = || {
        let mut v: Vec<String> = std::fs::read_dir(&store)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        v.sort();
        v
    };
    let before = objects();
    // An updater that dies the moment anything is linked into its store.
    w.options
        .env
        .push(("SWARM_UPDATER_CRASH_AT".into(), "store-linking".into()));
    let pid = w.updater_pid() as i32;
    w.restart();
    tests::process::wait_dead(pid, "the previous updater");
    // Unsigned, with content the store lacks: refused before any of it
    // is stored.
    let tgz = ReleaseTree::new()
        .file("VERSION", b"unsigned")
        .file("new.bin", &noise("new", 10_000))
        .tarball();
    let (code, body) = tests::block_on(async {
        let r = s
            .master_client(&w.bundles.host.updater_cn())
            .post(w.url("/update"))
            .multipart(tests::release::release_form(&tgz, &sha256_hex(&tgz), &[]))
            .send()
            .await
            .expect("the updater answers (it did not die storing content)");
        let code = r.status().as_u16();
        (code, r.json::<pki::wire::OpResponse>().await.expect("json"))
    });
    assert_eq!(code, 403, "{body:?}");
    assert_eq!(objects(), before);
}
