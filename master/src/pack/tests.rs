//! Tests of the scan and the pack.

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use pki::index::INDEX_FILE;
use pki::wire::MANIFEST_FILE;

use sha2::{Digest as _, Sha256};

use super::*;

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, text).unwrap();
}

fn opts(root: &Path, excludes: &[&str]) -> PackOptions {
    PackOptions {
        root: root.to_owned(),
        excludes: excludes.iter().map(|s| s.to_string()).collect(),
        cache_dir: None,
    }
}

fn pack(o: &PackOptions) -> crate::error::Result<Tree> {
    scan(o, &PackProgress::new(&|_, _| {}))
}

fn entries_of(bytes: &[u8]) -> Vec<String> {
    let mut ar = tar::Archive::new(zstd::stream::read::Decoder::new(bytes).unwrap());
    ar.entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// Every byte of a recording, read as an upload reads it.
fn replay(tree: &std::sync::Arc<Tree>, have: Option<Have>) -> (Vec<u8>, Digest) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let rec = tree.record(have.map(std::sync::Arc::new));
        let mut out = Vec::new();
        let mut i = 0;
        loop {
            match rec.get(i).await {
                Next::Chunk(c, _) => out.extend_from_slice(&c),
                Next::End(end) => return (out, end.unwrap()),
            }
            i += 1;
        }
    })
}

fn entries(tree: &Tree) -> Vec<String> {
    entries_of(&tree.pack_whole_in_memory().unwrap().0)
}

#[test]
fn a_delta_leaves_out_what_the_worker_has_and_names_the_same_release() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "same/a.txt", &"a".repeat(10_000));
    write(root, "same/b.txt", "b");
    write(root, "changed.txt", "new");
    std::os::unix::fs::symlink("same/b.txt", root.join("link")).unwrap();
    let tree = pack(&opts(root, &[])).unwrap();
    let (whole, _) = tree.pack_whole_in_memory().unwrap();
    let have: Have = ["same/a.txt", "same/b.txt"]
        .iter()
        .map(|p| {
            let e = tree.index.get(p).unwrap();
            (e.sha256.clone().unwrap(), e.size)
        })
        .collect();
    let tree = std::sync::Arc::new(tree);
    let (bytes, digest) = replay(&tree, Some(have.clone()));
    assert_eq!(tree.info.files, 3);
    assert!(digest.size < whole.len() as u64);
    assert_eq!(bytes.len() as u64, digest.size);
    assert_eq!(digest.sha256, hex::encode(Sha256::digest(&bytes)));
    assert_eq!(tree.bytes_without(&have), 3, "only changed.txt is read");
    let mut names = entries_of(&bytes);
    names.sort();
    assert_eq!(
        names,
        ["changed.txt", "link", "same/"],
        "dirs and links, no reused file"
    );
    // A second reader replays the same bytes; the whole release recorded
    // is what a whole pack is.
    assert_eq!(replay(&tree, Some(have)).0, bytes);
    assert_eq!(replay(&tree, None).0, whole);
}

#[test]
fn a_file_changed_after_the_scan_fails_the_pack() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "a.txt", "one");
    let tree = pack(&opts(root, &[])).unwrap();
    write(root, "a.txt", "two");
    let err = tree.pack_whole_in_memory().unwrap_err();
    assert!(err.to_string().contains("a.txt changed"), "{err}");
    write(root, "a.txt", "longer");
    let err = tree.pack_whole_in_memory().unwrap_err();
    assert!(err.to_string().contains("a.txt"), "{err}");
}

#[test]
fn an_unchanged_tree_is_scanned_from_the_cache() {
    // The files were written just now: let the scans start a minute later.
    super::cache::LATER.with(|l| l.set(std::time::Duration::from_secs(60)));
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tree");
    write(&root, "a.txt", "one");
    write(&root, "k.pem", "-----BEGIN PRIVATE KEY-----");
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
    let age = |f: &str| {
        File::options()
            .write(true)
            .open(root.join(f))
            .unwrap()
            .set_modified(old)
            .unwrap()
    };
    age("a.txt");
    age("k.pem");
    let cache_dir = dir.path().join("cache");
    let o = PackOptions {
        cache_dir: Some(cache_dir.clone()),
        ..opts(&root, &[])
    };
    let first = pack(&o).unwrap();
    assert_eq!(first.info.skipped_secrets, ["k.pem"]);
    let cache = fs::read_dir(&cache_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert_eq!(
        fs::metadata(&cache).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Doctor the cache: a scan that believes it read nothing again.
    let real = first.index.get("a.txt").unwrap().sha256.clone().unwrap();
    let fake = "f".repeat(64);
    let text = fs::read_to_string(&cache).unwrap().replace(&real, &fake);
    fs::write(&cache, text).unwrap();
    let cached = pack(&o).unwrap();
    assert_eq!(
        cached.index.get("a.txt").unwrap().sha256.as_deref(),
        Some(fake.as_str())
    );
    assert_eq!(
        cached.info.skipped_secrets,
        ["k.pem"],
        "the key verdict is cached too"
    );
    // The same size and mtime, new content: the ctime moved, so it is read.
    write(&root, "a.txt", "two");
    age("a.txt");
    let fresh = pack(&o).unwrap();
    let sha = fresh.index.get("a.txt").unwrap().sha256.clone().unwrap();
    assert_eq!(sha, hex::encode(Sha256::digest(b"two")));
}

#[test]
fn progress_ends_on_the_files_and_bytes_packed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "a.txt", "hello");
    write(root, "sub/b.bin", &"z".repeat(300_000));
    write(root, ".env.local", "SECRET=1");
    let seen = std::cell::RefCell::new(Vec::new());
    let report = |files, bytes| seen.borrow_mut().push((files, bytes));
    let release = scan(&opts(root, &[]), &PackProgress::new(&report)).unwrap();
    let seen = seen.into_inner();
    assert_eq!(release.info.files, 2);
    assert_eq!(seen.last(), Some(&(2, 300_005)), "{seen:?}");
    assert!(
        seen.windows(2)
            .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1),
        "never goes back: {seen:?}"
    );
}

#[test]
fn private_keys_are_found_by_content_and_name() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let pem =
        "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBx0p+8Yq/abc=\n-----END EC PRIVATE KEY-----\n";
    write(root, "config/server.txt", pem);
    write(
        root,
        "old.txt",
        "-----BEGIN RSA PRIVATE KEY-----\r\nProc-Type: 4,ENCRYPTED\r\n\r\nabc\r\n",
    );
    write(root, "home/.ssh/id_ed25519", "anything");
    write(root, "store.p12", "binary");
    // Code that quotes the marker is not a key.
    write(
        root,
        "src/pem.rs",
        "const BEGIN: &str = \"-----BEGIN PRIVATE KEY-----\";\nfn f() {}\n",
    );
    write(
        root,
        "docs/key-format.md",
        "-----BEGIN PRIVATE KEY-----\n\nprose\n",
    );
    write(root, "home/.ssh/id_ed25519.pub", "ssh-ed25519 AAAA");
    // A big file whose head is clean ships whole.
    write(root, "big.bin", &"z".repeat(100_000));
    let release = pack(&PackOptions {
        root: root.to_owned(),
        excludes: vec![],
        cache_dir: None,
    })
    .unwrap();
    let mut names = entries(&release);
    names.retain(|n| !n.ends_with('/'));
    names.sort();
    assert_eq!(
        names,
        [
            "big.bin",
            "docs/key-format.md",
            "home/.ssh/id_ed25519.pub",
            "src/pem.rs"
        ]
    );
    let mut skipped = release.info.skipped_secrets.clone();
    skipped.sort();
    assert_eq!(
        skipped,
        [
            "config/server.txt",
            "home/.ssh/id_ed25519",
            "old.txt",
            "store.p12"
        ]
    );
    let (bytes, _) = release.pack_whole_in_memory().unwrap();
    let mut ar = tar::Archive::new(zstd::stream::read::Decoder::new(&bytes[..]).unwrap());
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().to_str() == Some("big.bin") {
            let mut body = String::new();
            e.read_to_string(&mut body).unwrap();
            assert_eq!(body.len(), 100_000);
        }
    }
}

#[test]
fn links_follow_the_updaters_rule_and_the_manifest_name_is_reserved() {
    let ok = |rel: &str, target: &str| {
        super::link_rule::check_link(Path::new("/r"), Path::new(rel), Path::new(target))
    };
    assert!(ok("a", "b").is_ok());
    assert!(ok("d/a", "../b/c").is_ok());
    assert!(ok("d/e/a", "../../b").is_ok());
    assert!(ok("d/a", "./b").is_ok());
    assert!(ok("a", "../b").is_err());
    assert!(ok("d/a", "b/../c").is_err());
    assert!(ok("d/a", "/etc/passwd").is_err());
    assert!(ok("d/e/a", "../../../b").is_err());

    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), MANIFEST_FILE, "{}");
    let err = pack(&PackOptions {
        root: dir.path().to_owned(),
        excludes: vec![],
        cache_dir: None,
    })
    .map(|_| ())
    .unwrap_err()
    .to_string();
    assert!(err.contains("reserved"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), INDEX_FILE, "x");
    let err = pack(&PackOptions {
        root: dir.path().to_owned(),
        excludes: vec![],
        cache_dir: None,
    })
    .map(|_| ())
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("reserved") && err.contains(INDEX_FILE),
        "{err}"
    );
    // Deeper down it is an ordinary file.
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), &format!("sub/{MANIFEST_FILE}"), "{}");
    assert!(
        pack(&PackOptions {
            root: dir.path().to_owned(),
            excludes: vec![],
            cache_dir: None,
        })
        .is_ok()
    );
}

#[test]
fn honours_ignores_and_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "app.txt", "hello");
    write(root, ".gitignore", "target/\n");
    write(root, "target/big.bin", "x");
    write(root, ".swarmignore", "notes/\n");
    write(root, "notes/todo", "x");
    write(root, ".git/HEAD", "ref: refs/heads/main\n");
    write(
        root,
        ".git/refs/heads/main",
        &format!("{}\n", "a".repeat(40)),
    );
    write(root, ".env", "SECRET=1");
    write(root, ".env.local", "SECRET=2");
    write(root, ".env.production", "SECRET=3");
    write(root, "tls/server.key", "k");
    write(root, "tls/chain.pem", "-----BEGIN CERTIFICATE-----");
    write(root, "tls/key.pem", "-----BEGIN PRIVATE KEY-----");
    write(root, "logs/x.log", "log");
    write(
        root,
        "swarm.toml",
        "[release]\ninclude = [\".env.production\", \".env.local\"]\n[agent]\ncommand = [\"x\"]\n",
    );
    let release = pack(&PackOptions {
        root: root.to_owned(),
        excludes: vec!["*.log".into()],
        cache_dir: None,
    })
    .unwrap();
    let names = entries(&release);
    for want in [
        "app.txt",
        ".gitignore",
        ".swarmignore",
        ".env.production",
        "tls/chain.pem",
        "swarm.toml",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    for gone in [
        "target/big.bin",
        "notes/todo",
        ".git/HEAD",
        ".env",
        ".env.local",
        "tls/server.key",
        "tls/key.pem",
        "logs/x.log",
    ] {
        assert!(
            !names.iter().any(|n| n == gone),
            "{gone} shipped: {names:?}"
        );
    }
    assert_eq!(release.info.git_commit.as_deref(), Some(&*"a".repeat(40)));
    assert_eq!(release.info.files, 6);
    let (bytes, digest) = release.pack_whole_in_memory().unwrap();
    assert_eq!(digest.size, bytes.len() as u64);
    assert_eq!(digest.sha256, hex::encode(Sha256::digest(&bytes)));
    assert_eq!(
        release.info_now().sha256.as_deref(),
        Some(digest.sha256.as_str())
    );
    // Same tree, same bytes: whenever it is packed, and from a new scan.
    assert_eq!(release.pack_whole_in_memory().unwrap().0, bytes);
    let again = pack(&PackOptions {
        root: root.to_owned(),
        excludes: vec!["*.log".into()],
        cache_dir: None,
    })
    .unwrap();
    assert_eq!(again.pack_whole_in_memory().unwrap().1, digest);
}

#[test]
fn refuses_links_out_of_the_tree() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a/b", "x");
    std::os::unix::fs::symlink("../b", dir.path().join("a/ok")).unwrap();
    std::os::unix::fs::symlink("../../etc/passwd", dir.path().join("a/bad")).unwrap();
    let err = pack(&PackOptions {
        root: dir.path().to_owned(),
        excludes: vec![],
        cache_dir: None,
    })
    .unwrap_err();
    assert!(err.to_string().contains("a/bad"), "{err}");
}
