//! Seeded, deterministic datasets: repeated random tokens (induction), IOI prompt pairs, and
//! prompt pairs read from a file, validated before any forward pass.

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::tokenizer::{pad_batch, Tokenizer};
use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::ops::Range;
use std::path::Path;

/// Printable ASCII: the token ids a byte-level model (the embedded one) reads as ordinary text.
pub const PRINTABLE_ASCII: Range<u32> = 32..127;

/// The standard induction test input [batch, (BOS +) 2 * half]: BOS, `half` random tokens
/// drawn from `vocab`, the same tokens again.
pub fn repeated_random_tokens(
    rng: &mut StdRng,
    batch: usize,
    half: usize,
    bos: Option<u32>,
    vocab: Range<u32>,
    device: &Device,
) -> Result<Tensor> {
    if half == 0 || batch == 0 || vocab.is_empty() {
        return Err(Error::Invalid(format!(
            "repeated random tokens need batch > 0, half > 0 and a non-empty token range (got {batch}, {half}, {vocab:?})"
        )));
    }
    let mut data = Vec::new();
    for _ in 0..batch {
        let r: Vec<u32> = (0..half).map(|_| rng.random_range(vocab.clone())).collect();
        data.extend(bos);
        data.extend(&r);
        data.extend(&r);
    }
    let p = 2 * half + bos.is_some() as usize;
    Ok(Tensor::from_vec(data, (batch, p), device)?)
}

/// The token ids to draw random tokens from: `min..max` when given, else printable ASCII for a
/// byte-level model and `1000..21000` (clear of special tokens at either end) otherwise. Ids
/// outside the vocabulary or an empty range are an error naming the flag, never clamped.
pub fn random_token_range(
    cfg: &ModelConfig,
    min: Option<u32>,
    max: Option<u32>,
) -> Result<Range<u32>> {
    let vocab = cfg.d_vocab as u32;
    let byte_level = cfg.d_vocab <= 512;
    let lo = min.unwrap_or(if byte_level {
        PRINTABLE_ASCII.start
    } else {
        1000
    });
    let hi = max.unwrap_or(if byte_level {
        PRINTABLE_ASCII.end
    } else {
        lo.saturating_add(20000).min(vocab)
    });
    if lo >= vocab {
        return Err(Error::bad_parameter(
            "token_min",
            lo,
            format!("is outside the vocabulary: it must lie in 0..{vocab}"),
        ));
    }
    if hi > vocab {
        return Err(Error::bad_parameter(
            "token_max",
            hi,
            format!(
                "is outside the vocabulary: it must be at most {vocab} (one past the highest id)"
            ),
        ));
    }
    if hi <= lo {
        return Err(Error::bad_parameter(
            "token_max",
            hi,
            format!("must be greater than `token_min` {lo}"),
        ));
    }
    Ok(lo..hi)
}

/// A clean prompt, its corrupted counterpart, and the answer the clean prompt should predict
/// next against a wrong answer (the corrupted prompt's natural answer). `line` is where it was
/// read from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptPair {
    pub clean: String,
    pub corrupted: String,
    pub answer: String,
    pub wrong: String,
    #[serde(skip)]
    pub line: Option<usize>,
}

/// A [`PromptPair`] as token ids: `clean` and `corrupted` of equal length, one token per answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenPair {
    pub clean: Vec<u32>,
    pub corrupted: Vec<u32>,
    pub answer: u32,
    pub wrong: u32,
}

/// Tokenizes and validates `pairs`: non-empty prompts, clean and corrupted of equal token
/// length, answers of exactly one token. `source` names the data in errors (a file name).
pub fn tokenize_pairs(
    pairs: &[PromptPair],
    tok: &Tokenizer,
    prepend_bos: bool,
    source: &str,
) -> Result<Vec<TokenPair>> {
    if pairs.is_empty() {
        return Err(Error::BadPair {
            source_name: source.into(),
            line: None,
            reason: "there are no prompt pairs".into(),
        });
    }
    pairs
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let bad = |reason: String| Error::BadPair {
                source_name: source.into(),
                line: Some(p.line.unwrap_or(i + 1)),
                reason,
            };
            let prompt = |text: &str, what: &str| match tok.encode_prompt(text, prepend_bos) {
                Err(Error::EmptyPrompt) => Err(bad(format!("the {what} prompt is empty"))),
                other => other,
            };
            let (clean, corrupted) = (prompt(&p.clean, "clean")?, prompt(&p.corrupted, "corrupted")?);
            if clean.len() != corrupted.len() {
                return Err(bad(format!(
                    "the clean prompt is {} tokens and the corrupted one {}; patching needs equal lengths: {:?} vs {:?}",
                    clean.len(),
                    corrupted.len(),
                    tok.to_str_tokens(&clean)?,
                    tok.to_str_tokens(&corrupted)?
                )));
            }
            let one = |text: &str, what: &str| {
                tok.single_token(text, &format!("the {what}"))
                    .map_err(|e| bad(e.to_string()))
            };
            let (answer, wrong) = (one(&p.answer, "answer")?, one(&p.wrong, "wrong answer")?);
            if answer == wrong {
                // The logit difference would be 0 whatever the model does.
                return Err(bad(format!(
                    "the answer and the wrong answer are the same token {:?}; give two different ones",
                    p.answer
                )));
            }
            Ok(TokenPair {
                answer,
                wrong,
                clean,
                corrupted,
            })
        })
        .collect()
}

/// Token pairs as tensors: `clean` and `corrupted` [batch, pos] (right-padded when pairs
/// differ in length), each row's real length, and the answer and wrong-answer ids.
#[derive(Debug, Clone)]
pub struct PairBatch {
    pub clean: Tensor,
    pub corrupted: Tensor,
    pub lengths: Vec<usize>,
    pub answers: Vec<u32>,
    pub wrong: Vec<u32>,
}

impl PairBatch {
    pub fn new(pairs: &[TokenPair], pad: u32, device: &Device) -> Result<Self> {
        let rows =
            |f: fn(&TokenPair) -> &Vec<u32>| pairs.iter().map(f).cloned().collect::<Vec<_>>();
        Ok(Self {
            clean: pad_batch(&rows(|p| &p.clean), pad, device)?,
            corrupted: pad_batch(&rows(|p| &p.corrupted), pad, device)?,
            lengths: pairs.iter().map(|p| p.clean.len()).collect(),
            answers: pairs.iter().map(|p| p.answer).collect(),
            wrong: pairs.iter().map(|p| p.wrong).collect(),
        })
    }

    /// The pairs `rows` (views of the token tensors, no copy).
    pub fn slice(&self, rows: Range<usize>) -> Result<Self> {
        Ok(Self {
            clean: self.clean.narrow(0, rows.start, rows.len())?,
            corrupted: self.corrupted.narrow(0, rows.start, rows.len())?,
            lengths: self.lengths[rows.clone()].to_vec(),
            answers: self.answers[rows.clone()].to_vec(),
            wrong: self.wrong[rows].to_vec(),
        })
    }
}

/// `n_prompts` prompts of `n_pos` (padded) tokens in consecutive chunks of at most
/// `tokens_per_pass` tokens: what one forward pass over a dataset holds, so that memory does
/// not grow with the dataset. A prompt longer than `tokens_per_pass` is an error.
pub fn prompt_chunks(
    n_prompts: usize,
    n_pos: usize,
    tokens_per_pass: usize,
) -> Result<Vec<Range<usize>>> {
    if n_pos > tokens_per_pass {
        return Err(Error::Invalid(format!(
            "prompts of {n_pos} tokens do not fit in a pass of {tokens_per_pass} tokens \
             (--tokens-per-pass): a pass holds at least one whole prompt; raise it to {n_pos} or more"
        )));
    }
    let per_chunk = (tokens_per_pass / n_pos.max(1)).max(1);
    Ok((0..n_prompts)
        .step_by(per_chunk)
        .map(|start| start..(start + per_chunk).min(n_prompts))
        .collect())
}

/// Reads prompt pairs from a `.tsv` file (four tab-separated columns clean, corrupted, answer,
/// wrong; an optional header line of those four names) or a `.jsonl` file (one
/// object `{"clean", "corrupted", "answer", "wrong"}` per line). Blank lines, invalid UTF-8 and
/// malformed rows are errors with their line number.
pub fn read_pairs(path: &Path) -> Result<Vec<PromptPair>> {
    let bytes = crate::text::read_bytes(path)?;
    let source = path.display().to_string();
    let jsonl = match path.extension().and_then(|e| e.to_str()) {
        Some("tsv") => false,
        Some("jsonl") => true,
        _ => {
            return Err(Error::BadPair {
                source_name: source,
                line: None,
                reason: "expected a .tsv or .jsonl file".into(),
            })
        }
    };
    let mut pairs = vec![];
    let body = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
    for (i, raw) in body.split(|&b| b == b'\n').enumerate() {
        let line = i + 1;
        let bad = |reason: String| Error::BadPair {
            source_name: source.clone(),
            line: Some(line),
            reason,
        };
        let text = std::str::from_utf8(raw)
            .map_err(|e| bad(format!("not valid UTF-8 ({e})")))?
            .trim_end_matches('\r');
        if text.trim().is_empty() {
            return Err(bad("the line is empty; remove blank lines".into()));
        }
        let pair = if jsonl {
            serde_json::from_str::<PromptPair>(text).map_err(|e| {
                bad(format!(
                    "not a JSON object with string fields clean, corrupted, answer, wrong ({e})"
                ))
            })?
        } else {
            let cols: Vec<&str> = text.split('\t').collect();
            if line == 1 && cols == ["clean", "corrupted", "answer", "wrong"] {
                continue;
            }
            let [clean, corrupted, answer, wrong] = cols[..] else {
                return Err(bad(format!(
                    "{} tab-separated columns; expected 4: clean, corrupted, answer, wrong",
                    cols.len()
                )));
            };
            PromptPair {
                clean: clean.into(),
                corrupted: corrupted.into(),
                answer: answer.into(),
                wrong: wrong.into(),
                line: None,
            }
        };
        pairs.push(PromptPair {
            line: Some(line),
            ..pair
        });
    }
    Ok(pairs)
}

/// IOI templates (Wang et al. 2022): `{A}` and `{B}` are the two names, `{S}` the subject who
/// gives, so `{S} = {B}` is the clean ABB form whose answer is `{A}`.
const IOI_TEMPLATES: [&str; 6] = [
    "When {A} and {B} went to the {place}, {S} gave a {object} to",
    "After {A} and {B} went to the {place}, {S} gave a {object} to",
    "When {A} and {B} got a {object} at the {place}, {S} decided to give it to",
    "While {A} and {B} were working at the {place}, {S} gave a {object} to",
    "Then, {A} and {B} had a long argument, and afterwards {S} said to",
    "Friends {A} and {B} found a {object} at the {place}. {S} gave it to",
];
const IOI_NAMES: [&str; 24] = [
    "Mary", "John", "Tom", "James", "Dan", "Sid", "Martin", "Amy", "Paul", "Lisa", "Kate", "Mark",
    "Anne", "Sarah", "Michael", "David", "Emma", "Laura", "Jack", "Alex", "Rose", "Peter", "Ben",
    "Alice",
];
const IOI_PLACES: [&str; 6] = [
    "store",
    "garden",
    "restaurant",
    "school",
    "hospital",
    "office",
];
const IOI_OBJECTS: [&str; 6] = ["drink", "book", "ring", "bone", "basketball", "computer"];

/// `n` indirect-object-identification pairs, seeded: the clean prompt is ABB ("When Mary and
/// John went to the store, John gave a drink to", answer " Mary"), the corrupted one flips the
/// second subject to ABA ("..., Mary gave a drink to"), whose natural answer " John" is the
/// wrong answer. Only names that are one token (with their leading space) for `tok` are used,
/// so clean and corrupted have equal length and the answers are single tokens.
pub fn ioi_pairs(tok: &Tokenizer, n: usize, seed: u64) -> Result<Vec<PromptPair>> {
    ioi_pairs_with(tok, n, seed, None)
}

/// [`ioi_pairs`] from one template (0..6) only, when given: then every pair has the same
/// token length and the positions of a patching grid line up across pairs.
pub fn ioi_pairs_with(
    tok: &Tokenizer,
    n: usize,
    seed: u64,
    template: Option<usize>,
) -> Result<Vec<PromptPair>> {
    if let Some(t) = template.filter(|&t| t >= IOI_TEMPLATES.len()) {
        return Err(Error::bad_parameter(
            "ioi_template",
            t,
            format!(
                "there are {} templates, 0..{}",
                IOI_TEMPLATES.len(),
                IOI_TEMPLATES.len()
            ),
        ));
    }
    let names = IOI_NAMES
        .iter()
        .filter(|name| {
            tok.encode(&format!(" {name}"))
                .is_ok_and(|ids| ids.len() == 1)
        })
        .collect::<Vec<_>>();
    if names.len() < 2 {
        return Err(Error::Unsupported(format!(
            "IOI prompts need names that are single tokens; this tokenizer has {} of {}",
            names.len(),
            IOI_NAMES.len()
        )));
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut pick = |n: usize| rng.random_range(0..n);
    Ok((0..n)
        .map(|_| {
            let drawn = pick(IOI_TEMPLATES.len());
            let template = IOI_TEMPLATES[template.unwrap_or(drawn)];
            let a = names[pick(names.len())];
            let b = loop {
                let b = names[pick(names.len())];
                if b != a {
                    break b;
                }
            };
            let (place, object) = (
                IOI_PLACES[pick(IOI_PLACES.len())],
                IOI_OBJECTS[pick(IOI_OBJECTS.len())],
            );
            let fill = |s: &str| {
                template
                    .replace("{A}", a)
                    .replace("{B}", b)
                    .replace("{S}", s)
                    .replace("{place}", place)
                    .replace("{object}", object)
            };
            PromptPair {
                clean: fill(b),
                corrupted: fill(a),
                answer: format!(" {a}"),
                wrong: format!(" {b}"),
                line: None,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_ranges_are_checked_not_clamped() {
        let cfg = crate::train::embedded_config();
        assert_eq!(
            random_token_range(&cfg, None, None).unwrap(),
            PRINTABLE_ASCII
        );
        let e = random_token_range(&cfg, Some(300), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("token_min 300") && e.contains("0..257"), "{e}");
        let e = random_token_range(&cfg, None, Some(1000))
            .unwrap_err()
            .to_string();
        assert!(e.contains("token_max 1000"), "{e}");
        let e = random_token_range(&cfg, Some(50), Some(40))
            .unwrap_err()
            .to_string();
        assert!(e.contains("greater than `token_min` 50"), "{e}");
    }

    #[test]
    fn repeated_tokens_repeat() {
        let mut rng = StdRng::seed_from_u64(0);
        let t = repeated_random_tokens(&mut rng, 2, 5, Some(256), 32..127, &Device::Cpu).unwrap();
        let rows = t.to_vec2::<u32>().unwrap();
        assert_eq!(rows[0].len(), 11);
        assert_eq!(rows[0][0], 256);
        assert_eq!(rows[0][1..6], rows[0][6..11]);
        assert_ne!(rows[0], rows[1]);
    }
}
