//! Build script: records the git commit the binary was built from as `MAMMO_GIT_HASH` (12 hex
//! digits, `-dirty` when tracked files differ), which `mammo-train export` writes into the model
//! metadata (`mammo.git_hash`). Outside a git checkout it is left unset ("unknown").
//! With the `libtorch` feature it also puts LibTorch's library folder (of `$LIBTORCH`, or of the
//! PyTorch wheel that torch-sys links against with `LIBTORCH_USE_PYTORCH=1`) on the binaries'
//! rpath, so `mammo-train` and the tests run without `LD_LIBRARY_PATH`.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// LibTorch's `lib` folder: `$LIBTORCH/lib`, else the one of the Python `torch` package.
fn libtorch_lib_dir() -> Option<String> {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_USE_PYTORCH");
    if let Ok(dir) = std::env::var("LIBTORCH") {
        return Some(format!("{dir}/lib"));
    }
    // the interpreter torch-sys asks (python inside a virtual environment, else python3)
    let python = if std::env::var_os("VIRTUAL_ENV").is_some() {
        "python"
    } else {
        "python3"
    };
    let out = Command::new(python)
        .args([
            "-c",
            "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))",
        ])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    if std::env::var_os("CARGO_FEATURE_LIBTORCH").is_some() {
        match libtorch_lib_dir() {
            Some(dir) => println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}"),
            None => println!(
                "cargo:warning=feature libtorch: no LibTorch found for the rpath \
                 (pip install torch==2.9.0, or set LIBTORCH)"
            ),
        }
    }
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
