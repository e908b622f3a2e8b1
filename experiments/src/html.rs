//! Self-contained HTML pages: the JavaScript is ours and the data inline, so a page opens
//! anywhere, offline, and fetches nothing at view time.

use hooklens::error::{Error, Result};

/// The attention view (`attention_view.html`): a layer x head selector, pattern matrices drawn
/// on a canvas (one pixel a cell: usable at 500 tokens), and the tokens as text coloured by
/// where the hovered token attends and what attends to it. `heads` lists the (layer, head) whose
/// `patterns` (each [n, n], query-major, n = tokens.len()) the page holds; the selector shows
/// all `n_layers` x `n_heads`, the others greyed out. The first head is shown on opening.
pub fn attention_page(
    title: &str,
    tokens: &[String],
    (n_layers, n_heads): (usize, usize),
    heads: &[(usize, usize)],
    patterns: &[Vec<f32>],
) -> Result<String> {
    let n = tokens.len();
    if heads.is_empty()
        || heads.len() != patterns.len()
        || patterns.iter().any(|p| p.len() != n * n)
    {
        return Err(Error::Invalid(format!(
            "the attention page needs one {n} x {n} pattern per head ({} heads, {} patterns)",
            heads.len(),
            patterns.len()
        )));
    }
    let bytes: Vec<u8> = patterns
        .iter()
        .flatten()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let data = serde_json::json!({
        "title": title,
        "tokens": tokens,
        "n_layers": n_layers,
        "n_heads": n_heads,
        "heads": heads,
        "patterns": base64(&bytes),
    });
    Ok(fill(include_str!("attention_view.html"), title, &data))
}

/// One text of a token-value page: its tokens coloured by a value each (`None`: no value,
/// uncoloured), with an optional outlined `peak` token and a note under the heading.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TokenValues {
    pub heading: String,
    pub note: Option<String>,
    pub tokens: Vec<String>,
    pub values: Vec<Option<f32>>,
    pub peak: Option<usize>,
}

/// The token-value view (`token_values.html`), as CircuitsVis's `colored_tokens`: each
/// section's text with every token coloured by its value on one scale for the page (red
/// positive, blue negative), the value shown on hover.
pub fn token_values_page(title: &str, sections: &[TokenValues]) -> Result<String> {
    if let Some(s) = sections.iter().find(|s| s.tokens.len() != s.values.len()) {
        return Err(Error::Invalid(format!(
            "{}: {} tokens but {} values",
            s.heading,
            s.tokens.len(),
            s.values.len()
        )));
    }
    let data = serde_json::json!({ "title": title, "sections": sections });
    Ok(fill(include_str!("token_values.html"), title, &data))
}

/// The unit dashboards (`dashboard_view.html`), as Neuronpedia shows a neuron: a unit list
/// (sortable, filterable), and for the chosen unit its histogram, its logit effects (when
/// `effects` has them) and its top examples with each token coloured by the unit's
/// activation, the value on hover. Token texts come from `tok`, inline for the tokens shown.
/// With `similar` (an SAE's: each unit's nearest features by decoder cosine) the units are
/// called features and each lists its nearest, a link where the page holds it.
pub fn dashboard_page(
    title: &str,
    subtitle: &str,
    hook: &str,
    dash: &[hooklens::analysis::dashboards::UnitDashboard],
    effects: Option<&hooklens::analysis::dashboards::LogitEffects>,
    similar: Option<&[Vec<(u32, f32)>]>,
    tok: &hooklens::Tokenizer,
) -> Result<String> {
    let mut text = std::collections::BTreeMap::new();
    let mut name = |id: u32| -> Result<()> {
        if let std::collections::btree_map::Entry::Vacant(e) = text.entry(id) {
            e.insert(tok.decode(&[id])?);
        }
        Ok(())
    };
    let mut units = Vec::with_capacity(dash.len());
    for (i, d) in dash.iter().enumerate() {
        let effect = effects.map(|e| &e[i]);
        for &(id, _) in effect.iter().flat_map(|(up, down)| up.iter().chain(down)) {
            name(id)?;
        }
        let ex: Vec<serde_json::Value> = d
            .examples
            .iter()
            .map(|e| {
                e.window.iter().try_for_each(|&(id, _)| name(id))?;
                Ok(serde_json::json!({
                    "a": e.activation, "ctx": e.context, "pos": e.position, "start": e.window_start,
                    "ids": e.window.iter().map(|w| w.0).collect::<Vec<_>>(),
                    "vals": e.window.iter().map(|w| w.1).collect::<Vec<_>>(),
                }))
            })
            .collect::<Result<_>>()?;
        units.push(serde_json::json!({
            "unit": d.unit, "tokens": d.tokens, "max": d.max, "min": d.min, "mean": d.mean, "frac": d.frac_active,
            "hist": { "lo": d.histogram.lo, "hi": d.histogram.hi, "counts": d.histogram.counts },
            "up": effect.map(|e| &e.0), "down": effect.map(|e| &e.1), "ex": ex,
            "similar": similar.map(|s| &s[i]),
        }));
    }
    let data = serde_json::json!({
        "title": title, "subtitle": subtitle, "hook": hook, "units": units, "text": text,
        "kind": if similar.is_some() { "feature" } else { "unit" },
    });
    Ok(fill(include_str!("dashboard_view.html"), title, &data))
}

/// A page template with its title and inline JSON data filled in.
fn fill(template: &str, title: &str, data: &serde_json::Value) -> String {
    // Inside <script>, a "</" in a token would end the element: JSON allows "<\/".
    let data = data.to_string().replace("</", "<\\/");
    template
        .replace("__TITLE__", &escape(title))
        .replace("__DATA__", &data)
}

/// Text for HTML element content.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Standard base64 with padding (what the page's `atob` reads).
fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let v = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            match i <= chunk.len() {
                true => out.push(A[(v >> (18 - 6 * i) & 63) as usize] as char),
                false => out.push('='),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(&[0xff, 0xfe, 0x00, 0x01]), "//4AAQ==");
    }

    #[test]
    fn the_page_holds_its_data_and_no_closing_script_tag_from_tokens() {
        let tokens = vec!["a".to_string(), "</script>".to_string()];
        let page = attention_page(
            "t <x>",
            &tokens,
            (1, 2),
            &[(0, 1)],
            &[vec![1.0, 0.0, 0.5, 0.5]],
        )
        .unwrap();
        assert!(page.contains("<title>t &lt;x&gt;</title>"));
        assert_eq!(page.matches("</script>").count(), 2, "only the page's own");
        assert!(page.contains(&base64(
            &[1f32, 0., 0.5, 0.5].map(f32::to_le_bytes).concat()
        )));
        assert!(!page.contains("http"), "nothing fetched");
        assert!(attention_page("t", &tokens, (1, 2), &[(0, 1)], &[vec![1.0]]).is_err());
    }
}
