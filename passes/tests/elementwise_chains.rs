//! The plan's elementwise chains on real training graphs (`adaptc train`'s pipeline on the
//! Llama fixture: LoRA on all linear layers, fused attention, bf16 autocast; and BERT with
//! LoRA): loss and every gradient the same bits as the node-by-node plan, with most
//! elementwise nodes folded into chains.

use std::collections::HashMap;

use adaptc_ir::Model;
use adaptc_runtime::{Session, SessionOptions, Tensor};

mod common;

use common::{fixture, rewrite, token_ids as ids};

/// Runs `m` fused and unfused on `feed`: the same bits everywhere. Returns how many
/// instructions each plan has and how many chains the fused one runs.
fn same_bits(m: &Model, feed: HashMap<String, Tensor>) -> (usize, usize, usize) {
    let fused = Session::new(m, SessionOptions::default()).unwrap();
    let plain = Session::new(m, SessionOptions { unfused: true, ..Default::default() }).unwrap();
    let (a, b) = (fused.run(feed.clone()).unwrap(), plain.run(feed).unwrap());
    assert_eq!(a.len(), b.len());
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert!(ta.to_le_bytes() == tb.to_le_bytes(), "{na} differs between the fused and the node-by-node plan");
    }
    let chains = fused.plan().instructions.iter().filter(|i| i.node.op().op_type == "ElementwiseChain").count();
    (fused.plan().instructions.len(), plain.plan().instructions.len(), chains)
}

#[test]
fn llama_autocast_training_graph_keeps_its_bits_in_chains() {
    let base = "insert-lora{rank=8 alpha=16 targets=all-linear},fuse-attention,autocast{dtype=bf16},build-training-graph{loss=causal-lm}";
    let (m, _) = rewrite(fixture("llama4/model.onnx"), base);
    let (b, s) = (2, 24);
    let feed = HashMap::from([
        ("input_ids".to_string(), ids(b, s, 1000)),
        ("attention_mask".to_string(), Tensor::from_vec(vec![b, s], vec![1i64; b * s]).unwrap()),
    ]);
    let (fused, plain, chains) = same_bits(&m, feed);
    println!("llama4 training plan: {plain} instructions node by node, {fused} with {chains} chains");
    assert!(chains >= 20 && fused * 10 < plain * 8, "{fused} vs {plain} instructions, {chains} chains");
}

#[test]
fn bert_training_graph_keeps_its_bits_in_chains() {
    let base = "add-head{kind=classification labels=3},insert-lora{rank=8 alpha=16 targets=query,value},build-training-graph{loss=cross-entropy}";
    let (m, _) = rewrite(fixture("bert6.onnx"), base);
    let (b, s) = (2, 16);
    let feed = HashMap::from([
        ("input_ids".to_string(), ids(b, s, 100)),
        ("attention_mask".to_string(), Tensor::from_vec(vec![b, s], vec![1i64; b * s]).unwrap()),
        ("token_type_ids".to_string(), Tensor::from_vec(vec![b, s], vec![0i64; b * s]).unwrap()),
        ("labels".to_string(), Tensor::from_vec(vec![b], vec![0i64, 2]).unwrap()),
    ]);
    let (fused, plain, chains) = same_bits(&m, feed);
    println!("bert6 training plan: {plain} instructions node by node, {fused} with {chains} chains");
    assert!(chains >= 10 && fused < plain, "{fused} vs {plain} instructions, {chains} chains");
}
