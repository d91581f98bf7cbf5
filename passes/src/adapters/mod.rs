//! Adapter passes: insert trainable adapters into linear layers (LoRA and its family, IA3,
//! bottleneck adapters, prompt tuning, trainable subsets), fold them back, and expose them as
//! graph inputs. Shared pieces: [`record`] (what was inserted, persisted in the model's
//! metadata), [`targets`] (choosing layers by module path as PEFT does) and `sites` (the checks
//! every insertion makes first).

pub mod as_inputs;
pub mod bottleneck;
pub mod ia3;
pub mod init;
pub mod linalg;
pub mod lora;
pub mod merge;
pub mod prompt;
pub mod record;
pub mod rewriter;
pub(crate) mod sites;
pub mod targets;
pub mod trainable;

pub use record::{AdapterRecord, AdapterState, Layout, Method};
pub use rewriter::Rewriter;
pub use targets::{Selection, Target};
