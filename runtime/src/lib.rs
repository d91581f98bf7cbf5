//! Execution runtime: lowering an IR graph to an execution plan and running it on a backend.
//!
//! Empty for now: the foundation issue only needs the crate to exist so the workspace layout is
//! the one the project is known by. The runtime issue fills it (CPU backend, autodiff, trainer).
