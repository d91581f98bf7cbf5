//! The numerical check behind `adaptc verify` and `adaptc rewrite --verify`: feed the same
//! random inputs to two models through tract (an independent runtime) and compare every
//! output.
//!
//! - [`inputs`]: which inputs are fed, their concrete shapes, and values that fit what they are;
//! - [`tract`]: the in-memory preparation (`specialize-shapes`, `fold-constants`, `decompose`,
//!   …) and the tract run;
//! - this module: the comparison and its report.

pub mod inputs;
pub mod tract;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use adaptc_ir::Model;
use adaptc_passes::lower::specialize_shapes::{parse_dims, parse_inputs};
use anyhow::{bail, Result};
use tract_onnx::prelude::{DatumType, Tensor as TractTensor};

use inputs::InputSpec;

/// The check's settings, as the command line gives them (shared by `verify` and
/// `rewrite --verify`).
#[derive(clap::Args, Clone, Debug)]
pub struct CheckArgs {
    /// Relative tolerance: an output passes when max|A−B| ≤ atol + rtol·max|A|.
    #[arg(long, default_value_t = 1e-4, value_name = "R")]
    pub rtol: f64,
    /// Absolute tolerance.
    #[arg(long, default_value_t = 1e-5, value_name = "A")]
    pub atol: f64,
    /// Seed of the random inputs (the same seed gives the same inputs everywhere).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Sizes of symbolic input dimensions, e.g. batch=2,seq=16.
    #[arg(long, default_value = "batch=2,seq=16", value_name = "SYM=N,...")]
    pub dims: String,
    /// Whole shape of an input, e.g. input_ids:2x16 (repeatable; for unnamed dimensions).
    #[arg(long = "shape", value_name = "NAME:D0xD1")]
    pub shapes: Vec<String>,
    /// Number of random input sets to try (seeds seed, seed+1, …).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub runs: usize,
}

/// The parsed settings.
#[derive(Clone, Debug)]
pub struct Settings {
    pub rtol: f64,
    pub atol: f64,
    pub seed: u64,
    pub dims: BTreeMap<String, i64>,
    pub shapes: Vec<(String, Vec<i64>)>,
    pub runs: usize,
}

impl CheckArgs {
    pub fn settings(&self) -> Result<Settings> {
        let items: Vec<String> =
            self.dims.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect();
        let dims = parse_dims(&items).map_err(|e| anyhow::anyhow!("--dims: {e}"))?;
        let shapes = parse_inputs(&self.shapes).map_err(|e| anyhow::anyhow!("--shape: {e}"))?;
        let finite = |v: f64| v.is_finite() && v >= 0.0;
        if !finite(self.rtol) || !finite(self.atol) {
            bail!("--rtol and --atol must be finite and non-negative");
        }
        if self.runs == 0 {
            bail!("--runs must be at least 1");
        }
        Ok(Settings { rtol: self.rtol, atol: self.atol, seed: self.seed, dims, shapes, runs: self.runs })
    }
}

/// The comparison of one output (worst case over the runs).
#[derive(Clone, Debug)]
pub struct Row {
    pub output: String,
    pub shape: Vec<usize>,
    /// max |A| over the output.
    pub max_abs_a: f64,
    pub max_abs_diff: f64,
    /// `max_abs_diff / max|A|`.
    pub max_rel_diff: f64,
    pub pass: bool,
    /// Why it failed other than by the numbers (a shape mismatch, NaN in one model only).
    pub problem: Option<String>,
}

/// What a check found.
#[derive(Clone, Debug)]
pub struct Report {
    pub a: String,
    pub b: String,
    pub inputs: Vec<InputSpec>,
    pub rows: Vec<Row>,
    pub settings: Settings,
}

impl Report {
    /// A one-line reason when the check failed.
    pub fn failure(&self) -> Option<String> {
        let failed: Vec<String> = self
            .rows
            .iter()
            .filter(|r| !r.pass)
            .map(|r| match &r.problem {
                Some(p) => format!("`{}` ({p})", r.output),
                None => format!(
                    "`{}` (max abs diff {:.3e} > atol + rtol·max|A| = {:.3e})",
                    r.output,
                    r.max_abs_diff,
                    self.settings.atol + self.settings.rtol * r.max_abs_a
                ),
            })
            .collect();
        (!failed.is_empty()).then(|| {
            format!(
                "{} and {} differ beyond tolerance (rtol {:e}, atol {:e}) in {} of {} outputs: {}",
                self.a,
                self.b,
                self.settings.rtol,
                self.settings.atol,
                failed.len(),
                self.rows.len(),
                failed.join(", ")
            )
        })
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.settings;
        let runs = if s.runs == 1 { "1 run".to_string() } else { format!("{} runs", s.runs) };
        writeln!(f, "verify: A = {}, B = {} (tract; seed {}, {runs})", self.a, self.b, s.seed)?;
        writeln!(f, "inputs:")?;
        for i in &self.inputs {
            writeln!(f, "  {i}")?;
        }
        let shape = |r: &Row| format!("[{}]", r.shape.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "));
        let w_out = self.rows.iter().map(|r| r.output.len()).max().unwrap_or(0).max("output".len());
        let w_shape = self.rows.iter().map(|r| shape(r).len()).max().unwrap_or(0).max("shape".len());
        writeln!(
            f,
            "{:<w_out$}  {:<w_shape$}  {:>10}  {:>12}  {:>12}  result",
            "output", "shape", "max |A|", "max abs diff", "max rel diff"
        )?;
        for r in &self.rows {
            let result = match (&r.problem, r.pass) {
                (Some(p), _) => format!("FAIL: {p}"),
                (None, true) => "ok".to_string(),
                (None, false) => "FAIL".to_string(),
            };
            writeln!(
                f,
                "{:<w_out$}  {:<w_shape$}  {:>10.3e}  {:>12.3e}  {:>12.3e}  {result}",
                r.output,
                shape(r),
                r.max_abs_a,
                r.max_abs_diff,
                r.max_rel_diff
            )?;
        }
        let failed = self.rows.iter().filter(|r| !r.pass).count();
        if failed == 0 {
            write!(f, "all {} outputs within rtol {:e}, atol {:e}", self.rows.len(), s.rtol, s.atol)
        } else {
            write!(f, "{failed} of {} outputs beyond rtol {:e}, atol {:e}", self.rows.len(), s.rtol, s.atol)
        }
    }
}

/// Runs both models on the same random inputs and compares their outputs. `a_name`/`b_name`
/// label them in messages (usually their paths). Errors: the models take different inputs or
/// give different outputs, or tract cannot run one of them (the message names the op or node).
pub fn check(a: &Model, a_name: &Path, b: &Model, b_name: &Path, s: &Settings) -> Result<Report> {
    let (a_label, b_label) = (format!("A ({})", a_name.display()), format!("B ({})", b_name.display()));
    let specs_a = inputs::specs(&a.graph, &a_label, &s.dims, &s.shapes)?;
    let specs_b = inputs::specs(&b.graph, &b_label, &s.dims, &s.shapes)?;
    let specs = inputs::common(specs_a, specs_b)?;

    let out_a: Vec<&str> = a.graph.outputs.iter().map(|o| o.name.as_str()).collect();
    let out_b: Vec<&str> = b.graph.outputs.iter().map(|o| o.name.as_str()).collect();
    let mut sorted_a = out_a.clone();
    let mut sorted_b = out_b.clone();
    sorted_a.sort_unstable();
    sorted_b.sort_unstable();
    if sorted_a != sorted_b {
        bail!("the models have different outputs: A gives [{}], B gives [{}]", out_a.join(", "), out_b.join(", "));
    }

    let prepared_a = tract::prepare(a, &a_label, &specs, &s.dims)?;
    let prepared_b = tract::prepare(b, &b_label, &specs, &s.dims)?;
    let runner_a = tract::Runner::new(&prepared_a, &a_label, &specs)?;
    let runner_b = tract::Runner::new(&prepared_b, &b_label, &specs)?;

    let mut rows: Vec<Row> = Vec::new();
    for run in 0..s.runs {
        let mut feeds = BTreeMap::new();
        for spec in &specs {
            let values = inputs::values(spec, s.seed, run);
            feeds.insert(spec.name.clone(), inputs::tract_tensor(spec, &values)?);
        }
        let got_a = runner_a.run(&a_label, &feeds)?;
        let got_b = runner_b.run(&b_label, &feeds)?;
        for (i, (name, _)) in runner_a.outputs.iter().enumerate() {
            let Some(j) = runner_b.outputs.iter().position(|(n, _)| n == name) else { continue };
            let (Some(ta), Some(tb)) = (got_a.get(i), got_b.get(j)) else {
                bail!("tract returned fewer outputs than the models declare");
            };
            let row = compare(name, ta, tb, s)?;
            match rows.iter_mut().find(|r| r.output == *name) {
                Some(worst) => merge(worst, row),
                None => rows.push(row),
            }
        }
    }
    Ok(Report {
        a: a_name.display().to_string(),
        b: b_name.display().to_string(),
        inputs: specs,
        rows,
        settings: s.clone(),
    })
}

/// The elements of an output as f64.
fn as_f64(t: &TractTensor) -> Result<Vec<f64>> {
    if t.datum_type() == DatumType::Bool {
        return Ok(t.as_slice::<bool>()?.iter().map(|&b| f64::from(u8::from(b))).collect());
    }
    Ok(t.cast_to::<f64>()?.as_slice::<f64>()?.to_vec())
}

fn compare(name: &str, a: &TractTensor, b: &TractTensor, s: &Settings) -> Result<Row> {
    let mut row = Row {
        output: name.to_string(),
        shape: a.shape().to_vec(),
        max_abs_a: 0.0,
        max_abs_diff: 0.0,
        max_rel_diff: 0.0,
        pass: true,
        problem: None,
    };
    if a.shape() != b.shape() {
        row.pass = false;
        row.problem = Some(format!("shape {:?} in A, {:?} in B", a.shape(), b.shape()));
        return Ok(row);
    }
    let (va, vb) = (as_f64(a)?, as_f64(b)?);
    let mut nan_mismatch = 0usize;
    for (&x, &y) in va.iter().zip(&vb) {
        if x.is_finite() {
            row.max_abs_a = row.max_abs_a.max(x.abs());
        }
        let d = if x == y || (x.is_nan() && y.is_nan()) {
            0.0
        } else if x.is_nan() || y.is_nan() {
            nan_mismatch += 1;
            f64::INFINITY
        } else {
            (x - y).abs()
        };
        row.max_abs_diff = row.max_abs_diff.max(d);
    }
    row.max_rel_diff = relative(row.max_abs_diff, row.max_abs_a);
    row.pass = row.max_abs_diff <= s.atol + s.rtol * row.max_abs_a;
    if nan_mismatch > 0 {
        row.problem = Some(format!("{nan_mismatch} elements are NaN in one model only"));
    }
    Ok(row)
}

fn relative(diff: f64, scale: f64) -> f64 {
    if diff == 0.0 {
        0.0
    } else if scale == 0.0 {
        f64::INFINITY
    } else {
        diff / scale
    }
}

/// Keeps the worst of two runs' rows for one output.
fn merge(worst: &mut Row, row: Row) {
    worst.max_abs_a = worst.max_abs_a.max(row.max_abs_a);
    worst.max_abs_diff = worst.max_abs_diff.max(row.max_abs_diff);
    worst.max_rel_diff = worst.max_rel_diff.max(row.max_rel_diff);
    worst.pass &= row.pass;
    if worst.problem.is_none() {
        worst.problem = row.problem;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings { rtol: 1e-3, atol: 1e-5, seed: 0, dims: BTreeMap::new(), shapes: Vec::new(), runs: 1 }
    }

    fn t(v: &[f32]) -> TractTensor {
        TractTensor::from_shape(&[v.len()], v).unwrap()
    }

    #[test]
    fn tolerance_is_atol_plus_rtol_times_max_abs_a() {
        let r = compare("y", &t(&[10.0, -2.0]), &t(&[10.0, -2.005]), &settings()).unwrap();
        assert!((r.max_abs_diff - 0.005).abs() < 1e-6 && (r.max_rel_diff - 0.0005).abs() < 1e-6);
        assert!(r.pass, "0.005 <= 1e-5 + 1e-3 * 10");
        let r = compare("y", &t(&[1.0, -2.0]), &t(&[1.0, -2.005]), &settings()).unwrap();
        assert!(!r.pass && r.problem.is_none());
    }

    #[test]
    fn nan_in_one_model_only_fails_and_shapes_must_match() {
        let r = compare("y", &t(&[f32::NAN, 1.0]), &t(&[f32::NAN, 1.0]), &settings()).unwrap();
        assert!(r.pass && r.max_abs_diff == 0.0);
        let r = compare("y", &t(&[0.0, 1.0]), &t(&[f32::NAN, 1.0]), &settings()).unwrap();
        assert!(!r.pass);
        assert_eq!(r.problem.as_deref(), Some("1 elements are NaN in one model only"));
        let r = compare("y", &t(&[0.0, 1.0]), &t(&[0.0, 1.0, 2.0]), &settings()).unwrap();
        assert_eq!(r.problem.as_deref(), Some("shape [2] in A, [3] in B"));
    }
}
