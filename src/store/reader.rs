//! Reading activations back: a store on disk, or the model run on the fly, both as chunks of
//! [tokens, d] that a seeded mixing buffer turns into shuffled batches in bounded memory.

use super::{read_tensor, shard_path, Capture, StoreSpec, FORMAT};
use crate::corpus::Contexts;
use crate::error::{Error, Result};
use candle_core::{DType, Tensor};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::path::{Path, PathBuf};

/// A complete store on disk.
#[derive(Debug, Clone)]
pub struct ActivationStore {
    pub dir: PathBuf,
    pub spec: StoreSpec,
}

impl ActivationStore {
    /// Opens the store in `dir`, checking that every shard is there.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join("store.json");
        if !path.is_file() {
            return Err(Error::Invalid(format!(
                "{} is missing: {} is not an activation store written by `capture`",
                path.display(),
                dir.display()
            )));
        }
        let text = crate::text::read_text(&path)?;
        let spec: StoreSpec = serde_json::from_str(&text).map_err(|e| Error::CorruptFile {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if spec.format != FORMAT {
            return Err(Error::Unsupported(format!(
                "{}: store format {}, this hooklens reads {FORMAT}",
                path.display(),
                spec.format
            )));
        }
        let missing: Vec<usize> = (0..spec.shards)
            .filter(|&i| !shard_path(dir, i).is_file())
            .collect();
        if !missing.is_empty() {
            return Err(Error::Invalid(format!(
                "{}: {} of {} shards are missing (first: {}); the capture is unfinished: resume it with --resume, or merge its --shard runs with --merge",
                dir.display(),
                missing.len(),
                spec.shards,
                missing[0]
            )));
        }
        Ok(Self {
            dir: dir.into(),
            spec,
        })
    }

    /// Hook `name`'s activations in shard `i`, [tokens, width] in f32.
    pub fn read(&self, i: usize, name: &str) -> Result<Tensor> {
        let (_, hook) = self.spec.hook(name)?;
        let x = read_tensor(&shard_path(&self.dir, i), name)?;
        Ok(x.reshape(((), hook.width()))?.to_dtype(DType::F32)?)
    }

    /// Shard `i`'s `token_id`, `context` or `position` column.
    pub fn column(&self, i: usize, name: &str) -> Result<Vec<u32>> {
        Ok(read_tensor(&shard_path(&self.dir, i), name)?.to_vec1()?)
    }
}

/// Where activations come from: a store on disk, or the model run over contexts on the fly
/// (`contexts_per_chunk` at a time), so that one consumer reads either.
pub enum Source<'a> {
    Disk(&'a ActivationStore),
    Model {
        capture: &'a Capture<'a>,
        contexts: &'a Contexts,
        contexts_per_chunk: usize,
    },
}

impl Source<'_> {
    /// How many chunks there are (shards, or groups of contexts).
    pub fn chunks(&self) -> usize {
        match self {
            Source::Disk(s) => s.spec.shards,
            Source::Model {
                contexts,
                contexts_per_chunk,
                ..
            } => contexts.len().div_ceil((*contexts_per_chunk).max(1)),
        }
    }

    /// Chunk `i`: every hook's activations, each [tokens, width] in f32, in the capture's order.
    pub fn chunk(&self, i: usize) -> Result<Vec<Tensor>> {
        match self {
            Source::Disk(s) => s.spec.hooks.iter().map(|h| s.read(i, &h.name)).collect(),
            Source::Model {
                capture,
                contexts,
                contexts_per_chunk,
            } => {
                let n = (*contexts_per_chunk).max(1);
                let range = i * n..((i + 1) * n).min(contexts.len());
                let tokens = contexts.batch(range, capture.device())?;
                capture
                    .activations(&tokens)?
                    .into_iter()
                    .map(|x| Ok(x.flatten_from(1)?.to_dtype(DType::F32)?))
                    .collect()
            }
        }
    }

    /// Which of chunk `i`'s rows `filter` keeps.
    pub fn kept(&self, i: usize, filter: &super::TokenFilter) -> Result<Vec<bool>> {
        let pos = self.positions(i)?;
        let ids = match self {
            Source::Disk(s) => s.column(i, "token_id")?,
            Source::Model {
                contexts,
                contexts_per_chunk,
                ..
            } => {
                let n = (*contexts_per_chunk).max(1) * contexts.context_len;
                contexts.tokens[i * n..((i + 1) * n).min(contexts.tokens.len())].to_vec()
            }
        };
        Ok(ids
            .iter()
            .zip(&pos)
            .map(|(&t, &p)| filter.keeps(t, p))
            .collect())
    }

    /// The position in its context of each of chunk `i`'s rows.
    pub fn positions(&self, i: usize) -> Result<Vec<u32>> {
        match self {
            Source::Disk(s) => s.column(i, "position"),
            Source::Model {
                contexts,
                contexts_per_chunk,
                ..
            } => {
                let n = (*contexts_per_chunk).max(1);
                let rows = (((i + 1) * n).min(contexts.len()) - i * n) * contexts.context_len;
                Ok((0..rows)
                    .map(|r| (r % contexts.context_len) as u32)
                    .collect())
            }
        }
    }

    /// Chunk `i`'s activations at the hooks numbered `hooks`.
    fn hook_chunk(&self, i: usize, hooks: &[usize]) -> Result<Vec<Tensor>> {
        Ok(match self {
            Source::Disk(s) => hooks
                .iter()
                .map(|&h| s.read(i, &s.spec.hooks[h].name))
                .collect::<Result<Vec<_>>>()?,
            Source::Model { .. } => {
                let all = self.chunk(i)?;
                hooks.iter().map(|&h| all[h].clone()).collect()
            }
        })
    }
}

/// Shuffled batches [batch, width] of one hook's activations, or of several side by side in
/// each row (a transcoder's input and target), as SAELens's mixing buffer makes them: chunks
/// are visited in a seeded order and their rows poured into a buffer of `buffer_rows`; when it
/// is full it is shuffled, its first half is handed out in batches and the rest stays to mix
/// with the next chunk. Memory: the buffer plus one chunk. The last batch may be short.
pub struct Batches<'a> {
    source: &'a Source<'a>,
    hooks: Vec<usize>,
    batch: usize,
    capacity: usize,
    order: Vec<usize>,
    next_chunk: usize,
    /// Rows waiting, [rows][width], and rows ready to hand out.
    buffer: Vec<Vec<f32>>,
    ready: std::collections::VecDeque<Vec<f32>>,
    rng: StdRng,
    width: usize,
    /// Rows it leaves out.
    filter: super::TokenFilter,
}

impl<'a> Batches<'a> {
    /// Batches of `batch` rows of the hooks numbered `hooks` (in the source's order) from a
    /// buffer of `buffer_rows` (at least two batches), seeded by `seed`.
    pub fn new(
        source: &'a Source<'a>,
        hooks: &[usize],
        batch: usize,
        buffer_rows: usize,
        seed: u64,
    ) -> Result<Self> {
        if batch == 0 || buffer_rows < 2 * batch {
            return Err(Error::bad_parameter(
                "buffer_rows",
                buffer_rows,
                format!("must hold at least two batches of {batch} (and a batch at least one row)"),
            ));
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let mut order: Vec<usize> = (0..source.chunks()).collect();
        if matches!(source, Source::Disk(_)) {
            order.shuffle(&mut rng);
        }
        Ok(Self {
            source,
            hooks: hooks.to_vec(),
            batch,
            capacity: buffer_rows,
            order,
            next_chunk: 0,
            buffer: Vec::new(),
            ready: Default::default(),
            rng,
            width: 0,
            filter: super::TokenFilter::all(),
        })
    }

    /// Leaves out the rows `filter` does not keep (BOS, separators, first positions): SAE
    /// training usually skips them ([`super::TokenFilter`]).
    pub fn filtered(mut self, filter: super::TokenFilter) -> Self {
        self.filter = filter;
        self
    }

    /// Fills the ready queue; false when everything has been handed out.
    fn refill(&mut self) -> Result<bool> {
        while self.ready.len() < self.batch {
            if self.next_chunk < self.order.len() && self.buffer.len() < self.capacity {
                let chunk = self.order[self.next_chunk];
                let parts = self.source.hook_chunk(chunk, &self.hooks)?;
                let x = Tensor::cat(&parts, 1)?; // the hooks side by side [tokens, Σ widths]
                self.next_chunk += 1;
                self.width = x.dim(1)?;
                match self.filter.is_all() {
                    true => self.buffer.extend(x.to_vec2::<f32>()?),
                    false => {
                        let kept = self.source.kept(chunk, &self.filter)?;
                        let small = self.filter.norm_ok(&parts[0])?; // the input's norm
                        let rows = x.to_vec2::<f32>()?.into_iter().zip(kept).zip(small);
                        self.buffer
                            .extend(rows.filter(|((_, k), s)| *k && *s).map(|((r, _), _)| r));
                    }
                }
                continue;
            }
            if self.buffer.is_empty() {
                return Ok(!self.ready.is_empty());
            }
            self.buffer.shuffle(&mut self.rng);
            let last = self.next_chunk >= self.order.len();
            let keep = if last { 0 } else { self.buffer.len() / 2 };
            let out = self.buffer.split_off(keep);
            self.ready.extend(out);
        }
        Ok(true)
    }
}

impl Iterator for Batches<'_> {
    type Item = Result<Tensor>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.refill() {
            Err(e) => Some(Err(e)),
            Ok(false) => None,
            Ok(true) => {
                let n = self.batch.min(self.ready.len());
                let rows: Vec<f32> = self.ready.drain(..n).flatten().collect();
                Some(
                    Tensor::from_vec(rows, (n, self.width), &candle_core::Device::Cpu)
                        .map_err(Error::from),
                )
            }
        }
    }
}
