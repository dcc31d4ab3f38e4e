//! Atomic file replacement: write a temporary file beside the target, flush it to disk, rename
//! it over the target. A rename within one folder is atomic, so readers see the old file or
//! the whole new one; on any error the temporary file is deleted.

use std::io::Write;
use std::path::Path;

use super::ExportError;

/// Writes `bytes` to `path` atomically. The folder must exist; the error names what is wrong.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ExportError> {
    let bad_path = |why: String| ExportError::BadPath {
        path: path.to_path_buf(),
        why,
    };
    let Some(name) = path.file_name() else {
        return Err(bad_path("the path names no file".into()));
    };
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !folder.is_dir() {
        return Err(bad_path(format!(
            "folder {} does not exist or is not a folder",
            folder.display()
        )));
    }
    let io = |action, path: &Path| {
        let path = path.to_path_buf();
        move |source| ExportError::Io {
            action,
            path,
            source,
        }
    };
    // A dot-name with a .tmp suffix: hidden, and no asset loader claims it.
    let prefix = format!(".{}.", name.to_string_lossy());
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".tmp");
    // Temporary files are private (0600) by default; an asset is an ordinary file (umask
    // applies).
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644));
    let mut tmp = builder
        .tempfile_in(folder)
        .map_err(io("create a temporary file in", folder))?;
    tmp.write_all(bytes).map_err(io("write", tmp.path()))?;
    tmp.as_file().sync_all().map_err(io("flush", tmp.path()))?;
    // Dropping the returned file on error deletes it.
    tmp.persist(path)
        .map_err(|e| io("replace", path)(e.error))?;
    Ok(())
}
