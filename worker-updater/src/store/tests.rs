//! The content store and its garbage collection on a real filesystem.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use pki::index::{IndexEntry, sha256_hex};

use super::gc::{Collected, collect, sweep};
use super::*;

fn entry(path: &str, mode: u32, data: &[u8]) -> IndexEntry {
    IndexEntry::file(path, mode, data.len() as u64, sha256_hex(data))
}

/// Write `data` at `dir/path` as the extractor does (0600, then the mode).
fn staged(dir: &Path, path: &str, mode: u32, data: &[u8]) -> IndexEntry {
    let p = dir.join(path);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, data).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    entry(path, mode, data)
}

fn ino(p: &Path) -> u64 {
    fs::metadata(p).unwrap().ino()
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn modes_map_both_ways() {
    assert_eq!(installed_mode(0o644), 0o444);
    assert_eq!(installed_mode(0o755), 0o555);
    assert_eq!(canonical_mode(0o444), 0o644);
    assert_eq!(canonical_mode(0o555), 0o755);
    // Writable on disk: never a canonical mode.
    assert_ne!(
        canonical_mode(0o644),
        pki::index::file_mode(canonical_mode(0o644))
    );
    assert_eq!(
        parse_name(&format!("{}-644", "a".repeat(64))),
        Some((&*"a".repeat(64), 0o644))
    );
    assert_eq!(
        parse_name(&format!("{}-4755", "a".repeat(64))),
        None,
        "setuid"
    );
    assert_eq!(parse_name(".ledger.json.tmp-1"), None);
}

#[test]
fn the_same_content_in_two_releases_is_one_read_only_inode() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::new(tmp.path().join("store"));
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let mut s = store.begin().unwrap();
    let e = staged(&a, "x/f", 0o644, b"shared");
    s.adopt(&a.join("x/f"), &e).unwrap();
    let run = staged(&a, "run", 0o755, b"#!/bin/sh");
    s.adopt(&a.join("run"), &run).unwrap();
    s.commit().unwrap();
    let mut s = store.begin().unwrap();
    staged(&b, "y/f", 0o644, b"shared");
    s.adopt(&b.join("y/f"), &entry("y/f", 0o644, b"shared"))
        .unwrap();
    // A delta links content it was not sent.
    fs::create_dir_all(b.join("bin")).unwrap();
    assert!(
        s.link_to(&b.join("bin/run"), &entry("bin/run", 0o755, b"#!/bin/sh"))
            .unwrap()
    );
    assert!(
        !s.link_to(&b.join("nope"), &entry("nope", 0o644, b"unknown"))
            .unwrap()
    );
    s.commit().unwrap();
    assert_eq!(ino(&a.join("x/f")), ino(&b.join("y/f")));
    assert_eq!(ino(&a.join("run")), ino(&b.join("bin/run")));
    assert_eq!(
        (mode(&a.join("x/f")), mode(&b.join("bin/run"))),
        (0o444, 0o555)
    );
    assert_eq!(fs::read(b.join("y/f")).unwrap(), b"shared");
    // The same content under another mode: a copy, stored as its own object.
    let mut s = store.begin().unwrap();
    assert!(
        s.link_to(&b.join("exe"), &entry("exe", 0o755, b"shared"))
            .unwrap()
    );
    assert_ne!(ino(&b.join("exe")), ino(&b.join("y/f")));
    assert_eq!(mode(&b.join("exe")), 0o555);
    s.commit().unwrap();
}

/// Store `data` once (in release dir `rel`), and return its object path.
fn stored(store: &Store, rel: &Path, data: &[u8]) -> (IndexEntry, std::path::PathBuf) {
    let mut s = store.begin().unwrap();
    let e = staged(rel, "f", 0o644, data);
    s.adopt(&rel.join("f"), &e).unwrap();
    s.commit().unwrap();
    let object = store.dir().join(object_name(&e).unwrap());
    (e, object)
}

#[test]
fn a_changed_object_is_rehashed_and_dropped_not_reused() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::new(tmp.path().join("store"));
    let (e, object) = stored(&store, &tmp.path().join("a"), b"original");
    // Same size, other content, through the release's link (root ignores
    // the missing write bit).
    fs::write(tmp.path().join("a/f"), b"tampered").unwrap();
    let mut s = store.begin().unwrap();
    assert!(!s.link_to(&tmp.path().join("b"), &e).unwrap());
    assert!(!object.exists(), "dropped");
    s.commit().unwrap();
    // The next whole push stores it afresh.
    let (_, again) = stored(&store, &tmp.path().join("c"), b"original");
    assert_eq!(fs::read(again).unwrap(), b"original");
}

#[test]
fn a_restored_mtime_does_not_hide_a_change() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::new(tmp.path().join("store"));
    let (e, object) = stored(&store, &tmp.path().join("a"), b"original");
    let before = fs::metadata(&object).unwrap().modified().unwrap();
    fs::write(&object, b"tampered").unwrap();
    let f = fs::File::options().write(true).open(&object).unwrap();
    f.set_times(fs::FileTimes::new().set_modified(before))
        .unwrap();
    drop(f);
    let m = fs::metadata(&object).unwrap();
    assert_eq!(
        m.modified().unwrap(),
        before,
        "mtime, size and inode as sealed"
    );
    let mut s = store.begin().unwrap();
    assert!(!s.link_to(&tmp.path().join("b"), &e).unwrap(), "re-hashed");
}

#[test]
fn an_unsealed_object_that_still_matches_is_reused() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::new(tmp.path().join("store"));
    let (e, _) = stored(&store, &tmp.path().join("a"), b"original");
    fs::remove_file(store.dir().join(LEDGER)).unwrap();
    let mut s = store.begin().unwrap();
    assert!(s.link_to(&tmp.path().join("b"), &e).unwrap());
    assert_eq!(fs::read(tmp.path().join("b")).unwrap(), b"original");
}

#[test]
fn collection_removes_only_what_no_release_links() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::new(tmp.path().join("store"));
    let (_, kept) = stored(&store, &tmp.path().join("a"), b"kept");
    let (_, gone) = stored(&store, &tmp.path().join("b"), b"gone");
    let (_, tampered) = stored(&store, &tmp.path().join("c"), b"tampered");
    fs::write(tmp.path().join("c/f"), b"TAMPERED").unwrap();
    fs::write(store.dir().join(".ledger.json.tmp-1"), b"{").unwrap();
    // Release b goes to trash; the sweep deletes it, then collects.
    let trash = tmp.path().join(".trash-b");
    fs::rename(tmp.path().join("b"), &trash).unwrap();
    let c = sweep(&store, std::slice::from_ref(&trash)).unwrap();
    assert_eq!(
        c,
        Collected {
            removed: 1,
            dropped: 1
        }
    );
    assert!(
        !trash.exists() && !gone.exists(),
        "unlinked content removed"
    );
    assert!(kept.exists() && !tampered.exists());
    assert!(!store.dir().join(".ledger.json.tmp-1").exists(), "leftover");
    assert_eq!(fs::read(tmp.path().join("a/f")).unwrap(), b"kept");
    // Nothing left to do; the ledger names exactly what is stored.
    let s = store.begin().unwrap();
    assert_eq!(s.ledger.keys().count(), 1);
    assert_eq!(collect(s).unwrap(), Collected::default());
    // An object only the store links (a crash after storing it, before
    // its release was kept): removed.
    fs::remove_dir_all(tmp.path().join("a")).unwrap();
    let c = collect(store.begin().unwrap()).unwrap();
    assert_eq!(
        c,
        Collected {
            removed: 1,
            dropped: 0
        }
    );
    assert!(!kept.exists());
}

#[test]
fn a_sweep_reseals_what_it_unlinked_without_trusting_a_change() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::new(tmp.path().join("store"));
    let (e, object) = stored(&store, &tmp.path().join("a"), b"shared");
    let mut s = store.begin().unwrap();
    let b = tmp.path().join("b");
    fs::create_dir_all(&b).unwrap();
    assert!(s.link_to(&b.join("f"), &e).unwrap());
    s.commit().unwrap();
    let trash = tmp.path().join(".trash-b");
    fs::rename(&b, &trash).unwrap();
    sweep(&store, &[trash]).unwrap();
    let s = store.begin().unwrap();
    let meta = fs::symlink_metadata(&object).unwrap();
    assert_eq!(
        s.ledger.get(&object_name(&e).unwrap()),
        Some(&Seal::of(&meta))
    );
    drop(s);
    // A change before the trash is deleted is not resealed.
    let mut s = store.begin().unwrap();
    let c = tmp.path().join("c");
    fs::create_dir_all(&c).unwrap();
    assert!(s.link_to(&c.join("f"), &e).unwrap());
    s.commit().unwrap();
    fs::write(&object, b"SHARED").unwrap();
    let trash = tmp.path().join(".trash-c");
    fs::rename(&c, &trash).unwrap();
    let got = sweep(&store, &[trash]).unwrap();
    assert_eq!(got.dropped, 1);
    assert!(!object.exists());
}

#[test]
fn sealed_objects_are_linked_on_two_threads_and_stay_sealed() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::new(tmp.path().join("store"));
    let old = tmp.path().join("old");
    let mut s = store.begin().unwrap();
    let mut stored = Vec::new();
    for i in 0..40 {
        let e = staged(
            &old,
            &format!("f{i}"),
            0o644,
            format!("content {i}").as_bytes(),
        );
        s.adopt(&old.join(&e.path), &e).unwrap();
        stored.push(e);
    }
    // A new release: every stored content, one of them at two paths, and
    // one the store never had.
    let new = tmp.path().join("new");
    fs::create_dir(&new).unwrap();
    let mut want: Vec<IndexEntry> = stored
        .iter()
        .map(|e| IndexEntry {
            path: format!("n-{}", e.path),
            ..e.clone()
        })
        .collect();
    want.push(IndexEntry {
        path: "twice".into(),
        ..stored[7].clone()
    });
    want.push(entry("absent", 0o644, b"never stored"));
    let todo: Vec<&IndexEntry> = want.iter().collect();
    let left = s.link_sealed(&new, &todo).unwrap();
    assert_eq!(left, vec![want.len() - 1], "only the absent one is left");
    for e in &want[..want.len() - 1] {
        let object = store.dir().join(object_name(e).unwrap());
        assert_eq!(ino(&new.join(&e.path)), ino(&object), "{}", e.path);
    }
    s.commit().unwrap();
    // Every seal holds after the links: nothing is re-hashed next time.
    let s = store.begin().unwrap();
    for e in &stored {
        let name = object_name(e).unwrap();
        let meta = fs::symlink_metadata(store.dir().join(&name)).unwrap();
        assert_eq!(s.ledger.get(&name), Some(&Seal::of(&meta)), "{name}");
    }
}
