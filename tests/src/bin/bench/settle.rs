//! How the benchmark lets the machine come to rest between timed
//! operations: it waits for the updaters' background deletes, then syncs.
//! (Processes, timed commands and `/health` polling are the harness's:
//! `tests::process`, `tests::worker`.)

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The `releases/` dirs of the workers started, whose background deletes
/// [`settle`] waits for.
static RELEASE_DIRS: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Longest wait in [`settle`] for the updaters' background deletes.
const TRASH_TIMEOUT: Duration = Duration::from_secs(120);

/// Have [`settle`] wait for the background deletes in `releases`.
pub(crate) fn watch_releases(releases: PathBuf) {
    if let Ok(mut dirs) = RELEASE_DIRS.lock() {
        dirs.push(releases);
    }
}

/// Whether an updater is still deleting a replaced release in `releases`.
fn deleting(releases: &Path) -> bool {
    std::fs::read_dir(releases).is_ok_and(|rd| {
        rd.filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().starts_with(".trash-"))
    })
}

/// Let the machine come to rest (untimed), so that the next timed
/// operation does not pay for the work of the one before it: wait until
/// no updater is still deleting the release a push replaced (they do it
/// after answering), then flush every dirty page to disk.
pub(crate) async fn settle() {
    let dirs = RELEASE_DIRS.lock().map(|d| d.clone()).unwrap_or_default();
    let start = Instant::now();
    while start.elapsed() < TRASH_TIMEOUT && dirs.iter().any(|d| deleting(d)) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = tokio::task::spawn_blocking(nix::unistd::sync).await;
}
