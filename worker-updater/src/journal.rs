//! The updater's operation journal (`<install>/journal.jsonl`, issue 11):
//! every operation — update, unchanged, rollback, automatic revert,
//! crash-loop, restart, update-self — appended as one JSON line and
//! fsynced, read back newest last by `GET /history`. A line torn by a
//! kill -9 (or anything else that does not parse) is skipped at read.
//!
//! Bounded: past [`ROTATE_AT`] bytes the file becomes `journal.jsonl.1`
//! (one generation kept), and every detail is one sanitised line of at
//! most [`MAX_DETAIL`] characters. Blocking: call it off the async threads.

use std::io::Write;
use std::path::{Path, PathBuf};

use pki::wire::JournalEntry;

use crate::error::{Result, UpdaterError};

/// Size past which the journal is rotated.
pub const ROTATE_AT: u64 = 1024 * 1024;
/// Longest `detail` kept, in characters.
pub const MAX_DETAIL: usize = 500;
/// Most entries one `GET /history` returns.
pub const MAX_LIMIT: usize = 1000;

/// The journal file and its one rotated generation.
#[derive(Clone, Debug)]
pub struct Journal {
    path: PathBuf,
}

impl Journal {
    pub fn new(path: PathBuf) -> Journal {
        Journal { path }
    }

    fn rotated(&self) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(".1");
        PathBuf::from(p)
    }

    /// Append `entry` as one line and fsync it (and the directory when the
    /// file was just created or rotated).
    pub fn append(&self, entry: &JournalEntry) -> Result<()> {
        let mut line = serde_json::to_vec(entry)
            .map_err(|e| UpdaterError::Internal(format!("serializing a journal entry: {e}")))?;
        line.push(b'\n');
        let io = |e| UpdaterError::io(&self.path, e);
        let size = std::fs::metadata(&self.path).map(|m| m.len()).ok();
        let mut new_file = size.is_none();
        if size.is_some_and(|s| s + line.len() as u64 > ROTATE_AT) {
            std::fs::rename(&self.path, self.rotated()).map_err(io)?;
            new_file = true;
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&self.path)
            .map_err(io)?;
        // A line torn by a crash is closed first, so this entry starts a
        // line of its own.
        if !new_file && !ends_with_newline(&mut f) {
            line.insert(0, b'\n');
        }
        f.write_all(&line).map_err(io)?;
        f.sync_data().map_err(io)?;
        if new_file && let Some(dir) = self.path.parent() {
            crate::slots::fsx::fsync_dir(dir)?;
        }
        Ok(())
    }

    /// The last `limit` entries, oldest first; lines that do not parse (a
    /// torn last line) are skipped.
    pub fn read(&self, limit: usize) -> Vec<JournalEntry> {
        let mut entries = Vec::new();
        for path in [self.rotated(), self.path.clone()] {
            if let Ok(text) = std::fs::read(&path) {
                entries.extend(
                    text.split(|b| *b == b'\n')
                        .filter(|l| !l.is_empty())
                        .filter_map(|l| serde_json::from_slice::<JournalEntry>(l).ok()),
                );
            }
        }
        let skip = entries.len().saturating_sub(limit);
        entries.split_off(skip)
    }
}

/// An entry stamped now, its detail made one line of at most
/// [`MAX_DETAIL`] characters (control characters become spaces).
pub fn entry(
    op: &str,
    by: &str,
    release: Option<&str>,
    outcome: &str,
    detail: &str,
) -> JournalEntry {
    JournalEntry {
        time: crate::now_rfc3339(),
        op: op.to_owned(),
        by: one_line(by, 100),
        release: release.map(str::to_owned),
        outcome: outcome.to_owned(),
        detail: one_line(detail, MAX_DETAIL),
    }
}

fn ends_with_newline(f: &mut std::fs::File) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let mut last = [0u8; 1];
    match f.seek(SeekFrom::End(-1)) {
        Ok(_) => f.read_exact(&mut last).is_err() || last[0] == b'\n',
        // An empty file.
        Err(_) => true,
    }
}

fn one_line(s: &str, max: usize) -> String {
    s.chars()
        .take(max)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Append off the async threads, logging (not failing) on error: the
/// journal records an operation, it never decides one.
pub async fn record(journal: &Journal, entry: JournalEntry) {
    let j = journal.clone();
    match tokio::task::spawn_blocking(move || j.append(&entry)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!("writing the journal: {e}"),
        Err(e) => tracing::error!("writing the journal: {e}"),
    }
}

/// The install dir's journal file.
pub fn path_in(install_dir: &Path) -> PathBuf {
    install_dir.join("journal.jsonl")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torn_lines_are_skipped_and_limit_keeps_the_newest() {
        let tmp = tempfile::tempdir().unwrap();
        let j = Journal::new(path_in(tmp.path()));
        for i in 0..5 {
            j.append(&entry(
                "update",
                "master",
                None,
                "updated",
                &format!("n{i}"),
            ))
            .unwrap();
        }
        // A torn write at the end (kill -9 half-way through a line).
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(path_in(tmp.path()))
            .unwrap();
        f.write_all(br#"{"time":"2026-"#).unwrap();
        let all = j.read(MAX_LIMIT);
        assert_eq!(all.len(), 5);
        let last2: Vec<_> = j.read(2).into_iter().map(|e| e.detail).collect();
        assert_eq!(last2, ["n3", "n4"]);
        // The next append starts a line of its own after the torn one.
        j.append(&entry("rollback", "master", None, "rolled-back", "x"))
            .unwrap();
        assert_eq!(j.read(MAX_LIMIT).len(), 6);
        assert_eq!(j.read(1)[0].detail, "x");
    }

    #[test]
    fn details_are_one_capped_line_and_the_file_rotates() {
        let tmp = tempfile::tempdir().unwrap();
        let j = Journal::new(path_in(tmp.path()));
        let long = "a\nb\u{1b}".repeat(1000);
        let e = entry("update", "master", Some("ab"), "error", &long);
        assert_eq!(e.detail.chars().count(), MAX_DETAIL);
        assert!(!e.detail.chars().any(char::is_control));
        let n = (ROTATE_AT / 500) as usize + 10;
        for _ in 0..n {
            j.append(&e).unwrap();
        }
        assert!(std::fs::metadata(path_in(tmp.path())).unwrap().len() <= ROTATE_AT);
        assert!(j.rotated().exists());
        assert_eq!(j.read(MAX_LIMIT).len(), MAX_LIMIT);
    }
}
