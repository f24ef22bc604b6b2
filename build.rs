//! Build script: records the git commit the binary was built from as `MAMMO_GIT_HASH` (12 hex
//! digits, `-dirty` when tracked files differ), which `mammo-train export` writes into the model
//! metadata (`mammo.git_hash`). Outside a git checkout it is left unset ("unknown").

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    // a new commit appends to .git/logs/HEAD; a checkout of another branch rewrites .git/HEAD
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/logs/HEAD");
    if let Some(hash) = git(&["rev-parse", "--short=12", "HEAD"]) {
        let dirty =
            git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
        let suffix = if dirty { "-dirty" } else { "" };
        println!("cargo:rustc-env=MAMMO_GIT_HASH={hash}{suffix}");
    }
}
