//! `metrics.jsonl`: one JSON object per line, written and flushed as each step or evaluation
//! ends, so a crash loses at most the line being written.
//!
//! - step records: `{"step", "loss", "lr", "step_time_s", "tokens_per_s", "grad_norm"}`
//!   (`grad_norm` is `null` when gradients were not clipped);
//! - eval records: `{"step", "eval_loss", "eval_accuracy"}` (`eval_accuracy` `null` when the
//!   task has none).
//!
//! A non-finite number is written as `null` (JSON has no NaN) and read back as NaN.
//! [`MetricsWriter::resume`] keeps the records up to the resumed step and drops the rest
//! (including a half-written last line), so the file of a resumed run reads as if it had
//! never stopped.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};

use crate::error::{Result, TrainError};

/// One training step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: u64,
    #[serde(deserialize_with = "nan_if_null")]
    pub loss: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub lr: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub step_time_s: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub tokens_per_s: f64,
    pub grad_norm: Option<f64>,
}

/// One evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    pub step: u64,
    #[serde(deserialize_with = "nan_if_null")]
    pub eval_loss: f64,
    pub eval_accuracy: Option<f64>,
}

/// A line of `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Record {
    Eval(EvalRecord),
    Step(StepRecord),
}

impl Record {
    pub fn step(&self) -> u64 {
        match self {
            Record::Step(r) => r.step,
            Record::Eval(r) => r.step,
        }
    }
}

fn nan_if_null<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// Appends records to `metrics.jsonl`.
#[derive(Debug)]
pub struct MetricsWriter {
    file: File,
    path: PathBuf,
}

impl MetricsWriter {
    /// Starts a new file (an existing one is emptied).
    pub fn create(path: &Path) -> Result<MetricsWriter> {
        let file = File::create(path).map_err(|e| TrainError::io(path, e))?;
        Ok(MetricsWriter { file, path: path.to_path_buf() })
    }

    /// Continues the file of a run resumed at `step`: records of later steps, and a
    /// half-written last line, are dropped (the file is rewritten through a temporary file and
    /// a rename). A missing file is started anew.
    pub fn resume(path: &Path, step: u64) -> Result<MetricsWriter> {
        if !path.exists() {
            return MetricsWriter::create(path);
        }
        let kept: Vec<Record> = read_records(path)?.into_iter().filter(|r| r.step() <= step).collect();
        crate::atomic::replace_file(path, |file| kept.iter().try_for_each(|r| write_line(file, r)))?;
        let file = OpenOptions::new().append(true).open(path).map_err(|e| TrainError::io(path, e))?;
        Ok(MetricsWriter { file, path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends a step record and flushes it.
    pub fn step(&mut self, r: &StepRecord) -> Result<()> {
        self.write(&Record::Step(r.clone()))
    }

    /// Appends an eval record and flushes it.
    pub fn eval(&mut self, r: &EvalRecord) -> Result<()> {
        self.write(&Record::Eval(r.clone()))
    }

    pub fn write(&mut self, r: &Record) -> Result<()> {
        write_line(&mut self.file, r).map_err(|e| TrainError::io(&self.path, e))
    }
}

fn write_line(f: &mut File, r: &Record) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(r).map_err(std::io::Error::other)?;
    line.push(b'\n');
    f.write_all(&line)?;
    f.flush()
}

/// Reads every record of a metrics file. A last line without its newline that does not
/// parse (a crash mid-write) is skipped; any other bad line is an error naming it.
pub fn read_records(path: &Path) -> Result<Vec<Record>> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    let complete = text.ends_with('\n');
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Record>(line) {
            Ok(r) => out.push(r),
            Err(_) if i + 1 == lines.len() && !complete => {}
            Err(e) => return Err(TrainError::Metrics { file: path.to_path_buf(), line: i + 1, reason: e.to_string() }),
        }
    }
    Ok(out)
}

/// `(step, value)` points.
pub type Series = Vec<(u64, f64)>;

/// `(step, loss)` of the step records and `(step, eval_loss)` of the eval records, for plots.
pub fn loss_series(records: &[Record]) -> (Series, Series) {
    let mut train = Vec::new();
    let mut eval = Vec::new();
    for r in records {
        match r {
            Record::Step(s) => train.push((s.step, s.loss)),
            Record::Eval(e) => eval.push((e.step, e.eval_loss)),
        }
    }
    (train, eval)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(step: u64, loss: f64) -> StepRecord {
        StepRecord { step, loss, lr: 1e-3, step_time_s: 0.5, tokens_per_s: 1000.0, grad_norm: Some(1.5) }
    }

    #[test]
    fn writes_one_flushed_object_per_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let mut w = MetricsWriter::create(&path).unwrap();
        w.step(&step(1, 2.5)).unwrap();
        w.step(&StepRecord { grad_norm: None, ..step(2, f64::NAN) }).unwrap();
        w.eval(&EvalRecord { step: 2, eval_loss: 2.0, eval_accuracy: Some(0.75) }).unwrap();
        // Flushed: readable while the writer is open.
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            r#"{"step":1,"loss":2.5,"lr":0.001,"step_time_s":0.5,"tokens_per_s":1000.0,"grad_norm":1.5}"#
        );
        assert_eq!(
            lines[1],
            r#"{"step":2,"loss":null,"lr":0.001,"step_time_s":0.5,"tokens_per_s":1000.0,"grad_norm":null}"#
        );
        assert_eq!(lines[2], r#"{"step":2,"eval_loss":2.0,"eval_accuracy":0.75}"#);
        let back = read_records(&path).unwrap();
        assert_eq!(back.len(), 3);
        assert_eq!(back[0], Record::Step(step(1, 2.5)));
        assert!(matches!(&back[1], Record::Step(s) if s.loss.is_nan() && s.grad_norm.is_none()));
        assert_eq!(back[2], Record::Eval(EvalRecord { step: 2, eval_loss: 2.0, eval_accuracy: Some(0.75) }));
        let (train, eval) = loss_series(&back);
        assert_eq!((train.len(), eval), (2, vec![(2, 2.0)]));
    }

    #[test]
    fn resume_drops_later_records_and_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let mut w = MetricsWriter::create(&path).unwrap();
        for s in 1..=5 {
            w.step(&step(s, 3.0 - s as f64 * 0.1)).unwrap();
        }
        w.eval(&EvalRecord { step: 4, eval_loss: 2.2, eval_accuracy: None }).unwrap();
        drop(w);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"step\":6,\"lo").unwrap();
        drop(f);
        let mut w = MetricsWriter::resume(&path, 3).unwrap();
        w.step(&step(4, 9.0)).unwrap();
        let steps: Vec<u64> = read_records(&path).unwrap().iter().map(Record::step).collect();
        assert_eq!(steps, vec![1, 2, 3, 4]);
        assert!(matches!(&read_records(&path).unwrap()[3], Record::Step(s) if s.loss == 9.0));
        // A bad line in the middle is an error naming it.
        std::fs::write(&path, "{\"step\":1}\n{}\n").unwrap();
        let e = read_records(&path).unwrap_err().to_string();
        assert!(e.contains("metrics.jsonl line 1:"), "{e}");
        // Resuming without a file starts one.
        let fresh = dir.path().join("new.jsonl");
        MetricsWriter::resume(&fresh, 10).unwrap();
        assert!(read_records(&fresh).unwrap().is_empty());
    }
}
