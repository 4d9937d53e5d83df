//! The one error type of this crate: a bad argument (shape, dtype, index) caught on the host
//! before anything is launched. Kernels themselves cannot fail.

use std::fmt;

/// One-line description of what was wrong with the arguments of a kernel call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelError(pub String);

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for KernelError {}

pub type Result<T> = std::result::Result<T, KernelError>;

/// `bail!("w4a16: K = {} is not a multiple of the group", k)` returns a [`KernelError`].
macro_rules! bail {
    ($($arg:tt)*) => { return Err($crate::error::KernelError(format!($($arg)*))) };
}
pub(crate) use bail;

/// `ensure!(cond, "...")`: bail unless the condition holds.
macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => { if !$cond { $crate::error::bail!($($arg)*); } };
}
pub(crate) use ensure;
