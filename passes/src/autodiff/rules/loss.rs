//! Losses: SoftmaxCrossEntropyLoss, differentiated in one fused op
//! (`softmax(scores) − onehot(labels)`, weighted and scaled like the forward reduction).

use super::{r, Grads, Rule, RuleCx};
use crate::pass::PassError;

pub const OPS: &[&str] = &["SoftmaxCrossEntropyLoss"];

pub fn rule(op: &str) -> Option<Rule> {
    Some(match op {
        "SoftmaxCrossEntropyLoss" => r(&[0], softmax_cross_entropy),
        _ => return None,
    })
}

fn softmax_cross_entropy(cx: &mut RuleCx, dys: &[Option<String>]) -> Result<Grads, PassError> {
    if dys.iter().skip(1).any(Option::is_some) {
        return Err(cx.fail("the log-probability output may not be differentiated"));
    }
    let g = dys.first().cloned().flatten().ok_or_else(|| cx.fail("no gradient reached the loss"))?;
    let (scores, labels) = (cx.input(0)?, cx.input(1)?);
    let mut inputs = vec![g, scores.clone(), labels];
    if let Some(w) = cx.node.input(2) {
        inputs.push(w.to_string());
    }
    let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let attrs = cx.attrs(&["reduction", "ignore_index"]);
    let d = cx.em.grad_op("SoftmaxCrossEntropyLossGrad", &refs, attrs, &scores)?;
    let mut v = vec![None; cx.node.inputs().len()];
    v[0] = Some(d);
    Ok(v)
}
