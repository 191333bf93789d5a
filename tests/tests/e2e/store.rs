//! Issue 16: releases through a real S3-compatible store (Garage 2.5.0 on
//! 127.0.0.1). The master publishes each content once (in packs) and the
//! release's document before touching a worker; workers download what they
//! lack with presigned URLs and never see a credential; an altered pack or
//! document is refused with nothing rotated; a store that is down stops the master before any worker; a
//! worker that cannot reach the store fails alone, or is pushed directly
//! with --fallback-direct; an expired URL fails clearly; a download killed
//! half-way leaves a worker the next push updates; `swarm store gc`.

use std::path::Path;
use std::process::Output;

use serde_json::Value;
use tests::Swarm;
use tests::garage::Garage;
use tests::release::{agent_toml, write_file as write};
use tests::swarm::show;

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

/// A tree of a few files (two with the same content), a link and an agent.
fn tree(s: &Swarm, version: &str) -> std::path::PathBuf {
    let t = s.tree("app");
    write(&t, "swarm.toml", agent_toml(&[]).as_bytes());
    write(&t, "VERSION", version.as_bytes());
    for i in 0..4 {
        write(
            &t,
            &format!("data/blob-{i}.bin"),
            noise(&format!("b{i}"), 50_000),
        );
    }
    write(&t, "data/copy.bin", noise("b0", 50_000));
    let link = t.join("latest");
    if !link.exists() {
        std::os::unix::fs::symlink("data/blob-1.bin", &link).expect("symlink");
    }
    t
}

/// A master whose store is the Garage `g`, its key in a credentials file.
fn with_store(s: &Swarm, g: &Garage, endpoint: &str) {
    let creds = s.scratch().join("aws-credentials");
    g.write_credentials(&creds).expect("credentials file");
    s.ok(&[
        "store",
        "set",
        &format!("s3://{}/fleet", g.bucket),
        "--endpoint",
        endpoint,
        "--region",
        tests::garage::REGION,
        "--path-style",
        "--credentials-file",
        creds.to_str().expect("utf-8"),
    ]);
}

fn run_env(s: &Swarm, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = s.command();
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run swarm")
}

/// `swarm update --host HOST --root ROOT --json`, which must fail (exit 1):
/// its JSON and the host's detail.
fn failed_push(s: &Swarm, host: &str, root: &str) -> (Value, String) {
    let out = run_env(
        s,
        &["update", "--host", host, "--root", root, "--json"],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let doc = json_of(&out);
    let detail = doc["hosts"][0]["detail"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    (doc, detail)
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", show(out)))
}

fn packs(g: &Garage) -> Vec<(String, u64)> {
    g.list("fleet/packs/").expect("list the bucket")
}

fn releases(g: &Garage) -> Vec<(String, u64)> {
    g.list("fleet/releases/").expect("list the bucket")
}

/// Every file under `dir`, recursively, as bytes (symlinks not followed).
fn grep_tree(dir: &Path, needle: &str) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file()
                && let Ok(bytes) = std::fs::read(e.path())
                && bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
            {
                hits.push(e.path().display().to_string());
            }
        }
    }
    hits
}

#[test]
fn a_release_goes_through_the_store_once_and_workers_never_see_credentials() {
    let g = Garage::start("releases");
    let s = Swarm::new();
    let workers = s.fleet(&["w1", "w2", "w3"]);
    with_store(&s, &g, &g.endpoint());
    let shown = s.json(&["store", "show", "--json"], 0);
    assert_eq!(shown["url"], "s3://releases/fleet", "{shown}");
    assert!(!shown.to_string().contains(&g.secret), "{shown}");

    let t = tree(&s, "1");
    let root = t.to_str().unwrap();
    let first = s.json(&["update", "--all", "--root", root, "--json"], 0);
    // Six contents: four distinct blobs, VERSION, swarm.toml (copy.bin is
    // blob-0), in one pack; and the release's document.
    assert_eq!(first["store"]["uploaded"], 6, "{first}");
    assert_eq!(first["store"]["packs_uploaded"], 1, "{first}");
    assert_eq!(first["store"]["release_uploaded"], true, "{first}");
    assert_eq!(packs(&g).len(), 1, "{first}");
    assert_eq!(releases(&g).len(), 1, "{first}");
    // What the master uploaded for three hosts is one release's worth:
    // at most 1.1x the release packed whole (as a direct push sends it to
    // each host).
    let dry = s.json(
        &["update", "--all", "--root", root, "--dry-run", "--json"],
        0,
    );
    let packed = dry["release"]["size_bytes"].as_u64().expect("size_bytes");
    let uploaded = first["store"]["uploaded_bytes"].as_u64().unwrap();
    assert!(
        uploaded * 10 <= packed * 11,
        "uploaded {uploaded} bytes for a {packed}-byte release"
    );
    // Nothing was packed whole: each host's manifest names the release by
    // its release_id.
    let sha = first["release"]["release_id"].as_str().unwrap().to_owned();
    for (w, h) in workers.iter().zip(first["hosts"].as_array().unwrap()) {
        assert_eq!(h["agent"], "updated", "{first}");
        assert_eq!(h["store"], true, "{first}");
        w.wait_agent_release_blocking(&sha);
        let active = w.install_dir.join("releases/active");
        assert_eq!(
            std::fs::read(active.join("data/copy.bin")).unwrap(),
            noise("b0", 50_000)
        );
        assert_eq!(
            std::fs::read_link(active.join("latest")).unwrap(),
            Path::new("data/blob-1.bin")
        );
        // No credential anywhere on the worker.
        assert!(grep_tree(&w.install_dir, &g.secret).is_empty());
        assert!(grep_tree(&w.install_dir, &g.key_id).is_empty());
        assert!(
            !w.install_dir
                .join(".fetch")
                .read_dir()
                .unwrap()
                .any(|_| true)
        );
    }

    // A one-file change uploads one content (a pack of its own), and each
    // worker fetches it, and only it.
    write(&t, "VERSION", b"2");
    let second = s.json(&["update", "--all", "--root", root, "--json"], 0);
    assert_eq!(second["store"]["uploaded"], 1, "{second}");
    assert_eq!(second["store"]["present"], 5, "{second}");
    assert!(
        second["store"]["uploaded_bytes"].as_u64().unwrap() < 4096,
        "{second}"
    );
    assert_eq!(packs(&g).len(), 2);
    let sha2 = second["release"]["release_id"].as_str().unwrap().to_owned();
    for w in &workers {
        w.wait_agent_release_blocking(&sha2);
        let active = w.install_dir.join("releases/active");
        assert_eq!(
            std::fs::read_to_string(active.join("VERSION")).unwrap(),
            "2"
        );
    }
    // A rerun uploads nothing (and changes nothing).
    let third = s.json(&["update", "--all", "--root", root, "--json"], 0);
    assert_eq!(third["store"]["uploaded"], 0, "{third}");
    assert_eq!(third["hosts"][0]["agent"], "unchanged", "{third}");

    // gc keeping the newest release removes release 1's document; its
    // pack stays, since release 2 uses five of its contents.
    let gc = s.json(&["store", "gc", "--keep", "1", "--json"], 0);
    assert_eq!(gc["deleted_releases"], 1, "{gc}");
    assert_eq!(gc["deleted_packs"], 0, "{gc}");
    assert_eq!(releases(&g).len(), 1);
    assert_eq!(packs(&g).len(), 2);
    // A release sharing nothing with them: gc then removes both packs.
    let other = s.tree("other");
    // (its swarm.toml too: another comment)
    let toml = format!("# another release\n{}", agent_toml(&[]));
    write(&other, "swarm.toml", toml.as_bytes());
    write(&other, "data/x.bin", noise("x", 10_000));
    let third = s.json(
        &[
            "update",
            "--all",
            "--root",
            other.to_str().unwrap(),
            "--json",
        ],
        0,
    );
    assert_eq!(third["hosts"][0]["agent"], "updated", "{third}");
    let gc = s.json(&["store", "gc", "--keep", "1", "--json"], 0);
    assert_eq!(gc["deleted_packs"], 2, "{gc}");
    assert_eq!(gc["kept_packs"], 1, "{gc}");
    assert_eq!(packs(&g).len(), 1);
    assert_eq!(releases(&g).len(), 1);
}

#[test]
fn an_altered_pack_is_refused_and_nothing_rotates() {
    let g = Garage::start("altered");
    let s = Swarm::new();
    let w1 = s.worker("w1");
    let _w2 = s.worker("w2");
    with_store(&s, &g, &g.endpoint());
    let t = tree(&s, "1");
    let root = t.to_str().unwrap();
    s.json(&["update", "--all", "--root", root, "--json"], 0);
    let before = w1.slot_sha("active");

    // Release 2 goes to w2 only: its one new content ("2") is a pack of
    // its own, one frame whose last byte is that content. Altered in the
    // store to "3".
    write(&t, "VERSION", b"2");
    let old: Vec<String> = packs(&g).into_iter().map(|(k, _)| k).collect();
    s.json(&["update", "--host", "w2", "--root", root, "--json"], 0);
    let (key, _) = packs(&g)
        .into_iter()
        .find(|(k, _)| !old.contains(k))
        .expect("release 2's pack");
    let mut bytes = g.get(&key).expect("get the pack");
    let last = bytes.last_mut().expect("a byte");
    assert_eq!(*last, b'2', "a raw block");
    *last = b'3';
    g.put(&key, bytes).expect("put");
    // The master finds release 2 published (it uploads nothing) and w1
    // fetches the altered pack.
    let (doc, detail) = failed_push(&s, "w1", root);
    assert!(detail.contains("refused"), "{doc}");
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"2"));
    assert!(detail.contains(&sha), "{doc}");
    assert_eq!(w1.slot_sha("active"), before, "nothing rotated");
    assert!(!w1.install_dir.join("releases/active.new").exists());
}

/// `swarm update --host w1`, with the release's document in the store
/// replaced by `evil` once the worker has the request (and before it
/// downloads anything: its downloads are held back).
fn push_swapping_the_document(
    s: &Swarm,
    g: &Garage,
    (host, w): (&str, &tests::worker::Worker),
    root: &str,
    key: &str,
    evil: Vec<u8>,
) -> Output {
    let mut c = s.command();
    c.args(["update", "--host", host, "--root", root, "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = c.spawn().expect("spawn swarm");
    let staging = w.install_dir.join("releases/active.new");
    tests::eventually(
        std::time::Duration::from_secs(30),
        "the worker to start staging the fetch",
        || staging.exists().then_some(()),
    );
    g.put(key, evil).expect("put");
    child.wait_with_output().expect("wait for swarm")
}

#[test]
fn an_altered_release_document_is_refused_and_nothing_rotates() {
    let g = Garage::start("altereddoc");
    let s = Swarm::new();
    let options = tests::worker::WorkerOptions {
        env: vec![("SWARM_UPDATER_FETCH_DELAY_MS".into(), "3000".into())],
        ..Default::default()
    };
    let w1 = s.try_worker("w1", options).expect("worker");
    let _w2 = s.worker("w2");
    with_store(&s, &g, &g.endpoint());
    let t = tree(&s, "1");
    let root = t.to_str().unwrap();
    let first = s.json(&["update", "--host", "w2", "--root", root, "--json"], 0);
    let id1 = first["release"]["release_id"].as_str().unwrap().to_owned();
    write(&t, "VERSION", b"2");
    let second = s.json(&["update", "--host", "w2", "--root", root, "--json"], 0);
    let id2 = second["release"]["release_id"].as_str().unwrap().to_owned();
    let key = format!("fleet/releases/{id2}");

    // Release 1's document where release 2's should be: a valid document,
    // of another release.
    let doc1 = g.get(&format!("fleet/releases/{id1}")).expect("get");
    let out = push_swapping_the_document(&s, &g, ("w1", &w1), root, &key, doc1);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let doc = json_of(&out);
    let detail = doc["hosts"][0]["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("refused"), "{doc}");
    assert!(detail.contains(&id1), "{doc}");
    assert_eq!(w1.slot_sha("active"), None, "nothing installed");

    // The master reads documents too: it does not use that one, and
    // publishes release 2's again. Garbage swapped in then: refused too.
    let out =
        push_swapping_the_document(&s, &g, ("w1", &w1), root, &key, b"not a document".to_vec());
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let doc = json_of(&out);
    assert_eq!(doc["store"]["release_uploaded"], true, "{doc}");
    let detail = doc["hosts"][0]["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("release document"), "{doc}");
    assert!(detail.contains("refused"), "{doc}");
    assert_eq!(w1.slot_sha("active"), None, "nothing installed");

    // Left alone, the garbage is replaced and w1 gets release 2.
    let doc = s.json(&["update", "--host", "w1", "--root", root, "--json"], 0);
    assert_eq!(doc["hosts"][0]["agent"], "updated", "{doc}");
    assert_eq!(doc["store"]["release_uploaded"], true, "{doc}");
    w1.wait_agent_release_blocking(&id2);
}

#[test]
fn a_store_that_is_down_stops_the_master_before_any_worker() {
    let mut g = Garage::start("down");
    let s = Swarm::new();
    let w = s.worker("w1");
    with_store(&s, &g, &g.endpoint());
    g.stop();
    let t = tree(&s, "1");
    let out = run_env(
        &s,
        &["update", "--host", "w1", "--root", t.to_str().unwrap()],
        &[],
    );
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no worker was contacted"), "{err}");
    assert_eq!(w.slot_sha("active"), None, "the worker was not touched");
    // --direct pushes over mTLS without the store.
    let out = run_env(
        &s,
        &[
            "update",
            "--host",
            "w1",
            "--root",
            t.to_str().unwrap(),
            "--direct",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    // Unset: back to direct pushes for good.
    s.ok(&["store", "unset"]);
    assert_eq!(
        s.json(&["store", "show", "--json"], 0)["store"],
        Value::Null
    );
}

#[test]
fn a_worker_without_a_route_fails_alone_and_fallback_direct_pushes_it() {
    let g = Garage::start("route");
    let s = Swarm::new();
    let w = s.worker("w1");
    // The master reaches the store; the URLs workers get name an endpoint
    // nothing listens on: a store the worker has no route to.
    with_store(&s, &g, &g.endpoint());
    let dead = tests::free_port();
    let creds = s.scratch().join("aws-credentials");
    s.ok(&[
        "store",
        "set",
        &format!("s3://{}/fleet", g.bucket),
        "--endpoint",
        &g.endpoint(),
        "--worker-endpoint",
        &format!("http://127.0.0.1:{}", dead.get()),
        "--region",
        tests::garage::REGION,
        "--path-style",
        "--credentials-file",
        creds.to_str().unwrap(),
    ]);
    let t = tree(&s, "1");
    let root = t.to_str().unwrap();
    let (doc, detail) = failed_push(&s, "w1", root);
    assert!(detail.contains("store unreachable from worker"), "{doc}");
    assert_eq!(w.slot_sha("active"), None, "nothing installed");
    let out = run_env(
        &s,
        &[
            "update",
            "--host",
            "w1",
            "--root",
            root,
            "--fallback-direct",
            "--json",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let doc = json_of(&out);
    assert_eq!(doc["hosts"][0]["agent"], "updated", "{doc}");
    assert!(
        doc["hosts"][0]["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("pushed directly"),
        "{doc}"
    );
    w.wait_agent_release_blocking(doc["release"]["sha256"].as_str().unwrap());
}

#[test]
fn an_expired_url_fails_clearly_and_nothing_rotates() {
    let g = Garage::start("expired");
    let s = Swarm::new();
    let options = tests::worker::WorkerOptions {
        env: vec![("SWARM_UPDATER_FETCH_DELAY_MS".into(), "2500".into())],
        ..Default::default()
    };
    let w = s.try_worker("w1", options).expect("worker");
    with_store(&s, &g, &g.endpoint());
    let t = tree(&s, "1");
    let out = run_env(
        &s,
        &[
            "update",
            "--host",
            "w1",
            "--root",
            t.to_str().unwrap(),
            "--json",
        ],
        &[("SWARM_STORE_URL_TTL_SECS", "1")],
    );
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let doc = json_of(&out);
    let detail = doc["hosts"][0]["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("presigned URL expired"), "{doc}");
    assert_eq!(w.slot_sha("active"), None, "nothing installed");
}

#[test]
fn a_worker_killed_mid_download_is_repaired_and_the_next_push_works() {
    let g = Garage::start("crash");
    let s = Swarm::new();
    let options = tests::worker::WorkerOptions {
        env: vec![("SWARM_UPDATER_CRASH_AT".into(), "fetch-downloading".into())],
        ..Default::default()
    };
    let mut w = s.try_worker("w1", options).expect("worker");
    with_store(&s, &g, &g.endpoint());
    let t = tree(&s, "1");
    let root = t.to_str().unwrap();
    let out = run_env(
        &s,
        &["update", "--host", "w1", "--root", root, "--json"],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    w.options.env.clear();
    w.restart();
    // The start-up repair runs once the updater listens.
    let staging = w.install_dir.join("releases/active.new");
    tests::eventually(
        std::time::Duration::from_secs(15),
        "the start-up repair to remove the staging",
        || (!staging.exists()).then_some(()),
    );
    assert_eq!(w.slot_sha("active"), None);
    let doc = s.json(&["update", "--host", "w1", "--root", root, "--json"], 0);
    assert_eq!(doc["hosts"][0]["agent"], "updated", "{doc}");
    w.wait_agent_release_blocking(doc["release"]["release_id"].as_str().unwrap());
    assert!(
        !w.install_dir
            .join(".fetch")
            .read_dir()
            .unwrap()
            .any(|_| true)
    );
}

#[test]
fn a_kept_file_changed_on_the_worker_is_fetched_again_not_reused() {
    let g = Garage::start("tampered");
    let s = Swarm::new();
    let w = s.worker("w1");
    with_store(&s, &g, &g.endpoint());
    let t = tree(&s, "1");
    let root = t.to_str().unwrap();
    s.json(&["update", "--host", "w1", "--root", root, "--json"], 0);
    // Changed by hand on the worker: the live release no longer has the
    // content its index names, so it cannot be the base of the fetch.
    let kept = w.install_dir.join("releases/active/data/blob-2.bin");
    std::fs::write(&kept, b"changed by hand").unwrap();
    write(&t, "VERSION", b"2");
    let doc = s.json(&["update", "--host", "w1", "--root", root, "--json"], 0);
    assert_eq!(doc["hosts"][0]["agent"], "updated", "{doc}");
    w.wait_agent_release_blocking(doc["release"]["release_id"].as_str().unwrap());
    assert_eq!(
        std::fs::read(w.install_dir.join("releases/active/data/blob-2.bin")).unwrap(),
        noise("b2", 50_000),
        "fetched from the store again"
    );
}

#[test]
fn rollback_to_a_release_the_host_no_longer_keeps_goes_through_the_store() {
    let g = Garage::start("rollback");
    let s = Swarm::new();
    let options = tests::worker::WorkerOptions {
        extra_args: vec!["--keep-releases".into(), "2".into()],
        ..Default::default()
    };
    let w = s.try_worker("w1", options).expect("worker");
    with_store(&s, &g, &g.endpoint());
    let t = tree(&s, "1");
    let root = t.to_str().unwrap();
    let mut ids = Vec::new();
    for v in ["1", "2", "3"] {
        write(&t, "VERSION", v.as_bytes());
        let doc = s.json(&["update", "--host", "w1", "--root", root, "--json"], 0);
        ids.push(doc["release"]["release_id"].as_str().unwrap().to_owned());
    }
    // Release 1 is neither active nor prev nor kept on the host any more.
    let doc = s.json(
        &["rollback", "--host", "w1", "--to", &ids[0][..12], "--json"],
        0,
    );
    let host = &doc["hosts"][0];
    assert_eq!(host["agent"], "rolled-back", "{doc}");
    assert!(
        host["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("fetched from the store"),
        "{doc}"
    );
    w.wait_agent_release_blocking(&ids[0]);
    let active = w.install_dir.join("releases/active");
    assert_eq!(
        std::fs::read_to_string(active.join("VERSION")).unwrap(),
        "1"
    );
    assert_eq!(
        std::fs::read_link(active.join("latest")).unwrap(),
        Path::new("data/blob-1.bin")
    );
}

#[test]
fn a_store_fetch_whose_signature_is_refused_stores_nothing() {
    let g = Garage::start("signed");
    let s = Swarm::new();
    let w = s.worker("w1");
    assert!(
        w.bundles.updater_dir.join("release.pub").exists(),
        "the updater takes only signed releases"
    );
    with_store(&s, &g, &g.endpoint());
    let t = tree(&s, "1");
    let root = t.to_str().unwrap();
    s.json(&["update", "--host", "w1", "--root", root, "--json"], 0);
    let before = w.slot_sha("active");
    let store = w.install_dir.join("releases/store");
    let names = |dir: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    let objects = names(&store);
    // A new release key the updater does not hold (no renew): the master
    // signs with it, the updater refuses after fetching.
    s.json(&["key", "init", "--force", "--json"], 0);
    write(&t, "VERSION", b"2");
    write(&t, "data/new.bin", noise("new", 20_000));
    let (doc, detail) = failed_push(&s, "w1", root);
    assert!(detail.contains("does not verify"), "{doc}");
    assert_eq!(w.slot_sha("active"), before, "nothing rotated");
    assert_eq!(names(&store), objects, "nothing stored");
    let left: Vec<String> = names(&w.install_dir.join(".fetch"))
        .into_iter()
        .filter(|n| !n.ends_with(".part"))
        .collect();
    assert!(left.is_empty(), "fetched contents kept: {left:?}");
}
