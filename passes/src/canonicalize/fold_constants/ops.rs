//! Reference evaluators for the ops `fold-constants` folds, one function each, following the
//! ONNX operator definitions (opset differences noted where they matter).

use adaptc_ir::{DataType, Node, Tensor};

use super::array::{broadcast_index, broadcast_shape, numel, strided, strides, Arr, Data};
use super::Skip;

/// What an evaluator sees: the node, its constant inputs (`None` for omitted optional ones),
/// the default-domain opset and the size cap on results.
pub(crate) struct Cx<'a> {
    pub node: &'a Node,
    pub inputs: &'a [Option<&'a Tensor>],
    pub opset: i64,
    pub max_bytes: u64,
}

fn invalid(reason: impl Into<String>) -> Skip {
    Skip::Invalid(reason.into())
}

impl Cx<'_> {
    fn input(&self, slot: usize) -> Option<&Tensor> {
        self.inputs.get(slot).copied().flatten()
    }

    fn required(&self, slot: usize) -> Result<&Tensor, Skip> {
        self.input(slot).ok_or_else(|| invalid(format!("input {slot} is missing")))
    }

    fn arr(&self, slot: usize) -> Result<Arr, Skip> {
        Arr::from_tensor(self.required(slot)?)
    }

    /// An integer (int64/int32) input, flattened.
    fn ints(&self, slot: usize) -> Result<Vec<i64>, Skip> {
        self.arr(slot)?.ints().ok_or_else(|| invalid(format!("input {slot} is not an integer tensor")))
    }

    fn attr_ints(&self, name: &str) -> Option<Vec<i64>> {
        self.node.attr(name).and_then(|a| a.as_ints()).map(<[i64]>::to_vec)
    }

    fn expect_inputs(&self, min: usize, max: usize) -> Result<(), Skip> {
        let n = self.inputs.len();
        if n < min || n > max {
            return Err(invalid(format!("has {n} inputs, expected {min} to {max}")));
        }
        Ok(())
    }

    /// Refuses results over the size cap (checked before they are computed).
    fn check_size(&self, dims: &[usize], dtype: DataType) -> Result<(), Skip> {
        let n = numel(dims).ok_or(Skip::TooLarge)?;
        match dtype.storage_bytes(n as u64) {
            Some(b) if b <= self.max_bytes => Ok(()),
            _ => Err(Skip::TooLarge),
        }
    }

    fn finish(&self, arr: Arr) -> Result<Tensor, Skip> {
        self.check_size(&arr.dims, arr.data.dtype())?;
        arr.into_tensor("")
    }
}

/// Evaluates `cx.node`.
pub(crate) fn eval(cx: &Cx<'_>) -> Result<Tensor, Skip> {
    match cx.node.op().op_type.as_str() {
        "Identity" => identity(cx),
        "Cast" => cast(cx),
        "Shape" => shape(cx),
        "Unsqueeze" => unsqueeze(cx),
        "Squeeze" => squeeze(cx),
        "Reshape" => reshape(cx),
        "Concat" => concat(cx),
        "Gather" => gather(cx),
        "Slice" => slice(cx),
        "Transpose" => transpose(cx),
        "Range" => range(cx),
        "Add" | "Sub" | "Mul" | "Div" => arithmetic(cx),
        "Neg" => neg(cx),
        "Equal" => equal(cx),
        "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual" => compare(cx),
        "Max" | "Min" => max_min(cx),
        "And" | "Or" | "Xor" => logical(cx),
        "Not" => not(cx),
        "IsNaN" => is_nan(cx),
        "Expand" => expand(cx),
        "GatherND" => gather_nd(cx),
        "Where" => where_(cx),
        _ => Err(Skip::Unsupported),
    }
}

/// Normalizes an axis in `[-rank, rank-1]`.
fn axis(a: i64, rank: usize, what: &str) -> Result<usize, Skip> {
    let r = rank as i64;
    let n = if a < 0 { a + r } else { a };
    if (0..r).contains(&n) {
        Ok(n as usize)
    } else {
        Err(invalid(format!("{what} {a} is out of range for rank {rank}")))
    }
}

/// Normalizes a set of axes, refusing duplicates.
fn axes_set(axes: &[i64], rank: usize, what: &str) -> Result<Vec<usize>, Skip> {
    let mut out = Vec::with_capacity(axes.len());
    for &a in axes {
        let n = axis(a, rank, what)?;
        if out.contains(&n) {
            return Err(invalid(format!("{what} {a} is repeated")));
        }
        out.push(n);
    }
    Ok(out)
}

fn identity(cx: &Cx<'_>) -> Result<Tensor, Skip> {
    cx.expect_inputs(1, 1)?;
    let t = cx.required(0)?;
    if t.byte_len() > cx.max_bytes {
        return Err(Skip::TooLarge);
    }
    let mut t = t.clone();
    t.name.clear();
    Ok(t)
}

fn cast(cx: &Cx<'_>) -> Result<Tensor, Skip> {
    cx.expect_inputs(1, 1)?;
    let to = cx.node.attr("to").and_then(|a| a.as_int()).ok_or_else(|| invalid("attribute `to` is missing"))?;
    let to = i32::try_from(to)
        .ok()
        .and_then(DataType::from_code)
        .ok_or_else(|| invalid(format!("`to` = {to} is not a type")))?;
    let x = cx.arr(0)?;
    cx.check_size(&x.dims, to)?;
    let data = match (&x.data, to) {
        (Data::F32(v), DataType::Float) => Data::F32(v.clone()),
        // Float to integer truncates toward zero (out-of-range values are undefined in ONNX;
        // Rust saturates).
        (Data::F32(v), DataType::Int64) => Data::I64(v.iter().map(|&x| x as i64).collect()),
        (Data::F32(v), DataType::Int32) => Data::I32(v.iter().map(|&x| x as i32).collect()),
        (Data::F32(v), DataType::Bool) => Data::Bool(v.iter().map(|&x| x != 0.0).collect()),
        (Data::I64(v), DataType::Float) => Data::F32(v.iter().map(|&x| x as f32).collect()),
        (Data::I64(v), DataType::Int64) => Data::I64(v.clone()),
        // Narrowing keeps the low bits, as C and numpy do.
        (Data::I64(v), DataType::Int32) => Data::I32(v.iter().map(|&x| x as i32).collect()),
        (Data::I64(v), DataType::Bool) => Data::Bool(v.iter().map(|&x| x != 0).collect()),
        (Data::I32(v), DataType::Float) => Data::F32(v.iter().map(|&x| x as f32).collect()),
        (Data::I32(v), DataType::Int64) => Data::I64(v.iter().map(|&x| i64::from(x)).collect()),
        (Data::I32(v), DataType::Int32) => Data::I32(v.clone()),
        (Data::I32(v), DataType::Bool) => Data::Bool(v.iter().map(|&x| x != 0).collect()),
        (Data::Bool(v), DataType::Float) => Data::F32(v.iter().map(|&b| f32::from(u8::from(b))).collect()),
        (Data::Bool(v), DataType::Int64) => Data::I64(v.iter().map(|&b| i64::from(b)).collect()),
        (Data::Bool(v), DataType::Int32) => Data::I32(v.iter().map(|&b| i32::from(b)).collect()),
        (Data::Bool(v), DataType::Bool) => Data::Bool(v.clone()),
        _ => return Err(Skip::Unsupported),
    };
    cx.finish(Arr::new(x.dims, data))
}

fn shape(cx: &Cx<'_>) -> Result<Tensor, Skip> {
    cx.expect_inputs(1, 1)?;
    shape_of(cx, cx.required(0)?.dims())
}

/// `Shape` of a tensor with the given dims (a constant's, or a declared type's when every
/// dimension is known).
pub(crate) fn shape_of(cx: &Cx<'_>, dims: &[u64]) -> Result<Tensor, Skip> {
    let rank = dims.len() as i64;
    let clamp = |v: i64| (if v < 0 { v + rank } else { v }).clamp(0, rank) as usize;
    let (start, end) = if cx.opset >= 15 {
        (clamp(cx.node.attr_int("start", 0)), clamp(cx.node.attr_int("end", rank)))
    } else {
        (0, dims.len())
    };
    let values: Vec<i64> = dims.get(start..end.max(start)).unwrap_or_default().iter().map(|&d| d as i64).collect();
    cx.finish(Arr::new(vec![values.len()], Data::I64(values)))
}

fn unsqueeze(cx: &Cx<'_>) -> Result<Tensor, Skip> {
    let axes = if cx.opset >= 13 {
        cx.expect_inputs(2, 2)?;
        cx.ints(1)?
    } else {
        cx.expect_inputs(1, 1)?;
        cx.attr_ints("axes").ok_or_else(|| invalid("attribute `axes` is missing"))?
    };
    let x = cx.arr(0)?;
    let rank = x.rank() + axes.len();
    let axes = axes_set(&axes, rank, "axis")?;
    let mut src = x.dims.iter();
    let dims = (0..rank).map(|i| if axes.contains(&i) { 1 } else { src.next().copied().unwrap_or(1) }).collect();
    cx.finish(Arr::new(dims, x.data))
}

fn squeeze(cx: &Cx<'_>) -> Result<Tensor, Skip> {
    let axes = if cx.opset >= 13 {
        cx.expect_inputs(1, 2)?;
        match cx.input(1) {
            Some(_) => Some(cx.ints(1)?),
            None => None,
        }
    } else {
        cx.expect_inputs(1, 1)?;
        cx.attr_ints("axes")
    };
    // An empty axes list squeezes every 1 in onnxruntime but nothing in the ONNX reference and
    // shape inference: ambiguous, so left alone.
    if axes.as_ref().is_some_and(Vec::is_empty) {
        return Err(Skip::Unsupported);
    }
    let x = cx.arr(0)?;
    let dims = match axes {
        None => x.dims.iter().copied().filter(|&d| d != 1).collect(),
        Some(axes) => {
            let axes = axes_set(&axes, x.rank(), "axis")?;
            if let Some(&a) = axes.iter().find(|&&a| x.dims[a] != 1) {
                return Err(invalid(format!("cannot squeeze axis {a} of size {}", x.dims[a])));
            }
            x.dims.iter().enumerate().filter(|(i, _)| !axes.contains(i)).map(|(_, &d)| d).collect()
        }
    };
    cx.finish(Arr::new(dims, x.data))
}

fn reshape(cx: &Cx<'_>) -> Result<Tensor, Skip> {
    if cx.opset < 5 {
        return Err(Skip::Unsupported);
    }
    cx.expect_inputs(2, 2)?;
    let shape = cx.ints(1)?;
    let allowzero = cx.opset >= 14 && cx.node.attr_int("allowzero", 0) != 0;
    let x = cx.arr(0)?;
    let mut dims = Vec::with_capacity(shape.len());
    let mut infer = None;
    for (i, &s) in shape.iter().enumerate() {
        match s {
            -1 if infer.is_some() => return Err(invalid("shape has more than one -1")),
            -1 => {
                infer = Some(i);
                dims.push(1);
            }
            0 if !allowzero => {
                let d = x.dims.get(i).ok_or_else(|| {
                    invalid(format!("shape copies dimension {i}, but the input has rank {}", x.rank()))
                })?;
                dims.push(*d);
            }
            s if s >= 0 => dims.push(usize::try_from(s).map_err(|_| Skip::TooLarge)?),
            s => return Err(invalid(format!("shape has the negative dimension {s}"))),
        }
    }
    let total = x.numel();
    if let Some(i) = infer {
        if allowzero && shape.contains(&0) {
            return Err(invalid("shape has both -1 and 0 with allowzero=1"));
        }
        let known = numel(&dims).ok_or(Skip::TooLarge)?;
        if known == 0 || total % known != 0 {
            return Err(invalid(format!("cannot infer the -1 in {shape:?} for {total} elements")));
        }
        dims[i] = total / known;
    } else if numel(&dims) != Some(total) {
        return Err(invalid(format!("cannot reshape {:?} to {shape:?}", x.dims)));
    }
    cx.finish(Arr::new(dims, x.data))
}

fn concat(cx: &Cx<'_>) -> Result<Tensor, Skip> {
    if cx.inputs.is_empty() {
        return Err(invalid("has no inputs"));
    }
    let parts = (0..cx.inputs.len()).map(|i| cx.arr(i)).collect::<Result<Vec<_>, _>>()?;
    let first = &parts[0];
    let rank = first.rank();
    if rank == 0 {
        return Err(invalid("cannot concatenate scalars"));
    }
    let axis_attr = match cx.node.attr("axis").and_then(|a| a.as_int()) {
        Some(a) => a,
        None if cx.opset < 4 => 1,
        None => return Err(invalid("attribute `axis` is missing")),
    };
    let ax = axis(axis_attr, rank, "axis")?;
    let mut dims = first.dims.clone();
    dims[ax] = 0;
    for p in &parts {
        let same_rest = p.rank() == rank && p.dims.iter().enumerate().all(|(i, &d)| i == ax || d == first.dims[i]);
        if !same_rest {
            return Err(invalid(format!("cannot concatenate {:?} and {:?} on axis {ax}", first.dims, p.dims)));
        }
        if p.data.dtype() != first.data.dtype() {
            return Err(invalid("inputs have different types"));
        }
        dims[ax] += p.dims[ax];
    }
    cx.check_size(&dims, first.data.dtype())?;
    let outer: usize = dims[..ax].iter().product();
    let inner: usize = dims[ax + 1..].iter().product();
    let mut offsets = Vec::with_capacity(parts.len());
    let mut offset = 0;
    for p in &parts {
        offsets.push(offset);
        offset += p.numel();
    }
    let mut idx = Vec::with_capacity(numel(&dims).unwrap_or(0));
    for o in 0..outer {
        for (p, &start) in parts.iter().zip(&offsets) {
            let chunk = p.dims[ax] * inner;
            idx.extend(start + o * chunk..start + (o + 1) * chunk);
        }
    }
    let all = Data::concat(&parts.iter().map(|p| &p.data).collect::<Vec<_>>())
        .ok_or_else(|| invalid("inputs have different types"))?;
    cx.finish(Arr::new(dims, all.take(&idx)))
}

fn gather(cx: &Cx<'_>) -> Result<Tensor, Skip> {
    cx.expect_inputs(2, 2)?;
    let indices = cx.arr(1)?;
    let idx_values = indices.ints().ok_or_else(|| invalid("indices are not an integer tensor"))?;
    let x = cx.arr(0)?;
    if x.rank() == 0 {
        return Err(invalid("cannot gather from a scalar"));
    }
    let ax = axis(cx.node.attr_int("axis", 0), x.rank(), "axis")?;
    let size = x.dims[ax];
    let idx_values = idx_values
        .iter()
        .map(|&i| {
            let n = if i < 0 { i + size as i64 } else { i };
            if (0..size as i64).contains(&n) {
                Ok(n as usize)
            } else {
                Err(invalid(format!("index {i} is out of range for axis {ax} of size {size}")))
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut dims = x.dims[..ax].to_vec();
    dims.extend(&indices.dims);
    dims.extend(&x.dims[ax + 1..]);
    cx.check_size(&dims, x.data.dtype())?;
    let outer: usize = x.dims[..ax].iter().product();
    let inner: usize = x.dims[ax + 1..].iter().product();
    let mut map = Vec::with_capacity(numel(&dims).unwrap_or(0));
    for o in 0..outer {
        for &j in &idx_values {
            let base = (o * size + j) * inner;
            map.extend(base..base + inner);
        }
    }
    cx.finish(Arr::new(dims, x.data.take(&map)))
}

/// `ceil(a / b)` for `b > 0`, at least 0.
fn ceil_div_nonneg(a: i128, b: i128) -> i128 {
    if a <= 0 {
        0
    } else {
        (a + b - 1) / b
    }
}

fn slice(cx: &Cx<'_>) -> Result<Tensor, Skip> {
    let (starts, ends, axes, steps) = if cx.opset < 10 {
        cx.expect_inputs(1, 1)?;
        let starts = cx.attr_ints("starts").ok_or_else(|| invalid("attribute `starts` is missing"))?;
        let ends = cx.attr_ints("ends").ok_or_else(|| invalid("attribute `ends` is missing"))?;
        (starts, ends, cx.attr_ints("axes"), None)
    } else {
        cx.expect_inputs(3, 5)?;
        let axes = if cx.input(3).is_some() { Some(cx.ints(3)?) } else { None };
        let steps = if cx.input(4).is_some() { Some(cx.ints(4)?) } else { None };
        (cx.ints(1)?, cx.ints(2)?, axes, steps)
    };
    let n = starts.len();
    let axes = axes.unwrap_or_else(|| (0..n as i64).collect());
    let steps = steps.unwrap_or_else(|| vec![1; n]);
    if ends.len() != n || axes.len() != n || steps.len() != n {
        return Err(invalid("starts, ends, axes and steps have different lengths"));
    }
    let x = cx.arr(0)?;
    let axes = axes_set(&axes, x.rank(), "axis")?;
    let src = strides(&x.dims);
    let mut dims = x.dims.clone();
    let mut view: Vec<i128> = src.iter().map(|&s| s as i128).collect();
    let mut base: i128 = 0;
    for k in 0..n {
        let a = axes[k];
        let step = i128::from(steps[k]);
        if step == 0 {
            return Err(invalid("a step is 0"));
        }
        let dim = x.dims[a] as i128;
        let mut start = i128::from(starts[k]);
        let mut end = i128::from(ends[k]);
        if start < 0 {
            start += dim;
        }
        if end < 0 {
            end += dim;
        }
        let len = if step > 0 {
            start = start.max(0).min(dim);
            end = end.max(0).min(dim);
            ceil_div_nonneg(end - start, step)
        } else {
            start = start.max(0).min(dim - 1);
            end = end.max(-1).min(dim - 1);
            ceil_div_nonneg(start - end, -step)
        };
        dims[a] = len as usize;
        if len > 0 {
            base += start * src[a] as i128;
        }
        // A dimension of length 0 or 1 never advances, and a huge step would overflow.
        view[a] = if len > 1 { step * src[a] as i128 } else { 0 };
    }
    cx.check_size(&dims, x.data.dtype())?;
    let view: Vec<isize> =
        view.iter().map(|&v| isize::try_from(v).map_err(|_| Skip::TooLarge)).collect::<Result<_, _>>()?;
    let base = isize::try_from(base).map_err(|_| Skip::TooLarge)?;
    let map = strided(&dims, &view, base);
    cx.finish(Arr::new(dims, x.data.take(&map)))
}

fn transpose(cx: &Cx<'_>) -> Result<Tensor, Skip> {
    cx.expect_inputs(1, 1)?;
    let x = cx.arr(0)?;
    let rank = x.rank();
    let perm: Vec<usize> = match cx.attr_ints("perm") {
        None => (0..rank).rev().collect(),
        Some(p) => {
            let mut seen = vec![false; rank];
            let mut out = Vec::with_capacity(p.len());
            for &a in &p {
                match usize::try_from(a).ok().filter(|&a| a < rank && !seen[a]) {
                    Some(a) => {
                        seen[a] = true;
                        out.push(a);
                    }
                    None => return Err(invalid(format!("perm {p:?} is not a permutation of rank {rank}"))),
                }
            }
            if out.len() != rank {
                return Err(invalid(format!("perm {p:?} is not a permutation of rank {rank}")));
            }
            out
        }
    };
    let src = strides(&x.dims);
    let dims: Vec<usize> = perm.iter().map(|&p| x.dims[p]).collect();
    let view: Vec<isize> = perm.iter().map(|&p| src[p] as isize).collect();
    cx.check_size(&dims, x.data.dtype())?;
    let map = strided(&dims, &view, 0);
    cx.finish(Arr::new(dims, x.data.take(&map)))
}

fn range(cx: &Cx<'_>) -> Result<Tensor, Skip> {
    cx.expect_inputs(3, 3)?;
    let (s, l, d) = (cx.arr(0)?, cx.arr(1)?, cx.arr(2)?);
    if s.numel() != 1 || l.numel() != 1 || d.numel() != 1 {
        return Err(invalid("start, limit and delta must be scalars"));
    }
    let dtype = s.data.dtype();
    if l.data.dtype() != dtype || d.data.dtype() != dtype {
        return Err(invalid("start, limit and delta have different types"));
    }
    // number_of_elements = max(ceil((limit - start) / delta), 0)
    let count_check = |n: i128| -> Result<usize, Skip> {
        let n = usize::try_from(n.max(0)).map_err(|_| Skip::TooLarge)?;
        cx.check_size(&[n], dtype)?;
        Ok(n)
    };
    let data = match (&s.data, &l.data, &d.data) {
        (Data::F32(s), Data::F32(l), Data::F32(d)) => {
            let (s, l, d) = (s[0], l[0], d[0]);
            if d == 0.0 {
                return Err(invalid("delta is 0"));
            }
            let n = (f64::from(l - s) / f64::from(d)).ceil();
            if !n.is_finite() {
                return Err(invalid("the number of elements is not finite"));
            }
            let n = count_check(n.min(i128::MAX as f64) as i128)?;
            // Accumulates like the ONNX function body and onnxruntime do.
            let mut v = Vec::with_capacity(n);
            let mut x = s;
            for _ in 0..n {
                v.push(x);
                x += d;
            }
            Data::F32(v)
        }
        _ => {
            let (Some(s), Some(l), Some(d)) = (s.ints(), l.ints(), d.ints()) else {
                return Err(Skip::Unsupported);
            };
            let (s, l, d) = (i128::from(s[0]), i128::from(l[0]), i128::from(d[0]));
            if d == 0 {
                return Err(invalid("delta is 0"));
            }
            let (num, den) = if d > 0 { (l - s, d) } else { (s - l, -d) };
            let n = count_check(ceil_div_nonneg(num, den))?;
            let values = (0..n as i128).map(|i| s + i * d);
            match dtype {
                DataType::Int64 => Data::I64(values.map(|v| v as i64).collect()),
                _ => Data::I32(values.map(|v| v as i32).collect()),
            }
        }
    };
    let n = data.len();
    cx.finish(Arr::new(vec![n], data))
}

/// Broadcasts the inputs of an elementwise op: the output shape and, per input, the source
/// position of every output element. Before opset 7, shapes must be equal (the legacy
/// `broadcast` attribute is not evaluated).
fn broadcast(cx: &Cx<'_>, inputs: &[&Arr]) -> Result<(Vec<usize>, Vec<Vec<usize>>), Skip> {
    if cx.opset < 7 {
        if cx.node.attr_int("broadcast", 0) != 0 {
            return Err(Skip::Unsupported);
        }
        if inputs.iter().any(|a| a.dims != inputs[0].dims) {
            return Err(invalid("shapes differ and broadcasting needs opset 7"));
        }
    }
    let shapes: Vec<&[usize]> = inputs.iter().map(|a| a.dims.as_slice()).collect();
    let out = broadcast_shape(&shapes)?;
    numel(&out).ok_or(Skip::TooLarge)?;
    let maps = inputs.iter().map(|a| broadcast_index(&out, &a.dims)).collect();
    Ok((out, maps))
}

fn zip_with<T: Copy, U>(x: &[T], y: &[T], ix: &[usize], iy: &[usize], f: impl Fn(T, T) -> Option<U>) -> Option<Vec<U>> {
    ix.iter().zip(iy).map(|(&i, &j)| f(x[i], y[j])).collect()
}

fn arithmetic(cx: &Cx<'_>) -> Result<Tensor, Skip> {
    cx.expect_inputs(2, 2)?;
    let (a, b) = (cx.arr(0)?, cx.arr(1)?);
    if a.data.dtype() != b.data.dtype() {
        return Err(invalid("inputs have different types"));
    }
    if !matches!(a.data, Data::F32(_) | Data::I64(_) | Data::I32(_)) {
        return Err(Skip::Unsupported);
    }
    let op = cx.node.op().op_type.as_str();
    let (dims, maps) = broadcast(cx, &[&a, &b])?;
    cx.check_size(&dims, a.data.dtype())?;
    let (ia, ib) = (&maps[0], &maps[1]);
    let div0 = || invalid("integer division by zero (or overflow)");
    macro_rules! int_op {
        ($x:expr, $y:expr) => {
            match op {
                "Add" => zip_with($x, $y, ia, ib, |p, q| Some(p.wrapping_add(q))),
                "Sub" => zip_with($x, $y, ia, ib, |p, q| Some(p.wrapping_sub(q))),
                "Mul" => zip_with($x, $y, ia, ib, |p, q| Some(p.wrapping_mul(q))),
                _ => zip_with($x, $y, ia, ib, |p, q| p.checked_div(q)),
            }
        };
    }
    let data = match (&a.data, &b.data) {
        (Data::F32(x), Data::F32(y)) => Data::F32(
            match op {
                "Add" => zip_with(x, y, ia, ib, |p, q| Some(p + q)),
                "Sub" => zip_with(x, y, ia, ib, |p, q| Some(p - q)),
                "Mul" => zip_with(x, y, ia, ib, |p, q| Some(p * q)),
                _ => zip_with(x, y, ia, ib, |p, q| Some(p / q)),
            }
            .ok_or_else(div0)?,
        ),
        (Data::I64(x), Data::I64(y)) => Data::I64(int_op!(x, y).ok_or_else(div0)?),
        (Data::I32(x), Data::I32(y)) => Data::I32(int_op!(x, y).ok_or_else(div0)?),
        _ => return Err(Skip::Unsupported),
    };
    cx.finish(Arr::new(dims, data))
}

fn neg(cx: &Cx<'_>) -> Result<Tensor, Skip> {
    cx.expect_inputs(1, 1)?;
    let x = cx.arr(0)?;
    let data = match &x.data {
        Data::F32(v) => Data::F32(v.iter().map(|&x| -x).collect()),
        Data::I64(v) => Data::I64(v.iter().map(|&x| x.wrapping_neg()).collect()),
        Data::I32(v) => Data::I32(v.iter().map(|&x| x.wrapping_neg()).collect()),
        _ => return Err(Skip::Unsupported),
    };
    cx.finish(Arr::new(x.dims, data))
}

fn equal(cx: &Cx<'_>) -> Result<Tensor, Skip> {
    cx.expect_inputs(2, 2)?;
    let (a, b) = (cx.arr(0)?, cx.arr(1)?);
    if a.data.dtype() != b.data.dtype() {
        return Err(invalid("inputs have different types"));
    }
    if matches!(a.data, Data::Raw { .. }) {
        return Err(Skip::Unsupported);
    }
    let (dims, maps) = broadcast(cx, &[&a, &b])?;
    cx.check_size(&dims, DataType::Bool)?;
    let (ia, ib) = (&maps[0], &maps[1]);
    let eq = match (&a.data, &b.data) {
        (Data::F32(x), Data::F32(y)) => zip_with(x, y, ia, ib, |p, q| Some(p == q)),
        (Data::I64(x), Data::I64(y)) => zip_with(x, y, ia, ib, |p, q| Some(p == q)),
        (Data::I32(x), Data::I32(y)) => zip_with(x, y, ia, ib, |p, q| Some(p == q)),
        (Data::Bool(x), Data::Bool(y)) => zip_with(x, y, ia, ib, |p, q| Some(p == q)),
        _ => None,
    }
    .ok_or(Skip::Unsupported)?;
    cx.finish(Arr::new(dims, Data::Bool(eq)))
}

fn where_(cx: &Cx<'_>) -> Result<Tensor, Skip> {
    cx.expect_inputs(3, 3)?;
    let (c, x, y) = (cx.arr(0)?, cx.arr(1)?, cx.arr(2)?);
    let Data::Bool(cond) = &c.data else {
        return Err(invalid("the condition is not a bool tensor"));
    };
    if x.data.dtype() != y.data.dtype() {
        return Err(invalid("X and Y have different types"));
    }
    let (dims, maps) = broadcast(cx, &[&c, &x, &y])?;
    cx.check_size(&dims, x.data.dtype())?;
    let nx = x.data.len();
    let map: Vec<usize> = maps[0]
        .iter()
        .zip(&maps[1])
        .zip(&maps[2])
        .map(|((&ic, &ix), &iy)| if cond[ic] { ix } else { nx + iy })
        .collect();
    let both = Data::concat(&[&x.data, &y.data]).ok_or_else(|| invalid("X and Y have different types"))?;
    cx.finish(Arr::new(dims, both.take(&map)))
}

/// `Less`, `Greater`, `LessOrEqual`, `GreaterOrEqual` with broadcasting.
fn compare(cx: &Cx<'_>) -> Result<Tensor, Skip> {
    cx.expect_inputs(2, 2)?;
    let (a, b) = (cx.arr(0)?, cx.arr(1)?);
    if a.data.dtype() != b.data.dtype() {
        return Err(invalid("inputs have different types"));
    }
    let (dims, maps) = broadcast(cx, &[&a, &b])?;
    cx.check_size(&dims, DataType::Bool)?;
    let (ia, ib) = (&maps[0], &maps[1]);
    let op = cx.node.op().op_type.as_str();
    fn cmp<T: PartialOrd + Copy>(op: &str, p: T, q: T) -> bool {
        match op {
            "Less" => p < q,
            "Greater" => p > q,
            "LessOrEqual" => p <= q,
            _ => p >= q,
        }
    }
    let out = match (&a.data, &b.data) {
        (Data::F32(x), Data::F32(y)) => zip_with(x, y, ia, ib, |p, q| Some(cmp(op, p, q))),
        (Data::I64(x), Data::I64(y)) => zip_with(x, y, ia, ib, |p, q| Some(cmp(op, p, q))),
        (Data::I32(x), Data::I32(y)) => zip_with(x, y, ia, ib, |p, q| Some(cmp(op, p, q))),
        _ => None,
    }
    .ok_or(Skip::Unsupported)?;
    cx.finish(Arr::new(dims, Data::Bool(out)))
}

/// Variadic `Max` / `Min` with broadcasting (NaN propagates for floats, as in ONNX).
fn max_min(cx: &Cx<'_>) -> Result<Tensor, Skip> {
    if cx.inputs.is_empty() {
        return Err(invalid("has no inputs"));
    }
    let arrs: Vec<Arr> = (0..cx.inputs.len()).map(|i| cx.arr(i)).collect::<Result<_, _>>()?;
    if arrs.iter().any(|a| a.data.dtype() != arrs[0].data.dtype()) {
        return Err(invalid("inputs have different types"));
    }
    // Max-6/Min-6 (and older) need equal shapes; broadcasting comes with opset 8.
    if cx.opset < 8 && arrs.iter().any(|a| a.dims != arrs[0].dims) {
        return Err(invalid("shapes differ and broadcasting needs opset 8"));
    }
    let is_max = cx.node.op().op_type == "Max";
    let refs: Vec<&Arr> = arrs.iter().collect();
    let (dims, maps) = broadcast(cx, &refs)?;
    cx.check_size(&dims, arrs[0].data.dtype())?;
    let n = numel(&dims).ok_or(Skip::TooLarge)?;
    macro_rules! fold {
        ($variant:ident, $pick:expr) => {{
            let vals: Vec<&Vec<_>> = arrs
                .iter()
                .map(|a| match &a.data {
                    Data::$variant(v) => Ok(v),
                    _ => Err(Skip::Unsupported),
                })
                .collect::<Result<_, _>>()?;
            Data::$variant(
                (0..n)
                    .map(|k| {
                        let mut acc = vals[0][maps[0][k]];
                        for (v, m) in vals.iter().zip(&maps).skip(1) {
                            acc = $pick(acc, v[m[k]]);
                        }
                        acc
                    })
                    .collect(),
            )
        }};
    }
    let pick_f = |p: f32, q: f32| {
        if p.is_nan() || q.is_nan() {
            f32::NAN
        } else if (q > p) == is_max {
            q
        } else {
            p
        }
    };
    let data = match arrs[0].data {
        Data::F32(_) => fold!(F32, pick_f),
        Data::I64(_) => fold!(I64, |p: i64, q: i64| if is_max { p.max(q) } else { p.min(q) }),
        Data::I32(_) => fold!(I32, |p: i32, q: i32| if is_max { p.max(q) } else { p.min(q) }),
        _ => return Err(Skip::Unsupported),
    };
    cx.finish(Arr::new(dims, data))
}

fn logical(cx: &Cx<'_>) -> Result<Tensor, Skip> {
    cx.expect_inputs(2, 2)?;
    let (a, b) = (cx.arr(0)?, cx.arr(1)?);
    let (Data::Bool(x), Data::Bool(y)) = (&a.data, &b.data) else {
        return Err(invalid("inputs are not bool tensors"));
    };
    let (dims, maps) = broadcast(cx, &[&a, &b])?;
    cx.check_size(&dims, DataType::Bool)?;
    let op = cx.node.op().op_type.as_str();
    let out = zip_with(x, y, &maps[0], &maps[1], |p, q| {
        Some(match op {
            "And" => p && q,
            "Or" => p || q,
            _ => p != q,
        })
    })
    .ok_or(Skip::Unsupported)?;
    cx.finish(Arr::new(dims, Data::Bool(out)))
}

fn not(cx: &Cx<'_>) -> Result<Tensor, Skip> {
    cx.expect_inputs(1, 1)?;
    let x = cx.arr(0)?;
    let Data::Bool(v) = &x.data else {
        return Err(invalid("input is not a bool tensor"));
    };
    let out = v.iter().map(|b| !b).collect();
    cx.finish(Arr::new(x.dims, Data::Bool(out)))
}

fn is_nan(cx: &Cx<'_>) -> Result<Tensor, Skip> {
    cx.expect_inputs(1, 1)?;
    let x = cx.arr(0)?;
    let Data::F32(v) = &x.data else {
        return Err(Skip::Unsupported);
    };
    let out = v.iter().map(|f| f.is_nan()).collect();
    cx.finish(Arr::new(x.dims, Data::Bool(out)))
}

/// `Expand(x, shape)`: bidirectional broadcast of `x` to `shape`.
fn expand(cx: &Cx<'_>) -> Result<Tensor, Skip> {
    cx.expect_inputs(2, 2)?;
    let x = cx.arr(0)?;
    let shape = cx.ints(1)?;
    let mut target = Vec::with_capacity(shape.len());
    for s in shape {
        target.push(usize::try_from(s).map_err(|_| invalid(format!("shape has the negative dimension {s}")))?);
    }
    let dims = broadcast_shape(&[x.dims.as_slice(), target.as_slice()])?;
    cx.check_size(&dims, x.data.dtype())?;
    let map = broadcast_index(&dims, &x.dims);
    cx.finish(Arr::new(dims, x.data.take(&map)))
}

/// `GatherND(data, indices)` with `batch_dims`.
fn gather_nd(cx: &Cx<'_>) -> Result<Tensor, Skip> {
    cx.expect_inputs(2, 2)?;
    let data = cx.arr(0)?;
    let idx_arr = cx.arr(1)?;
    let indices = idx_arr.ints().ok_or_else(|| invalid("indices are not integers"))?;
    let b = usize::try_from(cx.node.attr_int("batch_dims", 0)).map_err(|_| invalid("negative batch_dims"))?;
    let (r, q) = (data.dims.len(), idx_arr.dims.len());
    if q == 0 || b >= q || b >= r {
        return Err(invalid("batch_dims must be smaller than the ranks of data and indices"));
    }
    let k = idx_arr.dims[q - 1];
    if k == 0 || b + k > r || data.dims[..b] != idx_arr.dims[..b] {
        return Err(invalid("indices do not fit the data's shape"));
    }
    let mut out_dims: Vec<usize> = idx_arr.dims[..q - 1].to_vec();
    out_dims.extend_from_slice(&data.dims[b + k..]);
    cx.check_size(&out_dims, data.data.dtype())?;
    let inner: usize = data.dims[b + k..].iter().product();
    let batch: usize = data.dims[..b].iter().product();
    let per_batch_tuples: usize = idx_arr.dims[b..q - 1].iter().product();
    let data_strides = strides(&data.dims);
    let mut map = Vec::with_capacity(numel(&out_dims).unwrap_or(0));
    for bi in 0..batch {
        // Offset of this batch in `data`.
        let mut base = 0;
        let mut rem = bi;
        for d in (0..b).rev() {
            base += (rem % data.dims[d]) * data_strides[d];
            rem /= data.dims[d];
        }
        for t in 0..per_batch_tuples {
            let tuple = &indices[(bi * per_batch_tuples + t) * k..(bi * per_batch_tuples + t + 1) * k];
            let mut off = base;
            for (j, &ix) in tuple.iter().enumerate() {
                let dim = data.dims[b + j] as i64;
                let n = if ix < 0 { ix + dim } else { ix };
                if !(0..dim).contains(&n) {
                    return Err(invalid(format!("index {ix} is out of range for a dimension of {dim}")));
                }
                off += n as usize * data_strides[b + j];
            }
            map.extend(off..off + inner);
        }
    }
    cx.finish(Arr::new(out_dims, data.data.take(&map)))
}
