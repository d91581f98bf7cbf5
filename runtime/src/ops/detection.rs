//! `NonMaxSuppression`: greedy per-class box selection by score, suppressing boxes whose IoU
//! with an already selected one exceeds the threshold (onnx reference semantics).

use super::util::{floats, ints};
use super::{Inputs, KernelFn, OpCtx};
use crate::error::{kbail, KResult};
use crate::tensor::{Storage, Tensor};

/// `(min, max)` extents of a box along x and y.
fn extents(b: &[f64], center: bool) -> [(f64, f64); 2] {
    let mm = |a: f64, b: f64| if a <= b { (a, b) } else { (b, a) };
    if center {
        [(b[0] - b[2] / 2.0, b[0] + b[2] / 2.0), (b[1] - b[3] / 2.0, b[1] + b[3] / 2.0)]
    } else {
        [mm(b[1], b[3]), mm(b[0], b[2])]
    }
}

fn suppresses(a: &[f64], b: &[f64], center: bool, threshold: f64) -> bool {
    let (ea, eb) = (extents(a, center), extents(b, center));
    let mut inter = 1.0;
    for d in 0..2 {
        let (lo, hi) = (ea[d].0.max(eb[d].0), ea[d].1.min(eb[d].1));
        if hi <= lo {
            return false;
        }
        inter *= hi - lo;
    }
    let area = |e: [(f64, f64); 2]| (e[0].1 - e[0].0) * (e[1].1 - e[1].0);
    let (a1, a2) = (area(ea), area(eb));
    let union = a1 + a2 - inter;
    if a1 <= 0.0 || a2 <= 0.0 || union <= 0.0 {
        return false;
    }
    inter / union > threshold
}

pub fn non_max_suppression(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let (boxes, scores) = (i.req(0)?, i.req(1)?);
    let [nb, n, 4] = *boxes.shape() else { kbail!("boxes must be [batches, boxes, 4], got {:?}", boxes.shape()) };
    let [sb, classes, sn] = *scores.shape() else { kbail!("scores must be [batches, classes, boxes]") };
    if sb != nb || sn != n {
        kbail!("boxes {:?} and scores {:?} do not match", boxes.shape(), scores.shape());
    }
    let max_out = match i.opt(2) {
        Some(t) => ints(t)?.first().copied().unwrap_or(0).max(0) as usize,
        None => 0,
    };
    let iou = match i.opt(3) {
        Some(t) => floats(t)?.first().copied().unwrap_or(0.0),
        None => 0.0,
    };
    let score_threshold = match i.opt(4) {
        Some(t) => floats(t)?.first().copied(),
        None => None,
    };
    let center = c.int("center_point_box", 0) != 0;
    let (bv, sv) = (floats(boxes)?, floats(scores)?);
    let mut out = Vec::new();
    for b in 0..nb {
        for cls in 0..classes {
            let s = &sv[(b * classes + cls) * n..(b * classes + cls + 1) * n];
            let mut cand: Vec<usize> = (0..n).filter(|&k| score_threshold.is_none_or(|t| s[k] > t)).collect();
            // Highest score first; ties by lower index.
            cand.sort_by(|&p, &q| s[q].partial_cmp(&s[p]).unwrap_or(std::cmp::Ordering::Equal).then(p.cmp(&q)));
            let mut kept: Vec<usize> = Vec::new();
            for k in cand {
                if kept.len() >= max_out {
                    break;
                }
                let bx = |j: usize| &bv[(b * n + j) * 4..(b * n + j + 1) * 4];
                if kept.iter().all(|&j| !suppresses(bx(k), bx(j), center, iou)) {
                    kept.push(k);
                    out.extend([b as i64, cls as i64, k as i64]);
                }
            }
        }
    }
    Ok(vec![Tensor::from_parts(vec![out.len() / 3, 3], Storage::I64(out))])
}

pub const OPS: &[(&str, KernelFn)] = &[("NonMaxSuppression", non_max_suppression)];
