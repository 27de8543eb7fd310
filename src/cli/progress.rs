//! Progress lines on stderr: at most a few per second, and a final one.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

pub struct Progress {
    label: &'static str,
    last: Option<Instant>,
    tty: bool,
    pub total: Option<u64>,
}

impl Progress {
    pub fn new(label: &'static str) -> Self {
        Progress {
            label,
            last: None,
            tty: std::io::stderr().is_terminal(),
            total: None,
        }
    }

    fn line(&self, done: u64, unit: &str) -> String {
        match self.total {
            Some(total) if total > 0 => {
                let pct = (done.min(total) * 100) / total;
                let width = 30;
                let filled = (pct as usize * width) / 100;
                format!(
                    "{:<6} [{}{}] {pct:>3}% {done}/{total} {unit}",
                    self.label,
                    "#".repeat(filled),
                    " ".repeat(width - filled)
                )
            }
            _ => format!("{:<6} {done} {unit}", self.label),
        }
    }

    /// Shows `done` if enough time passed since the last line.
    pub fn update(&mut self, done: u64, unit: &str) {
        let now = Instant::now();
        let interval = if self.tty {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(2)
        };
        if self.last.is_some_and(|l| now - l < interval) {
            return;
        }
        self.last = Some(now);
        let line = self.line(done, unit);
        let mut err = std::io::stderr();
        if self.tty {
            let _ = write!(err, "\r{line}");
        } else {
            let _ = writeln!(err, "{line}");
        }
    }

    /// The final line.
    pub fn finish(&mut self, done: u64, unit: &str) {
        let line = self.line(done, unit);
        let mut err = std::io::stderr();
        if self.tty {
            let _ = writeln!(err, "\r{line}");
        } else {
            let _ = writeln!(err, "{line}");
        }
    }
}
