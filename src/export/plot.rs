//! PNG plots (plotters, bitmap backend) with an embedded font, so they render anywhere.

use crate::error::{Error, Result};
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

/// A labelled heatmap of `values[row][col]` with a colour bar, written atomically to `path`.
pub fn heatmap(
    path: &Path,
    title: &str,
    values: &[Vec<f32>],
    row_labels: &[String],
    col_labels: &[String],
    x_desc: &str,
    y_desc: &str,
) -> Result<()> {
    ensure_font();
    let rows = values.len();
    let cols = values.first().map_or(0, Vec::len);
    if rows == 0 || cols == 0 || row_labels.len() != rows || col_labels.len() != cols {
        return Err(Error::Invalid(format!(
            "heatmap needs {rows}x{cols} values with matching labels"
        )));
    }
    let (lo, hi) = values
        .iter()
        .flatten()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let (lo, hi) = if hi > lo {
        (lo, hi)
    } else {
        (lo - 0.5, lo + 0.5)
    };
    let longest_of =
        |labels: &[String]| labels.iter().map(|l| l.chars().count()).max().unwrap_or(1) as u32;
    let (longest, longest_col) = (longest_of(row_labels), longest_of(col_labels));
    let plot_width = (cols as u32 * 60).clamp(480, 1600);
    // Column labels wider than their cell are drawn vertically, so that they never overlap.
    let rotate = 8 * longest_col > plot_width / cols as u32;
    let x_label_area = if rotate { 8 * longest_col + 40 } else { 48 };
    let width = plot_width + 8 * longest + 140;
    let height = (rows as u32 * 40).clamp(320, 1200) + 72 + x_label_area;
    super::atomic_write_with(path, |tmp| {
        let tmp_png = tmp.with_extension("png");
        {
            let root = BitMapBackend::new(&tmp_png, (width, height)).into_drawing_area();
            root.fill(&WHITE).map_err(plot_err)?;
            let (main, bar) = root.split_horizontally(width - 110);
            let mut chart = ChartBuilder::on(&main)
                .caption(title, ("sans-serif", 22))
                .margin(12)
                .x_label_area_size(x_label_area)
                .y_label_area_size(8 * longest + 30)
                .build_cartesian_2d(-0.5..cols as f64 - 0.5, rows as f64 - 0.5..-0.5)
                .map_err(plot_err)?;
            chart
                .configure_mesh()
                .disable_mesh()
                .x_desc(x_desc)
                .y_desc(y_desc)
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
                        let color = ViridisRGB::get_color_normalized(v, lo, hi);
                        // Cell (r, c) is centred on (c, r), where its labels sit.
                        let (x, y) = (c as f64, r as f64);
                        Rectangle::new([(x - 0.5, y - 0.5), (x + 0.5, y + 0.5)], color.filled())
                    })
                }))
                .map_err(plot_err)?;
            if rotate {
                // Rotated a quarter turn about their start, so each label hangs below its column.
                let style = TextStyle::from(
                    ("sans-serif", 14)
                        .into_font()
                        .transform(FontTransform::Rotate90),
                )
                .pos(Pos::new(HPos::Left, VPos::Center));
                for (c, label) in col_labels.iter().enumerate() {
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
                Rectangle::new(
                    [(0.0, a), (1.0, b)],
                    ViridisRGB::get_color_normalized(a as f32, lo, hi).filled(),
                )
            }))
            .map_err(plot_err)?;
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
