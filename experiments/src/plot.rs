//! PNG plots (plotters, bitmap backend) with an embedded font, so they render anywhere.

use hooklens::error::{Error, Result};
use plotters::prelude::*;
use plotters::style::colors::colormaps::ViridisRGB;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;
use std::sync::Once;

static FONT: Once = Once::new();

/// Registers DejaVu Sans as plotters' `sans-serif` (no system fonts are needed).
fn ensure_font() {
    FONT.call_once(|| {
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
    });
}

fn plot_err(e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("plotting: {e}"))
}

/// A labelled heatmap: `values[row][col]` with row and column labels, axis descriptions, an
/// optional text in each cell, and a colour scale (viridis over the data's range, or a
/// blue-white-red scale symmetric about 0 for signed values).
#[derive(Debug, Clone, Default)]
pub struct Heatmap<'a> {
    pub title: &'a str,
    pub values: &'a [Vec<f32>],
    pub row_labels: &'a [String],
    pub col_labels: &'a [String],
    pub x_desc: &'a str,
    pub y_desc: &'a str,
    /// Text drawn in each cell (same shape as `values`).
    pub cell_text: Option<&'a [Vec<String>]>,
    /// Blue (negative) - white (0) - red (positive), symmetric about 0.
    pub diverging: bool,
    /// The colour scale's range; by default the data's.
    pub range: Option<(f32, f32)>,
}

/// Writes a layers × heads heatmap (rows `L0`.., columns `H0`..): the one layout of every
/// per-head plot. `diverging` for signed values (blue-white-red about 0).
pub fn write_heads(
    path: &Path,
    title: &str,
    values: &[Vec<f32>],
    diverging: bool,
    range: Option<(f32, f32)>,
) -> Result<()> {
    let rows: Vec<String> = (0..values.len()).map(|l| format!("L{l}")).collect();
    let n_heads = values.first().map_or(0, Vec::len);
    let cols: Vec<String> = (0..n_heads).map(|h| format!("H{h}")).collect();
    Heatmap {
        title,
        values,
        row_labels: &rows,
        col_labels: &cols,
        x_desc: "head",
        y_desc: "layer",
        diverging,
        range,
        ..Default::default()
    }
    .write(path)
}

/// A token as a plot shows it: escaped, spaces as `␣`, at most 24 characters.
pub fn short(s: &str) -> String {
    let e: String = s.escape_debug().collect::<String>().replace(' ', "␣");
    match e.chars().count() > 24 {
        true => format!("{}…", e.chars().take(23).collect::<String>()),
        false => e,
    }
}

/// The axis labels of a token sequence: `{position}:{token}`, the one way plots label tokens.
pub fn token_labels(tok: &hooklens::Tokenizer, ids: &[u32]) -> Result<Vec<String>> {
    Ok(tok
        .to_str_tokens(ids)?
        .iter()
        .enumerate()
        .map(|(i, s)| format!("{i}:{}", short(s)))
        .collect())
}

/// The smallest and largest finite values (NaN and ±Inf, written only under
/// `--allow-nonfinite`, are left out: an infinite axis range never finishes laying out its
/// ticks), or `(0, 1)` when there are none.
fn finite_range(values: impl IntoIterator<Item = f32>) -> (f32, f32) {
    let (lo, hi) = values
        .into_iter()
        .filter(|v| v.is_finite())
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    match lo <= hi {
        true => (lo, hi),
        false => (0.0, 1.0),
    }
}

/// Where a value is NaN or Inf.
const NONFINITE_GREY: RGBColor = RGBColor(128, 128, 128);

/// Blue-white-red for `v` in [lo, hi] with white at the middle.
fn diverging_color(v: f32, lo: f32, hi: f32) -> RGBColor {
    if !v.is_finite() {
        return NONFINITE_GREY;
    }
    let t = ((v - lo) / (hi - lo)).clamp(0.0, 1.0) as f64 * 2.0 - 1.0; // -1..1
    let mix = |a: u8, w: f64| (255.0 + (a as f64 - 255.0) * w).round() as u8;
    match t < 0.0 {
        true => RGBColor(mix(33, -t), mix(102, -t), mix(172, -t)),
        false => RGBColor(mix(178, t), mix(24, t), mix(43, t)),
    }
}

impl Heatmap<'_> {
    fn color(&self, v: f32, lo: f32, hi: f32) -> RGBColor {
        match self.diverging {
            true => diverging_color(v, lo, hi),
            false if !v.is_finite() => NONFINITE_GREY,
            false => ViridisRGB::get_color_normalized(v, lo, hi),
        }
    }

    /// Draws the heatmap to `path` (PNG), written atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        ensure_font();
        let (values, row_labels, col_labels) = (self.values, self.row_labels, self.col_labels);
        let rows = values.len();
        let cols = values.first().map_or(0, Vec::len);
        if rows == 0 || cols == 0 || row_labels.len() != rows || col_labels.len() != cols {
            return Err(Error::Invalid(format!(
                "heatmap needs {rows}x{cols} values with matching labels"
            )));
        }
        let (lo, hi) = self
            .range
            .unwrap_or_else(|| finite_range(values.iter().flatten().copied()));
        let (lo, hi) = match self.diverging {
            true => {
                let m = lo.abs().max(hi.abs()).max(1e-6);
                (-m, m)
            }
            false if hi > lo => (lo, hi),
            false => (lo - 0.5, lo + 0.5),
        };
        let longest_of =
            |labels: &[String]| labels.iter().map(|l| l.chars().count()).max().unwrap_or(1) as u32;
        let (longest, longest_col) = (longest_of(row_labels), longest_of(col_labels));
        // Cells with text are wide enough for it.
        let cell_w = match self.cell_text {
            Some(t) => (t
                .iter()
                .flatten()
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(1) as u32
                * 8
                + 12)
                .clamp(40, 120),
            None => 60,
        };
        let plot_width = (cols as u32 * cell_w).clamp(480, 2400);
        // Column labels wider than their cell are drawn vertically, so that they never overlap.
        let rotate = 8 * longest_col > plot_width / cols as u32;
        let x_label_area = if rotate { 8 * longest_col + 40 } else { 48 };
        // Grey cells say why, in the title.
        let title = match values.iter().flatten().all(|v| v.is_finite()) {
            true => self.title.to_string(),
            false => format!("{} (grey: NaN or Inf)", self.title),
        };
        // Wide enough for the title too (about 11 px a character at 22 px).
        let width = (plot_width + 8 * longest + 140).max(title.chars().count() as u32 * 11 + 150);
        let height = (rows as u32 * 40).clamp(320, 1600) + 72 + x_label_area;
        write_png(path, (width, height), |root| {
            let (main, bar) = root.split_horizontally(width - 110);
            let mut chart = ChartBuilder::on(&main)
                .caption(&title, ("sans-serif", 22))
                .margin(12)
                .x_label_area_size(x_label_area)
                .y_label_area_size(8 * longest + 30)
                .build_cartesian_2d(-0.5..cols as f64 - 0.5, rows as f64 - 0.5..-0.5)
                .map_err(plot_err)?;
            chart
                .configure_mesh()
                .disable_mesh()
                .x_desc(self.x_desc)
                .y_desc(self.y_desc)
                // Long column labels are drawn below, vertically.
                .x_labels(if rotate { 0 } else { cols.min(60) + 1 })
                .y_labels(rows.min(60) + 1)
                .x_label_formatter(&|x| label_at(col_labels, *x))
                .y_label_formatter(&|y| label_at(row_labels, *y))
                .label_style(("sans-serif", 14))
                .axis_desc_style(("sans-serif", 15))
                .draw()
                .map_err(plot_err)?;
            chart
                .draw_series(values.iter().enumerate().flat_map(|(r, row)| {
                    row.iter().enumerate().map(move |(c, &v)| {
                        let color = self.color(v, lo, hi);
                        // Cell (r, c) is centred on (c, r), where its labels sit.
                        let (x, y) = (c as f64, r as f64);
                        Rectangle::new([(x - 0.5, y - 0.5), (x + 0.5, y + 0.5)], color.filled())
                    })
                }))
                .map_err(plot_err)?;
            if let Some(text) = self.cell_text {
                let centred = Pos::new(HPos::Center, VPos::Center);
                for (r, row) in text.iter().enumerate() {
                    for (c, t) in row.iter().enumerate() {
                        // Dark text on light cells, light text on dark ones.
                        let RGBColor(red, g, b) = self.color(values[r][c], lo, hi);
                        let light =
                            0.299 * red as f32 + 0.587 * g as f32 + 0.114 * b as f32 > 140.0;
                        let ink = if light { BLACK } else { WHITE };
                        let style = TextStyle::from(("sans-serif", 13).into_font())
                            .color(&ink)
                            .pos(centred);
                        chart
                            .draw_series(std::iter::once(Text::new(
                                t.clone(),
                                (c as f64, r as f64),
                                style,
                            )))
                            .map_err(plot_err)?;
                    }
                }
            }
            if rotate {
                // Rotated a quarter turn about their start, so each label hangs below its column.
                let style = TextStyle::from(
                    ("sans-serif", 14)
                        .into_font()
                        .transform(FontTransform::Rotate90),
                )
                .pos(Pos::new(HPos::Left, VPos::Center));
                // Every label when they fit (16 px each), else every step-th.
                let step = (cols as u32 * 16).div_ceil(plot_width).max(1) as usize;
                for (c, label) in col_labels.iter().enumerate().step_by(step) {
                    let (x, y) = chart.backend_coord(&(c as f64, rows as f64 - 0.5));
                    main.draw(&Text::new(label.as_str(), (x, y + 8), style.clone()))
                        .map_err(plot_err)?;
                }
            }
            let mut cb = ChartBuilder::on(&bar)
                .margin_top(50)
                .margin_bottom(60)
                .margin_right(50)
                .y_label_area_size(0)
                .right_y_label_area_size(45)
                .build_cartesian_2d(0.0..1.0, lo as f64..hi as f64)
                .map_err(plot_err)?;
            cb.configure_mesh()
                .disable_mesh()
                .disable_x_axis()
                .label_style(("sans-serif", 12))
                .draw()
                .map_err(plot_err)?;
            let steps = 100;
            cb.draw_series((0..steps).map(|i| {
                let a = lo as f64 + (hi - lo) as f64 * i as f64 / steps as f64;
                let b = lo as f64 + (hi - lo) as f64 * (i + 1) as f64 / steps as f64;
                Rectangle::new([(0.0, a), (1.0, b)], self.color(a as f32, lo, hi).filled())
            }))
            .map_err(plot_err)?;
            Ok(())
        })
    }
}

/// Lines over a shared categorical x axis (`x_labels`), one per (name, values) series, with a
/// legend: e.g. a target token's log-prob across layers.
pub fn line_plot(
    path: &Path,
    title: &str,
    x_labels: &[String],
    series: &[(String, Vec<f32>)],
    x_desc: &str,
    y_desc: &str,
) -> Result<()> {
    ensure_font();
    let n = x_labels.len();
    if n == 0 || series.iter().any(|(_, v)| v.len() != n) {
        return Err(Error::Invalid(format!(
            "line plot needs {n} values per series"
        )));
    }
    let (lo, hi) = finite_range(series.iter().flat_map(|(_, v)| v.iter().copied()));
    let pad = ((hi - lo) * 0.08).max(0.05);
    // As many horizontal labels as fit; plotters spaces them evenly.
    let longest = x_labels
        .iter()
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(1);
    let fit = (880 / (8 * longest + 16)).clamp(2, n.max(2));
    write_png(path, (1000, 560), |root| {
        let mut chart = titled(root, title, (50, 70))
            .build_cartesian_2d(-0.5..n as f64 - 0.5, (lo - pad) as f64..(hi + pad) as f64)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_labels(fit)
            .x_label_formatter(&|x| label_at(x_labels, *x))
            .x_label_style(("sans-serif", 13))
            .x_desc(x_desc)
            .y_desc(y_desc)
            .axis_desc_style(("sans-serif", 15))
            .draw()
            .map_err(plot_err)?;
        for (i, (name, v)) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(
                    v.iter().enumerate().map(|(x, &y)| (x as f64, y as f64)),
                    color.stroke_width(3),
                ))
                .map_err(plot_err)?
                .label(name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], color.stroke_width(3))
                });
            chart
                .draw_series(
                    v.iter()
                        .enumerate()
                        .map(|(x, &y)| Circle::new((x as f64, y as f64), 4, color.filled())),
                )
                .map_err(plot_err)?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(plot_err)?;
        Ok(())
    })
}

/// Small line charts side by side over one numeric x axis (`x`, described by `x_desc`), one per
/// (name, values, log scale) panel: a training run's curves.
pub fn panels(
    path: &Path,
    title: &str,
    x: &[f64],
    x_desc: &str,
    panels: &[(&str, Vec<f64>, bool)],
) -> Result<()> {
    ensure_font();
    if x.is_empty() || panels.iter().any(|(_, v, _)| v.len() != x.len()) {
        return Err(Error::Invalid(format!(
            "panels need {} values each",
            x.len()
        )));
    }
    let (x0, x1) = (x[0], x[x.len() - 1].max(x[0] + 1.0));
    let cols = panels.len().clamp(1, 2);
    let rows = panels.len().div_ceil(cols);
    write_png(path, (1100, 60 + 380 * rows as u32), |root| {
        let root = root.titled(title, ("sans-serif", 22)).map_err(plot_err)?;
        for (area, (name, v, log)) in root.split_evenly((rows, cols)).iter().zip(panels) {
            let finite = v
                .iter()
                .copied()
                .filter(|y| y.is_finite() && (!log || *y > 0.0));
            let (lo, hi) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| {
                (a.min(y), b.max(y))
            });
            let (lo, hi) = match lo <= hi {
                true => (lo, hi.max(lo + 1e-9)),
                false => (0.0, 1.0),
            };
            let mut chart = ChartBuilder::on(area);
            chart
                .caption(*name, ("sans-serif", 17))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(70);
            let color = BLUE.stroke_width(2);
            let points = x.iter().zip(v).map(|(&a, &b)| (a, b));
            match log {
                true => {
                    // Ticks at 1, 2, 5 × 10ⁿ: a range within one decade gets labels too.
                    let (lo, hi) = (lo * 0.9, hi * 1.1);
                    let ticks: Vec<f64> = (lo.log10().floor() as i32..=hi.log10().ceil() as i32)
                        .flat_map(|e| [1.0, 2.0, 5.0].map(|m| m * 10f64.powi(e)))
                        .filter(|t| (lo..=hi).contains(t))
                        .collect();
                    let mut c = chart
                        .build_cartesian_2d(x0..x1, (lo..hi).log_scale().with_key_points(ticks))
                        .map_err(plot_err)?;
                    c.configure_mesh()
                        .x_desc(x_desc)
                        .x_label_formatter(&|x| count(*x))
                        .y_label_formatter(&|y| format!("{y}"))
                        .draw()
                        .map_err(plot_err)?;
                    c.draw_series(LineSeries::new(points.filter(|p| p.1 > 0.0), color))
                        .map_err(plot_err)?;
                }
                false => {
                    let pad = ((hi - lo) * 0.05).max(lo.abs() * 0.05).max(1e-3);
                    let mut c = chart
                        .build_cartesian_2d(x0..x1, lo - pad..hi + pad)
                        .map_err(plot_err)?;
                    c.configure_mesh()
                        .x_desc(x_desc)
                        .x_label_formatter(&|x| count(*x))
                        .draw()
                        .map_err(plot_err)?;
                    c.draw_series(LineSeries::new(points, color))
                        .map_err(plot_err)?;
                }
            }
        }
        Ok(())
    })
}

/// A count as people write it: 950, 12k, 3.5M.
fn count(x: f64) -> String {
    match x.abs() {
        a if a >= 1e6 => format!("{:.1}M", x / 1e6),
        a if a >= 1e3 => format!("{:.0}k", x / 1e3),
        _ => format!("{x:.0}"),
    }
}

/// Horizontal bars, one per (label, value), top to bottom in the order given; positive values
/// red, negative blue.
pub fn bar_chart(path: &Path, title: &str, bars: &[(String, f32)], x_desc: &str) -> Result<()> {
    ensure_font();
    if bars.is_empty() {
        return Err(Error::Invalid("a bar chart needs at least one bar".into()));
    }
    let n = bars.len();
    let (lo, hi) = finite_range(bars.iter().map(|(_, v)| *v).chain([0.0]));
    let pad = ((hi - lo) * 0.08).max(1e-3);
    let labels: Vec<String> = bars.iter().map(|(l, _)| l.clone()).collect();
    let longest = labels.iter().map(|l| l.chars().count()).max().unwrap_or(1) as u32;
    let height = (n as u32 * 28 + 140).clamp(300, 1600);
    write_png(path, (1000, height), |root| {
        let mut chart = titled(root, title, (50, 8 * longest + 30))
            .build_cartesian_2d((lo - pad) as f64..(hi + pad) as f64, n as f64 - 0.5..-0.5)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .light_line_style(WHITE)
            .y_labels(n + 1)
            .y_label_formatter(&|y| label_at(&labels, *y))
            .x_desc(x_desc)
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 15))
            .draw()
            .map_err(plot_err)?;
        chart
            .draw_series(bars.iter().enumerate().map(|(i, (_, v))| {
                let color = if *v >= 0.0 {
                    RGBColor(178, 24, 43)
                } else {
                    RGBColor(33, 102, 172)
                };
                let y = i as f64;
                Rectangle::new([(0.0, y - 0.35), (*v as f64, y + 0.35)], color.filled())
            }))
            .map_err(plot_err)?;
        Ok(())
    })
}

/// A scatter of (x, y) points in named groups (one colour each, with a legend) and the
/// diagonal y = x: e.g. attribution estimates against actual patching values.
pub fn scatter(
    path: &Path,
    title: &str,
    groups: &[(String, Vec<(f32, f32)>)],
    x_desc: &str,
    y_desc: &str,
) -> Result<()> {
    ensure_font();
    let all = || {
        groups
            .iter()
            .flat_map(|(_, v)| v)
            .flat_map(|&(x, y)| [x, y])
    };
    if all().next().is_none() || all().any(|v| !v.is_finite()) {
        return Err(Error::Invalid(
            "a scatter plot needs at least one point, all finite".into(),
        ));
    }
    let (lo, hi) = all().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    let pad = ((hi - lo) * 0.06).max(1e-3);
    let range = (lo - pad) as f64..(hi + pad) as f64;
    write_png(path, (900, 820), |root| {
        let mut chart = titled(root, title, (50, 70))
            .build_cartesian_2d(range.clone(), range.clone())
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 15))
            .draw()
            .map_err(plot_err)?;
        chart
            .draw_series(LineSeries::new(
                [(range.start, range.start), (range.end, range.end)],
                BLACK.mix(0.4).stroke_width(1),
            ))
            .map_err(plot_err)?
            .label("y = x")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.mix(0.4)));
        for (i, (name, points)) in groups.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(
                    points.iter().map(|&(x, y)| {
                        Circle::new((x as f64, y as f64), 4, color.mix(0.7).filled())
                    }),
                )
                .map_err(plot_err)?
                .label(name.as_str())
                .legend(move |(x, y)| Circle::new((x + 10, y), 5, color.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(plot_err)?;
        Ok(())
    })
}

/// Attention patterns as labelled thumbnails in a grid, `cols` per row (CircuitsVis's
/// `attention_heads` as one image): each `(label, pattern)` with pattern [query][key] in 0..1,
/// drawn pixel by pixel (white 0, red 1, grey above the diagonal).
pub fn pattern_grid(
    path: &Path,
    title: &str,
    thumbs: &[(String, Vec<Vec<f32>>)],
    cols: usize,
) -> Result<()> {
    ensure_font();
    if thumbs.is_empty() || cols == 0 {
        return Err(Error::Invalid(
            "a pattern grid needs at least one pattern".into(),
        ));
    }
    let (size, pad, caption) = (150u32, 14u32, 20u32);
    let rows = thumbs.len().div_ceil(cols) as u32;
    let width = (cols as u32 * (size + pad) + pad).max(10 * title.chars().count() as u32 + 2 * pad);
    let height = 50 + rows * (size + pad + caption);
    write_png(path, (width, height), |root| {
        root.draw(&Text::new(title, (pad as i32, 12), ("sans-serif", 20)))
            .map_err(plot_err)?;
        for (i, (label, p)) in thumbs.iter().enumerate() {
            let (r, c) = ((i / cols) as u32, (i % cols) as u32);
            let x0 = (pad + c * (size + pad)) as i32;
            let y0 = (50 + r * (size + pad + caption)) as i32;
            root.draw(&Text::new(label.as_str(), (x0, y0), ("sans-serif", 15)))
                .map_err(plot_err)?;
            let n = p.len().max(1);
            let top = y0 + caption as i32;
            for py in 0..size {
                let q = (py as usize * n) / size as usize;
                for px in 0..size {
                    let k = (px as usize * n) / size as usize;
                    let color = match (p.get(q).and_then(|row| row.get(k)), k > q) {
                        (_, true) | (None, _) => RGBColor(235, 235, 235),
                        (Some(&v), false) => diverging_color(v.clamp(0.0, 1.0), -1.0, 1.0),
                    };
                    root.draw_pixel((x0 + px as i32, top + py as i32), &color)
                        .map_err(plot_err)?;
                }
            }
            root.draw(&Rectangle::new(
                [(x0 - 1, top - 1), (x0 + size as i32, top + size as i32)],
                BLACK.mix(0.4),
            ))
            .map_err(plot_err)?;
        }
        Ok(())
    })
}

/// Vertical bars grouped by category: for each category (x axis, e.g. a token), one bar per
/// series (e.g. a temperature), with a legend.
pub fn grouped_bars(
    path: &Path,
    title: &str,
    categories: &[String],
    series: &[(String, Vec<f32>)],
    y_desc: &str,
) -> Result<()> {
    ensure_font();
    let n = categories.len();
    if n == 0 || series.is_empty() || series.iter().any(|(_, v)| v.len() != n) {
        return Err(Error::Invalid(format!(
            "grouped bars need {n} values per series and at least one series"
        )));
    }
    let (_, hi) = finite_range(
        series
            .iter()
            .flat_map(|(_, v)| v.iter().copied())
            .chain([0.0]),
    );
    let k = series.len() as f64;
    write_png(path, (1000, 560), |root| {
        let mut chart = titled(root, title, (60, 70))
            .build_cartesian_2d(-0.5..n as f64 - 0.5, 0.0..(hi * 1.1).max(1e-6) as f64)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n + 1)
            .x_label_formatter(&|x| label_at(categories, *x))
            .x_label_style(("sans-serif", 14))
            .y_desc(y_desc)
            .axis_desc_style(("sans-serif", 15))
            .draw()
            .map_err(plot_err)?;
        for (s, (name, values)) in series.iter().enumerate() {
            let color = Palette99::pick(s).to_rgba();
            let w = 0.8 / k;
            chart
                .draw_series(values.iter().enumerate().map(|(i, &v)| {
                    let x0 = i as f64 - 0.4 + s as f64 * w;
                    Rectangle::new([(x0, 0.0), (x0 + w * 0.9, v as f64)], color.filled())
                }))
                .map_err(plot_err)?
                .label(name.as_str())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 16, y + 5)], color.filled())
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(plot_err)?;
        Ok(())
    })
}

/// Labelled points, e.g. tokens in a 2-D projection of their embeddings.
pub fn labelled_points(
    path: &Path,
    title: &str,
    points: &[(String, f32, f32)],
    x_desc: &str,
    y_desc: &str,
) -> Result<()> {
    ensure_font();
    if points.is_empty() || points.iter().any(|p| !(p.1.is_finite() && p.2.is_finite())) {
        return Err(Error::Invalid(
            "labelled points need at least one point, all finite".into(),
        ));
    }
    let range = |f: fn(&(String, f32, f32)) -> f32| {
        let (lo, hi) = finite_range(points.iter().map(f));
        let pad = ((hi - lo) * 0.12).max(1e-3);
        (lo - pad) as f64..(hi + pad) as f64
    };
    let (xr, yr) = (range(|p| p.1), range(|p| p.2));
    write_png(path, (1000, 760), |root| {
        let mut chart = titled(root, title, (50, 70))
            .build_cartesian_2d(xr, yr)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 15))
            .draw()
            .map_err(plot_err)?;
        let color = RGBColor(33, 102, 172);
        chart
            .draw_series(points.iter().map(|(label, x, y)| {
                EmptyElement::at((*x as f64, *y as f64))
                    + Circle::new((0, 0), 5, color.filled())
                    + Text::new(label.clone(), (7, -7), ("sans-serif", 15))
            }))
            .map_err(plot_err)?;
        Ok(())
    })
}

/// Texts with each token on a background coloured by its value (red positive, blue negative,
/// one scale for the image), wrapped to the image width: the PNG form of the token-value view.
/// Each section is (heading, tokens, values).
pub fn colored_tokens(
    path: &Path,
    title: &str,
    sections: &[(String, Vec<String>, Vec<f32>)],
) -> Result<()> {
    ensure_font();
    if sections.is_empty() || sections.iter().any(|(_, t, v)| t.len() != v.len()) {
        return Err(Error::Invalid(
            "coloured tokens need sections with one value per token".into(),
        ));
    }
    let (lo, hi) = finite_range(sections.iter().flat_map(|(_, _, v)| v.iter().copied()));
    let lim = lo.abs().max(hi.abs()).max(1e-9);
    let (width, line, margin) = (1000i32, 26i32, 16i32);
    let font = ("sans-serif", 17);
    // Lay out first (text widths from the font), then size the image to fit.
    let mut pixel = [0u8; 3];
    let probe = BitMapBackend::with_buffer(&mut pixel, (1, 1)).into_drawing_area();
    let style: TextStyle = font.into();
    let mut boxes = vec![]; // (x, y, w, text, value) per token
    let mut heads = vec![]; // (y, heading)
    let mut y = 50;
    for (heading, tokens, values) in sections {
        heads.push((y, heading.clone()));
        y += line;
        let mut x = margin;
        for (t, &v) in tokens.iter().zip(values) {
            let shown = t.replace('\n', "\\n");
            let w = probe
                .estimate_text_size(&shown, &style)
                .map_err(plot_err)?
                .0 as i32
                + 2;
            if x + w > width - margin {
                x = margin;
                y += line;
            }
            boxes.push((x, y, w, shown, v));
            x += w;
        }
        y += line + 12;
    }
    drop(probe);
    write_png(path, (width as u32, y as u32 + 10), |root| {
        root.draw(&Text::new(title, (margin, 12), ("sans-serif", 20)))
            .map_err(plot_err)?;
        for (hy, h) in &heads {
            root.draw(&Text::new(
                h.as_str(),
                (margin, *hy),
                ("sans-serif", 15).into_font().color(&RGBColor(90, 90, 90)),
            ))
            .map_err(plot_err)?;
        }
        for (x, y, w, t, v) in &boxes {
            let c = diverging_color(*v, -lim, lim);
            root.draw(&Rectangle::new(
                [(*x, *y), (x + w, y + line - 4)],
                c.filled(),
            ))
            .map_err(plot_err)?;
            root.draw(&Text::new(t.as_str(), (x + 1, y + 2), font))
                .map_err(plot_err)?;
        }
        Ok(())
    })
}

/// The frame of a one-chart plot on `root`: `title` above, and room for the axes' labels below
/// (`x_area` pixels) and on the left (`y_area`).
fn titled<'a, 'b>(
    root: &'a DrawingArea<BitMapBackend<'b>, plotters::coord::Shift>,
    title: &str,
    (x_area, y_area): (u32, u32),
) -> ChartBuilder<'a, 'b, BitMapBackend<'b>> {
    let mut chart = ChartBuilder::on(root);
    chart
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(x_area)
        .y_label_area_size(y_area);
    chart
}

/// Draws a white PNG of `size` with `draw` and writes it to `path` atomically (through a
/// temporary `.png`: the encoder picks the format from the extension).
fn write_png(
    path: &Path,
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<BitMapBackend, plotters::coord::Shift>) -> Result<()>,
) -> Result<()> {
    hooklens::atomic::atomic_write_with(path, |tmp| {
        let tmp_png = tmp.with_extension("png");
        {
            let root = BitMapBackend::new(&tmp_png, size).into_drawing_area();
            root.fill(&WHITE).map_err(plot_err)?;
            draw(&root)?;
            root.present().map_err(plot_err)?;
        }
        std::fs::rename(&tmp_png, tmp).map_err(|e| Error::io(tmp, e))
    })
}

/// The label of the cell centred on `x` (cells sit on whole numbers), or nothing between cells.
fn label_at(labels: &[String], x: f64) -> String {
    let i = x.round();
    if (x - i).abs() > 0.01 || i < 0.0 || i as usize >= labels.len() {
        return String::new();
    }
    labels[i as usize].clone()
}

/// The `n` (label, value) pairs of largest |value|, largest first: what a "top" bar chart shows.
pub fn largest(items: impl IntoIterator<Item = (String, f32)>, n: usize) -> Vec<(String, f32)> {
    let mut v: Vec<(String, f32)> = items.into_iter().collect();
    v.sort_by(|x, y| y.1.abs().total_cmp(&x.1.abs()));
    v.truncate(n);
    v
}
