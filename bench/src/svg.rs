//! `--svg PATH`: the history of a few key ratios, drawn by hand as SVG.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

/// The plotted series: figure id, legend, colour.
const SERIES: &[(&str, &str, &str)] = &[
    ("ping_rps", "/ping vs bare hyper", "#1f77b4"),
    ("commands_per_sec", "commands/s vs spawn ceiling", "#ff7f0e"),
    ("stream_mbps", "streaming vs pipe", "#2ca02c"),
    ("upload_mbps", "upload vs disk write", "#d62728"),
];

/// How many of the latest full runs are plotted.
const RUNS: usize = 40;

const W: f64 = 760.0;
const H: f64 = 360.0;
const LEFT: f64 = 50.0;
const RIGHT: f64 = 210.0;
const TOP: f64 = 20.0;
const BOTTOM: f64 = 40.0;

pub fn write(history: &Path, out: &Path) -> std::io::Result<()> {
    let text = std::fs::read_to_string(history)?;
    let runs: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["smoke"] == false)
        .collect();
    let runs = &runs[runs.len().saturating_sub(RUNS)..];
    std::fs::write(out, plot(runs))
}

/// The ratio of figure `id` in one run, if it was measured.
fn ratio(run: &Value, id: &str) -> Option<f64> {
    run["figures"].as_array()?.iter().find(|f| f["id"] == id)?["ratio"].as_f64()
}

fn plot(runs: &[Value]) -> String {
    let top = SERIES
        .iter()
        .flat_map(|(id, _, _)| runs.iter().filter_map(|r| ratio(r, id)))
        .fold(1.2f64, f64::max)
        .ceil();
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let x = |i: usize| LEFT + pw * (i as f64 + 0.5) / runs.len().max(1) as f64;
    let y = |r: f64| TOP + ph * (1.0 - r / top);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let mut tick = 0.0;
    while tick <= top + 1e-9 {
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" x2="{}" y1="{y0:.1}" y2="{y0:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{tick:.1}</text>"##,
            LEFT + pw,
            LEFT - 6.0,
            y(tick) + 4.0,
            y0 = y(tick),
        );
        tick += if top > 3.0 { 1.0 } else { 0.2 };
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">run (oldest to newest, {} full runs)</text>"#,
        LEFT + pw / 2.0,
        H - 10.0,
        runs.len()
    );
    for (k, (id, legend, colour)) in SERIES.iter().enumerate() {
        let points: Vec<String> = runs
            .iter()
            .enumerate()
            .filter_map(|(i, r)| Some(format!("{:.1},{:.1}", x(i), y(ratio(r, id)?))))
            .collect();
        if !points.is_empty() {
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
                points.join(" ")
            );
            for p in &points {
                let (px, py) = p.split_once(',').expect("formatted above");
                let _ = writeln!(s, r#"<circle cx="{px}" cy="{py}" r="3" fill="{colour}"/>"#);
            }
        }
        let ly = TOP + 16.0 + 20.0 * k as f64;
        let lx = W - RIGHT + 12.0;
        let _ = writeln!(
            s,
            r#"<rect x="{lx}" y="{}" width="14" height="4" fill="{colour}"/><text x="{}" y="{ly}">{legend}</text>"#,
            ly - 6.0,
            lx + 20.0
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plots_ratios() {
        let run = serde_json::json!({
            "smoke": false,
            "figures": [{"id": "ping_rps", "ratio": 0.95}, {"id": "stream_mbps", "ratio": null}],
        });
        let svg = plot(&[run.clone(), run]);
        assert!(svg.starts_with("<svg"));
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert!(svg.trim_end().ends_with("</svg>"));
    }
}
