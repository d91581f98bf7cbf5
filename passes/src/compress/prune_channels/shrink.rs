//! Shrinking constants along one axis, and keeping declared shapes (`value_info`) true.
//!
//! A [`Cut`] keeps some blocks of a constant along one axis (channels: blocks of 1; heads:
//! blocks of the head size). The bytes are copied as they are, so every fixed-width storage
//! type (float32, float16, bfloat16, …) is cut exactly. A `value_info` entry that still says
//! the old width would make onnxruntime reject the model or infer wrong shapes: it is
//! rewritten when the axis is known, dropped otherwise.

use adaptc_ir::{Attribute, Dim, Graph, Tensor, TypeInfo};

use crate::pattern::constant_tensor;

/// Keep blocks `keep` (ascending) of `block` elements along `axis` of the constant `value`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cut {
    pub value: String,
    pub axis: usize,
    pub block: usize,
    pub keep: Vec<usize>,
}

impl Cut {
    /// The cut tensor (name, doc string and metadata kept).
    pub fn apply_to(&self, t: &Tensor) -> Result<Tensor, String> {
        let dims = t.dims();
        let Some(&len) = dims.get(self.axis) else {
            return Err(format!("`{}` {dims:?} has no axis {}", self.value, self.axis));
        };
        let bits = t.dtype().bit_width().filter(|b| b % 8 == 0 && *b > 0);
        let Some(bits) = bits else {
            return Err(format!("`{}` is {}, whose elements are not whole bytes", self.value, t.dtype()));
        };
        let block = self.block.max(1);
        if (len as usize).checked_rem(block) != Some(0) || self.keep.iter().any(|&k| (k + 1) * block > len as usize) {
            return Err(format!("`{}` {dims:?}: axis {} does not hold the blocks to keep", self.value, self.axis));
        }
        let elem = (bits / 8) as usize;
        let inner: usize = dims[self.axis + 1..].iter().map(|&d| d as usize).product::<usize>() * elem;
        let outer: usize = dims[..self.axis].iter().map(|&d| d as usize).product();
        let bytes = t.bytes().map_err(|e| e.to_string())?;
        let row = len as usize * inner;
        let mut out = Vec::with_capacity(outer * self.keep.len() * block * inner);
        for o in 0..outer {
            for &k in &self.keep {
                let start = o * row + k * block * inner;
                out.extend_from_slice(&bytes[start..start + block * inner]);
            }
        }
        let mut new_dims = dims.to_vec();
        new_dims[self.axis] = (self.keep.len() * block) as u64;
        let mut cut = Tensor::from_bytes(t.name.clone(), t.dtype(), new_dims, out).map_err(|e| e.to_string())?;
        cut.doc_string = t.doc_string.clone();
        cut.metadata = t.metadata.clone();
        Ok(cut)
    }

    /// Cuts the constant in the graph: an initializer in place, or a `Constant` node's value.
    pub fn apply(&self, graph: &mut Graph) -> Result<(), String> {
        let t = constant_tensor(graph, &self.value).ok_or_else(|| format!("`{}` is not a constant", self.value))?;
        let cut = self.apply_to(t)?;
        if graph.initializer(&self.value).is_some() {
            graph.replace_initializer(cut).map_err(|e| e.to_string())?;
        } else {
            let (id, _) = graph.producer(&self.value).ok_or_else(|| format!("`{}` has no producer", self.value))?;
            graph.set_attr(id, Attribute::tensor("value", cut));
        }
        forget_declared(graph, &self.value);
        Ok(())
    }
}

/// Rewrites the declared dimension `from_end` places from the end of `value` from `old` to
/// `new` (idempotent); drops the declaration when it says something else there.
pub fn resize_declared(graph: &mut Graph, value: &str, from_end: usize, old: u64, new: u64) {
    graph.value_info.retain_mut(|v| {
        if v.name != value {
            return true;
        }
        let Some(ty) = &v.ty else { return true };
        let (Some(dtype), Some(mut dims)) = (ty.dtype(), ty.dims()) else { return true };
        let Some(i) = dims.len().checked_sub(from_end + 1) else { return false };
        match dims[i] {
            Dim::Known(d) if d == old as i64 || d == new as i64 => {
                dims[i] = Dim::Known(new as i64);
                v.ty = Some(TypeInfo::tensor(dtype, Some(dims)));
                true
            }
            Dim::Known(_) => false,
            _ => true,
        }
    });
}

/// Drops the declared type of `value` (onnxruntime infers it again).
pub fn forget_declared(graph: &mut Graph, value: &str) {
    graph.value_info.retain(|v| v.name != value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_rows_columns_and_blocks() {
        let t = Tensor::from_f32("w", vec![2, 4], &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]).unwrap();
        let cols = Cut { value: "w".into(), axis: 1, block: 1, keep: vec![0, 3] }.apply_to(&t).unwrap();
        assert_eq!((cols.dims().to_vec(), cols.to_f32().unwrap()), (vec![2, 2], vec![0.0, 3.0, 4.0, 7.0]));
        let rows = Cut { value: "w".into(), axis: 0, block: 1, keep: vec![1] }.apply_to(&t).unwrap();
        assert_eq!(rows.to_f32().unwrap(), vec![4.0, 5.0, 6.0, 7.0]);
        let heads = Cut { value: "w".into(), axis: 1, block: 2, keep: vec![1] }.apply_to(&t).unwrap();
        assert_eq!(heads.to_f32().unwrap(), vec![2.0, 3.0, 6.0, 7.0]);
        assert!(Cut { value: "w".into(), axis: 1, block: 3, keep: vec![0] }.apply_to(&t).is_err());
    }
}
