//! The programmatic pass API: load a model, find its linear layers, run a pipeline built in
//! Rust, verify the result and save it.
//!
//!     cargo run --example pipeline -- examples/models/tiny_bert.onnx /tmp/out.onnx

use adaptc::ir::onnx;
use adaptc::passes::pattern::find_linear_layers;
use adaptc::passes::{ManagerOptions, PassManager, Pipeline, Registry};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let input = args.get(1).map_or("examples/models/tiny_bert.onnx", String::as_str);
    let output = args.get(2).map_or("/tmp/adaptc-example.onnx", String::as_str);

    let mut model = onnx::load(input.as_ref())?;
    let layers = find_linear_layers(&model.graph);
    println!("{input}: {} nodes, {} linear layers", model.graph.num_nodes(), layers.len());
    for l in layers.iter().take(3) {
        println!("  {} [{} -> {}]", l.module_path.as_deref().unwrap_or("?"), l.in_features, l.out_features);
    }

    // The same text the CLI takes, parsed and printed back canonically.
    let pipeline: Pipeline = "fold-constants, cse{initializers=false}, dce".parse()?;
    println!("pipeline: {pipeline}");
    let manager = PassManager::from_pipeline(&Registry::builtin(), &pipeline)?
        .with_options(ManagerOptions { verify_each: true, ..ManagerOptions::default() });
    let report = manager.run(&mut model)?;
    print!("{report}");

    adaptc::ir::verify(&model.graph)?;
    onnx::save(&model, output.as_ref(), &Default::default())?;
    println!("wrote {output}");
    Ok(())
}
