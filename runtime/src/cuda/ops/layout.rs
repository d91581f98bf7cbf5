//! Data movement: the reshaping ops (aliases, no kernel), Shape/Size (no device data read),
//! Transpose, Expand, Slice, Concat, Split, Gather as strided copies, and GatherND.

use adaptc_ir::DataType;

use super::{done, dptr, host, host_ints, launch, opt, output, req, shape_proxy, DevResult, Gpu};
use crate::cuda::launch::{addr, broadcast, contiguous, elementwise as grid, Layout, MAX_RANK};
use crate::cuda::value::{device_elem_bytes, CudaValue};
use crate::error::KernelError;
use crate::ops::slice::slice_axis;
use crate::ops::util::{axes, axis};
use crate::ops::{Inputs, OpCtx};
use crate::tensor::Tensor;

/// Reshape, Flatten, Squeeze, Unsqueeze: the CPU kernel computes the output shape from a
/// stand-in of the data's shape (so every opset rule is the CPU's), the device memory is shared.
pub fn reshape_like(gpu: &Gpu, c: &OpCtx, i: &[Option<&CudaValue>]) -> DevResult<Vec<CudaValue>> {
    let x = req(i, 0)?;
    let shape = cpu_shape(gpu, c, x, i)?;
    Ok(vec![x.reshaped(shape)?])
}

/// The output shape the CPU kernel gives for `x` (slot 0) and the other inputs.
fn cpu_shape(gpu: &Gpu, c: &OpCtx, x: &CudaValue, i: &[Option<&CudaValue>]) -> DevResult<Vec<usize>> {
    let proxy = shape_proxy(x)?;
    let mut rest: Vec<Option<&Tensor>> = vec![Some(&proxy)];
    for v in &i[1..] {
        rest.push(match v {
            Some(v) => Some(v.host(gpu)?),
            None => None,
        });
    }
    let f = crate::registry::Registry::cpu()
        .get(c.node.op())
        .ok_or_else(|| KernelError::Unsupported(format!("no CPU kernel for {}", c.node.op())))?;
    let out = (f.kernel)(c, &Inputs(&rest))?;
    let first = out.into_iter().next().ok_or_else(|| KernelError::Invalid("no output".into()))?;
    Ok(first.shape().to_vec())
}

pub fn identity(_: &Gpu, _: &OpCtx, i: &[Option<&CudaValue>]) -> DevResult<Vec<CudaValue>> {
    let x = req(i, 0)?;
    Ok(vec![x.reshaped(x.shape().to_vec())?])
}

/// Shape and Size read only the shape: the result is a host value, no download.
pub fn shape_of(_: &Gpu, c: &OpCtx, i: &[Option<&CudaValue>]) -> DevResult<Vec<CudaValue>> {
    let proxy = shape_proxy(req(i, 0)?)?;
    let f = crate::registry::Registry::cpu()
        .get(c.node.op())
        .ok_or_else(|| KernelError::Unsupported(format!("no CPU kernel for {}", c.node.op())))?;
    let out = (f.kernel)(c, &Inputs(&[Some(&proxy)]))?;
    Ok(out.into_iter().map(CudaValue::from_host).collect())
}

/// The `copy_bN` kernel for `dtype`'s element width.
fn copy_kernel(dtype: DataType) -> DevResult<&'static str> {
    Ok(match device_elem_bytes(dtype) {
        Some(1) => "copy_b1",
        Some(2) => "copy_b2",
        Some(4) => "copy_b4",
        Some(8) => "copy_b8",
        _ => return host(format!("copies of {dtype}")),
    })
}

/// Copies `x` (read with `xst` from element `xbase`) into `y` (written with `yst` from `ybase`)
/// over `shape`.
#[allow(clippy::too_many_arguments)]
fn copy(
    gpu: &Gpu,
    x: &CudaValue,
    (xst, xbase): (&[i64], i64),
    y: &cudarc::driver::CudaSlice<u8>,
    (yst, ybase): (&[i64], i64),
    shape: &[usize],
) -> DevResult<()> {
    let n = crate::tensor::numel(shape).unwrap_or(0) as i64;
    if n == 0 {
        return Ok(());
    }
    let l = Layout::new(shape, &[xst, yst])?;
    let name = copy_kernel(x.dtype())?;
    let (xp, yp) = (dptr(gpu, x)?, addr(y, &gpu.stream));
    launch!(gpu, name, grid(n as usize), &l, &xp, &xbase, &yp, &ybase, &n)
}

pub fn transpose(gpu: &Gpu, c: &OpCtx, i: &[Option<&CudaValue>]) -> DevResult<Vec<CudaValue>> {
    let x = req(i, 0)?;
    let r = x.shape().len();
    let perm: Vec<usize> = match c.ints("perm") {
        Some(p) => axes(&p, r)?,
        None => (0..r).rev().collect(),
    };
    let mut seen = vec![false; r];
    if perm.len() != r || perm.iter().any(|&p| std::mem::replace(&mut seen[p], true)) {
        return Err(KernelError::Invalid(format!("perm {perm:?} is not a permutation of {r} axes")).into());
    }
    let own = contiguous(x.shape());
    let shape: Vec<usize> = perm.iter().map(|&p| x.shape()[p]).collect();
    let xst: Vec<i64> = perm.iter().map(|&p| own[p]).collect();
    let (y, shape) = output(gpu, shape, x.dtype())?;
    copy(gpu, x, (&xst, 0), &y, (&contiguous(&shape), 0), &shape)?;
    Ok(vec![done(y, shape, x.dtype())])
}

pub fn expand(gpu: &Gpu, _: &OpCtx, i: &[Option<&CudaValue>]) -> DevResult<Vec<CudaValue>> {
    let x = req(i, 0)?;
    let want = host_ints(gpu, req(i, 1)?)?;
    let want: Vec<usize> = want.iter().map(|&d| d.max(0) as usize).collect();
    let shape = crate::ops::util::broadcast_shapes(&[x.shape(), &want])?;
    let xst = broadcast(x.shape(), &shape);
    let (y, shape) = output(gpu, shape, x.dtype())?;
    copy(gpu, x, (&xst, 0), &y, (&contiguous(&shape), 0), &shape)?;
    Ok(vec![done(y, shape, x.dtype())])
}

pub fn slice(gpu: &Gpu, c: &OpCtx, i: &[Option<&CudaValue>]) -> DevResult<Vec<CudaValue>> {
    let x = req(i, 0)?;
    if c.opset < 10 {
        return host("Slice before opset 10");
    }
    let starts = host_ints(gpu, req(i, 1)?)?;
    let ends = host_ints(gpu, req(i, 2)?)?;
    let ax = match opt(i, 3) {
        Some(a) => axes(&host_ints(gpu, a)?, x.shape().len())?,
        None => (0..starts.len()).collect(),
    };
    let steps = match opt(i, 4) {
        Some(s) => host_ints(gpu, s)?,
        None => vec![1; starts.len()],
    };
    if starts.len() != ends.len() || ax.len() != starts.len() || steps.len() != starts.len() {
        return Err(KernelError::Invalid("starts, ends, axes and steps differ in length".into()).into());
    }
    let own = contiguous(x.shape());
    let mut shape = x.shape().to_vec();
    let mut xst = own.clone();
    let mut base = 0i64;
    for (k, &a) in ax.iter().enumerate() {
        if steps[k] == 0 {
            return Err(KernelError::Invalid(format!("step 0 on axis {a}")).into());
        }
        let (s, step, count) = slice_axis(x.shape()[a], starts[k], ends[k], steps[k]);
        shape[a] = count;
        if count > 0 {
            base += s * own[a];
        }
        xst[a] = step * own[a];
    }
    let (y, shape) = output(gpu, shape, x.dtype())?;
    copy(gpu, x, (&xst, base), &y, (&contiguous(&shape), 0), &shape)?;
    Ok(vec![done(y, shape, x.dtype())])
}

pub fn concat(gpu: &Gpu, c: &OpCtx, i: &[Option<&CudaValue>]) -> DevResult<Vec<CudaValue>> {
    let parts: Vec<&CudaValue> = i.iter().flatten().copied().collect();
    let first = parts.first().ok_or_else(|| KernelError::Invalid("no inputs".into()))?;
    let r = first.shape().len();
    let ax = axis(c.int("axis", 0), r)?;
    let mut shape = first.shape().to_vec();
    shape[ax] = 0;
    for p in &parts {
        let ok = p.dtype() == first.dtype()
            && p.shape().len() == r
            && (0..r).all(|d| d == ax || p.shape()[d] == first.shape()[d]);
        if !ok {
            return Err(KernelError::Invalid(format!(
                "input of shape {:?} ({}) does not concatenate with {:?} ({}) on axis {ax}",
                p.shape(),
                p.dtype(),
                first.shape(),
                first.dtype()
            ))
            .into());
        }
        shape[ax] += p.shape()[ax];
    }
    let (y, shape) = output(gpu, shape, first.dtype())?;
    let yst = contiguous(&shape);
    let mut offset = 0i64;
    for p in &parts {
        copy(gpu, p, (&contiguous(p.shape()), 0), &y, (&yst, offset * yst[ax]), p.shape())?;
        offset += p.shape()[ax] as i64;
    }
    Ok(vec![done(y, shape, first.dtype())])
}

pub fn split(gpu: &Gpu, c: &OpCtx, i: &[Option<&CudaValue>]) -> DevResult<Vec<CudaValue>> {
    let x = req(i, 0)?;
    if c.opset < 13 || c.has("num_outputs") {
        return host("Split without a sizes input");
    }
    let Some(sizes) = opt(i, 1) else { return host("Split without a sizes input") };
    let sizes = host_ints(gpu, sizes)?;
    let ax = axis(c.int("axis", 0), x.shape().len())?;
    if sizes.iter().any(|&s| s < 0) || sizes.iter().sum::<i64>() != x.shape()[ax] as i64 {
        return Err(KernelError::Invalid(format!("split sizes {sizes:?} do not sum to {}", x.shape()[ax])).into());
    }
    let xst = contiguous(x.shape());
    let mut outs = Vec::with_capacity(sizes.len());
    let mut offset = 0i64;
    for &s in &sizes {
        let mut shape = x.shape().to_vec();
        shape[ax] = s as usize;
        let (y, shape) = output(gpu, shape, x.dtype())?;
        copy(gpu, x, (&xst, offset * xst[ax]), &y, (&contiguous(&shape), 0), &shape)?;
        outs.push(done(y, shape, x.dtype()));
        offset += s;
    }
    Ok(outs)
}

pub fn gather(gpu: &Gpu, c: &OpCtx, i: &[Option<&CudaValue>]) -> DevResult<Vec<CudaValue>> {
    let (x, ind) = (req(i, 0)?, req(i, 1)?);
    if x.shape().is_empty() {
        return Err(KernelError::Invalid("data must have rank ≥ 1".into()).into());
    }
    let ax = axis(c.int("axis", 0), x.shape().len())?;
    let width = match device_elem_bytes(x.dtype()) {
        Some(w @ (1 | 2 | 4 | 8)) => w,
        _ => return host(format!("Gather of {}", x.dtype())),
    };
    let itype = match ind.dtype() {
        DataType::Int64 => "i64",
        DataType::Int32 if width >= 4 => "i32",
        other => return host(format!("Gather with {other} indices")),
    };
    let name = format!("gather_b{width}_{itype}");
    let dim = x.shape()[ax] as i64;
    let outer: usize = x.shape()[..ax].iter().product();
    let inner: usize = x.shape()[ax + 1..].iter().product();
    let mut shape = x.shape()[..ax].to_vec();
    shape.extend_from_slice(ind.shape());
    shape.extend_from_slice(&x.shape()[ax + 1..]);
    let (y, shape) = output(gpu, shape, x.dtype())?;
    let n = crate::tensor::numel(&shape).unwrap_or(0);
    if n > 0 {
        if dim == 0 {
            return Err(KernelError::Invalid("gathering from an empty axis".into()).into());
        }
        let (outer, nidx, inner) = (outer as i64, ind.numel() as i64, inner as i64);
        let (xp, ip, yp) = (dptr(gpu, x)?, dptr(gpu, ind)?, addr(&y, &gpu.stream));
        let flag = gpu.error_flag.lock().unwrap_or_else(|p| p.into_inner());
        let ep = addr(&*flag, &gpu.stream);
        launch!(gpu, &name, grid(n), &xp, &ip, &yp, &outer, &dim, &nidx, &inner, &ep)?;
    }
    Ok(vec![done(y, shape, x.dtype())])
}

/// The index-tuple shape GatherND's kernel reads (`struct NdTuple` in `kernels.cu`): `k`
/// components, component d ranging over `dim[d]` with stride `st[d]` (elements) in the data.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct NdTuple {
    k: i32,
    pad: i32,
    dim: [i64; MAX_RANK],
    st: [i64; MAX_RANK],
}

// SAFETY: a plain `#[repr(C)]` struct of integers, laid out as the C struct it mirrors.
unsafe impl cudarc::driver::DeviceRepr for NdTuple {}

/// Where GatherND's tuples read: tuple t's slice of `inner` elements starts at
/// `(t / per_batch) * batch_stride` plus its components times `tuple.st`.
#[derive(Debug)]
struct NdPlan {
    tuple: NdTuple,
    tuples: usize,
    per_batch: i64,
    batch_stride: i64,
    inner: usize,
    shape: Vec<usize>,
}

/// GatherND of data shaped `xs` with indices shaped `is`: the CPU kernel's shape checks and
/// error texts (`ops::gather::nd_offsets`) and its offsets; cases it does not cover go to the host.
fn nd_plan(xs: &[usize], is: &[usize], batch: usize) -> DevResult<NdPlan> {
    let Some(&k) = is.last() else {
        return Err(KernelError::Invalid("indices must have rank ≥ 1".into()).into());
    };
    if batch + k > xs.len() || batch >= is.len() {
        return Err(KernelError::Invalid(format!(
            "index tuples of length {k} with {batch} batch dims do not fit data of rank {}",
            xs.len()
        ))
        .into());
    }
    // The CPU kernel does not compare the batch dims; only equal ones are covered here.
    if is[..batch] != xs[..batch] {
        return host(format!("GatherND batch dims {:?} of indices vs {:?} of data", &is[..batch], &xs[..batch]));
    }
    if k > MAX_RANK {
        return host(format!("GatherND index tuples of length {k}"));
    }
    let st = contiguous(xs);
    let mut tuple = NdTuple { k: k as i32, ..NdTuple::default() };
    for d in 0..k {
        tuple.dim[d] = xs[batch + d] as i64;
        tuple.st[d] = st[batch + d];
    }
    let inner: usize = xs[batch + k..].iter().product();
    let batch_size: usize = xs[..batch].iter().product();
    let tuples: usize = is[..is.len() - 1].iter().product();
    if inner == 0 && tuples > 0 && k > 0 {
        // No output element to launch over, but the CPU kernel still range-checks every tuple.
        return host("GatherND of empty slices");
    }
    let mut shape = is[..is.len() - 1].to_vec();
    shape.extend_from_slice(&xs[batch + k..]);
    Ok(NdPlan {
        tuple,
        tuples,
        per_batch: (tuples / batch_size.max(1)).max(1) as i64,
        batch_stride: if batch > 0 { st[batch - 1] } else { 0 },
        inner,
        shape,
    })
}

/// GatherND with int64 indices, any `batch_dims` whose index batch dims equal the data's (the
/// CPU kernel's rules and error texts; an out-of-range index sets the device error flag).
pub fn gather_nd(gpu: &Gpu, c: &OpCtx, i: &[Option<&CudaValue>]) -> DevResult<Vec<CudaValue>> {
    let (x, ind) = (req(i, 0)?, req(i, 1)?);
    // The CPU kernel reads any integer type; ONNX allows only int64, which the kernel reads.
    if ind.dtype() != DataType::Int64 {
        return host(format!("GatherND with {} indices", ind.dtype()));
    }
    let width = match device_elem_bytes(x.dtype()) {
        Some(w @ (1 | 2 | 4 | 8)) => w,
        _ => return host(format!("GatherND of {}", x.dtype())),
    };
    let batch = c.int("batch_dims", 0).max(0) as usize;
    let p = nd_plan(x.shape(), ind.shape(), batch)?;
    let (y, shape) = output(gpu, p.shape, x.dtype())?;
    let n = crate::tensor::numel(&shape).unwrap_or(0);
    if n > 0 {
        let name = format!("gather_nd_b{width}");
        let (tuples, inner) = (p.tuples as i64, p.inner as i64);
        let (xp, ip, yp) = (dptr(gpu, x)?, dptr(gpu, ind)?, addr(&y, &gpu.stream));
        let flag = gpu.error_flag.lock().unwrap_or_else(|p| p.into_inner());
        let ep = addr(&*flag, &gpu.stream);
        let args = (&p.tuple, &p.per_batch, &p.batch_stride);
        launch!(gpu, &name, grid(n), args.0, &xp, &ip, &yp, &tuples, args.1, args.2, &inner, &ep)?;
    }
    Ok(vec![done(y, shape, x.dtype())])
}

/// `IndexMapGrad`: reshapes alias `dy`; every other data-movement op scatters `dy` into a
/// zeroed `dx` through the forward op's index map, computed on the host by the CPU kernel's
/// own code from shapes (and integer inputs) alone and kept on the device per node and shapes.
pub fn index_map_grad(gpu: &Gpu, c: &OpCtx, i: &[Option<&CudaValue>]) -> DevResult<Vec<CudaValue>> {
    let dy = req(i, 0)?;
    let x_shape: Vec<usize> = host_ints(gpu, req(i, 1)?)?
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| KernelError::Invalid(format!("negative dim {d} in x_shape"))))
        .collect::<Result<_, _>>()?;
    let n = crate::tensor::numel(&x_shape).ok_or_else(|| KernelError::Invalid("x_shape overflows".into()))?;
    let op = c.string("op").ok_or_else(|| KernelError::Invalid("attribute `op` is required".into()))?;
    let (input, slot) = (c.int("input", -1), c.int("output", 0));
    let fwd_opset = c.node.attr("fwd_opset").and_then(adaptc_ir::Attribute::as_int);
    let (Ok(input), Ok(slot), Some(fwd_opset)) = (usize::try_from(input), usize::try_from(slot), fwd_opset) else {
        return Err(
            KernelError::Invalid("attributes `input`, `output` and `fwd_opset` must be given and ≥ 0".into()).into()
        );
    };
    if ["Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity"].contains(&op.as_str()) && input == 0 && slot == 0 {
        if dy.numel() != n {
            return Err(
                KernelError::Invalid(format!("{op}: dy of shape {:?} does not fill {x_shape:?}", dy.shape())).into()
            );
        }
        return Ok(vec![dy.reshaped(x_shape)?]);
    }
    // The scatter-add below is f32 (an aliasing reshape above works for any type).
    if dy.dtype() != DataType::Float {
        return host(format!("dy of {}", dy.dtype()));
    }
    if n >= i32::MAX as usize {
        return host("an index map beyond 32-bit positions");
    }
    // Float forward inputs matter only by shape: int64 zeros of their shape stand in, as in the
    // CPU kernel; integer inputs (indices, starts, axes) are read for real.
    let mut key = format!("{}|{x_shape:?}|{:?}", c.node.label(), dy.shape());
    let mut owned: Vec<Option<Tensor>> = Vec::new();
    for v in i.iter().skip(2) {
        owned.push(match v {
            None => None,
            Some(v) if v.dtype().is_float() => {
                key.push_str(&format!("|{:?}", v.shape()));
                Some(
                    Tensor::new(v.shape().to_vec(), crate::tensor::Storage::I64(vec![0; v.numel()]))
                        .map_err(|e| crate::cuda::launch::DevError::Device(e.to_string()))?,
                )
            }
            Some(v) => {
                let t = v.host(gpu)?.clone();
                key.push_str(&format!("|{:?}{:?}", t.shape(), crate::ops::util::ints(&t).unwrap_or_default()));
                Some(t)
            }
        });
    }
    let map = {
        let mut maps = gpu.index_maps.lock().unwrap_or_else(|p| p.into_inner());
        match maps.get(&key) {
            Some(m) => m.clone(),
            None => {
                let fwd: Vec<Option<&Tensor>> = owned.iter().map(Option::as_ref).collect();
                let proxy = shape_proxy(dy)?;
                let src = crate::ops::grad::index_map_grad::source_map(
                    c, &op, fwd_opset, input, slot, &x_shape, &fwd, &proxy,
                )?;
                let bytes: Vec<u8> =
                    src.iter().flat_map(|&s| (s.clamp(0, i32::MAX as i64) as i32).to_le_bytes()).collect();
                let mem = gpu.upload_bytes(&bytes)?;
                maps.insert(key, mem.clone());
                mem
            }
        }
    };
    let (dx, shape) = output(gpu, x_shape, DataType::Float)?;
    let dxp = addr(&dx, &gpu.stream);
    if n > 0 {
        let (zero, n_i) = (0.0f32, n as i64);
        launch!(gpu, "fill_f32", grid(n), &dxp, &zero, &n_i)?;
    }
    let m = dy.numel();
    if m > 0 && n > 0 {
        let (dp, mp, m_i) = (dptr(gpu, dy)?, addr(map.as_ref(), &gpu.stream), m as i64);
        launch!(gpu, "scatter_add_f32", grid(m), &dp, &mp, &dxp, &m_i)?;
    }
    Ok(vec![done(dx, shape, DataType::Float)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::launch::DevError;
    use crate::tensor::Storage;
    use adaptc_ir::{Attribute, Node, OpKey};

    /// The CPU kernel's GatherND of `x` (values 0..) with `idx`.
    fn cpu(xs: &[usize], is: &[usize], idx: &[i64], batch: i64) -> Result<Tensor, String> {
        let node = Node::new(OpKey::new("", "GatherND"), vec!["x".into(), "i".into()], vec!["y".into()])
            .with_attr(Attribute::int("batch_dims", batch));
        let c = OpCtx { node: &node, opset: 13 };
        let n: usize = xs.iter().product();
        let x = Tensor::new(xs.to_vec(), Storage::I64((0..n as i64).collect())).map_err(|e| e.to_string())?;
        let i = Tensor::new(is.to_vec(), Storage::I64(idx.to_vec())).map_err(|e| e.to_string())?;
        let out = crate::ops::gather::gather_nd(&c, &Inputs(&[Some(&x), Some(&i)])).map_err(|e| e.to_string())?;
        Ok(out.into_iter().next().expect("one output"))
    }

    /// What `gather_nd_bN` computes from the plan (`kernels.cu`), with x's values 0.. as above.
    fn device(p: &NdPlan, idx: &[i64]) -> Vec<i64> {
        let k = p.tuple.k as usize;
        let mut y = Vec::new();
        for t in 0..p.tuples {
            let mut off = (t as i64 / p.per_batch) * p.batch_stride;
            for d in 0..k {
                let v = idx[t * k + d];
                off += (if v < 0 { v + p.tuple.dim[d] } else { v }) * p.tuple.st[d];
            }
            y.extend(off..off + p.inner as i64);
        }
        y
    }

    /// The plan's output shape and offsets are the CPU kernel's, for every batch_dims.
    #[test]
    fn gather_nd_plans_read_what_the_cpu_reads() {
        let cases: [(&[usize], &[usize], i64); 6] = [
            (&[2, 5], &[2, 1, 5, 5, 2], 0),
            (&[3, 4, 6], &[5, 2], 0),
            (&[3, 4, 6], &[2, 2, 0], 0),
            (&[2, 3, 20], &[2, 5, 1], 1),
            (&[2, 3, 4, 5], &[2, 3, 2, 2], 2),
            (&[2, 3, 4, 5], &[2, 4, 3], -1),
        ];
        for (xs, is, batch) in cases {
            let b = batch.max(0) as usize;
            let p = nd_plan(xs, is, b).unwrap_or_else(|e| panic!("{xs:?} {is:?}: {e:?}"));
            let k = *is.last().unwrap_or(&0);
            let n: usize = is[..is.len() - 1].iter().product::<usize>() * k;
            // Components cycling through each dim's values, negative ones included.
            let idx: Vec<i64> = (0..n)
                .map(|j| {
                    let dim = xs[b + j % k.max(1)] as i64;
                    (j as i64 * 7 + 3) % (2 * dim) - dim
                })
                .collect();
            let want = cpu(xs, is, &idx, batch).unwrap_or_else(|e| panic!("{xs:?} {is:?}: {e}"));
            assert_eq!(p.shape, want.shape(), "{xs:?} {is:?}");
            assert_eq!(Some(device(&p, &idx).as_slice()), want.as_slice::<i64>(), "{xs:?} {is:?} {idx:?}");
        }
    }

    /// Invalid shapes give the CPU kernel's error; the uncovered cases go to the host.
    #[test]
    fn gather_nd_shape_errors_are_the_cpus() {
        let cases: [(&[usize], &[usize], usize); 4] =
            [(&[3, 4], &[], 0), (&[3, 4], &[2, 3], 0), (&[3, 4], &[2, 2], 1), (&[3, 4, 5], &[1], 1)];
        for (xs, is, batch) in cases {
            let want = cpu(xs, is, &vec![0; is.iter().product()], batch as i64).expect_err("the CPU refuses");
            match nd_plan(xs, is, batch) {
                Err(DevError::Kernel(e)) => assert_eq!(e.to_string(), want, "{xs:?} {is:?}"),
                other => panic!("{xs:?} {is:?}: {other:?}"),
            }
        }
        assert!(matches!(nd_plan(&[2, 3, 4], &[3, 1], 1), Err(DevError::Host(_))));
        assert!(matches!(nd_plan(&[3, 0], &[2, 1], 0), Err(DevError::Host(_))));
        assert!(matches!(nd_plan(&[1; 10], &[2, 9], 0), Err(DevError::Host(_))));
    }
}
