//! How the benchmarks hand over their Markdown table (included with
//! `#[path = "common/table.rs"] mod table;`).

use std::path::Path;

use anyhow::{Context, Result};

/// Prints `table` and, with `--out`, writes it to that file too.
pub fn print_table(table: &str, out: Option<&Path>) -> Result<()> {
    println!("{table}");
    if let Some(path) = out {
        std::fs::write(path, table).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
