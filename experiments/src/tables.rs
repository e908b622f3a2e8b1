//! Tidy tables from the library's typed results: one [`Table`] per result type, its columns
//! documented once (the run manifest records the docs beside the schema read from the table).

use candle_core::{DType, Tensor};
use hooklens::analysis::ablation::{AblationRow, Unit};
use hooklens::analysis::circuits::{Composition, HeadCircuitRow};
use hooklens::analysis::detectors::HeadKind;
use hooklens::analysis::dla::Dla;
use hooklens::analysis::lens::LensCell;
use hooklens::analysis::patching::PatchRow;
use hooklens::error::{Error, Result};
use hooklens::Tokenizer;
use polars::prelude::*;
use std::collections::HashMap;

/// A typed result written as one parquet table.
pub trait Table {
    /// Each column's name and meaning, in the table's order.
    const COLUMNS: &'static [(&'static str, &'static str)];
    /// What the table is, for error messages.
    const WHAT: &'static str;
    /// The columns as polars builds them (use [`Table::frame`]).
    fn columns(&self) -> Result<Vec<Column>>;

    /// The table as a DataFrame.
    fn frame(&self) -> Result<DataFrame> {
        DataFrame::new_infer_height(self.columns()?)
            .map_err(|e| Error::Invalid(format!("building the {} table: {e}", Self::WHAT)))
    }
}

fn col<T>(name: &str, values: Vec<T>) -> Column
where
    Series: NamedFrom<Vec<T>, [T]>,
{
    Series::new(name.into(), values).into()
}

/// Layer and head as the tables and plots write a head: `L1H2`.
pub fn head_label(layer: usize, head: usize) -> String {
    format!("L{layer}H{head}")
}

/// The patching table: one row per (grid cell, method).
impl Table for [PatchRow] {
    const WHAT: &'static str = "patching";
    const COLUMNS: &'static [(&'static str, &'static str)] = &[
        ("grid", "resid_pre | attn_out | mlp_out | attn_head_out_all_pos | attn_head_out_by_pos | attn_head_pattern_all_pos (TransformerLens's get_act_patch_<grid>)"),
        ("layer", "the patched layer"),
        ("position", "the patched token position (null when every position is patched)"),
        ("head", "the patched head (per-head grids only)"),
        ("value", "the metric normalised: (raw - corrupted) / (clean - corrupted), 0 = the corrupted run, 1 = the clean run"),
        ("raw", "the metric (mean over the pairs) of the corrupted run with this cell patched from the clean run; for attribution, corrupted + the linear estimate of the change"),
        ("method", "activation (a patched forward pass) | attribution ((clean - corrupted) · gradient at the corrupted run)"),
    ];
    fn columns(&self) -> Result<Vec<Column>> {
        let opt = |v: Option<usize>| v.map(|x| x as u32);
        Ok(vec![
            col("grid", self.iter().map(|r| r.cell.grid.name()).collect()),
            col("layer", self.iter().map(|r| r.cell.layer as u32).collect()),
            col("position", self.iter().map(|r| opt(r.cell.pos)).collect()),
            col("head", self.iter().map(|r| opt(r.cell.head)).collect()),
            col("value", self.iter().map(|r| r.value).collect()),
            col("raw", self.iter().map(|r| r.raw).collect()),
            col("method", self.iter().map(|r| r.method).collect()),
        ])
    }
}

/// The direct logit attribution table: one row per component.
impl Table for Dla {
    const WHAT: &'static str = "DLA";
    const COLUMNS: &'static [(&'static str, &'static str)] = &[
        ("component", "embed, pos_embed, L{layer}H{head}, attn {layer} (whole layers, for models with post-sublayer norms such as Gemma 2), mlp {layer}, L{layer}N{neuron}, bias (summed b_O and b_out), unembed bias (final-norm bias and b_U)"),
        ("kind", "embed | pos_embed | head | attn | mlp | neuron | bias | unembed_bias"),
        ("layer", "the component's layer (null for embeddings and biases)"),
        ("head", "the head (heads only)"),
        ("neuron", "the MLP neuron (neurons only)"),
        ("contribution", "logit difference answer - wrong it adds, through the final norm's cached scale; all rows sum to the model's logit difference (before the final soft-cap, for Gemma 2)"),
    ];
    fn columns(&self) -> Result<Vec<Column>> {
        let c = &self.contributions;
        Ok(vec![
            col("component", c.iter().map(|x| x.component.clone()).collect()),
            col("kind", c.iter().map(|x| x.kind).collect()),
            col("layer", c.iter().map(|x| x.layer).collect()),
            col("head", c.iter().map(|x| x.head).collect()),
            col("neuron", c.iter().map(|x| x.neuron).collect()),
            col("contribution", c.iter().map(|x| x.value).collect()),
        ])
    }
}

/// The logit-lens table: one row per (prompt, entry, position, top-k rank). `tokens` are the
/// prompts' ids (to show the token at each position), `target` the `--target` id.
pub struct LensTable<'a> {
    pub cells: &'a [LensCell],
    pub tokens: &'a [Vec<u32>],
    pub tok: &'a Tokenizer,
    pub target: Option<u32>,
}

impl Table for LensTable<'_> {
    const WHAT: &'static str = "logit-lens";
    const COLUMNS: &'static [(&'static str, &'static str)] = &[
        ("prompt", "index of the prompt in the batch, from 0"),
        ("layer", "stack entry: {l}_pre = residual stream entering layer l, {l}_mid = between its attention and MLP, final_post = the model's output stream"),
        ("layer_index", "the entry's index in the stack, from 0"),
        ("position", "position in the prompt, from 0"),
        ("token", "the prompt's token at that position"),
        ("rank", "0 = the lens's most likely next token, 1 = the second, ..."),
        ("token_id", "id of the ranked token"),
        ("token_str", "the ranked token as text"),
        ("log_prob", "its log-probability under the lens (nats)"),
        ("target_id", "the --target token's id (null without --target)"),
        ("target_rank", "the target's rank: how many tokens the lens rates strictly higher (0 = top)"),
        ("target_log_prob", "the target's log-probability under the lens"),
        ("entropy", "entropy of the lens distribution (nats)"),
    ];
    fn columns(&self) -> Result<Vec<Column>> {
        let (tok, n) = (self.tok, self.cells.iter().map(|c| c.top.len()).sum());
        let mut prompt = Vec::with_capacity(n);
        let (mut layer, mut layer_index, mut position, mut token) =
            (vec![], vec![], vec![], vec![]);
        let (mut rank, mut token_id, mut token_str, mut log_prob) =
            (vec![], vec![], vec![], vec![]);
        let (mut target_id, mut target_rank, mut target_lp, mut entropy) =
            (vec![], vec![], vec![], vec![]);
        for c in self.cells {
            let here = self
                .tokens
                .get(c.batch)
                .and_then(|t| t.get(c.pos))
                .map(|&id| tok.decode(&[id]))
                .transpose()?
                .unwrap_or_default();
            for (r, &(id, lp)) in c.top.iter().enumerate() {
                prompt.push(c.batch as u32);
                layer.push(c.label.clone());
                layer_index.push(c.entry as u32);
                position.push(c.pos as u32);
                token.push(here.clone());
                rank.push(r as u32);
                token_id.push(id);
                token_str.push(tok.decode(&[id])?);
                log_prob.push(lp);
                target_id.push(self.target);
                target_rank.push(c.target.map(|t| t.0));
                target_lp.push(c.target.map(|t| t.1));
                entropy.push(c.entropy);
            }
        }
        Ok(vec![
            col("prompt", prompt),
            col("layer", layer),
            col("layer_index", layer_index),
            col("position", position),
            col("token", token),
            col("rank", rank),
            col("token_id", token_id),
            col("token_str", token_str),
            col("log_prob", log_prob),
            col("target_id", target_id),
            col("target_rank", target_rank),
            col("target_log_prob", target_lp),
            col("entropy", entropy),
        ])
    }
}

/// Head detector scores [n_layers, n_heads] per kind: one row per (kind, layer, head).
impl Table for HashMap<HeadKind, Tensor> {
    const WHAT: &'static str = "scores";
    const COLUMNS: &'static [(&'static str, &'static str)] = &[
        ("kind", "previous_token | duplicate_token | induction"),
        ("layer", "layer of the head, from 0"),
        ("head", "head within the layer, from 0"),
        ("label", "the head as L{layer}H{head}"),
        (
            "score",
            "mean attention on the kind's stripe over the second copy, 0..1",
        ),
    ];
    fn columns(&self) -> Result<Vec<Column>> {
        let (mut kind, mut layer, mut head, mut label, mut score) =
            (vec![], vec![], vec![], vec![], vec![]);
        for k in HeadKind::ALL {
            let Some(t) = self.get(&k) else { continue };
            for (l, row) in t.to_vec2::<f32>()?.into_iter().enumerate() {
                for (h, s) in row.into_iter().enumerate() {
                    kind.push(k.name());
                    layer.push(l as u32);
                    head.push(h as u32);
                    label.push(head_label(l, h));
                    score.push(s);
                }
            }
        }
        Ok(vec![
            col("kind", kind),
            col("layer", layer),
            col("head", head),
            col("label", label),
            col("score", score),
        ])
    }
}

/// The ablation table: one row per (unit, ablation, metric).
impl Table for [AblationRow] {
    const WHAT: &'static str = "ablation";
    const COLUMNS: &'static [(&'static str, &'static str)] = &[
        ("unit", "L{layer}H{head} (a head's hook_z), MLP{layer} (hook_mlp_out) or L{layer}N{neuron} (mlp.hook_post)"),
        ("unit_kind", "head | mlp | neuron"),
        ("layer", "the unit's layer"),
        ("head", "the head (heads only)"),
        ("neuron", "the MLP neuron (neurons only)"),
        ("ablation", "zero | mean (position-wise mean over the reference prompts) | resample (another prompt's activation)"),
        ("metric", "loss (mean next-token cross-entropy, nats) | logit_diff (answer - wrong at the last position) | prob (of the answer at the last position); means over the prompts"),
        ("baseline", "the metric without ablation"),
        ("ablated", "the metric with the unit ablated at every position"),
        ("delta", "ablated - baseline"),
    ];
    fn columns(&self) -> Result<Vec<Column>> {
        let (head, neuron): (Vec<Option<u32>>, Vec<Option<u32>>) = self
            .iter()
            .map(|r| match r.unit {
                Unit::Head { head, .. } => (Some(head as u32), None),
                Unit::Neuron { neuron, .. } => (None, Some(neuron as u32)),
                Unit::Mlp { .. } => (None, None),
            })
            .unzip();
        Ok(vec![
            col("unit", self.iter().map(|r| r.unit.to_string()).collect()),
            col("unit_kind", self.iter().map(|r| r.unit.kind()).collect()),
            col(
                "layer",
                self.iter().map(|r| r.unit.layer() as u32).collect(),
            ),
            col("head", head),
            col("neuron", neuron),
            col("ablation", self.iter().map(|r| r.ablation.name()).collect()),
            col("metric", self.iter().map(|r| r.metric.name()).collect()),
            col("baseline", self.iter().map(|r| r.baseline).collect()),
            col("ablated", self.iter().map(|r| r.ablated).collect()),
            col(
                "delta",
                self.iter().map(|r| r.ablated - r.baseline).collect(),
            ),
        ])
    }
}

/// Composition scores [L, H, L, H] per kind: one row per earlier-to-later pair of heads.
impl Table for [(Composition, Tensor)] {
    const WHAT: &'static str = "composition";
    const COLUMNS: &'static [(&'static str, &'static str)] = &[
        (
            "kind",
            "Q, K or V: which input of the reader the writer's OV output feeds",
        ),
        ("writer_layer", "layer of the earlier (writing) head"),
        ("writer_head", "the writing head"),
        ("reader_layer", "layer of the later (reading) head"),
        ("reader_head", "the reading head"),
        (
            "score",
            "||OV_writer R_reader||_F / (||OV_writer||_F ||R_reader||_F), R = QK, QK^T or OV",
        ),
    ];
    fn columns(&self) -> Result<Vec<Column>> {
        let (mut kind, mut wl, mut wh, mut rl, mut rh, mut score) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        for (c, s) in self {
            let (l_n, h_n, _, _) = s.dims4()?; // [writer layer, writer head, reader layer, reader head]
            let v: Vec<f32> = s.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
            for (i, &x) in v.iter().enumerate() {
                let (l1, h1, l2, h2) = (
                    i / (h_n * l_n * h_n),
                    i / (l_n * h_n) % h_n,
                    i / h_n % l_n,
                    i % h_n,
                );
                if l1 < l2 {
                    kind.push(c.name());
                    wl.push(l1 as u32);
                    wh.push(h1 as u32);
                    rl.push(l2 as u32);
                    rh.push(h2 as u32);
                    score.push(x);
                }
            }
        }
        Ok(vec![
            col("kind", kind),
            col("writer_layer", wl),
            col("writer_head", wh),
            col("reader_layer", rl),
            col("reader_head", rh),
            col("score", score),
        ])
    }
}

/// The per-head circuit table, with the OV circuits' top tokens decoded by `tok`.
pub struct HeadsTable<'a> {
    pub rows: &'a [HeadCircuitRow],
    pub tok: &'a Tokenizer,
}

impl Table for HeadsTable<'_> {
    const WHAT: &'static str = "circuits";
    const COLUMNS: &'static [(&'static str, &'static str)] = &[
        ("layer", "layer of the head"),
        ("head", "head within the layer"),
        ("circuit", "qk = W_Q W_K^T, ov = W_V W_O (d_model x d_model); full_qk = W_E QK W_E^T, full_ov = W_E OV W_U (vocabulary x vocabulary); pos_qk = W_pos QK W_pos^T (learned positions)"),
        ("rank", "index of the singular value, 0 = largest"),
        ("singular_value", "the singular value"),
        ("copying_score", "the head's copying score Re(sum of eigenvalues) / sum |eigenvalues| of its full OV circuit (same on every row of the head)"),
        ("top_tokens", "ov: the tokens the right singular vector's direction unembeds to most (V^T W_U); full_ov: the output tokens the right singular vector weighs most; null otherwise"),
    ];
    fn columns(&self) -> Result<Vec<Column>> {
        let r = self.rows;
        let decode = |ids: &Vec<u32>| -> Result<String> {
            let words = ids
                .iter()
                .map(|id| self.tok.decode(&[*id]))
                .collect::<Result<Vec<_>>>()?;
            Ok(words.join(" | "))
        };
        let tokens = r
            .iter()
            .map(|x| x.top_tokens.as_ref().map(decode).transpose())
            .collect::<Result<Vec<Option<String>>>>()?;
        Ok(vec![
            col("layer", r.iter().map(|x| x.layer as u32).collect()),
            col("head", r.iter().map(|x| x.head as u32).collect()),
            col("circuit", r.iter().map(|x| x.circuit).collect()),
            col("rank", r.iter().map(|x| x.rank as u32).collect()),
            col(
                "singular_value",
                r.iter().map(|x| x.singular_value).collect(),
            ),
            col("copying_score", r.iter().map(|x| x.copying_score).collect()),
            col("top_tokens", tokens),
        ])
    }
}

/// Attention patterns of some heads on one prompt: one row per (head, query, key <= query).
pub struct PatternsTable<'a> {
    pub heads: &'a [(usize, usize)],
    /// Each head's pattern, [query][key] flattened row-major.
    pub patterns: &'a [Vec<f32>],
    /// The prompt's tokens as text.
    pub tokens: &'a [String],
}

impl Table for PatternsTable<'_> {
    const WHAT: &'static str = "attention patterns";
    const COLUMNS: &'static [(&'static str, &'static str)] = &[
        ("layer", "the head's layer"),
        ("head", "the head"),
        ("query", "query position (the attending token)"),
        (
            "key",
            "key position (the attended-to token), at most the query",
        ),
        ("query_token", "the query token's text"),
        ("key_token", "the key token's text"),
        ("weight", "attention weight (each query's weights sum to 1)"),
    ];
    fn columns(&self) -> Result<Vec<Column>> {
        let (strs, n) = (self.tokens, self.tokens.len());
        let (mut l, mut h, mut q, mut k, mut qt, mut kt, mut w) =
            (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
        for (&(layer, head), p) in self.heads.iter().zip(self.patterns) {
            for qi in 0..n {
                for ki in 0..=qi {
                    l.push(layer as u32);
                    h.push(head as u32);
                    q.push(qi as u32);
                    k.push(ki as u32);
                    qt.push(strs[qi].clone());
                    kt.push(strs[ki].clone());
                    w.push(p[qi * n + ki]);
                }
            }
        }
        Ok(vec![
            col("layer", l),
            col("head", h),
            col("query", q),
            col("key", k),
            col("query_token", qt),
            col("key_token", kt),
            col("weight", w),
        ])
    }
}

/// Neighbours of tokens (`analogy: false`) or of analogies a − b + c (`analogy: true`) by
/// cosine: one row per (matrix, query, rank). `queries` are the tokens or analogies as given.
pub struct NeighboursTable<'a> {
    pub rows: &'a [hooklens::analysis::embeddings::Neighbour],
    pub queries: &'a [String],
    pub tok: &'a Tokenizer,
}

/// The nearest-tokens table.
pub struct Nearest<'a>(pub NeighboursTable<'a>);
/// The analogies table.
pub struct Analogies<'a>(pub NeighboursTable<'a>);

impl NeighboursTable<'_> {
    fn columns(&self, names: [&str; 6]) -> Result<Vec<Column>> {
        let r = self.rows;
        let text = |id: u32| -> Result<String> { Ok(self.tok.to_str_tokens(&[id])?.remove(0)) };
        Ok(vec![
            col(names[0], r.iter().map(|x| x.matrix).collect()),
            col(
                names[1],
                r.iter().map(|x| self.queries[x.query].clone()).collect(),
            ),
            col(names[2], r.iter().map(|x| x.rank as u32).collect()),
            col(
                names[3],
                r.iter().map(|x| text(x.id)).collect::<Result<Vec<_>>>()?,
            ),
            col(names[4], r.iter().map(|x| x.id).collect()),
            col(names[5], r.iter().map(|x| x.cosine).collect()),
        ])
    }
}

impl Table for Nearest<'_> {
    const WHAT: &'static str = "nearest tokens";
    const COLUMNS: &'static [(&'static str, &'static str)] = &[
        (
            "matrix",
            "W_E (embedding rows) or W_U (unembedding columns)",
        ),
        ("token", "the token looked up"),
        ("rank", "0 = most similar"),
        ("neighbour", "a nearby token's text"),
        ("neighbour_id", "its id"),
        ("cosine", "cosine similarity of the two vectors"),
    ];
    fn columns(&self) -> Result<Vec<Column>> {
        self.0.columns([
            "matrix",
            "token",
            "rank",
            "neighbour",
            "neighbour_id",
            "cosine",
        ])
    }
}

impl Table for Analogies<'_> {
    const WHAT: &'static str = "analogies";
    const COLUMNS: &'static [(&'static str, &'static str)] = &[
        ("matrix", "W_E or W_U"),
        ("analogy", "a - b + c, the tokens as given"),
        (
            "rank",
            "0 = nearest to a - b + c (a, b and c left out, as word2vec)",
        ),
        ("result", "the token's text"),
        ("result_id", "its id"),
        ("cosine", "cosine similarity with a - b + c (unit vectors)"),
    ];
    fn columns(&self) -> Result<Vec<Column>> {
        self.0
            .columns(["matrix", "analogy", "rank", "result", "result_id", "cosine"])
    }
}

/// The tokens `radius` either side of position `pos` in a text of `len` tokens.
pub fn context(pos: usize, radius: usize, len: usize) -> std::ops::Range<usize> {
    pos.saturating_sub(radius)..(pos + radius + 1).min(len)
}

/// Neurons' top-activating positions in a text, with `context` tokens either side shown.
pub struct ExamplesTable<'a> {
    pub examples: &'a [hooklens::analysis::neurons::NeuronExample],
    /// The text's tokens as text.
    pub tokens: &'a [String],
    pub context: usize,
}

impl Table for ExamplesTable<'_> {
    const WHAT: &'static str = "top activations";
    const COLUMNS: &'static [(&'static str, &'static str)] = &[
        ("layer", "the neuron's layer"),
        ("neuron", "the neuron (index into mlp.hook_post)"),
        ("rank", "0 = the strongest activation in the text"),
        ("activation", "mlp.hook_post at that position"),
        ("position", "token index in the text (BOS not counted)"),
        ("token", "the token there"),
        ("context", "the text around it, --context tokens each side"),
    ];
    fn columns(&self) -> Result<Vec<Column>> {
        let e = self.examples;
        let neuron = |u: &Unit| match *u {
            Unit::Neuron { neuron, .. } => neuron as u32,
            _ => 0,
        };
        let around = |p: usize| self.tokens[context(p, self.context, self.tokens.len())].concat();
        Ok(vec![
            col("layer", e.iter().map(|x| x.unit.layer() as u32).collect()),
            col("neuron", e.iter().map(|x| neuron(&x.unit)).collect()),
            col("rank", e.iter().map(|x| x.rank as u32).collect()),
            col("activation", e.iter().map(|x| x.activation).collect()),
            col("position", e.iter().map(|x| x.pos as u32).collect()),
            col(
                "token",
                e.iter().map(|x| self.tokens[x.pos].clone()).collect(),
            ),
            col("context", e.iter().map(|x| around(x.pos)).collect()),
        ])
    }
}

/// Next-token probabilities at several temperatures: one row per (temperature, token).
pub struct TemperatureTable<'a> {
    pub rows: &'a [hooklens::analysis::metrics::TemperatureRow],
    pub tok: &'a Tokenizer,
}

impl Table for TemperatureTable<'_> {
    const WHAT: &'static str = "temperature";
    const COLUMNS: &'static [(&'static str, &'static str)] = &[
        ("temperature", "the sampling temperature T"),
        (
            "rank",
            "the token's rank by logit (0 = most likely at every T)",
        ),
        ("token_id", "the token id"),
        ("token", "the token's text"),
        ("logit", "the model's logit for the token"),
        (
            "prob",
            "softmax(logits / T) for the token, over the whole vocabulary",
        ),
    ];
    fn columns(&self) -> Result<Vec<Column>> {
        let r = self.rows;
        let text = |id: u32| -> Result<String> { Ok(self.tok.to_str_tokens(&[id])?.remove(0)) };
        Ok(vec![
            col("temperature", r.iter().map(|x| x.temperature).collect()),
            col("rank", r.iter().map(|x| x.rank as u32).collect()),
            col("token_id", r.iter().map(|x| x.id).collect()),
            col(
                "token",
                r.iter().map(|x| text(x.id)).collect::<Result<Vec<_>>>()?,
            ),
            col("logit", r.iter().map(|x| x.logit).collect()),
            col("prob", r.iter().map(|x| x.prob).collect()),
        ])
    }
}

/// Unit dashboards ([`hooklens::analysis::dashboards`]) as four tables: units, top examples,
/// histograms and logit effects.
pub struct Dashboards<'a> {
    pub dash: &'a [hooklens::analysis::dashboards::UnitDashboard],
    pub effects: Option<&'a hooklens::analysis::dashboards::LogitEffects>,
    pub tok: &'a Tokenizer,
}

/// `units.parquet`: one row per unit.
pub struct DashUnits<'a>(pub &'a Dashboards<'a>);
/// `top_examples.parquet`: one row per token of each top example's window.
pub struct DashExamples<'a>(pub &'a Dashboards<'a>);
/// `histograms.parquet`: one row per histogram bin.
pub struct DashHistograms<'a>(pub &'a Dashboards<'a>);
/// `logit_effects.parquet`: one row per (unit, direction, rank).
pub struct DashLogits<'a>(pub &'a Dashboards<'a>);

impl Table for DashUnits<'_> {
    const WHAT: &'static str = "dashboard units";
    const COLUMNS: &'static [(&'static str, &'static str)] = &[
        (
            "unit",
            "the unit: its index on the hook's last axis (flattened: hook_z unit h·d_head + i)",
        ),
        ("max", "largest activation over the store"),
        ("min", "smallest activation"),
        ("mean", "mean activation"),
        (
            "frac_active",
            "fraction of tokens where it is above zero (density)",
        ),
    ];
    fn columns(&self) -> Result<Vec<Column>> {
        let d = self.0.dash;
        Ok(vec![
            col("unit", d.iter().map(|u| u.unit as u32).collect()),
            col("max", d.iter().map(|u| u.max).collect()),
            col("min", d.iter().map(|u| u.min).collect()),
            col("mean", d.iter().map(|u| u.mean).collect()),
            col("frac_active", d.iter().map(|u| u.frac_active).collect()),
        ])
    }
}

impl Table for DashExamples<'_> {
    const WHAT: &'static str = "top examples";
    const COLUMNS: &'static [(&'static str, &'static str)] = &[
        ("unit", "the unit"),
        ("rank", "0 = the unit's strongest token over the store; ties go to the earlier token"),
        ("activation", "the unit's activation on the example's token"),
        ("context", "the example's context in the store (tokens.parquet's `context`)"),
        ("position", "the example token's position in its context"),
        ("window_position", "the position of this row's token (the window runs from --before tokens before the example to --after after, within the context)"),
        ("is_example", "whether this row is the example's token itself"),
        ("token_id", "this row's token id"),
        ("token", "this row's token text"),
        ("value", "the unit's activation on this row's token"),
    ];
    fn columns(&self) -> Result<Vec<Column>> {
        let (mut unit, mut rank, mut act, mut ctx, mut pos) =
            (vec![], vec![], vec![], vec![], vec![]);
        let (mut wpos, mut is_ex, mut ids, mut text, mut val) =
            (vec![], vec![], vec![], vec![], vec![]);
        for u in self.0.dash {
            for (r, e) in u.examples.iter().enumerate() {
                for (o, &(id, v)) in e.window.iter().enumerate() {
                    unit.push(u.unit as u32);
                    rank.push(r as u32);
                    act.push(e.activation);
                    ctx.push(e.context as u32);
                    pos.push(e.position as u32);
                    wpos.push((e.window_start + o) as u32);
                    is_ex.push(e.window_start + o == e.position);
                    ids.push(id);
                    text.push(self.0.tok.decode(&[id])?);
                    val.push(v);
                }
            }
        }
        Ok(vec![
            col("unit", unit),
            col("rank", rank),
            col("activation", act),
            col("context", ctx),
            col("position", pos),
            col("window_position", wpos),
            col("is_example", is_ex),
            col("token_id", ids),
            col("token", text),
            col("value", val),
        ])
    }
}

impl Table for DashHistograms<'_> {
    const WHAT: &'static str = "histograms";
    const COLUMNS: &'static [(&'static str, &'static str)] = &[
        ("unit", "the unit"),
        (
            "bin",
            "the bin, from 0 (equal bins from the unit's min to its max)",
        ),
        ("lo", "the bin's lower edge"),
        ("hi", "the bin's upper edge (the last bin includes it)"),
        ("count", "tokens whose activation falls in the bin"),
    ];
    fn columns(&self) -> Result<Vec<Column>> {
        let (mut unit, mut bin, mut lo, mut hi, mut count) =
            (vec![], vec![], vec![], vec![], vec![]);
        for u in self.0.dash {
            let h = &u.histogram;
            let n = h.counts.len() as f32;
            for (b, &c) in h.counts.iter().enumerate() {
                unit.push(u.unit as u32);
                bin.push(b as u32);
                lo.push(h.lo + (h.hi - h.lo) * b as f32 / n);
                hi.push(h.lo + (h.hi - h.lo) * (b + 1) as f32 / n);
                count.push(c);
            }
        }
        Ok(vec![
            col("unit", unit),
            col("bin", bin),
            col("lo", lo),
            col("hi", hi),
            col("count", count),
        ])
    }
}

impl Table for DashLogits<'_> {
    const WHAT: &'static str = "logit effects";
    const COLUMNS: &'static [(&'static str, &'static str)] = &[
        ("unit", "the unit"),
        ("direction", "raises | lowers: the tokens whose logits the unit's output direction raises or lowers most"),
        ("rank", "0 = the largest effect"),
        ("token_id", "the token id"),
        ("token", "the token text"),
        ("effect", "the logit change per unit of activation: output direction · W_U (the final norm's scale left out)"),
    ];
    fn columns(&self) -> Result<Vec<Column>> {
        let (mut unit, mut dir, mut rank, mut ids, mut text, mut eff) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        for (u, (up, down)) in self.0.dash.iter().zip(self.0.effects.into_iter().flatten()) {
            for (name, rows) in [("raises", up), ("lowers", down)] {
                for (r, &(id, v)) in rows.iter().enumerate() {
                    unit.push(u.unit as u32);
                    dir.push(name);
                    rank.push(r as u32);
                    ids.push(id);
                    text.push(self.0.tok.decode(&[id])?);
                    eff.push(v);
                }
            }
        }
        Ok(vec![
            col("unit", unit),
            col("direction", dir),
            col("rank", rank),
            col("token_id", ids),
            col("token", text),
            col("effect", eff),
        ])
    }
}
