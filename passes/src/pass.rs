//! The [`Pass`] trait, what a pass reports ([`PassOutcome`], [`PassContext`]) and the errors
//! of the pass layer ([`PassError`]).

use adaptc_ir::{IrError, Model};
use thiserror::Error;

/// A transformation of a model.
///
/// A pass is built once from its options (see [`crate::Registry`]) and may be run on many
/// models; `run` must leave the model verifiable (the [`crate::PassManager`] checks) and must
/// say truthfully whether it changed anything.
pub trait Pass: Send + Sync {
    /// The pass's pipeline name, kebab-case (`dce`, `fold-constants`).
    fn name(&self) -> &'static str;

    /// Runs the pass. Bad input (a malformed graph, an option that does not fit this model) is
    /// an error, never a panic.
    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<PassOutcome, PassError>;
}

/// What one run of a pass did: whether the model changed, and named counters
/// (`dce.nodes_removed=3`), in the order the pass reported them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PassOutcome {
    pub changed: bool,
    pub stats: Vec<(String, i64)>,
}

impl PassOutcome {
    /// Nothing changed, no statistics.
    pub fn unchanged() -> PassOutcome {
        PassOutcome::default()
    }

    /// An outcome with `changed` set as given.
    pub fn changed(changed: bool) -> PassOutcome {
        PassOutcome { changed, stats: Vec::new() }
    }

    /// Builder: adds (or replaces) a counter.
    pub fn stat(mut self, key: impl Into<String>, value: i64) -> PassOutcome {
        let key = key.into();
        match self.stats.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => self.stats.push((key, value)),
        }
        self
    }

    /// The value of a counter, if the pass reported it.
    pub fn get(&self, key: &str) -> Option<i64> {
        self.stats.iter().find(|(k, _)| k == key).map(|&(_, v)| v)
    }
}

/// Per-run state handed to a pass: a place for notes and warnings the pass wants the user to
/// see (they end up in [`crate::PassRun::notes`]).
#[derive(Clone, Debug, Default)]
pub struct PassContext {
    pub notes: Vec<String>,
}

impl PassContext {
    pub fn new() -> PassContext {
        PassContext::default()
    }

    /// Records a note (for example why a node was left alone).
    pub fn note(&mut self, message: impl Into<String>) {
        self.notes.push(message.into());
    }
}

/// Errors of the pass layer. Every variant names what is at fault: the pipeline column, the
/// pass, the option, the node.
#[derive(Debug, Error)]
pub enum PassError {
    /// The pipeline text does not parse; `column` is the 1-based byte column.
    #[error("pipeline: {message} at column {column}")]
    Parse { column: usize, message: String },

    #[error("unknown pass `{name}`{}", suggestion_text(suggestion))]
    UnknownPass { name: String, suggestion: Option<String> },

    #[error("pass `{pass}`: option `{option}`: {reason}")]
    BadOption { pass: String, option: String, reason: String },

    #[error("pass `{pass}` failed: {reason}")]
    Failed { pass: String, reason: String },

    /// The graph no longer verifies after `pass` ran.
    #[error("the graph does not verify after pass `{pass}`: {source}")]
    Verify {
        pass: String,
        #[source]
        source: IrError,
    },

    /// The model handed to the pipeline does not verify (so no pass is to blame).
    #[error("the input model does not verify: {0}")]
    InvalidInput(#[source] IrError),

    /// An IR error raised inside `pass` (the manager adds the pass name to [`PassError::Ir`]).
    #[error("pass `{pass}`: {source}")]
    InPass {
        pass: String,
        #[source]
        source: IrError,
    },

    #[error(transparent)]
    Ir(#[from] IrError),
}

fn suggestion_text(suggestion: &Option<String>) -> String {
    match suggestion {
        Some(s) => format!("; did you mean `{s}`? (`adaptc passes` lists them all)"),
        None => "; `adaptc passes` lists the known passes".to_string(),
    }
}

impl PassError {
    /// A [`PassError::Failed`] for `pass`.
    pub fn failed(pass: &str, reason: impl Into<String>) -> PassError {
        PassError::Failed { pass: pass.to_string(), reason: reason.into() }
    }

    /// A [`PassError::BadOption`].
    pub fn bad_option(pass: &str, option: &str, reason: impl Into<String>) -> PassError {
        PassError::BadOption { pass: pass.to_string(), option: option.to_string(), reason: reason.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_stats_replace_and_read() {
        let o = PassOutcome::changed(true).stat("a", 1).stat("b", 2).stat("a", 3);
        assert_eq!(o.stats, vec![("a".to_string(), 3), ("b".to_string(), 2)]);
        assert_eq!(o.get("b"), Some(2));
        assert_eq!(o.get("c"), None);
        assert!(!PassOutcome::unchanged().changed);
    }

    #[test]
    fn errors_name_their_subject() {
        let e = PassError::UnknownPass { name: "dcee".into(), suggestion: Some("dce".into()) };
        assert_eq!(e.to_string(), "unknown pass `dcee`; did you mean `dce`? (`adaptc passes` lists them all)");
        let e = PassError::bad_option("insert-lora", "rank", "expected an integer, got `x`");
        assert_eq!(e.to_string(), "pass `insert-lora`: option `rank`: expected an integer, got `x`");
    }
}
