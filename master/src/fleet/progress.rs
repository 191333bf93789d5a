//! Progress on stderr: the packing spinner and one upload bar per host,
//! drawn only on a terminal and never with `--json`.

use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Whether to draw progress: on a terminal, and never with `--json`.
pub(super) fn show_progress(json: bool) -> bool {
    !json && std::io::stdout().is_terminal() && std::io::stderr().is_terminal()
}

/// A spinner on stderr while the tree at `root` is packed (hidden when
/// `show` is false): packing a big tree takes seconds before any host is
/// contacted.
pub(super) fn packing_spinner(show: bool, root: &Path) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let spinner = ProgressBar::new_spinner()
        .with_style(
            ProgressStyle::with_template("{spinner} packing {prefix}: {msg} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        )
        .with_prefix(root.display().to_string())
        .with_message("0 files");
    spinner.enable_steady_tick(Duration::from_millis(100));
    spinner
}

/// The per-host upload bars of one push.
pub(super) struct Bars {
    multi: MultiProgress,
    style: ProgressStyle,
    width: usize,
    total: u64,
}

impl Bars {
    /// Bars for hosts whose names are at most `width` long, each counting
    /// up to `total` bytes; hidden unless `show`.
    pub(super) fn new(show: bool, width: usize, total: u64) -> Bars {
        let multi = MultiProgress::with_draw_target(if show {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        let style = ProgressStyle::with_template(
            "{prefix:<16} [{bar:30}] {bytes:>10}/{total_bytes:<10} {msg}",
        )
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        Bars {
            multi,
            style,
            width,
            total,
        }
    }

    /// A new bar for `host`, waiting.
    pub(super) fn add(&self, host: &str) -> ProgressBar {
        let width = self.width;
        self.multi.add(
            ProgressBar::new(self.total)
                .with_style(self.style.clone())
                .with_prefix(format!("{host:<width$}"))
                .with_message("waiting"),
        )
    }

    pub(super) fn clear(&self) {
        let _ = self.multi.clear();
    }
}
