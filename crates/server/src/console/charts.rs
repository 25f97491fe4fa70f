//! Charts drawn by the server as inline SVG. Every bar carries its number as text and every
//! segment its name, so nothing is told by colour alone.

use maud::{Markup, html};

/// Horizontal bars, one per `(label, value)`, longest = full width.
pub(crate) fn bar_chart(title: &str, rows: &[(String, u64)], unit: (&str, &str)) -> Markup {
    let unit = |n: u64| if n == 1 { unit.0 } else { unit.1 };
    let max = rows.iter().map(|(_, v)| *v).max().unwrap_or(0).max(1);
    let row_height = 28;
    let height = row_height * rows.len().max(1);
    let summary = rows
        .iter()
        .map(|(label, value)| format!("{label}: {value} {}", unit(*value)))
        .collect::<Vec<_>>()
        .join(", ");
    html! {
        figure.chart {
            figcaption { (title) }
            svg role="img" aria-label=(format!("{title}. {summary}")) viewBox=(format!("0 0 600 {height}")) width="100%" preserveAspectRatio="xMinYMin meet" {
                @for (i, (label, value)) in rows.iter().enumerate() {
                    @let y = i * row_height;
                    @let width = (*value as f64 / max as f64) * 300.0;
                    text x="0" y=(y + 19) class="label" { (label) }
                    rect x="150" y=(y + 5) width=(format!("{width:.1}")) height="18" class={ "bar bar" (i % 6) } {}
                    text x=(format!("{:.1}", 156.0 + width)) y=(y + 19) class="value" { (value) " " (unit(*value)) }
                }
            }
        }
    }
}

/// One stacked bar of `total`, split into named segments; the legend repeats every count.
pub(crate) fn progress(label: &str, segments: &[(&str, u64)], total: u64) -> Markup {
    let total = total.max(1);
    let mut x = 0.0;
    let placed: Vec<(&str, u64, f64, f64)> = segments
        .iter()
        .map(|(name, n)| {
            let width = (*n as f64 / total as f64) * 300.0;
            let start = x;
            x += width;
            (*name, *n, start, width)
        })
        .collect();
    let legend = segments
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(name, n)| format!("{n} {}", name.replace('_', " ")))
        .collect::<Vec<_>>()
        .join(" · ");
    html! {
        div.progress {
            svg role="img" aria-label=(format!("{label}: {legend}")) viewBox="0 0 300 14" width="100%" height="14" preserveAspectRatio="none" {
                rect x="0" y="0" width="300" height="14" class="track" {}
                @for (name, n, start, width) in &placed {
                    rect x=(format!("{start:.2}")) y="0" width=(format!("{width:.2}")) height="14" class={ "seg " (name) } {
                        title { (n) " " (name.replace('_', " ")) }
                    }
                }
            }
            span.legend { (label) ": " (if legend.is_empty() { "nothing yet".to_owned() } else { legend.clone() }) }
        }
    }
}
