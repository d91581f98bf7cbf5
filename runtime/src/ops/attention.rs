//! ONNX `Attention` (opset 23+): scaled dot-product attention with KV cache, grouped-query
//! heads, boolean or additive masks, causal masking, softcap, and the optional QK output.
//!
//! Computed in f64 head by head; 3-D inputs (`[B, S, heads·D]`) are viewed as
//! `[B, heads, S, D]` like the spec's reference.

use super::util::{broadcast_index, floats, ints};
use super::{Inputs, KernelFn, OpCtx};
use crate::error::{kbail, KResult};
use crate::tensor::{Storage, Tensor};

/// A `[B, H, S, D]` f64 view of a Q/K/V input.
struct Heads {
    v: Vec<f64>,
    b: usize,
    h: usize,
    s: usize,
    d: usize,
}

impl Heads {
    fn new(t: &Tensor, heads: Option<i64>, what: &str) -> KResult<Heads> {
        let v = floats(t)?;
        match *t.shape() {
            [b, h, s, d] => Ok(Heads { v, b, h, s, d }),
            [b, s, hidden] => {
                let Some(h) = heads.filter(|&h| h > 0).map(|h| h as usize) else {
                    kbail!("3-D {what} needs the num_heads attribute")
                };
                if hidden % h != 0 {
                    kbail!("{what} hidden size {hidden} does not split into {h} heads");
                }
                let d = hidden / h;
                let mut out = vec![0f64; v.len()];
                for bi in 0..b {
                    for si in 0..s {
                        for hi in 0..h {
                            for di in 0..d {
                                out[((bi * h + hi) * s + si) * d + di] = v[(bi * s + si) * hidden + hi * d + di];
                            }
                        }
                    }
                }
                Ok(Heads { v: out, b, h, s, d })
            }
            _ => kbail!("{what} must be 3-D or 4-D, got {:?}", t.shape()),
        }
    }

    fn at(&self, b: usize, h: usize, s: usize) -> &[f64] {
        let o = ((b * self.h + h) * self.s + s) * self.d;
        &self.v[o..o + self.d]
    }

    /// Appends `new` after `self` along the sequence axis (the KV cache).
    fn concat(self, new: Heads) -> KResult<Heads> {
        if self.b != new.b || self.h != new.h || self.d != new.d {
            kbail!("past and new keys/values differ in batch, heads or head size");
        }
        let s = self.s + new.s;
        let mut v = Vec::with_capacity(self.v.len() + new.v.len());
        for b in 0..self.b {
            for h in 0..self.h {
                for si in 0..self.s {
                    v.extend_from_slice(self.at(b, h, si));
                }
                for si in 0..new.s {
                    v.extend_from_slice(new.at(b, h, si));
                }
            }
        }
        Ok(Heads { v, b: self.b, h: self.h, s, d: self.d })
    }

    fn tensor(&self, dtype: adaptc_ir::DataType) -> KResult<Tensor> {
        let t = Tensor::from_parts(vec![self.b, self.h, self.s, self.d], Storage::F64(self.v.clone()));
        super::cast::cast_to(&t, dtype)
    }
}

pub fn attention(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let (qt, kt, vt) = (i.req(0)?, i.req(1)?, i.req(2)?);
    let dtype = qt.dtype();
    let qh = c.node.attr("q_num_heads").and_then(|a| a.as_int());
    let kvh = c.node.attr("kv_num_heads").and_then(|a| a.as_int());
    let q = Heads::new(qt, qh, "Q")?;
    let mut k = Heads::new(kt, kvh, "K")?;
    let mut v = Heads::new(vt, kvh, "V")?;
    let past = match i.opt(4) {
        Some(pk) => {
            let p = Heads::new(pk, kvh, "past_key")?;
            let n = p.s;
            k = p.concat(k)?;
            n
        }
        None => 0,
    };
    if let Some(pv) = i.opt(5) {
        v = Heads::new(pv, kvh, "past_value")?.concat(v)?;
    }
    if k.b != q.b || v.b != q.b || k.d != q.d || k.s != v.s || k.h != v.h {
        kbail!("Q, K and V shapes do not fit together");
    }
    if k.h == 0 || q.h % k.h != 0 {
        kbail!("{} query heads do not group over {} key/value heads", q.h, k.h);
    }
    let (b, hq, sq, d, skv, dv) = (q.b, q.h, q.s, q.d, k.s, v.d);
    let group = hq / k.h;
    let scale = match c.node.attr("scale").and_then(|a| a.as_float()) {
        Some(s) => f64::from(s),
        None => 1.0 / (d as f64).sqrt(),
    };
    let softcap = f64::from(c.float("softcap", 0.0));
    let causal = c.int("is_causal", 0) != 0;
    let mode = c.int("qk_matmul_output_mode", 0);

    // Additive bias [B, Hq, Sq, Skv] from the mask (padded to Skv), causality and padding.
    let bias_shape = [b, hq, sq, skv];
    let mut bias = vec![0f64; b * hq * sq * skv];
    if let Some(m) = i.opt(3) {
        let mut mshape = m.shape().to_vec();
        let Some(&last) = mshape.last() else { kbail!("attn_mask must have rank ≥ 2") };
        if last > skv {
            kbail!("attn_mask's last dimension {last} exceeds the {skv} keys");
        }
        let mvals: Vec<f64> = match m.as_slice::<bool>() {
            Some(bv) => bv.iter().map(|&x| if x { 0.0 } else { f64::NEG_INFINITY }).collect(),
            None => floats(m)?,
        };
        // Pad the last dim to Skv with −∞ (masked out).
        let rows = m.numel() / last.max(1);
        let mut padded = Vec::with_capacity(rows * skv);
        for r in 0..rows {
            padded.extend_from_slice(&mvals[r * last..(r + 1) * last]);
            padded.extend(std::iter::repeat_n(f64::NEG_INFINITY, skv - last));
        }
        *mshape.last_mut().unwrap_or(&mut 0) = skv;
        if super::util::broadcast_shapes(&[&mshape, &bias_shape]).ok().as_deref() != Some(&bias_shape[..]) {
            kbail!("attn_mask {:?} does not broadcast to {bias_shape:?}", m.shape());
        }
        for (x, j) in bias.iter_mut().zip(broadcast_index(&mshape, &bias_shape)) {
            *x += padded[j];
        }
    }
    if causal {
        for (n, x) in bias.iter_mut().enumerate() {
            let (qi, kj) = ((n / skv) % sq, n % skv);
            if kj >= past && kj - past > qi {
                *x = f64::NEG_INFINITY;
            }
        }
    }
    if let Some(lens) = i.opt(6) {
        let lens = ints(lens)?;
        if lens.len() != b {
            kbail!("nonpad_kv_seqlen must have {b} entries");
        }
        for (n, x) in bias.iter_mut().enumerate() {
            let (bi, kj) = (n / (hq * sq * skv), n % skv);
            if kj as i64 >= lens[bi] {
                *x = f64::NEG_INFINITY;
            }
        }
    }

    let mut y = vec![0f64; b * hq * sq * dv];
    let mut qk_out = vec![0f64; b * hq * sq * skv];
    let mut row = vec![0f64; skv];
    for bi in 0..b {
        for h in 0..hq {
            let kh = h / group;
            for si in 0..sq {
                let qv = q.at(bi, h, si);
                for (j, r) in row.iter_mut().enumerate() {
                    let dot: f64 = qv.iter().zip(k.at(bi, kh, j)).map(|(a, b)| a * b).sum();
                    let mut s = dot * scale;
                    if softcap > 0.0 {
                        s = softcap * (s / softcap).tanh();
                    }
                    *r = s;
                }
                let base = ((bi * hq + h) * sq + si) * skv;
                if mode <= 1 {
                    qk_out[base..base + skv].copy_from_slice(&row);
                }
                for (j, r) in row.iter_mut().enumerate() {
                    *r += bias[base + j];
                }
                if mode == 2 {
                    qk_out[base..base + skv].copy_from_slice(&row);
                }
                let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = row.iter().map(|x| (x - m).exp()).sum();
                row.iter_mut().for_each(|x| *x = (*x - m).exp() / sum);
                if mode == 3 {
                    qk_out[base..base + skv].copy_from_slice(&row);
                }
                let yo = ((bi * hq + h) * sq + si) * dv;
                for (j, &p) in row.iter().enumerate() {
                    for (acc, &val) in y[yo..yo + dv].iter_mut().zip(v.at(bi, kh, j)) {
                        *acc += p * val;
                    }
                }
            }
        }
    }
    let y = if qt.rank() == 3 {
        let mut t = vec![0f64; y.len()];
        for bi in 0..b {
            for si in 0..sq {
                for h in 0..hq {
                    let src = ((bi * hq + h) * sq + si) * dv;
                    let dst = (bi * sq + si) * hq * dv + h * dv;
                    t[dst..dst + dv].copy_from_slice(&y[src..src + dv]);
                }
            }
        }
        Tensor::from_parts(vec![b, sq, hq * dv], Storage::F64(t))
    } else {
        Tensor::from_parts(vec![b, hq, sq, dv], Storage::F64(y))
    };
    let qk = Tensor::from_parts(vec![b, hq, sq, skv], Storage::F64(qk_out));
    Ok(vec![super::cast::cast_to(&y, dtype)?, k.tensor(dtype)?, v.tensor(dtype)?, super::cast::cast_to(&qk, dtype)?])
}

/// ONNX `RotaryEmbedding` (opset 23): rotates pairs of each head's first
/// `rotary_embedding_dim` features by the cached angles of each position.
pub fn rotary_embedding(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let (x, cos, sin) = (i.req(0)?, i.req(1)?, i.req(2)?);
    let xv = floats(x)?;
    // Element (b, s, h, d) → flat offset, for 4-D [B, H, S, D] or 3-D [B, S, H·D].
    let (b, s, h, d, four) = match *x.shape() {
        [b, h, s, d] => (b, s, h, d, true),
        [b, s, hidden] => {
            let h = c.int("num_heads", 0);
            if h <= 0 || hidden % h as usize != 0 {
                kbail!("3-D input needs num_heads dividing its hidden size {hidden}");
            }
            (b, s, h as usize, hidden / h as usize, false)
        }
        _ => kbail!("input must be 3-D or 4-D, got {:?}", x.shape()),
    };
    let at = |bi: usize, si: usize, hi: usize, di: usize| {
        if four {
            ((bi * h + hi) * s + si) * d + di
        } else {
            (bi * s + si) * h * d + hi * d + di
        }
    };
    let rot = match c.int("rotary_embedding_dim", 0) {
        0 => d,
        r if r > 0 && r as usize <= d && r % 2 == 0 => r as usize,
        r => kbail!("rotary_embedding_dim {r} does not fit head size {d}"),
    };
    let half = rot / 2;
    let (cv, sv) = (floats(cos)?, floats(sin)?);
    if cos.shape().last() != Some(&half) || sin.shape() != cos.shape() {
        kbail!("cos/sin caches {:?} must end in rotary_embedding_dim/2 = {half}", cos.shape());
    }
    let pos = i.opt(3).map(ints).transpose()?;
    let rows = cv.len() / half.max(1);
    let row_of = |bi: usize, si: usize| -> KResult<usize> {
        let r = match &pos {
            Some(p) => match p.get(bi * s + si) {
                Some(&v) if v >= 0 => v as usize,
                _ => kbail!("position_ids must be [B, S] of non-negative positions"),
            },
            None => bi * s + si,
        };
        if r >= rows {
            kbail!("position {r} is beyond the {rows} cached positions");
        }
        Ok(r)
    };
    let interleaved = c.int("interleaved", 0) != 0;
    let mut out = xv.clone();
    for bi in 0..b {
        for si in 0..s {
            let r = row_of(bi, si)?;
            for hi in 0..h {
                for j in 0..half {
                    let (p, q) = if interleaved { (2 * j, 2 * j + 1) } else { (j, j + half) };
                    let (x1, x2) = (xv[at(bi, si, hi, p)], xv[at(bi, si, hi, q)]);
                    let (co, sn) = (cv[r * half + j], sv[r * half + j]);
                    out[at(bi, si, hi, p)] = co * x1 - sn * x2;
                    out[at(bi, si, hi, q)] = sn * x1 + co * x2;
                }
            }
        }
    }
    let t = Tensor::from_parts(x.shape().to_vec(), Storage::F64(out));
    Ok(vec![super::cast::cast_to(&t, x.dtype())?])
}

pub const OPS: &[(&str, KernelFn)] = &[("Attention", attention), ("RotaryEmbedding", rotary_embedding)];
