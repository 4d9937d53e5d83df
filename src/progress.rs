//! Progress and report output. Library code reports progress only through here, so `--json` and
//! `--quiet` runs (and tests) stay silent on the terminal.
//!
//! On a terminal, progress is an indicatif bar with ETA. When stderr is not a terminal (CI logs,
//! redirected output) each step prints one line instead, so long jobs still show progress.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

static QUIET: AtomicBool = AtomicBool::new(false);

/// Silence progress bars and status lines (set by `--json` / `--quiet`).
pub fn set_quiet(q: bool) {
    QUIET.store(q, Ordering::Relaxed);
}

pub fn is_quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// A progress indicator for `len` steps.
pub struct Progress {
    pb: ProgressBar,
    /// Print a line per step (stderr is not a terminal).
    lines: bool,
    label: String,
    len: u64,
    start: Instant,
    msg: Mutex<String>,
}

/// A progress bar on stderr with ETA; a line per step when stderr is not a terminal; nothing when quiet.
pub fn bar(len: u64, label: &str) -> Progress {
    let pb = ProgressBar::new(len);
    let tty = std::io::stderr().is_terminal();
    if is_quiet() || !tty {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    } else {
        pb.set_draw_target(ProgressDrawTarget::stderr());
    }
    pb.set_style(
        ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} {elapsed_precise} (eta {eta}) {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_prefix(label.to_string());
    Progress { pb, lines: !is_quiet() && !tty, label: label.into(), len, start: Instant::now(), msg: Mutex::new(String::new()) }
}

impl Progress {
    pub fn inc(&self, n: u64) {
        self.pb.inc(n);
        if self.lines {
            let pos = self.pb.position();
            let el = self.start.elapsed().as_secs_f64();
            let eta = if pos > 0 { el / pos as f64 * (self.len.saturating_sub(pos)) as f64 } else { 0.0 };
            let msg = self.msg.lock().map(|m| m.clone()).unwrap_or_default();
            eprintln!("{} {}/{} {:.0}s elapsed, eta {:.0}s {}", self.label, pos, self.len, el, eta, msg);
        }
    }
    pub fn set_message(&self, m: impl Into<String>) {
        let m = m.into();
        if let Ok(mut g) = self.msg.lock() {
            g.clone_from(&m);
        }
        self.pb.set_message(m);
    }
    pub fn finish_and_clear(&self) {
        self.pb.finish_and_clear();
    }
}

/// A status line on stderr (not shown when quiet).
pub fn status(msg: &str) {
    if !is_quiet() {
        eprintln!("{msg}");
    }
}

/// A bar for one transfer of `len` bytes not yet known (bytes, speed, ETA). On a terminal it
/// appears once [`ByteBar::start`] gives the size; when stderr is not a terminal, [`ByteBar::done`]
/// prints one line instead; nothing when quiet. Clones draw the same bar.
#[derive(Clone)]
pub struct ByteBar {
    pb: ProgressBar,
    draw: bool,
    lines: bool,
}

pub fn byte_bar(label: &str) -> ByteBar {
    let tty = std::io::stderr().is_terminal();
    let pb = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::hidden());
    pb.set_style(
        ProgressStyle::with_template("{msg} [{wide_bar}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} (eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    // Long names keep their end (the file name), within 40 characters.
    let n = label.chars().count();
    pb.set_message(if n > 40 { format!("..{}", label.chars().skip(n - 38).collect::<String>()) } else { label.to_string() });
    ByteBar { pb, draw: !is_quiet() && tty, lines: !is_quiet() && !tty }
}

impl ByteBar {
    /// The size is known: show the bar, from 0.
    pub fn start(&self, len: u64) {
        self.pb.set_length(len);
        self.pb.set_position(0);
        if self.draw && self.pb.is_hidden() {
            self.pb.set_draw_target(ProgressDrawTarget::stderr());
        }
    }
    /// Bytes already there when a resumed transfer starts: not part of its speed.
    pub fn resume_at(&self, have: u64) {
        self.pb.set_position(have);
        self.pb.reset_eta();
    }
    pub fn inc(&self, n: u64) {
        self.pb.inc(n);
    }
    /// Finished: the bar stays on a terminal; elsewhere `line` is printed.
    pub fn done(&self, line: &str) {
        self.pb.finish();
        if self.lines {
            eprintln!("{line}");
        }
    }
    pub fn clear(&self) {
        self.pb.finish_and_clear();
    }
}
