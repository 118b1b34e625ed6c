//! Inline SVG charts: no scripts, no external assets, every label escaped.

use std::fmt::Write as _;

use super::render::{esc, fmt_ms};

pub const FAILURE: &str = "#d64545";
/// Colours of the waterfall's phases.
pub const PHASES: [&str; 12] = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#86bcb6", "#8cd17d", "#bab0ac",
];
/// Series colours for steps (colour-blind friendly, Okabe-Ito).
pub const PALETTE: [&str; 8] = [
    "#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#7a6f00", "#6a3d9a",
];

/// A latency sparkline: one point per run (oldest left), failed runs as red dots.
/// `points` are (duration ms, failed).
pub fn sparkline(points: &[(f32, bool)], width: u32, height: u32) -> String {
    let mut s = format!(
        r#"<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="latency of the last {} runs">"#,
        points.len()
    );
    if points.is_empty() {
        s.push_str("</svg>");
        return s;
    }
    let max = points.iter().map(|p| p.0).fold(0.0f32, f32::max).max(1.0);
    let pad = 2.0;
    let (w, h) = (width as f32 - 2.0 * pad, height as f32 - 2.0 * pad);
    let x = |i: usize| {
        if points.len() == 1 {
            pad + w / 2.0
        } else {
            pad + w * i as f32 / (points.len() - 1) as f32
        }
    };
    let y = |v: f32| pad + h - h * (v.max(0.0) / max);
    let line: Vec<String> = points
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{:.1},{:.1}", x(i), y(p.0)))
        .collect();
    let _ = write!(
        s,
        r##"<polyline fill="none" stroke="#55606e" stroke-width="1.3" points="{}"/>"##,
        line.join(" ")
    );
    for (i, p) in points.iter().enumerate().filter(|(_, p)| p.1) {
        let _ = write!(
            s,
            r#"<circle cx="{:.1}" cy="{:.1}" r="2.2" fill="{FAILURE}"/>"#,
            x(i),
            y(p.0)
        );
    }
    let (i, last) = (points.len() - 1, points[points.len() - 1]);
    if !last.1 {
        let _ = write!(
            s,
            r##"<circle cx="{:.1}" cy="{:.1}" r="1.8" fill="#55606e"/>"##,
            x(i),
            y(last.0)
        );
    }
    s.push_str("</svg>");
    s
}

/// A line chart of several series over the same runs (x: run index, y: ms).
/// Series are (label, colour, values; `None` where a run lacks the series).
pub fn duration_chart(
    series: &[(String, &str, Vec<Option<f32>>)],
    times: (&str, &str),
    width: u32,
    height: u32,
) -> String {
    let (left, right, top, bottom) = (56.0, 12.0, 10.0, 26.0);
    let (w, h) = (width as f32 - left - right, height as f32 - top - bottom);
    let n = series.iter().map(|s| s.2.len()).max().unwrap_or(0);
    let max = series
        .iter()
        .flat_map(|s| s.2.iter().flatten())
        .copied()
        .fold(0.0f32, f32::max);
    let max = nice_ceiling(max.max(1.0));
    let mut s = format!(
        r#"<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="durations of the last {n} runs">"#
    );
    for k in 0..=4 {
        let v = max * k as f32 / 4.0;
        let yy = top + h - h * k as f32 / 4.0;
        let _ = write!(
            s,
            r##"<line x1="{left}" x2="{:.1}" y1="{yy:.1}" y2="{yy:.1}" stroke="#e3e6ea"/><text x="{:.1}" y="{:.1}" text-anchor="end" class="axis">{}</text>"##,
            left + w,
            left - 6.0,
            yy + 4.0,
            esc(&fmt_ms(v))
        );
    }
    let _ = write!(
        s,
        r#"<text x="{left}" y="{:.1}" class="axis">{}</text><text x="{:.1}" y="{:.1}" text-anchor="end" class="axis">{}</text>"#,
        height as f32 - 6.0,
        esc(times.0),
        left + w,
        height as f32 - 6.0,
        esc(times.1)
    );
    let x = |i: usize| {
        if n <= 1 {
            left + w / 2.0
        } else {
            left + w * i as f32 / (n - 1) as f32
        }
    };
    for (k, (label, colour, values)) in series.iter().enumerate() {
        let mut path = String::new();
        let mut pen_down = false;
        for (i, v) in values.iter().enumerate() {
            match v {
                Some(v) => {
                    let _ = write!(
                        path,
                        "{}{:.1},{:.1} ",
                        if pen_down { "L" } else { "M" },
                        x(i),
                        top + h - h * (v / max).min(1.0)
                    );
                    pen_down = true;
                }
                None => pen_down = false,
            }
        }
        let width = if k == 0 { 2.2 } else { 1.3 };
        let _ = write!(
            s,
            r#"<path d="{}" fill="none" stroke="{colour}" stroke-width="{width}" vector-effect="non-scaling-stroke"><title>{}</title></path>"#,
            path.trim_end(),
            esc(label)
        );
    }
    s.push_str("</svg>");
    s
}

/// A step waterfall of one run: one row per step at its offset, its phases as segments.
pub struct WaterfallStep<'a> {
    pub name: &'a str,
    pub offset_ms: f32,
    pub duration_ms: f32,
    pub failed: bool,
    pub phases: &'a [(&'static str, f32)],
}

pub fn waterfall(
    steps: &[WaterfallStep],
    phase_colour: &dyn Fn(&str) -> &'static str,
    width: u32,
) -> String {
    let (label_w, row, top) = (190.0, 24.0, 4.0);
    let total = steps
        .iter()
        .map(|s| s.offset_ms + s.duration_ms)
        .fold(0.0f32, f32::max)
        .max(1.0);
    let height = top * 2.0 + row * steps.len() as f32 + 18.0;
    let w = width as f32 - label_w - 70.0;
    let x = |ms: f32| label_w + w * (ms / total).clamp(0.0, 1.0);
    let mut s = format!(
        r#"<svg class="waterfall" width="100%" viewBox="0 0 {width} {height:.0}" role="img" aria-label="step waterfall">"#
    );
    for (i, st) in steps.iter().enumerate() {
        let y = top + row * i as f32;
        let (x0, x1) = (
            x(st.offset_ms),
            x(st.offset_ms + st.duration_ms).max(x(st.offset_ms) + 1.5),
        );
        let name = if st.name.chars().count() > 26 {
            format!("{}…", st.name.chars().take(25).collect::<String>())
        } else {
            st.name.to_string()
        };
        let _ = write!(
            s,
            r#"<text x="0" y="{:.1}" class="label{}">{}</text>"#,
            y + 15.0,
            if st.failed { " bad" } else { "" },
            esc(&name)
        );
        let _ = write!(
            s,
            r##"<rect x="{x0:.1}" y="{:.1}" width="{:.1}" height="14" fill="#d5dae0" rx="2"><title>{} {}</title></rect>"##,
            y + 4.0,
            x1 - x0,
            esc(st.name),
            esc(&fmt_ms(st.duration_ms))
        );
        // Phases that add up within the step follow each other (dns, connect, tls, …); otherwise they
        // are times since the step started (navigation marks like fcp, load): one thin bar each.
        let sum: f32 = st.phases.iter().map(|p| p.1).sum();
        let sequential = sum <= st.duration_ms * 1.02 + 1.0;
        let lane = if sequential || st.phases.is_empty() {
            14.0
        } else {
            14.0 / st.phases.len() as f32
        };
        let mut at = st.offset_ms;
        for (k, (p, ms)) in st.phases.iter().enumerate() {
            let (start, top) = if sequential {
                (at, y + 4.0)
            } else {
                (st.offset_ms, y + 4.0 + lane * k as f32)
            };
            let (px0, px1) = (x(start), x((start + ms).min(st.offset_ms + st.duration_ms)));
            if px1 > px0 {
                let _ = write!(
                    s,
                    r#"<rect x="{px0:.1}" y="{top:.1}" width="{:.1}" height="{lane:.1}" fill="{}"><title>{} {}</title></rect>"#,
                    px1 - px0,
                    phase_colour(p),
                    esc(p),
                    esc(&fmt_ms(*ms))
                );
            }
            at += ms;
        }
        if st.failed {
            let _ = write!(
                s,
                r#"<rect x="{x0:.1}" y="{:.1}" width="{:.1}" height="14" fill="none" stroke="{FAILURE}" stroke-width="2" rx="2"/>"#,
                y + 4.0,
                x1 - x0
            );
        }
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" class="axis">{}</text>"#,
            x1 + 5.0,
            y + 15.0,
            esc(&fmt_ms(st.duration_ms))
        );
    }
    let _ = write!(
        s,
        r#"<text x="{label_w}" y="{:.1}" class="axis">0</text><text x="{:.1}" y="{:.1}" text-anchor="end" class="axis">{}</text>"#,
        height - 4.0,
        label_w + w,
        height - 4.0,
        esc(&fmt_ms(total))
    );
    s.push_str("</svg>");
    s
}

/// The first of 1, 1.5, 2, 2.5, 3, 4, 5, 6, 8 × 10^k at or above `v`, so axis labels are round.
fn nice_ceiling(v: f32) -> f32 {
    let mag = 10f32.powf(v.log10().floor());
    [1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|c| *c >= v)
        .unwrap_or(10.0 * mag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparkline_scales_points_and_marks_failures() {
        let s = sparkline(&[(100.0, false), (200.0, true), (50.0, false)], 100, 20);
        assert!(s.starts_with("<svg") && s.ends_with("</svg>"));
        // Highest value at the top (y = padding), x spread across the width.
        assert!(s.contains(r#"points="2.0,10.0 50.0,2.0 98.0,14.0""#), "{s}");
        assert_eq!(s.matches(&format!(r#"fill="{FAILURE}""#)).count(), 1);
        assert!(s.contains(r#"cx="50.0" cy="2.0""#));
        // No runs, one run, zero durations: still valid, never NaN.
        assert!(!sparkline(&[], 100, 20).contains("NaN"));
        let one = sparkline(&[(0.0, false)], 100, 20);
        assert!(
            !one.contains("NaN") && one.contains("points=\"50.0,18.0\"") && one.contains("<circle"),
            "{one}"
        );
    }

    #[test]
    fn charts_escape_their_labels() {
        let c = duration_chart(
            &[(
                "<b>step</b>".into(),
                "#000",
                vec![Some(1.0), None, Some(3.0)],
            )],
            ("<t0>", "t1"),
            600,
            200,
        );
        assert!(
            !c.contains("<b>") && c.contains("&lt;b&gt;step&lt;/b&gt;") && c.contains("&lt;t0&gt;")
        );
        assert!(
            c.contains("M") && c.matches('M').count() >= 2,
            "a gap starts a new segment: {c}"
        );
        let w = waterfall(
            &[WaterfallStep {
                name: "a<script>",
                offset_ms: 0.0,
                duration_ms: 10.0,
                failed: true,
                phases: &[("connect", 4.0)],
            }],
            &|_| "#123456",
            600,
        );
        assert!(!w.contains("<script>") && w.contains("a&lt;script&gt;"));
        assert!(w.contains("#123456") && w.contains(FAILURE));
    }

    #[test]
    fn axis_tops_are_round() {
        assert_eq!(nice_ceiling(1.0), 1.0);
        assert_eq!(nice_ceiling(340.0), 400.0);
        assert_eq!(nice_ceiling(1200.0), 1500.0);
        assert_eq!(nice_ceiling(24_710.0), 25_000.0);
        assert_eq!(nice_ceiling(9.0), 10.0);
    }
}
