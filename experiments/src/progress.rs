//! Long sweeps that survive interruption and spread over machines: finished batches are
//! appended to a progress log as they finish (a resumed run skips them and ends with the same
//! table), and `--shard i/n` runs a deterministic slice of the batches. Training shows its
//! progress here too.

use crate::args::{RunArgs, SweepArgs};
use crate::run::RunDir;
use hooklens::analysis::sweep::Sweep;
use hooklens::atomic::atomic_write;
use hooklens::error::{Error, Result};
use hooklens::intervention::Fired;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Slice `index` of `count` (0-based, as Slurm's `--array=0-N` and Kubernetes' indexed Jobs
/// number their tasks). Written `index/count`, also in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// All of the work in one piece.
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    /// Which of the batches with these `costs` are this shard's: a contiguous run whose share
    /// of the total cost is about 1/count (a batch belongs to the shard its cost midpoint
    /// falls in), the same on every machine.
    pub fn select(&self, costs: &[f64]) -> Vec<bool> {
        let total: f64 = costs.iter().sum();
        let mut before = 0.0;
        costs
            .iter()
            .map(|&c| {
                let mid = (before + c / 2.0) / total.max(f64::MIN_POSITIVE);
                before += c;
                ((mid * self.count as f64) as usize).min(self.count - 1) == self.index
            })
            .collect()
    }
}

impl FromStr for Shard {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| Error::Invalid(format!("--shard {s}: {why}"));
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| bad("write INDEX/COUNT, e.g. 0/3 for the first of three shards"))?;
        let (index, count) = match (i.trim().parse::<usize>(), n.trim().parse::<usize>()) {
            (Ok(i), Ok(n)) => (i, n),
            _ => return Err(bad("INDEX and COUNT must be whole numbers, e.g. 0/3")),
        };
        if count == 0 {
            return Err(bad("COUNT must be at least 1"));
        }
        if index >= count {
            return Err(bad(&format!(
                "INDEX counts from 0 and must be less than COUNT: 0/{count} .. {}/{count}",
                count - 1
            )));
        }
        Ok(Shard { index, count })
    }
}

impl Serialize for Shard {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Shard {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// One finished batch as the log stores it: values as f32 bit patterns, so a resumed run
/// reads back exactly what was computed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub sweep: usize,
    pub batch: usize,
    /// (job index, f32 bits)
    pub values: Vec<(usize, u32)>,
    pub fired: Vec<Fired>,
}

/// An append-only log of finished batches, one JSON line each, flushed as each is written.
pub struct ProgressLog {
    path: PathBuf,
    file: std::fs::File,
}

impl ProgressLog {
    /// Opens the log at `path` with the entries already there, each with its line number. A
    /// last line cut short by a kill is dropped (the file is rewritten without it, and a note
    /// says so), so appending continues cleanly; any other line that is not an entry is an
    /// error naming the file and the line.
    pub fn open(path: &Path) -> Result<(Self, Vec<(usize, Entry)>)> {
        let mut entries = vec![];
        if path.exists() {
            let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
            let lines: Vec<&[u8]> = bytes.split_inclusive(|&b| b == b'\n').collect();
            let mut kept = 0;
            for (i, line) in lines.iter().enumerate() {
                let last = i + 1 == lines.len();
                let parsed = std::str::from_utf8(line)
                    .map_err(|_| "it is not UTF-8 text".to_string())
                    .and_then(|l| match l.strip_suffix('\n') {
                        Some(body) => {
                            serde_json::from_str::<Entry>(body).map_err(|e| e.to_string())
                        }
                        None => Err("it is cut short (no end of line)".into()),
                    });
                match parsed {
                    Ok(e) => {
                        entries.push((i + 1, e));
                        kept += line.len();
                    }
                    // A kill while a line was written leaves it short: only ever the last.
                    Err(_) if last => {
                        eprintln!(
                            "note: {}: dropped its last line {}, cut short when the run stopped",
                            path.display(),
                            i + 1
                        );
                    }
                    Err(why) => {
                        return Err(Error::Invalid(format!(
                            "{} line {} is not a progress entry ({why}): the log is damaged; \
                             delete the run folder to start again",
                            path.display(),
                            i + 1
                        )))
                    }
                }
            }
            if kept != bytes.len() {
                atomic_write(path, &bytes[..kept])?;
            }
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok((
            Self {
                path: path.into(),
                file,
            },
            entries,
        ))
    }

    pub fn append(&mut self, entry: &Entry) -> Result<()> {
        let mut line = serde_json::to_string(entry)
            .map_err(|e| Error::Invalid(format!("serialising progress: {e}")))?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.flush())
            .map_err(|e| Error::io(&self.path, e))
    }
}

/// The values of every job of every sweep (`None` where another shard computes it, or part of
/// it) and every intervention with its fire count.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub values: Vec<Vec<Option<f32>>>,
    pub fired: Vec<Fired>,
}

/// What the finished batches gave: each job's value on each chunk of prompts, by sweep.
struct Parts {
    values: Vec<Vec<Vec<Option<f32>>>>,
    fired: Vec<Fired>,
}

impl Parts {
    fn empty(sweeps: &[Sweep]) -> Self {
        Parts {
            values: (sweeps.iter())
                .map(|s| vec![vec![None; s.chunks().len()]; s.jobs().len()])
                .collect(),
            fired: vec![],
        }
    }

    fn add(&mut self, sweeps: &[Sweep], e: Entry) {
        let chunk = sweeps[e.sweep].batches()[e.batch].chunk;
        for (j, bits) in e.values {
            self.values[e.sweep][j][chunk] = Some(f32::from_bits(bits));
        }
        self.fired.extend(e.fired);
    }

    /// Each job's value over all the prompts (where every chunk of it is here).
    fn outcome(self, sweeps: &[Sweep]) -> Outcome {
        Outcome {
            values: (sweeps.iter().zip(&self.values))
                .map(|(s, jobs)| jobs.iter().map(|parts| s.combine(parts)).collect())
                .collect(),
            fired: self.fired,
        }
    }

    /// Adds the entries read from the log `path` (with their line numbers), each checked to
    /// name a batch of `sweeps` and jobs of that batch.
    fn add_logged(
        &mut self,
        sweeps: &[Sweep],
        path: &Path,
        entries: Vec<(usize, Entry)>,
    ) -> Result<()> {
        for (line, e) in entries {
            let batch = sweeps.get(e.sweep).and_then(|s| s.batches().get(e.batch));
            let fits = batch.is_some_and(|b| e.values.iter().all(|(j, _)| b.jobs.contains(j)));
            if !fits {
                return Err(Error::Invalid(format!(
                    "{} line {line} names batch {} of sweep {} or jobs that this sweep does not \
                     have: the log is damaged or belongs to other arguments; delete the run \
                     folder to start again",
                    path.display(),
                    e.batch,
                    e.sweep
                )));
            }
            self.add(sweeps, e);
        }
        Ok(())
    }
}

/// Which batches of `sweeps` are `shard`'s: whole jobs (a batch's jobs over every chunk of
/// prompts go to one shard, so a shard's table holds complete values), about 1/count of the
/// rough cost (jobs × prompts × recomputed positions × layers left) each.
fn shard_batches(sweeps: &[Sweep], shard: Shard) -> Vec<bool> {
    // The batches repeat chunk by chunk: group batch i with i % (batches per chunk).
    let groups: Vec<Vec<f64>> = sweeps
        .iter()
        .map(|s| {
            let (n, p) = s.shape();
            let per_chunk = s.batches().len() / s.chunks().len().max(1);
            let mut costs = vec![0.0; per_chunk];
            for (i, b) in s.batches().iter().enumerate() {
                let rows = s.chunks()[b.chunk].len();
                costs[i % per_chunk] +=
                    (b.jobs.len() * rows * (p - b.offset) * (n - b.layer)) as f64;
            }
            costs
        })
        .collect();
    let mine = shard.select(&groups.concat());
    let mut out = vec![];
    let mut first = 0;
    for (s, costs) in sweeps.iter().zip(&groups) {
        out.extend((0..s.batches().len()).map(|i| mine[first + i % costs.len()]));
        first += costs.len();
    }
    out
}

/// Runs the batches of `sweeps` in `shard` that `log` does not hold yet, appending each as it
/// finishes, with a progress bar (batches/s and ETA, on a terminal). Returns everything the
/// shard computed, earlier runs' batches included.
pub fn compute_logged(sweeps: &[Sweep], shard: Shard, log: &Path) -> Result<Outcome> {
    let (mut log, done) = ProgressLog::open(log)?;
    let mine = shard_batches(sweeps, shard);
    let plan: Vec<(usize, usize)> = sweeps
        .iter()
        .enumerate()
        .flat_map(|(s, sw)| (0..sw.batches().len()).map(move |b| (s, b)))
        .collect();
    let mut out = Parts::empty(sweeps);
    let finished: std::collections::HashSet<_> =
        done.iter().map(|(_, e)| (e.sweep, e.batch)).collect();
    out.add_logged(sweeps, &log.path, done)?;
    let todo: Vec<(usize, usize)> = plan
        .iter()
        .zip(&mine)
        .filter(|(sb, &m)| m && !finished.contains(sb))
        .map(|(sb, _)| *sb)
        .collect();
    let jobs: usize = todo
        .iter()
        .map(|&(s, b)| sweeps[s].batches()[b].jobs.len())
        .sum();
    let bar = indicatif::ProgressBar::new(jobs as u64).with_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} interventions  {per_sec}  ETA {eta}",
        )
        .map_err(|e| Error::Invalid(e.to_string()))?,
    );
    for (s, b) in todo {
        let r = sweeps[s].compute_batch(b)?;
        let entry = Entry {
            sweep: s,
            batch: b,
            values: r.values.iter().map(|&(j, v)| (j, v.to_bits())).collect(),
            fired: r.fired,
        };
        log.append(&entry)?;
        bar.inc(entry.values.len() as u64);
        out.add(sweeps, entry);
    }
    bar.finish_and_clear();
    Ok(out.outcome(sweeps))
}

/// The outcome of a sharded sweep, read from the progress logs of every shard (`logs`), each
/// of which must be complete.
pub fn merge_logs(sweeps: &[Sweep], logs: &[PathBuf]) -> Result<Outcome> {
    let mut out = Parts::empty(sweeps);
    for path in logs {
        if !path.is_file() {
            return Err(Error::Invalid(format!(
                "{} is missing: run that shard before merging",
                path.display()
            )));
        }
        let (_, entries) = ProgressLog::open(path)?;
        out.add_logged(sweeps, path, entries)?;
    }
    let out = out.outcome(sweeps);
    let missing = out.values.iter().flatten().filter(|v| v.is_none()).count();
    if missing > 0 {
        return Err(Error::Invalid(format!(
            "{missing} interventions have no result in the shards' progress logs: a shard is unfinished; resume it with --resume"
        )));
    }
    Ok(out)
}

/// Runs `sweeps` for a sweep binary, or merges its shards, and returns where to write: the
/// run folder (a shard's own `shard=i` folder), and the values. The arguments are saved in
/// `args.json`; `--resume` continues from the progress log only with the same arguments (the
/// error names the ones that differ), and `--merge` checks every shard ran with them.
pub fn sweep_in_folder(
    run: &RunArgs,
    opts: &SweepArgs,
    experiment: &str,
    args: &impl serde::Serialize,
    sweeps: &[Sweep],
) -> Result<(RunDir, Outcome)> {
    let args = comparable_args(args)?;
    let base = run.outputs.join(experiment);
    if opts.shards.merge {
        let wanted = base.join(run.run.as_deref().unwrap_or_default());
        if run.run.is_none() || !wanted.is_dir() {
            return Err(Error::Invalid(format!(
                "--merge: there is no run {} to merge; run its shards with --run NAME \
                 --shard INDEX/COUNT first",
                wanted.display()
            )));
        }
        let root = RunDir::create(&run.outputs, experiment, run.run.as_deref(), true)?;
        if root.file("manifest.json").exists() {
            return Err(Error::Invalid(format!(
                "{} is merged already; delete its manifest.json to merge again",
                root.path.display()
            )));
        }
        let mut count = None;
        for entry in std::fs::read_dir(&root.path).map_err(|e| Error::io(&root.path, e))? {
            let path = entry.map_err(|e| Error::io(&root.path, e))?.path();
            let is_shard = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("shard="));
            if !is_shard {
                continue;
            }
            let saved = read_args(&path.join("args.json"))?;
            check_same_args(&saved, &args, &path)?;
            let shard: Shard = serde_json::from_value(saved["sweep"]["shard"].clone())
                .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
            if *count.get_or_insert(shard.count) != shard.count {
                return Err(Error::Invalid(format!(
                    "{}: the shards of this run disagree on their count",
                    root.path.display()
                )));
            }
        }
        let Some(count) = count else {
            return Err(Error::Invalid(format!(
                "--merge: {} has no shard=INDEX folders; run the shards with --shard INDEX/COUNT first",
                root.path.display()
            )));
        };
        let logs: Vec<PathBuf> = (0..count)
            .map(|i| root.path.join(format!("shard={i}")).join("progress.jsonl"))
            .collect();
        return Ok((root, merge_logs(sweeps, &logs)?));
    }
    let (dir, shard) = match opts.shards.shard {
        Some(shard) => {
            let name = run.run.as_deref().unwrap_or_default();
            let mut dir = RunDir::create(
                &base,
                name,
                Some(&format!("shard={}", shard.index)),
                run.resume,
            )?;
            dir.experiment = experiment.into();
            (dir, shard)
        }
        None => (run.dir(experiment)?, Shard::WHOLE),
    };
    save_or_check_args(&dir, run.resume, &args)?;
    let outcome = compute_logged(sweeps, shard, &dir.file("progress.jsonl"))?;
    Ok((dir, outcome))
}

/// Saves a new run's arguments as `args.json`, or, resuming, checks that they are the ones it
/// was started with (the error names those that differ).
pub fn save_or_check_args(dir: &RunDir, resume: bool, args: &impl serde::Serialize) -> Result<()> {
    let args = comparable_args(args)?;
    let path = dir.file("args.json");
    match resume {
        true => check_same_args(&read_args(&path)?, &args, &dir.path),
        false => {
            let text =
                serde_json::to_string_pretty(&args).map_err(|e| Error::Invalid(e.to_string()))?;
            atomic_write(&path, text.as_bytes())
        }
    }
}

/// The arguments as JSON without those that may differ between a run and its resumption or
/// its shards: where outputs go, --resume, --merge (the shard is kept: each has its own).
pub fn comparable_args(args: &impl serde::Serialize) -> Result<serde_json::Value> {
    let mut v = serde_json::to_value(args).map_err(|e| Error::Invalid(e.to_string()))?;
    if let Some(o) = v.as_object_mut() {
        o.remove("out");
        if let Some(s) = o.get_mut("sweep").and_then(|s| s.as_object_mut()) {
            s.remove("merge");
        }
    }
    Ok(v)
}

pub fn read_args(path: &std::path::Path) -> Result<serde_json::Value> {
    if !path.is_file() {
        return Err(Error::Invalid(format!(
            "{} is missing: this folder is not a run started by this binary",
            path.display()
        )));
    }
    read_json(path)
}

/// A JSON file a run wrote (args.json, store.json, plan.json), read back: an error names the
/// file and the line where it is damaged.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = hooklens::text::read_text(path)?;
    serde_json::from_str(&text).map_err(|e| {
        Error::Invalid(format!(
            "{} line {} is not the JSON this binary wrote ({e}): the file is damaged; delete \
             the run folder to start again",
            path.display(),
            e.line()
        ))
    })
}

/// Errors naming each argument whose value differs between `saved` (the run's) and `now`;
/// the shard is compared only when resuming (merging reads every shard).
pub fn check_same_args(
    saved: &serde_json::Value,
    now: &serde_json::Value,
    dir: &std::path::Path,
) -> Result<()> {
    fn flat(v: &serde_json::Value, prefix: &str, out: &mut Vec<(String, String)>) {
        match v.as_object() {
            Some(o) => o.iter().for_each(|(k, v)| flat(v, k, out)),
            None => out.push((prefix.replace('_', "-"), v.to_string())),
        }
    }
    let (mut a, mut b) = (vec![], vec![]);
    flat(saved, "", &mut a);
    flat(now, "", &mut b);
    let merging = now["sweep"]["shard"].is_null() && !saved["sweep"]["shard"].is_null();
    let diffs: Vec<String> = a
        .iter()
        .filter(|(k, _)| !(merging && k == "shard"))
        .filter_map(|(k, v)| {
            let now = b
                .iter()
                .find(|(k2, _)| k2 == k)
                .map_or("unset", |(_, v)| v.as_str());
            (now != v).then(|| format!("--{k} was {v}, now {now}"))
        })
        .collect();
    match diffs.is_empty() {
        true => Ok(()),
        false => Err(Error::Invalid(format!(
            "{} was run with other arguments: {}; use the same arguments, or start a new run with --run NAME",
            dir.display(),
            diffs.join("; ")
        ))),
    }
}

/// Trains the embedded model's architecture `cfg` by `tc` with a progress bar (smoothed loss),
/// printing the best induction and previous-token heads on fixed probes every `eval_every`
/// steps (0: never) and at the last.
pub fn train_with_progress(
    cfg: &hooklens::ModelConfig,
    tc: &hooklens::train::TrainConfig,
    eval_every: usize,
) -> anyhow::Result<hooklens::Weights> {
    use hooklens::train::{best_heads, probe_batches, train_induction_model};
    use indicatif::{ProgressBar, ProgressStyle};
    let probes = probe_batches()?;
    let bar = ProgressBar::new(tc.steps as u64);
    bar.set_style(ProgressStyle::with_template(
        "{bar:40} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
    )?);
    let mut avg = None;
    let w = train_induction_model(cfg, tc, |step, loss, model| {
        let avg_loss: f32 = avg.map_or(loss, |m: f32| 0.98 * m + 0.02 * loss);
        avg = Some(avg_loss);
        bar.set_message(format!("loss {avg_loss:.3}"));
        bar.inc(1);
        if eval_every > 0 && (step % eval_every == 0 || step + 1 == tc.steps) {
            let mut line = format!("step {step:5} loss {avg_loss:.4}  best heads:");
            for (half, kind, (l, h, v)) in best_heads(model, &probes)? {
                line += &format!("  {} L{l}H{h} {v:.3} (half {half})", kind.name());
            }
            bar.suspend(|| eprintln!("{line}"));
        }
        Ok(())
    })?;
    bar.finish();
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse_and_cover_the_work_once() {
        assert_eq!(
            "1/3".parse::<Shard>().unwrap(),
            Shard { index: 1, count: 3 }
        );
        for (bad, why) in [
            ("3/2", "less than COUNT"),
            ("1", "INDEX/COUNT"),
            ("a/2", "whole numbers"),
            ("0/0", "at least 1"),
        ] {
            let e = bad.parse::<Shard>().unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let costs = [5.0, 1.0, 1.0, 3.0, 2.0, 2.0, 8.0];
        let picks: Vec<Vec<bool>> = (0..3)
            .map(|i| Shard { index: i, count: 3 }.select(&costs))
            .collect();
        for b in 0..costs.len() {
            assert_eq!(picks.iter().filter(|p| p[b]).count(), 1, "batch {b}");
        }
        assert!(Shard::WHOLE.select(&costs).iter().all(|&x| x));
    }

    #[test]
    fn a_torn_last_line_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("progress.jsonl");
        let e = Entry {
            sweep: 0,
            batch: 1,
            values: vec![(3, 1.5f32.to_bits())],
            fired: vec![],
        };
        let line = serde_json::to_string(&e).unwrap();
        std::fs::write(&path, format!("{line}\n{}", &line[..10])).unwrap();
        let (mut log, entries) = ProgressLog::open(&path).unwrap();
        assert_eq!(entries.len(), 1);
        log.append(&e).unwrap();
        let (_, entries) = ProgressLog::open(&path).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(f32::from_bits(entries[1].1.values[0].1), 1.5);
    }

    #[test]
    fn a_damaged_json_file_is_named_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.json");
        std::fs::write(&path, "{\n  \"a\": 1,\n  garbage\n}").unwrap();
        let err = read_json::<serde_json::Value>(&path)
            .unwrap_err()
            .to_string();
        assert!(err.contains("store.json line 3"), "{err}");
    }

    #[test]
    fn a_damaged_line_before_the_last_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("progress.jsonl");
        let e = Entry {
            sweep: 0,
            batch: 1,
            values: vec![(3, 1.5f32.to_bits())],
            fired: vec![],
        };
        let line = serde_json::to_string(&e).unwrap();
        for bad in [&b"garbage"[..], &[0xff, 0xfe, b'{'], &line.as_bytes()[..9]] {
            let mut text = format!("{line}\n").into_bytes();
            text.extend(bad);
            text.extend(format!("\n{line}\n").as_bytes());
            std::fs::write(&path, &text).unwrap();
            let err = ProgressLog::open(&path).err().unwrap().to_string();
            assert!(err.contains("line 2 is not a progress entry"), "{err}");
            assert_eq!(std::fs::read(&path).unwrap(), text, "left as it was");
        }
    }
}
