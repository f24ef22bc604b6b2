//! Input files: folders listed recursively, in name order (so runs are reproducible), the
//! SHA-256 that identifies a file's bytes (ledger, model identity) and the keyed HMAC-SHA256
//! that stands for an identifier (hashed UIDs, file hashes, paths kept at rest).

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// SHA-256 of `data`, lower-case hex (64 characters).
pub fn sha256_hex(data: &[u8]) -> String {
    to_hex(&Sha256::digest(data))
}

/// SHA-256 of the content of the file at `path`, lower-case hex, streamed through the hasher
/// (memory bounded whatever the file's size). Errors: opening or reading the file.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    std::io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
    Ok(to_hex(&hasher.finalize()))
}

/// HMAC-SHA256 (RFC 2104, FIPS 180-4) of `data` under `key`, lower-case hex (64 characters).
pub fn hmac_hex(key: &[u8], data: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data);
    to_hex(&mac.finalize().into_bytes())
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Symbolic links met while listing a folder ([`files_under_with`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    /// Followed, each real folder entered once (a link back to an ancestor or a sibling adds
    /// nothing): for folders a user names on the command line or a data set's tree.
    Follow,
    /// Neither listed nor entered: the daemon's export folder, which other systems may write
    /// to, never leads it out of the tree or around in it (review #6).
    Skip,
}

/// Every file under `dir`, recursively, sorted by path, links followed ([`Links::Follow`]).
/// Errors only when `dir` itself cannot be read; unreadable subfolders are skipped with a
/// warning.
pub fn files_under(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    files_under_with(dir, Links::Follow)
}

/// [`files_under`] with a choice of what links do. With [`Links::Follow`] each folder is
/// entered once by its device and inode, so link loops end; with [`Links::Skip`] only regular
/// files and real folders are seen.
pub fn files_under_with(dir: &Path, links: Links) -> std::io::Result<Vec<PathBuf>> {
    use std::collections::HashSet;
    use std::os::unix::fs::MetadataExt;
    fn walk(
        d: &Path,
        out: &mut Vec<PathBuf>,
        top: bool,
        links: Links,
        seen: &mut HashSet<(u64, u64)>,
    ) -> std::io::Result<()> {
        if let Ok(m) = std::fs::metadata(d) {
            if !seen.insert((m.dev(), m.ino())) {
                return Ok(());
            }
        }
        let entries = match std::fs::read_dir(d) {
            Ok(r) => r,
            Err(e) if top => return Err(e),
            Err(e) => {
                log::warn!("a subfolder cannot be read ({e}); skipped");
                log::debug!("unreadable folder: {}", d.display());
                return Ok(());
            }
        };
        let mut paths: Vec<(PathBuf, std::fs::FileType)> = entries
            .filter_map(|e| e.ok().and_then(|e| Some((e.path(), e.file_type().ok()?))))
            .collect();
        paths.sort_by(|a, b| a.0.cmp(&b.0));
        for (p, ft) in paths {
            let (is_dir, is_file) = if ft.is_symlink() {
                if links == Links::Skip {
                    log::debug!("{}: a symbolic link, not followed", p.display());
                    continue;
                }
                match std::fs::metadata(&p) {
                    Ok(m) => (m.is_dir(), m.is_file()),
                    Err(_) => continue,
                }
            } else {
                (ft.is_dir(), ft.is_file())
            };
            if is_dir {
                walk(&p, out, false, links, seen)?;
            } else if is_file {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, &mut out, true, links, &mut HashSet::new())?;
    Ok(out)
}
