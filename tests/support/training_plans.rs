//! The training graphs `adaptc train` builds for the two fixture families, optimizer step
//! included: (model under `tests/fixtures/models`, pass pipeline). A Llama decoder with LoRA on
//! every linear layer, fused attention and bf16 activations (`--autocast bf16-activations`), and
//! a BERT encoder with LoRA and a classifier head.

pub const TRAINING_PLANS: [(&str, &str); 2] = [
    (
        "llama4/model.onnx",
        "insert-lora{rank=8 alpha=16 targets=all-linear},fuse-attention,autocast{dtype=bf16 activations=bf16},\
         build-training-graph{loss=causal-lm},append-adamw{max_norm=1.0}",
    ),
    (
        "bert6.onnx",
        "add-head{kind=classification labels=3},insert-lora{rank=8 alpha=16 targets=query,value},\
         fuse-attention,build-training-graph{loss=cross-entropy},append-adamw{max_norm=1.0}",
    ),
];
