//! Input files: folders listed recursively, in name order (so runs are reproducible), and the
//! SHA-256 that identifies a file's bytes (ledger, model identity).

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// SHA-256 of `data`, lower-case hex (64 characters).
pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Every file under `dir`, recursively, sorted by path. Errors only when `dir` itself cannot be
/// read; unreadable subfolders are skipped with a warning.
pub fn files_under(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    fn walk(d: &Path, out: &mut Vec<PathBuf>, top: bool) -> std::io::Result<()> {
        let entries = match std::fs::read_dir(d) {
            Ok(r) => r,
            Err(e) if top => return Err(e),
            Err(e) => {
                log::warn!("{}: {e}; skipped", d.display());
                return Ok(());
            }
        };
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for p in paths {
            if p.is_dir() {
                walk(&p, out, false)?;
            } else {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, &mut out, true)?;
    Ok(out)
}
