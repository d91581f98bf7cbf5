//! `Slice` and `Pad`: strided windows into a tensor and padding around it.

use super::util::{axes, checked_numel, floats, ints, strided_index, strides};
use super::{Inputs, KernelFn, OpCtx};
use crate::error::{kbail, unsupported, KResult};
use crate::tensor::Tensor;

/// Clamped (start, step, count) of one sliced axis, per ONNX's rules.
pub(crate) fn slice_axis(dim: usize, start: i64, end: i64, step: i64) -> (i64, i64, usize) {
    let d = dim as i64;
    let norm = |v: i64| if v < 0 { v.saturating_add(d) } else { v };
    let (s, e) = (norm(start), norm(end));
    let (s, e) = if step > 0 { (s.clamp(0, d), e.clamp(0, d)) } else { (s.clamp(-1, d - 1), e.clamp(-1, d - 1)) };
    let count = if step > 0 {
        if e > s {
            (e - s + step - 1) / step
        } else {
            0
        }
    } else if s > e {
        (s - e + (-step) - 1) / (-step)
    } else {
        0
    };
    (s, step, count as usize)
}

pub fn slice(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let x = i.req(0)?;
    let (starts, ends, ax, steps) = if c.opset < 10 {
        let (Some(s), Some(e)) = (c.ints("starts"), c.ints("ends")) else { kbail!("starts and ends are required") };
        (s, e, c.ints("axes"), None)
    } else {
        (ints(i.req(1)?)?, ints(i.req(2)?)?, i.opt(3).map(ints).transpose()?, i.opt(4).map(ints).transpose()?)
    };
    if starts.len() != ends.len() {
        kbail!("starts {starts:?} and ends {ends:?} differ in length");
    }
    let ax = match ax {
        Some(a) => axes(&a, x.rank())?,
        None => (0..starts.len()).collect(),
    };
    let steps = steps.unwrap_or_else(|| vec![1; starts.len()]);
    if ax.len() != starts.len() || steps.len() != starts.len() {
        kbail!("starts, ends, axes and steps differ in length");
    }
    let st = strides(x.shape());
    let mut out = x.shape().to_vec();
    let mut base: i64 = 0;
    let mut ost: Vec<i64> = st.iter().map(|&s| s as i64).collect();
    for (k, &a) in ax.iter().enumerate() {
        if steps[k] == 0 {
            kbail!("step 0 on axis {a}");
        }
        let (s, step, count) = slice_axis(x.shape()[a], starts[k], ends[k], steps[k]);
        out[a] = count;
        if count > 0 {
            base += s * st[a] as i64;
        }
        ost[a] = step * st[a] as i64;
    }
    let n = checked_numel(&out)?;
    let idx = signed_index(&out, &ost, base, n);
    Ok(vec![Tensor::from_parts(out, x.data().take(&idx))])
}

/// [`strided_index`] with signed strides (negative slice steps).
fn signed_index(shape: &[usize], st: &[i64], base: i64, n: usize) -> Vec<usize> {
    if st.iter().all(|&s| s >= 0) && base >= 0 {
        let st: Vec<usize> = st.iter().map(|&s| s as usize).collect();
        return strided_index(shape, &st, base as usize);
    }
    let ost = strides(shape);
    (0..n)
        .map(|k| {
            let mut off = base;
            for d in 0..shape.len() {
                off += ((k / ost[d]) % shape[d]) as i64 * st[d];
            }
            off as usize
        })
        .collect()
}

pub fn pad(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let x = i.req(0)?;
    let rank = x.rank();
    let (pads, value, ax) = if c.opset < 11 {
        let Some(p) = c.ints("pads").or_else(|| c.ints("paddings")) else { kbail!("pads are required") };
        (p, f64::from(c.float("value", 0.0)), None)
    } else {
        let p = ints(i.req(1)?)?;
        let v = match i.opt(2) {
            Some(t) => *floats(t).unwrap_or_default().first().unwrap_or(&0.0),
            None => 0.0,
        };
        (p, v, i.opt(3).map(ints).transpose()?)
    };
    let ax = match ax {
        Some(a) => axes(&a, rank)?,
        None => (0..rank).collect(),
    };
    if pads.len() != 2 * ax.len() {
        kbail!("pads {pads:?} need two entries for each of {} axes", ax.len());
    }
    let mut before = vec![0i64; rank];
    let mut after = vec![0i64; rank];
    for (k, &a) in ax.iter().enumerate() {
        before[a] = pads[k];
        after[a] = pads[k + ax.len()];
    }
    let mut out = Vec::with_capacity(rank);
    for d in 0..rank {
        let o = x.shape()[d] as i64 + before[d] + after[d];
        if o < 0 {
            kbail!("pads {pads:?} remove more than axis {d} holds");
        }
        out.push(o as usize);
    }
    let n = checked_numel(&out)?;
    let mode = c.string("mode").unwrap_or_else(|| "constant".into());
    let st = strides(x.shape());
    let ost = strides(&out);
    let sentinel = x.numel();
    let mut idx = Vec::with_capacity(n);
    for k in 0..n {
        let mut off = 0usize;
        let mut inside = true;
        for d in 0..rank {
            let dim = x.shape()[d] as i64;
            let mut p = ((k / ost[d]) % out[d]) as i64 - before[d];
            if p < 0 || p >= dim {
                match mode.as_str() {
                    "constant" => inside = false,
                    "edge" if dim > 0 => p = p.clamp(0, dim - 1),
                    "reflect" if dim > 1 => {
                        let period = 2 * (dim - 1);
                        p = p.rem_euclid(period);
                        if p >= dim {
                            p = period - p;
                        }
                    }
                    "reflect" if dim == 1 => p = 0,
                    "wrap" if dim > 0 => p = p.rem_euclid(dim),
                    "edge" | "reflect" | "wrap" => kbail!("cannot pad an empty axis {d} in mode {mode}"),
                    other => unsupported!("mode \"{other}\""),
                }
            }
            if !inside {
                break;
            }
            off += p as usize * st[d];
        }
        idx.push(if inside { off } else { sentinel });
    }
    let fill = super::cast::cast_to(&Tensor::scalar(value), x.dtype())?;
    let data = super::shape::concat_storage(x.data(), fill.data());
    Ok(vec![Tensor::from_parts(out, data.take(&idx))])
}

/// Crops or pads each listed axis, centred, to the requested size (padding with zeros).
pub fn center_crop_pad(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let x = i.req(0)?;
    let want = ints(i.req(1)?)?;
    let ax = match c.ints("axes") {
        Some(a) => axes(&a, x.rank())?,
        None => (0..x.rank()).collect(),
    };
    if want.len() != ax.len() || want.iter().any(|&w| w < 0) {
        kbail!("shape {want:?} does not fit {} axes", ax.len());
    }
    let mut out = x.shape().to_vec();
    // Offset of output index 0 in input coordinates, per axis (negative: padding first).
    let mut shift = vec![0i64; x.rank()];
    for (k, &a) in ax.iter().enumerate() {
        let (inp, o) = (x.shape()[a] as i64, want[k]);
        shift[a] = if o <= inp { (inp - o) / 2 } else { -((o - inp) / 2) };
        out[a] = o as usize;
    }
    let n = checked_numel(&out)?;
    let (st, ost) = (strides(x.shape()), strides(&out));
    let sentinel = x.numel();
    let map: Vec<usize> = (0..n)
        .map(|k| {
            let mut off = 0usize;
            for d in 0..x.rank() {
                let p = ((k / ost[d]) % out[d]) as i64 + shift[d];
                if p < 0 || p >= x.shape()[d] as i64 {
                    return sentinel;
                }
                off += p as usize * st[d];
            }
            off
        })
        .collect();
    let zero = crate::tensor::Storage::zeros(x.dtype(), 1).unwrap_or(crate::tensor::Storage::F32(vec![0.0]));
    let data = super::shape::concat_storage(x.data(), &zero);
    Ok(vec![Tensor::from_parts(out, data.take(&map))])
}

pub const OPS: &[(&str, KernelFn)] = &[("Slice", slice), ("Pad", pad), ("CenterCropPad", center_crop_pad)];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slice_clamps_and_steps_backwards() {
        assert_eq!(slice_axis(5, 1, 100, 1), (1, 1, 4));
        assert_eq!(slice_axis(5, -1, -100, -1), (4, -1, 5));
        assert_eq!(slice_axis(5, 3, 1, 1), (3, 1, 0));
        assert_eq!(slice_axis(0, 0, 10, 1).2, 0);
        assert_eq!(signed_index(&[3], &[-1], 4, 3), vec![4, 3, 2]);
    }
}
