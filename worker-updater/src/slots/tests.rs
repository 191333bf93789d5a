//! Unit tests of the slot transitions and the repair rules.

use std::fs;
use std::path::PathBuf;

use pki::wire::Manifest;

use super::fsx::{check_exchange, delete_trash, exchange, remove_file, remove_tree, rename};
use super::journal::Journal;
use super::*;

fn manifest(sha: &str) -> Manifest {
    Manifest {
        sha256: sha.into(),
        size_bytes: 1,
        files: 1,
        git_commit: None,
        pushed_at: "2025-01-01T00:00:00Z".into(),
        pushed_by: "master".into(),
        release_id: None,
    }
}

fn stage(l: &Layout, sha: &str) -> Manifest {
    let s = l.prepare_staging().unwrap();
    let m = manifest(sha);
    crate::release::write_manifest(&s, &m).unwrap();
    m
}

fn live(l: &Layout) -> Option<String> {
    Manifest::read(&l.current()).map(|m| m.sha256)
}

#[test]
fn update_confirm_revert_rollback() {
    let tmp = tempfile::tempdir().unwrap();
    let l = Layout::new(tmp.path(), 2);
    assert_eq!(l.repair().unwrap().actions.len(), 0);
    let a = stage(&l, "aaaa");
    l.flip_in(&a).unwrap();
    assert_eq!(live(&l).as_deref(), Some("aaaa"));
    l.confirm().unwrap();
    let b = stage(&l, "bbbb");
    l.flip_in(&b).unwrap();
    assert_eq!(live(&l).as_deref(), Some("bbbb"));
    assert!(l.old().is_dir());
    l.confirm().unwrap();
    assert_eq!(Manifest::read(&l.prev()).unwrap().sha256, "aaaa");
    // A failing update keeps prev.
    let c = stage(&l, "cccc");
    l.flip_in(&c).unwrap();
    let (name, restored) = l.revert(&c).unwrap();
    assert!(restored);
    assert!(name.contains("cccc"));
    assert_eq!(live(&l).as_deref(), Some("bbbb"));
    assert_eq!(Manifest::read(&l.prev()).unwrap().sha256, "aaaa");
    assert_eq!(l.releases().failed.len(), 1);
    l.swap_prev().unwrap();
    assert_eq!(live(&l).as_deref(), Some("aaaa"));
    assert_eq!(
        fs::read_link(l.current()).unwrap(),
        PathBuf::from("releases/active")
    );
}

#[test]
fn confirm_to_trash_leaves_the_old_prev_for_later_and_repair_removes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let l = Layout::new(tmp.path(), 2);
    let mut trashes = Vec::new();
    for sha in ["aaaa", "bbbb", "cccc", "dddd"] {
        let m = stage(&l, sha);
        l.flip_in(&m).unwrap();
        trashes.extend(l.confirm_to_trash().unwrap());
    }
    // aaaa and bbbb were dropped, each under a name of its own, and
    // still there: nothing waited for their delete.
    assert_eq!(trashes.len(), 2, "{trashes:?}");
    assert_ne!(trashes[0], trashes[1]);
    for (t, sha) in trashes.iter().zip(["aaaa", "bbbb"]) {
        assert_eq!(Manifest::read(t).unwrap().sha256, sha);
    }
    assert_eq!(live(&l).as_deref(), Some("dddd"));
    assert_eq!(Manifest::read(&l.prev()).unwrap().sha256, "cccc");
    assert!(!l.journal().exists() && !l.old().exists());
    // One delete done, one left as a crash would leave it: the repair
    // removes it and touches nothing else.
    delete_trash(&trashes[0]);
    delete_trash(&trashes[0]);
    assert!(!trashes[0].exists());
    let r = l.repair().unwrap();
    assert!(!trashes[1].exists(), "{r:?}");
    assert!(!r.unconfirmed && !r.restart, "{r:?}");
    assert_eq!(live(&l).as_deref(), Some("dddd"));
    assert_eq!(Manifest::read(&l.prev()).unwrap().sha256, "cccc");
}

#[test]
fn discarded_staging_goes_to_trash_and_the_repair_removes_what_is_left() {
    let tmp = tempfile::tempdir().unwrap();
    let l = Layout::new(tmp.path(), 2);
    assert_eq!(l.staging_to_trash().unwrap(), None, "no staging");
    stage(&l, "aaaa");
    let t = l.staging_to_trash().unwrap().expect("staging renamed");
    assert!(!l.staging().exists());
    assert_eq!(Manifest::read(&t).unwrap().sha256, "aaaa");
    assert!(
        t.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(".trash-staging-")
    );
    l.repair().unwrap();
    assert!(!t.exists(), "a crash before its delete: swept at start-up");
}

#[test]
fn first_install_failure_leaves_nothing_live() {
    let tmp = tempfile::tempdir().unwrap();
    let l = Layout::new(tmp.path(), 2);
    let a = stage(&l, "aaaa");
    l.flip_in(&a).unwrap();
    let (_, restored) = l.revert(&a).unwrap();
    assert!(!restored);
    assert!(fs::symlink_metadata(l.current()).is_err());
    assert!(!l.active().exists());
    let b = stage(&l, "bbbb");
    l.flip_in(&b).unwrap();
    l.confirm().unwrap();
    assert_eq!(live(&l).as_deref(), Some("bbbb"));
}

#[test]
fn repair_rules() {
    let tmp = tempfile::tempdir().unwrap();
    let l = Layout::new(tmp.path(), 2);
    let a = stage(&l, "aaaa");
    l.flip_in(&a).unwrap();
    l.confirm().unwrap();
    // Crash mid-staging: staging removed, nothing else.
    stage(&l, "bbbb");
    let r = l.repair().unwrap();
    assert!(!r.unconfirmed);
    assert!(!l.staging().exists());
    assert_eq!(live(&l).as_deref(), Some("aaaa"));
    // Crash between the exchange and the rename of the old release.
    let b = stage(&l, "bbbb");
    fs::write(l.journal(), serde_json::to_vec(&b).unwrap()).unwrap();
    exchange(&l.staging(), &l.active()).unwrap();
    let r = l.repair().unwrap();
    assert!(r.unconfirmed, "{r:?}");
    assert_eq!(live(&l).as_deref(), Some("bbbb"));
    assert_eq!(Manifest::read(&l.prev()).unwrap().sha256, "aaaa");
    assert!(!l.journal().exists() && !l.old().exists() && !l.staging().exists());
    // current missing and a stray temp link.
    fs::remove_file(l.current()).unwrap();
    std::os::unix::fs::symlink("nowhere", l.install.join(".current.tmp-1")).unwrap();
    l.repair().unwrap();
    assert_eq!(live(&l).as_deref(), Some("bbbb"));
    assert!(fs::symlink_metadata(l.install.join(".current.tmp-1")).is_err());
    // active gone, prev there: prev promoted.
    remove_tree(&l.active()).unwrap();
    l.repair().unwrap();
    assert_eq!(live(&l).as_deref(), Some("aaaa"));
}

/// prev=aaaa, active=bbbb, then cccc flipped in and failed.
fn failed_update(l: &Layout) -> Manifest {
    for sha in ["aaaa", "bbbb"] {
        let m = stage(l, sha);
        l.flip_in(&m).unwrap();
        l.confirm().unwrap();
    }
    let c = stage(l, "cccc");
    l.flip_in(&c).unwrap();
    c
}

fn failed_shas(l: &Layout) -> Vec<String> {
    l.releases()
        .failed
        .into_iter()
        .filter_map(|f| f.manifest.map(|m| m.sha256))
        .collect()
}

#[test]
fn repair_finishes_an_interrupted_revert_and_keeps_prev() {
    // Killed between revert's exchange and its move to failed/ (the
    // reviewer's repro: the exchange alone, journal as the flip left it).
    let tmp = tempfile::tempdir().unwrap();
    let l = Layout::new(tmp.path(), 5);
    failed_update(&l);
    exchange(&l.active(), &l.old()).unwrap();
    let r = l.repair().unwrap();
    assert!(!r.unconfirmed && r.restart, "{r:?}");
    assert_eq!(live(&l).as_deref(), Some("bbbb"));
    assert_eq!(Manifest::read(&l.prev()).unwrap().sha256, "aaaa");
    assert_eq!(failed_shas(&l), ["cccc"]);
    assert!(!l.old().exists() && !l.journal().exists());

    // Killed after revert marked the journal, before its exchange.
    let tmp = tempfile::tempdir().unwrap();
    let l = Layout::new(tmp.path(), 5);
    let c = failed_update(&l);
    l.write_journal_durable(&Journal {
        manifest: c,
        reverting: true,
    })
    .unwrap();
    let r = l.repair().unwrap();
    assert!(!r.unconfirmed && r.restart, "{r:?}");
    assert_eq!(live(&l).as_deref(), Some("bbbb"));
    assert_eq!(Manifest::read(&l.prev()).unwrap().sha256, "aaaa");
    assert_eq!(failed_shas(&l), ["cccc"]);

    // Killed after the revert moved the release out, before the journal went.
    let tmp = tempfile::tempdir().unwrap();
    let l = Layout::new(tmp.path(), 5);
    let c = failed_update(&l);
    l.write_journal_durable(&Journal {
        manifest: c,
        reverting: true,
    })
    .unwrap();
    exchange(&l.active(), &l.old()).unwrap();
    rename(&l.old(), &l.failed().join("x-cccc")).unwrap();
    let r = l.repair().unwrap();
    assert!(!r.unconfirmed && r.restart, "{r:?}");
    assert_eq!(live(&l).as_deref(), Some("bbbb"));
    assert_eq!(Manifest::read(&l.prev()).unwrap().sha256, "aaaa");

    // A first install's revert, marked but not done: nothing stays live.
    let tmp = tempfile::tempdir().unwrap();
    let l = Layout::new(tmp.path(), 5);
    let a = stage(&l, "aaaa");
    l.flip_in(&a).unwrap();
    l.write_journal_durable(&Journal {
        manifest: a,
        reverting: true,
    })
    .unwrap();
    let r = l.repair().unwrap();
    assert!(!r.unconfirmed, "{r:?}");
    assert!(!l.active().exists() && fs::symlink_metadata(l.current()).is_err());
    assert_eq!(failed_shas(&l), ["aaaa"]);
}

#[test]
fn repair_after_a_crash_inside_confirm_rolls_forward() {
    // Killed after confirm moved prev to the trash, before active.old
    // took its place: the trash goes, the flip rolls forward.
    let tmp = tempfile::tempdir().unwrap();
    let l = Layout::new(tmp.path(), 5);
    failed_update(&l);
    rename(&l.prev(), &l.trash_name("prev")).unwrap();
    let r = l.repair().unwrap();
    assert!(r.unconfirmed && !r.restart, "{r:?}");
    assert_eq!(live(&l).as_deref(), Some("cccc"));
    assert_eq!(Manifest::read(&l.prev()).unwrap().sha256, "bbbb");
    assert!(failed_shas(&l).is_empty());
    // Killed after active.old became prev, before the journal went.
    let tmp = tempfile::tempdir().unwrap();
    let l = Layout::new(tmp.path(), 5);
    failed_update(&l);
    remove_tree(&l.prev()).unwrap();
    rename(&l.old(), &l.prev()).unwrap();
    let r = l.repair().unwrap();
    assert!(r.unconfirmed, "{r:?}");
    assert_eq!(live(&l).as_deref(), Some("cccc"));
    assert_eq!(Manifest::read(&l.prev()).unwrap().sha256, "bbbb");
}

#[test]
fn an_unexplained_active_old_never_evicts_prev() {
    let tmp = tempfile::tempdir().unwrap();
    let l = Layout::new(tmp.path(), 5);
    failed_update(&l);
    remove_file(&l.journal()).unwrap();
    let r = l.repair().unwrap();
    assert!(!r.unconfirmed, "{r:?}");
    assert_eq!(live(&l).as_deref(), Some("cccc"));
    assert_eq!(Manifest::read(&l.prev()).unwrap().sha256, "aaaa");
    assert_eq!(failed_shas(&l), ["bbbb"]);
}

#[test]
fn old_journals_without_the_reverting_mark_still_read() {
    let j: Journal =
        serde_json::from_slice(&serde_json::to_vec(&manifest("aaaa")).unwrap()).unwrap();
    assert_eq!((j.manifest.sha256.as_str(), j.reverting), ("aaaa", false));
}

#[test]
fn exchange_never_falls_back_to_renames() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let b = a.join("b");
    fs::create_dir_all(&b).unwrap();
    // RENAME_EXCHANGE refuses (EINVAL) to swap a directory with its own
    // child; a three-rename fallback would have moved `a` away.
    let e = exchange(&a, &b).unwrap_err();
    assert!(e.to_string().contains("RENAME_EXCHANGE"), "{e}");
    assert!(b.is_dir(), "a and a/b untouched");
    assert!(!tmp.path().join("a.swap").exists());
}

#[test]
fn exchange_check_passes_here_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    check_exchange(tmp.path()).unwrap();
    assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);
    check_install_exchange(tmp.path()).unwrap();
    assert!(check_exchange(&tmp.path().join("missing")).is_err());
}

#[test]
fn repair_after_an_interrupted_rollback_restarts_on_a_whole_release() {
    for swapped in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        let l = Layout::new(tmp.path(), 5);
        for sha in ["aaaa", "bbbb"] {
            let m = stage(&l, sha);
            l.flip_in(&m).unwrap();
            l.confirm().unwrap();
        }
        l.begin_rollback(Some(&manifest("bbbb")), Some(&manifest("aaaa")))
            .unwrap();
        if swapped {
            l.swap_prev().unwrap();
        }
        let r = l.repair().unwrap();
        assert!(r.restart && !r.unconfirmed, "{r:?}");
        let (live_sha, prev_sha) = if swapped {
            ("aaaa", "bbbb")
        } else {
            ("bbbb", "aaaa")
        };
        assert_eq!(live(&l).as_deref(), Some(live_sha));
        assert_eq!(Manifest::read(&l.prev()).unwrap().sha256, prev_sha);
        assert!(!l.rollback_journal().exists());
        assert!(l.releases().failed.is_empty());
        // At rest: the next repair has nothing to do.
        let again = l.repair().unwrap();
        assert!(again.actions.is_empty() && !again.restart, "{again:?}");
    }
}

#[test]
fn failed_retention() {
    let tmp = tempfile::tempdir().unwrap();
    let l = Layout::new(tmp.path(), 2);
    for i in 0..4 {
        let m = stage(&l, &format!("{i}{i}{i}"));
        l.flip_in(&m).unwrap();
        l.revert(&m).unwrap();
    }
    assert_eq!(l.releases().failed.len(), 2);
}

#[test]
fn repair_removes_stale_temp_files_of_every_json_it_writes() {
    // A crash between writing a temp sibling and its rename leaves it
    // behind; the trial marker's was missed before (issue 9 #10).
    let tmp = tempfile::tempdir().unwrap();
    let l = Layout::updater(tmp.path(), 2);
    l.ensure_dirs().unwrap();
    let stale = [
        l.root.join(".trial.json.tmp-4242"),
        l.releases.join(".incoming.json.tmp-4242"),
        l.releases.join(".rollback.json.tmp-4242"),
        l.root.join(".current.tmp-4242"),
    ];
    for p in &stale {
        fs::write(p, "{").unwrap();
    }
    let keep = l.root.join("trial.json.keep");
    fs::write(&keep, "x").unwrap();
    let r = l.repair().unwrap();
    for p in &stale {
        assert!(!p.exists(), "{} left behind: {r:?}", p.display());
    }
    assert!(keep.exists(), "only our own temp files go");
}

/// prev=aaaa, active=bbbb.
fn two_releases(l: &Layout) {
    for sha in ["aaaa", "bbbb"] {
        let m = stage(l, sha);
        l.flip_in(&m).unwrap();
        l.confirm().unwrap();
    }
}

#[test]
fn a_crash_before_the_verdict_keeps_prev_for_the_probe_to_decide() {
    // Killed while probing cccc (flipped, no verdict): the pending repair
    // keeps active.old, prev and the journal; a revert then restores bbbb
    // and prev is still aaaa (issue 10: a crash never costs prev).
    let tmp = tempfile::tempdir().unwrap();
    let l = Layout::new(tmp.path(), 5);
    two_releases(&l);
    let c = stage(&l, "cccc");
    l.flip_in(&c).unwrap();
    let r = l.repair_pending().unwrap();
    assert!(r.unconfirmed && !r.rollback_unconfirmed, "{r:?}");
    assert_eq!(live(&l).as_deref(), Some("cccc"));
    assert_eq!(Manifest::read(&l.old()).unwrap().sha256, "bbbb");
    assert_eq!(Manifest::read(&l.prev()).unwrap().sha256, "aaaa");
    assert_eq!(l.pending_update().unwrap().sha256, "cccc");
    // Killed again at the same point: the same answer.
    let again = l.repair_pending().unwrap();
    assert!(again.unconfirmed, "{again:?}");
    // The verdict (unhealthy) is a rename, then the revert.
    l.mark_reverting().unwrap();
    assert!(l.reverting_journal().exists() && !l.journal().exists());
    // Killed right after the verdict: the repair finishes the revert.
    let r = l.repair_pending().unwrap();
    assert!(r.restart && !r.unconfirmed, "{r:?}");
    assert_eq!(live(&l).as_deref(), Some("bbbb"));
    assert_eq!(Manifest::read(&l.prev()).unwrap().sha256, "aaaa");
    assert_eq!(failed_shas(&l), vec!["cccc".to_owned()]);
    assert!(!l.reverting_journal().exists() && !l.old().exists());
}

#[test]
fn an_unconfirmed_rollback_is_kept_for_a_probe_and_a_decided_undo_is_finished() {
    let tmp = tempfile::tempdir().unwrap();
    let l = Layout::new(tmp.path(), 5);
    two_releases(&l);
    let (a, b) = (manifest("aaaa"), manifest("bbbb"));
    l.begin_rollback(Some(&b), Some(&a)).unwrap();
    l.swap_prev().unwrap();
    // Killed while probing aaaa: the journal stays, the probe decides.
    let r = l.repair_pending().unwrap();
    assert!(r.rollback_unconfirmed && r.restart, "{r:?}");
    assert!(l.rollback_journal().exists());
    assert_eq!(live(&l).as_deref(), Some("aaaa"));
    // The verdict "undo" recorded, killed before the swap back.
    l.mark_rollback_undo().unwrap();
    assert!(l.read_rollback().unwrap().undo);
    let r = l.repair_pending().unwrap();
    assert!(r.restart && !r.rollback_unconfirmed, "{r:?}");
    assert_eq!(live(&l).as_deref(), Some("bbbb"));
    assert_eq!(Manifest::read(&l.prev()).unwrap().sha256, "aaaa");
    assert!(!l.rollback_pending());
}

#[test]
fn a_flip_that_fails_after_its_exchange_is_undone() {
    // A flip whose finishing step fails after the exchange (here the
    // re-pointing of `current`, which is a non-empty dir; in the field a
    // full disk) leaves the old release live, no journal, and the pushed
    // tree back in staging: its error answer means nothing rotated.
    let tmp = tempfile::tempdir().unwrap();
    let l = Layout::new(tmp.path(), 5);
    two_releases(&l);
    let c = stage(&l, "cccc");
    fs::remove_file(l.current()).unwrap();
    fs::create_dir(l.current()).unwrap();
    fs::write(l.current().join("x"), b"x").unwrap();
    assert!(l.flip_in(&c).is_err());
    assert_eq!(Manifest::read(&l.active()).unwrap().sha256, "bbbb");
    assert_eq!(Manifest::read(&l.staging()).unwrap().sha256, "cccc");
    assert!(l.read_journal().is_none() && !l.old().exists());
}
