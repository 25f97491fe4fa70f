//! Progress for long work: a bar on a terminal, a plain line every 10% otherwise, nothing with
//! `--json` (stdout then carries only the result).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};

use indicatif::{ProgressBar, ProgressStyle};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Bar,
    Lines,
    Quiet,
}

impl Mode {
    pub fn detect(json: bool) -> Self {
        if json {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            Mode::Bar
        } else {
            Mode::Lines
        }
    }
}

pub struct Progress {
    mode: Mode,
    label: String,
    bar: std::sync::Mutex<Option<ProgressBar>>,
    total: AtomicU64,
    last_tenth: AtomicU64,
}

impl Progress {
    pub fn new(mode: Mode, label: impl Into<String>) -> Self {
        Progress {
            mode,
            label: label.into(),
            bar: std::sync::Mutex::new(None),
            total: AtomicU64::new(0),
            last_tenth: AtomicU64::new(u64::MAX),
        }
    }

    pub fn start(&self, total: u64, done: u64) {
        self.total.store(total, Ordering::Relaxed);
        match self.mode {
            Mode::Bar => {
                let bar = ProgressBar::new(total);
                if let Ok(style) =
                    ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                {
                    bar.set_style(style.progress_chars("=> "));
                }
                bar.set_message(self.label.clone());
                bar.set_position(done);
                if let Ok(mut slot) = self.bar.lock() {
                    *slot = Some(bar);
                }
            }
            Mode::Lines => {
                if done > 0 {
                    eprintln!("{}: resuming at {done} of {total} bytes", self.label);
                } else {
                    eprintln!("{}: downloading {total} bytes", self.label);
                }
            }
            Mode::Quiet => {}
        }
    }

    pub fn set(&self, done: u64) {
        match self.mode {
            Mode::Bar => {
                if let Ok(slot) = self.bar.lock()
                    && let Some(bar) = slot.as_ref()
                {
                    bar.set_position(done);
                }
            }
            Mode::Lines => {
                let total = self.total.load(Ordering::Relaxed).max(1);
                let tenth = done.saturating_mul(10) / total;
                if self.last_tenth.swap(tenth, Ordering::Relaxed) != tenth {
                    eprintln!("{}: {}% ({done}/{total} bytes)", self.label, tenth * 10);
                }
            }
            Mode::Quiet => {}
        }
    }

    pub fn finish(&self) {
        if let Ok(mut slot) = self.bar.lock()
            && let Some(bar) = slot.take()
        {
            bar.finish_and_clear();
        }
    }

    /// A one-line message about a step, shown unless quiet.
    pub fn note(&self, message: &str) {
        if self.mode != Mode::Quiet {
            eprintln!("{}: {message}", self.label);
        }
    }
}
