//! `adaptc passes`: the registry, with every option and its default.

use adaptc_passes::Registry;
use anyhow::Result;
use serde_json::json;

/// List every registered pass with its options, defaults and a one-line description.
#[derive(clap::Args)]
pub struct Args {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let registry = Registry::builtin();
    let infos = registry.infos();
    if args.json {
        let list: Vec<_> = infos
            .iter()
            .map(|p| {
                json!({
                    "name": p.name,
                    "summary": p.summary,
                    "example": p.example,
                    "options": p.options.iter().map(|o| json!({
                        "name": o.name, "kind": o.kind, "default": o.default, "help": o.help,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    for p in infos {
        println!("{:<22} {}", p.name, p.summary);
        for o in &p.options {
            let default = o.default.map_or(String::new(), |d| format!(" (default: {d})"));
            println!("    {:<18} {:<14} {}{default}", o.name, o.kind, o.help);
        }
        println!("    example: {}", p.example);
        println!();
    }
    Ok(())
}
