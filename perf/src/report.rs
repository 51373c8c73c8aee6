//! Summaries of the samples, for people (a table, SVG charts) and machines (JSON).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::compare::{Sample, Scenario};
use crate::{Error, Result};

/// Median, spread and ratio to `direct` of one target in one scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Scenario.
    pub scenario: Scenario,
    /// Target.
    pub target: String,
    /// Unit of the values.
    pub unit: String,
    /// Successful samples.
    pub ok: usize,
    /// Failed samples.
    pub failed: usize,
    /// Median of the headline value over successful samples.
    pub median: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Median divided by `direct`'s median (higher is better for every scenario).
    pub ratio_to_direct: Option<f64>,
    /// Median p50 latency, µs.
    pub p50_us: Option<f64>,
    /// Median p99 latency, µs.
    pub p99_us: Option<f64>,
    /// Median p99.9 latency, µs.
    pub p999_us: Option<f64>,
    /// Median proxy CPU seconds per GB relayed.
    pub cpu_s_per_gb: Option<f64>,
    /// Median proxy CPU milliseconds per 1,000 exchanges.
    pub cpu_ms_per_1k_req: Option<f64>,
    /// Median proxy RSS growth per idle connection, KiB.
    pub rss_kib_per_conn: Option<f64>,
    /// Median of the proxies' largest RSS, KiB.
    pub rss_max_kib: Option<f64>,
    /// Median proxy system calls per exchange (`rr`, `crr`).
    #[serde(default)]
    pub syscalls_per_req: Option<f64>,
    /// Median proxy `io_uring_enter` calls per exchange (`rr`, `crr`).
    #[serde(default)]
    pub io_uring_enter_per_req: Option<f64>,
}

/// The median of `v` (mean of the middle two for even lengths); `None` if empty.
pub fn median(v: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Summarises samples per (scenario, target), in first-seen order.
pub fn summarise(samples: &[Sample]) -> Vec<Summary> {
    let mut keys: Vec<(Scenario, String)> = Vec::new();
    for s in samples {
        let k = (s.scenario, s.target.clone());
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    let mut out: Vec<Summary> = keys
        .into_iter()
        .map(|(scenario, target)| {
            let all: Vec<&Sample> = samples
                .iter()
                .filter(|s| s.scenario == scenario && s.target == target)
                .collect();
            let ok: Vec<&Sample> = all.iter().copied().filter(|s| s.error.is_none()).collect();
            let vals: Vec<f64> = ok.iter().map(|s| s.value).collect();
            let med = |f: &dyn Fn(&Sample) -> Option<f64>| {
                median(&ok.iter().filter_map(|s| f(s)).collect::<Vec<_>>())
            };
            Summary {
                scenario,
                unit: scenario.unit().into(),
                ok: ok.len(),
                failed: all.len() - ok.len(),
                median: median(&vals).unwrap_or(0.0),
                min: vals
                    .iter()
                    .copied()
                    .fold(f64::INFINITY, f64::min)
                    .min(f64::MAX),
                max: vals.iter().copied().fold(0.0, f64::max),
                ratio_to_direct: None,
                p50_us: med(&|s| s.latency.map(|l| l.p50_us)),
                p99_us: med(&|s| s.latency.map(|l| l.p99_us)),
                p999_us: med(&|s| s.latency.map(|l| l.p999_us)),
                cpu_s_per_gb: med(&|s| s.cpu_s_per_gb),
                cpu_ms_per_1k_req: med(&|s| s.cpu_ms_per_1k_req),
                rss_kib_per_conn: med(&|s| s.rss_kib_per_conn),
                rss_max_kib: med(&|s| {
                    (!s.proxy.readings.is_empty()).then_some(s.proxy.rss_max_kib as f64)
                }),
                syscalls_per_req: med(&|s| s.syscalls_per_req),
                io_uring_enter_per_req: med(&|s| s.io_uring_enter_per_req),
                target,
            }
        })
        .collect();
    for s in &mut out {
        if s.ok == 0 {
            s.min = 0.0;
        }
    }
    let direct: Vec<(Scenario, f64)> = out
        .iter()
        .filter(|s| s.target == "direct" && s.ok > 0 && s.median > 0.0)
        .map(|s| (s.scenario, s.median))
        .collect();
    for s in &mut out {
        if let Some((_, d)) = direct.iter().find(|(sc, _)| *sc == s.scenario) {
            if s.ok > 0 {
                s.ratio_to_direct = Some(s.median / d);
            }
        }
    }
    out
}

/// A headline value with as many decimals as it deserves.
pub fn fmt_value(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "-".into())
}

/// The table printed at the end of a run.
pub fn table(summaries: &[Summary]) -> String {
    let mut t = String::new();
    let mut scenarios: Vec<Scenario> = Vec::new();
    for s in summaries {
        if !scenarios.contains(&s.scenario) {
            scenarios.push(s.scenario);
        }
    }
    for sc in scenarios {
        let _ = writeln!(t, "\n{} ({})", sc.name(), sc.unit());
        let _ = writeln!(
            t,
            "  {:<16} {:>12} {:>25} {:>8} {:>9} {:>9} {:>9} {:>10} {:>12} {:>10} {:>10} {:>8} {:>9}",
            "target",
            "median",
            "min-max",
            "ratio",
            "p50 µs",
            "p99 µs",
            "p99.9 µs",
            "cpu s/GB",
            "cpu ms/1k",
            "KiB/conn",
            "RSS MiB",
            "sys/req",
            "uring/req"
        );
        for s in summaries.iter().filter(|s| s.scenario == sc) {
            let spread = format!("{}-{}", fmt_value(s.min), fmt_value(s.max));
            let mut name = s.target.clone();
            if s.failed > 0 {
                name = format!("{name} ({} failed)", s.failed);
            }
            let _ = writeln!(
                t,
                "  {:<16} {:>12} {:>25} {:>8} {:>9} {:>9} {:>9} {:>10} {:>12} {:>10} {:>10} {:>8} {:>9}",
                name,
                fmt_value(s.median),
                spread,
                opt(s.ratio_to_direct, 3),
                opt(s.p50_us, 0),
                opt(s.p99_us, 0),
                opt(s.p999_us, 0),
                opt(s.cpu_s_per_gb, 3),
                opt(s.cpu_ms_per_1k_req, 2),
                opt(s.rss_kib_per_conn, 2),
                opt(s.rss_max_kib.map(|k| k / 1024.0), 1),
                opt(s.syscalls_per_req, 2),
                opt(s.io_uring_enter_per_req, 2),
            );
        }
    }
    t
}

/// The JSON file: run parameters, every sample with its `/proc` readings, summaries.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JsonReport {
    /// Free-form description of the run (command line, topology, load settings).
    pub run: serde_json::Value,
    /// Every sample.
    pub samples: Vec<Sample>,
    /// Per (scenario, target) summaries.
    pub summaries: Vec<Summary>,
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| Error::Write {
        path: path.to_path_buf(),
        source: e,
    })
}

/// Writes `results.json` and one `SCENARIO.svg` per scenario into `out`; returns the
/// paths written.
pub fn write_all(out: &Path, report: &JsonReport) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let json = serde_json::to_string_pretty(report)
        .map_err(|e| Error::Protocol(format!("serialising the report: {e}")))?;
    let p = out.join("results.json");
    write(&p, &json)?;
    written.push(p);
    let mut scenarios: Vec<Scenario> = Vec::new();
    for s in &report.summaries {
        if !scenarios.contains(&s.scenario) {
            scenarios.push(s.scenario);
        }
    }
    for sc in scenarios {
        let rows: Vec<&Summary> = report
            .summaries
            .iter()
            .filter(|s| s.scenario == sc)
            .collect();
        let p = out.join(format!("{}.svg", sc.name()));
        write(&p, &svg_chart(sc, &rows))?;
        written.push(p);
    }
    Ok(written)
}

const COLORS: [&str; 6] = [
    "#7f7f7f", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
];

/// One bar: label under it, value, optional min–max whisker, text above it.
type Bar<'a> = (&'a str, f64, Option<(f64, f64)>, String);

/// One panel of bars (median) with min–max whiskers.
struct Panel<'a> {
    title: String,
    bars: Vec<Bar<'a>>,
}

fn panel_svg(svg: &mut String, p: &Panel<'_>, x0: f64, width: f64, height: f64) {
    let top = 40.0;
    let bottom = height - 50.0;
    let scale_max = p
        .bars
        .iter()
        .map(|(_, v, mm, _)| mm.map_or(*v, |(_, hi)| hi.max(*v)))
        .fold(0.0, f64::max)
        .max(f64::MIN_POSITIVE)
        * 1.15;
    let y = |v: f64| bottom - (v / scale_max) * (bottom - top);
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="22" font-size="14" text-anchor="middle" font-weight="bold">{}</text>"#,
        x0 + width / 2.0,
        esc(&p.title)
    );
    let _ = writeln!(
        svg,
        r##"<line x1="{x0:.1}" y1="{bottom:.1}" x2="{:.1}" y2="{bottom:.1}" stroke="#333"/>"##,
        x0 + width
    );
    let n = p.bars.len().max(1) as f64;
    let slot = width / n;
    let bw = (slot * 0.6).min(90.0);
    for (i, (name, v, mm, label)) in p.bars.iter().enumerate() {
        let cx = x0 + slot * (i as f64 + 0.5);
        let color = COLORS[i % COLORS.len()];
        let _ = writeln!(
            svg,
            r#"<rect x="{:.1}" y="{:.1}" width="{bw:.1}" height="{:.1}" fill="{color}"/>"#,
            cx - bw / 2.0,
            y(*v),
            (bottom - y(*v)).max(0.0)
        );
        if let Some((lo, hi)) = mm {
            let _ = writeln!(
                svg,
                r##"<path d="M{cx:.1} {:.1} V{:.1} M{:.1} {:.1} H{:.1} M{:.1} {:.1} H{:.1}" stroke="#000" fill="none"/>"##,
                y(*lo),
                y(*hi),
                cx - 8.0,
                y(*lo),
                cx + 8.0,
                cx - 8.0,
                y(*hi),
                cx + 8.0
            );
        }
        let _ = writeln!(
            svg,
            r#"<text x="{cx:.1}" y="{:.1}" font-size="12" text-anchor="middle">{}</text>"#,
            y(mm.map_or(*v, |(_, hi)| hi.max(*v))) - 6.0,
            esc(label)
        );
        let _ = writeln!(
            svg,
            r#"<text x="{cx:.1}" y="{:.1}" font-size="12" text-anchor="middle">{}</text>"#,
            bottom + 18.0,
            esc(name)
        );
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// An SVG chart for one scenario: the headline value per target (bar = median, whisker
/// = min–max), plus a latency panel (p50 and p99) for `rr` and `crr`.
pub fn svg_chart(scenario: Scenario, rows: &[&Summary]) -> String {
    let mut panels = vec![Panel {
        title: format!(
            "{} — {} (median, min–max)",
            scenario.name(),
            scenario.unit()
        ),
        bars: rows
            .iter()
            .map(|s| {
                let ratio = s
                    .ratio_to_direct
                    .map(|r| format!(" ({r:.2}×)"))
                    .unwrap_or_default();
                (
                    s.target.as_str(),
                    s.median,
                    Some((s.min, s.max)),
                    format!("{}{ratio}", fmt_value(s.median)),
                )
            })
            .collect(),
    }];
    if matches!(scenario, Scenario::Rr | Scenario::Crr) {
        for (title, get) in [
            (
                "p50 latency, µs",
                (|s: &Summary| s.p50_us) as fn(&Summary) -> Option<f64>,
            ),
            ("p99 latency, µs", |s: &Summary| s.p99_us),
        ] {
            panels.push(Panel {
                title: title.into(),
                bars: rows
                    .iter()
                    .map(|s| {
                        let v = get(s).unwrap_or(0.0);
                        (s.target.as_str(), v, None, format!("{v:.0}"))
                    })
                    .collect(),
            });
        }
    }
    if scenario == Scenario::Idle {
        panels.push(Panel {
            title: "proxy RSS per idle connection, KiB".into(),
            bars: rows
                .iter()
                .map(|s| {
                    let v = s.rss_kib_per_conn.unwrap_or(0.0);
                    (s.target.as_str(), v, None, format!("{v:.1}"))
                })
                .collect(),
        });
    }
    let pw = (rows.len() as f64 * 110.0).max(300.0);
    let (w, h) = (pw * panels.len() as f64 + 40.0, 320.0);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w:.0}" height="{h:.0}" font-family="sans-serif">"#
    );
    svg.push('\n');
    svg.push_str("<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n");
    for (i, p) in panels.iter().enumerate() {
        panel_svg(&mut svg, p, 20.0 + i as f64 * pw, pw - 20.0, h);
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(target: &str, value: f64, error: Option<&str>) -> Sample {
        let mut s = Sample::new(target, Scenario::Rr, 0);
        s.value = value;
        s.error = error.map(String::from);
        s
    }

    #[test]
    fn median_of_odd_and_even_lengths() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn summary_has_median_spread_and_ratio_and_skips_failures() {
        let s = vec![
            sample("direct", 100.0, None),
            sample("direct", 120.0, None),
            sample("direct", 110.0, None),
            sample("zpath", 50.0, None),
            sample("zpath", 60.0, None),
            sample("zpath", 0.0, Some("boom")),
        ];
        let sum = summarise(&s);
        let z = sum.iter().find(|x| x.target == "zpath").unwrap();
        assert_eq!((z.ok, z.failed), (2, 1));
        assert_eq!((z.median, z.min, z.max), (55.0, 50.0, 60.0));
        assert_eq!(z.ratio_to_direct, Some(0.5));
        let d = sum.iter().find(|x| x.target == "direct").unwrap();
        assert_eq!(d.ratio_to_direct, Some(1.0));
        let t = table(&sum);
        assert!(t.contains("zpath (1 failed)"), "{t}");
    }

    #[test]
    fn chart_is_svg_with_one_bar_per_target_per_panel() {
        let s = vec![sample("direct", 100.0, None), sample("zpath", 50.0, None)];
        let sum = summarise(&s);
        let rows: Vec<&Summary> = sum.iter().collect();
        let svg = svg_chart(Scenario::Rr, &rows);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        // Three panels (rate, p50, p99) of two bars, plus the background rect.
        assert_eq!(svg.matches("<rect").count(), 1 + 3 * 2);
        assert!(svg.contains("0.50×"));
    }
}
