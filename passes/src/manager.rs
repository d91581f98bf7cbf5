//! The pass manager: runs a pipeline over a model, verifying, timing and recording each pass.

use std::fmt;
use std::time::{Duration, Instant};

use adaptc_ir::Model;

use crate::pass::{Pass, PassContext, PassError};
use crate::pipeline::{PassSpec, Pipeline};
use crate::registry::Registry;

/// How the manager runs a pipeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManagerOptions {
    /// Verify the model before the first pass and after every pass (default: on). A failure
    /// names the pass after which the graph stopped verifying.
    pub verify_each: bool,
    /// Keep a text dump of the model after every pass that changed it.
    pub print_after_change: bool,
    /// Run only the first N passes (for bisecting a pipeline).
    pub stop_after: Option<usize>,
}

impl Default for ManagerOptions {
    fn default() -> ManagerOptions {
        ManagerOptions { verify_each: true, print_after_change: false, stop_after: None }
    }
}

/// What one pass did in a run.
#[derive(Clone, Debug)]
pub struct PassRun {
    pub name: String,
    /// The pass as written in canonical pipeline text, with its options.
    pub spec_text: String,
    pub changed: bool,
    pub stats: Vec<(String, i64)>,
    /// Time spent in the pass itself (verification not included).
    pub elapsed: Duration,
    /// `adaptc_ir::dump` of the model after the pass, when `print_after_change` is on and the
    /// pass changed the model.
    pub dump_after: Option<String>,
    pub notes: Vec<String>,
}

/// What a pipeline run did, pass by pass.
#[derive(Clone, Debug, Default)]
pub struct RunReport {
    pub runs: Vec<PassRun>,
    /// Passes of the pipeline that did not run because of `stop_after`.
    pub skipped: usize,
}

impl RunReport {
    /// Whether any pass changed the model.
    pub fn changed(&self) -> bool {
        self.runs.iter().any(|r| r.changed)
    }

    /// The sum of counter `key` over all passes that reported it.
    pub fn stat(&self, key: &str) -> Option<i64> {
        let mut values = self.runs.iter().flat_map(|r| &r.stats).filter(|(k, _)| k == key).map(|&(_, v)| v).peekable();
        values.peek()?;
        Some(values.sum())
    }

    /// Total time spent in passes.
    pub fn elapsed(&self) -> Duration {
        self.runs.iter().map(|r| r.elapsed).sum()
    }
}

/// A table: pass, changed, time in ms, statistics.
impl fmt::Display for RunReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self.runs.iter().map(|r| r.spec_text.len()).max().unwrap_or(0).max("total".len());
        writeln!(f, "{:<width$}  {:<7}  {:>9}  stats", "pass", "changed", "time ms")?;
        for r in &self.runs {
            let stats: Vec<String> = r.stats.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let line = format!(
                "{:<width$}  {:<7}  {:>9.3}  {}",
                r.spec_text,
                if r.changed { "yes" } else { "no" },
                r.elapsed.as_secs_f64() * 1e3,
                stats.join(" ")
            );
            writeln!(f, "{}", line.trim_end())?;
        }
        writeln!(f, "{:<width$}  {:<7}  {:>9.3}", "total", "", self.elapsed().as_secs_f64() * 1e3)?;
        if self.skipped > 0 {
            writeln!(f, "({} pass(es) not run: stop-after)", self.skipped)?;
        }
        Ok(())
    }
}

/// A pipeline with every pass built, ready to run on models.
pub struct PassManager {
    passes: Vec<(PassSpec, Box<dyn Pass>)>,
    options: ManagerOptions,
}

impl fmt::Debug for PassManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PassManager")
            .field("pipeline", &self.pipeline().to_string())
            .field("options", &self.options)
            .finish()
    }
}

impl PassManager {
    /// Parses `pipeline` and builds every pass up front, so that unknown passes and bad
    /// options are reported before any work is done.
    pub fn new(registry: &Registry, pipeline: &str) -> Result<PassManager, PassError> {
        PassManager::from_pipeline(registry, &Pipeline::parse(pipeline)?)
    }

    /// Builds every pass of an already parsed pipeline.
    pub fn from_pipeline(registry: &Registry, pipeline: &Pipeline) -> Result<PassManager, PassError> {
        let passes = pipeline
            .passes
            .iter()
            .map(|spec| Ok((spec.clone(), registry.build(spec)?)))
            .collect::<Result<Vec<_>, PassError>>()?;
        Ok(PassManager { passes, options: ManagerOptions::default() })
    }

    /// Builder: sets the run options.
    pub fn with_options(mut self, options: ManagerOptions) -> PassManager {
        self.options = options;
        self
    }

    pub fn options(&self) -> &ManagerOptions {
        &self.options
    }

    pub fn options_mut(&mut self) -> &mut ManagerOptions {
        &mut self.options
    }

    /// The pipeline this manager runs.
    pub fn pipeline(&self) -> Pipeline {
        Pipeline { passes: self.passes.iter().map(|(s, _)| s.clone()).collect() }
    }

    pub fn len(&self) -> usize {
        self.passes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.passes.is_empty()
    }

    /// Runs the pipeline. On error the model may hold the changes of the passes that ran
    /// before (and possibly part of the failing one); keep a copy to roll back.
    pub fn run(&self, model: &mut Model) -> Result<RunReport, PassError> {
        if self.options.verify_each {
            adaptc_ir::verify(&model.graph).map_err(PassError::InvalidInput)?;
        }
        let count = self.options.stop_after.map_or(self.passes.len(), |n| n.min(self.passes.len()));
        let mut report = RunReport { runs: Vec::with_capacity(count), skipped: self.passes.len() - count };
        for (spec, pass) in &self.passes[..count] {
            let mut cx = PassContext::new();
            let start = Instant::now();
            let outcome = pass.run(model, &mut cx).map_err(|e| match e {
                PassError::Ir(source) => PassError::InPass { pass: pass.name().to_string(), source },
                other => other,
            })?;
            let elapsed = start.elapsed();
            if self.options.verify_each {
                adaptc_ir::verify(&model.graph)
                    .map_err(|source| PassError::Verify { pass: pass.name().to_string(), source })?;
            }
            let dump_after = (self.options.print_after_change && outcome.changed).then(|| adaptc_ir::dump(model));
            report.runs.push(PassRun {
                name: pass.name().to_string(),
                spec_text: spec.to_string(),
                changed: outcome.changed,
                stats: outcome.stats,
                elapsed,
                dump_after,
                notes: cx.notes,
            });
        }
        Ok(report)
    }
}
