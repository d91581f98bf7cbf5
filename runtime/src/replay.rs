//! When a session replays a captured run instead of running its plan instruction by
//! instruction (CUDA graphs, `SessionOptions::cuda_graphs`).
//!
//! A captured run is valid for as long as what it baked in holds: the fed inputs' shapes and
//! types (the kernels' launch shapes, the buffers' sizes), the carried state's buffers (their
//! addresses) and the plan itself. [`ReplayPolicy`] keeps that bookkeeping apart from the
//! device code, so it is tested without a GPU: the first runs with a new key run eagerly
//! ([`WARM_UP_RUNS`]: they compile the chain kernels, upload the constants and index maps a
//! capture must find ready), the next one is captured, the ones after replay the capture; a new key or new
//! state starts over; a capture that fails falls back to eager runs, for good after
//! [`MAX_FAILURES`] tries, with the reason kept for the run report.

use adaptc_ir::DataType;

/// Captures tried per session before it stays eager.
pub const MAX_FAILURES: u32 = 2;

/// Eager runs of a key before its capture. Two: the first uploads constants as its
/// instructions first need them, so an instruction early in it may find a constant still on
/// the host that a later one uploads; the second places every instruction as the capture will.
pub const WARM_UP_RUNS: u32 = 2;

/// What a captured run depends on besides the plan: each fed input's plan index, shape and
/// element type, in plan order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayKey(pub Vec<(usize, Vec<usize>, DataType)>);

/// What the next run does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Instruction by instruction (the first run of a key, or replays are off).
    Eager,
    /// Instruction by instruction under capture, then the capture is launched.
    Capture,
    /// The capture, launched with this run's inputs.
    Replay,
}

/// The state of one session's replays; `G` is the captured run (a CUDA graph and the buffers
/// it reads and writes).
pub struct ReplayPolicy<G> {
    key: Option<ReplayKey>,
    /// Eager runs done with `key`.
    warm: u32,
    failures: u32,
    graph: Option<G>,
    /// Why replays are off for good (a plan that cannot be captured, too many failures).
    off: Option<String>,
}

impl<G> Default for ReplayPolicy<G> {
    /// A policy that starts with no capture. (Nothing the runtime runs draws random numbers,
    /// which a replay would repeat: training-mode Dropout is refused at run time.)
    fn default() -> ReplayPolicy<G> {
        ReplayPolicy { key: None, warm: 0, failures: 0, graph: None, off: None }
    }
}

impl<G> ReplayPolicy<G> {
    /// What a run with `key` does.
    pub fn next(&mut self, key: &ReplayKey) -> Next {
        if self.off.is_some() {
            return Next::Eager;
        }
        if self.key.as_ref() != Some(key) {
            self.key = Some(key.clone());
            self.warm = 0;
            self.graph = None;
        }
        match (&self.graph, self.warm) {
            (Some(_), _) => Next::Replay,
            (None, warm) if warm < WARM_UP_RUNS => Next::Eager,
            (None, _) => Next::Capture,
        }
    }

    /// An eager run with the current key finished.
    pub fn ran_eagerly(&mut self) {
        self.warm += 1;
    }

    /// The capture worked: later runs with the same key replay `graph`.
    pub fn captured(&mut self, graph: G) {
        self.graph = Some(graph);
    }

    /// The capture failed (the run then went eagerly): the next run tries again, until
    /// [`MAX_FAILURES`] captures have failed.
    pub fn failed(&mut self, reason: &str) {
        self.failures += 1;
        if self.failures >= MAX_FAILURES {
            self.off = Some(format!("{MAX_FAILURES} captures failed, the last because {reason}"));
            self.graph = None;
        }
    }

    /// Forgets the capture (the state it reads was replaced): the next run is eager again.
    pub fn reset(&mut self) {
        self.key = None;
        self.warm = 0;
        self.graph = None;
    }

    pub fn graph(&self) -> Option<&G> {
        self.graph.as_ref()
    }

    /// Why replays are off for good, if they are.
    pub fn off(&self) -> Option<&str> {
        self.off.as_deref()
    }

    /// Turns replays off with `reason` (a setting that rules them out, like per-instruction
    /// profiling).
    pub fn turn_off(&mut self, reason: impl Into<String>) {
        self.off = Some(reason.into());
        self.graph = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ReplayPolicy<&'static str> {
        ReplayPolicy::default()
    }

    fn key(n: usize) -> ReplayKey {
        ReplayKey(vec![(0, vec![n, 16], DataType::Int64)])
    }

    fn warm_up(p: &mut ReplayPolicy<&'static str>, k: &ReplayKey) {
        for _ in 0..WARM_UP_RUNS {
            assert_eq!(p.next(k), Next::Eager);
            p.ran_eagerly();
        }
    }

    #[test]
    fn warm_up_then_capture_then_replay() {
        let mut p = policy();
        warm_up(&mut p, &key(2));
        assert_eq!(p.next(&key(2)), Next::Capture);
        p.captured("g");
        assert_eq!(p.next(&key(2)), Next::Replay);
        assert_eq!(p.next(&key(2)), Next::Replay);
        assert_eq!(p.graph(), Some(&"g"));
    }

    #[test]
    fn a_new_shape_or_new_state_starts_over() {
        let mut p = policy();
        warm_up(&mut p, &key(2));
        assert_eq!(p.next(&key(2)), Next::Capture);
        p.captured("g");
        // The last batch of an epoch is shorter: its shapes are another key.
        warm_up(&mut p, &key(1));
        assert!(p.graph().is_none());
        assert_eq!(p.next(&key(1)), Next::Capture);
        p.captured("h");
        p.reset();
        assert_eq!(p.next(&key(1)), Next::Eager);
    }

    #[test]
    fn failed_captures_retry_then_stay_eager_with_the_reason() {
        let mut p = policy();
        warm_up(&mut p, &key(2));
        assert_eq!(p.next(&key(2)), Next::Capture);
        p.failed("a kernel was compiled during capture");
        p.ran_eagerly();
        assert_eq!(p.next(&key(2)), Next::Capture);
        p.failed("node `x` read a device value on the host");
        assert_eq!(p.next(&key(2)), Next::Eager);
        assert_eq!(p.next(&key(3)), Next::Eager);
        let why = p.off().unwrap();
        assert!(why.contains("2 captures failed") && why.contains("node `x`"), "{why}");
    }

    #[test]
    fn turned_off_stays_eager() {
        let mut p = policy();
        p.turn_off("ADAPTC_PROFILE times each instruction");
        assert_eq!(p.next(&key(2)), Next::Eager);
        p.ran_eagerly();
        assert_eq!(p.next(&key(2)), Next::Eager);
    }
}
