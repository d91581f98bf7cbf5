//! One module per subcommand.

pub mod inspect;
pub mod passes;
pub mod rewrite;
