//! Text to token ids and back, with TransformerLens's `to_tokens` / `to_str_tokens` and BOS policy.

use crate::error::{Error, Result};
use candle_core::{Device, Tensor};
use serde_json::{json, Value};
use std::path::Path;

/// A tokenizer plus the special ids the model needs.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Prepended when `prepend_bos` is on; also used for padding when there is no pad token.
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
}

const GPT2_VOCAB: &str = include_str!("../assets/gpt2/vocab.json");
const GPT2_MERGES: &str = include_str!("../assets/gpt2/merges.txt");
const GPT2_EOT: &str = "<|endoftext|>";

impl Tokenizer {
    /// A Hugging Face `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = crate::text::read_text(path)?;
        Self::from_json(&text).map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))
    }

    /// A `tokenizer.json` document.
    pub fn from_json(text: &str) -> Result<Self> {
        let inner = text
            .parse::<tokenizers::Tokenizer>()
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let find = |names: &[&str]| names.iter().find_map(|n| inner.token_to_id(n));
        Ok(Self {
            bos_token_id: find(&[
                GPT2_EOT,
                "<|im_start|>",
                "<s>",
                "<|begin_of_text|>",
                "<bos>",
            ]),
            eos_token_id: find(&[GPT2_EOT, "<|im_end|>", "</s>", "<|end_of_text|>", "<eos>"]),
            inner,
        })
    }

    /// Byte-level BPE from GPT-2-style `vocab.json` and `merges.txt`.
    pub fn from_vocab_merges(vocab_json: &str, merges_txt: &str) -> Result<Self> {
        let vocab: Value = serde_json::from_str(vocab_json)
            .map_err(|e| Error::Tokenizer(format!("vocab.json: {e}")))?;
        let merges: Vec<&str> = merges_txt
            .lines()
            .filter(|l| !l.starts_with("#version") && !l.trim().is_empty())
            .collect();
        Self::from_json(&byte_level_bpe_json(vocab, merges, &[], Split::Gpt2).to_string())
    }

    /// Byte-level BPE from a token list (id = index) and merges (`"a b"`), as GGUF stores them,
    /// text split into words by `split` first.
    pub fn byte_level_bpe(
        tokens: Vec<String>,
        merges: Vec<String>,
        special: &[(u32, String)],
        split: Split,
    ) -> Result<Self> {
        let vocab: serde_json::Map<String, Value> = tokens
            .into_iter()
            .enumerate()
            .map(|(i, t)| (t, json!(i)))
            .collect();
        let merges: Vec<&str> = merges.iter().map(String::as_str).collect();
        Self::from_json(
            &byte_level_bpe_json(Value::Object(vocab), merges, special, split).to_string(),
        )
    }

    /// Gemma's SentencePiece BPE from the token list and token types of its GGUF file (which
    /// has no merges), built as transformers builds it from the same file, so that the ids are
    /// the same: tokens of spaces spelled with `▁`, merges recovered from the vocabulary
    /// (every split of a token into two tokens, best first by the token's place in the file),
    /// spaces normalised to `▁`, bytes outside the vocabulary as `<0xNN>` tokens, control tokens
    /// (type 3) and user-defined ones (type 4) matched whole.
    pub fn gemma_sentencepiece(
        tokens: Vec<String>,
        types: &[i64],
        unk: Option<u32>,
    ) -> Result<Self> {
        let spelled: Vec<String> = (tokens.iter())
            .map(|t| match t.contains(' ') && t.trim().is_empty() {
                true => "\u{2581}".repeat(t.chars().count()),
                false => t.clone(),
            })
            .collect();
        // A repeated token keeps its last id, as a Python dict built in file order does.
        let mut vocab: std::collections::HashMap<&str, usize> = Default::default();
        let mut order = vec![];
        for (i, t) in spelled.iter().enumerate() {
            if vocab.insert(t.as_str(), i).is_none() {
                order.push(t.as_str());
            }
        }
        // (left, right, the merged token's id): a lower id merges first.
        let mut merges: Vec<(&str, &str, usize)> = vec![];
        for &t in &order {
            let at = merges.len();
            for (k, _) in t.char_indices().skip(1) {
                let (l, r) = t.split_at(k);
                if vocab.contains_key(l) && vocab.contains_key(r) {
                    merges.push((l, r, vocab[t]));
                }
            }
            merges[at..].sort_by_key(|&(l, r, _)| (vocab[l], vocab[r]));
        }
        // Stable: ties keep the order above.
        let chars = |s: &str| s.chars().count();
        merges.sort_by_key(|&(l, r, id)| {
            (id, std::cmp::Reverse(chars(l)), std::cmp::Reverse(chars(r)))
        });
        let mut added = vec![];
        for (i, t) in tokens.iter().enumerate() {
            let special = match types.get(i) {
                Some(3) => true,
                Some(4) => false,
                _ => continue,
            };
            if let Some(&id) = vocab.get(t.as_str()) {
                added.push(json!({"id": id, "content": t, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": special}));
            }
        }
        let unk = unk.and_then(|u| spelled.get(u as usize));
        let doc = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"},
            "pre_tokenizer": {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious", "invert": false},
            "post_processor": null,
            "decoder": {"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"}]},
            "model": {"type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
                      "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                      "vocab": vocab, "merges": merges.iter().map(|(l, r, _)| [l, r]).collect::<Vec<_>>()}
        });
        Self::from_json(&doc.to_string())
    }

    /// GPT-2's tokenizer (50,257 tokens), shipped in the crate.
    pub fn gpt2() -> Result<Self> {
        Self::from_vocab_merges(GPT2_VOCAB, GPT2_MERGES)
    }

    /// A byte-level tokenizer: one token per byte (ids 0..256, in GPT-2's byte-to-unicode
    /// spelling) plus `<|endoftext|>` = 256. The embedded model uses it.
    pub fn bytes() -> Result<Self> {
        let vocab: serde_json::Map<String, Value> = (0u8..=255)
            .map(|b| (byte_char(b).to_string(), json!(b as u32)))
            .collect();
        Self::from_json(
            &byte_level_bpe_json(Value::Object(vocab), vec![], &[], Split::Gpt2).to_string(),
        )
    }

    /// The `tokenizer.json` document of this tokenizer.
    pub fn to_json(&self) -> Result<String> {
        self.inner
            .to_string(false)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token ids of `text`, without any special token added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The id of `text` when it is exactly one token; otherwise an error naming `what` (say
    /// "the answer") and the tokens it splits into.
    pub fn single_token(&self, text: &str, what: &str) -> Result<u32> {
        match self.encode(text)?[..] {
            [id] => Ok(id),
            ref ids => Err(Error::Invalid(format!(
                "{what} {text:?} is {} tokens {:?}; it must be exactly one (mind the leading space)",
                ids.len(),
                self.to_str_tokens(ids)?
            ))),
        }
    }

    /// Token ids of `text`, with BOS first when `prepend_bos`. An empty result is an error.
    pub fn encode_prompt(&self, text: &str, prepend_bos: bool) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        if prepend_bos {
            ids.push(self.bos_token_id.ok_or_else(|| {
                Error::Tokenizer(
                    "this tokenizer has no BOS token; tokenize without prepending one".into(),
                )
            })?);
        }
        let body = self.encode(text)?;
        if body.is_empty() {
            return Err(Error::EmptyPrompt);
        }
        ids.extend(body);
        Ok(ids)
    }

    /// A batch [batch, pos] of u32 ids, like TransformerLens's `to_tokens`. Prompts of unequal
    /// length are padded on the right (with BOS/EOS); causal attention means a prompt never sees
    /// its padding, so its activations equal those of running it alone. Use [`Self::lengths`]
    /// to know which positions are real.
    pub fn to_tokens(&self, texts: &[&str], prepend_bos: bool, device: &Device) -> Result<Tensor> {
        let rows = texts
            .iter()
            .map(|t| self.encode_prompt(t, prepend_bos))
            .collect::<Result<Vec<_>>>()?;
        pad_batch(&rows, self.pad_id(), device)
    }

    /// The number of real (unpadded) tokens of each prompt, as `to_tokens` would make them.
    pub fn lengths(&self, texts: &[&str], prepend_bos: bool) -> Result<Vec<usize>> {
        texts
            .iter()
            .map(|t| Ok(self.encode_prompt(t, prepend_bos)?.len()))
            .collect()
    }

    fn pad_id(&self) -> u32 {
        self.eos_token_id.or(self.bos_token_id).unwrap_or(0)
    }

    /// Each id decoded on its own, like TransformerLens's `to_str_tokens`.
    pub fn to_str_tokens(&self, ids: &[u32]) -> Result<Vec<String>> {
        ids.iter().map(|&id| self.decode(&[id])).collect()
    }

    /// Text of `ids` (special tokens kept).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }
}

/// Right-pads rows of ids into one [batch, pos] u32 tensor.
pub fn pad_batch(rows: &[Vec<u32>], pad: u32, device: &Device) -> Result<Tensor> {
    let p = rows.iter().map(Vec::len).max().unwrap_or(0);
    if p == 0 {
        return Err(Error::EmptyPrompt);
    }
    let flat: Vec<u32> = rows
        .iter()
        .flat_map(|r| r.iter().copied().chain(std::iter::repeat(pad)).take(p))
        .collect();
    Ok(Tensor::from_vec(flat, (rows.len(), p), device)?)
}

/// GPT-2's printable spelling of a byte (the byte-level BPE alphabet).
fn byte_char(b: u8) -> char {
    let printable =
        |c: u32| (33..=126).contains(&c) || (161..=172).contains(&c) || (174..=255).contains(&c);
    if printable(b as u32) {
        return char::from(b);
    }
    let n = (0..b as u32).filter(|&c| !printable(c)).count() as u32;
    // 256 + n < 512 is always a valid scalar value.
    char::from_u32(256 + n).unwrap_or(char::REPLACEMENT_CHARACTER)
}

/// How a byte-level BPE splits text into words before merging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// GPT-2's regular expression.
    Gpt2,
    /// Numbers into single digits first, then GPT-2's (SmolLM, llama 3).
    Digits,
    /// Qwen2's regular expression (single digits, newlines kept with the punctuation before them).
    Qwen2,
}

/// Qwen2's pre-tokenizer pattern, as its tokenizer.json and transformers' GGUF reader write it.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The tokenizer.json of a byte-level BPE (GPT-2's layout). `special` tokens are matched whole;
/// `<|endoftext|>` is added when the vocabulary lacks it.
fn byte_level_bpe_json(
    mut vocab: Value,
    merges: Vec<&str>,
    special: &[(u32, String)],
    split: Split,
) -> Value {
    let map = vocab.as_object_mut().expect("vocab is an object");
    let mut special = special.to_vec();
    if special.is_empty() {
        let eot = match map.get(GPT2_EOT) {
            Some(id) => id.as_u64().unwrap_or(0) as u32,
            None => {
                let id = map.len() as u32;
                map.insert(GPT2_EOT.into(), json!(id));
                id
            }
        };
        special.push((eot, GPT2_EOT.into()));
    }
    let added: Vec<Value> = special
        .iter()
        .map(|(id, content)| json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
        .collect();
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let pre = match split {
        Split::Gpt2 => byte_level,
        Split::Digits => {
            json!({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level]})
        }
        Split::Qwen2 => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}]}),
    };
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre,
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges}
    })
}
