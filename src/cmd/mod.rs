//! One module per subcommand.

pub mod export;
pub mod import_peft;
pub mod inspect;
pub mod passes;
pub mod rewrite;
pub mod run;
pub mod train;
pub mod verify;
