//! `cargo xtask bench-report DIR`: reads the JSON lines that `bundle/bench.sh` (attn-bench and
//! peers.py) wrote anywhere under DIR, and writes DIR/table.md with PNG charts beside it. Older
//! result files are read too: a key they lack shows as "–" (unknown keys are ignored).
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde_json::Value;

use crate::Result;

/// The chart font, vendored so that rendering needs no system fonts (see assets/LICENSE-DejaVu.txt).
const FONT: &[u8] = include_bytes!("../assets/DejaVuSans-subset.ttf");
const FONT_NAME: &str = "sans-serif";

/// One measurement: a time, or why there is none.
#[derive(Clone, Debug, Default)]
struct Rec {
    ms: Option<f64>,
    useful_tflops: Option<f64>,
    /// Visited query-key pairs / pairs dense attention visits.
    kept: Option<f64>,
    /// The same for 128x128 blocks.
    kept_blocks: Option<f64>,
    error: Option<String>,
}

/// The results of one card in one causal mode: (impl, workload, S) -> measurement.
#[derive(Default)]
struct Results {
    recs: BTreeMap<(String, String, u64), Rec>,
}

impl Results {
    fn get(&self, imp: &str, workload: &str, s: u64) -> Option<&Rec> {
        self.recs.get(&(imp.to_string(), workload.to_string(), s))
    }
    fn ms(&self, imp: &str, workload: &str, s: u64) -> Option<f64> {
        self.get(imp, workload, s).and_then(|r| r.ms)
    }
    fn lens(&self) -> BTreeSet<u64> {
        self.recs.keys().map(|k| k.2).collect()
    }
    fn workloads(&self) -> Vec<String> {
        let mut w: Vec<String> = self.recs.keys().map(|k| k.1.clone()).collect::<BTreeSet<_>>().into_iter().collect();
        w.sort_by_key(|w| workload_rank(w));
        w
    }
}

/// attn-bench's order: the formula workloads, then the masks by kept fraction, then anything else.
fn workload_rank(w: &str) -> (u32, u32, String) {
    const FIXED: [&str; 4] = ["dense", "token_stream_64_256", "block_stream_1_3", "mixed_half_dense_half_token"];
    match (FIXED.iter().position(|f| *f == w), sparse_pct(w)) {
        (Some(i), _) => (i as u32, 0, String::new()),
        (None, Some(p)) => (10, p, String::new()),
        _ => (20, 0, w.to_string()),
    }
}

fn sparse_pct(w: &str) -> Option<u32> {
    w.strip_prefix("sparse_")?.strip_suffix("pct")?.parse().ok()
}

/// Every `*.jsonl` under `dir`, in path order.
fn jsonl_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result {
    let entries = fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() {
            jsonl_files(&path, out)?;
        } else if path.extension().is_some_and(|x| x == "jsonl") {
            out.push(path);
        }
    }
    out.sort();
    Ok(())
}

/// Results per (card, causal). Lines without `impl` (attn-bench's manifest) are skipped; a later
/// line for the same measurement replaces an earlier one, so several runs can share DIR.
fn read_results(dir: &Path) -> Result<(BTreeMap<(String, bool), Results>, usize)> {
    let mut files = vec![];
    jsonl_files(dir, &mut files)?;
    let (mut out, mut n) = (BTreeMap::<(String, bool), Results>::new(), 0);
    for f in &files {
        let text = fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let v: Value = serde_json::from_str(line).map_err(|e| format!("{}:{}: {e}", f.display(), i + 1))?;
            let (Some(imp), Some(w), Some(s), Some(causal)) = (v["impl"].as_str(), v["workload"].as_str(), v["S"].as_u64(), v["causal"].as_bool()) else {
                continue;
            };
            let card = v["card"].as_str().unwrap_or("unknown card").to_string();
            let error = v["error"].as_str().map(String::from).or_else(|| v["ms"].is_null().then(|| "no result".to_string()));
            let rec = Rec {
                ms: if error.is_none() { v["ms"].as_f64() } else { None },
                useful_tflops: v["useful_tflops"].as_f64(),
                kept: v["kept_fraction"].as_f64(),
                kept_blocks: v["kept_blocks"].as_f64(),
                error,
            };
            out.entry((card, causal)).or_default().recs.insert((imp.to_string(), w.to_string(), s), rec);
            n += 1;
        }
    }
    Ok((out, n))
}

// ---------------------------------------------------------------------------------------------
// table.md

fn fmt_ms(ms: f64) -> String {
    match ms {
        m if m < 1.0 => format!("{m:.3}"),
        m if m < 100.0 => format!("{m:.2}"),
        m => format!("{m:.0}"),
    }
}

fn fmt_len(s: u64) -> String {
    if s >= 1024 && s % 1024 == 0 { format!("{}k", s / 1024) } else { s.to_string() }
}

/// A time, or the short reason there is none ("–" where nothing was measured).
fn ms_cell(rec: Option<&Rec>) -> String {
    match rec {
        Some(Rec { ms: Some(ms), .. }) => fmt_ms(*ms),
        Some(Rec { error: Some(e), .. }) => {
            let e = e.to_lowercase();
            if e.contains("oom") || e.contains("out of memory") {
                "OOM".into()
            } else if e.starts_with("skipped") {
                "skipped".into()
            } else {
                "failed".into()
            }
        }
        _ => "–".into(),
    }
}

fn ratio_cell(num: Option<f64>, den: Option<f64>) -> String {
    match (num, den) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "–".into(),
    }
}

fn opt_cell(x: Option<f64>, f: impl Fn(f64) -> String) -> String {
    x.map_or("–".into(), f)
}

/// Peers as they appear in peers.py's JSON and in the table.
const FLEX: (&str, &str) = ("flex", "Flex");
const SDPA: [(&str, &str); 2] = [("sdpa_flash", "SDPA flash"), ("sdpa_cudnn", "SDPA cuDNN")];

fn table(r: &Results) -> String {
    let mut t = String::from(
        "| workload | S | kept | ours ms | ours TF/s | our dense / ours | Flex ms | Flex TF/s | Flex / ours \
         | SDPA flash dense ms | flash / ours | SDPA cuDNN dense ms | cuDNN / ours |\n",
    );
    t.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for w in r.workloads() {
        for &s in &r.lens() {
            let (ours, flex) = (r.get("ours", &w, s), r.get(FLEX.0, &w, s));
            if ours.is_none() && flex.is_none() && w != "dense" {
                continue;
            }
            let kept = ours.and_then(|x| x.kept).or(flex.and_then(|x| x.kept));
            let ours_ms = ours.and_then(|x| x.ms);
            let mut row = vec![
                w.clone(),
                fmt_len(s),
                opt_cell(kept, |k| format!("{:.1}%", 100.0 * k)),
                ms_cell(ours),
                opt_cell(ours.and_then(|x| x.useful_tflops), |x| format!("{x:.0}")),
                ratio_cell(r.ms("ours", "dense", s), ours_ms),
                ms_cell(flex),
                opt_cell(flex.and_then(|x| x.useful_tflops), |x| format!("{x:.0}")),
                ratio_cell(flex.and_then(|x| x.ms), ours_ms),
            ];
            // SDPA has no sparse modes: every row is compared with its dense time.
            for (imp, _) in SDPA {
                row.push(ms_cell(r.get(imp, "dense", s)));
                row.push(ratio_cell(r.ms(imp, "dense", s), ours_ms));
            }
            t.push_str(&format!("| {} |\n", row.join(" | ")));
        }
    }
    t
}

// ---------------------------------------------------------------------------------------------
// Charts

type Points = Vec<(f64, f64)>;

/// One line of a chart: its name, points, colour, and whether it is a dashed reference line.
struct Line {
    name: String,
    points: Points,
    color: RGBColor,
    dashed: bool,
}

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];
const GREY: RGBColor = RGBColor(120, 120, 120);

/// Axis labels and ranges of one chart. `log2_x`: x holds log2(S) and is labelled as S.
struct Axes<'a> {
    title: String,
    /// Small print in the bottom left corner (the card).
    note: &'a str,
    x_desc: &'a str,
    y_desc: &'a str,
    x: (f64, f64),
    y: (f64, f64),
    log2_x: bool,
}

fn draw(path: &Path, axes: &Axes, lines: &[Line]) -> Result {
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let root = BitMapBackend::new(path, (960, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(&axes.title, (FONT_NAME, 24))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(65)
        .build_cartesian_2d(axes.x.0..axes.x.1, axes.y.0..axes.y.1)
        .map_err(|e| err(&e))?;
    let x_fmt = |x: &f64| if axes.log2_x { fmt_len(2f64.powf(*x).round() as u64) } else { format!("{x:.1}") };
    // On a log2 axis, one label per power of two.
    let x_labels = if axes.log2_x { (axes.x.1 - axes.x.0).round() as usize + 1 } else { 11 };
    chart
        .configure_mesh()
        .x_desc(axes.x_desc)
        .y_desc(axes.y_desc)
        .x_labels(x_labels)
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&|y| format!("{y:.1}"))
        .label_style((FONT_NAME, 16))
        .axis_desc_style((FONT_NAME, 18))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(|e| err(&e))?;
    for line in lines {
        let style = line.color.stroke_width(if line.dashed { 2 } else { 3 });
        let anno = if line.dashed {
            chart.draw_series(DashedLineSeries::new(line.points.clone(), 10, 6, style)).map_err(|e| err(&e))?
        } else {
            chart.draw_series(LineSeries::new(line.points.clone(), style)).map_err(|e| err(&e))?
        };
        anno.label(&line.name).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], style));
        if !line.dashed {
            chart.draw_series(line.points.iter().map(|&p| Circle::new(p, 4, line.color.filled()))).map_err(|e| err(&e))?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((FONT_NAME, 16))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.draw(&Text::new(axes.note.to_string(), (8, 618), (FONT_NAME, 14).into_font().color(&GREY))).map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// (a) Our time relative to our dense time against the kept fraction of blocks, one line per S
/// (the block-sparse workloads), with the ideal "time proportional to the blocks kept".
fn relative_runtime_lines(r: &Results) -> Vec<Line> {
    let mut lines = vec![];
    for (i, s) in r.lens().into_iter().enumerate() {
        let Some(dense) = r.ms("ours", "dense", s) else { continue };
        let mut points: Points = r
            .workloads()
            .iter()
            .filter_map(|w| {
                let rec = r.get("ours", w, s)?;
                // Older files have neither kept fraction: the nominal one is in the name.
                let x = rec.kept_blocks.or(rec.kept).or(sparse_pct(w).map(|p| p as f64 / 100.0))?;
                Some((x, rec.ms? / dense)).filter(|_| sparse_pct(w).is_some())
            })
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        if !points.is_empty() {
            lines.push(Line { name: format!("S = {}", fmt_len(s)), points, color: COLORS[i % COLORS.len()], dashed: false });
        }
    }
    if !lines.is_empty() {
        lines.push(Line { name: "ideal (time proportional to blocks)".into(), points: vec![(0.0, 0.0), (1.0, 1.0)], color: GREY, dashed: true });
    }
    lines
}

/// (b) Dense time over DuoAttention-style (mixed) time against S, for us and Flex, with the ideal
/// 1 / kept fraction of the mixed workload.
fn duo_speedup_lines(r: &Results) -> Vec<Line> {
    const MIXED: &str = "mixed_half_dense_half_token";
    let mut lines = vec![];
    for (i, (imp, name)) in [("ours", "ours"), FLEX].into_iter().enumerate() {
        let points: Points = r
            .lens()
            .into_iter()
            .filter_map(|s| Some(((s as f64).log2(), r.ms(imp, "dense", s)? / r.ms(imp, MIXED, s)?)))
            .collect();
        if !points.is_empty() {
            lines.push(Line { name: name.into(), points, color: COLORS[i], dashed: false });
        }
    }
    let ideal: Points =
        r.lens().into_iter().filter_map(|s| Some(((s as f64).log2(), 1.0 / r.get("ours", MIXED, s)?.kept?))).collect();
    if !lines.is_empty() && !ideal.is_empty() {
        lines.push(Line { name: "ideal (1 / kept fraction)".into(), points: ideal, color: GREY, dashed: true });
    }
    lines
}

fn bounds(lines: &[Line], f: impl Fn(&(f64, f64)) -> f64) -> (f64, f64) {
    let vals = lines.iter().flat_map(|l| l.points.iter().map(&f));
    vals.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)))
}

// ---------------------------------------------------------------------------------------------

pub fn bench_report(dir: &Path) -> Result {
    let (results, n) = read_results(dir)?;
    if results.is_empty() {
        return Err(format!("no results (JSON lines with impl, workload, S, causal) under {}", dir.display()));
    }
    plotters::style::register_font(FONT_NAME, FontStyle::Normal, FONT).map_err(|_| "the vendored font does not parse")?;
    let cards: BTreeSet<&String> = results.keys().map(|k| &k.0).collect();
    let mut md = format!(
        "# Attention benchmark\n\n\
         Written by `cargo xtask bench-report` from {n} results under `{}`. B=1, H=32, D=128, bf16; times are\n\
         medians of CUDA-event timings after warm-up. *kept*: query-key pairs visited / pairs dense attention\n\
         visits; *TF/s*: useful TFLOP/s, 4·D·(visited pairs) / time; *A / ours*: A's time over ours (above 1,\n\
         ours is faster). SDPA has no sparse modes, so every row is compared with SDPA's dense time.\n",
        dir.display()
    );
    let mut sections: Vec<_> = results.iter().collect();
    sections.sort_by_key(|((card, causal), _)| (card.clone(), !causal)); // causal first
    for ((card, causal), r) in sections {
        let mode = if *causal { "causal" } else { "noncausal" };
        // File names carry the card only when results of several cards share DIR.
        let suffix = if cards.len() > 1 { format!("_{}", cards.iter().position(|c| *c == card).unwrap()) } else { String::new() };
        md.push_str(&format!("\n## {card}, {}\n\n", if *causal { "causal" } else { "non-causal" }));
        md.push_str(&table(r));

        let lines = relative_runtime_lines(r);
        if !lines.is_empty() {
            let name = format!("relative_runtime_{mode}{suffix}.png");
            let y_max = bounds(&lines, |p| p.1).1.max(1.0) * 1.08;
            let axes = Axes {
                title: format!("Block-sparse runtime relative to dense, {}", if *causal { "causal" } else { "non-causal" }),
                note: card,
                x_desc: "kept fraction of 128×128 blocks",
                y_desc: "time / dense time (ours)",
                x: (0.0, 1.02),
                y: (0.0, y_max),
                log2_x: false,
            };
            draw(&dir.join(&name), &axes, &lines)?;
            md.push_str(&format!("\n![relative runtime]({name})\n"));
        }
        let lines = duo_speedup_lines(r);
        if !lines.is_empty() {
            let name = format!("duo_speedup_{mode}{suffix}.png");
            let (x0, x1) = bounds(&lines, |p| p.0);
            let axes = Axes {
                title: format!("½ dense + ½ token-streaming heads vs all dense, {}", if *causal { "causal" } else { "non-causal" }),
                note: card,
                x_desc: "sequence length S",
                y_desc: "speedup over dense (same implementation)",
                x: (x0 - 0.25, x1 + 0.25),
                y: (0.0, bounds(&lines, |p| p.1).1.max(1.0) * 1.15),
                log2_x: true,
            };
            draw(&dir.join(&name), &axes, &lines)?;
            md.push_str(&format!("\n![DuoAttention speedup]({name})\n"));
        }
    }
    let out = dir.join("table.md");
    fs::write(&out, md).map_err(|e| format!("{}: {e}", out.display()))?;
    println!("{} and charts written ({n} results, {} card(s))", out.display(), cards.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small hand-written result set in bench.sh's layout: ours and peers, a failure, a skip, and
    /// a line from an older run that a newer one replaces.
    fn write_sample(dir: &Path) {
        let card = "NVIDIA H100 80GB HBM3";
        let mut ours = String::new();
        let mut peers = String::new();
        for (s, dense) in [(8192u64, 1.5), (16384, 6.0), (32768, 24.0)] {
            let line = |imp: &str, w: &str, kept: f64, ms: f64| {
                format!(
                    r#"{{"impl":"{imp}","card":"{card}","workload":"{w}","S":{s},"causal":true,"kept_fraction":{kept},"kept_blocks":{kept},"ms":{ms},"useful_tflops":{}}}"#,
                    4.0 * 128.0 * 32.0 * (s * s) as f64 / 2.0 * kept / (ms * 1e9)
                ) + "\n"
            };
            ours += &line("ours", "dense", 1.0, dense);
            ours += &line("ours", "mixed_half_dense_half_token", 0.51, dense * 0.55);
            for pct in [5, 10, 50, 100] {
                ours += &line("ours", &format!("sparse_{pct}pct"), pct as f64 / 100.0, dense * (0.05 + pct as f64 / 100.0));
            }
            peers += &line("sdpa_flash", "dense", 1.0, dense * 1.1);
            peers += &line("sdpa_cudnn", "dense", 1.0, dense * 0.6);
            peers += &line("flex", "dense", 1.0, dense * 1.05);
            if s < 32768 {
                peers += &line("flex", "mixed_half_dense_half_token", 0.51, dense * 0.7);
            } else {
                peers += &format!(
                    r#"{{"impl":"flex","card":"{card}","workload":"mixed_half_dense_half_token","S":{s},"causal":true,"error":"OOM"}}{}"#,
                    "\n"
                );
            }
        }
        ours += &format!(r#"{{"impl":"ours","card":"{card}","workload":"dense","S":65536,"causal":true,"error":"skipped: needs about 90 GiB"}}{}"#, "\n");
        fs::create_dir_all(dir.join("results")).unwrap();
        fs::create_dir_all(dir.join("old")).unwrap();
        // The same measurement in an older file (sorted first) is replaced by the newer one.
        fs::write(dir.join("old/ours.jsonl"), format!(r#"{{"impl":"ours","card":"{card}","workload":"dense","S":8192,"causal":true,"ms":99.0}}"#) + "\n")
            .unwrap();
        fs::write(dir.join("results/ours.jsonl"), ours).unwrap();
        fs::write(dir.join("results/peers.jsonl"), peers).unwrap();
        // attn-bench's manifest has no impl: not a result.
        fs::write(dir.join("results/manifest.jsonl"), r#"{"workload":"dense","S":8192,"causal":true,"visited_pairs":1}"#).unwrap();
    }

    #[test]
    fn writes_table_and_charts() {
        let dir = std::env::temp_dir().join(format!("bench-report-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        write_sample(&dir);
        bench_report(&dir).unwrap();
        let md = fs::read_to_string(dir.join("table.md")).unwrap();
        assert!(md.contains("## NVIDIA H100 80GB HBM3, causal"), "{md}");
        // ours dense 1.5 ms; SDPA flash 1.65 ms -> 1.10x; the stale 99 ms line lost.
        assert!(md.contains("| dense | 8k | 100.0% | 1.50 |"), "{md}");
        assert!(md.contains("| 1.10× |"), "{md}");
        assert!(md.contains("| mixed_half_dense_half_token | 32k | 51.0% | 13.20 |") && md.contains("| OOM |"), "{md}");
        assert!(md.contains("| dense | 64k | – | skipped |"), "{md}");
        for png in ["relative_runtime_causal.png", "duo_speedup_causal.png"] {
            let bytes = fs::read(dir.join(png)).unwrap();
            assert!(bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000, "{png}");
            assert!(md.contains(png));
        }
        fs::remove_dir_all(&dir).unwrap();
    }
}
