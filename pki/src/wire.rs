//! JSON bodies that cross the wire between the master, the updater and the
//! agent. Flat objects; every error carries `error`.

use serde::{Deserialize, Serialize};

/// `.swarm-release.json` at the root of every release.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// SHA-256 (hex) of the uploaded gzip.
    pub sha256: String,
    /// Size of the uploaded gzip in bytes.
    pub size_bytes: u64,
    /// Regular files in the release.
    pub files: u64,
    pub git_commit: Option<String>,
    /// RFC 3339.
    pub pushed_at: String,
    /// CN of the client that pushed it.
    pub pushed_by: String,
    /// SHA-256 of the release's canonical tree index ([`crate::index`]):
    /// the same tree has the same id however it was compressed (issue 12).
    /// `None` in manifests written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_id: Option<String>,
}

/// The manifest file name inside a release.
pub const MANIFEST_FILE: &str = ".swarm-release.json";

impl Manifest {
    /// Whether `self` and `other` are the same release: the same
    /// `release_id` when both have one, else the same upload digest.
    pub fn same_release(&self, other: &Manifest) -> bool {
        match (&self.release_id, &other.release_id) {
            (Some(a), Some(b)) => a == b,
            _ => self.sha256 == other.sha256,
        }
    }

    /// The release's name for people: its `release_id`, or the upload
    /// digest of a manifest that predates it.
    pub fn id(&self) -> &str {
        self.release_id.as_deref().unwrap_or(&self.sha256)
    }

    /// The manifest of the release in `dir`: `None` when it has none, or
    /// one that cannot be read or parsed (logged).
    pub fn read(dir: &std::path::Path) -> Option<Manifest> {
        let path = dir.join(MANIFEST_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!("{}: {e}", path.display());
                return None;
            }
        };
        match serde_json::from_slice(&bytes) {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!("{}: {e}", path.display());
                None
            }
        }
    }
}

/// An error body: `{"status":"error","error":…}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub status: String,
    pub error: String,
}

/// `GET /health` on the agent.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AgentHealth {
    pub status: String,
    pub role: String,
    pub host: String,
    pub release: Option<Manifest>,
    pub pid: u32,
    pub uptime_secs: u64,
}

/// `GET /status` on the agent.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AgentStatus {
    pub status: String,
    pub role: String,
    pub host: String,
    pub version: String,
    pub pid: u32,
    pub uptime_secs: u64,
    pub started_at: String,
    pub release: Option<Manifest>,
    pub release_dir: Option<String>,
    pub install_dir: Option<String>,
}

/// `GET /health` on the updater.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UpdaterHealth {
    pub status: String,
    pub role: String,
    pub host: String,
    pub version: String,
    /// The updater's own release (set once it has been self-updated).
    pub release: Option<Manifest>,
    pub pid: u32,
    /// The operation running now, if any (`update`, `rollback`, `update-self`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busy: Option<String>,
    /// The agent this updater supervises, as the updater sees it (issue 11).
    /// Absent from older updaters' answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<SupervisedAgent>,
}

/// What the supervisor is doing with the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentState {
    /// Spawned and not yet seen healthy since its (re)start.
    Starting,
    Running,
    /// Exited unexpectedly; a restart is scheduled.
    Backoff,
    /// Too many unexpected exits in a short time: no more restarts until
    /// the next update, rollback or `POST /agent/restart`.
    CrashLoop,
    /// Not running and not to be restarted (no release, or stopped on purpose).
    Stopped,
}

/// The `agent` object of the updater's `/health`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupervisedAgent {
    pub state: AgentState,
    pub pid: Option<u32>,
    /// Unexpected exits restarted since the release went live.
    pub restarts: u32,
    /// The updater's own probe of the running release's `health_url`, at
    /// most a few seconds old; `None` before the first probe or while stopped.
    pub healthy: Option<bool>,
    /// How the last unexpected exit ended (`exit status 1`, `signal 9`).
    pub last_exit: Option<String>,
    /// RFC 3339: when the agent entered `state`.
    pub since: String,
}

/// One line of the updater's own journal (`GET /history`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// RFC 3339.
    pub time: String,
    /// `update`, `unchanged`, `rollback`, `revert` (automatic), `crash-loop`,
    /// `restart`, `update-self`.
    pub op: String,
    /// The caller's certificate CN (`updater` for what the updater did by itself).
    pub by: String,
    /// The release (sha256) the operation ended on, when there is one.
    pub release: Option<String>,
    /// `updated`, `unchanged`, `rolled-back`, `error`, …
    pub outcome: String,
    /// One line: what happened and why.
    pub detail: String,
}

/// `GET /history?limit=N` on the updater: newest last.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerHistory {
    pub entries: Vec<JournalEntry>,
}

/// One health probe of an agent: how many tries, how long, what it saw.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Probe {
    /// `forward` (the new release), `rollback` (the restored one), or `rollback-check`.
    pub phase: String,
    pub url: String,
    pub healthy: bool,
    pub attempts: u32,
    pub elapsed_ms: u64,
    /// The release sha256 the agent reported, when it answered.
    pub release_sha256: Option<String>,
    /// The last failure seen, when unhealthy.
    pub error: Option<String>,
}

/// Outcome of `/update`, `/update-self` and `/rollback`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OpStatus {
    Updated,
    /// The pushed release already is the active one: nothing changed.
    Unchanged,
    RolledBack,
    Busy,
    Error,
}

/// Time spent in each phase of an update, in milliseconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Timings {
    /// Receiving, hashing, decompressing and extracting (streamed together).
    pub receive_ms: u64,
    pub install_ms: u64,
    pub sync_flip_ms: u64,
    pub restart_ms: u64,
    pub probe_ms: u64,
    /// Confirming a healthy release: `prev` rotated, the journal removed
    /// (the release it replaces is deleted after the answer, not in here).
    /// Absent from older updaters' answers.
    #[serde(default)]
    pub confirm_ms: u64,
    pub total_ms: u64,
    /// Bytes of the upload received (the `tarball` field; issue 12's
    /// `wire_bytes`). Absent from older updaters' answers.
    #[serde(default)]
    pub received_bytes: u64,
}

/// The body of every state-changing response.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OpResponse {
    pub status: OpStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<Manifest>,
    #[serde(default)]
    pub rolled_back: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub probes: Vec<Probe>,
    /// Tail of the install hook's stderr, on a 500.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timings: Option<Timings>,
    /// On a 409 (rolled back) or a failed first install: the last ≤ 20
    /// lines the failed agent printed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log_tail: Vec<String>,
}

impl OpResponse {
    /// An answer with `status` and `release` and nothing else (no probes,
    /// no stderr, no timings, no log tail); set the rest with `..`.
    pub fn new(status: OpStatus, release: Option<Manifest>) -> OpResponse {
        OpResponse {
            status,
            release,
            rolled_back: false,
            error: None,
            probes: Vec::new(),
            stderr: None,
            timings: None,
            log_tail: Vec::new(),
        }
    }
}

/// A release kept in `failed/`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FailedRelease {
    /// Directory name under `releases/failed/`.
    pub name: String,
    pub manifest: Option<Manifest>,
}

/// `GET /releases`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Releases {
    pub active: Option<Manifest>,
    pub prev: Option<Manifest>,
    pub failed: Vec<FailedRelease>,
    /// Every good release kept (issue 12), newest first: `active`, `prev`,
    /// then those in `releases/kept/`. Absent from older updaters' answers.
    #[serde(default)]
    pub kept: Vec<Manifest>,
}

/// One release slot as `POST /verify` found it on disk (issue 12).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotVerify {
    /// `active` or `prev`.
    pub slot: String,
    pub release: Option<Manifest>,
    /// Nothing differs from the index kept with the release.
    pub clean: bool,
    /// Paths whose type, mode, size or content differ from the index.
    pub modified: Vec<String>,
    /// Paths on disk that the index does not have.
    pub added: Vec<String>,
    /// Paths of the index that are not on disk.
    pub missing: Vec<String>,
    /// Why the slot could not be checked (no index kept with it, an
    /// index that is not the manifest's `release_id`, …); never clean then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `POST /verify`: the live release and `prev`, re-hashed against their
/// indexes. `clean` only when every slot that exists is.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VerifyReport {
    pub clean: bool,
    pub slots: Vec<SlotVerify>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timings_from_older_updaters_still_parse() {
        let old = r#"{"receive_ms":1,"install_ms":2,"sync_flip_ms":3,"restart_ms":4,"probe_ms":5,"total_ms":20}"#;
        let t: Timings = serde_json::from_str(old).unwrap();
        assert_eq!((t.probe_ms, t.confirm_ms, t.total_ms), (5, 0, 20));
    }

    #[test]
    fn manifest_read() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(Manifest::read(tmp.path()).is_none(), "none there");
        std::fs::write(tmp.path().join(MANIFEST_FILE), "{not json").unwrap();
        assert!(Manifest::read(tmp.path()).is_none(), "garbage");
        let m = Manifest {
            sha256: "aaaa".into(),
            size_bytes: 1,
            files: 2,
            git_commit: None,
            pushed_at: "2025-01-01T00:00:00Z".into(),
            pushed_by: "master".into(),
            release_id: None,
        };
        std::fs::write(
            tmp.path().join(MANIFEST_FILE),
            serde_json::to_vec(&m).unwrap(),
        )
        .unwrap();
        assert_eq!(Manifest::read(tmp.path()), Some(m.clone()));
        // A manifest written before release_id parses, without one.
        let old = r#"{"sha256":"aa","size_bytes":1,"files":1,"git_commit":null,"pushed_at":"t","pushed_by":"master"}"#;
        let old: Manifest = serde_json::from_str(old).unwrap();
        assert_eq!(old.release_id, None);
        assert!(old.same_release(&m) == (old.sha256 == m.sha256));
    }

    #[test]
    fn same_release_compares_release_ids_when_both_have_one() {
        let m = |sha: &str, id: Option<&str>| Manifest {
            sha256: sha.into(),
            size_bytes: 1,
            files: 1,
            git_commit: None,
            pushed_at: "t".into(),
            pushed_by: "master".into(),
            release_id: id.map(str::to_owned),
        };
        // Same tree, another compression: the same release.
        assert!(m("aa", Some("id")).same_release(&m("bb", Some("id"))));
        assert!(!m("aa", Some("id")).same_release(&m("aa", Some("other"))));
        // An old manifest on one side: the upload digest decides.
        assert!(m("aa", None).same_release(&m("aa", Some("id"))));
        assert!(!m("aa", None).same_release(&m("bb", Some("id"))));
        assert_eq!(m("aa", None).id(), "aa");
        assert_eq!(m("aa", Some("id")).id(), "id");
    }
}
