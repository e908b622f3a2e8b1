//! The plots, pages and printed summaries of the experiments whose outputs are more than a
//! table and one plot: what a researcher looks at first, drawn from the typed results the
//! tables hold.

use crate::html::{token_values_page, TokenValues};
use crate::plot::{
    bar_chart, grouped_bars, largest, line_plot, pattern_grid, scatter, short, token_labels,
    Heatmap,
};
use crate::plot::{colored_tokens, labelled_points};
use crate::tables::head_label;
use crate::tables::{Analogies, ExamplesTable, Nearest, NeighboursTable};
use crate::Experiment;
use anyhow::Result;
use hooklens::analysis::ablation::{Ablation, AblationRow, AblationSweep, Unit};
use hooklens::analysis::circuits::Composition;
use hooklens::analysis::detectors::{best_head, HeadKind, HeadPattern};
use hooklens::analysis::embeddings::Neighbour;
use hooklens::analysis::lens::LensCell;
use hooklens::analysis::neurons::{NeuronExample, TextScan};
use hooklens::analysis::patching::{Grid, PatchRow, Patching};
use hooklens::analysis::sweep::Metric;
use std::io::Write;

/// Per (metric, ablation kind): the layers x heads heatmap of the head deltas (when heads
/// were ablated) and the bar chart of the `top` units that change the metric most.
pub fn ablation_plots(
    exp: &mut Experiment,
    rows: &[AblationRow],
    metrics: &[Metric],
    kinds: &[Ablation],
    top: usize,
) -> Result<()> {
    let shape = exp.manifest.model.config.clone();
    for &metric in metrics {
        for &kind in kinds {
            let these: Vec<&AblationRow> = rows
                .iter()
                .filter(|r| r.metric == metric && r.ablation == kind)
                .collect();
            let what = format!("{} ablation, change in {}", kind.name(), metric.name());
            let name = format!("{}_{}.png", metric.name(), kind.name());
            let mut grid = vec![vec![0f32; shape.n_heads]; shape.n_layers];
            let mut any_head = false;
            for r in &these {
                if let Unit::Head { layer, head } = r.unit {
                    grid[layer][head] = r.ablated - r.baseline;
                    any_head = true;
                }
            }
            if any_head {
                let file = format!("heads_{name}");
                let doc = format!(
                    "layers x heads: {what} (ablated - baseline; red raises it, blue lowers it)"
                );
                exp.heads(&file, &doc, &format!("Heads: {what}"), &grid, true)?;
            }
            let deltas = these
                .iter()
                .map(|r| (r.unit.to_string(), r.ablated - r.baseline));
            let doc = format!("the units with the largest |change|: {what}");
            let path = exp.file(&format!("top_{name}"), &doc)?;
            let x_desc = format!("ablated - baseline {}", metric.name());
            bar_chart(
                &path,
                &format!("Top units: {what}"),
                &largest(deltas, top),
                &x_desc,
            )?;
        }
    }
    Ok(())
}

/// Prints each metric's baseline and the five (unit, ablation) pairs that change it most.
pub fn ablation_summary(plan: &AblationSweep, rows: &[AblationRow]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    for sweep in &plan.sweeps {
        let metric = sweep.metric();
        writeln!(out, "{}: baseline {:.4}", metric.name(), sweep.baseline())?;
        let these = rows.iter().filter(|r| r.metric == metric).map(|r| {
            let name = format!("{:<8} {:<8}", r.unit.to_string(), r.ablation.name());
            (name, r.ablated - r.baseline)
        });
        for (name, delta) in largest(these, 5) {
            writeln!(out, "  {name} {delta:+.4}")?;
        }
    }
    Ok(())
}

/// One heatmap per grid of the activation-patching values (positions labelled `positions`)
/// and, with attribution rows, the attribution-vs-patching scatter.
pub fn patching_plots(
    exp: &mut Experiment,
    p: &Patching,
    rows: &[PatchRow],
    grids: &[Grid],
    positions: &[String],
) -> Result<()> {
    let cfg = &p.sweep.model().cfg;
    let layers: Vec<String> = (0..cfg.n_layers).map(|l| format!("L{l}")).collect();
    let heads: Vec<String> = (0..cfg.n_heads).map(|h| format!("H{h}")).collect();
    let layer_heads: Vec<String> = (0..cfg.n_layers)
        .flat_map(|l| (0..cfg.n_heads).map(move |h| head_label(l, h)))
        .collect();
    let metric = p.metric.name();
    for &g in grids {
        let (row_labels, col_labels, x_desc, y_desc) = match g.axes() {
            [_, "pos"] => (&layers, positions, "position", "layer"),
            [_, "head"] => (&layers, &heads[..], "head", "layer"),
            _ => (&layer_heads, positions, "position", "layer and head"),
        };
        // [layer, pos], [layer, head] or [layer, head, pos] -> rows x columns.
        let values = p.grid(g, rows, "activation")?;
        let values = values
            .reshape((row_labels.len(), col_labels.len()))?
            .to_vec2()?;
        let title = format!(
            "Patching {} ({metric} restored: 0 corrupted, 1 clean)",
            g.name()
        );
        let heatmap = Heatmap {
            title: &title,
            values: &values,
            row_labels,
            col_labels,
            x_desc,
            y_desc,
            diverging: true,
            ..Default::default()
        };
        let doc = format!(
            "{}: normalised metric with each cell patched from the clean run",
            g.name()
        );
        exp.heatmap(&format!("{}.png", g.name()), &doc, &heatmap)?;
    }
    if rows.iter().any(|r| r.method == "attribution") {
        let get = |g: Grid, method: &'static str| {
            rows.iter()
                .filter(move |r| r.cell.grid == g && r.method == method)
        };
        let groups: Vec<(String, Vec<(f32, f32)>)> = grids
            .iter()
            .map(|&g| {
                let pairs = get(g, "attribution").zip(get(g, "activation"));
                let points = pairs.map(|(x, y)| (x.value, y.value)).collect();
                (g.name().to_string(), points)
            })
            .collect();
        let path = exp.file(
            "attribution_vs_patching.png",
            "each grid cell: the linear estimate (x) against the patched value (y); on the diagonal the linear approximation holds",
        )?;
        let title = format!("Attribution vs activation patching ({metric}, normalised)");
        let (x, y) = ("attribution patching estimate", "activation patching");
        scatter(&path, &title, &groups, x, y)?;
    }
    Ok(())
}

/// Prints the clean and corrupted metric and each grid's strongest cell.
pub fn patching_summary(
    p: &Patching,
    rows: &[PatchRow],
    grids: &[Grid],
    pairs: usize,
) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let (clean, corrupted) = (p.scale.clean, p.scale.corrupted);
    let metric = p.metric.name();
    writeln!(
        out,
        "{metric}: clean {clean:.4}, corrupted {corrupted:.4} ({pairs} pairs)"
    )?;
    for &g in grids {
        let best = rows
            .iter()
            .filter(|r| r.cell.grid == g && r.method == "activation")
            .max_by(|x, y| x.value.abs().total_cmp(&y.value.abs()));
        if let Some(PatchRow { cell: c, value, .. }) = best {
            let head = c.head.map_or(String::new(), |h| format!("H{h}"));
            let pos = c.pos.map_or(String::new(), |p| format!(" pos {p}"));
            let cell = format!("L{}{head}{pos}", c.layer);
            writeln!(out, "  {:<26} strongest {cell} = {value:+.3}", g.name())?;
        }
    }
    Ok(())
}

/// The attention views of `chosen` heads on one prompt: a PNG per chosen head, a grid of every
/// head in `patterns` (every head of the chosen heads' layers), the interactive page (opening on
/// the first chosen head) and the patterns table. `text` is the prompt as the titles quote it.
pub fn attention_views(
    exp: &mut Experiment,
    chosen: &[(usize, usize)],
    patterns: &[HeadPattern],
    tokens: &[String],
    labels: &[String],
    text: &str,
) -> Result<()> {
    let cfg = exp.manifest.model.config.clone();
    let name = exp.manifest.model.name.clone();
    let short: String = match text.chars().count() > 48 {
        true => text.chars().take(45).collect::<String>() + "...",
        false => text.to_string(),
    };
    let find = |x: (usize, usize)| patterns.iter().position(|p| p.0 == x).unwrap_or(0);
    for &(l, h) in chosen {
        let title = format!("{name} L{l}H{h} on {short:?}");
        let doc = format!("attention pattern of L{l}H{h}, query rows, key columns");
        let file = format!("pattern_L{l}H{h}.png");
        let pattern = &patterns[find((l, h))].1;
        exp.pattern(&file, &doc, &title, pattern, labels, Some((0.0, 1.0)))?;
    }
    let thumbs: Vec<(String, Vec<Vec<f32>>)> = patterns
        .iter()
        .map(|&((l, h), ref p)| (head_label(l, h), p.clone()))
        .collect();
    let mut layers: Vec<usize> = patterns.iter().map(|p| p.0 .0).collect();
    layers.dedup();
    let grid = exp.file(
        "heads_grid.png",
        "every head of the chosen layers as thumbnails (query rows, key columns; white 0, red 1)",
    )?;
    let title = format!("{name}: every head of layer(s) {layers:?} on {short:?}");
    pattern_grid(&grid, &title, &thumbs, cfg.n_heads.min(12))?;
    let mut order: Vec<usize> = (0..patterns.len()).collect();
    order.swap(0, find(chosen[0]));
    let heads: Vec<(usize, usize)> = order.iter().map(|&i| patterns[i].0).collect();
    let flat: Vec<Vec<f32>> = order.iter().map(|&i| patterns[i].1.concat()).collect();
    let title = format!("{name}: attention on {short:?}");
    let page =
        crate::html::attention_page(&title, tokens, (cfg.n_layers, cfg.n_heads), &heads, &flat)?;
    let doc = "interactive attention view, self-contained (open it in a browser)";
    exp.page("attention.html", doc, &page)?;
    let table = crate::tables::PatternsTable {
        heads: &heads,
        patterns: &flat,
        tokens,
    };
    exp.table("patterns.parquet", &table)
}

/// The token views of a scanned text: each neuron example in context (page and PNG), the
/// per-token loss (page and PNG), and with `pair` (answer, wrong) the logit difference page;
/// the examples table too; then the mean loss and each neuron's strongest example, printed.
pub fn neuron_views(
    exp: &mut Experiment,
    scan: &TextScan,
    examples: &[NeuronExample],
    strs: &[String],
    context: usize,
    pair: Option<(&str, &str)>,
) -> Result<()> {
    let ctx = |p: usize| crate::tables::context(p, context, strs.len());
    let (mut sections, mut pngs) = (vec![], vec![]);
    for e in examples {
        let (Unit::Neuron { layer, neuron }, range) = (e.unit, ctx(e.pos)) else {
            continue;
        };
        let series = scan.neuron(layer, neuron).unwrap_or_default();
        let (u, r, v, pos) = (e.unit, e.rank, e.activation, e.pos);
        let values = series[range.clone()].iter().map(|&x| Some(x)).collect();
        sections.push(TokenValues {
            heading: format!("{u} #{r}: {v:.3} at token {pos} {:?}", strs[pos]),
            note: None,
            tokens: strs[range.clone()].to_vec(),
            values,
            peak: Some(pos - range.start),
        });
        if r == 0 {
            pngs.push((
                format!("{u}: strongest at token {pos}"),
                strs[range.clone()].to_vec(),
                series[range].to_vec(),
            ));
        }
    }
    exp.table(
        "top_activations.parquet",
        &ExamplesTable {
            examples,
            tokens: strs,
            context,
        },
    )?;
    let name = exp.manifest.model.name.clone();
    if !sections.is_empty() {
        let page = token_values_page(
            &format!(
                "{name}: top activations of {} neurons",
                examples.iter().filter(|e| e.rank == 0).count()
            ),
            &sections,
        )?;
        exp.page(
            "neurons.html",
            "each neuron's top positions in context, tokens coloured by its activation",
            &page,
        )?;
        let path = exp.file(
            "neurons.png",
            "each neuron's strongest example, tokens coloured by its activation",
        )?;
        colored_tokens(
            &path,
            &format!("{name}: each neuron's strongest example"),
            &pngs,
        )?;
    }
    let loss = TokenValues {
        heading: "loss of predicting each token from the ones before it (nats)".into(),
        note: Some("the first token of the text has no prediction".into()),
        tokens: strs.to_vec(),
        values: scan.loss.clone(),
        peak: None,
    };
    exp.page(
        "token_loss.html",
        "the text coloured by each token's loss (hover for the value)",
        &token_values_page(&format!("{name}: per-token loss"), &[loss])?,
    )?;
    let shown = strs.len().min(300);
    let first: Vec<f32> = scan.loss[..shown]
        .iter()
        .map(|v| v.unwrap_or(0.0))
        .collect();
    let path = exp.file(
        "token_loss.png",
        "the text's first tokens coloured by their loss",
    )?;
    colored_tokens(
        &path,
        &format!("{name}: per-token loss (nats), darker = more surprising"),
        &[(
            format!("the first {shown} tokens"),
            strs[..shown].to_vec(),
            first,
        )],
    )?;
    if let Some((x, y)) = pair {
        let diff = TokenValues {
            heading: format!("red: {x:?} expected next more than {y:?}; blue: less"),
            note: None,
            tokens: strs.to_vec(),
            values: scan.logit_diff.clone(),
            peak: None,
        };
        let page = token_values_page(
            &format!("{name}: logit({x:?}) - logit({y:?}) after each token"),
            &[diff],
        )?;
        exp.page(
            "logit_diff.html",
            "the text coloured by logit(answer) - logit(wrong) at each position",
            &page,
        )?;
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{} tokens, mean loss {:.3}",
        strs.len(),
        scan.mean_loss()
    )?;
    if exp.manifest.model.config.attn_only {
        writeln!(
            out,
            "attention-only model: no MLP neurons, only the loss view"
        )?;
    }
    // One section per example, in order: each neuron's strongest.
    for (s, _) in sections.iter().zip(examples).filter(|(_, e)| e.rank == 0) {
        writeln!(out, "  {}", s.heading)?;
    }
    Ok(())
}

/// The logit lens's views: the first prompt's layers x positions of top tokens, and with a
/// `target` (id, as given) its log-prob across layers at each prompt's last token (printed
/// for the first prompt). `ids` are each prompt's real tokens.
pub fn lens_views(
    exp: &mut Experiment,
    cells: &[LensCell],
    tok: &hooklens::Tokenizer,
    ids: &[Vec<u32>],
    prompts: &[String],
    target: Option<(u32, &str)>,
) -> Result<()> {
    // Layers x positions of the first prompt: the top token in each cell.
    let labels: Vec<String> = cells
        .iter()
        .filter(|c| c.batch == 0 && c.pos == 0)
        .map(|c| c.label.clone())
        .collect();
    let (mut probs, mut text) = (
        vec![vec![0f32; ids[0].len()]; labels.len()],
        vec![vec![String::new(); ids[0].len()]; labels.len()],
    );
    for c in cells.iter().filter(|c| c.batch == 0) {
        probs[c.entry][c.pos] = c.top[0].1.exp();
        text[c.entry][c.pos] = match c.top[0].1.is_finite() {
            true => short(&tok.decode(&[c.top[0].0])?),
            false => "NaN".into(), // no top token
        };
    }
    let cols = token_labels(tok, &ids[0])?;
    let title = format!(
        "Logit lens on {:?}: top next token (colour: its probability)",
        prompts[0]
    );
    let heatmap = Heatmap {
        title: &title,
        values: &probs,
        row_labels: &labels,
        col_labels: &cols,
        x_desc: "position: input token",
        y_desc: "residual stream read at",
        cell_text: Some(&text),
        range: Some((0.0, 1.0)),
        ..Default::default()
    };
    let mut out = std::io::stdout().lock();
    if let Some((t, name)) = target {
        let last = |b: usize| {
            cells
                .iter()
                .filter(move |c| c.batch == b && c.pos + 1 == ids[b].len())
        };
        let series: Vec<(String, Vec<f32>)> = (0..prompts.len().min(8))
            .map(|b| {
                (
                    format!("prompt {b}: {}", short(&prompts[b])),
                    last(b)
                        .map(|c| c.target.map_or(f32::NAN, |x| x.1))
                        .collect(),
                )
            })
            .collect();
        let path = exp.file(
            "target.png",
            "the target's log-prob across layers at each prompt's last token (up to 8 prompts)",
        )?;
        line_plot(
            &path,
            &format!("Log-prob of {name:?} (id {t}) at the last token, by layer"),
            &labels,
            &series,
            "residual stream read at",
            "log-prob (nats)",
        )?;
        for c in last(0) {
            let (rank, lp) = c.target.unwrap_or_default();
            let top = format!("{:?}", tok.decode(&[c.top[0].0])?);
            writeln!(
                out,
                "{:<12} top {top:<14} {name:?} rank {rank:>6}  log-prob {lp:8.3}",
                c.label
            )?;
        }
    }
    exp.heatmap(
        "top_tokens.png", "layers x positions of the first prompt: each cell's top token, coloured by its probability", &heatmap)?;
    Ok(())
}

/// One writer heads x reader heads heatmap per composition kind, and the strongest pair of
/// each, printed.
pub fn composition_plots(
    exp: &mut Experiment,
    scores: &[(Composition, candle_core::Tensor)],
) -> Result<()> {
    let cfg = exp.manifest.model.config.clone();
    let (l, h) = (cfg.n_layers, cfg.n_heads);
    let labels: Vec<String> = (0..l)
        .flat_map(|x| (0..h).map(move |y| head_label(x, y)))
        .collect();
    let mut out = std::io::stdout().lock();
    for (c, s) in scores {
        let grid: Vec<Vec<f32>> = s.reshape((l * h, l * h))?.to_vec2()?; // [writer head, reader head]
        let input = match c {
            Composition::Q => "queries",
            Composition::K => "keys",
            Composition::V => "values",
        };
        let title = format!(
            "{}-composition: earlier head's OV into later head's {input}",
            c.name()
        );
        let heatmap = Heatmap {
            title: &title,
            values: &grid,
            row_labels: &labels,
            col_labels: &labels,
            x_desc: "reader (later head)",
            y_desc: "writer (earlier head)",
            ..Default::default()
        };
        let what = format!("{} composition scores, writer heads (rows) x reader heads (columns); 0 unless the reader is later", c.name());
        exp.heatmap(
            &format!("composition_{}.png", c.name().to_lowercase()),
            &what,
            &heatmap,
        )?;
        // Only a writer in an earlier layer than its reader composes.
        let best = grid
            .iter()
            .flatten()
            .enumerate()
            .filter(|(i, _)| (i / (l * h)) / h < (i % (l * h)) / h)
            .fold(None, |m: Option<(usize, f32)>, (i, &v)| match m {
                Some((_, b)) if b >= v => m,
                _ => Some((i, v)),
            });
        match best {
            Some((i, v)) => writeln!(
                out,
                "strongest {}-composition: {} -> {} ({v:.3})",
                c.name(),
                labels[i / (l * h)],
                labels[i % (l * h)]
            )?,
            None => writeln!(
                out,
                "no {}-composition: a model of one layer has no later head to compose with",
                c.name()
            )?,
        }
    }
    Ok(())
}

/// Prints each analogy's five nearest tokens in each matrix.
pub fn print_analogies(
    found: &[hooklens::analysis::embeddings::Neighbour],
    queries: &[String],
    tok: &hooklens::Tokenizer,
) -> Result<()> {
    let mut out = std::io::stdout().lock();
    for r in found.iter().filter(|r| r.rank == 0) {
        let these = found
            .iter()
            .filter(|x| x.matrix == r.matrix && x.query == r.query)
            .take(5);
        let shown: Vec<String> = these
            .map(|x| {
                Ok(format!(
                    "{:?} {:.3}",
                    tok.to_str_tokens(&[x.id])?[0],
                    x.cosine
                ))
            })
            .collect::<hooklens::Result<_>>()?;
        writeln!(
            out,
            "{} {:?}: {}",
            r.matrix,
            queries[r.query],
            shown.join(", ")
        )?;
    }
    Ok(())
}

/// The direct logit attribution's views: the `top` components as bars, the layers x heads
/// heatmap (when heads are components), and the check that the contributions sum to the
/// logit difference, printed with the ten largest.
pub fn dla_views(
    exp: &mut Experiment,
    dla: &hooklens::analysis::dla::Dla,
    pairs: &[hooklens::data::PromptPair],
    top: usize,
) -> Result<()> {
    let cfg = exp.manifest.model.config.clone();
    let top = largest(
        dla.contributions
            .iter()
            .map(|c| (c.component.clone(), c.value)),
        top,
    );
    let what = match pairs.len() {
        1 => format!("{:?} over {:?}", pairs[0].answer, pairs[0].wrong),
        n => format!("answer over wrong answer, mean of {n} prompts"),
    };
    let path = exp.file(
        "top_components.png",
        "bar chart of the components with the largest |contribution|",
    )?;
    bar_chart(
        &path,
        &format!("Direct logit attribution: {what}"),
        &top,
        "contribution to the logit difference",
    )?;
    // Models with post-sublayer norms (Gemma 2) attribute whole attention layers, not heads.
    if dla.contributions.iter().any(|c| c.kind == "head") {
        let mut grid = vec![vec![0f32; cfg.n_heads]; cfg.n_layers];
        for c in dla.contributions.iter().filter(|c| c.kind == "head") {
            if let (Some(l), Some(h)) = (c.layer, c.head) {
                grid[l as usize][h as usize] = c.value;
            }
        }
        exp.heads(
            "heads.png",
            "layers x heads heatmap of head contributions (red pushes towards the answer)",
            &format!("Head contributions: {what}"),
            &grid,
            true,
        )?;
    }
    let sum: f32 = dla.contributions.iter().map(|c| c.value).sum();
    let capped = match cfg.output_logits_soft_cap {
        Some(_) => " (before the final logit soft-cap)",
        None => "",
    };
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "logit difference{capped} {:.4}; sum of the {} contributions {sum:.4} (|diff| {:.1e})",
        dla.logit_diff,
        dla.contributions.len(),
        (sum - dla.logit_diff).abs()
    )?;
    for (name, v) in top.iter().take(10) {
        writeln!(out, "  {name:<14} {v:+.4}")?;
    }
    Ok(())
}

/// The temperature views: the top tokens' probabilities, one bar per temperature, and each
/// temperature's top-1 and top-k mass, printed. `rows` are temperature-major, for
/// `temperatures` temperatures.
pub fn temperature_views(
    exp: &mut Experiment,
    rows: &[hooklens::analysis::metrics::TemperatureRow],
    temperatures: usize,
    tok: &hooklens::Tokenizer,
    prompt: &str,
) -> Result<()> {
    // One bar group per token, one bar per temperature.
    let k = rows.len() / temperatures.max(1); // tokens per temperature
    let names: Vec<String> = rows[..k]
        .iter()
        .map(|r| Ok(format!("{:?}", tok.to_str_tokens(&[r.id])?[0])))
        .collect::<hooklens::Result<_>>()?;
    let series: Vec<(String, Vec<f32>)> = rows
        .chunks(k)
        .map(|c| {
            (
                format!("T = {}", c[0].temperature),
                c.iter().map(|r| r.prob).collect(),
            )
        })
        .collect();
    let n = prompt.chars().count();
    let short: String = match n > 40 {
        true => "...".to_string() + &prompt.chars().skip(n - 40).collect::<String>(),
        false => prompt.to_string(),
    };
    let title = format!("{}: next token after \"{short}\"", exp.manifest.model.name);
    let path = exp.file(
        "temperature.png",
        "the top tokens' probabilities, one bar per temperature",
    )?;
    grouped_bars(
        &path,
        &title,
        &names,
        &series,
        "probability softmax(logits / T)",
    )?;
    let mut out = std::io::stdout().lock();
    for (t, p) in series
        .iter()
        .map(|(_, p)| p)
        .enumerate()
        .map(|(i, p)| (rows[i * k].temperature, p))
    {
        writeln!(
            out,
            "T = {t}: top {} {:.3}, top {} together {:.3}",
            names[0],
            p[0],
            names.len(),
            p.iter().sum::<f32>()
        )?;
    }
    Ok(())
}

/// The embeddings' views: the nearest-token table (rows, the tokens looked up), the analogy
/// table (rows, the analogies as given) and the PCA map of the tokens' W_E rows (`xy`).
pub fn embedding_views(
    exp: &mut Experiment,
    tok: &hooklens::Tokenizer,
    (near, tokens): (&[Neighbour], &[String]),
    (found, queries): (&[Neighbour], &[String]),
    xy: &[(f32, f32)],
) -> Result<()> {
    exp.table(
        "nearest.parquet",
        &Nearest(NeighboursTable {
            rows: near,
            queries: tokens,
            tok,
        }),
    )?;
    exp.table(
        "analogies.parquet",
        &Analogies(NeighboursTable {
            rows: found,
            queries,
            tok,
        }),
    )?;
    let points: Vec<(String, f32, f32)> = tokens
        .iter()
        .zip(xy)
        .map(|(t, &(x, y))| (format!("{t:?}"), x, y))
        .collect();
    let title = format!(
        "{}: {} tokens' W_E rows, first two principal components",
        exp.manifest.model.name,
        tokens.len()
    );
    let path = exp.file(
        "pca_w_e.png",
        "the chosen tokens' embeddings projected on their two principal directions",
    )?;
    labelled_points(
        &path,
        &title,
        &points,
        "principal component 1",
        "principal component 2",
    )?;
    Ok(())
}

/// The head detector's views: the scores table, the layers x heads heatmap of induction
/// scores, the best induction head's `pattern` on an example (tokens `labels`), and each kind's
/// best head, printed.
pub fn induction_views(
    exp: &mut Experiment,
    scores: &std::collections::HashMap<HeadKind, candle_core::Tensor>,
    pattern: &[Vec<f32>],
    labels: &[String],
) -> Result<()> {
    exp.table("head_scores.parquet", scores)?;
    let induction = scores[&HeadKind::Induction].to_vec2::<f32>()?;
    let what = "heatmap layers x heads of the induction score";
    exp.heads(
        "induction_scores.png",
        what,
        "Induction score per head",
        &induction,
        false,
    )?;
    let (bl, bh, best) = best_head(&scores[&HeadKind::Induction])?;
    let title = format!("Attention pattern of L{bl}H{bh} (induction score {best:.2})");
    let what = "attention pattern of the best induction head on one example";
    exp.pattern("top_head_pattern.png", what, &title, pattern, labels, None)?;
    let mut out = std::io::stdout().lock();
    for kind in HeadKind::ALL {
        let (l, h, s) = best_head(&scores[&kind])?;
        writeln!(out, "top {:<16} head: L{l}H{h}  score {s:.3}", kind.name())?;
    }
    writeln!(out, "best induction head: L{bl}H{bh} with score {best:.3}")?;
    Ok(())
}

/// An activation store's tables beside its shards: `tokens.parquet` (every token with its
/// shard and row), `stats.parquet` (each hook's norms over the corpus) and
/// `means.safetensors` (each hook's mean, the reference of `ablate --reference`).
pub fn store_views(
    exp: &mut Experiment,
    spec: &hooklens::store::StoreSpec,
    stats: &[hooklens::store::HookStats],
    contexts: &hooklens::corpus::Contexts,
    tok: &hooklens::Tokenizer,
) -> Result<()> {
    use crate::store::{tokens_frame, TOKEN_COLUMNS};
    use polars::prelude::*;
    exp.frame(
        "tokens.parquet",
        &mut tokens_frame(spec, contexts, tok)?,
        TOKEN_COLUMNS,
    )?;
    let col = |f: fn(&hooklens::store::HookStats) -> f32| stats.iter().map(f).collect::<Vec<_>>();
    let mut df = df!(
        "hook" => stats.iter().map(|s| s.hook.clone()).collect::<Vec<_>>(),
        "tokens" => stats.iter().map(|s| s.tokens as u64).collect::<Vec<_>>(),
        "mean_norm" => col(|s| s.mean_norm),
        "rms_norm" => col(|s| s.rms_norm),
        "max_norm" => col(|s| s.max_norm),
        "norm_of_mean" => col(|s| s.mean.iter().map(|v| v * v).sum::<f32>().sqrt()),
    )?;
    exp.frame(
        "stats.parquet",
        &mut df,
        &[
            ("hook", "The hook point (TransformerLens name)"),
            ("tokens", "Tokens it was measured over (the whole store)"),
            ("mean_norm", "Mean L2 norm of one token's activation"),
            ("rms_norm", "Root-mean-square L2 norm"),
            ("max_norm", "Largest L2 norm"),
            (
                "norm_of_mean",
                "L2 norm of the mean activation (in means.safetensors)",
            ),
        ],
    )?;
    let mut means = std::collections::HashMap::new();
    for (s, h) in stats.iter().zip(&spec.hooks) {
        let t = candle_core::Tensor::from_slice(
            &s.mean,
            h.shape.as_slice(),
            &candle_core::Device::Cpu,
        )?;
        means.insert(s.hook.clone(), t);
    }
    let path = exp.file(
        "means.safetensors",
        "Each hook's mean activation over the corpus (f32, one token's shape): the reference of `ablate --reference`",
    )?;
    hooklens::atomic::atomic_write_with(&path, |tmp| {
        candle_core::safetensors::save(&means, tmp).map_err(hooklens::Error::from)
    })?;
    Ok(())
}

/// Unit dashboards as tables (`units`, `top_examples`, `histograms`, `logit_effects`) and the
/// page `dashboard.html`; prints the units with the largest activations. `similar` makes them
/// an SAE's features, each listing its nearest (`html::dashboard_page`).
pub fn dashboard_views(
    exp: &mut Experiment,
    store: &hooklens::store::ActivationStore,
    hook: &str,
    dash: &[hooklens::analysis::dashboards::UnitDashboard],
    effects: Option<&hooklens::analysis::dashboards::LogitEffects>,
    similar: Option<&[Vec<(u32, f32)>]>,
    tok: &hooklens::Tokenizer,
) -> Result<()> {
    use crate::tables::{DashExamples, DashHistograms, DashLogits, DashUnits, Dashboards};
    let tables = Dashboards { dash, effects, tok };
    exp.table("units.parquet", &DashUnits(&tables))?;
    exp.table("top_examples.parquet", &DashExamples(&tables))?;
    exp.table("histograms.parquet", &DashHistograms(&tables))?;
    if effects.is_some() {
        exp.table("logit_effects.parquet", &DashLogits(&tables))?;
    }
    let model = store.spec.provenance["model"].as_str().unwrap_or("?");
    let subtitle = format!(
        "{model}, {} tokens of {} in contexts of {}; store {}",
        store.spec.tokens,
        store.spec.provenance["corpus"]["files"][0]["path"]
            .as_str()
            .and_then(|p| std::path::Path::new(p).file_name()?.to_str())
            .unwrap_or("?"),
        store.spec.context_len,
        store.dir.display()
    );
    let kind = if similar.is_some() { "feature" } else { "unit" };
    let page = crate::html::dashboard_page(
        &format!("{hook}: {kind} dashboards"),
        &subtitle,
        hook,
        dash,
        effects,
        similar,
        tok,
    )?;
    exp.page(
        "dashboard.html",
        "Unit dashboards: top examples coloured by activation, histograms, logit effects",
        &page,
    )?;
    let mut order: Vec<&hooklens::analysis::dashboards::UnitDashboard> = dash.iter().collect();
    order.sort_by(|a, b| b.max.total_cmp(&a.max));
    let mut out = std::io::stdout().lock();
    for d in order.iter().take(5) {
        let e = &d.examples[0];
        let ids: Vec<u32> = e.window.iter().map(|w| w.0).collect();
        writeln!(
            out,
            "{kind} {:5} max {:8.3}  density {:.4}  {:?}",
            d.unit,
            d.max,
            d.frac_active,
            tok.decode(&ids)?
        )?;
    }
    Ok(())
}

/// An SAE's measurements: `metrics.parquet` (one row), `density.parquet` (one row per feature)
/// and `similar.parquet` (each shown feature's nearest features by decoder direction), and
/// the one-line summary.
pub fn sae_views(
    exp: &mut Experiment,
    sae: &hooklens::sae::Sae,
    recon: &hooklens::sae::Reconstruction,
    ce: &hooklens::sae::CeLoss,
    similar: &[Vec<(u32, f32)>],
    features: &[usize],
) -> Result<()> {
    use polars::prelude::*;
    let mut metrics = df!(
        "sae" => [sae.path.display().to_string()],
        "hook" => [sae.hook.to_string()],
        "hook_out" => [sae.writes().to_string()],
        "architecture" => [format!("{:?}", sae.architecture)],
        "d_in" => [sae.d_in as u32],
        "d_sae" => [sae.d_sae as u32],
        "tokens" => [recon.tokens as u64],
        "l0" => [recon.l0],
        "mse" => [recon.mse],
        "explained_variance" => [recon.explained_variance],
        "dead" => [recon.dead as u32],
        "dense" => [recon.dense as u32],
        "ce_clean" => [ce.clean],
        "ce_spliced" => [ce.spliced],
        "ce_zero_ablated" => [ce.zero_ablated],
        "ce_loss_recovered" => [ce.recovered],
    )?;
    exp.frame(
        "metrics.parquet",
        &mut metrics,
        &[
            ("sae", "the SAE folder"),
            ("hook", "the hook point it reads"),
            (
                "hook_out",
                "the hook point its output replaces when spliced: a transcoder's output hook, else hook",
            ),
            (
                "architecture",
                "Standard | JumpRelu | TopK { k, rescale_acts_by_decoder_norm } | Gated",
            ),
            ("d_in", "input width"),
            ("d_sae", "features"),
            (
                "tokens",
                "tokens of the store the reconstruction was measured on",
            ),
            ("l0", "mean number of active features per token"),
            ("mse", "mean squared reconstruction error per element"),
            (
                "explained_variance",
                "1 - sum |x - x_hat|^2 / sum |x - mean x|^2",
            ),
            ("dead", "features never active over the store"),
            ("dense", "features active on more than 10 % of tokens"),
            (
                "ce_clean",
                "mean next-token loss (nats) of the model, over the first --ce-contexts contexts",
            ),
            (
                "ce_spliced",
                "the same with the SAE's reconstruction replacing the hook's activation",
            ),
            (
                "ce_zero_ablated",
                "the same with the hook's activation zeroed",
            ),
            (
                "ce_loss_recovered",
                "(ce_zero_ablated - ce_spliced) / (ce_zero_ablated - ce_clean); 1 = nothing lost",
            ),
        ],
    )?;
    let mut density = df!(
        "feature" => (0..sae.d_sae as u32).collect::<Vec<_>>(),
        "density" => recon.density.clone(),
    )?;
    exp.frame(
        "density.parquet",
        &mut density,
        &[
            ("feature", "the feature"),
            (
                "density",
                "fraction of the store's tokens where it is active (0: dead)",
            ),
        ],
    )?;
    let (mut f, mut rank, mut other, mut cos) = (vec![], vec![], vec![], vec![]);
    for (&u, near) in features.iter().zip(similar) {
        for (r, &(o, c)) in near.iter().enumerate() {
            f.push(u as u32);
            rank.push(r as u32);
            other.push(o);
            cos.push(c);
        }
    }
    let mut sim = df!("feature" => f, "rank" => rank, "other" => other, "cosine" => cos)?;
    exp.frame(
        "similar.parquet",
        &mut sim,
        &[
            ("feature", "a feature with a dashboard"),
            ("rank", "0 = the most similar other feature"),
            ("other", "another feature"),
            (
                "cosine",
                "cosine similarity of their decoder directions (W_dec rows)",
            ),
        ],
    )?;
    writeln!(
        std::io::stdout().lock(),
        "{}: L0 {:.1}, explained variance {:.3}, MSE {:.4}, CE loss recovered {:.3} (clean {:.3}, spliced {:.3}, zero-ablated {:.3}); {} dead and {} dense of {} features over {} tokens",
        match sae.hook_out {
            Some(out) => format!("{} -> {out}", sae.hook),
            None => sae.hook.to_string(),
        },
        recon.l0, recon.explained_variance, recon.mse, ce.recovered, ce.clean, ce.spliced, ce.zero_ablated, recon.dead, recon.dense, sae.d_sae, recon.tokens
    )?;
    Ok(())
}

/// A training run's curves against tokens seen: `losses.png` with the MSE (log scale),
/// explained variance, L0 and dead latents; prints the last step's figures.
pub fn training_curves(
    exp: &mut Experiment,
    history: &[hooklens::sae::train::StepStats],
    batch: u64,
    what: &str,
) -> Result<()> {
    let Some(last) = history.last() else {
        return Ok(());
    };
    let col = |f: fn(&hooklens::sae::train::StepStats) -> f64| history.iter().map(f).collect();
    let tokens: Vec<f64> = history
        .iter()
        .map(|s| ((s.step as u64 + 1) * batch) as f64)
        .collect();
    let path = exp.file(
        "losses.png",
        "Training curves against tokens: MSE, explained variance, L0, dead latents",
    )?;
    crate::plot::panels(
        &path,
        &format!("{what} training, {} steps of {batch} tokens", history.len()),
        &tokens,
        "training tokens",
        &[
            ("MSE (log scale)", col(|s| s.mse), true),
            ("explained variance", col(|s| s.explained_variance), false),
            ("L0 (active latents per token)", col(|s| s.l0), false),
            ("dead latents", col(|s| s.dead as f64), false),
        ],
    )?;
    println!(
        "step {}: MSE {:.4}, explained variance {:.4}, L0 {:.1}, {} dead latents",
        last.step + 1,
        last.mse,
        last.explained_variance,
        last.l0,
        last.dead
    );
    Ok(())
}
