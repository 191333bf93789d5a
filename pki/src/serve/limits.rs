//! Every time and connection bound of the accept loop in one struct, with
//! documented defaults, and the `SWARM_SERVE_*` flags/variables that set them.

use std::time::Duration;

/// The bounds [`serve`](super::serve) enforces on every peer. The defaults
/// fit a daemon under systemd's default `LimitNOFILE=1024`: at most
/// `max_handshakes + max_connections + master_connections` (64 + 256 + 64 =
/// 384) sockets are ever open at once, whatever peers do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServeLimits {
    /// Time from accept to a finished TLS handshake. Default 10 s.
    pub handshake_timeout: Duration,
    /// Time to receive a request's whole head once the connection waits
    /// for one; it also bounds an idle keep-alive connection between
    /// requests. Default 30 s.
    pub header_read_timeout: Duration,
    /// Longest silence between two pieces of a request body. Default 30 s.
    pub body_idle_timeout: Duration,
    /// Minimum average rate of a request body in bytes/s, enforced after
    /// `body_rate_grace`: a body of `n` bytes must have arrived whole by
    /// `body_rate_grace + n / body_min_rate` after its request started.
    /// Default 16 KiB/s (128 kbit/s; a 1 GiB upload may take 18 h).
    pub body_min_rate: u64,
    /// Time a body may take before `body_min_rate` applies. Default 30 s.
    pub body_rate_grace: Duration,
    /// Idle time before TCP keepalive probes start on an accepted socket
    /// (then every 10 s, 6 unanswered probes close it). Default 60 s.
    pub tcp_keepalive: Duration,
    /// TLS handshakes in progress at once; when full, the oldest pending
    /// handshake is dropped to make room, so a peer that connects and
    /// never speaks cannot keep anyone out. Default 64.
    pub max_handshakes: usize,
    /// Established connections of every peer other than CN `master`,
    /// together. Default 256.
    pub max_connections: usize,
    /// Established connections of any one non-master identity. Default 32.
    pub max_connections_per_peer: usize,
    /// Connections reserved for CN `master`, counted apart from the
    /// others so no other peer can use them up. Default 64.
    pub master_connections: usize,
    /// First pause after a failed `accept` (e.g. EMFILE); it doubles up to
    /// `accept_backoff_max` and resets on the next success. Default 10 ms.
    pub accept_backoff_min: Duration,
    /// Longest pause between `accept` attempts after errors. Default 1 s.
    pub accept_backoff_max: Duration,
    /// At most one log line per this period about failing `accept`s, and
    /// one about connections refused for a spent budget (each counts the
    /// ones it did not log). Default 10 s.
    pub accept_error_log_every: Duration,
    /// How long open connections may drain after shutdown. Default 5 s.
    pub shutdown_grace: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(30),
            body_idle_timeout: Duration::from_secs(30),
            body_min_rate: 16 * 1024,
            body_rate_grace: Duration::from_secs(30),
            tcp_keepalive: Duration::from_secs(60),
            max_handshakes: 64,
            max_connections: 256,
            max_connections_per_peer: 32,
            master_connections: 64,
            accept_backoff_min: Duration::from_millis(10),
            accept_backoff_max: Duration::from_secs(1),
            accept_error_log_every: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

impl ServeLimits {
    /// The defaults, overridden by any `SWARM_SERVE_*` environment variable
    /// (the same names [`ServeArgs`] reads). What [`serve`](super::serve)
    /// uses, so a daemon that passes nothing still honours them.
    pub fn from_env() -> Result<ServeLimits, String> {
        #[derive(clap::Parser)]
        #[command(no_binary_name = true)]
        struct EnvOnly {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let parsed = <EnvOnly as clap::Parser>::try_parse_from(std::iter::empty::<String>())
            .map_err(|e| e.to_string().trim().to_string())?;
        Ok(parsed.serve.limits())
    }
}

/// Command-line flags (and `SWARM_SERVE_*` variables) for [`ServeLimits`];
/// a daemon adds them with `#[command(flatten)] serve: pki::serve::ServeArgs`.
/// Durations take `ms`, `s`, `m` or `h` suffixes (a bare number is seconds).
#[derive(Clone, Debug, Default, clap::Args)]
#[command(next_help_heading = "Connection limits")]
pub struct ServeArgs {
    /// Time to finish the TLS handshake [default: 10s].
    #[arg(long, env = "SWARM_SERVE_HANDSHAKE_TIMEOUT", value_parser = parse_duration)]
    pub serve_handshake_timeout: Option<Duration>,
    /// Time to receive request headers; also the keep-alive idle limit [default: 30s].
    #[arg(long, env = "SWARM_SERVE_HEADER_READ_TIMEOUT", value_parser = parse_duration)]
    pub serve_header_read_timeout: Option<Duration>,
    /// Longest silence inside a request body [default: 30s].
    #[arg(long, env = "SWARM_SERVE_BODY_IDLE_TIMEOUT", value_parser = parse_duration)]
    pub serve_body_idle_timeout: Option<Duration>,
    /// Minimum average request-body rate in bytes/s after the grace [default: 16384].
    #[arg(long, env = "SWARM_SERVE_BODY_MIN_RATE", value_parser = clap::value_parser!(u64).range(1..))]
    pub serve_body_min_rate: Option<u64>,
    /// Time a body may take before the minimum rate applies [default: 30s].
    #[arg(long, env = "SWARM_SERVE_BODY_RATE_GRACE", value_parser = parse_duration)]
    pub serve_body_rate_grace: Option<Duration>,
    /// Idle time before TCP keepalive probes start [default: 60s].
    #[arg(long, env = "SWARM_SERVE_TCP_KEEPALIVE", value_parser = parse_duration)]
    pub serve_tcp_keepalive: Option<Duration>,
    /// TLS handshakes in progress at once; the oldest is dropped when full [default: 64].
    #[arg(long, env = "SWARM_SERVE_MAX_HANDSHAKES", value_parser = positive)]
    pub serve_max_handshakes: Option<usize>,
    /// Connections of all non-master peers together [default: 256].
    #[arg(long, env = "SWARM_SERVE_MAX_CONNECTIONS", value_parser = positive)]
    pub serve_max_connections: Option<usize>,
    /// Connections of any one non-master identity [default: 32].
    #[arg(long, env = "SWARM_SERVE_MAX_CONNECTIONS_PER_PEER", value_parser = positive)]
    pub serve_max_connections_per_peer: Option<usize>,
    /// Connections reserved for CN master [default: 64].
    #[arg(long, env = "SWARM_SERVE_MASTER_CONNECTIONS", value_parser = positive)]
    pub serve_master_connections: Option<usize>,
    /// Longest pause between accept attempts after errors [default: 1s].
    #[arg(long, env = "SWARM_SERVE_ACCEPT_BACKOFF_MAX", value_parser = parse_duration)]
    pub serve_accept_backoff_max: Option<Duration>,
    /// At most one log line about failing accepts per this period [default: 10s].
    #[arg(long, env = "SWARM_SERVE_ACCEPT_ERROR_LOG_EVERY", value_parser = parse_duration)]
    pub serve_accept_error_log_every: Option<Duration>,
}

impl ServeArgs {
    /// [`ServeLimits::default`] with every flag that was given applied.
    pub fn limits(&self) -> ServeLimits {
        let d = ServeLimits::default();
        ServeLimits {
            handshake_timeout: self.serve_handshake_timeout.unwrap_or(d.handshake_timeout),
            header_read_timeout: self
                .serve_header_read_timeout
                .unwrap_or(d.header_read_timeout),
            body_idle_timeout: self.serve_body_idle_timeout.unwrap_or(d.body_idle_timeout),
            body_min_rate: self.serve_body_min_rate.unwrap_or(d.body_min_rate),
            body_rate_grace: self.serve_body_rate_grace.unwrap_or(d.body_rate_grace),
            tcp_keepalive: self.serve_tcp_keepalive.unwrap_or(d.tcp_keepalive),
            max_handshakes: self.serve_max_handshakes.unwrap_or(d.max_handshakes),
            max_connections: self.serve_max_connections.unwrap_or(d.max_connections),
            max_connections_per_peer: self
                .serve_max_connections_per_peer
                .unwrap_or(d.max_connections_per_peer),
            master_connections: self
                .serve_master_connections
                .unwrap_or(d.master_connections),
            accept_backoff_max: self
                .serve_accept_backoff_max
                .unwrap_or(d.accept_backoff_max)
                .max(d.accept_backoff_min),
            accept_error_log_every: self
                .serve_accept_error_log_every
                .unwrap_or(d.accept_error_log_every),
            ..d
        }
    }
}

/// A duration such as `500ms`, `30s`, `2m`, `1h`, or a bare number of
/// seconds; zero is refused (every bound must be able to trip).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 500ms, 30s, 2m, 1h)"))?;
    let d = match unit.trim() {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        other => return Err(format!("{s:?}: unknown unit {other:?} (use ms, s, m or h)")),
    };
    if d.is_zero() {
        return Err(format!("{s:?}: must be more than zero"));
    }
    Ok(d)
}

fn positive(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{s:?} is not a count")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_refuse_zero_and_junk() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn flags_override_only_what_they_name() {
        let args = ServeArgs {
            serve_body_idle_timeout: Some(Duration::from_secs(2)),
            serve_max_connections_per_peer: Some(4),
            ..ServeArgs::default()
        };
        let got = args.limits();
        assert_eq!(got.body_idle_timeout, Duration::from_secs(2));
        assert_eq!(got.max_connections_per_peer, 4);
        let want = ServeLimits {
            body_idle_timeout: Duration::from_secs(2),
            max_connections_per_peer: 4,
            ..ServeLimits::default()
        };
        assert_eq!(got, want);
        assert_eq!(ServeArgs::default().limits(), ServeLimits::default());
    }
}
