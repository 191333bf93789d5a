//! The command line, as clap parses it. Values stay raw here (host names
//! are strings) so that `lib.rs` can turn them into typed values with
//! one-line errors that say what to fix.

use std::path::PathBuf;
use std::time::Duration;

use pki::rollout::{HostCount, parse_host_count, parse_soak};

use clap::{Args, Parser, Subcommand, ValueEnum};

mod parse;

pub use parse::usage_error;

/// swarm: push a working tree to a fleet of workers over mutual TLS.
#[derive(Debug, Parser)]
#[command(name = "swarm", version, about, max_term_width = 100)]
pub struct Cli {
    /// The master's state directory (CA, master identity, inventory).
    #[arg(long, env = "SWARM_HOME", global = true, value_name = "DIR")]
    pub home: Option<PathBuf>,

    /// When to colour tables: on a terminal unless NO_COLOR is set (auto),
    /// always, or never.
    #[arg(long, value_enum, global = true, value_name = "WHEN", default_value_t = ColorWhen::Auto)]
    pub color: ColorWhen,

    #[command(subcommand)]
    pub command: Command,
}

/// `--color`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ColorWhen {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage the certificate authority.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Manage the release-signing key.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Print the `signature` field for a tree, for a push made by hand
    /// (`curl -F signature="$(swarm sign --root DIR)" …`).
    Sign(SignArgs),
    /// Issue a worker's agent (and updater) certificate bundles and record it.
    Enroll(EnrollCommand),
    /// List enrolled hosts (or, with --denied, the certificate deny list).
    List {
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
        /// List the denied certificates instead of the hosts.
        #[arg(long)]
        denied: bool,
    },
    /// Manage named operators: master-role certificates that carry a name.
    Operator {
        #[command(subcommand)]
        command: OperatorCommand,
    },
    /// Add or remove tags of an enrolled host (`--tag T` targets hosts by tag).
    Tag(TagArgs),
    /// Stop targeting a host (its row is kept for the record).
    Decommission {
        #[arg(long, value_name = "HOST")]
        host: String,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Pack the working tree once and push it to every target.
    Update(UpdateArgs),
    /// Ask targets to swap back to their previous release.
    Rollback(RollbackArgs),
    /// Issue new agent and updater certificates and deliver them over mTLS.
    Renew(RenewArgs),
    /// Show updater, agent, releases and certificate expiry per host.
    Status(StatusArgs),
    /// List the releases a host keeps (newest first), for `rollback --to`.
    Releases(ReleasesArgs),
    /// Show the audit trail of pushes and rollbacks (or, with --worker, a
    /// host's own journal).
    History(HistoryArgs),
    /// Restart targets' agents through their updaters (probed; ends a crash loop).
    Restart(RestartArgs),
    /// Print a host's agent output, as its updater keeps it.
    Logs(LogsArgs),
    /// Re-hash each target's live and previous release against its index;
    /// exit 1 when anything was changed on the worker.
    Verify(VerifyArgs),
    /// Run a throwaway three-worker fleet on loopback and drive it.
    Demo(DemoArgs),
    /// Write the install package of an enrolled host from its bundles.
    Package(PackageArgs),
    /// Print a shell completion script (bash, zsh, fish, …).
    Completions(CompletionsArgs),
    /// Print the man page, or write every page into a directory.
    Man(ManArgs),
}

#[derive(Debug, Subcommand)]
pub enum OperatorCommand {
    /// Issue a master-role bundle for a colleague, named in its certificate.
    Add {
        /// Operator name (host-name rules: [A-Za-z0-9._-], starting with a letter or digit).
        name: String,
        /// Where to write the bundle (ca.crt, master.crt, master.key); must not exist.
        #[arg(long, value_name = "DIR")]
        out_dir: PathBuf,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// List named operators.
    List {
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Mark an operator removed and deny its certificate on every updater.
    Remove {
        name: String,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create the CA and the master's client identity.
    Init {
        /// Replace an existing CA (every enrolled host must then be re-enrolled).
        #[arg(long)]
        force: bool,
        /// Write the release-signing key to this new file instead of
        /// ca/release.key (e.g. on removable media); the home records where.
        #[arg(long, value_name = "PATH")]
        key_file: Option<PathBuf>,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create the release-signing key (ed25519) for a home that has a CA.
    Init {
        /// Write the key to this new file instead of ca/release.key (e.g.
        /// on removable media); the home records where, never a copy.
        #[arg(long, value_name = "PATH")]
        key_file: Option<PathBuf>,
        /// Replace the home's release key (rotation: `swarm renew` then
        /// gives updaters the new release.pub).
        #[arg(long)]
        force: bool,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
}

/// How a signing command finds its key and what it allows.
#[derive(Clone, Debug, Default, Args)]
pub struct SigningArgs {
    /// The release-signing key, if it is not where the home recorded it
    /// (ca/release.key, or the --key-file of `key init`).
    #[arg(long, value_name = "PATH")]
    pub key_file: Option<PathBuf>,
    /// Sign a downgrade: updaters take this release even though they
    /// accepted a newer signature before.
    #[arg(long)]
    pub allow_downgrade: bool,
}

#[derive(Debug, Args)]
pub struct SignArgs {
    /// The working tree to sign (packed as `swarm update` would).
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub root: PathBuf,
    /// Leave out paths matching this gitignore-style glob (repeatable).
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Print one JSON document ({release_id, seq, signature}).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub signing: SigningArgs,
}

#[derive(Debug, Args)]
pub struct EnrollArgs {
    /// Host name: a DNS name starting with a letter or digit (dot-separated labels of 1-63 of `[A-Za-z0-9_-]`, 253 in all).
    #[arg(long, value_name = "HOST")]
    pub host: String,
    /// The address the master reaches the worker at (IP or DNS name).
    #[arg(long, value_name = "ADDR", required_unless_present = "updater_only")]
    pub address: Option<String>,
    /// Extra subject alternative names, comma separated.
    #[arg(
        long,
        value_name = "SAN,…",
        value_delimiter = ',',
        conflicts_with = "updater_only"
    )]
    pub sans: Vec<String>,
    /// The agent's port.
    #[arg(long, value_name = "PORT", default_value_t = 8765, value_parser = clap::value_parser!(u16).range(1..))]
    pub agent_port: u16,
    /// The updater's port.
    #[arg(long, value_name = "PORT", default_value_t = 8766, value_parser = clap::value_parser!(u16).range(1..))]
    pub updater_port: u16,
    /// Also issue the updater bundle into DIR-updater.
    #[arg(long, conflicts_with = "updater_only")]
    pub updater: bool,
    /// Tag the host (repeat, or comma separate): `--tag web --tag eu`. Tags
    /// are names like host names; `--tag T` on update, rollback, status and
    /// history targets the hosts that carry every tag given.
    #[arg(
        long = "tag",
        value_name = "TAG",
        value_delimiter = ',',
        conflicts_with = "updater_only"
    )]
    pub tags: Vec<String>,
    /// Only issue the updater bundle (DIR-updater) for a host enrolled without one.
    #[arg(long)]
    pub updater_only: bool,
    /// Where to write the agent bundle; the updater bundle goes to DIR-updater.
    #[arg(long, value_name = "DIR")]
    pub out_dir: PathBuf,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
}

/// `swarm enroll`: the enrollment itself, and the optional worker package.
#[derive(Debug, Args)]
pub struct EnrollCommand {
    #[command(flatten)]
    pub enroll: EnrollArgs,
    #[command(flatten)]
    pub package: EnrollPackageArgs,
}

#[derive(Debug, Args)]
pub struct EnrollPackageArgs {
    /// Also write the worker package FILE (.tar.gz, 0600, holds the private
    /// keys): both bundles, the daemon binaries, the systemd unit and
    /// install.sh. Implies --updater.
    #[arg(long, value_name = "FILE", conflicts_with = "updater_only")]
    pub package: Option<PathBuf>,
    /// Where the worker-updater and worker-agent binaries for the package
    /// are (default: beside this swarm executable).
    #[arg(long, value_name = "DIR", requires = "package")]
    pub bin_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct TagArgs {
    /// The enrolled host.
    #[arg(long, value_name = "HOST")]
    pub host: String,
    /// Tags to add (repeat, or comma separate).
    #[arg(long, value_name = "TAG", value_delimiter = ',')]
    pub add: Vec<String>,
    /// Tags to remove (repeat, or comma separate).
    #[arg(long, value_name = "TAG", value_delimiter = ',')]
    pub remove: Vec<String>,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PackageArgs {
    /// The enrolled host.
    #[arg(long, value_name = "HOST")]
    pub host: String,
    /// The --out-dir it was enrolled with (its agent bundle; the updater
    /// bundle is DIR-updater). The master keeps no worker keys: lost
    /// bundles mean decommission and enroll again.
    #[arg(long, value_name = "DIR")]
    pub bundle_dir: PathBuf,
    /// The package to write (.tar.gz, 0600, holds the private keys).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Where the worker-updater and worker-agent binaries are (default:
    /// beside this swarm executable).
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write swarm.1 and one page per subcommand (swarm-update.1, …) into
    /// DIR instead of printing swarm.1.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

/// Which hosts an operation targets: named ones, tagged ones, or every
/// active one.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct Targets {
    /// Target these hosts (repeat, or comma separate).
    #[arg(long = "host", value_name = "HOST", value_delimiter = ',')]
    pub hosts: Vec<String>,
    /// Target the active hosts that carry every one of these tags (repeat,
    /// or comma separate); see `swarm tag`.
    #[arg(long = "tag", value_name = "TAG", value_delimiter = ',')]
    pub tags: Vec<String>,
    /// Target every active host.
    #[arg(long)]
    pub all: bool,
}

/// Like [`Targets`], but optional: no flag means every active host.
#[derive(Debug, Args)]
#[group(required = false, multiple = false)]
pub struct OptionalTargets {
    /// Only these hosts (repeat, or comma separate).
    #[arg(long = "host", value_name = "HOST", value_delimiter = ',')]
    pub hosts: Vec<String>,
    /// Only the active hosts that carry every one of these tags (repeat,
    /// or comma separate).
    #[arg(long = "tag", value_name = "TAG", value_delimiter = ',')]
    pub tags: Vec<String>,
    /// Every active host (the default).
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    #[command(flatten)]
    pub targets: Targets,
    /// The working tree to pack.
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub root: PathBuf,
    /// Leave out paths matching this gitignore-style glob (repeatable).
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// How many hosts to push to at once.
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    pub parallel: u16,
    /// Pack and show what would be pushed, without connecting to anyone.
    #[arg(long)]
    pub dry_run: bool,
    /// Send the whole release to every host, never a delta against the
    /// release it runs (issue 12).
    #[arg(long)]
    pub full: bool,
    /// Also update each host's updater, once its agent updated: the same
    /// tree goes to /update-self and the updater switches to the binary it
    /// ships (`[updater] binary` in swarm.toml, default bin/worker-updater).
    #[arg(long)]
    pub include_self: bool,
    /// How long to wait for a self-updated updater to report its new
    /// release on /health, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub self_timeout: u64,
    /// Print one JSON document instead of bars and a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub rollout: RolloutArgs,
    #[command(flatten)]
    pub signing: SigningArgs,
}

/// The rollout plan of `swarm update` (also settable in the `[rollout]`
/// table of the tree's `swarm.toml`; a flag wins). Without any, every
/// target is one wave, as before.
#[derive(Clone, Debug, Default, Args)]
pub struct RolloutArgs {
    /// Update N hosts (or N% of the targets) first, as a wave of their own:
    /// the targets tagged `canary` when there are any, else the first N by
    /// host name.
    #[arg(long, value_name = "N|N%", value_parser = parse_wave_size)]
    pub canary: Option<HostCount>,
    /// Then update the remaining targets in waves of N hosts (or N% of the
    /// targets); default: one wave of them all. --parallel still bounds how
    /// many hosts of a wave are pushed at once.
    #[arg(long, value_name = "N|N%", value_parser = parse_wave_size)]
    pub batch: Option<HostCount>,
    /// The failure budget: halt the rollout (no further host is touched)
    /// once more than N hosts (or N% of the targets) have failed their push
    /// or their soak. Default 0: the first failure halts.
    #[arg(long, value_name = "N|N%", value_parser = parse_host_count)]
    pub max_fail: Option<HostCount>,
    /// After each wave, watch every host it updated through its updater's
    /// /health for DURATION (e.g. 30s, 5m, 1h; 1s to 24h, 0 for none): the
    /// agent must stay healthy and must not restart, or the host fails.
    #[arg(long, value_name = "DURATION", value_parser = parse_soak)]
    pub soak: Option<Duration>,
    /// When the rollout halts, put every host it updated back on the
    /// release that host ran before (the probed rollback path), reported
    /// `reverted`.
    #[arg(long)]
    pub revert_on_halt: bool,
    /// After the canary wave and its soak, show the outcome and ask on the
    /// terminal whether to go on (`y`); needs --canary, a terminal, and no --yes.
    #[arg(long)]
    pub pause_after_canary: bool,
    /// Never ask anything (refuses --pause-after-canary).
    #[arg(long)]
    pub yes: bool,
}

/// A canary or batch size: a host count of at least 1, or a share.
fn parse_wave_size(s: &str) -> Result<HostCount, String> {
    match parse_host_count(s)? {
        HostCount::Hosts(0) => Err("a wave of 0 hosts never ends; give 1 or more".to_owned()),
        c => Ok(c),
    }
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    #[command(flatten)]
    pub targets: Targets,
    /// Roll back to this kept release (an unambiguous prefix of its
    /// release_id, see `swarm releases`) instead of the previous one.
    #[arg(long, value_name = "ID")]
    pub to: Option<String>,
    /// How many hosts to roll back at once.
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    pub parallel: u16,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RenewArgs {
    #[command(flatten)]
    pub targets: Targets,
    /// Validity of the new certificates, in days.
    #[arg(long, value_name = "N", default_value_t = 825, value_parser = clap::value_parser!(u16).range(1..))]
    pub days: u16,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ReleasesArgs {
    #[arg(long, value_name = "HOST")]
    pub host: String,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub targets: Targets,
    /// How many hosts to verify at once.
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    pub parallel: u16,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub targets: OptionalTargets,
    /// How many hosts to ask at once.
    #[arg(long, value_name = "N", default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    pub parallel: u16,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Only this host.
    #[arg(
        long,
        value_name = "HOST",
        required_if_eq("worker", "true"),
        conflicts_with = "tags"
    )]
    pub host: Option<String>,
    /// Only the hosts that now carry every one of these tags (repeat, or
    /// comma separate).
    #[arg(long = "tag", value_name = "TAG", value_delimiter = ',')]
    pub tags: Vec<String>,
    /// Show at most the last N entries (at most 1000 with --worker).
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub limit: usize,
    /// Ask the host's updater for its own journal (every operation it ran,
    /// curl pushes and automatic reverts included, with the caller's name)
    /// instead of showing the master's audit trail. Needs --host.
    #[arg(long)]
    pub worker: bool,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RestartArgs {
    #[command(flatten)]
    pub targets: Targets,
    /// How many hosts to restart at once.
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    pub parallel: u16,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The host whose agent output to show.
    #[arg(
        long,
        value_name = "HOST",
        required_unless_present = "tags",
        conflicts_with = "tags"
    )]
    pub host: Option<String>,
    /// Or every active host that carries all of these tags (repeat, or comma
    /// separate): each host's lines under a `==> HOST <==` header, or, with
    /// -f, each line prefixed `HOST | `.
    #[arg(long = "tag", value_name = "TAG", value_delimiter = ',')]
    pub tags: Vec<String>,
    /// How many of the last lines to show (1-10000).
    #[arg(short = 'n', long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub lines: u32,
    /// Keep printing new lines as the agent writes them, until interrupted.
    #[arg(short = 'f', long)]
    pub follow: bool,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Leave the fleet running and print the commands to drive it by hand.
    #[arg(long)]
    pub keep: bool,
    /// Print one JSON document: every step's command, exit code and the
    /// JSON that command printed.
    #[arg(long)]
    pub json: bool,
}
