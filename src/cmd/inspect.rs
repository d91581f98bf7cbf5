//! `adaptc inspect`: what a model contains.

use std::collections::BTreeMap;
use std::path::PathBuf;

use adaptc_ir::{onnx, Model, TypeInfo};
use adaptc_passes::pattern::{find_block_stacks, find_linear_layers, BlockStack, LinearLayer};
use anyhow::Result;
use serde_json::json;

use crate::progress::Bar;

const AFTER_HELP: &str = "\
Examples:
  adaptc inspect model.onnx          opsets, op histogram, parameters, inputs/outputs, linear layers
  adaptc inspect model.onnx --json   the same as JSON, for scripts

The linear-layer table shows the module paths that adapter passes target: `targets=query,value`
in insert-lora matches the last components of these paths.";

/// Show a model's opsets, op histogram, parameter count and bytes, inputs/outputs, and the
/// linear layers that adapter passes can target.
#[derive(clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// ONNX model.
    input: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

struct Summary {
    ops: BTreeMap<String, usize>,
    params: u64,
    param_bytes: u64,
    external_bytes: u64,
    layers: Vec<LinearLayer>,
    /// The transformer blocks, or why none were found.
    blocks: Result<Vec<BlockStack>, String>,
}

fn summarize(model: &Model) -> Summary {
    let mut ops = BTreeMap::new();
    for (_, n) in model.graph.nodes() {
        *ops.entry(n.op().to_string()).or_insert(0) += 1;
    }
    let (mut params, mut param_bytes, mut external_bytes) = (0, 0, 0);
    for t in model.graph.initializers() {
        params += t.numel();
        param_bytes += t.byte_len();
        if t.is_external() {
            external_bytes += t.byte_len();
        }
    }
    Summary {
        ops,
        params,
        param_bytes,
        external_bytes,
        layers: find_linear_layers(&model.graph),
        blocks: find_block_stacks(&model.graph),
    }
}

fn ty(t: &Option<TypeInfo>) -> String {
    t.as_ref().map_or("?".to_string(), ToString::to_string)
}

pub fn run(args: Args) -> Result<()> {
    let model = onnx::load_with(&args.input, &Bar::new())?;
    let s = summarize(&model);
    let g = &model.graph;
    if args.json {
        let v = json!({
            "file": args.input.display().to_string(),
            "ir_version": model.ir_version,
            "producer": format!("{} {}", model.producer_name, model.producer_version).trim().to_string(),
            "opsets": model.opset_imports.iter().map(|o| json!({"domain": o.domain, "version": o.version})).collect::<Vec<_>>(),
            "nodes": g.num_nodes(),
            "ops": s.ops,
            "initializers": g.num_initializers(),
            "parameters": s.params,
            "parameter_bytes": s.param_bytes,
            "external_bytes": s.external_bytes,
            "functions": model.function_names(),
            "inputs": g.inputs.iter().map(|v| json!({"name": v.name, "type": ty(&v.ty)})).collect::<Vec<_>>(),
            "outputs": g.outputs.iter().map(|v| json!({"name": v.name, "type": ty(&v.ty)})).collect::<Vec<_>>(),
            "linear_layers": s.layers.iter().map(|l| json!({
                "module": l.module_path, "node": g.node(l.node).name, "op": g.node(l.node).op().to_string(),
                "in_features": l.in_features, "out_features": l.out_features, "bias": l.bias.is_some(),
                "weight": l.weight,
            })).collect::<Vec<_>>(),
            "block_stacks": match &s.blocks {
                Ok(stacks) => json!(stacks.iter().map(|st| json!({
                    "name": st.name,
                    "blocks": st.blocks.iter().map(|b| json!({
                        "index": b.index, "nodes": b.nodes.len(), "input": b.input, "output": b.output,
                    })).collect::<Vec<_>>(),
                })).collect::<Vec<_>>()),
                Err(reason) => json!({"error": reason}),
            },
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("{}", args.input.display());
    println!("  ir_version {}  producer {} {}", model.ir_version, model.producer_name, model.producer_version);
    let opsets: Vec<String> = model
        .opset_imports
        .iter()
        .map(|o| format!("{}={}", if o.domain.is_empty() { "ai.onnx" } else { &o.domain }, o.version))
        .collect();
    println!("  opsets  {}", opsets.join(", "));
    println!(
        "  params  {} in {} initializers, {} bytes ({} external)",
        s.params,
        g.num_initializers(),
        s.param_bytes,
        s.external_bytes
    );
    if !model.function_names().is_empty() {
        println!("  functions  {}", model.function_names().join(", "));
    }
    println!("\ninputs");
    for v in &g.inputs {
        println!("  {:<30} {}", v.name, ty(&v.ty));
    }
    println!("outputs");
    for v in &g.outputs {
        println!("  {:<30} {}", v.name, ty(&v.ty));
    }
    println!("\nops ({} nodes)", g.num_nodes());
    let mut hist: Vec<_> = s.ops.iter().collect();
    hist.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    for (op, n) in hist {
        println!("  {n:>6}  {op}");
    }
    print_blocks(&s.blocks);
    println!("\nlinear layers ({})", s.layers.len());
    if !s.layers.is_empty() {
        println!("  {:<48} {:<28} {:>6} {:>6}  bias", "module", "node", "in", "out");
        for l in &s.layers {
            let node = g.node(l.node);
            println!(
                "  {:<48} {:<28} {:>6} {:>6}  {}",
                l.module_path.as_deref().unwrap_or("?"),
                node.label(),
                l.in_features,
                l.out_features,
                if l.bias.is_some() { "yes" } else { "no" }
            );
        }
    }
    Ok(())
}

/// The block stacks (what `prune-layers{layers=…}` indexes) and the residual stream between blocks.
fn print_blocks(blocks: &Result<Vec<BlockStack>, String>) {
    match blocks {
        Ok(stacks) => {
            for st in stacks {
                let (first, last) = (&st.blocks[0], &st.blocks[st.blocks.len() - 1]);
                println!(
                    "\nblocks  {} {}–{} ({} blocks; residual stream `{}` → … → `{}`)",
                    st.name,
                    first.index,
                    last.index,
                    st.blocks.len(),
                    first.input,
                    last.output
                );
            }
        }
        Err(reason) => println!("\nblocks  none found: {reason}"),
    }
}
