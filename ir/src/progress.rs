//! Progress reporting for long loads and saves, without tying the library to a terminal.

/// Receives progress of a long operation measured in bytes. The CLI shows it as a bar.
pub trait Progress {
    fn begin(&self, what: &str, total: u64);
    fn advance(&self, done: u64);
    fn finish(&self);
}

/// Reports nothing.
pub struct NoProgress;

impl Progress for NoProgress {
    fn begin(&self, _: &str, _: u64) {}
    fn advance(&self, _: u64) {}
    fn finish(&self) {}
}
