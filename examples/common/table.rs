//! How the benchmarks hand over their Markdown table (included with
//! `#[path = "common/table.rs"] mod table;`).

use std::path::Path;

use anyhow::{Context, Result};
use rewardsds::engine::backend::{BackendKind, BackendTask, run_on};

/// Prints `table` and, with `--out`, writes it to that file too.
pub fn print_table(table: &str, out: Option<&Path>) -> Result<()> {
    println!("{table}");
    if let Some(path) = out {
        std::fs::write(path, table).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Runs the benchmark `task` on the backend named `backend` (`--backend`) and hands over its
/// table as [`print_table`] does.
pub fn run_and_print(
    backend: &str,
    task: impl BackendTask<Output = Result<String>>,
    out: Option<&Path>,
) -> Result<()> {
    let kind: BackendKind = backend.parse().context("--backend")?;
    let table = run_on(kind, task)??;
    print_table(&table, out)
}
