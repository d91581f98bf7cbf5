//! Running a model in tract: the in-memory preparation a dynamo-exported model needs first,
//! the op check that names what tract lacks, and the run itself.

use std::collections::BTreeMap;

use adaptc_ir::{onnx, DataType, Model, TypeInfo};
use adaptc_passes::{ManagerOptions, OptionValue, PassManager, PassSpec, Pipeline, Registry};
use anyhow::{anyhow, bail, Context, Result};
use tract_onnx::prelude::{
    Framework, InferenceFact, InferenceModelExt, IntoTensor, TValue, TVec, Tensor as TractTensor, TypedModel,
    TypedRunnableModel,
};

use super::inputs::InputSpec;

/// Inline encoding is used below this many bytes of weights; above, the prepared model goes
/// through a temporary file with external data (protobuf's 2 GiB limit).
const INLINE_LIMIT: u64 = 1 << 30;

/// The pipeline that makes a model runnable by tract, for the given inputs: concrete shapes,
/// the shape arithmetic folded, `Gelu` (opset 20, unknown to tract 0.22) and constant-index
/// `GatherND` decomposed, folded again, dead code removed.
pub fn pipeline(specs: &[InputSpec], dims: &BTreeMap<String, i64>) -> Pipeline {
    fn list(items: Vec<String>) -> OptionValue {
        match items.len() {
            0 => OptionValue::Scalar(String::new()),
            1 => OptionValue::Scalar(items.into_iter().next().unwrap_or_default()),
            _ => OptionValue::List(items),
        }
    }
    let dims: Vec<String> = dims.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    let inputs: Vec<String> = specs
        .iter()
        .map(|s| format!("{}:{}", s.name, s.dims.iter().map(ToString::to_string).collect::<Vec<_>>().join("x")))
        .collect();
    Pipeline {
        passes: vec![
            PassSpec::new("specialize-shapes").with("dims", list(dims)).with("inputs", list(inputs)),
            PassSpec::new("fold-constants"),
            PassSpec::new("decompose").with("ops", list(vec!["Gelu".into(), "GatherND".into()])),
            PassSpec::new("fold-constants"),
            PassSpec::new("dce"),
        ],
    }
}

/// A copy of `model` prepared for tract: inputs not fed become constants (their initializer
/// defaults), the [`pipeline`] runs, and the declared types tract cannot parse (the dynamo
/// exporter's `value_info` and output shapes hold expressions like `Min(128, seq)`) are dropped.
pub fn prepare(model: &Model, label: &str, specs: &[InputSpec], dims: &BTreeMap<String, i64>) -> Result<Model> {
    let mut m = model.clone();
    m.graph.inputs.retain(|v| specs.iter().any(|s| s.name == v.name));
    let manager = PassManager::from_pipeline(&Registry::builtin(), &pipeline(specs, dims))?
        .with_options(ManagerOptions { verify_each: true, ..ManagerOptions::default() });
    manager.run(&mut m).with_context(|| format!("model {label}: preparing it for tract"))?;
    m.graph.value_info.clear();
    for o in &mut m.graph.outputs {
        if let Some(dtype) = o.ty.as_ref().and_then(TypeInfo::dtype) {
            o.ty = Some(TypeInfo::tensor(dtype, None));
        }
    }
    check_ops(&m, label)?;
    Ok(m)
}

/// Refuses, naming them, the ops tract has no implementation for.
fn check_ops(model: &Model, label: &str) -> Result<()> {
    let known = tract_onnx::onnx().op_register.0;
    let mut missing: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (_, node) in model.graph.nodes() {
        let domain = node.op().domain.as_str();
        let domain_ok = adaptc_ir::is_default_domain(domain) || domain == "ai.onnx.ml";
        if !domain_ok || !known.contains_key(&node.op().op_type) {
            missing.entry(node.op().to_string()).or_default().push(node.label());
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = missing
        .iter()
        .map(|(op, nodes)| {
            let more = if nodes.len() > 1 { format!(" and {} more", nodes.len() - 1) } else { String::new() };
            format!("`{op}` (node `{}`{more})", nodes[0])
        })
        .collect();
    bail!("model {label}: tract cannot run op {} (after decomposing Gelu and GatherND)", list.join(", "))
}

/// A model loaded and optimised by tract, with the order of its inputs.
pub struct Runner {
    plan: TypedRunnableModel<TypedModel>,
    inputs: Vec<String>,
    pub outputs: Vec<(String, DataType)>,
}

impl Runner {
    /// Hands a prepared model to tract with concrete input facts.
    pub fn new(model: &Model, label: &str, specs: &[InputSpec]) -> Result<Runner> {
        let cannot = |what: &str| format!("model {label}: tract cannot {what}");
        let weights: u64 = model.graph.initializers().map(|t| t.byte_len()).sum();
        let mut inference = if weights < INLINE_LIMIT {
            let bytes = onnx::encode(model).with_context(|| cannot("get the prepared model"))?;
            tract_onnx::onnx().model_for_read(&mut bytes.as_slice()).with_context(|| cannot("load it"))?
        } else {
            let dir = tempfile::tempdir().context("creating a temporary folder for the prepared model")?;
            let path = dir.path().join("prepared.onnx");
            let options = onnx::SaveOptions { external: onnx::ExternalMode::Always, ..Default::default() };
            onnx::save(model, &path, &options).with_context(|| cannot("get the prepared model"))?;
            tract_onnx::onnx().model_for_path(&path).with_context(|| cannot("load it"))?
        };
        let inputs: Vec<String> = model.graph.inputs.iter().map(|v| v.name.clone()).collect();
        for (i, name) in inputs.iter().enumerate() {
            let spec = specs.iter().find(|s| &s.name == name).ok_or_else(|| anyhow!("input `{name}` has no values"))?;
            let dt = super::inputs::datum_type(spec.dtype)
                .ok_or_else(|| anyhow!("input `{name}`: tract has no {} tensors", spec.dtype))?;
            inference.set_input_fact(i, InferenceFact::dt_shape(dt, spec.dims.clone()))?;
        }
        let typed = inference.into_optimized().with_context(|| cannot("analyse and optimise it"))?;
        let plan = typed.into_runnable().with_context(|| cannot("plan it"))?;
        let outputs = model
            .graph
            .outputs
            .iter()
            .map(|o| (o.name.clone(), o.ty.as_ref().and_then(TypeInfo::dtype).unwrap_or(DataType::Float)))
            .collect();
        Ok(Runner { plan, inputs, outputs })
    }

    /// Runs with the given tensors (by input name); outputs in graph-output order.
    pub fn run(&self, label: &str, feeds: &BTreeMap<String, TractTensor>) -> Result<Vec<TractTensor>> {
        let mut values: TVec<TValue> = TVec::new();
        for name in &self.inputs {
            let t = feeds.get(name).ok_or_else(|| anyhow!("input `{name}` has no values"))?;
            values.push(t.clone().into());
        }
        let out = self.plan.run(values).with_context(|| format!("model {label}: tract failed while running it"))?;
        Ok(out.into_iter().map(TValue::into_tensor).collect())
    }
}
