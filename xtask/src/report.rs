//! The one reporter: every progress line, warning and progress bar of the
//! library goes through a [`Reporter`] passed in by the command. Library code
//! never prints by itself; commands render their results on stdout.

use std::fmt::Display;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The style of a byte-count bar (uploads, layer encoding).
pub const BYTES_BAR: &str = "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}";

/// Progress on stderr, silent when `quiet` (`--json` runs); warnings are
/// always shown.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reporter {
    pub quiet: bool,
}

impl Reporter {
    pub fn new(quiet: bool) -> Reporter {
        Reporter { quiet }
    }

    /// A progress line.
    pub fn say(&self, msg: impl Display) {
        if !self.quiet {
            eprintln!("{msg}");
        }
    }

    /// Something the user should know even in a `--json` run.
    pub fn warn(&self, msg: impl Display) {
        eprintln!("warning: {msg}");
    }

    /// An error the run goes on after (the outcome records it too).
    pub fn error(&self, msg: impl Display) {
        eprintln!("error: {msg}");
    }

    /// A byte-count progress bar for long work; hidden when quiet or when
    /// the work is small.
    pub fn bar(&self, total: u64, min_total: u64, template: &str) -> ProgressBar {
        if self.quiet || total < min_total {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    }
}
