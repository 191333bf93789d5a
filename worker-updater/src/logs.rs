//! The agent's output (`agent.spawn.log`, issue 11): the last lines of it
//! (`GET /logs`, the `log_tail` of a failed push), following it as it
//! grows (`&follow=true`), and its rotation by size.
//!
//! The agent writes the file itself through an `O_APPEND` descriptor it
//! inherited, which outlives the updater (self-update, restarts). So the
//! rotation is copy-then-truncate: the file is copied to `.1` (older ones
//! shifted, [`KEEP`] kept) and truncated, and the agent's next write lands
//! at the new end. Lines written between the copy and the truncate are
//! lost; that window is one copy long, every [`crate::ops::caretaker`] tick.
//!
//! Lines go out as the agent wrote them (raw `text/plain`), but each is cut
//! at [`MAX_LINE`] bytes and an answer at [`MAX_TOTAL`] bytes. Blocking
//! functions are marked; call them off the async threads.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

/// `agent.spawn.log` is rotated past this size.
pub const ROTATE_AT: u64 = 10 * 1024 * 1024;
/// Rotated generations kept (`.1` … `.3`).
pub const KEEP: u32 = 3;
/// Longest line sent; longer ones are cut.
pub const MAX_LINE: usize = 4096;
/// Most bytes one tail answer holds.
pub const MAX_TOTAL: usize = 1024 * 1024;
/// Most bytes read from the end of one file for a tail.
const WINDOW: u64 = 4 * 1024 * 1024;
/// Most lines one `GET /logs` returns.
pub const MAX_LINES: usize = 10_000;
/// Lines of a failed agent in a 409's `log_tail`.
pub const FAILED_TAIL: usize = 20;
/// How often a follower looks for new output.
const FOLLOW_EVERY: Duration = Duration::from_millis(200);
/// Chunks a follower may have queued for a slow client.
const FOLLOW_QUEUE: usize = 16;
/// Most bytes read per follower tick.
const FOLLOW_READ: usize = 64 * 1024;

/// The marker [`crate::agent::Supervisor::spawn`] writes before each agent's output.
const SPAWN_MARKER: &[u8] = b"--- ";

/// The spawn log and its rotated generations.
#[derive(Clone, Debug)]
pub struct SpawnLog {
    path: PathBuf,
}

impl SpawnLog {
    pub fn new(path: PathBuf) -> SpawnLog {
        SpawnLog { path }
    }

    fn generation(&self, n: u32) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{n}"));
        PathBuf::from(p)
    }

    /// Rotate when the log is past [`ROTATE_AT`] (blocking). Returns
    /// whether it did.
    pub fn rotate_if_big(&self) -> std::io::Result<bool> {
        match std::fs::metadata(&self.path) {
            Ok(m) if m.len() > ROTATE_AT => {}
            _ => return Ok(false),
        }
        for n in (1..KEEP).rev() {
            let from = self.generation(n);
            if from.exists() {
                std::fs::rename(&from, self.generation(n + 1))?;
            }
        }
        std::fs::copy(&self.path, self.generation(1))?;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&self.path)?
            .set_len(0)?;
        Ok(true)
    }

    /// The last `n` lines (newline-terminated, each cut at [`MAX_LINE`]),
    /// from the rotated `.1` too when the live file has fewer, at most
    /// [`MAX_TOTAL`] bytes in all; and the live file's size, where a
    /// follower starts (blocking).
    pub fn tail(&self, n: usize) -> (Vec<Vec<u8>>, u64) {
        let (mut lines, size) = tail_lines(&self.path, n);
        if lines.len() < n {
            let (mut older, _) = tail_lines(&self.generation(1), n - lines.len());
            older.append(&mut lines);
            lines = older;
        }
        let mut total = 0;
        let mut keep = lines.len();
        for l in lines.iter().rev() {
            if total + l.len() > MAX_TOTAL {
                break;
            }
            total += l.len();
            keep -= 1;
        }
        (lines.split_off(keep), size)
    }

    /// The last ≤ [`FAILED_TAIL`] lines the most recently started agent
    /// printed (after the last spawn marker), control characters replaced,
    /// for a JSON answer (blocking).
    pub fn failed_tail(&self) -> Vec<String> {
        let (lines, _) = tail_lines(&self.path, 200);
        let start = lines
            .iter()
            .rposition(|l| l.starts_with(SPAWN_MARKER))
            .map_or(0, |i| i + 1);
        let mine = &lines[start..];
        mine[mine.len().saturating_sub(FAILED_TAIL)..]
            .iter()
            .map(|l| {
                String::from_utf8_lossy(l)
                    .trim_end_matches('\n')
                    .chars()
                    .map(|c| if c.is_control() && c != '\t' { '?' } else { c })
                    .collect()
            })
            .collect()
    }

    /// New output from byte `offset` on, line by line, into a bounded
    /// queue, until the receiver (the client's connection) goes away. A
    /// truncated (rotated) file is followed from its start.
    pub fn follow(&self, offset: u64) -> mpsc::Receiver<Bytes> {
        let (tx, rx) = mpsc::channel(FOLLOW_QUEUE);
        let path = self.path.clone();
        tokio::spawn(async move {
            let mut offset = offset;
            let mut partial: Vec<u8> = Vec::new();
            loop {
                tokio::select! {
                    () = tx.closed() => return,
                    () = tokio::time::sleep(FOLLOW_EVERY) => {}
                }
                let p = path.clone();
                let read = tokio::task::spawn_blocking(move || read_from(&p, offset)).await;
                let Ok(Some((bytes, next))) = read else {
                    continue;
                };
                if next < offset {
                    partial.clear();
                }
                offset = next;
                partial.extend_from_slice(&bytes);
                let mut out = Vec::new();
                while let Some(i) = partial.iter().position(|b| *b == b'\n') {
                    let rest = partial.split_off(i + 1);
                    out.extend_from_slice(&cap_line(std::mem::replace(&mut partial, rest)));
                }
                if partial.len() > MAX_LINE {
                    let mut line = std::mem::take(&mut partial);
                    line.push(b'\n');
                    out.extend_from_slice(&cap_line(line));
                }
                // Waits for a slow client, or ends when it hangs up.
                if !out.is_empty() && tx.send(Bytes::from(out)).await.is_err() {
                    return;
                }
            }
        });
        rx
    }
}

/// Bytes of `path` from `offset` (from 0 if the file is now shorter: it was
/// truncated), at most [`FOLLOW_READ`]; and the offset after them.
fn read_from(path: &Path, offset: u64) -> Option<(Vec<u8>, u64)> {
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let from = if len < offset { 0 } else { offset };
    if len == from {
        return Some((Vec::new(), from));
    }
    f.seek(SeekFrom::Start(from)).ok()?;
    let mut buf = Vec::new();
    f.take(FOLLOW_READ as u64).read_to_end(&mut buf).ok()?;
    let next = from + buf.len() as u64;
    Some((buf, next))
}

/// A line cut at [`MAX_LINE`] bytes (its newline kept).
fn cap_line(mut line: Vec<u8>) -> Vec<u8> {
    if line.len() > MAX_LINE {
        line.truncate(MAX_LINE - 1);
        line.push(b'\n');
    }
    line
}

/// The last `n` lines of `path` within its last [`WINDOW`] bytes, each
/// newline-terminated and cut; and the file's size.
fn tail_lines(path: &Path, n: usize) -> (Vec<Vec<u8>>, u64) {
    let Ok(mut f) = std::fs::File::open(path) else {
        return (Vec::new(), 0);
    };
    let size = f.metadata().map(|m| m.len()).unwrap_or(0);
    let from = size.saturating_sub(WINDOW);
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(from)).is_err() || f.take(size - from).read_to_end(&mut buf).is_err()
    {
        return (Vec::new(), size);
    }
    let mut lines: Vec<&[u8]> = buf.split_inclusive(|b| *b == b'\n').collect();
    // A window that starts mid-file starts mid-line.
    if from > 0 && !lines.is_empty() {
        lines.remove(0);
    }
    let skip = lines.len().saturating_sub(n);
    let lines = lines[skip..]
        .iter()
        .map(|l| {
            let mut l = l.to_vec();
            if l.last() != Some(&b'\n') {
                l.push(b'\n');
            }
            cap_line(l)
        })
        .collect();
    (lines, size)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn log_with(dir: &Path, text: &[u8]) -> SpawnLog {
        let path = dir.join("agent.spawn.log");
        std::fs::write(&path, text).unwrap();
        SpawnLog::new(path)
    }

    #[test]
    fn tail_caps_lines_and_reads_the_rotated_file() {
        let tmp = tempfile::tempdir().unwrap();
        let mut text = b"a\nb\n".to_vec();
        text.extend(vec![b'x'; MAX_LINE * 2]);
        text.extend(b"\nlast");
        let log = log_with(tmp.path(), &text);
        let (lines, size) = log.tail(2);
        assert_eq!(size, text.len() as u64);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].len(), MAX_LINE);
        assert_eq!(lines[1], b"last\n");
        std::fs::write(log.generation(1), b"old1\nold2\n").unwrap();
        let (lines, _) = log.tail(6);
        assert_eq!(lines[0], b"old1\n");
        assert_eq!(lines.len(), 6);
    }

    #[test]
    fn failed_tail_is_the_last_agent_only() {
        let tmp = tempfile::tempdir().unwrap();
        let log = log_with(
            tmp.path(),
            b"--- t starting a\nold agent\n--- t starting b\nboom \x1b[31m\nbye\n",
        );
        assert_eq!(log.failed_tail(), ["boom ?[31m", "bye"]);
    }

    #[test]
    fn rotation_copies_truncates_and_keeps_three() {
        let tmp = tempfile::tempdir().unwrap();
        let log = log_with(tmp.path(), b"");
        let big = vec![b'y'; ROTATE_AT as usize + 1];
        for _ in 0..5 {
            std::fs::write(&log.path, &big).unwrap();
            assert!(log.rotate_if_big().unwrap());
        }
        assert!(!log.rotate_if_big().unwrap());
        assert_eq!(std::fs::metadata(&log.path).unwrap().len(), 0);
        for n in 1..=KEEP {
            assert!(log.generation(n).exists());
        }
        assert!(!log.generation(KEEP + 1).exists());
        for n in 1..=KEEP {
            let _ = std::fs::remove_file(log.generation(n));
        }
    }

    #[tokio::test]
    async fn follow_sends_new_lines_and_restarts_after_truncation() {
        let tmp = tempfile::tempdir().unwrap();
        let log = log_with(tmp.path(), b"before\n");
        let (_, size) = log.tail(1);
        let mut rx = log.follow(size);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&log.path)
            .unwrap();
        f.write_all(b"new line\npart").unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got[..], b"new line\n");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&log.path)
            .unwrap()
            .set_len(0)
            .unwrap();
        f.write_all(b"after\n").unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got[..], b"after\n");
    }
}
