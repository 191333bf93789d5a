//! Worker packages: `swarm enroll … --package FILE` and `swarm package`
//! write one archive that turns a bare Linux host into a worker: its agent
//! and updater bundles, the `worker-updater` and `worker-agent` binaries of
//! this build, the hardened systemd unit and a POSIX-sh `install.sh`.
//!
//! Invariants: the master never keeps a worker's private keys, so a package
//! is built from the bundles `enroll` wrote, and only after checking that
//! they are the certificates the inventory pins (same CA, same CN, same
//! fingerprints): a package always holds exactly the identity the master
//! will accept. Nothing here re-issues certificates or changes the
//! inventory; lost bundles mean `decommission` and `enroll` again. The
//! archive is 0600 and written atomically, never over an existing file.

mod archive;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use pki::{Bundle, BundleKind, HostName, Identity, PkiError};

use crate::cli::{EnrollCommand, PackageArgs};
use crate::enroll;
use crate::error::{Error, Result};
use crate::home::Home;
use crate::inventory::{HostRecord, HostStatus};
use crate::output::outln;
use archive::Entry;

/// The unit every package installs: the same file the repository ships.
pub(crate) const UNIT: &str = include_str!("../../../worker-updater/deploy/swarm-updater.service");
const INSTALL_SH: &str = include_str!("install.sh");

/// The two daemon binaries that go into a package.
#[derive(Debug)]
struct Binaries {
    updater: PathBuf,
    agent: PathBuf,
}

impl Binaries {
    /// `--bin-dir`, else the directory of the running `swarm` executable
    /// (where `cargo build` puts all three).
    fn find(bin_dir: Option<&Path>) -> Result<Binaries> {
        let dir = match bin_dir {
            Some(d) => std::path::absolute(d).map_err(|e| Error::io(d, e))?,
            None => std::env::current_exe()
                .ok()
                .and_then(|exe| exe.parent().map(Path::to_owned))
                .ok_or_else(|| {
                    Error::State(
                        "cannot find the swarm executable's directory: pass --bin-dir DIR".into(),
                    )
                })?,
        };
        let pick = |name: &str| -> Result<PathBuf> {
            let path = dir.join(name);
            match fs::metadata(&path) {
                Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(path),
                _ => Err(Error::usage(format!(
                    "{} is not an executable file: build it (cargo build --release --workspace --bins) or pass --bin-dir DIR",
                    path.display()
                ))),
            }
        };
        Ok(Binaries {
            updater: pick("worker-updater")?,
            agent: pick("worker-agent")?,
        })
    }
}

/// `swarm enroll …`, with or without `--package FILE`. With it, the updater
/// bundle is implied, everything the package needs is checked before the
/// host is enrolled, and the package is built from the bundles just written.
pub(crate) fn enroll(home: &Home, cmd: EnrollCommand) -> Result<()> {
    let mut args = cmd.enroll;
    let Some(out) = cmd.package.package else {
        return enroll::enroll(home, &args);
    };
    let out = std::path::absolute(&out).map_err(|e| Error::io(&out, e))?;
    let bins = Binaries::find(cmd.package.bin_dir.as_deref())?;
    archive::ensure_new(&out)?;
    args.updater = true;
    enroll::enroll(home, &args)?;
    let host = HostName::new(&args.host)?;
    let bundle_dir = std::path::absolute(&args.out_dir).map_err(|e| Error::io(&args.out_dir, e))?;
    // `--json` keeps stdout one document (enroll's); the package line goes
    // to stderr then.
    let report = if args.json {
        Report::Stderr
    } else {
        Report::Text
    };
    build(home, &host, &bundle_dir, &bins, &out, report).map_err(|e| {
        Error::State(format!(
            "{host} is enrolled and its bundles are in {dir}, but the package was not written: {e}; \
             once fixed: swarm package --host {host} --bundle-dir {dir} --out {out}",
            dir = bundle_dir.display(),
            out = out.display()
        ))
    })
}

/// `swarm package --host H --bundle-dir DIR --out FILE`.
pub(crate) fn package(home: &Home, args: &PackageArgs) -> Result<()> {
    let host = HostName::new(&args.host)?;
    let out = std::path::absolute(&args.out).map_err(|e| Error::io(&args.out, e))?;
    let bundle_dir =
        std::path::absolute(&args.bundle_dir).map_err(|e| Error::io(&args.bundle_dir, e))?;
    let bins = Binaries::find(args.bin_dir.as_deref())?;
    archive::ensure_new(&out)?;
    let report = if args.json {
        Report::Json
    } else {
        Report::Text
    };
    build(home, &host, &bundle_dir, &bins, &out, report)
}

/// How `build` reports the package it wrote.
#[derive(Clone, Copy, Debug)]
enum Report {
    /// Lines on stdout.
    Text,
    /// One JSON document on stdout (`swarm package --json`).
    Json,
    /// The lines on stderr (`swarm enroll --package --json`: stdout holds
    /// enroll's document).
    Stderr,
}

/// `swarm package --json`.
#[derive(Debug, serde::Serialize)]
struct PackageDoc {
    host: String,
    package: String,
    size_bytes: u64,
    mode: &'static str,
    holds_private_keys: bool,
    binaries_from: String,
    install: String,
}

/// The enrolled, active host with an updater certificate.
fn enrolled(home: &Home, host: &HostName) -> Result<HostRecord> {
    let inv = home.inventory()?;
    let rec = match inv.find(host)? {
        Some(rec) if rec.status == HostStatus::Active => rec,
        Some(_) => {
            return Err(Error::usage(format!(
                "host {host} is decommissioned: enroll it again with `swarm enroll --host {host} --address ADDR --out-dir DIR --package FILE`"
            )));
        }
        None => {
            return Err(Error::usage(format!(
                "host {host} is not enrolled: swarm enroll --host {host} --address ADDR --out-dir DIR --package FILE"
            )));
        }
    };
    if rec.updater_fingerprint.is_none() {
        return Err(Error::usage(format!(
            "host {host} has no updater certificate: swarm enroll --host {host} --updater-only --out-dir DIR, then package again"
        )));
    }
    Ok(rec)
}

/// Load the bundle in `dir` and check it is what the inventory pins.
fn pinned_bundle(
    dir: &Path,
    kind: BundleKind,
    want: &Identity,
    pin: Option<pki::Fingerprint>,
    ca: &[u8],
) -> Result<Bundle> {
    let bundle = Bundle::load_kind(dir, kind).map_err(|e| match e {
        PkiError::NoBundle(_) => Error::usage(format!(
            "no {} bundle in {}: pass the --out-dir the host was enrolled with (the master keeps no worker keys; if the bundles are lost, decommission the host and enroll it again)",
            kind.stem(),
            dir.display()
        )),
        other => Error::Pki(other),
    })?;
    let mismatch = |what: &str| {
        Error::usage(format!(
            "{}: {what} differs from what the inventory pins for {want}: these are not the bundles this host was enrolled with",
            dir.display()
        ))
    };
    if bundle.ca.as_ref() != ca {
        return Err(mismatch("the CA certificate"));
    }
    if bundle.identity() != *want {
        return Err(mismatch("the certificate's CN"));
    }
    if Some(bundle.fingerprint()) != pin {
        return Err(mismatch("the certificate fingerprint"));
    }
    Ok(bundle)
}

/// The per-host updater settings, as systemd `EnvironmentFile=` lines
/// (double-quoted, which `install.sh --no-systemd` reads too).
fn updater_env(rec: &HostRecord) -> String {
    let any = if rec.address.contains(':') {
        "[::]"
    } else {
        "0.0.0.0"
    };
    let bin_dir = UNIT
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .and_then(|exe| Path::new(exe.trim()).parent())
        .unwrap_or(Path::new("/usr/local/bin"));
    format!(
        "# Per-host settings of the swarm updater on {host}, from the inventory\n\
         # (updater port {up}, agent port {ap}). The agent command is the reference\n\
         # agent this package installs; a release's swarm.toml [agent] replaces it.\n\
         SWARM_UPDATER_LISTEN=\"{any}:{up}\"\n\
         SWARM_UPDATER_AGENT_CMD=\"{agent} --listen {any}:{ap}\"\n\
         SWARM_UPDATER_AGENT_URL=\"https://127.0.0.1:{ap}/health\"\n",
        host = rec.host,
        up = rec.updater_port,
        ap = rec.agent_port,
        agent = bin_dir.join("worker-agent").display(),
    )
}

fn readme(rec: &HostRecord, top: &str, file: &str) -> String {
    format!(
        "swarm worker package for {host}\n\
         \n\
         THIS ARCHIVE HOLDS PRIVATE KEYS (agent/worker.key, updater/updater.key):\n\
         whoever has it can act as {host}. Keep it 0600, copy it only to {host},\n\
         delete it once installed.\n\
         \n\
         Install (as root, on {host}):\n\
         \n\
         \x20   tar xzf {file} && sudo ./{top}/install.sh\n\
         \n\
         install.sh creates the `swarm` system user, /opt/swarm, the bundles in\n\
         /etc/swarm/agent and /etc/swarm/updater (0700, files 0600), the binaries\n\
         in /usr/local/bin, /etc/swarm/updater.env and the unit swarm-updater.service,\n\
         then enables and starts it. Running it again changes nothing.\n\
         \n\
         \x20   sudo ./{top}/install.sh --no-systemd        no systemd: start the updater directly\n\
         \x20   sudo ./{top}/install.sh --uninstall         remove it, keep /opt/swarm/releases\n\
         \x20   sudo ./{top}/install.sh --uninstall --purge also /opt/swarm and the user\n\
         \n\
         The master reaches it at {address}, updater port {up}, agent port {ap}.\n",
        host = rec.host,
        address = rec.address,
        up = rec.updater_port,
        ap = rec.agent_port,
    )
}

/// The raw files of a bundle, as they go into the archive.
fn bundle_entries(top: &str, sub: &str, dir: &Path, kind: BundleKind) -> Result<Vec<Entry>> {
    let mut entries = vec![Entry::Dir {
        path: format!("{top}/{sub}"),
        mode: 0o700,
    }];
    for name in [
        "ca.crt".to_owned(),
        format!("{}.crt", kind.stem()),
        format!("{}.key", kind.stem()),
    ] {
        let path = dir.join(&name);
        let data = fs::read(&path).map_err(|e| Error::io(&path, e))?;
        entries.push(Entry::Bytes {
            path: format!("{top}/{sub}/{name}"),
            mode: 0o600,
            data,
        });
    }
    Ok(entries)
}

fn build(
    home: &Home,
    host: &HostName,
    bundle_dir: &Path,
    bins: &Binaries,
    out: &Path,
    report: Report,
) -> Result<()> {
    let rec = enrolled(home, host)?;
    let ca = home.master_bundle()?.ca;
    pinned_bundle(
        bundle_dir,
        BundleKind::Agent,
        &Identity::Agent(host.clone()),
        Some(rec.agent_fingerprint),
        &ca,
    )?;
    let updater_dir = enroll::updater_dir_of(bundle_dir)?;
    pinned_bundle(
        &updater_dir,
        BundleKind::Updater,
        &Identity::Updater(host.clone()),
        rec.updater_fingerprint,
        &ca,
    )?;

    let top = format!("swarm-{host}");
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| out.display().to_string());
    let mut entries = vec![
        Entry::Dir {
            path: top.clone(),
            mode: 0o700,
        },
        Entry::Bytes {
            path: format!("{top}/README.txt"),
            mode: 0o600,
            data: readme(&rec, &top, &name).into_bytes(),
        },
        Entry::Bytes {
            path: format!("{top}/install.sh"),
            mode: 0o700,
            data: INSTALL_SH.as_bytes().to_vec(),
        },
        Entry::Bytes {
            path: format!("{top}/swarm-updater.service"),
            mode: 0o600,
            data: UNIT.as_bytes().to_vec(),
        },
        Entry::Bytes {
            path: format!("{top}/updater.env"),
            mode: 0o600,
            data: updater_env(&rec).into_bytes(),
        },
    ];
    entries.extend(bundle_entries(
        &top,
        "agent",
        bundle_dir,
        BundleKind::Agent,
    )?);
    entries.extend(bundle_entries(
        &top,
        "updater",
        &updater_dir,
        BundleKind::Updater,
    )?);
    // The home's release key (issue 15), even for a bundle enrolled before
    // it existed: the installed updater takes only signed releases.
    if let Some(key) = crate::signing::release_pub(home)? {
        entries.push(Entry::Bytes {
            path: format!("{top}/updater/{}", pki::sign::RELEASE_PUB),
            mode: 0o644,
            data: key.to_pem()?.into_bytes(),
        });
    }
    entries.push(Entry::Dir {
        path: format!("{top}/bin"),
        mode: 0o700,
    });
    entries.push(Entry::File {
        path: format!("{top}/bin/worker-updater"),
        mode: 0o700,
        src: bins.updater.clone(),
    });
    entries.push(Entry::File {
        path: format!("{top}/bin/worker-agent"),
        mode: 0o700,
        src: bins.agent.clone(),
    });
    let size = archive::write(out, &entries)?;
    let install = format!(
        "scp {} {addr}: && ssh {addr} 'tar xzf {name} && sudo ./{top}/install.sh'",
        out.display(),
        addr = rec.address
    );
    let lines = [
        format!(
            "package for {host}: {} ({:.1} MiB, mode 0600, HOLDS PRIVATE KEYS: copy it only to {host})",
            out.display(),
            size as f64 / (1024.0 * 1024.0)
        ),
        format!("  binaries from {}", parent_display(&bins.updater)),
        format!("install: {install}"),
    ];
    match report {
        Report::Text => {
            for l in &lines {
                outln!("{l}")?;
            }
            Ok(())
        }
        Report::Stderr => {
            for l in &lines {
                eprintln!("{l}");
            }
            Ok(())
        }
        Report::Json => crate::output::json(&PackageDoc {
            host: host.to_string(),
            package: out.display().to_string(),
            size_bytes: size,
            mode: "0600",
            holds_private_keys: true,
            binaries_from: parent_display(&bins.updater),
            install,
        }),
    }
}

fn parent_display(p: &Path) -> String {
    p.parent()
        .map(|d| d.display().to_string())
        .unwrap_or_default()
}
