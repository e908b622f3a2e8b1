//! An activation cache written to one `.safetensors` file pass by pass, so that caching a
//! prompt file holds one pass in memory, not the whole file's activations. The first pass
//! gives every tensor's shape, so the header goes first; each pass's rows then go to their
//! offsets. The file is laid out as [`ActivationCache::save`](crate::cache::ActivationCache::save)
//! lays out the whole batch's cache: hook names, plus `tokens` and `lengths`.

use crate::error::{Error, Result};
use crate::hook_points::NameFilter;
use crate::model::HookedTransformer;
use candle_core::{DType, Tensor};
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::Path;

/// What [`write_cache`] wrote: each tensor's name and shape, and the file's size in bytes.
#[derive(Debug, Clone)]
pub struct CacheFile {
    pub tensors: Vec<(String, Vec<usize>)>,
    pub bytes: u64,
}

/// One tensor of the file: where its bytes start (after the header) and one row's size.
struct Entry {
    name: String,
    dtype: DType,
    shape: Vec<usize>,
    start: u64,
    row_bytes: u64,
}

/// Runs `tokens` [batch, pos] (real lengths `lengths`) through `model` in passes of whole
/// prompts of at most `tokens_per_pass` tokens and writes the hook points that `filter` keeps
/// to `path` (atomically), calling `progress` with the prompts of each pass done.
pub fn write_cache(
    model: &HookedTransformer,
    tokens: &Tensor,
    lengths: &[usize],
    filter: &NameFilter,
    tokens_per_pass: usize,
    path: &Path,
    progress: &mut dyn FnMut(usize),
) -> Result<CacheFile> {
    let (n, pos) = tokens.dims2()?;
    if lengths.len() != n || lengths.iter().any(|&l| l > pos) {
        return Err(Error::Invalid(format!(
            "{} lengths for a token batch of {n} x {pos}",
            lengths.len()
        )));
    }
    let chunks = crate::data::prompt_chunks(n, pos, tokens_per_pass)?;
    let mut written = None;
    crate::atomic::atomic_write_with(path, |tmp| {
        let io = |e| Error::io(tmp, e);
        let mut file = BufWriter::new(File::create(tmp).map_err(io)?);
        let mut layout: Option<(Vec<Entry>, u64)> = None;
        for rows in chunks {
            let part = tokens.narrow(0, rows.start, rows.len())?;
            let (_, cache) = model.run_with_cache(&part, filter.clone())?;
            if cache.is_empty() {
                return Err(Error::Invalid(
                    "the name filter matches no hook point".into(),
                ));
            }
            let (entries, data_start) = match &layout {
                Some(l) => l,
                None => layout.insert(write_header(&mut file, &cache, n, pos)?),
            };
            for (entry, (point, x)) in entries.iter().zip(cache.iter()) {
                if entry.name != point.to_string() || x.dims()[1..] != entry.shape[1..] {
                    return Err(Error::Invalid(format!(
                        "{point} is {:?} in prompts {rows:?}, {:?} in the first pass",
                        x.dims(),
                        entry.shape
                    )));
                }
                // [rows, ...] -> bytes, at the rows' place in the [n, ...] tensor
                let at = data_start + entry.start + rows.start as u64 * entry.row_bytes;
                file.seek(SeekFrom::Start(at)).map_err(io)?;
                file.write_all(&le_bytes(x)?).map_err(io)?;
            }
            progress(rows.len());
        }
        let (entries, data_start) = layout.expect("prompt_chunks gives at least one pass");
        let lengths: Vec<u32> = lengths.iter().map(|&l| l as u32).collect();
        let columns = [
            tokens.to_dtype(DType::U32)?,
            Tensor::new(lengths, &candle_core::Device::Cpu)?,
        ];
        for (entry, x) in entries.iter().rev().zip(columns.iter().rev()) {
            file.seek(SeekFrom::Start(data_start + entry.start))
                .map_err(io)?;
            file.write_all(&le_bytes(x)?).map_err(io)?;
        }
        let bytes = file.seek(SeekFrom::End(0)).map_err(io)?;
        file.into_inner()
            .map_err(|e| io(e.into_error()))?
            .sync_all()
            .map_err(io)?;
        written = Some(CacheFile {
            tensors: entries.into_iter().map(|e| (e.name, e.shape)).collect(),
            bytes,
        });
        Ok(())
    })?;
    Ok(written.expect("written when the write succeeded"))
}

/// Lays the tensors out (the cache's hook points for `n` prompts of `pos` tokens, then
/// `tokens` and `lengths`), writes the safetensors header and sizes the file. Returns the
/// entries and where their data starts.
fn write_header(
    file: &mut BufWriter<File>,
    cache: &crate::cache::ActivationCache,
    n: usize,
    pos: usize,
) -> Result<(Vec<Entry>, u64)> {
    let mut entries = Vec::new();
    let mut end = 0u64;
    let mut push = |name: String, dtype: DType, shape: Vec<usize>| {
        let row_bytes = (shape[1..].iter().product::<usize>() * dtype.size_in_bytes()) as u64;
        entries.push(Entry {
            name,
            dtype,
            shape,
            start: end,
            row_bytes,
        });
        end += row_bytes * n as u64;
    };
    for (point, x) in cache.iter() {
        // Every hook's activations are [batch, ...]: the file holds n rows of them.
        push(
            point.to_string(),
            x.dtype(),
            [&[n][..], &x.dims()[1..]].concat(),
        );
    }
    push("tokens".into(), DType::U32, vec![n, pos]);
    push("lengths".into(), DType::U32, vec![n]);
    let mut header = serde_json::Map::new();
    for e in &entries {
        let dtype = match e.dtype {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::U32 => "U32",
            d => return Err(Error::Unsupported(format!("caching {d:?} activations"))),
        };
        header.insert(
            e.name.clone(),
            serde_json::json!({
                "dtype": dtype,
                "shape": e.shape,
                "data_offsets": [e.start, e.start + e.row_bytes * e.shape[0] as u64],
            }),
        );
    }
    let mut header = serde_json::to_vec(&header).map_err(|e| Error::Invalid(e.to_string()))?;
    // The data starts 8-byte aligned, as the safetensors writers leave it.
    header.resize(header.len().next_multiple_of(8), b' ');
    let io = |e| Error::Invalid(format!("writing the cache file: {e}"));
    file.write_all(&(header.len() as u64).to_le_bytes())
        .map_err(io)?;
    file.write_all(&header).map_err(io)?;
    let data_start = 8 + header.len() as u64;
    file.flush().map_err(io)?;
    file.get_ref().set_len(data_start + end).map_err(io)?;
    Ok((entries, data_start))
}

/// `x`'s values as little-endian bytes.
fn le_bytes(x: &Tensor) -> Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(x.elem_count() * x.dtype().size_in_bytes());
    crate::store::capture::append_le_bytes(&mut buf, &x.to_device(&candle_core::Device::Cpu)?)?;
    Ok(buf)
}
