//! The Khronos glTF validator (npm `gltf-validator`), driven through node: the reference
//! check that a written `.glb` is valid. Optional at run time: it needs node and the package.

use std::path::Path;
use std::process::Command;

/// What the validator said about one file.
#[derive(Debug, Clone, PartialEq)]
pub struct Validation {
    /// Errors (a valid file has none).
    pub errors: u64,
    /// Warnings.
    pub warnings: u64,
    /// Every message, one per line: severity, code, JSON pointer, text.
    pub messages: String,
}

/// Why the validator could not be run.
#[derive(Debug, thiserror::Error)]
pub enum ValidatorError {
    /// node or the npm package is missing.
    #[error(
        "the Khronos glTF validator is not available: {0} (install node and `npm install -g gltf-validator`)"
    )]
    Missing(String),
    /// It ran but failed on the file.
    #[error("the Khronos glTF validator failed on {path}: {why}")]
    Failed {
        /// The file.
        path: String,
        /// What it printed.
        why: String,
    },
}

/// Runs the Khronos validator on `path`. The package is found through `NODE_PATH`, or
/// `GLTF_VALIDATOR_NODE_PATH`, or npm's global root.
pub fn khronos_validate(path: &Path) -> Result<Validation, ValidatorError> {
    // The npm package is a library: a few lines of node drive it and print its counts.
    const SCRIPT: &str = r#"
let validator;
try { validator = require('gltf-validator'); } catch (e) { console.error(String(e)); process.exit(3); }
const bytes = new Uint8Array(require('fs').readFileSync(process.argv[1]));
validator.validateBytes(bytes, { maxIssues: 50 }).then((r) => {
  const i = r.issues;
  console.log(JSON.stringify({ errors: i.numErrors, warnings: i.numWarnings,
    messages: i.messages.map((m) => `${m.severity} ${m.code} ${m.pointer || ''}: ${m.message}`) }));
}).catch((e) => { console.error(String(e)); process.exit(2); });
"#;
    let node_path = std::env::var("GLTF_VALIDATOR_NODE_PATH").ok().or_else(|| {
        let out = Command::new("npm").args(["root", "-g"]).output().ok()?;
        Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
    });
    let mut command = Command::new("node");
    command.arg("-e").arg(SCRIPT).arg(path);
    if let Some(node_path) = node_path {
        command.env("NODE_PATH", node_path);
    }
    let out = command
        .output()
        .map_err(|e| ValidatorError::Missing(format!("cannot run node: {e}")))?;
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if out.status.code() == Some(3) {
        return Err(ValidatorError::Missing(format!(
            "node cannot load gltf-validator: {stderr}"
        )));
    }
    let failed = |why: String| ValidatorError::Failed {
        path: path.display().to_string(),
        why,
    };
    if !out.status.success() {
        return Err(failed(stderr));
    }
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| failed(e.to_string()))?;
    let count = |key: &str| {
        report[key]
            .as_u64()
            .ok_or_else(|| failed(format!("no {key}")))
    };
    let messages = report["messages"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|v| v.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default();
    Ok(Validation {
        errors: count("errors")?,
        warnings: count("warnings")?,
        messages,
    })
}
