//! What a run tells the person watching it, on stderr: a line per phase,
//! and on a terminal a progress bar redrawn in place (nothing of it when
//! stderr is a file or a pipe, so logs stay clean).

use std::io::{IsTerminal, Write};

/// Width of the bar in characters.
const BAR_WIDTH: usize = 30;

pub struct Progress {
    terminal: bool,
}

impl Progress {
    pub fn new() -> Self {
        Progress {
            terminal: std::io::stderr().is_terminal(),
        }
    }

    /// A phase begins: one line, always.
    pub fn phase(&self, message: &str) {
        self.clear();
        eprintln!("engram bench: {message}");
    }

    /// Redraws the bar (terminal only): `done` of `total`, then `detail`.
    pub fn bar(&self, label: &str, done: u64, total: u64, detail: &str) {
        if !self.terminal {
            return;
        }
        let fraction = if total == 0 {
            1.0
        } else {
            (done as f64 / total as f64).min(1.0)
        };
        let filled = (fraction * BAR_WIDTH as f64).round() as usize;
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[2K{label:<9} [{}{}] {:>3.0}% {done}/{total} {detail}",
            "#".repeat(filled),
            "-".repeat(BAR_WIDTH - filled),
            fraction * 100.0
        );
        let _ = err.flush();
    }

    /// Removes the bar (terminal only).
    pub fn clear(&self) {
        if self.terminal {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
        }
    }

    /// A problem that does not stop the run.
    pub fn warn(&self, message: &str) {
        self.clear();
        eprintln!("engram bench: warning: {message}");
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}
