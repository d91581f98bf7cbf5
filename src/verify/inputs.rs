//! The inputs `adaptc verify` feeds: which graph inputs, their concrete shapes, and random
//! values that make sense for what each input is (token ids below the vocabulary size, masks
//! of ones with trailing zeros, N(0, 1) floats).

use std::collections::BTreeMap;
use std::fmt;

use adaptc_ir::{DataType, Dim, Graph};
use anyhow::{bail, Result};
use tract_onnx::prelude::{Datum, DatumType, Tensor as TractTensor};

/// What values an input gets.
#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    /// Token ids in `[0, vocab)`; `table` names the embedding table the vocabulary size came
    /// from (`None`: a guess).
    Ids { vocab: u64, table: Option<String> },
    /// Ones, with some trailing zeros in every row but the first.
    Mask,
    /// Zeros, then ones from a random split point (segment ids).
    Segments,
    /// `0, 1, …, n-1` along the last dimension.
    Positions,
    /// Small non-negative integers `[0, 4)`.
    SmallInts,
    /// N(0, 1).
    Normal,
    /// Random booleans.
    Bools,
}

/// One input to feed.
#[derive(Clone, Debug, PartialEq)]
pub struct InputSpec {
    pub name: String,
    pub dtype: DataType,
    pub dims: Vec<usize>,
    pub kind: Kind,
}

impl fmt::Display for InputSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dims: Vec<String> = self.dims.iter().map(ToString::to_string).collect();
        write!(f, "{} {}[{}]: ", self.name, self.dtype, dims.join(", "))?;
        match &self.kind {
            Kind::Ids { vocab, table: Some(t) } => write!(f, "token ids in [0, {vocab}) (embedding `{t}`)"),
            Kind::Ids { vocab, table: None } => write!(f, "token ids in [0, {vocab}) (no embedding table found)"),
            Kind::Mask => f.write_str("mask: ones with trailing zeros"),
            Kind::Segments => f.write_str("segment ids: zeros then ones"),
            Kind::Positions => f.write_str("positions 0..n"),
            Kind::SmallInts => f.write_str("integers in [0, 4)"),
            Kind::Normal => f.write_str("N(0, 1)"),
            Kind::Bools => f.write_str("random booleans"),
        }
    }
}

/// Vocabulary assumed for an `input_ids` input whose embedding table was not found.
const GUESSED_VOCAB: u64 = 100;

/// The inputs of `graph` that must be fed: graph inputs without an initializer (an input with
/// one is optional and keeps its default).
pub fn required_inputs(graph: &Graph) -> Vec<&adaptc_ir::ValueInfo> {
    graph.inputs.iter().filter(|v| graph.initializer(&v.name).is_none()).collect()
}

/// Resolves the concrete shape of every required input of `graph` and decides its kind.
pub fn specs(
    graph: &Graph,
    label: &str,
    dims: &BTreeMap<String, i64>,
    shapes: &[(String, Vec<i64>)],
) -> Result<Vec<InputSpec>> {
    let mut out = Vec::new();
    for v in required_inputs(graph) {
        let Some(ty) = v.ty.as_ref().filter(|t| t.is_tensor()) else {
            bail!("model {label}: input `{}` is not a tensor; verify feeds tensors only", v.name);
        };
        let Some(dtype) = ty.dtype() else { bail!("model {label}: input `{}` has an unknown element type", v.name) };
        let concrete = match shapes.iter().find(|(n, _)| n == &v.name) {
            Some((_, s)) => s.iter().map(|&d| d as usize).collect(),
            None => {
                let Some(declared) = ty.dims() else {
                    bail!(
                        "model {label}: input `{}` has no declared shape; give it with --shape {}:2x16",
                        v.name,
                        v.name
                    )
                };
                let mut concrete = Vec::with_capacity(declared.len());
                for (i, d) in declared.iter().enumerate() {
                    concrete.push(match d {
                        Dim::Known(n) if *n >= 0 => *n as usize,
                        Dim::Symbol(s) => match dims.get(s) {
                            Some(&n) => n as usize,
                            None => bail!(
                                "model {label}: input `{}` has the symbolic dimension `{s}`; give its size with --dims {s}=N",
                                v.name
                            ),
                        },
                        _ => bail!(
                            "model {label}: dimension {i} of input `{}` is unknown; give the input's shape with --shape {}:…",
                            v.name,
                            v.name
                        ),
                    });
                }
                concrete
            }
        };
        let kind = kind_of(graph, &v.name, dtype)?;
        out.push(InputSpec { name: v.name.clone(), dtype, dims: concrete, kind });
    }
    Ok(out)
}

fn kind_of(graph: &Graph, name: &str, dtype: DataType) -> Result<Kind> {
    let lower = name.to_lowercase();
    let is_int = matches!(
        dtype,
        DataType::Int64
            | DataType::Int32
            | DataType::Int16
            | DataType::Int8
            | DataType::Uint64
            | DataType::Uint32
            | DataType::Uint16
            | DataType::Uint8
    );
    Ok(match dtype {
        _ if lower.contains("mask") && (is_int || dtype.is_float() || dtype == DataType::Bool) => Kind::Mask,
        DataType::Bool => Kind::Bools,
        d if d.is_float() => Kind::Normal,
        _ if !is_int => bail!("input `{name}` has element type {dtype}, which verify cannot generate"),
        _ if lower.contains("token_type") || lower.contains("segment") => Kind::Segments,
        _ if lower.contains("position_ids") => Kind::Positions,
        _ => match embedding_table(graph, name) {
            Some((table, vocab)) => Kind::Ids { vocab, table: Some(table) },
            None if lower.contains("ids") => Kind::Ids { vocab: GUESSED_VOCAB, table: None },
            None => Kind::SmallInts,
        },
    })
}

/// The embedding table `value` indexes: a `Gather` (axis 0) whose data is an initializer and
/// whose indices are `value`, directly or through shape-only ops (Cast, Reshape, …).
fn embedding_table(graph: &Graph, value: &str) -> Option<(String, u64)> {
    let mut frontier = vec![value.to_string()];
    for _ in 0..4 {
        let mut next = Vec::new();
        for v in &frontier {
            for u in graph.uses(v) {
                let node = graph.node(u.node);
                let op = &node.op().op_type;
                if node.op().is("Gather") && u.slot == Some(1) && node.attr_int("axis", 0) == 0 {
                    if let Some(found) = table_rows(graph, node.input(0).unwrap_or_default()) {
                        return Some(found);
                    }
                }
                let passthrough = ["Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity"];
                if passthrough.contains(&op.as_str()) && u.slot == Some(0) {
                    next.extend(node.outputs().iter().filter(|o| !o.is_empty()).cloned());
                }
            }
        }
        frontier = next;
    }
    None
}

/// The initializer behind a Gather's data (directly, or through a dequantization or cast of
/// it) and its number of rows.
fn table_rows<'g>(graph: &'g Graph, mut value: &'g str) -> Option<(String, u64)> {
    for _ in 0..4 {
        if let Some(t) = graph.initializer(value) {
            return t.dims().first().map(|&rows| (value.to_string(), rows));
        }
        let (id, _) = graph.producer(value)?;
        let node = graph.node(id);
        if !["DequantizeLinear", "Cast", "Identity"].iter().any(|op| node.op().is(op)) {
            return None;
        }
        value = node.input(0)?;
    }
    None
}

/// Checks that models A and B take the same required inputs (names, element types, shapes) and
/// merges what was learned about them (the smaller vocabulary wins).
pub fn common(a: Vec<InputSpec>, b: Vec<InputSpec>) -> Result<Vec<InputSpec>> {
    let names = |s: &[InputSpec]| s.iter().map(|i| i.name.clone()).collect::<Vec<_>>().join(", ");
    let only_a: Vec<&str> = a.iter().filter(|i| !b.iter().any(|j| j.name == i.name)).map(|i| i.name.as_str()).collect();
    let only_b: Vec<&str> = b.iter().filter(|i| !a.iter().any(|j| j.name == i.name)).map(|i| i.name.as_str()).collect();
    if !only_a.is_empty() || !only_b.is_empty() {
        let mut diff = Vec::new();
        if !only_a.is_empty() {
            diff.push(format!("only A takes {}", only_a.join(", ")));
        }
        if !only_b.is_empty() {
            diff.push(format!("only B takes {}", only_b.join(", ")));
        }
        bail!(
            "the models take different inputs: {} (A: {}; B: {}); inputs with an initializer default are \
             optional and need not match",
            diff.join("; "),
            names(&a),
            names(&b)
        );
    }
    let mut out = Vec::with_capacity(a.len());
    for mut i in a {
        let Some(j) = b.iter().find(|j| j.name == i.name) else { continue };
        if i.dtype != j.dtype {
            bail!("input `{}` is {} in A but {} in B", i.name, i.dtype, j.dtype);
        }
        if i.dims != j.dims {
            bail!("input `{}` has shape {:?} in A but {:?} in B", i.name, i.dims, j.dims);
        }
        if let (Kind::Ids { vocab: va, .. }, Kind::Ids { vocab: vb, table }) = (&i.kind, &j.kind) {
            if vb < va {
                i.kind = Kind::Ids { vocab: *vb, table: table.clone() };
            }
        }
        out.push(i);
    }
    Ok(out)
}

/// A small deterministic generator (SplitMix64): the same seed gives the same inputs on every
/// machine, with no dependency.
pub struct Rng(u64);

impl Rng {
    /// A generator for input `name` in run `run` of seed `seed` (independent of input order).
    pub fn for_input(seed: u64, run: usize, name: &str) -> Rng {
        // FNV-1a of the name.
        let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ h ^ (run as u64).wrapping_mul(0xd1b5_4a32_d192_ed03))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[0, n)` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(f64::MIN_POSITIVE);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// The values of one input for run `run`, as f64 (converted to the element type later).
pub fn values(spec: &InputSpec, seed: u64, run: usize) -> Vec<f64> {
    let mut rng = Rng::for_input(seed, run, &spec.name);
    let n: usize = spec.dims.iter().product();
    let last = spec.dims.last().copied().unwrap_or(1).max(1);
    match &spec.kind {
        Kind::Ids { vocab, .. } => (0..n).map(|_| rng.below((*vocab).max(1)) as f64).collect(),
        Kind::SmallInts => (0..n).map(|_| rng.below(4) as f64).collect(),
        Kind::Normal => (0..n).map(|_| rng.normal()).collect(),
        Kind::Bools => (0..n).map(|_| (rng.next_u64() & 1) as f64).collect(),
        Kind::Positions => (0..n).map(|i| (i % last) as f64).collect(),
        Kind::Mask => {
            let mut v = Vec::with_capacity(n);
            for row in 0..n / last {
                // Row 0 is all ones; others end in up to half a row of zeros (never all zeros).
                let zeros = if row == 0 { 0 } else { rng.below(last as u64 / 2 + 1) as usize }.min(last - 1);
                v.extend((0..last).map(|i| if i < last - zeros { 1.0 } else { 0.0 }));
            }
            v
        }
        Kind::Segments => {
            let mut v = Vec::with_capacity(n);
            for _ in 0..n / last {
                let split = rng.below(last as u64 + 1) as usize;
                v.extend((0..last).map(|i| if i < split { 0.0 } else { 1.0 }));
            }
            v
        }
    }
}

/// A tract tensor of the spec's element type holding `values`.
pub fn tract_tensor(spec: &InputSpec, values: &[f64]) -> Result<TractTensor> {
    fn make<T: Datum + Copy>(dims: &[usize], values: &[f64], f: impl Fn(f64) -> T) -> Result<TractTensor> {
        let data: Vec<T> = values.iter().map(|&v| f(v)).collect();
        TractTensor::from_shape(dims, &data)
    }
    let d = &spec.dims;
    match spec.dtype {
        DataType::Float => make(d, values, |v| v as f32),
        DataType::Double => make(d, values, |v| v),
        DataType::Float16 => make(d, values, tract_onnx::prelude::f16::from_f64),
        DataType::Int64 => make(d, values, |v| v as i64),
        DataType::Int32 => make(d, values, |v| v as i32),
        DataType::Int16 => make(d, values, |v| v as i16),
        DataType::Int8 => make(d, values, |v| v as i8),
        DataType::Uint64 => make(d, values, |v| v as u64),
        DataType::Uint32 => make(d, values, |v| v as u32),
        DataType::Uint16 => make(d, values, |v| v as u16),
        DataType::Uint8 => make(d, values, |v| v as u8),
        DataType::Bool => make(d, values, |v| v != 0.0),
        other => bail!("input `{}`: tract has no {other} tensors", spec.name),
    }
}

/// tract's element type for `dtype` (the types [`tract_tensor`] makes).
pub fn datum_type(dtype: DataType) -> Option<DatumType> {
    Some(match dtype {
        DataType::Float => DatumType::F32,
        DataType::Double => DatumType::F64,
        DataType::Float16 => DatumType::F16,
        DataType::Int64 => DatumType::I64,
        DataType::Int32 => DatumType::I32,
        DataType::Int16 => DatumType::I16,
        DataType::Int8 => DatumType::I8,
        DataType::Uint64 => DatumType::U64,
        DataType::Uint32 => DatumType::U32,
        DataType::Uint16 => DatumType::U16,
        DataType::Uint8 => DatumType::U8,
        DataType::Bool => DatumType::Bool,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, dims: &[usize], kind: Kind) -> InputSpec {
        InputSpec { name: name.into(), dtype: DataType::Int64, dims: dims.to_vec(), kind }
    }

    #[test]
    fn values_are_deterministic_per_name_seed_and_run() {
        let s = spec("input_ids", &[2, 8], Kind::Ids { vocab: 50, table: None });
        assert_eq!(values(&s, 0, 0), values(&s, 0, 0));
        assert_ne!(values(&s, 0, 0), values(&s, 1, 0));
        assert_ne!(values(&s, 0, 0), values(&s, 0, 1));
        assert_ne!(values(&s, 0, 0), values(&spec("other", &[2, 8], s.kind.clone()), 0, 0));
        assert!(values(&s, 3, 0).iter().all(|&v| (0.0..50.0).contains(&v) && v.fract() == 0.0));
    }

    #[test]
    fn masks_are_ones_with_trailing_zeros_and_never_empty() {
        for seed in 0..20 {
            let v = values(&spec("attention_mask", &[4, 6], Kind::Mask), seed, 0);
            assert!(v[..6].iter().all(|&x| x == 1.0), "row 0 is all ones");
            for row in v.chunks(6) {
                let ones = row.iter().take_while(|&&x| x == 1.0).count();
                assert!(ones >= 1 && row[ones..].iter().all(|&x| x == 0.0), "{row:?}");
            }
        }
        let v = values(&spec("token_type_ids", &[3, 5], Kind::Segments), 1, 0);
        for row in v.chunks(5) {
            let zeros = row.iter().take_while(|&&x| x == 0.0).count();
            assert!(row[zeros..].iter().all(|&x| x == 1.0), "{row:?}");
        }
        assert_eq!(values(&spec("position_ids", &[2, 3], Kind::Positions), 0, 0), [0.0, 1.0, 2.0, 0.0, 1.0, 2.0]);
    }

    #[test]
    fn normal_values_look_standard() {
        let s = InputSpec { name: "x".into(), dtype: DataType::Float, dims: vec![20000], kind: Kind::Normal };
        let v = values(&s, 0, 0);
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 0.05 && (var - 1.0).abs() < 0.05, "mean {mean}, var {var}");
    }
}
