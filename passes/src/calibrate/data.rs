//! Calibration rows → padded batches.
//!
//! A row is a JSON object whose keys name model inputs and whose values are arrays of
//! integers, one per token (`{"input_ids": [101, 2023, …], "attention_mask": [1, 1, …]}`),
//! the format `adaptc train --data` reads. Other keys (`text`, `label`) are ignored. Rows of a
//! batch are padded with 0 to the longest; each row's length is kept, so statistics can skip
//! the padding whatever the model calls its mask.

use std::io::{BufRead, BufReader};
use std::path::Path;

use adaptc_ir::{DataType, Graph};
use adaptc_runtime::Tensor;
use serde_json::Value;

/// One batch: a `[rows, longest]` tensor per model input, and each row's real length.
pub struct Batch {
    pub inputs: Vec<(String, Tensor)>,
    pub lengths: Vec<usize>,
}

/// Reads up to `samples` rows of `path` into batches of `batch` rows for `graph`'s inputs
/// (every graph input that is not an initializer must be in every row).
pub fn read_batches(path: &Path, graph: &Graph, samples: usize, batch: usize) -> Result<Vec<Batch>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let names: Vec<(String, DataType)> = graph
        .inputs
        .iter()
        .filter(|v| graph.initializer(&v.name).is_none())
        .map(|v| (v.name.clone(), v.ty.as_ref().and_then(|t| t.dtype()).unwrap_or(DataType::Int64)))
        .collect();
    let mut rows: Vec<Vec<Vec<i64>>> = Vec::new();
    for (n, line) in BufReader::new(file).lines().enumerate() {
        if rows.len() == samples {
            break;
        }
        let line = line.map_err(|e| format!("{}: {e}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{} line {}", path.display(), n + 1);
        let obj: Value = serde_json::from_str(&line).map_err(|e| format!("{}: {e}", at()))?;
        let mut fields = Vec::with_capacity(names.len());
        for (name, _) in &names {
            let values = obj
                .get(name)
                .and_then(Value::as_array)
                .ok_or_else(|| format!("{}: no array `{name}` (the model's inputs are {})", at(), list(&names)))?;
            let ints = values
                .iter()
                .map(Value::as_i64)
                .collect::<Option<Vec<i64>>>()
                .ok_or_else(|| format!("{}: `{name}` holds something other than integers", at()))?;
            fields.push(ints);
        }
        let len = fields[0].len();
        if len == 0 || fields.iter().any(|f| f.len() != len) {
            return Err(format!("{}: the inputs must be non-empty and of equal length", at()));
        }
        rows.push(fields);
    }
    if rows.is_empty() {
        return Err(format!("{}: no calibration rows", path.display()));
    }
    rows.chunks(batch.max(1)).map(|chunk| pad(chunk, &names)).collect()
}

fn pad(chunk: &[Vec<Vec<i64>>], names: &[(String, DataType)]) -> Result<Batch, String> {
    let lengths: Vec<usize> = chunk.iter().map(|r| r[0].len()).collect();
    let longest = lengths.iter().copied().max().unwrap_or(0);
    let mut inputs = Vec::with_capacity(names.len());
    for (i, (name, dtype)) in names.iter().enumerate() {
        let mut values = vec![0i64; chunk.len() * longest];
        for (r, row) in chunk.iter().enumerate() {
            values[r * longest..r * longest + row[i].len()].copy_from_slice(&row[i]);
        }
        let shape = vec![chunk.len(), longest];
        let tensor = match dtype {
            DataType::Int64 => Tensor::from_vec(shape, values),
            DataType::Int32 => Tensor::from_vec(shape, values.iter().map(|&v| v as i32).collect::<Vec<i32>>()),
            other => return Err(format!("input `{name}` is {other}; calibration rows feed integer inputs only")),
        }
        .map_err(|e| e.to_string())?;
        inputs.push((name.clone(), tensor));
    }
    Ok(Batch { inputs, lengths })
}

fn list(names: &[(String, DataType)]) -> String {
    names.iter().map(|(n, _)| format!("`{n}`")).collect::<Vec<_>>().join(", ")
}
