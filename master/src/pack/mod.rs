//! The release tarball: the working tree at `--root` (staged, unstaged and
//! untracked files) minus `.git/`, what `.gitignore`/`.swarmignore`/`--exclude`
//! leave out, and secrets, packed once into an unlinked zstd temp file
//! whose SHA-256 is computed as it is written.
//!
//! This file walks, tars and hashes; [`secrets`] decides what stays home,
//! [`git`] reads the commit and the dirty bit, and the master's copies of
//! the `swarm.toml` schema ([`swarm_toml`]) and of the symlink rule
//! ([`link_rule`]) each live in one file of their own.
//!
//! Invariants: `.env.local` never ships; other secrets (`.env*`, `*.key`,
//! any file [`crate::keyscan`] finds a private key in, read whole) ship only
//! when `swarm.toml`'s `[release] include` names them, and every file left
//! out is listed in `skipped_secrets`; entries are sorted, owned by 0:0, with
//! modes 0755/0644 and each file's own mtime, so a tree whose contents and
//! mtimes are unchanged packs to the same bytes (touching a file changes
//! the digest); symlinks must stay inside the tree. The packed file has
//! no name from the moment it exists (`O_TMPFILE`, or unlinked right after
//! it is created): a `swarm` killed at any instant leaves nothing in the
//! temp dir, and the kernel frees the space when the process ends.

mod git;
mod link_rule;
mod secrets;
mod swarm_toml;

use std::cell::Cell;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ignore::WalkBuilder;
use ignore::overrides::{Override, OverrideBuilder};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use pki::index::{INDEX_FILE, IndexEntry, TreeIndex};
use pki::wire::MANIFEST_FILE;

use link_rule::check_link;
use secrets::{NEVER_SHIPPED, holds_private_key, is_secret_name};

/// What to pack.
#[derive(Clone, Debug)]
pub(crate) struct PackOptions {
    pub(crate) root: PathBuf,
    pub(crate) excludes: Vec<String>,
    /// Pack a delta (issue 12): leave out the files a worker already has.
    pub(crate) delta: Option<DeltaOf>,
}

/// What a delta leaves out: every file of `want` (the whole release, as
/// the full pack indexed it) whose content and size the base has, while
/// the file on disk still has the size indexed (the updater checks every
/// byte against the index it is sent anyway).
#[derive(Clone, Debug)]
pub(crate) struct DeltaOf {
    pub(crate) want: std::sync::Arc<TreeIndex>,
    pub(crate) have: std::sync::Arc<std::collections::HashSet<(String, u64)>>,
}

impl DeltaOf {
    /// The index entry of `rel` when its content need not be sent.
    fn reuses(&self, rel: &str, len: u64) -> Option<&IndexEntry> {
        let e = self.want.get(rel)?;
        let sha = e.sha256.clone()?;
        (e.kind == pki::index::EntryKind::File && e.size == len && self.have.contains(&(sha, len)))
            .then_some(e)
    }
}

/// A packed release, in an unlinked temp file that lives as long as this
/// value (and the process) does.
#[derive(Debug)]
pub(crate) struct Release {
    file: File,
    pub(crate) info: ReleaseInfo,
    /// The tree's canonical index (a delta's: the whole release's).
    pub(crate) index: TreeIndex,
}

/// What is known about a packed release.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct ReleaseInfo {
    pub(crate) root: PathBuf,
    /// SHA-256 (hex) of the upload (the zstd-compressed tar).
    pub(crate) sha256: String,
    /// SHA-256 of the tree's canonical index ([`pki::index`]): what the
    /// updater computes as it extracts, whatever the compression.
    pub(crate) release_id: String,
    pub(crate) size_bytes: u64,
    /// Regular files in the tarball.
    pub(crate) files: u64,
    pub(crate) git_commit: Option<String>,
    /// Whether the tree had uncommitted changes against `git_commit`
    /// (`None`: unknown: not a checkout, or no git installed).
    pub(crate) git_dirty: Option<bool>,
    /// Secrets left out (relative paths).
    pub(crate) skipped_secrets: Vec<String>,
    /// `[install] timeout_secs` of the tree's `swarm.toml`, if any.
    #[serde(skip)]
    pub(crate) install_timeout_secs: Option<u64>,
    /// `[agent] probe_deadline_secs` of the tree's `swarm.toml`, if any.
    #[serde(skip)]
    pub(crate) probe_deadline_secs: Option<u64>,
    /// Where the tree's updater binary is (`[updater] binary`, default
    /// `bin/worker-updater`), and whether the tarball ships it executable.
    #[serde(skip)]
    pub(crate) updater_binary: String,
    #[serde(skip)]
    pub(crate) ships_updater: bool,
    /// `[rollout]` of the tree's `swarm.toml`: the plan's defaults.
    #[serde(skip)]
    pub(crate) rollout: pki::rollout::RolloutSection,
}

impl Release {
    /// A path that opens the packed bytes afresh, with an offset of its
    /// own, for as long as this value lives: `/proc/self/fd/N` reopens the
    /// unlinked file (Linux; the master already reads `/proc` for the
    /// demo). Each host's upload opens it, so pushes read independently.
    pub(crate) fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }
}

/// A writer that hashes and counts what passes through it.
struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// How far packing has got, for a progress display: files and bytes of
/// the tree packed so far, handed to `report` at most every
/// [`PackProgress::EVERY`] (and once at the end).
pub(crate) struct PackProgress<'a> {
    files: Cell<u64>,
    bytes: Cell<u64>,
    last: Cell<Option<Instant>>,
    report: &'a dyn Fn(u64, u64),
}

impl<'a> PackProgress<'a> {
    const EVERY: Duration = Duration::from_millis(50);

    pub(crate) fn new(report: &'a dyn Fn(u64, u64)) -> PackProgress<'a> {
        PackProgress {
            files: Cell::new(0),
            bytes: Cell::new(0),
            last: Cell::new(None),
            report,
        }
    }

    fn file(&self) {
        self.files.set(self.files.get() + 1);
        self.tick(false);
    }

    fn bytes(&self, n: u64) {
        self.bytes.set(self.bytes.get() + n);
        self.tick(false);
    }

    fn tick(&self, force: bool) {
        let now = Instant::now();
        if force || self.last.get().is_none_or(|t| now - t >= Self::EVERY) {
            self.last.set(Some(now));
            (self.report)(self.files.get(), self.bytes.get());
        }
    }
}

/// Reads exactly `remaining` bytes or fails: a file that shrinks while it
/// is packed must not produce a corrupt tarball. Counts what it reads into
/// `progress` and hashes it (the file's index entry).
struct Exact<'p, 'a, R> {
    inner: R,
    remaining: u64,
    progress: &'p PackProgress<'a>,
    hasher: Sha256,
}

impl<R: Read> Read for Exact<'_, '_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let max = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while it was being packed",
            ));
        }
        self.remaining -= n as u64;
        self.progress.bytes(n as u64);
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

pub(super) fn pack_err(root: &Path, message: impl Into<String>) -> Error {
    Error::Pack {
        root: root.to_owned(),
        message: message.into(),
    }
}

fn globs(root: &Path, globs: &[String], negate: bool, what: &str) -> Result<Override> {
    let mut b = OverrideBuilder::new(root);
    for g in globs {
        let g = if negate { format!("!{g}") } else { g.clone() };
        b.add(&g)
            .map_err(|e| pack_err(root, format!("{what} glob {g:?}: {e}")))?;
    }
    b.build()
        .map_err(|e| pack_err(root, format!("{what} globs: {e}")))
}

fn header(kind: tar::EntryType, mode: u32, mtime: i64, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_mtime(u64::try_from(mtime).unwrap_or(0));
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(size);
    h
}

/// Pack the tree. Nothing is sent anywhere; the result is a temp file.
#[cfg(test)]
pub(crate) fn pack(opts: &PackOptions) -> Result<Release> {
    pack_reporting(opts, &PackProgress::new(&|_, _| {}))
}

/// [`pack`], telling `progress` how far it got as it goes.
pub(crate) fn pack_reporting(opts: &PackOptions, progress: &PackProgress<'_>) -> Result<Release> {
    let root = fs::canonicalize(&opts.root).map_err(|e| {
        pack_err(
            &opts.root,
            format!("{e}; pass --root DIR with the tree to push"),
        )
    })?;
    if !root.is_dir() {
        return Err(pack_err(&root, "not a directory; pass --root DIR"));
    }
    let config = swarm_toml::read(&root)?;
    swarm_toml::check_paths(&root, &config)?;
    let include = globs(&root, &config.release.include, false, "swarm.toml include")?;
    let exclude = globs(&root, &opts.excludes, true, "--exclude")?;

    // Nameless from the start (see the module invariants).
    let file = tempfile::tempfile().map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let path = std::env::temp_dir().join("(unlinked release file)");
    let hw = HashWriter {
        inner: BufWriter::with_capacity(256 * 1024, file),
        hasher: Sha256::new(),
        written: 0,
    };
    let z = zstd::stream::write::Encoder::new(hw, COMPRESSION_LEVEL)
        .map_err(|e| pack_err(&root, format!("zstd encoder: {e}")))?;
    let mut tar = tar::Builder::new(z);
    tar.mode(tar::HeaderMode::Deterministic);

    let walker = WalkBuilder::new(&root)
        .hidden(false)
        .ignore(false)
        .parents(true)
        .git_ignore(true)
        .git_exclude(true)
        .git_global(false)
        .require_git(false)
        .add_custom_ignore_filename(".swarmignore")
        .overrides(exclude)
        .follow_links(false)
        .sort_by_file_name(|a, b| a.cmp(b))
        .filter_entry(|e| e.file_name() != ".git")
        .build();

    let updater_binary = config.updater_binary().to_owned();
    let mut ships_updater = false;
    let mut files = 0u64;
    let mut skipped_secrets = Vec::new();
    let mut index = Vec::new();
    for entry in walker {
        let entry = entry.map_err(|e| pack_err(&root, e.to_string()))?;
        if entry.depth() == 0 {
            continue;
        }
        let path = entry.path();
        let rel = path
            .strip_prefix(&root)
            .map_err(|_| pack_err(&root, format!("{} is outside the tree", path.display())))?
            .to_owned();
        let rel_str = rel.to_str().ok_or_else(|| {
            pack_err(
                &root,
                format!(
                    "{} is not valid UTF-8; rename it or exclude it",
                    rel.display()
                ),
            )
        })?;
        let name = entry.file_name().to_string_lossy();
        let meta = fs::symlink_metadata(path).map_err(|e| Error::io(path, e))?;
        let ft = meta.file_type();
        let io_err = |e: io::Error| Error::io(path, e);
        if ft.is_dir() {
            let mut h = header(tar::EntryType::Directory, 0o755, meta.mtime(), 0);
            tar.append_data(&mut h, format!("{rel_str}/"), io::empty())
                .map_err(io_err)?;
            index.push(IndexEntry::dir(rel_str, 0o755));
        } else if ft.is_symlink() {
            let target = fs::read_link(path).map_err(io_err)?;
            let created = check_link(&root, &rel, &target)?;
            let mut h = header(tar::EntryType::Symlink, 0o777, meta.mtime(), 0);
            tar.append_link(&mut h, rel_str, &target).map_err(io_err)?;
            index.push(IndexEntry::link(rel_str, &created.to_string_lossy()));
            ships_updater |= rel_str == updater_binary;
        } else if ft.is_file() {
            if entry.depth() == 1 && (name == MANIFEST_FILE || name == INDEX_FILE) {
                return Err(pack_err(
                    &root,
                    format!(
                        "{name} at the root is reserved: each updater writes it; \
                         remove it (or exclude it) and push again"
                    ),
                ));
            }
            let included = || include.matched(path, false).is_whitelist();
            if name == NEVER_SHIPPED || (is_secret_name(&name) && !included()) {
                skipped_secrets.push(rel_str.to_owned());
                continue;
            }
            if let Some(e) = opts
                .delta
                .as_ref()
                .and_then(|d| d.reuses(rel_str, meta.len()))
            {
                // Shipped by the full pack (its secret checks passed), and
                // the worker has the content: only the index names it.
                index.push(e.clone());
                files += 1;
                progress.file();
                ships_updater |= rel_str == updater_binary && e.mode == 0o755;
                continue;
            }
            // One handle: scanned whole for a private key, rewound, packed.
            let mut f = File::open(path).map_err(io_err)?;
            let len = f.metadata().map_err(io_err)?.len();
            if !included() && holds_private_key(&mut f, &name, rel_str, &root)? {
                skipped_secrets.push(rel_str.to_owned());
                continue;
            }
            let mode = if meta.permissions().mode() & 0o111 != 0 {
                0o755
            } else {
                0o644
            };
            let mut h = header(tar::EntryType::Regular, mode, meta.mtime(), len);
            let mut reader = Exact {
                inner: f,
                remaining: len,
                progress,
                hasher: Sha256::new(),
            };
            tar.append_data(&mut h, rel_str, &mut reader)
                .map_err(io_err)?;
            let sha = hex::encode(reader.hasher.finalize());
            index.push(IndexEntry::file(rel_str, mode, len, sha));
            files += 1;
            progress.file();
            ships_updater |= rel_str == updater_binary && mode == 0o755;
        }
        // Sockets, FIFOs and devices are not part of a release.
    }
    let z = tar.into_inner().map_err(|e| Error::io(&path, e))?;
    let mut hw = z.finish().map_err(|e| Error::io(&path, e))?;
    hw.flush().map_err(|e| Error::io(&path, e))?;
    let size_bytes = hw.written;
    let sha256 = hex::encode(hw.hasher.finalize());
    let file = hw
        .inner
        .into_inner()
        .map_err(|e| Error::io(&path, e.into_error()))?;
    let git_commit = git::git_commit(&root);
    let index = TreeIndex::new(index).map_err(|why| pack_err(&root, why))?;
    progress.tick(true);
    Ok(Release {
        file,
        index: index.clone(),
        info: ReleaseInfo {
            git_dirty: git_commit.as_ref().and_then(|_| git::git_dirty(&root)),
            git_commit,
            root,
            sha256,
            release_id: index.release_id(),
            size_bytes,
            files,
            skipped_secrets,
            install_timeout_secs: config.install.timeout_secs,
            probe_deadline_secs: config.agent.probe_deadline_secs,
            updater_binary,
            ships_updater,
            rollout: config.rollout,
        },
    })
}

/// zstd level 1, by measurement (84 MB of half text, half noise, one
/// core): gzip -1 2.99 s → 71.3 MB; zstd -1 0.32 s → 69.6 MB; zstd -3
/// 0.44 s → 67.6 MB; zstd -6 0.93 s → 67.4 MB. Level 3's 3 % fewer bytes
/// cost 40 % more packing time, which a LAN does not pay back (2 MB is
/// 16 ms at 1 Gbit/s). Its window (512 KiB) is far below what updaters
/// accept (8 MiB, `ZSTD_WINDOW_LOG_MAX`).
const COMPRESSION_LEVEL: i32 = 1;

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    #[test]
    fn a_delta_leaves_out_what_the_base_has_and_names_the_same_release() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "same/a.txt", &"a".repeat(10_000));
        write(root, "same/b.txt", "b");
        write(root, "changed.txt", "new");
        std::os::unix::fs::symlink("same/b.txt", root.join("link")).unwrap();
        let opts = |delta| PackOptions {
            root: root.to_owned(),
            excludes: vec![],
            delta,
        };
        let full = pack(&opts(None)).unwrap();
        let have: std::collections::HashSet<(String, u64)> = ["same/a.txt", "same/b.txt"]
            .iter()
            .map(|p| {
                let e = full.index.get(p).unwrap();
                (e.sha256.clone().unwrap(), e.size)
            })
            .collect();
        let delta = pack(&opts(Some(DeltaOf {
            want: std::sync::Arc::new(full.index.clone()),
            have: std::sync::Arc::new(have),
        })))
        .unwrap();
        assert_eq!(delta.info.release_id, full.info.release_id);
        assert_eq!(delta.index, full.index);
        assert_eq!(delta.info.files, 3);
        assert!(delta.info.size_bytes < full.info.size_bytes);
        let mut names = entries(&delta);
        names.sort();
        assert_eq!(
            names,
            ["changed.txt", "link", "same/"],
            "dirs and links, no reused file"
        );
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
        let release = pack_reporting(
            &PackOptions {
                root: root.to_owned(),
                excludes: vec![],
                delta: None,
            },
            &PackProgress::new(&report),
        )
        .unwrap();
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
        let pem = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBx0p+8Yq/abc=\n-----END EC PRIVATE KEY-----\n";
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
            delta: None,
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
        let f = File::open(release.path()).unwrap();
        let mut ar = tar::Archive::new(zstd::stream::read::Decoder::new(f).unwrap());
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
            check_link(Path::new("/r"), Path::new(rel), Path::new(target))
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
            delta: None,
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
            delta: None,
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
                delta: None,
            })
            .is_ok()
        );
    }

    fn entries(release: &Release) -> Vec<String> {
        let f = File::open(release.path()).unwrap();
        let mut ar = tar::Archive::new(zstd::stream::read::Decoder::new(f).unwrap());
        ar.entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect()
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
            delta: None,
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
        let bytes = fs::read(release.path()).unwrap();
        assert_eq!(release.info.size_bytes, bytes.len() as u64);
        assert_eq!(release.info.sha256, hex::encode(Sha256::digest(&bytes)));
        // Same tree, same bytes.
        let again = pack(&PackOptions {
            root: root.to_owned(),
            excludes: vec!["*.log".into()],
            delta: None,
        })
        .unwrap();
        assert_eq!(again.info.sha256, release.info.sha256);
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
            delta: None,
        })
        .unwrap_err();
        assert!(err.to_string().contains("a/bad"), "{err}");
    }
}
