//! One error type for the whole crate.
//!
//! Every error carries a [`ErrorKind`] that decides the process exit code, and a one-line
//! message that names the offending file, tensor or flag and what is wrong with it.
//! Library code never panics on bad input: it returns one of these.

use std::fmt;

/// What class of failure this is; each maps to a distinct exit code (see [`Error::exit_code`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A flag or flag combination the command cannot accept (exit 2, like clap's own errors).
    Usage,
    /// A file or dataset the user gave us is malformed, inconsistent or unsupported (exit 3).
    Input,
    /// A check asked for by the user failed, e.g. a golden perplexity moved (exit 4).
    Check,
    /// The requested compute device is not available on this machine (exit 5).
    Device,
    /// The operating system refused a read or write (exit 6).
    Io,
    /// A bug or an unexpected state inside awqc (exit 1).
    Internal,
    /// The job was interrupted (Ctrl-C); it can be resumed (exit 130).
    Interrupted,
}

#[derive(Debug, Clone)]
pub struct Error {
    pub kind: ErrorKind,
    pub msg: String,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, msg: impl Into<String>) -> Self {
        Error { kind, msg: msg.into() }
    }
    /// Bad input data: `"{what}: {msg}"`, where `what` names the file, tensor or field.
    pub fn input(what: impl fmt::Display, msg: impl fmt::Display) -> Self {
        Error::new(ErrorKind::Input, format!("{what}: {msg}"))
    }
    pub fn usage(msg: impl Into<String>) -> Self {
        Error::new(ErrorKind::Usage, msg)
    }
    pub fn check(msg: impl Into<String>) -> Self {
        Error::new(ErrorKind::Check, msg)
    }
    pub fn device(msg: impl Into<String>) -> Self {
        Error::new(ErrorKind::Device, msg)
    }
    pub fn internal(msg: impl Into<String>) -> Self {
        Error::new(ErrorKind::Internal, msg)
    }
    pub fn interrupted(msg: impl Into<String>) -> Self {
        Error::new(ErrorKind::Interrupted, msg)
    }
    /// An OS-level failure on `path`; a full disk is said plainly, with what to do.
    pub fn io(path: impl fmt::Display, err: std::io::Error) -> Self {
        if is_disk_full(&err) {
            return Error::new(ErrorKind::Io, format!("{path}: no space left on the device (free some space and run again)"));
        }
        Error::new(ErrorKind::Io, format!("{path}: {err}"))
    }
    /// Prefix the message with more context, keeping the kind: `"{ctx}: {msg}"`.
    pub fn context(mut self, ctx: impl fmt::Display) -> Self {
        self.msg = format!("{ctx}: {}", self.msg);
        self
    }
    pub fn exit_code(&self) -> i32 {
        match self.kind {
            ErrorKind::Internal => 1,
            ErrorKind::Usage => 2,
            ErrorKind::Input => 3,
            ErrorKind::Check => 4,
            ErrorKind::Device => 5,
            ErrorKind::Io => 6,
            ErrorKind::Interrupted => 130,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Errors are printed on one line: fold any newline a library message carried.
        let one_line = self.msg.replace('\n', " ");
        f.write_str(&one_line)
    }
}

impl std::error::Error for Error {}

/// Return early with an [`ErrorKind::Input`] error: `bail_input!(path, "bad magic {:?}", m)`.
#[macro_export]
macro_rules! bail_input {
    ($what:expr, $($arg:tt)*) => {
        return Err($crate::error::Error::input($what, format!($($arg)*)))
    };
}

/// Whether an OS error means "no room to write": ENOSPC (28), or EDQUOT (122 on Linux).
pub fn is_disk_full(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull || matches!(e.raw_os_error(), Some(28) | Some(122))
}

/// Attach a path to `std::io::Result`s.
pub trait IoContext<T> {
    fn at(self, path: impl fmt::Display) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl fmt::Display) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}

/// Run a third-party decoder on untrusted bytes, turning a panic inside it into a bad-input error
/// for `what`. arrow-ipc (and, on some files, parquet) slice buffers with offsets read from the
/// file and panic when they are out of range; awqc cannot fix those crates, so it contains the
/// failure instead. The panic message is not printed (the panic hook is silenced on this thread
/// while `f` runs); the error carries it, on one line.
pub fn catch_decoder_panic<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    use std::cell::Cell;
    thread_local!(static SILENT: Cell<bool> = const { Cell::new(false) });
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !SILENT.with(Cell::get) {
                previous(info)
            }
        }));
    });
    let outer = SILENT.with(|s| s.replace(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    SILENT.with(|s| s.set(outer));
    match r {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown failure".into());
            Err(Error::input(what, format!("malformed data: the decoder failed ({msg})")))
        }
    }
}
