//! Training and evaluation rows from JSONL, and padded batches for the model's inputs.
//!
//! A row is one JSON object per line (blank lines are skipped):
//!
//! - token ids under the model's input names — `{"input_ids": [101, 2023, …],
//!   "attention_mask": [1, 1, …], "token_type_ids": [0, 0, …]}`, integer arrays of one length;
//! - or, when a [`TextTokenizer`] is given, a `text` string, tokenized into `input_ids`,
//!   `attention_mask` and `token_type_ids` (the arrays, if present too, are then ignored);
//! - plus `label`, an integer in `0..N`, when training a classifier ([`Task::Classification`]).
//!   Other keys are ignored.
//!
//! A model input a row leaves out is filled in when that is unambiguous: `attention_mask` with
//! 1s, `token_type_ids` with 0s, `position_ids` with `0, 1, …`; any other missing input is an
//! error. `max_len` truncates every row to its first `max_len` tokens (text through the
//! tokenizer's truncation, which keeps the special tokens).
//!
//! Errors name the file and the 1-based line: a missing key, a value that is not an integer,
//! arrays of different lengths, a label out of range, an id that does not fit an `int32` input.
//!
//! A [`Batch`] pads its rows with 0 to its longest row (so `attention_mask` is 0 on padding)
//! and holds one `[rows, longest]` tensor per model input in the input's element type (int64,
//! int32, float or bool), plus the labels: `int64 [rows]` for classification, or for a
//! language model `int64 [rows, longest]` copies of `input_ids` with `-100` where the mask is 0
//! and on padding (Hugging Face's convention: the model shifts them, `-100` is ignored by the
//! loss). Which rows make a batch, and in which order, is [`crate::loader`]'s job.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use adaptc_ir::DataType;
use adaptc_runtime::Tensor;
use serde_json::{Map, Value};

use crate::error::{Result, TrainError};
use crate::tokenize::TextTokenizer;

/// The label value a language-model batch puts where no loss is wanted.
pub const IGNORE_INDEX: i64 = -100;

/// What the rows are for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Task {
    /// Each row has an integer `label` in `0..labels`.
    Classification { labels: usize },
    /// Next-token prediction on `input_ids`; no `label` key is read.
    LanguageModel,
}

/// How to read rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataOptions {
    pub task: Task,
    /// Keep at most this many tokens of each row.
    pub max_len: Option<usize>,
}

/// One row: a value array per model input (in input order, all of one length) and its label.
#[derive(Clone, Debug, PartialEq)]
struct Row {
    fields: Vec<Vec<i64>>,
    label: Option<i64>,
}

/// Rows of one file, checked against the model's inputs.
#[derive(Clone, Debug)]
pub struct Dataset {
    file: PathBuf,
    inputs: Vec<(String, DataType)>,
    task: Task,
    rows: Vec<Row>,
}

/// A padded batch, ready to feed.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// `[rows, longest]` per model input, in the dataset's input order.
    pub inputs: Vec<(String, Tensor)>,
    /// `int64 [rows]` (classification) or `int64 [rows, longest]` (language model).
    pub labels: Tensor,
    /// Dataset indices of the rows, in batch order.
    pub rows: Vec<usize>,
    /// Each row's real length (before padding).
    pub lengths: Vec<usize>,
}

impl Batch {
    /// Real (unpadded) tokens in the batch.
    pub fn tokens(&self) -> usize {
        self.lengths.iter().sum()
    }

    /// The inputs as a session's feed map.
    pub fn feeds(&self) -> HashMap<String, Tensor> {
        self.inputs.iter().cloned().collect()
    }
}

impl Dataset {
    /// Reads every row of `file` for a model whose (non-initializer) inputs are `inputs`
    /// (name and element type, e.g. from the graph's inputs).
    pub fn load(
        file: &Path,
        inputs: &[(String, DataType)],
        options: &DataOptions,
        tokenizer: Option<&TextTokenizer>,
    ) -> Result<Dataset> {
        let data_err = |reason: String| TrainError::Data { file: file.to_path_buf(), reason };
        if inputs.is_empty() {
            return Err(data_err("the model has no inputs to feed".into()));
        }
        for (name, dtype) in inputs {
            if !matches!(dtype, DataType::Int64 | DataType::Int32 | DataType::Float | DataType::Bool) {
                return Err(data_err(format!(
                    "the model's input `{name}` is {dtype}; rows can feed int64, int32, float and bool inputs"
                )));
            }
        }
        if let Task::Classification { labels } = options.task {
            if labels < 2 {
                return Err(data_err(format!("classification needs at least 2 labels, got {labels}")));
            }
        }
        if options.max_len == Some(0) {
            return Err(data_err("max_len must be at least 1".into()));
        }
        if options.task == Task::LanguageModel && !inputs.iter().any(|(n, _)| n == "input_ids") {
            return Err(data_err("a language model is trained on `input_ids`, which the model does not take".into()));
        }
        let reader = std::fs::File::open(file).map_err(|e| TrainError::io(file, e))?;
        let mut rows = Vec::new();
        for (i, line) in BufReader::new(reader).lines().enumerate() {
            let line = line.map_err(|e| TrainError::io(file, e))?;
            if line.trim().is_empty() {
                continue;
            }
            let row = parse_row(&line, inputs, options, tokenizer).map_err(|reason| TrainError::Row {
                file: file.to_path_buf(),
                line: i + 1,
                reason,
            })?;
            rows.push(row);
        }
        if rows.is_empty() {
            return Err(data_err("no rows".into()));
        }
        Ok(Dataset { file: file.to_path_buf(), inputs: inputs.to_vec(), task: options.task, rows })
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    pub fn inputs(&self) -> &[(String, DataType)] {
        &self.inputs
    }

    pub fn task(&self) -> Task {
        self.task
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The real length of row `i` (tokens).
    pub fn row_len(&self, i: usize) -> usize {
        self.rows.get(i).map_or(0, |r| r.fields[0].len())
    }

    /// The label of row `i` (classification).
    pub fn label(&self, i: usize) -> Option<i64> {
        self.rows.get(i).and_then(|r| r.label)
    }

    /// The batch of rows `indices` (dataset indices, in this order), padded to the longest.
    pub fn batch(&self, indices: &[usize]) -> Result<Batch> {
        if indices.is_empty() {
            return Err(TrainError::Config("a batch needs at least one row".into()));
        }
        let rows: Vec<&Row> = indices
            .iter()
            .map(|&i| {
                self.rows.get(i).ok_or_else(|| {
                    TrainError::Config(format!("row {i} asked for, {} has {} rows", self.file.display(), self.len()))
                })
            })
            .collect::<Result<_>>()?;
        let lengths: Vec<usize> = rows.iter().map(|r| r.fields[0].len()).collect();
        let longest = lengths.iter().copied().max().unwrap_or(0);
        let (n, shape) = (rows.len(), vec![rows.len(), longest]);
        let padded = |field: usize, fill: i64| -> Vec<i64> {
            let mut out = vec![fill; n * longest];
            for (r, row) in rows.iter().enumerate() {
                out[r * longest..r * longest + row.fields[field].len()].copy_from_slice(&row.fields[field]);
            }
            out
        };
        let mut inputs = Vec::with_capacity(self.inputs.len());
        for (f, (name, dtype)) in self.inputs.iter().enumerate() {
            let v = padded(f, 0);
            let t = match dtype {
                DataType::Int32 => Tensor::from_vec(shape.clone(), v.iter().map(|&x| x as i32).collect::<Vec<_>>()),
                DataType::Float => Tensor::from_vec(shape.clone(), v.iter().map(|&x| x as f32).collect::<Vec<_>>()),
                DataType::Bool => Tensor::from_vec(shape.clone(), v.iter().map(|&x| x != 0).collect::<Vec<_>>()),
                _ => Tensor::from_vec(shape.clone(), v),
            }?;
            inputs.push((name.clone(), t));
        }
        let labels = match self.task {
            Task::Classification { .. } => {
                Tensor::from_vec(vec![n], rows.iter().map(|r| r.label.unwrap_or(0)).collect())?
            }
            Task::LanguageModel => {
                let field = |name: &str| self.inputs.iter().position(|(n, _)| n == name);
                let mut ids = padded(field("input_ids").unwrap_or(0), IGNORE_INDEX);
                if let Some(m) = field("attention_mask") {
                    for (id, mask) in ids.iter_mut().zip(padded(m, 0)) {
                        if mask == 0 {
                            *id = IGNORE_INDEX;
                        }
                    }
                }
                Tensor::from_vec(shape, ids)?
            }
        };
        Ok(Batch { inputs, labels, rows: indices.to_vec(), lengths })
    }

    /// Batches of `batch_size` rows in file order (the last may be smaller), for evaluation.
    pub fn in_order(&self, batch_size: usize) -> impl Iterator<Item = Result<Batch>> + '_ {
        let size = batch_size.max(1);
        (0..self.len()).step_by(size).map(move |start| {
            let idx: Vec<usize> = (start..(start + size).min(self.len())).collect();
            self.batch(&idx)
        })
    }
}

/// Reads one line into a row, or says what is wrong with it.
fn parse_row(
    line: &str,
    inputs: &[(String, DataType)],
    options: &DataOptions,
    tokenizer: Option<&TextTokenizer>,
) -> Result<Row, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("not valid JSON: {e}"))?;
    let Value::Object(obj) = value else {
        return Err("not a JSON object".into());
    };
    let encoded = match tokenizer {
        Some(t) => {
            let text = obj.get("text").ok_or("no `text` to tokenize")?;
            let text = text.as_str().ok_or("`text` is not a string")?;
            let e = t.encode(text)?;
            if e.input_ids.is_empty() {
                return Err("`text` gives no tokens".into());
            }
            Some(e)
        }
        None => None,
    };
    let mut given: Vec<Option<Vec<i64>>> = Vec::with_capacity(inputs.len());
    for (name, _) in inputs {
        given.push(match &encoded {
            Some(e) => match name.as_str() {
                "input_ids" => Some(e.input_ids.clone()),
                "attention_mask" => Some(e.attention_mask.clone()),
                "token_type_ids" => Some(e.token_type_ids.clone()),
                _ => None,
            },
            None => ints(&obj, name)?,
        });
    }
    // One length for the row, from the arrays it has.
    let mut len: Option<(usize, &str)> = None;
    for ((name, _), v) in inputs.iter().zip(&given) {
        let Some(v) = v else { continue };
        match len {
            None => len = Some((v.len(), name)),
            Some((n, first)) if n != v.len() => {
                return Err(format!("`{name}` has {} values but `{first}` has {n}", v.len()));
            }
            _ => {}
        }
    }
    let Some((len, first)) = len else {
        return Err(format!("none of the model's inputs is here: {}", missing_hint(inputs)));
    };
    if len == 0 {
        return Err(format!("`{first}` is empty"));
    }
    let keep = options.max_len.map_or(len, |m| m.min(len));
    let mut fields = Vec::with_capacity(inputs.len());
    for ((name, dtype), v) in inputs.iter().zip(given) {
        let mut v = match v {
            Some(v) => v,
            None => default_input(name, len).ok_or_else(|| format!("no `{name}`: {}", missing_hint(inputs)))?,
        };
        v.truncate(keep);
        if *dtype == DataType::Int32 {
            if let Some((i, x)) = v.iter().enumerate().find(|(_, &x)| i32::try_from(x).is_err()) {
                return Err(format!("`{name}`[{i}] = {x} does not fit the model's int32 input"));
            }
        }
        fields.push(v);
    }
    let label = match options.task {
        Task::Classification { labels } => Some(label(&obj, labels)?),
        Task::LanguageModel => None,
    };
    Ok(Row { fields, label })
}

/// The integer array under `key`, `None` when absent.
fn ints(obj: &Map<String, Value>, key: &str) -> Result<Option<Vec<i64>>, String> {
    let Some(v) = obj.get(key) else { return Ok(None) };
    let arr = v.as_array().ok_or_else(|| format!("`{key}` is not an array of integers"))?;
    arr.iter()
        .enumerate()
        .map(|(i, x)| x.as_i64().ok_or_else(|| format!("`{key}`[{i}] is {x}, not an integer")))
        .collect::<Result<Vec<i64>, String>>()
        .map(Some)
}

fn label(obj: &Map<String, Value>, labels: usize) -> Result<i64, String> {
    let v = obj.get("label").ok_or_else(|| format!("no `label` (a classifier with {labels} labels is trained)"))?;
    let l = v.as_i64().ok_or_else(|| format!("`label` is {v}, not an integer"))?;
    if l < 0 || l as u64 >= labels as u64 {
        return Err(format!("label {l} is out of range for {labels} labels (0..={})", labels - 1));
    }
    Ok(l)
}

/// The value a row may leave out: a full mask, segment 0, positions `0..len`.
fn default_input(name: &str, len: usize) -> Option<Vec<i64>> {
    match name {
        "attention_mask" => Some(vec![1; len]),
        "token_type_ids" => Some(vec![0; len]),
        "position_ids" => Some((0..len as i64).collect()),
        _ => None,
    }
}

fn missing_hint(inputs: &[(String, DataType)]) -> String {
    let names: Vec<String> = inputs.iter().map(|(n, _)| format!("`{n}`")).collect();
    format!(
        "rows need the model's inputs {} (attention_mask, token_type_ids and position_ids may be left out)",
        names.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn bert_inputs() -> Vec<(String, DataType)> {
        ["input_ids", "attention_mask", "token_type_ids"].iter().map(|n| (n.to_string(), DataType::Int64)).collect()
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    const CLS2: DataOptions = DataOptions { task: Task::Classification { labels: 2 }, max_len: None };

    #[test]
    fn pads_fills_defaults_and_keeps_dtypes() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(
            dir.path(),
            "d.jsonl",
            "{\"input_ids\": [5, 6, 7], \"label\": 1}\n\n{\"input_ids\": [8], \"attention_mask\": [1], \"label\": 0, \"x\": 1}\n",
        );
        let mut inputs = bert_inputs();
        inputs[1].1 = DataType::Float;
        inputs[2].1 = DataType::Int32;
        let d = Dataset::load(&f, &inputs, &CLS2, None).unwrap();
        assert_eq!(d.len(), 2);
        let b = d.batch(&[1, 0]).unwrap();
        assert_eq!(b.rows, vec![1, 0]);
        assert_eq!(b.lengths, vec![1, 3]);
        assert_eq!(b.tokens(), 4);
        let ids = &b.inputs[0].1;
        assert_eq!(ids.shape(), &[2, 3]);
        assert_eq!(ids.as_slice::<i64>().unwrap(), &[8, 0, 0, 5, 6, 7]);
        assert_eq!(b.inputs[1].1.as_slice::<f32>().unwrap(), &[1.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
        assert_eq!(b.inputs[2].1.as_slice::<i32>().unwrap(), &[0; 6]);
        assert_eq!(b.labels.shape(), &[2]);
        assert_eq!(b.labels.as_slice::<i64>().unwrap(), &[0, 1]);
        let all: Vec<Batch> = d.in_order(1).collect::<Result<_>>().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].rows, vec![1]);
    }

    #[test]
    fn language_model_labels_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(
            dir.path(),
            "c.jsonl",
            "{\"input_ids\": [1, 2, 3, 4], \"attention_mask\": [1, 1, 1, 0]}\n{\"input_ids\": [9]}\n",
        );
        let inputs = vec![
            ("input_ids".to_string(), DataType::Int64),
            ("attention_mask".to_string(), DataType::Int64),
            ("position_ids".to_string(), DataType::Int64),
        ];
        let opts = DataOptions { task: Task::LanguageModel, max_len: Some(3) };
        let d = Dataset::load(&f, &inputs, &opts, None).unwrap();
        let b = d.batch(&[0, 1]).unwrap();
        assert_eq!(b.inputs[0].1.as_slice::<i64>().unwrap(), &[1, 2, 3, 9, 0, 0]);
        assert_eq!(b.inputs[2].1.as_slice::<i64>().unwrap(), &[0, 1, 2, 0, 0, 0]);
        assert_eq!(b.labels.shape(), &[2, 3]);
        assert_eq!(b.labels.as_slice::<i64>().unwrap(), &[1, 2, 3, 9, -100, -100]);
        let opts = DataOptions { task: Task::LanguageModel, max_len: None };
        let b = Dataset::load(&f, &inputs, &opts, None).unwrap().batch(&[0]).unwrap();
        assert_eq!(b.labels.as_slice::<i64>().unwrap(), &[1, 2, 3, -100]);
    }

    #[test]
    fn bad_rows_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let inputs = bert_inputs();
        let cases = [
            (
                "{\"attention_mask\": [1], \"label\": 0}",
                "line 2: no `input_ids`: rows need the model's inputs `input_ids`",
            ),
            ("{\"input_ids\": [1, 2.5], \"label\": 0}", "line 2: `input_ids`[1] is 2.5, not an integer"),
            ("{\"input_ids\": \"abc\", \"label\": 0}", "line 2: `input_ids` is not an array of integers"),
            (
                "{\"input_ids\": [1, 2], \"attention_mask\": [1], \"label\": 0}",
                "line 2: `attention_mask` has 1 values but `input_ids` has 2",
            ),
            ("{\"input_ids\": [1], \"label\": 2}", "line 2: label 2 is out of range for 2 labels (0..=1)"),
            ("{\"input_ids\": [1], \"label\": \"pos\"}", "line 2: `label` is \"pos\", not an integer"),
            ("{\"input_ids\": [1]}", "line 2: no `label` (a classifier with 2 labels is trained)"),
            ("{\"input_ids\": []}", "line 2: `input_ids` is empty"),
            ("[1, 2]", "line 2: not a JSON object"),
            ("{\"input_ids\": [1,", "line 2: not valid JSON"),
            ("{\"text\": \"hi\", \"label\": 0}", "line 2: none of the model's inputs is here"),
        ];
        for (row, want) in cases {
            let f = write(dir.path(), "bad.jsonl", &format!("{{\"input_ids\": [1], \"label\": 0}}\n{row}\n"));
            let e = Dataset::load(&f, &inputs, &CLS2, None).unwrap_err().to_string();
            assert!(e.starts_with(&f.display().to_string()) && e.contains(want), "{row}: {e}");
        }
        let f = write(dir.path(), "big.jsonl", "{\"input_ids\": [3000000000], \"label\": 0}\n");
        let mut i32_inputs = bert_inputs();
        i32_inputs[0].1 = DataType::Int32;
        let e = Dataset::load(&f, &i32_inputs, &CLS2, None).unwrap_err().to_string();
        assert!(e.contains("line 1: `input_ids`[0] = 3000000000 does not fit the model's int32 input"), "{e}");
        let f = write(dir.path(), "empty.jsonl", "\n\n");
        let e = Dataset::load(&f, &inputs, &CLS2, None).unwrap_err().to_string();
        assert!(e.ends_with("empty.jsonl: no rows"), "{e}");
        let e = Dataset::load(&dir.path().join("none.jsonl"), &inputs, &CLS2, None).unwrap_err().to_string();
        assert!(e.contains("none.jsonl"), "{e}");
        let odd = vec![("pixel_values".to_string(), DataType::Float16)];
        let e = Dataset::load(&f, &odd, &CLS2, None).unwrap_err().to_string();
        assert!(e.contains("input `pixel_values` is f16"), "{e}");
        let one = DataOptions { task: Task::Classification { labels: 1 }, max_len: None };
        assert!(Dataset::load(&f, &inputs, &one, None).unwrap_err().to_string().contains("at least 2 labels"));
    }

    fn shipped(rel: &str) -> Option<PathBuf> {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/train").join(rel);
        if p.exists() {
            Some(p)
        } else {
            eprintln!("SKIPPED: {} is missing (scripts/make_train_data.py makes it)", p.display());
            None
        }
    }

    #[test]
    fn shipped_sentiment_and_corpus_load() {
        let (Some(train), Some(corpus)) = (shipped("sentiment/train.jsonl"), shipped("corpus/train.jsonl")) else {
            return;
        };
        let d = Dataset::load(&train, &bert_inputs(), &CLS2, None).unwrap();
        assert_eq!(d.len(), 1200);
        let ones = (0..d.len()).filter(|&i| d.label(i) == Some(1)).count();
        assert_eq!(ones, 600);
        let inputs = vec![("input_ids".to_string(), DataType::Int64), ("attention_mask".to_string(), DataType::Int64)];
        let opts = DataOptions { task: Task::LanguageModel, max_len: None };
        let c = Dataset::load(&corpus, &inputs, &opts, None).unwrap();
        assert_eq!(c.len(), 400);
        assert!((0..c.len()).all(|i| (24..=48).contains(&c.row_len(i))));
    }

    /// `text` through the shipped `tokenizer.json` gives the ids stored beside it (made by
    /// the Python `tokenizers` from the same file).
    #[test]
    fn text_rows_tokenize_like_the_stored_ids() {
        let (Some(train), Some(tok)) = (shipped("sentiment/train.jsonl"), shipped("sentiment/tokenizer.json")) else {
            return;
        };
        let t = TextTokenizer::from_file(&tok, None).unwrap();
        let from_text = Dataset::load(&train, &bert_inputs(), &CLS2, Some(&t)).unwrap();
        let from_ids = Dataset::load(&train, &bert_inputs(), &CLS2, None).unwrap();
        assert_eq!(from_text.rows, from_ids.rows);
        let short = TextTokenizer::from_file(&tok, Some(5)).unwrap();
        let e = short.encode("The charger is far from flimsy.").unwrap();
        assert_eq!(e.input_ids.len(), 5);
        assert_eq!((e.input_ids[0], e.input_ids[4]), (101, 102));
        let e = TextTokenizer::from_file(&train, None).unwrap_err().to_string();
        assert!(e.starts_with("tokenizer ") && e.contains("cannot load"), "{e}");
    }
}
