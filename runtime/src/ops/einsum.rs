//! `Einsum`: any equation (explicit or implicit output, `...` ellipsis with broadcasting), as a
//! loop over every combination of the labels. Correct for every case, fast only for small ones;
//! exporters lower the common contractions to MatMul anyway.

use super::util::{broadcast_shapes, checked_numel, floats, strides};
use super::{Inputs, KernelFn, OpCtx};
use crate::error::{kbail, KResult};
use crate::tensor::{Storage, Tensor};

/// Labels of one operand with `...` expanded to labels `0`, `1`, … for `ell` dims.
fn expand(term: &str, ell: usize, max_ell: usize) -> KResult<Vec<char>> {
    let mut out = Vec::new();
    let parts: Vec<&str> = term.split("...").collect();
    if parts.len() > 2 {
        kbail!("more than one ellipsis in `{term}`");
    }
    out.extend(parts[0].chars());
    if parts.len() == 2 {
        // Ellipsis dims are right-aligned among `max_ell` broadcast labels.
        out.extend((max_ell - ell..max_ell).map(|k| char::from_u32(0x2460 + k as u32).unwrap_or('?')));
        out.extend(parts[1].chars());
    }
    if out.iter().any(|c| !(c.is_ascii_alphabetic() || ('\u{2460}'..='\u{24ff}').contains(c))) {
        kbail!("bad label in `{term}`");
    }
    Ok(out)
}

pub fn einsum(c: &OpCtx, i: &Inputs) -> KResult<Vec<Tensor>> {
    let eq: String = c.string("equation").unwrap_or_default().chars().filter(|c| !c.is_whitespace()).collect();
    let ins = i.present();
    let (lhs, rhs) = match eq.split_once("->") {
        Some((l, r)) => (l, Some(r)),
        None => (eq.as_str(), None),
    };
    let terms: Vec<&str> = lhs.split(',').collect();
    if terms.len() != ins.len() {
        kbail!("equation `{eq}` has {} operands but {} inputs were given", terms.len(), ins.len());
    }
    let ell_of = |t: &str, rank: usize| -> KResult<usize> {
        if t.contains("...") {
            let named = t.replace("...", "").chars().count();
            if named > rank {
                kbail!("`{t}` names more dims than rank {rank}");
            }
            Ok(rank - named)
        } else {
            Ok(0)
        }
    };
    let ells: Vec<usize> = terms.iter().zip(&ins).map(|(t, x)| ell_of(t, x.rank())).collect::<KResult<_>>()?;
    let max_ell = ells.iter().copied().max().unwrap_or(0);
    let mut labels = Vec::new();
    let mut sizes: std::collections::BTreeMap<char, usize> = Default::default();
    let mut ell_shapes: Vec<Vec<usize>> = Vec::new();
    for (k, (t, x)) in terms.iter().zip(&ins).enumerate() {
        let l = expand(t, ells[k], max_ell)?;
        if l.len() != x.rank() {
            kbail!("`{t}` does not match input {k} of rank {}", x.rank());
        }
        let mut es = Vec::new();
        for (&ch, &d) in l.iter().zip(x.shape()) {
            if ch >= '\u{2460}' {
                es.push(d);
                continue;
            }
            match sizes.get(&ch) {
                Some(&s) if s != d => kbail!("label `{ch}` has sizes {s} and {d}"),
                _ => {
                    sizes.insert(ch, d);
                }
            }
        }
        ell_shapes.push(es);
        labels.push(l);
    }
    // Broadcast the ellipsis dims.
    let es_refs: Vec<&[usize]> = ell_shapes.iter().map(Vec::as_slice).collect();
    let ell_dims = broadcast_shapes(&es_refs)?;
    for (k, &d) in ell_dims.iter().enumerate() {
        sizes.insert(char::from_u32(0x2460 + (max_ell - ell_dims.len() + k) as u32).unwrap_or('?'), d);
    }
    let out_labels: Vec<char> = match rhs {
        Some(r) => expand(r, if r.contains("...") { max_ell } else { 0 }, max_ell)?,
        None => {
            let mut once: Vec<char> = sizes
                .keys()
                .copied()
                .filter(|ch| *ch < '\u{2460}' && labels.iter().flatten().filter(|c| *c == ch).count() == 1)
                .collect();
            once.sort_unstable();
            let mut v: Vec<char> = (0..max_ell).map(|k| char::from_u32(0x2460 + k as u32).unwrap_or('?')).collect();
            v.extend(once);
            v
        }
    };
    let all: Vec<char> = sizes.keys().copied().collect();
    let pos = |ch: char| all.iter().position(|&c| c == ch).unwrap_or(0);
    let dims: Vec<usize> = all.iter().map(|c| sizes[c]).collect();
    for ch in &out_labels {
        if !sizes.contains_key(ch) {
            kbail!("output label `{ch}` does not appear in the inputs");
        }
    }
    let out_shape: Vec<usize> = out_labels.iter().map(|c| sizes[c]).collect();
    let n_out = checked_numel(&out_shape)?;
    let total = checked_numel(&dims)?;
    let vals: Vec<Vec<f64>> = ins.iter().map(|t| floats(t)).collect::<KResult<_>>()?;
    // Per input: stride of each label (0 for broadcast ellipsis dims of size 1).
    let in_strides: Vec<Vec<usize>> = labels
        .iter()
        .zip(&ins)
        .map(|(l, x)| {
            let st = strides(x.shape());
            let mut s = vec![0usize; all.len()];
            for (k, &ch) in l.iter().enumerate() {
                if x.shape()[k] != 1 || sizes[&ch] == 1 {
                    s[pos(ch)] += st[k];
                }
            }
            s
        })
        .collect();
    let ost = strides(&out_shape);
    let mut out_st = vec![0usize; all.len()];
    for (k, &ch) in out_labels.iter().enumerate() {
        out_st[pos(ch)] += ost[k];
    }
    let mut out = vec![0f64; n_out];
    let dst = strides(&dims);
    for combo in 0..total {
        let mut prod = 1.0;
        let mut o = 0;
        for (d, &st) in dst.iter().enumerate() {
            let idx = (combo / st) % dims[d].max(1);
            o += idx * out_st[d];
        }
        for (v, s) in vals.iter().zip(&in_strides) {
            let mut off = 0;
            for (d, &st) in dst.iter().enumerate() {
                off += ((combo / st) % dims[d].max(1)) * s[d];
            }
            prod *= v[off];
        }
        out[o] += prod;
    }
    let dtype = ins.first().map_or(adaptc_ir::DataType::Float, |t| t.dtype());
    let t = Tensor::from_parts(out_shape, Storage::F64(out));
    Ok(vec![super::cast::cast_to(&t, dtype)?])
}

pub const OPS: &[(&str, KernelFn)] = &[("Einsum", einsum)];
