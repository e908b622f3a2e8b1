//! Records the git commit hooklens is built from, for run manifests.
use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    Command::new("git")
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

fn main() {
    let commit = git(&["rev-parse", "HEAD"]).unwrap_or_default();
    println!("cargo:rustc-env=HOOKLENS_GIT_COMMIT={commit}");
    println!("cargo:rerun-if-changed=build.rs");
    // A new commit moves HEAD or the branch it points to (this package sits below the root).
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        for p in ["HEAD", "refs/heads", "packed-refs"] {
            let path = Path::new(&dir).join(p);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
}
