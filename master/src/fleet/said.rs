//! What a worker said, distrusted at the edge: every answer body is read
//! under a cap ([`read_answer`], [`read_json`]) and every string in it is
//! passed through [`pki::text::sanitize`] right after parsing ([`Clean`]),
//! so nothing a compromised worker sends reaches the terminal, `--json` or
//! the inventory with a control character, a bidi override or unbounded
//! length.
//!
//! Invariants: a parsed wire type is cleaned once, here, and carried
//! clean; no fleet code reads a worker's body except through this module
//! (the `/update` answer's strings are cleaned by [`Clean`] in
//! `report::interpret`).

use pki::text::sanitize;
use pki::wire::{
    FailedRelease, JournalEntry, Manifest, OpResponse, Probe, Releases, SlotVerify,
    SupervisedAgent, UpdaterHealth, VerifyReport, WorkerHistory,
};
use serde::de::DeserializeOwned;

/// Cap on a `/health` answer (a few hundred bytes in practice).
pub(super) const HEALTH_CAP: usize = 64 * 1024;
/// Cap on a `/releases` answer (three manifests and a few failed ones).
pub(super) const RELEASES_CAP: usize = 1 << 20;
/// Cap on a `/history` answer (at most 1000 journal lines of a few
/// hundred bytes).
pub(super) const HISTORY_CAP: usize = 4 << 20;
/// Cap on an `/update`, `/update-self` or `/rollback` answer (a manifest,
/// probes and at most the tail of an install hook's stderr).
pub(super) const ANSWER_CAP: usize = 1 << 20;

/// Longest detail kept from one message (an `error`, a probe's error).
pub(super) const DETAIL_CHARS: usize = 1000;
/// Longest identifier-like field kept (sha256, commit, time, CN, names).
const FIELD_CHARS: usize = 200;
/// Paths kept per kind of change in a `/verify` answer.
const PATHS_KEPT: usize = 1000;
/// Lines of an install hook's stderr kept (its tail), each at most
/// [`FIELD_CHARS`] characters.
const STDERR_LINES: usize = 20;

/// `s` as one safe line of at most `max` characters (see [`sanitize`]).
pub(super) fn line(s: &str, max: usize) -> String {
    sanitize(s, max)
}

/// Lines of a failed agent's output kept (`log_tail`), as the updater
/// promises; a worker sending more has the last ones kept.
const LOG_TAIL_LINES: usize = 20;

/// The last [`LOG_TAIL_LINES`] lines of an agent's output, each one safe.
fn log_tail(lines: Vec<String>) -> Vec<String> {
    let from = lines.len().saturating_sub(LOG_TAIL_LINES);
    lines[from..]
        .iter()
        .map(|l| sanitize(l, DETAIL_CHARS))
        .collect()
}

/// The tail of a multi-line text, each line sanitised on its own, so the
/// last line can still be picked out.
fn tail_lines(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    let from = lines.len().saturating_sub(STDERR_LINES);
    lines[from..]
        .iter()
        .map(|l| sanitize(l, FIELD_CHARS))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A wire type whose strings came from a worker.
pub(super) trait Clean {
    /// The same value with every string sanitised and bounded.
    fn clean(self) -> Self;
}

fn field(s: String) -> String {
    match pki::text::sanitize_cow(&s, FIELD_CHARS) {
        std::borrow::Cow::Borrowed(_) => s,
        std::borrow::Cow::Owned(o) => o,
    }
}

fn detail(s: String) -> String {
    match pki::text::sanitize_cow(&s, DETAIL_CHARS) {
        std::borrow::Cow::Borrowed(_) => s,
        std::borrow::Cow::Owned(o) => o,
    }
}

impl<T: Clean> Clean for Option<T> {
    fn clean(self) -> Self {
        self.map(Clean::clean)
    }
}

impl<T: Clean> Clean for Vec<T> {
    fn clean(self) -> Self {
        self.into_iter().map(Clean::clean).collect()
    }
}

impl Clean for Manifest {
    fn clean(self) -> Self {
        Manifest {
            sha256: field(self.sha256),
            git_commit: self.git_commit.map(field),
            pushed_at: field(self.pushed_at),
            pushed_by: field(self.pushed_by),
            release_id: self.release_id.map(field),
            ..self
        }
    }
}

impl Clean for SlotVerify {
    fn clean(self) -> Self {
        let paths =
            |v: Vec<String>| -> Vec<String> { v.into_iter().take(PATHS_KEPT).map(field).collect() };
        SlotVerify {
            slot: field(self.slot),
            release: self.release.clean(),
            modified: paths(self.modified),
            added: paths(self.added),
            missing: paths(self.missing),
            error: self.error.map(detail),
            ..self
        }
    }
}

impl Clean for VerifyReport {
    fn clean(self) -> Self {
        VerifyReport {
            slots: self.slots.into_iter().take(4).map(Clean::clean).collect(),
            ..self
        }
    }
}

impl Clean for Probe {
    fn clean(self) -> Self {
        Probe {
            phase: field(self.phase),
            url: field(self.url),
            release_sha256: self.release_sha256.map(field),
            error: self.error.map(detail),
            ..self
        }
    }
}

impl Clean for OpResponse {
    fn clean(self) -> Self {
        OpResponse {
            release: self.release.clean(),
            error: self.error.map(detail),
            probes: self.probes.clean(),
            stderr: self.stderr.as_deref().map(tail_lines),
            log_tail: log_tail(self.log_tail),
            ..self
        }
    }
}

impl Clean for UpdaterHealth {
    fn clean(self) -> Self {
        UpdaterHealth {
            status: field(self.status),
            role: field(self.role),
            host: field(self.host),
            version: field(self.version),
            release: self.release.clean(),
            busy: self.busy.map(field),
            agent: self.agent.clean(),
            ..self
        }
    }
}

impl Clean for SupervisedAgent {
    fn clean(self) -> Self {
        SupervisedAgent {
            last_exit: self.last_exit.map(detail),
            since: field(self.since),
            ..self
        }
    }
}

impl Clean for JournalEntry {
    fn clean(self) -> Self {
        JournalEntry {
            time: field(self.time),
            op: field(self.op),
            by: field(self.by),
            release: self.release.map(field),
            outcome: field(self.outcome),
            detail: detail(self.detail),
        }
    }
}

impl Clean for WorkerHistory {
    fn clean(self) -> Self {
        WorkerHistory {
            entries: self.entries.clean(),
        }
    }
}

impl Clean for FailedRelease {
    fn clean(self) -> Self {
        FailedRelease {
            name: field(self.name),
            manifest: self.manifest.clean(),
        }
    }
}

impl Clean for pki::renew::RenewAnswer {
    fn clean(self) -> Self {
        pki::renew::RenewAnswer {
            status: field(self.status),
            agent_fingerprint: field(self.agent_fingerprint),
            updater_fingerprint: field(self.updater_fingerprint),
            agent_healthy: self.agent_healthy,
            detail: field(self.detail),
        }
    }
}

impl Clean for Releases {
    fn clean(self) -> Self {
        Releases {
            active: self.active.clean(),
            prev: self.prev.clean(),
            failed: self.failed.clean(),
            kept: self.kept.into_iter().take(1000).map(Clean::clean).collect(),
        }
    }
}

/// The status and body of `resp`, the body at most `cap` bytes; the
/// error is the cap (or the transport) in words, already safe to print.
pub(super) async fn read_answer(
    resp: reqwest::Response,
    cap: usize,
) -> Result<(reqwest::StatusCode, Vec<u8>), String> {
    let status = resp.status();
    match pki::body::read_capped(resp, cap).await {
        Ok(body) => Ok((status, body)),
        Err(pki::PkiError::Http(e)) if e.is_timeout() => {
            Err(format!("HTTP {status}: timed out while reading the answer"))
        }
        Err(e) => Err(line(
            &format!("HTTP {status}: {}", pki::error_chain(&e)),
            DETAIL_CHARS,
        )),
    }
}

/// A refusal in one safe line: `HTTP <status>: <its error field, or the
/// start of its body>`.
pub(super) fn refusal(status: reqwest::StatusCode, body: &[u8]) -> String {
    let msg = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_owned());
    format!("HTTP {status}: {}", line(&msg, 200))
}

/// A 2xx `resp` parsed as `T` (at most `cap` bytes) and cleaned; any other
/// status is an error carrying its `error` field (or the start of the
/// body), sanitised.
pub(super) async fn read_json<T: DeserializeOwned + Clean>(
    resp: reqwest::Response,
    cap: usize,
) -> Result<T, String> {
    let (status, body) = read_answer(resp, cap).await?;
    if !status.is_success() {
        return Err(refusal(status, &body));
    }
    serde_json::from_slice::<T>(&body)
        .map(Clean::clean)
        .map_err(|e| format!("unexpected answer: {}", line(&e.to_string(), 200)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_string_of_an_answer_comes_out_clean() {
        let esc = "\u{1b}]52;c;cm0gLXJm\u{7}\u{1b}[2J\u{9b}1m\u{202e}";
        let body = serde_json::json!({
            "status": "rolled-back",
            "rolled_back": true,
            "error": format!("probe failed {esc}"),
            "release": {"sha256": esc, "size_bytes": 1, "files": 1,
                        "git_commit": esc, "pushed_at": esc, "pushed_by": esc},
            "probes": [{"phase": esc, "url": esc, "healthy": false, "attempts": 1,
                        "elapsed_ms": 1, "release_sha256": esc, "error": esc}],
            "stderr": format!("first {esc}\nlast {esc}\n"),
            "log_tail": (0..30).map(|i| format!("line {i} {esc}")).collect::<Vec<_>>(),
        });
        let resp: OpResponse = serde_json::from_value(body).unwrap();
        let clean = resp.clean();
        let text = serde_json::to_string(&clean).unwrap();
        let decoded: serde_json::Value = serde_json::from_str(&text).unwrap();
        fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
            match v {
                serde_json::Value::String(s) => out.push(s.clone()),
                serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
                serde_json::Value::Object(o) => o.values().for_each(|v| walk(v, out)),
                _ => {}
            }
        }
        let mut strings = Vec::new();
        walk(&decoded, &mut strings);
        assert!(strings.len() >= 10, "{strings:?}");
        for s in &strings {
            for c in s.chars() {
                assert!(
                    c == '\n' || !(c.is_control() || ('\u{202a}'..='\u{202e}').contains(&c)),
                    "{s:?}"
                );
            }
        }
        // The agent's output keeps its last 20 lines, each clean.
        assert_eq!(clean.log_tail.len(), 20);
        assert!(
            clean.log_tail[19].starts_with("line 29 "),
            "{:?}",
            clean.log_tail
        );
        // The stderr tail keeps its lines, each clean.
        let stderr = clean.stderr.clone().unwrap();
        assert_eq!(stderr.lines().count(), 2, "{stderr:?}");
        assert!(
            stderr
                .lines()
                .last()
                .unwrap()
                .starts_with("last \\u{1b}]52")
        );
        // A long message is bounded.
        let long = OpResponse {
            error: Some("x".repeat(1 << 20)),
            ..clean.clone()
        }
        .clean();
        assert!(long.error.unwrap().len() < DETAIL_CHARS + 40);
    }

    #[test]
    fn a_hostile_health_and_journal_come_out_clean() {
        let esc = "\u{1b}]52;c;cm0gLXJm\u{7}\u{202e}";
        let health: UpdaterHealth = serde_json::from_value(serde_json::json!({
            "status": "ok", "role": "updater", "host": "w1", "version": "1", "pid": 1,
            "release": null,
            "agent": {"state": "crash-loop", "pid": null, "restarts": 6, "healthy": false,
                      "last_exit": esc, "since": esc},
        }))
        .unwrap();
        let agent = health.clean().agent.unwrap();
        for s in [agent.last_exit.unwrap(), agent.since] {
            assert!(
                !s.chars().any(|c| c.is_control() || c == '\u{202e}'),
                "{s:?}"
            );
        }
        let history: WorkerHistory = serde_json::from_value(serde_json::json!({
            "entries": [{"time": esc, "op": esc, "by": esc, "release": esc,
                         "outcome": esc, "detail": esc}],
        }))
        .unwrap();
        let e = history.clean().entries.remove(0);
        let release = e.release.clone().unwrap();
        for s in [&e.time, &e.op, &e.by, &release, &e.outcome, &e.detail] {
            assert!(
                !s.chars().any(|c| c.is_control() || c == '\u{202e}'),
                "{s:?}"
            );
        }
    }
}
