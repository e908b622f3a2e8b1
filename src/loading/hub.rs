//! Hugging Face Hub ids -> a local directory of model files, through the standard HF cache.
//!
//! hf-hub 0.5 ignores `HF_HUB_OFFLINE`, so the cache is looked up here first and the network is
//! used only when a file is missing and offline mode is off.

use crate::error::{Error, Result};
use hf_hub::{Cache, Repo, RepoType};
use std::path::PathBuf;

const OPTIONAL: [&str; 4] = [
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
    "model.safetensors.index.json",
];

/// Returns the snapshot directory holding `config.json`, the weights and the tokenizer of
/// `model_id`, downloading what is missing unless `HF_HUB_OFFLINE=1`. `id@revision` names a
/// branch or tag (Pythia's training checkpoints: `EleutherAI/pythia-70m@step3000`).
pub fn resolve_hub_files(spec: &str) -> Result<PathBuf> {
    let (model_id, revision) = match spec.split_once('@') {
        Some((id, rev)) if !id.is_empty() && !rev.is_empty() => (id, rev),
        Some(_) => {
            return Err(Error::Hub(format!(
                "`{spec}`: expected `org/name@revision` (a branch or tag)"
            )))
        }
        None => (spec, "main"),
    };
    let repo = || Repo::with_revision(model_id.into(), RepoType::Model, revision.into());
    let offline =
        std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    // HF_HUB_CACHE names the hub folder itself; hf-hub 0.5 only reads HF_HOME (HF_HOME/hub).
    let cache = match std::env::var_os("HF_HUB_CACHE") {
        Some(dir) => Cache::new(dir.into()),
        None => Cache::from_env(),
    };
    let cached = cache.repo(repo());
    let get = |file: &str| -> Result<Option<PathBuf>> {
        if let Some(p) = cached.get(file) {
            return Ok(Some(p));
        }
        if offline {
            return Ok(None);
        }
        let api = hf_hub::api::sync::ApiBuilder::from_cache(cache.clone())
            .build()
            .map_err(|e| Error::Hub(e.to_string()))?;
        match api.repo(repo()).get(file) {
            Ok(p) => Ok(Some(p)),
            Err(hf_hub::api::sync::ApiError::RequestError(e)) if e.to_string().contains("404") => {
                Ok(None)
            }
            Err(e) => Err(Error::Hub(format!("{spec}/{file}: {e}"))),
        }
    };
    let config = get("config.json")?.ok_or_else(|| {
        Error::Hub(format!(
            "`{spec}` is neither a local path nor a model in the Hugging Face cache{}",
            if offline {
                " (HF_HUB_OFFLINE=1, so nothing was downloaded)"
            } else {
                ""
            }
        ))
    })?;
    if get("model.safetensors")?.is_none() && get("model.safetensors.index.json")?.is_none() {
        return Err(Error::Hub(format!(
            "{spec} has no model.safetensors in the cache or on the Hub"
        )));
    }
    for f in OPTIONAL {
        get(f)?;
    }
    let dir = config
        .parent()
        .expect("a cached file has a snapshot folder")
        .to_path_buf();
    // Shards named by an index sit next to it in the same snapshot.
    if let Ok(text) = std::fs::read_to_string(dir.join("model.safetensors.index.json")) {
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        if let Some(map) = v["weight_map"].as_object() {
            let mut shards: Vec<&str> = map.values().filter_map(|s| s.as_str()).collect();
            shards.dedup();
            for s in shards {
                get(s)?;
            }
        }
    }
    Ok(dir)
}
