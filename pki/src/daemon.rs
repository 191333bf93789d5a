//! What both worker daemons do the same way at start: logging to stderr,
//! and the SIGTERM/SIGINT handlers that turn into a graceful drain.

use std::future::Future;

/// Log to stderr, filtered by `RUST_LOG` (default `info`); colours only on
/// a terminal.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

/// Unblock SIGTERM and SIGINT in the calling thread. A signal mask
/// survives fork and exec, so a parent that blocked them (a `sigwait`
/// loop such as `swarm demo`'s, some supervisors) would leave a daemon —
/// and every agent it spawns — deaf to the graceful stop, costing each
/// restart the whole SIGKILL grace. Call it first thing in `main`, before
/// any thread exists, so every thread inherits the clean mask.
pub fn unblock_shutdown_signals() {
    use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    if let Err(e) = pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&set), None) {
        eprintln!("cannot unblock SIGTERM/SIGINT: {e}");
    }
}

/// Registers the SIGTERM and SIGINT handlers now (so call it before
/// announcing the address: a signal that follows is always a graceful
/// stop) and returns a future that resolves on either. Must be called
/// inside a tokio runtime.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: draining"),
            _ = int.recv() => tracing::info!("SIGINT: draining"),
        }
    })
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn handlers_are_registered_before_the_future_is_polled() {
        let stop = super::shutdown_signal().unwrap();
        // Delivered before anyone polls: without a handler in place this
        // would kill the test process.
        raise_term();
        tokio::time::timeout(std::time::Duration::from_secs(10), stop)
            .await
            .expect("the SIGTERM sent before polling is seen");
    }

    /// SIGTERM to this process, with the same nix signal API the module uses.
    fn raise_term() {
        use nix::sys::signal::{Signal, kill};
        kill(nix::unistd::Pid::this(), Signal::SIGTERM).unwrap();
    }
}
