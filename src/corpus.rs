//! A text corpus packed into fixed-length token contexts, as SAELens packs its training data:
//! documents are tokenized (in parallel), shuffled by a seed, concatenated with a separator
//! token between them, and cut into contexts that each begin with BOS. The same documents,
//! tokenizer and seed always give the same contexts.

use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;
use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;
use std::path::Path;

/// One document and where it was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub text: String,
    /// The file it came from.
    pub source: String,
    /// Its first line in that file (for `.parquet`, its row, from 1).
    pub line: usize,
}

/// Reads the documents of a `.txt` or `.jsonl` file.
///
/// - `.txt`: documents are separated by blank lines; a file without blank lines holds one
///   document per line.
/// - `.jsonl`: one JSON object per line, its text in the string field `text_field`.
///
/// Invalid UTF-8, a line that is not a JSON object with that field, and a file with no text
/// are errors naming the file and line. (Parquet files are read by the lab, which has polars;
/// it builds [`Document`]s the same way.)
pub fn read_documents(path: &Path, text_field: &str) -> Result<Vec<Document>> {
    let source = path.display().to_string();
    let bad = |line: Option<usize>, reason: String| Error::BadCorpus {
        source_name: source.clone(),
        line,
        reason,
    };
    let jsonl = match path.extension().and_then(|e| e.to_str()) {
        Some("txt") => false,
        Some("jsonl") => true,
        _ => return Err(bad(None, "expected a .txt, .jsonl or .parquet file".into())),
    };
    let bytes = crate::text::read_bytes(path)?;
    let mut lines = Vec::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let text = std::str::from_utf8(raw)
            .map_err(|e| bad(Some(i + 1), format!("not valid UTF-8 ({e})")))?;
        lines.push(text.trim_end_matches('\r'));
    }
    let mut docs = Vec::new();
    if jsonl {
        for (i, line) in lines.iter().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let value: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| bad(Some(i + 1), format!("not a JSON object ({e})")))?;
            let text = value
                .get(text_field)
                .and_then(|t| t.as_str())
                .ok_or_else(|| {
                    bad(
                        Some(i + 1),
                        format!(
                            "no string field `{text_field}`; name the text field with --text-field"
                        ),
                    )
                })?;
            docs.push(Document {
                text: text.to_string(),
                source: source.clone(),
                line: i + 1,
            });
        }
    } else {
        // Paragraph mode when a blank line stands between two lines of text.
        let text_at: Vec<usize> = (0..lines.len())
            .filter(|&i| !lines[i].trim().is_empty())
            .collect();
        let paragraphs = text_at.windows(2).any(|w| w[1] > w[0] + 1);
        let mut current: Option<(usize, String)> = None;
        for (i, line) in lines.iter().enumerate() {
            let blank = line.trim().is_empty();
            if blank || !paragraphs {
                docs.extend(current.take().map(|(line, text)| Document {
                    text,
                    source: source.clone(),
                    line,
                }));
            }
            if blank {
                continue;
            }
            match &mut current {
                Some((_, text)) => {
                    text.push('\n');
                    text.push_str(line);
                }
                None => current = Some((i + 1, line.to_string())),
            }
        }
        docs.extend(current.map(|(line, text)| Document {
            text,
            source: source.clone(),
            line,
        }));
    }
    if docs.is_empty() {
        return Err(bad(None, "holds no text: the corpus is empty".into()));
    }
    Ok(docs)
}

/// How documents become contexts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packing {
    /// Tokens per context, the leading BOS included.
    pub context_len: usize,
    /// The token that begins every context (`None`: contexts begin mid-stream).
    pub bos: Option<u32>,
    /// The token between two documents (SAELens uses BOS).
    pub separator: Option<u32>,
    /// Seeds the order of the documents.
    pub seed: u64,
}

/// Token contexts [contexts, context_len], row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contexts {
    pub tokens: Vec<u32>,
    pub context_len: usize,
    /// Documents tokenized, and the tokens of text they held (separators and BOS not counted).
    pub documents: usize,
    pub text_tokens: usize,
}

impl Contexts {
    /// The number of contexts.
    pub fn len(&self) -> usize {
        self.tokens.len() / self.context_len
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Context `i`'s token ids.
    pub fn get(&self, i: usize) -> &[u32] {
        &self.tokens[i * self.context_len..(i + 1) * self.context_len]
    }

    /// Contexts `range` as token ids [contexts, context_len].
    pub fn batch(&self, range: std::ops::Range<usize>, device: &Device) -> Result<Tensor> {
        if range.end > self.len() || range.start > range.end {
            return Err(Error::Invalid(format!(
                "contexts {range:?} out of 0..{}",
                self.len()
            )));
        }
        let c = self.context_len;
        let rows = &self.tokens[range.start * c..range.end * c];
        Ok(Tensor::from_slice(rows, (range.len(), c), device)?)
    }
}

/// Tokenizes `docs` in parallel and packs them by `packing` into contexts no longer than the
/// model's `n_ctx`: all of them, or the first `max_contexts` (tokenizing only the documents
/// those need; they are the first contexts of the full packing). The last, partial context is
/// dropped. A corpus too small for one context is an error.
pub fn pack(
    docs: &[Document],
    tok: &Tokenizer,
    n_ctx: usize,
    packing: &Packing,
    max_contexts: Option<usize>,
) -> Result<Contexts> {
    let c = packing.context_len;
    let lead = packing.bos.is_some() as usize;
    if c > n_ctx {
        return Err(Error::bad_parameter(
            "context_len",
            c,
            format!("is longer than the model's context of {n_ctx} tokens"),
        ));
    }
    if c <= lead {
        return Err(Error::bad_parameter(
            "context_len",
            c,
            "must leave room for at least one token after BOS",
        ));
    }
    // Documents in seeded order, tokenized in parallel a group at a time, until `max_contexts`
    // contexts are full (all of them without a limit).
    let mut order: Vec<&Document> = docs.iter().collect();
    order.shuffle(&mut StdRng::seed_from_u64(packing.seed));
    let want = max_contexts.map_or(usize::MAX, |n| n.saturating_mul(c));
    let mut tokens = Vec::new();
    let (mut row, mut text_tokens, mut documents) = (0, 0, 0); // row: tokens in the current context
    for group in order.chunks(256) {
        if tokens.len() >= want {
            break;
        }
        let encoded: Vec<Vec<u32>> = group
            .par_iter()
            .map(|d| {
                tok.encode(&d.text).map_err(|e| Error::BadCorpus {
                    source_name: d.source.clone(),
                    line: Some(d.line),
                    reason: e.to_string(),
                })
            })
            .collect::<Result<_>>()?;
        for doc in &encoded {
            let sep = packing.separator.filter(|_| documents > 0);
            documents += 1;
            text_tokens += doc.len();
            for &t in sep.iter().chain(doc) {
                if row == 0 {
                    tokens.extend(packing.bos);
                    row = lead;
                }
                tokens.push(t);
                row += 1;
                if row == c {
                    row = 0;
                }
            }
        }
    }
    tokens.truncate(want);
    tokens.truncate(tokens.len() / c * c);
    if tokens.is_empty() {
        let source = docs.first().map_or("the corpus", |d| d.source.as_str());
        return Err(Error::BadCorpus {
            source_name: source.into(),
            line: None,
            reason: format!(
                "the corpus has {text_tokens} tokens, fewer than one context of {c}; give more text or a shorter context"
            ),
        });
    }
    Ok(Contexts {
        tokens,
        context_len: c,
        documents,
        text_tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn text_files_split_on_blank_lines_or_else_lines() {
        let d = tempfile::tempdir().unwrap();
        let docs =
            read_documents(&write(d.path(), "a.txt", b"one\ntwo\n\n\nthree\n"), "text").unwrap();
        let texts: Vec<_> = docs.iter().map(|d| (d.text.as_str(), d.line)).collect();
        assert_eq!(texts, [("one\ntwo", 1), ("three", 5)]);
        let docs = read_documents(&write(d.path(), "b.txt", b"one\ntwo\n"), "text").unwrap();
        assert_eq!(docs.len(), 2);
    }

    #[test]
    fn bad_corpora_name_file_and_line() {
        let d = tempfile::tempdir().unwrap();
        let cases: [(&str, &[u8], &str); 5] = [
            ("u.txt", b"ok\n\xff\xfe\n", "u.txt line 2: not valid UTF-8"),
            (
                "f.jsonl",
                b"{\"text\": \"a\"}\n{\"body\": \"b\"}\n",
                "f.jsonl line 2: no string field `text`",
            ),
            (
                "j.jsonl",
                b"{\"text\": \"a\"}\nnot json\n",
                "j.jsonl line 2: not a JSON object",
            ),
            ("e.txt", b"\n  \n", "e.txt: holds no text"),
            ("x.csv", b"a,b\n", "expected a .txt, .jsonl or .parquet"),
        ];
        for (name, bytes, want) in cases {
            let e = read_documents(&write(d.path(), name, bytes), "text").unwrap_err();
            assert!(e.to_string().contains(want), "{name}: {e}");
        }
    }

    #[test]
    fn packing_puts_bos_first_separates_documents_and_is_seeded() {
        let tok = Tokenizer::bytes().unwrap();
        let docs: Vec<Document> = ["abcdef", "ghijkl", "mnopqr"]
            .iter()
            .enumerate()
            .map(|(i, t)| Document {
                text: t.to_string(),
                source: "mem".into(),
                line: i + 1,
            })
            .collect();
        let packing = Packing {
            context_len: 5,
            bos: Some(256),
            separator: Some(256),
            seed: 1,
        };
        let c = pack(&docs, &tok, 16, &packing, None).unwrap();
        // 18 text tokens + 2 separators = 20 tokens, 4 per context after BOS: 5 contexts.
        assert_eq!(c.len(), 5);
        assert!((0..c.len()).all(|i| c.get(i)[0] == 256));
        assert_eq!(c.tokens.iter().filter(|&&t| t == 256).count(), 5 + 2);
        assert_eq!(c, pack(&docs, &tok, 16, &packing, None).unwrap());
        let two = pack(&docs, &tok, 16, &packing, Some(2)).unwrap();
        assert_eq!(two.tokens, c.tokens[..10]);
        let other = pack(
            &docs,
            &tok,
            16,
            &Packing {
                seed: 2,
                ..packing.clone()
            },
            None,
        )
        .unwrap();
        assert_eq!(other.tokens.len(), c.tokens.len());
        let e = pack(&docs, &tok, 4, &packing, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("context_len 5") && e.contains("context of 4"),
            "{e}"
        );
        let e = pack(
            &docs,
            &tok,
            4096,
            &Packing {
                context_len: 100,
                ..packing.clone()
            },
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("fewer than one context of 100"), "{e}");
    }
}
