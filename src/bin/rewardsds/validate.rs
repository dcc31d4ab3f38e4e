//! `rewardsds validate <file.glb>`: the Khronos glTF validator when node and its npm package
//! are installed, else our own structural check (`rewardsds::engine::export::inspect_glb`),
//! which says which one ran. Exit code 3 when the file is invalid.

use std::path::PathBuf;

use rewardsds::engine::export::{ValidatorError, inspect_glb, khronos_validate};

use crate::{EXIT_INVALID, Failure};

/// `rewardsds validate` options.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The .glb files to check.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Only our structural check, even where the Khronos validator is installed.
    #[arg(long)]
    structural: bool,
}

/// Runs `rewardsds validate`: 0 when every file is valid, 3 when one is not.
pub fn run(args: Args) -> Result<u8, Failure> {
    let mut invalid = 0;
    for file in &args.files {
        if !file.is_file() {
            return Err(Failure::bad_input(anyhow::anyhow!(
                "{} is not a file",
                file.display()
            )));
        }
        // The structural check first: it names a broken file's fault plainly, and the
        // summary line is useful either way.
        let summary = match inspect_glb(file) {
            Ok(s) => s,
            Err(e) => {
                println!("{}: INVALID (structural check): {e}", file.display());
                invalid += 1;
                continue;
            }
        };
        let what = format!(
            "{} meshes, {} vertices, {} triangles, {} images, {} bytes",
            summary.meshes, summary.vertices, summary.triangles, summary.images, summary.bytes
        );
        let khronos = if args.structural {
            None
        } else {
            match khronos_validate(file) {
                Ok(v) => Some(v),
                Err(ValidatorError::Missing(why)) => {
                    log::info!("{why}");
                    None
                }
                Err(e) => return Err(e.into()),
            }
        };
        match khronos {
            Some(v) if v.errors > 0 => {
                println!(
                    "{}: INVALID (Khronos validator: {} errors, {} warnings)\n{}",
                    file.display(),
                    v.errors,
                    v.warnings,
                    v.messages
                );
                invalid += 1;
            }
            Some(v) => println!(
                "{}: valid (Khronos validator, {} warnings): {what}",
                file.display(),
                v.warnings
            ),
            None => println!(
                "{}: valid (structural check; the Khronos validator is not installed): {what}",
                file.display()
            ),
        }
    }
    Ok(if invalid > 0 { EXIT_INVALID } else { 0 })
}
