//! `swarm logs (--host H | --tag T…) [-n N] [-f]`: the agent's output as
//! its updater keeps it (`GET /logs`), each line made safe before it is
//! printed; several tagged hosts one after the other under a header, or,
//! with `-f`, all at once, each line prefixed with its host.
//!
//! Invariants: a line is printed only once it is whole (or once it
//! reaches [`LINE_CAP`] bytes), sanitised; without `--follow` the whole
//! answer is bounded by [`BODY_CAP`] and by a deadline; with it, only the
//! connect and the answer's headers are, and the stream runs until the
//! operator interrupts it or the updater hangs up.

use std::time::Duration;

use super::client::{Master, STATUS_TIMEOUT};
use super::said;
use crate::cli::LogsArgs;
use crate::error::{EXIT_FAILED, Error, Result};
use crate::home::Home;
use crate::inventory::{HostRecord, Tag};
use crate::output::outln;
use futures_util::future::join_all;
use pki::HostName;

/// Longest line kept whole; a longer one is printed in pieces this big.
const LINE_CAP: usize = 64 * 1024;
/// Characters of one line printed (the rest is marked as cut).
const LINE_CHARS: usize = 8 * 1024;
/// Cap on a `/logs` answer without `--follow` (10,000 lines of ~1.6 KiB).
const BODY_CAP: usize = 16 << 20;
/// Whole-request limit without `--follow`.
const LOGS_TIMEOUT: Duration = Duration::from_secs(60);

/// `swarm logs`.
pub(crate) fn logs(home: &Home, args: &LogsArgs) -> Result<u8> {
    let inv = home.inventory()?;
    let recs = match &args.host {
        Some(host) => vec![super::resolve_host(&inv, &HostName::new(host.trim())?)?],
        None => super::tagged(&inv, &Tag::parse_all(&args.tags)?)?,
    };
    drop(inv);
    let master = Master::for_home(home)?;
    let many = recs.len() > 1;
    let run = async {
        if args.follow {
            // Every host at once, each line marked with its host.
            let mark = if many { Mark::Prefix } else { Mark::None };
            join_all(recs.iter().map(|rec| logs_one(&master, rec, args, mark))).await
        } else {
            let mark = if many { Mark::Header } else { Mark::None };
            let mut done = Vec::new();
            for rec in &recs {
                done.push(logs_one(&master, rec, args, mark).await);
            }
            done
        }
    };
    let mut code = 0;
    for (rec, r) in recs.iter().zip(super::runtime()?.block_on(run)) {
        match r {
            Ok(()) => {}
            Err(LogsFailure::Out(e)) => return Err(e),
            Err(LogsFailure::Peer(why)) => {
                eprintln!("error: {}: {why}", rec.host);
                code = EXIT_FAILED;
            }
        }
    }
    Ok(code)
}

/// How a host's lines are told apart when several hosts are shown.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mark {
    /// One host: the lines as they are.
    None,
    /// `==> HOST <==` before them (one host after the other).
    Header,
    /// `HOST | ` before each (all hosts at once, `-f`).
    Prefix,
}

/// Print one host's log.
async fn logs_one(
    master: &Master,
    rec: &HostRecord,
    args: &LogsArgs,
    mark: Mark,
) -> std::result::Result<(), LogsFailure> {
    let client = if args.follow {
        master.ready_stream_client(rec).await
    } else {
        master.ready_client(rec, LOGS_TIMEOUT).await
    };
    let url = rec.updater_url(&format!(
        "/logs?lines={}{}",
        args.lines,
        if args.follow { "&follow=true" } else { "" }
    ));
    {
        let client = client.map_err(LogsFailure::Peer)?;
        let sent = tokio::time::timeout(STATUS_TIMEOUT, client.get(url).send())
            .await
            .map_err(|_| format!("no answer within {}s", STATUS_TIMEOUT.as_secs()))?;
        let resp = sent.map_err(|e| master.describe(&e, LOGS_TIMEOUT))?;
        if !resp.status().is_success() {
            // The refusal's own words, read under the cap.
            let (status, body) = said::read_answer(resp, said::HEALTH_CAP).await?;
            return Err(LogsFailure::Peer(said::refusal(status, &body)));
        }
        if mark == Mark::Header {
            outln!("==> {} <==", rec.host).map_err(LogsFailure::Out)?;
        }
        let prefix = (mark == Mark::Prefix).then(|| format!("{} | ", rec.host));
        print_stream(resp, args.follow, master, prefix.as_deref().unwrap_or("")).await
    }
}

/// Why `swarm logs` stopped early.
enum LogsFailure {
    /// The updater refused, broke off or sent too much (already safe text).
    Peer(String),
    /// Our own stdout went away.
    Out(Error),
}

impl From<String> for LogsFailure {
    fn from(s: String) -> Self {
        LogsFailure::Peer(s)
    }
}

/// Print `resp`'s body line by line as it arrives.
async fn print_stream(
    mut resp: reqwest::Response,
    follow: bool,
    master: &Master,
    prefix: &str,
) -> std::result::Result<(), LogsFailure> {
    let mut lines = LineSplitter::default();
    let mut total = 0usize;
    loop {
        let chunk = match resp.chunk().await {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(e) => return Err(master.describe(&e, LOGS_TIMEOUT).into()),
        };
        total = total.saturating_add(chunk.len());
        if !follow && total > BODY_CAP {
            return Err(format!(
                "the updater sent more than {} MiB for the lines asked; stopped",
                BODY_CAP >> 20
            )
            .into());
        }
        for line in lines.push(&chunk) {
            outln!("{prefix}{line}").map_err(LogsFailure::Out)?;
        }
    }
    if let Some(rest) = lines.finish() {
        outln!("{prefix}{rest}").map_err(LogsFailure::Out)?;
    }
    Ok(())
}

/// Bytes in, whole safe lines out.
#[derive(Default)]
struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    /// The lines `chunk` completes (a line longer than [`LINE_CAP`] comes
    /// out in pieces), each sanitised.
    fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        for &b in chunk {
            if b == b'\n' {
                out.push(safe(&std::mem::take(&mut self.partial)));
            } else {
                self.partial.push(b);
                if self.partial.len() >= LINE_CAP {
                    out.push(safe(&std::mem::take(&mut self.partial)));
                }
            }
        }
        out
    }

    /// What is left after the last newline, if anything.
    fn finish(self) -> Option<String> {
        (!self.partial.is_empty()).then(|| safe(&self.partial))
    }
}

fn safe(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    said::line(text.strip_suffix('\r').unwrap_or(&text), LINE_CHARS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_come_out_whole_safe_and_bounded() {
        let mut s = LineSplitter::default();
        assert!(s.push(b"hal").is_empty());
        assert_eq!(s.push(b"f\nsecond\r\nthi"), ["half", "second"]);
        let evil = s.push(b"rd \x1b]52;c;x\x07\n");
        assert_eq!(evil.len(), 1);
        assert!(evil[0].starts_with("third "), "{evil:?}");
        assert!(!evil[0].contains('\u{1b}') && !evil[0].contains('\u{7}'));
        // A newline-free flood is cut into capped pieces, not buffered whole.
        let flood = vec![b'x'; 3 * LINE_CAP + 5];
        let pieces = s.push(&flood);
        assert_eq!(pieces.len(), 3);
        assert!(s.partial.len() < LINE_CAP);
        assert_eq!(s.finish().as_deref(), Some("xxxxx"));
    }
}
