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
#[allow(dead_code)] // not every test file uses it
pub fn ok(bin: &str, args: &[&str], dir: &Path) {
    let (code, err) = run(bin, args, dir);
    assert_eq!(code, 0, "{args:?}: {err}");
}

/// The random GPT-2 fixture in `dir`, with a byte-level BPE tokenizer of no merges (GPT-2's
/// 256 byte symbols as ids 0..=255), so that it reads text.
#[allow(dead_code)] // not every test file uses it
pub fn gpt2_random_with_bytes_tokenizer(dir: &Path) -> std::path::PathBuf {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/gpt2-random");
    let out = dir.join("gpt2-random");
    std::fs::create_dir_all(&out).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture.join(f), out.join(f)).unwrap();
    }
    // GPT-2's bytes_to_unicode: printable bytes stand for themselves, the rest from U+0100 on.
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
    let mut next = 256;
    let mut vocab = serde_json::Map::new();
    for b in 0..256u32 {
        let c = match printable(b) {
            true => char::from_u32(b).unwrap(),
            false => {
                next += 1;
                char::from_u32(next - 1).unwrap()
            }
        };
        vocab.insert(c.to_string(), b.into());
    }
    vocab.insert("<|endoftext|>".into(), 50256.into());
    std::fs::write(
        out.join("vocab.json"),
        serde_json::Value::from(vocab).to_string(),
    )
    .unwrap();
    std::fs::write(out.join("merges.txt"), "#version: 0.2\n").unwrap();
    out
}
