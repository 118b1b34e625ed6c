//! One SVG timeline per fault: a row per (agent, journey) with each run as a
//! coloured mark, and vertical lines for inject, know, detect, heal, recover.

use std::fmt::Write as _;

use super::report::FaultReport;

const W: f64 = 1100.0;
const LEFT: f64 = 230.0;
const RIGHT: f64 = 30.0;
const ROW: f64 = 24.0;
const LANE: f64 = 16.0;
const MAX_ROWS: usize = 18;

use crate::vocab::escape_markup as esc;

fn nice_step(span_s: f64) -> f64 {
    let raw = span_s / 10.0;
    [
        1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
    ]
    .into_iter()
    .find(|s| *s >= raw)
    .unwrap_or(3600.0)
}

pub fn timeline(f: &FaultReport) -> String {
    let ti = f.injected_unix_ms.unwrap_or(f.ended_unix_ms);
    let th = f.healed_unix_ms.unwrap_or(f.ended_unix_ms);
    // Start a little before injection so the healthy runs before it show.
    let lead = ((f.ended_unix_ms - ti) / 8).max(5_000);
    let t0 = f
        .runs
        .iter()
        .map(|r| r.run.started_unix_ms)
        .min()
        .unwrap_or(ti)
        .max(ti - lead);
    let t1 = f.ended_unix_ms + 1_000;
    let span = (t1 - t0).max(1) as f64;
    let x = |t: i64| LEFT + (t - t0) as f64 / span * (W - LEFT - RIGHT);

    // Rows: expected journeys first, then any other journey that failed, then the rest.
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut add = |a: &str, j: &str| {
        if !rows.iter().any(|(x, y)| x == a && y == j) {
            rows.push((a.to_string(), j.to_string()));
        }
    };
    let mut sorted: Vec<_> = f.runs.iter().collect();
    sorted.sort_by(|a, b| (&a.agent, &a.run.journey).cmp(&(&b.agent, &b.run.journey)));
    for r in sorted
        .iter()
        .filter(|r| f.expected_journeys.contains(&r.run.journey))
    {
        add(&r.agent, &r.run.journey);
    }
    for r in sorted.iter().filter(|r| r.run.outcome == "failure") {
        add(&r.agent, &r.run.journey);
    }
    for r in &sorted {
        add(&r.agent, &r.run.journey);
    }
    let hidden = rows.len().saturating_sub(MAX_ROWS);
    rows.truncate(MAX_ROWS);

    // Markers, placed in label lanes so their texts never overlap.
    let mut marks: Vec<(i64, &str, String, &str)> = Vec::new();
    let rel = |t: i64| format!("{:+.1}s", (t - ti) as f64 / 1000.0);
    marks.push((ti, "#c62828", format!("inject {}", rel(ti)), ""));
    if let Some(k) = f.time_to_know_s {
        let t = ti + (k * 1000.0) as i64;
        marks.push((t, "#ef6c00", format!("know {}", rel(t)), "6,4"));
    }
    if let Some(t) = f.prometheus.as_ref().and_then(|d| d.after_s) {
        let t = ti + (t * 1000.0) as i64;
        marks.push((t, "#6a1b9a", format!("alert fired {}", rel(t)), "6,4"));
    }
    if let Some(t) = f.alertmanager.as_ref().and_then(|d| d.after_s) {
        let t = ti + (t * 1000.0) as i64;
        marks.push((t, "#4e342e", format!("paged {}", rel(t)), "6,4"));
    }
    if f.healed_unix_ms.is_some() {
        marks.push((th, "#1565c0", format!("heal {}", rel(th)), ""));
    }
    if let Some(r) = f.time_to_recover_s {
        let t = th + (r * 1000.0) as i64;
        marks.push((t, "#2e7d32", format!("recovered {}", rel(t)), "6,4"));
    }
    let resolved = f
        .alertmanager
        .as_ref()
        .or(f.prometheus.as_ref())
        .and_then(|d| d.resolved_after_heal_s);
    if let Some(r) = resolved {
        let t = th + (r * 1000.0) as i64;
        marks.push((t, "#00838f", format!("resolved {}", rel(t)), "2,3"));
    }
    marks.sort_by_key(|m| m.0);
    let mut lanes_end: Vec<f64> = Vec::new();
    let mut placed = Vec::new();
    for m in &marks {
        let px = x(m.0);
        let width = m.2.len() as f64 * 7.0 + 8.0;
        // Near the right edge the label goes to the left of its line.
        let flip = px + width > W - 4.0;
        let x0 = if flip { px - width } else { px };
        let lane = match lanes_end.iter().position(|end| x0 > *end) {
            Some(l) => l,
            None => {
                lanes_end.push(f64::MIN);
                lanes_end.len() - 1
            }
        };
        lanes_end[lane] = x0 + width;
        placed.push((m, lane, flip));
    }
    let top = 56.0 + lanes_end.len() as f64 * LANE;
    let plot_h = rows.len().max(1) as f64 * ROW;
    let axis_y = top + plot_h + 6.0;
    let h = axis_y + 70.0 + if hidden > 0 { 16.0 } else { 0.0 };

    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h:.0}" viewBox="0 0 {W} {h:.0}" font-family="DejaVu Sans, Arial, sans-serif" font-size="12">"#
    );
    let _ = writeln!(o, r##"<rect width="100%" height="100%" fill="#ffffff"/>"##);
    let title = format!(
        "{} — expected: {}{}",
        f.name,
        f.expected_journeys.join(", "),
        f.expected_team
            .as_ref()
            .map(|t| format!(" → team {t}"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        o,
        r##"<text x="12" y="22" font-size="15" font-weight="bold" fill="#111">{}</text>"##,
        esc(&title)
    );
    let summary = format!(
        "know {} · alert {} · page {} · recover {}",
        f.time_to_know_s
            .map(|v| format!("{v:.1}s"))
            .unwrap_or("—".into()),
        f.prometheus
            .as_ref()
            .map(|d| d.after_s.map(|v| format!("{v:.1}s")).unwrap_or("—".into()))
            .unwrap_or("n/a".into()),
        f.alertmanager
            .as_ref()
            .map(|d| d.after_s.map(|v| format!("{v:.1}s")).unwrap_or("—".into()))
            .unwrap_or("n/a".into()),
        f.time_to_recover_s
            .map(|v| format!("{v:.1}s after heal"))
            .unwrap_or("—".into()),
    );
    let _ = writeln!(
        o,
        r##"<text x="12" y="40" fill="#444">{}</text>"##,
        esc(&summary)
    );
    // Fault window.
    if f.injected_unix_ms.is_some() {
        let _ = writeln!(
            o,
            r##"<rect x="{:.1}" y="{top:.1}" width="{:.1}" height="{plot_h:.1}" fill="#fdecea"/>"##,
            x(ti),
            (x(th) - x(ti)).max(1.0)
        );
    }
    for (i, (a, j)) in rows.iter().enumerate() {
        let y = top + i as f64 * ROW;
        if i % 2 == 1 {
            let _ = writeln!(
                o,
                r##"<rect x="{LEFT}" y="{y:.1}" width="{:.1}" height="{ROW}" fill="#000" fill-opacity="0.03"/>"##,
                W - LEFT - RIGHT
            );
        }
        let weight = if f.expected_journeys.contains(j) {
            "bold"
        } else {
            "normal"
        };
        let _ = writeln!(
            o,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end" font-weight="{weight}" fill="#222">{} @ {}</text>"##,
            LEFT - 8.0,
            y + ROW / 2.0 + 4.0,
            esc(j),
            esc(a)
        );
        for r in f
            .runs
            .iter()
            .filter(|r| &r.agent == a && &r.run.journey == j)
        {
            let (x0, x1) = (x(r.run.started_unix_ms.max(t0)), x(r.run.ended_unix_ms));
            let colour = match r.run.outcome.as_str() {
                "success" => "#2e9d4f",
                "degraded" => "#e0a000",
                _ => "#d62728",
            };
            let tip = format!(
                "{} {} at {} in {:.0} ms{}",
                r.run.journey,
                r.run.outcome,
                r.agent,
                r.run.duration_ms,
                r.run
                    .error_type
                    .as_ref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            );
            let _ = writeln!(
                o,
                r#"<rect x="{x0:.1}" y="{:.1}" width="{:.1}" height="{:.1}" rx="2" fill="{colour}"><title>{}</title></rect>"#,
                y + 5.0,
                (x1 - x0).max(4.0),
                ROW - 10.0,
                esc(&tip)
            );
        }
    }
    // Axis with ticks relative to injection.
    let _ = writeln!(
        o,
        r##"<line x1="{LEFT}" y1="{axis_y:.1}" x2="{:.1}" y2="{axis_y:.1}" stroke="#666"/>"##,
        W - RIGHT
    );
    let step = nice_step(span / 1000.0);
    let step_ms = (step * 1000.0) as i64;
    let mut t = ti - ((ti - t0) / step_ms) * step_ms;
    while t <= t1 {
        let px = x(t);
        let _ = writeln!(
            o,
            r##"<line x1="{px:.1}" y1="{axis_y:.1}" x2="{px:.1}" y2="{:.1}" stroke="#666"/><text x="{px:.1}" y="{:.1}" text-anchor="middle" fill="#444">{}</text>"##,
            axis_y + 5.0,
            axis_y + 18.0,
            rel(t).replace(".0s", "s")
        );
        t += step_ms;
    }
    let _ = writeln!(
        o,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="#444">seconds from injection</text>"##,
        W - RIGHT,
        axis_y + 34.0
    );
    for ((t, colour, label, dash), lane, flip) in &placed {
        let px = x(*t);
        let ly = 56.0 + *lane as f64 * LANE;
        let _ = writeln!(
            o,
            r#"<line x1="{px:.1}" y1="{:.1}" x2="{px:.1}" y2="{:.1}" stroke="{colour}" stroke-width="2" stroke-dasharray="{dash}"/>"#,
            ly + 2.0,
            top + plot_h
        );
        let (tx, anchor) = if *flip {
            (px - 3.0, "end")
        } else {
            (px + 3.0, "start")
        };
        let _ = writeln!(
            o,
            r#"<text x="{tx:.1}" y="{ly:.1}" text-anchor="{anchor}" fill="{colour}" font-weight="bold">{}</text>"#,
            esc(label)
        );
    }
    // Legend.
    let ly = axis_y + 52.0;
    let mut lx = LEFT;
    for (label, colour) in [
        ("success", "#2e9d4f"),
        ("degraded", "#e0a000"),
        ("failure", "#d62728"),
        ("fault active", "#fdecea"),
    ] {
        let _ = writeln!(
            o,
            r##"<rect x="{lx:.1}" y="{:.1}" width="14" height="12" fill="{colour}" stroke="#999" stroke-width="0.5"/><text x="{:.1}" y="{ly:.1}" fill="#333">{label}</text>"##,
            ly - 10.0,
            lx + 19.0
        );
        lx += 30.0 + label.len() as f64 * 7.0;
    }
    if hidden > 0 {
        let _ = writeln!(
            o,
            r##"<text x="{LEFT}" y="{:.1}" fill="#666">{hidden} more rows not shown (see report.json)</text>"##,
            ly + 18.0
        );
    }
    o.push_str("</svg>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round() {
        assert_eq!(nice_step(60.0), 10.0);
        assert_eq!(nice_step(9.0), 1.0);
        assert_eq!(nice_step(400.0), 60.0);
    }

    #[test]
    fn escapes_text() {
        assert_eq!(esc("a<b & \"c\""), "a&lt;b &amp; &quot;c&quot;");
    }
}
