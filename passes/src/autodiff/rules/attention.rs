//! Fused attention: `ai.adaptc::SoftmaxAttention` (written by `fuse-attention`). Its gradient
//! is one `ai.adaptc::SoftmaxAttentionGrad` that rebuilds the probabilities block by block
//! from the forward's row log-Σ-exp, so neither pass stores the `[…, M, N]` scores.

use super::{r, Grads, Rule, RuleCx};
use crate::pass::PassError;

pub const OPS: &[&str] = &["SoftmaxAttention"];

/// The rule of an `ai.adaptc` forward op.
pub fn rule(op: &str) -> Option<Rule> {
    Some(match op {
        "SoftmaxAttention" => r(&[0, 1, 2, 3], softmax_attention),
        _ => return None,
    })
}

fn softmax_attention(cx: &mut RuleCx, dys: &[Option<String>]) -> Result<Grads, PassError> {
    let g = dys.first().cloned().flatten().ok_or_else(|| cx.fail("no gradient reached its output"))?;
    if dys.get(1).is_some_and(Option::is_some) {
        return Err(cx.fail("its log-Σ-exp output is for the backward only and cannot be differentiated"));
    }
    if cx.wants(2) {
        return Err(cx.fail(
            "the attention bias depends on a trainable tensor; its gradient is not supported \
             (run the model without fuse-attention)",
        ));
    }
    let (a, b, v) = (cx.input(0)?, cx.input(1)?, cx.input(3)?);
    let bias = cx.node.input(2).unwrap_or_default().to_string();
    let (y, lse) = (cx.output(0)?, cx.output(1)?);
    let attrs = cx.attrs(&["masked_rows_zero", "products"]);
    let wanted = [cx.wants(0), cx.wants(1), cx.wants(3)];
    let inputs = [a.as_str(), b.as_str(), bias.as_str(), v.as_str(), y.as_str(), lse.as_str(), g.as_str()];
    let mut grads = cx.em.grad_op_n("SoftmaxAttentionGrad", &inputs, attrs, &y, &wanted)?;
    grads.insert(2, None);
    Ok(grads)
}
