//! Running the lab's binaries from tests, as a user would.

use std::path::Path;
use std::process::Command;

/// Runs `bin` with `args` in `dir`; returns (exit code, stderr).
pub fn run(bin: &str, args: &[&str], dir: &Path) -> (i32, String) {
    let out = Command::new(bin)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running the binary");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// Runs `bin` and asserts that it succeeds.
pub fn ok(bin: &str, args: &[&str], dir: &Path) {
    let (code, err) = run(bin, args, dir);
    assert_eq!(code, 0, "{args:?}: {err}");
}
