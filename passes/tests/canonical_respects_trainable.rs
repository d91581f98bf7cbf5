//! Canonical passes leave trainable tensors alone: `fold-constants` must not fold
//! `Transpose(lora_A)` into a constant (training changes `lora_A`), and `cse` must not tie the
//! all-zero `lora_B` tensors of different layers into one.

use std::path::Path;

use adaptc_passes::adapters::AdapterState;
use adaptc_passes::{PassManager, Registry};

#[test]
fn lora_weights_survive_fold_and_cse() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/bert6.onnx");
    let mut model = adaptc_ir::onnx::load(&path).unwrap();
    let registry = Registry::builtin();
    PassManager::new(&registry, "insert-lora{rank=4 alpha=8 targets=query,value}").unwrap().run(&mut model).unwrap();
    let trainable = AdapterState::load(&model).unwrap().trainable;
    assert_eq!(trainable.len(), 24);
    let nodes = model.graph.num_nodes();

    let report = PassManager::new(&registry, "fold-constants,cse,dce").unwrap().run(&mut model).unwrap();
    // Only frozen constants (the per-layer scale scalars) may be shared.
    assert!(report.stat("cse.initializers_merged").unwrap_or(0) <= 12, "{report}");
    assert_eq!(model.graph.num_nodes(), nodes, "no adapter node was folded or merged away");
    for name in &trainable {
        let t = model.graph.initializer(name).unwrap_or_else(|| panic!("`{name}` disappeared"));
        assert_eq!(t.metadata.get("adaptc.trainable"), Some("true"));
        assert!(!model.graph.uses(name).is_empty(), "`{name}` is still used");
    }
}
