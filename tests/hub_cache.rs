//! Loading by Hub id from the standard Hugging Face cache layout, offline. (Its own test binary:
//! it sets process-wide environment variables.)

mod common;

use hooklens::{load_model, Error, LoadOptions};

#[test]
fn hub_id_resolves_from_the_offline_cache() {
    let hub = tempfile::tempdir().unwrap();
    // models--{org}--{name}/refs/main holds the commit; snapshots/{commit}/ holds the files.
    let repo = hub.path().join("models--hooklens--gpt2-random");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let snap = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    let fixture = common::gpt2_dir();
    for f in [
        "config.json",
        "model.safetensors",
        "vocab.json",
        "merges.txt",
    ] {
        std::fs::copy(fixture.path().join(f), snap.join(f)).unwrap();
    }
    std::env::set_var("HF_HUB_CACHE", hub.path());
    std::env::set_var("HF_HUB_OFFLINE", "1");

    let (model, tok) = load_model(Some("hooklens/gpt2-random"), &LoadOptions::default()).unwrap();
    assert_eq!(model.cfg.n_layers, 3);
    assert_eq!(tok.encode("Hello world").unwrap(), vec![15496, 995]);

    // Offline, a model that is not cached is a clear error, not a download attempt.
    let e = load_model(Some("hooklens/not-cached"), &LoadOptions::default())
        .err()
        .unwrap();
    assert!(
        matches!(e, Error::Hub(_)) && e.to_string().contains("HF_HUB_OFFLINE"),
        "{e}"
    );
}
