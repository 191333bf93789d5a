//! The scan of a tree: the walk (the `ignore` crate: `.gitignore`,
//! `.swarmignore`, `--exclude`, no `.git/`), the secret checks, the link
//! rule and the canonical index. A file's hash and its private-key verdict
//! come from the [`HashCache`] while its stat is the one recorded; every
//! other file is read once, hashed and scanned.

use std::cell::Cell;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ignore::WalkBuilder;
use ignore::overrides::{Override, OverrideBuilder};

use super::cache::HashCache;
use super::link_rule::check_link;
use super::secrets::{NEVER_SHIPPED, holds_private_key, is_secret_name};
use super::{Item, ItemKind, PackOptions, ReleaseInfo, Tree, git, pack_err, swarm_toml};
use crate::error::{Error, Result};
use pki::index::{INDEX_FILE, IndexEntry, TreeIndex};
use pki::wire::MANIFEST_FILE;

/// How far scanning has got, for a progress display: files and bytes of
/// the tree seen so far, handed to `report` at most every
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

    fn file(&self, bytes: u64) {
        self.files.set(self.files.get() + 1);
        self.bytes.set(self.bytes.get() + bytes);
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

/// Scan the tree at `opts.root`. Nothing is packed or sent.
pub(crate) fn scan(opts: &PackOptions, progress: &PackProgress<'_>) -> Result<Tree> {
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
    let mut cache = HashCache::open(opts.cache_dir.as_deref(), &root);

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
    let mut tree_bytes = 0u64;
    let mut skipped_secrets = Vec::new();
    let mut index = Vec::new();
    let mut items = Vec::new();
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
        let item = |kind| Item {
            rel: rel_str.to_owned(),
            mtime: meta.mtime(),
            kind,
        };
        if ft.is_dir() {
            index.push(IndexEntry::dir(rel_str, 0o755));
            items.push(item(ItemKind::Dir));
        } else if ft.is_symlink() {
            let target = fs::read_link(path).map_err(io_err)?;
            let created = check_link(&root, &rel, &target)?;
            index.push(IndexEntry::link(rel_str, &created.to_string_lossy()));
            ships_updater |= rel_str == updater_binary;
            items.push(item(ItemKind::Link(target)));
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
            let (sha256, holds_key) = match cache.get(rel_str, &meta) {
                Some(hit) => (hit.sha256, hit.holds_key),
                None => {
                    let (sha, key) = hash_and_scan(path, &name, rel_str, &root, meta.len())?;
                    cache.put(rel_str, &meta, &sha, key);
                    (sha, key)
                }
            };
            if holds_key && !included() {
                skipped_secrets.push(rel_str.to_owned());
                continue;
            }
            let mode = if meta.permissions().mode() & 0o111 != 0 {
                0o755
            } else {
                0o644
            };
            let size = meta.len();
            index.push(IndexEntry::file(rel_str, mode, size, sha256.clone()));
            items.push(item(ItemKind::File { mode, size, sha256 }));
            files += 1;
            tree_bytes += size;
            progress.file(size);
            ships_updater |= rel_str == updater_binary && mode == 0o755;
        }
        // Sockets, FIFOs and devices are not part of a release.
    }
    cache.save();
    let git_commit = git::git_commit(&root);
    let index = TreeIndex::new(index).map_err(|why| pack_err(&root, why))?;
    progress.tick(true);
    Ok(Tree {
        items,
        whole: OnceLock::new(),
        info: ReleaseInfo {
            git_dirty: git_commit.as_ref().and_then(|_| git::git_dirty(&root)),
            git_commit,
            root: root.clone(),
            sha256: None,
            release_id: index.release_id(),
            size_bytes: None,
            tree_bytes,
            files,
            skipped_secrets,
            install_timeout_secs: config.install.timeout_secs,
            probe_deadline_secs: config.agent.probe_deadline_secs,
            updater_binary,
            ships_updater,
            rollout: config.rollout,
        },
        index,
        root,
    })
}

/// Read the file at `path` once: its SHA-256, and whether it holds a
/// private key (the whole file scanned by [`crate::keyscan`]). It must
/// still be `len` bytes long.
fn hash_and_scan(
    path: &Path,
    name: &str,
    rel: &str,
    root: &Path,
    len: u64,
) -> Result<(String, bool)> {
    let io_err = |e: io::Error| Error::io(path, e);
    let mut f = File::open(path).map_err(io_err)?;
    let holds_key = holds_private_key(&mut f, name, rel, root)?;
    let (sha, seen) = pki::index::copy_hashing(&mut f, &mut io::sink()).map_err(|e| match e {
        pki::index::CopyError::Read(e) | pki::index::CopyError::Write(e) => io_err(e),
    })?;
    if seen != len {
        return Err(pack_err(
            root,
            format!("{rel} changed size while it was being scanned; push again"),
        ));
    }
    Ok((sha, holds_key))
}
