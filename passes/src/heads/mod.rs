//! Task heads: new trainable layers on top of a model's outputs, recorded like adapters (an
//! [`AdapterRecord`](crate::adapters::AdapterRecord) of method `head` and the trainable set)
//! so that training and export find them.
//!
//! - [`add_head`]: `add-head{labels=N pooling=mean|cls}`, a classification head on an
//!   encoder's hidden states, producing the `logits` output.

pub mod add_head;

pub use add_head::{AddHead, Pooling};
