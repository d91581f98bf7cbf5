//! adaptc's graph IR: a model's graph on petgraph with slot-carrying edges, typed attributes,
//! tensors whose bytes are owned, mmapped from external data or lazy, and lossless ONNX
//! import/export.
//!
//! ```no_run
//! let model = adaptc_ir::onnx::load("model.onnx".as_ref())?;
//! adaptc_ir::verify(&model.graph)?;
//! println!("{}", adaptc_ir::dump(&model));
//! adaptc_ir::onnx::save(&model, "copy.onnx".as_ref(), &Default::default())?;
//! # Ok::<(), adaptc_ir::IrError>(())
//! ```

mod attr;
mod dtype;
mod dump;
mod error;
pub mod external;
mod graph;
mod metadata;
mod model;
mod node;
pub mod onnx;
mod progress;
mod tensor;
mod value;
mod verify;

pub use attr::{AttrValue, Attribute, SparseTensor};
pub use dtype::DataType;
pub use dump::{dump, dump_graph};
pub use error::{IrError, Result};
pub use graph::{Graph, NodeId, Use};
pub use metadata::Metadata;
pub use model::{Model, OpsetImport};
pub use node::{is_default_domain, Node, OpKey, ONNX_DOMAIN};
pub use progress::{NoProgress, Progress};
pub use tensor::{numel_of, LazyFn, Tensor, TensorData};
pub use value::{Dim, TypeInfo, ValueInfo};
pub use verify::verify;
