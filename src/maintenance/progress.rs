//! Progress reporting for long jobs, so the CLI can draw a bar without the engine knowing.

/// Receives progress of a long job. All methods default to doing nothing.
pub trait Progress: Sync {
    /// A phase begins; `total` is in the phase's units — bytes, unless the phase name says
    /// otherwise (e.g. "records") — and 0 when unknown.
    fn start(&self, _phase: &str, _total: u64) {}
    /// `n` more bytes are done.
    fn advance(&self, _n: u64) {}
    /// The phase ended.
    fn finish(&self) {}
}

/// No progress reporting.
impl Progress for () {}
