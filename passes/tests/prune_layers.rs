//! `prune-layers` and the block finder: pruning a stack equals building it without those blocks
//! (dump for dump, and numerically with the f64 evaluator), the shared values the first block
//! computes survive, a pruned last block hands the graph output's name on, the dynamo fixtures
//! (BERT and Llama) lose exactly their blocks, and the refusals name their reason.

mod lora_support;

use std::collections::HashMap;

use adaptc_ir::{DataType, Dim, Graph, Model, ValueInfo};
use adaptc_passes::pattern::find_block_stacks;
use lora_support::*;

// ----- a small stack ---------------------------------------------------------------------------

/// `x → e = Relu(x)` then blocks `out_k = out_{k-1} + (out_{k-1}·W_k) ⊙ mask`, where block 0 also
/// computes the shared `mask = e·c` (`[2, 1]`) that every block reads (as the dynamo exporter places
/// shared masks in the first block). Block `k`'s weight depends only on `k`, so a stack built
/// from `blocks = [0, 2]` is what pruning block 1 from `[0, 1, 2]` must give. The last block
/// writes `y`, a graph output, or feeds `Relu → y` when `head` is set.
fn stack(blocks: &[usize], head: bool) -> Model {
    let mut g = Graph::new("stack");
    g.inputs.push(ValueInfo::tensor("x", DataType::Float, vec![Dim::Known(2), Dim::Known(4)]));
    g.outputs.push(ValueInfo::tensor("y", DataType::Float, vec![Dim::Known(2), Dim::Known(4)]));
    g.add_initializer(tensor("c", &Arr::random(&[4, 1], 99))).unwrap();
    op(&mut g, "Relu", "/embed/Relu", &["x"], &["e"]);
    let mut stream = "e".to_string();
    for (pos, &k) in blocks.iter().enumerate() {
        let w = format!("enc.layer.{k}.ffn.weight");
        g.add_initializer(tensor(&w, &Arr::random(&[4, 4], k as u64 + 1))).unwrap();
        if pos == 0 {
            op(&mut g, "MatMul", &format!("/enc/layer.{k}/attn/MatMul"), &["e", "c"], &["mask"]);
            g.value_info.push(ValueInfo::tensor("mask", DataType::Float, vec![Dim::Known(2), Dim::Known(1)]));
        }
        let last = pos + 1 == blocks.len();
        let out = if last && !head { "y".to_string() } else { format!("out{k}") };
        if out != "y" {
            g.value_info.push(ValueInfo::tensor(&out, DataType::Float, vec![Dim::Known(2), Dim::Known(4)]));
        }
        op(&mut g, "MatMul", &format!("/enc/layer.{k}/ffn/MatMul"), &[&stream, &w], &[&format!("m{k}")]);
        op(&mut g, "Mul", &format!("/enc/layer.{k}/ffn/Mul"), &[&format!("m{k}"), "mask"], &[&format!("g{k}")]);
        op(&mut g, "Add", &format!("/enc/layer.{k}/Add"), &[&stream, &format!("g{k}")], &[&out]);
        stream = out;
    }
    if head {
        op(&mut g, "Relu", "/head/Relu", &[&stream], &["y"]);
    }
    adaptc_ir::verify(&g).unwrap();
    Model::new(g, 17)
}

fn feeds() -> HashMap<String, Arr> {
    HashMap::from([("x".to_string(), Arr::random(&[2, 4], 7))])
}

#[test]
fn finds_blocks_and_stream() {
    let model = stack(&[0, 1, 2], true);
    let stacks = find_block_stacks(&model.graph).unwrap();
    assert_eq!(stacks.len(), 1);
    assert_eq!(stacks[0].name, "enc.layer");
    let links: Vec<(usize, &str, &str)> =
        stacks[0].blocks.iter().map(|b| (b.index, b.input.as_str(), b.output.as_str())).collect();
    assert_eq!(links, vec![(0, "e", "out0"), (1, "out0", "out1"), (2, "out1", "out2")]);
    assert_eq!(stacks[0].blocks[0].nodes.len(), 4, "block 0 holds the shared mask too");
}

#[test]
fn pruning_a_middle_block_equals_building_without_it() {
    for head in [true, false] {
        let mut pruned = stack(&[0, 1, 2], head);
        let report = run("prune-layers{layers=1}", &mut pruned);
        let expected = stack(&[0, 2], head);
        assert_eq!(adaptc_ir::dump(&pruned), adaptc_ir::dump(&expected), "head={head}");
        assert_eq!(report.stat("prune.blocks_removed"), Some(1));
        assert_eq!(report.stat("prune.nodes_removed"), Some(3));
        assert_eq!(report.stat("prune.initializers_removed"), Some(1));
        assert_eq!(report.stat("prune.params_before"), Some(4 + 3 * 16));
        assert_eq!(report.stat("prune.params_after"), Some(4 + 2 * 16));
        let (a, b) = (eval(&pruned.graph, &feeds(), "y"), eval(&expected.graph, &feeds(), "y"));
        assert_eq!(a.max_abs_diff(&b), 0.0);
    }
}

#[test]
fn pruning_the_last_block_keeps_the_output_name() {
    let mut pruned = stack(&[0, 1, 2], false);
    run("prune-layers{layers=2}", &mut pruned);
    assert_eq!(adaptc_ir::dump(&pruned), adaptc_ir::dump(&stack(&[0, 1], false)));
    assert_eq!(pruned.graph.outputs[0].name, "y");
    assert!(pruned.graph.outputs[0].ty.is_some(), "the output keeps its type");
}

#[test]
fn pruning_the_first_block_keeps_the_shared_mask() {
    let mut pruned = stack(&[0, 1, 2], true);
    let report = run("prune-layers{layers=0}", &mut pruned);
    // Block 0's MatMul/Mul/Add go; its `mask` node stays because blocks 1 and 2 read it.
    assert_eq!(report.stat("prune.nodes_removed"), Some(3));
    assert!(report.runs[0].notes.iter().any(|n| n.contains("/enc/layer.0/attn/MatMul")), "{:?}", report.runs[0].notes);
    // The same function as the stack [1, 2] with the mask computed first.
    let mut expected = stack(&[1, 2], true);
    expected.graph.sort().unwrap();
    let (a, b) = (eval(&pruned.graph, &feeds(), "y"), eval(&expected.graph, &feeds(), "y"));
    assert!(a.max_abs_diff(&b) < 1e-12);
}

#[test]
fn pruning_every_block_connects_the_embedding_to_the_head() {
    let mut pruned = stack(&[0, 1, 2], false);
    run("prune-layers{layers=0,1,2}", &mut pruned);
    // `e = Relu(x)` now writes `y` itself.
    let x = &feeds()["x"];
    let relu = Arr::new(&x.dims, x.data.iter().map(|v| v.max(0.0)).collect());
    assert_eq!(eval(&pruned.graph, &feeds(), "y").max_abs_diff(&relu), 0.0);
    assert_eq!(pruned.graph.num_nodes(), 1);
    assert_eq!(pruned.graph.num_initializers(), 0, "the mask's constant went with the mask");
}

// ----- exported fixtures -----------------------------------------------------------------------

fn op_count(model: &Model, op: &str) -> usize {
    model.graph.nodes().filter(|(_, n)| n.op().is(op)).count()
}

#[test]
fn bert6_loses_exactly_blocks_4_and_5() {
    let mut model = load("bert6.onnx");
    let matmuls = op_count(&model, "MatMul");
    run("prune-layers{layers=4,5}", &mut model);
    assert_eq!(op_count(&model, "MatMul"), matmuls / 6 * 4, "8 MatMuls per block");
    let left: Vec<String> = model
        .graph
        .initializers()
        .map(|t| t.name.clone())
        .filter(|n| n.contains("layer.4.") || n.contains("layer.5."))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let stacks = find_block_stacks(&model.graph).unwrap();
    assert_eq!(stacks[0].blocks.iter().map(|b| b.index).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
}

#[test]
fn llama4_keeps_its_interface() {
    let base = load("llama4/model.onnx");
    let mut model = base.clone();
    let report = run("prune-layers{layers=1,3}", &mut model);
    assert_eq!(report.stat("prune.blocks_removed"), Some(2));
    assert_eq!(model.graph.outputs, base.graph.outputs);
    assert_eq!(model.graph.inputs, base.graph.inputs);
    let stacks = find_block_stacks(&model.graph).unwrap();
    let kept: Vec<usize> = stacks[0].blocks.iter().map(|b| b.index).collect();
    assert_eq!(kept, vec![0, 2]);
    assert_eq!(stacks[0].blocks[1].input, stacks[0].blocks[0].output);
}

// ----- refusals --------------------------------------------------------------------------------

#[test]
fn refusals_say_why() {
    let mut model = stack(&[0, 1, 2], true);
    assert!(run_err("prune-layers{layers=3}", &mut model).contains("has no block 3; its blocks are [0, 1, 2]"));
    assert!(run_err("prune-layers", &mut model).contains("name the blocks to remove"));
    assert!(run_err("prune-layers{layers=x}", &mut model).contains("`x` is not a block index"));
    assert!(run_err("prune-layers{layers=1 stack=dec.layer}", &mut model).contains("no block stack `dec.layer`"));

    // No module paths at all.
    let mut g = Graph::new("flat");
    g.inputs.push(ValueInfo::tensor("x", DataType::Float, vec![Dim::Known(2)]));
    g.outputs.push(ValueInfo::new("y", None));
    op(&mut g, "Relu", "relu", &["x"], &["y"]);
    let mut flat = Model::new(g, 17);
    assert!(
        run_err("prune-layers{layers=0}", &mut flat).contains("no node carries a module path inside a repeated block")
    );
}

#[test]
fn several_stacks_need_a_choice() {
    let mut model = stack(&[0, 1], true);
    // A second stack `dec.layer` with one block reading the first stack's output.
    let g = &mut model.graph;
    g.add_initializer(tensor("dec.layer.0.w", &Arr::random(&[4, 4], 5))).unwrap();
    let head = g.producer("y").unwrap().0;
    g.rename_output(head, 0, "h").unwrap();
    op(g, "MatMul", "/dec/layer.0/MatMul", &["h", "dec.layer.0.w"], &["y"]);
    let err = run_err("prune-layers{layers=0}", &mut model);
    assert!(err.contains("several block stacks (`dec.layer`, `enc.layer`)"), "{err}");
    run("prune-layers{layers=0 stack=enc.layer}", &mut model);
    assert!(model.graph.initializer("enc.layer.0.ffn.weight").is_none());
    assert!(model.graph.initializer("dec.layer.0.w").is_some());
}

// ----- drop=N by=angular -----------------------------------------------------------------------

/// `input_ids → Gather(embedding)` then three blocks `out = in + (in·W_k)·s_k` with scales
/// `s = [1, 0.001, 0.5]`: block 1 barely turns the hidden state, block 0 turns it most.
fn embedded_stack() -> Model {
    let mut g = Graph::new("embedded");
    g.inputs.push(ValueInfo::tensor(
        "input_ids",
        DataType::Int64,
        vec![Dim::Symbol("batch".into()), Dim::Symbol("seq".into())],
    ));
    g.outputs.push(ValueInfo::new("y", None));
    g.add_initializer(tensor("embed.weight", &Arr::random(&[10, 4], 3))).unwrap();
    op(&mut g, "Gather", "/embed/Gather", &["embed.weight", "input_ids"], &["e"]);
    let mut stream = "e".to_string();
    for (k, scale) in [1.0, 0.001, 0.5].into_iter().enumerate() {
        let w = format!("enc.layer.{k}.ffn.weight");
        let s = format!("enc.layer.{k}.ffn.scale");
        g.add_initializer(tensor(&w, &Arr::random(&[4, 4], k as u64 + 1))).unwrap();
        g.add_initializer(tensor(&s, &Arr::new(&[1], vec![scale]))).unwrap();
        let out = if k == 2 { "y".to_string() } else { format!("out{k}") };
        op(&mut g, "MatMul", &format!("/enc/layer.{k}/ffn/MatMul"), &[&stream, &w], &[&format!("m{k}")]);
        op(&mut g, "Mul", &format!("/enc/layer.{k}/ffn/Mul"), &[&format!("m{k}"), &s], &[&format!("g{k}")]);
        op(&mut g, "Add", &format!("/enc/layer.{k}/Add"), &[&stream, &format!("g{k}")], &[&out]);
        stream = out;
    }
    adaptc_ir::verify(&g).unwrap();
    Model::new(g, 17)
}

fn calibration_file(dir: &TempDir) -> std::path::PathBuf {
    let path = dir.0.join("calib.jsonl");
    let rows = [
        "{\"input_ids\": [1, 2, 3, 4], \"text\": \"ignored\"}",
        "{\"input_ids\": [5, 6]}",
        "{\"input_ids\": [7, 8, 9]}",
    ];
    std::fs::write(&path, rows.join("\n")).unwrap();
    path
}

#[test]
fn angular_drop_removes_the_block_that_changes_least() {
    let dir = TempDir::new("prune-angular");
    let calib = calibration_file(&dir);
    let mut model = embedded_stack();
    let report = run(&format!("prune-layers{{drop=1 by=angular calib={} batch=2}}", calib.display()), &mut model);
    assert_eq!(report.stat("prune.blocks_removed"), Some(1));
    assert!(model.graph.initializer("enc.layer.1.ffn.weight").is_none());
    assert!(model.graph.initializer("enc.layer.0.ffn.weight").is_some());
    let note = report.runs[0].notes.iter().find(|n| n.contains("angular distance")).expect("a distance note");
    assert!(note.contains("removing {1}"), "{note}");

    // The distances against a hand computation of block 1's: in = out0, out = in + s·(in·W).
    let base = embedded_stack();
    let table = init_values(&base, "embed.weight");
    let mut sum = 0.0;
    let mut tokens = 0;
    for ids in [vec![1, 2, 3, 4], vec![5, 6], vec![7, 8, 9]] {
        // The evaluator has no Gather: feed the embedded rows as `e`.
        let rows: Vec<f64> = ids.iter().flat_map(|&i| table.data[i * 4..i * 4 + 4].to_vec()).collect();
        let feeds = HashMap::from([("e".to_string(), Arr::new(&[1, ids.len(), 4], rows))]);
        let (x, y) = (eval(&base.graph, &feeds, "out0"), eval(&base.graph, &feeds, "out1"));
        for t in 0..ids.len() {
            let (a, b) = (&x.data[t * 4..t * 4 + 4], &y.data[t * 4..t * 4 + 4]);
            let dot: f64 = a.iter().zip(b).map(|(p, q)| p * q).sum();
            let norm = |v: &[f64]| v.iter().map(|p| p * p).sum::<f64>().sqrt();
            sum += (dot / (norm(a) * norm(b))).clamp(-1.0, 1.0).acos() / std::f64::consts::PI;
            tokens += 1;
        }
    }
    let expected = format!("1: {:.4}", sum / tokens as f64);
    assert!(note.contains(&expected), "{note} should list {expected}");
}

#[test]
fn angular_refusals_say_why() {
    let dir = TempDir::new("prune-angular-bad");
    let mut model = embedded_stack();
    assert!(run_err("prune-layers{drop=1}", &mut model).contains("give calib=FILE.jsonl"));
    assert!(run_err("prune-layers{drop=1 layers=2 calib=x.jsonl}", &mut model).contains("either `layers` or `drop`"));
    let calib = calibration_file(&dir);
    assert!(run_err(&format!("prune-layers{{drop=3 calib={}}}", calib.display()), &mut model)
        .contains("drop must leave at least one"));
    let missing = dir.0.join("missing.jsonl");
    assert!(
        run_err(&format!("prune-layers{{drop=1 calib={}}}", missing.display()), &mut model).contains("missing.jsonl")
    );
    let bad = dir.0.join("bad.jsonl");
    std::fs::write(&bad, "{\"tokens\": [1, 2]}\n").unwrap();
    let err = run_err(&format!("prune-layers{{drop=1 calib={}}}", bad.display()), &mut model);
    assert!(err.contains("bad.jsonl line 1: no array `input_ids`"), "{err}");
    assert_eq!(adaptc_ir::dump(&model), adaptc_ir::dump(&embedded_stack()), "refusals change nothing");
}
