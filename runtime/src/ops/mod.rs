//! CPU kernels, one module per op family, and the context they run in.
//!
//! A kernel is a plain function from its node context and inputs to its outputs. Kernels check
//! every shape, attribute and index they are given and return [`KernelError`]s; none panics on
//! bad input.

pub mod num;
pub mod util;

pub mod attention;
pub mod binary;
pub mod cast;
pub mod chain;
pub mod compare;
pub mod conv;
pub mod detection;
pub mod einsum;
pub mod fused_attention;
pub mod gather;
pub mod grad;
pub mod grid_sample;
pub mod loss;
pub mod matmul;
pub mod misc;
pub mod norm;
pub mod optim;
pub mod pool;
pub mod quant;
pub mod reduce;
pub mod resize;
pub mod shape;
pub mod signal;
pub mod slice;
pub mod softmax;
pub mod strided;
pub mod unary;

use adaptc_ir::{AttrValue, Node};

use crate::error::{kbail, KResult};
use crate::tensor::Tensor;

/// What a kernel knows about the node it runs: attributes and the opset version in force.
pub struct OpCtx<'a> {
    pub node: &'a Node,
    /// The imported version of the node's domain (semantics of some ops changed over versions).
    pub opset: i64,
}

impl OpCtx<'_> {
    pub fn int(&self, name: &str, default: i64) -> i64 {
        self.node.attr_int(name, default)
    }

    pub fn float(&self, name: &str, default: f32) -> f32 {
        self.node.attr(name).and_then(|a| a.as_float()).unwrap_or(default)
    }

    pub fn ints(&self, name: &str) -> Option<Vec<i64>> {
        self.node.attr(name).and_then(|a| a.as_ints()).map(<[i64]>::to_vec)
    }

    pub fn floats(&self, name: &str) -> Option<Vec<f32>> {
        match &self.node.attr(name)?.value {
            AttrValue::Floats(v) => Some(v.clone()),
            _ => None,
        }
    }

    pub fn string(&self, name: &str) -> Option<String> {
        match &self.node.attr(name)?.value {
            AttrValue::String(s) => Some(String::from_utf8_lossy(s).into_owned()),
            _ => None,
        }
    }

    pub fn has(&self, name: &str) -> bool {
        self.node.attr(name).is_some()
    }
}

/// The inputs of one kernel call; `None` marks an omitted optional input.
pub struct Inputs<'a>(pub &'a [Option<&'a Tensor>]);

impl<'a> Inputs<'a> {
    /// A required input.
    pub fn req(&self, i: usize) -> KResult<&'a Tensor> {
        match self.0.get(i).copied().flatten() {
            Some(t) => Ok(t),
            None => kbail!("input {i} is required but missing"),
        }
    }

    /// An optional input.
    pub fn opt(&self, i: usize) -> Option<&'a Tensor> {
        self.0.get(i).copied().flatten()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// All present inputs, in order.
    pub fn present(&self) -> Vec<&'a Tensor> {
        self.0.iter().flatten().copied().collect()
    }
}

/// The signature every CPU kernel has.
pub type KernelFn = fn(&OpCtx, &Inputs) -> KResult<Vec<Tensor>>;
