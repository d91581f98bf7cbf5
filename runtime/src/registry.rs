//! The op registry: `(domain, op_type)` → kernel. Lowering looks every node up here, so an op
//! without a kernel fails before anything runs, naming the node.
//!
//! Kernels compute their outputs' shapes from the concrete input shapes and attributes when
//! they run; the opset version in force is passed to them (Reshape/Squeeze/Split/Reduce*/
//! Clip/Pad/Slice/Softmax changed meaning across versions).

use std::collections::HashMap;
use std::sync::OnceLock;

use adaptc_ir::{is_default_domain, OpKey};

use crate::ops::{self, KernelFn};

/// The domain of onnxruntime's contrib ops.
pub const MS_DOMAIN: &str = "com.microsoft";

/// adaptc's own domain: the gradient ops that the autodiff pass emits ([`ops::grad`]).
pub const ADAPTC_DOMAIN: &str = "ai.adaptc";

/// What the runtime knows about one op.
#[derive(Clone, Copy)]
pub struct OpDef {
    pub kernel: KernelFn,
}

/// Kernels by `(domain, op_type)`, the default domain spelled `""`.
pub struct Registry {
    ops: HashMap<(String, String), OpDef>,
}

impl Registry {
    /// The CPU kernels.
    pub fn cpu() -> &'static Registry {
        static REGISTRY: OnceLock<Registry> = OnceLock::new();
        REGISTRY.get_or_init(|| {
            let mut r = Registry { ops: HashMap::new() };
            let families: &[&[(&str, KernelFn)]] = &[
                ops::unary::OPS,
                ops::binary::OPS,
                ops::compare::OPS,
                ops::cast::OPS,
                ops::shape::OPS,
                ops::slice::OPS,
                ops::gather::OPS,
                ops::matmul::OPS,
                ops::reduce::OPS,
                ops::softmax::OPS,
                ops::norm::OPS,
                ops::conv::OPS,
                ops::pool::OPS,
                ops::quant::OPS,
                ops::misc::OPS,
                ops::loss::OPS,
                ops::attention::OPS,
                ops::resize::OPS,
                ops::signal::OPS,
                ops::einsum::OPS,
                ops::grid_sample::OPS,
                ops::detection::OPS,
            ];
            for family in families {
                for &(name, kernel) in *family {
                    r.ops.insert((String::new(), name.to_string()), OpDef { kernel });
                }
            }
            for &(name, kernel) in ops::quant::MS_OPS {
                r.ops.insert((MS_DOMAIN.to_string(), name.to_string()), OpDef { kernel });
            }
            for &(name, kernel) in ops::grad::OPS
                .iter()
                .chain(ops::fused_attention::OPS)
                .chain(ops::optim::OPS)
                .chain(ops::chain::OPS)
                .chain(ops::loss::ADAPTC_OPS)
            {
                r.ops.insert((ADAPTC_DOMAIN.to_string(), name.to_string()), OpDef { kernel });
            }
            r
        })
    }

    pub fn get(&self, op: &OpKey) -> Option<&OpDef> {
        let domain = if is_default_domain(&op.domain) { "" } else { op.domain.as_str() };
        self.ops.get(&(domain.to_string(), op.op_type.clone()))
    }

    /// Every registered op, sorted (for docs and `adaptc inspect`).
    pub fn ops(&self) -> Vec<OpKey> {
        let mut v: Vec<OpKey> = self.ops.keys().map(|(d, o)| OpKey::new(d, o)).collect();
        v.sort();
        v
    }
}
