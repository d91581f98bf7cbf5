//! The programmatic pass API: load a model, see its linear layers, build a pipeline in Rust,
//! run it, check what it did, fold the adapters back and check the merge.
//!
//!     cargo run --example pipeline -- examples/models/tiny_bert.onnx /tmp/adapted.onnx

use adaptc::ir::onnx;
use adaptc::passes::adapters::AdapterState;
use adaptc::passes::pattern::find_linear_layers;
use adaptc::passes::{PassManager, Pipeline, Registry};
use anyhow::ensure;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let input = args.get(1).map_or("examples/models/tiny_bert.onnx", String::as_str);
    let output = args.get(2).map_or("/tmp/adaptc-example.onnx", String::as_str);
    let registry = Registry::builtin();

    let mut model = onnx::load(input.as_ref())?;
    let (base_nodes, base_inits) = (model.graph.num_nodes(), model.graph.num_initializers());
    let layers = find_linear_layers(&model.graph);
    println!("{input}: {base_nodes} nodes, {} linear layers", layers.len());
    for l in layers.iter().take(3) {
        println!("  {} [{} -> {}]", l.module_path.as_deref().unwrap_or("?"), l.in_features, l.out_features);
    }

    // The same text the CLI takes; it parses and prints back canonically.
    let pipeline: Pipeline = "insert-lora{rank=8 alpha=16 targets=query,value init=random seed=1}".parse()?;
    let report = PassManager::from_pipeline(&registry, &pipeline)?.run(&mut model)?;
    print!("{report}");

    // What the pass recorded: one adapter per query/value layer, A and B trainable.
    let state = AdapterState::load(&model)?;
    let trainable: u64 = state.trainable.iter().filter_map(|n| model.graph.initializer(n)).map(|t| t.numel()).sum();
    println!("{} adapters, {} trainable parameters", state.adapters.len(), trainable);
    let expected: u64 = layers
        .iter()
        .filter(|l| l.module_path.as_deref().is_some_and(|p| p.ends_with(".query") || p.ends_with(".value")))
        .map(|l| 8 * (l.in_features + l.out_features))
        .sum();
    ensure!(trainable == expected, "expected {expected} trainable parameters, found {trainable}");
    adaptc::ir::verify(&model.graph)?;
    onnx::save(&model, output.as_ref(), &Default::default())?;
    println!("wrote {output}");

    // Folding the adapters back gives a graph shaped exactly like the base.
    PassManager::new(&registry, "merge-lora")?.run(&mut model)?;
    ensure!(model.graph.num_nodes() == base_nodes && model.graph.num_initializers() == base_inits);
    println!("merged: {} nodes, {} initializers, as the base", base_nodes, base_inits);
    Ok(())
}
