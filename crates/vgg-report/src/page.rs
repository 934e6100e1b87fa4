//! The benchmark report (`vgg bench --report`, `vgg report`): one self-contained HTML page, its
//! charts inline SVG and its style inline CSS, with no script and nothing fetched, so it opens
//! anywhere, offline, and can be mailed as one file.

use std::fmt::Write as _;
use std::path::PathBuf;

use vgg_bench::record::{BenchRecord, Run, RunMode};
use vgg_bench::Mode;
use vgg_tensor::memory::human_bytes as bytes;

use crate::figures::{self as plot, LayerBar, Rate, StepSeries, FRAMEWORK_COLOURS};
use crate::{ReportError, Result};

/// Above this many steps a series is drawn from every k-th step, so the page stays small.
const MAX_SERIES_POINTS: usize = 5000;

/// Names that tell the runs apart: a repeated name gets its file's name after it.
pub fn distinct_names(mut runs: Vec<Run>, paths: &[PathBuf]) -> Vec<Run> {
    let names: Vec<String> = runs.iter().map(|r| r.name.clone()).collect();
    for (i, run) in runs.iter_mut().enumerate() {
        if names.iter().filter(|n| **n == names[i]).count() > 1 {
            let file = paths[i].file_name().map_or_else(
                || paths[i].display().to_string(),
                |f| f.to_string_lossy().into(),
            );
            run.name = format!("{} ({file})", run.name);
        }
    }
    runs
}

/// Text for HTML: the records' strings are not ours.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

pub(crate) const STYLE: &str = "body{font-family:'DejaVu Sans',Helvetica,Arial,sans-serif;color:#282828;\
background:#fff;max-width:1160px;margin:24px auto;padding:0 16px}h1{font-size:24px}h2{font-size:19px;\
margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}h3{font-size:16px}\
table{border-collapse:collapse;font-size:12px;margin:8px 0}td,th{padding:3px 6px;white-space:nowrap;text-align:right;\
border-bottom:1px solid #eee}th{background:#f4f4f4;white-space:normal;vertical-align:bottom}td:first-child,th:first-child,.text{text-align:left}\
table.settings td{text-align:left}.charts{display:flex;flex-wrap:wrap;gap:16px}\
.note{font-size:13px;color:#555}.warn{background:#fff4e0;padding:6px 10px;border-left:4px solid #e8a33d}\
svg{display:block}";

/// The page for `runs`; the first run is the one the others are compared with.
pub fn page(runs: &[Run]) -> Result<String> {
    let Some(first) = runs.first() else {
        return Err(ReportError::NoRuns);
    };
    let ours = runs.iter().find_map(|r| r.ours.as_ref());
    let network = &first.network;
    let title = match first.image {
        Some((h, w)) => format!("{network} benchmark: {h}x{w}, batch {}", first.batch),
        None => format!("{network} benchmark: batch {}", first.batch),
    };
    let mut html = String::new();
    let h = &mut html;
    write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{}</h1>\n",
        escape(&title),
        escape(&title)
    )?;
    if let Some(o) = ours {
        settings(h, o)?;
    }
    mismatches(h, runs)?;
    results(h, runs, ours)?;
    for mode in [Mode::Forward, Mode::ForwardBackward] {
        let with: Vec<(usize, &Run, &RunMode)> = runs
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.modes.iter().find(|m| m.mode == mode).map(|m| (i, r, m)))
            .collect();
        if with.is_empty() {
            continue;
        }
        writeln!(h, "<h2>{}: step times</h2>", mode.label())?;
        let (kept, stride) = thinned(&with);
        if stride > 1 {
            writeln!(
                h,
                "<p class=\"note\">The series shows every {stride}th step; the distribution, all.</p>"
            )?;
        }
        let series: Vec<StepSeries> = with
            .iter()
            .zip(&kept)
            .map(|((i, r, _), seconds)| StepSeries {
                name: &r.name,
                colour: colour(*i),
                seconds,
            })
            .collect();
        let all: Vec<StepSeries> = with
            .iter()
            .map(|(i, r, m)| StepSeries {
                name: &r.name,
                colour: colour(*i),
                seconds: &m.step_seconds,
            })
            .collect();
        writeln!(
            h,
            "<div class=\"charts\">\n{}\n{}\n</div>",
            plot::step_times(
                &format!("{}: seconds per step", mode.label()),
                &series,
                stride
            )?,
            plot::step_distribution(&format!("{}: distribution", mode.label()), &all)?
        )?;
    }
    throughput(h, runs, ours)?;
    per_layer(h, runs)?;
    writeln!(
        h,
        "<h2>Notes</h2>\n<p class=\"note\">Every timed step counts, each clock stopped when the device \
         has finished. The standard deviation is the population one, as the reference computes it. \
         GFLOP/s counts 2 FLOPs per multiply-accumulate of the direct method; forward-backward counts \
         the forward pass plus two more (input and weight gradients) for every convolution and linear \
         layer, less the first convolution's input gradient. Convolutions run by a fast algorithm \
         (Winograd) do less arithmetic than they are credited with, so more than 100% of the \
         matrix-product peak is possible. Drawn by vgg {} (`vgg report`).</p>\n</body>\n</html>",
        env!("CARGO_PKG_VERSION")
    )?;
    Ok(html)
}

fn colour(i: usize) -> plotters::style::RGBColor {
    FRAMEWORK_COLOURS[i % FRAMEWORK_COLOURS.len()]
}

/// Every k-th step of each run's series, k chosen so none has more than MAX_SERIES_POINTS.
fn thinned(with: &[(usize, &Run, &RunMode)]) -> (Vec<Vec<f64>>, usize) {
    let most = with
        .iter()
        .map(|(_, _, m)| m.step_seconds.len())
        .max()
        .unwrap_or(0);
    let stride = most.div_ceil(MAX_SERIES_POINTS).max(1);
    let kept = with
        .iter()
        .map(|(_, _, m)| m.step_seconds.iter().copied().step_by(stride).collect())
        .collect();
    (kept, stride)
}

fn settings(h: &mut String, o: &BenchRecord) -> Result<()> {
    let c = &o.config;
    let mut rows: Vec<(&str, String)> = vec![
        (
            "network",
            o.network.clone().unwrap_or_else(|| c.model.to_string()),
        ),
        (
            "input",
            format!("{}x{}x3, batch {}", c.height, c.width, c.batch),
        ),
        (
            "steps per mode",
            format!("{} burn-in + {} timed", c.burn_in, c.num_batches),
        ),
        ("seed", c.seed.to_string()),
        ("backend", o.backend.clone()),
        (
            "threads",
            o.threads
                .map_or("the backend's default".to_string(), |t| t.to_string()),
        ),
        (
            "per-layer timing",
            if c.per_layer { "on" } else { "off" }.to_string(),
        ),
        ("started", o.started.clone()),
    ];
    if let Some(v) = &o.vgg_version {
        rows.push(("vgg", v.clone()));
    }
    if let Some(m) = &o.machine {
        rows.push((
            "CPU",
            m.cpu.clone().unwrap_or_else(|| "unknown".to_string()),
        ));
        rows.push(("logical CPUs", m.logical_cpus.to_string()));
        if let Some(b) = m.memory_bytes {
            rows.push(("memory", bytes(b)));
        }
        rows.push(("OS", m.os.clone()));
    }
    if let Some(p) = &o.matmul_peak {
        rows.push((
            "matrix-product peak",
            format!(
                "{:.1} GFLOP/s ({n}x{n}x{n} single precision on this backend, best of {})",
                p.gflops_per_second,
                p.repetitions,
                n = p.n
            ),
        ));
    }
    writeln!(
        h,
        "<h2>Settings and machine</h2>\n<table class=\"settings\">"
    )?;
    for (k, v) in rows {
        writeln!(h, "<tr><th>{}</th><td>{}</td></tr>", escape(k), escape(&v))?;
    }
    writeln!(h, "</table>")?;
    Ok(())
}

/// Says where runs were not measured alike (their ratios then mean little).
fn mismatches(h: &mut String, runs: &[Run]) -> Result<()> {
    let first = &runs[0];
    for r in &runs[1..] {
        if let Some(sentence) = crate::alike::not_alike(first, r) {
            writeln!(h, "<p class=\"warn\">{}</p>", escape(&sentence))?;
        }
    }
    Ok(())
}

fn results(h: &mut String, runs: &[Run], ours: Option<&BenchRecord>) -> Result<()> {
    let peak = ours
        .and_then(|o| o.matmul_peak)
        .map(|p| p.gflops_per_second);
    writeln!(h, "<h2>Results</h2>\n<table>")?;
    writeln!(
        h,
        "<tr><th>framework</th><th>threads</th><th class=\"text\">mode</th><th>steps</th><th>mean s</th><th>sd s</th>\
         <th>median s</th><th>min s</th><th>p90 s</th><th>max s</th><th>images/s</th>\
         <th>GFLOP/s</th><th>of peak</th><th>peak RSS</th><th>median / {}'s</th></tr>",
        escape(&runs[0].name)
    )?;
    for r in runs {
        for m in &r.modes {
            let s = &m.stats;
            let gflops = m.gflops_per_second();
            let baseline = runs[0]
                .modes
                .iter()
                .find(|b| b.mode == m.mode)
                .map(|b| b.stats.median);
            let cells = [
                format!("{}", s.steps),
                format!("{:.3}", s.mean),
                format!("{:.3}", s.sd),
                format!("{:.3}", s.median),
                format!("{:.3}", s.min),
                format!("{:.3}", s.p90),
                format!("{:.3}", s.max),
                m.images_per_second(r.batch)
                    .map_or("-".to_string(), |i| format!("{i:.2}")),
                gflops.map_or("-".to_string(), |g| format!("{g:.1}")),
                match (gflops, peak) {
                    (Some(g), Some(p)) if p > 0.0 => format!("{:.0}%", 100.0 * g / p),
                    _ => "-".to_string(),
                },
                m.peak_rss_bytes.map_or("-".to_string(), bytes),
                match baseline {
                    Some(b) if b > 0.0 => format!("{:.2}x", s.median / b),
                    _ => "-".to_string(),
                },
            ];
            write!(
                h,
                "<tr><td class=\"text\">{}</td><td>{}</td><td class=\"text\">{}{}</td>",
                escape(&r.name),
                r.threads.map_or("-".to_string(), |t| t.to_string()),
                m.mode.label(),
                if m.interrupted { " (interrupted)" } else { "" }
            )?;
            for c in cells {
                write!(h, "<td>{c}</td>")?;
            }
            writeln!(h, "</tr>")?;
        }
    }
    writeln!(h, "</table>")?;
    Ok(())
}

fn throughput(h: &mut String, runs: &[Run], ours: Option<&BenchRecord>) -> Result<()> {
    let rates: Vec<Rate> = runs
        .iter()
        .enumerate()
        .flat_map(|(i, r)| {
            r.modes.iter().filter_map(move |m| {
                m.gflops_per_second().map(|g| Rate {
                    label: format!("{} {}", r.name, m.mode.label().to_lowercase()),
                    colour: colour(i),
                    gflops_per_second: g,
                })
            })
        })
        .collect();
    if rates.is_empty() {
        return Ok(());
    }
    let peak = ours.and_then(|o| o.matmul_peak).map(|p| {
        (
            p.gflops_per_second,
            format!("the {n}x{n}x{n} matrix product's rate", n = p.n),
        )
    });
    writeln!(h, "<h2>Throughput</h2>")?;
    writeln!(
        h,
        "{}",
        plot::throughput(&rates, peak.as_ref().map(|(p, w)| (*p, w.as_str())))?
    )?;
    Ok(())
}

fn per_layer(h: &mut String, runs: &[Run]) -> Result<()> {
    for r in runs {
        for m in r.modes.iter().filter(|m| !m.per_layer.is_empty()) {
            let backward = m.mode == Mode::ForwardBackward;
            let bars: Vec<LayerBar> = m
                .per_layer
                .iter()
                .map(|l| LayerBar {
                    layer: &l.layer,
                    forward_ms: l.forward_ms,
                    backward_ms: l.backward_ms,
                })
                .collect();
            writeln!(
                h,
                "<h2>{} by layer ({})</h2>",
                m.mode.label(),
                escape(&r.name)
            )?;
            writeln!(
                h,
                "{}",
                plot::layer_times(
                    &format!("{}: milliseconds per layer per timed step", m.mode.label()),
                    &bars,
                    backward
                )?
            )?;
            roofline(h, r, m)?;
        }
    }
    Ok(())
}

/// The mode's roofline section of the page, where there is one.
fn roofline(h: &mut String, r: &Run, m: &RunMode) -> Result<()> {
    if let Some(svg) = roofline_chart(r, m)? {
        writeln!(
            h,
            "<p class=\"note\">Each layer at its arithmetic intensity (FLOPs over the bytes it must \
             move, <code>vgg summary --columns roofline</code>) and its achieved rate, under the \
             machine's measured roofs. FLOPs are those the backend executed where it says which \
             method each convolution ran by (Winograd F(4x4, 3x3): a quarter of the direct method's \
             products), else the direct method's; a pool does no arithmetic and has no point.</p>{svg}"
        )?;
    }
    Ok(())
}

/// The mode's layers on a roofline (SVG), under the run's own measured roofs (ours; a peer's
/// record has neither); None where the record does not count the layers' FLOPs and bytes (made
/// without `--per-layer`, or before they were kept).
pub fn roofline_chart(r: &Run, m: &RunMode) -> Result<Option<String>> {
    let mut points = Vec::new();
    for l in &m.per_layer {
        // The products the backend executed where it says (Winograd does a quarter of the direct
        // method's), so that no point stands above the compute roof for doing less arithmetic.
        let passes = [
            (
                l.forward_performed_gflops(),
                l.forward_performed_flops(),
                l.forward_bytes,
                false,
            ),
            (
                l.backward_performed_gflops(),
                l.backward_performed_flops(),
                l.backward_bytes,
                true,
            ),
        ];
        for (rate, flops, bytes, backward) in passes {
            if let Some(gflops) = rate {
                points.push(plot::RooflinePoint {
                    label: &l.layer,
                    intensity: vgg_model::cost::intensity(flops, bytes),
                    gflops,
                    backward,
                });
            }
        }
    }
    if points.is_empty() {
        return Ok(None);
    }
    let roofs = plot::Roofs {
        peak_gflops: r
            .ours
            .as_ref()
            .and_then(|o| o.matmul_peak)
            .map(|p| p.gflops_per_second),
        bandwidth_gbs: r
            .ours
            .as_ref()
            .and_then(|o| o.memory_bandwidth)
            .map(|b| b.gb_per_second),
    };
    Ok(Some(plot::roofline(
        &format!(
            "{} roofline: {}, batch {} ({})",
            m.mode.label(),
            r.network,
            r.batch,
            r.name
        ),
        &points,
        roofs,
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use vgg_bench::record::{parse, BENCH_SCHEMA, PEER_SCHEMA};
    use vgg_bench::{step_flops, Stats};
    use vgg_model::{ModelSpec, SpecOptions, VggConfig};

    fn peer_json(framework: &str, steps: &[f64]) -> serde_json::Value {
        serde_json::json!({
            "schema": PEER_SCHEMA, "framework": framework, "version": "1.0", "threads": 2,
            "batch": 2, "image_size": 32,
            "modes": {"forward-backward": {"step_seconds": steps}, "forward": {"step_seconds": steps}}
        })
    }

    /// The record as `vgg report` reads it from a file named `name`.
    fn read_as(value: &serde_json::Value, name: &str) -> Run {
        parse(value.to_string().as_bytes(), Path::new(name)).unwrap()
    }

    fn read(value: &serde_json::Value) -> Run {
        read_as(value, "record.json")
    }

    fn load_error(value: serde_json::Value) -> String {
        parse(value.to_string().as_bytes(), Path::new("record.json"))
            .expect_err("refused")
            .to_string()
    }

    #[test]
    fn a_peer_record_is_read_with_its_statistics_and_flops() {
        let run = read(&peer_json("PyTorch", &[0.5, 0.25, 1.0]));
        assert_eq!(run.name, "PyTorch 1.0");
        // Forward first, whatever the file's order.
        assert_eq!(run.modes[0].mode, Mode::Forward);
        let m = &run.modes[1];
        assert_eq!((m.stats.median, m.stats.max), (0.5, 1.0));
        let spec = ModelSpec::new(
            VggConfig::Vgg16,
            SpecOptions {
                height: 32,
                width: 32,
                ..SpecOptions::default()
            },
        )
        .unwrap();
        assert_eq!(
            m.flops_per_step,
            step_flops(&spec, 2, Mode::ForwardBackward)
        );
        assert!(m.gflops_per_second().unwrap() > 0.0);
    }

    #[test]
    fn records_that_are_not_benchmarks_are_refused_by_name() {
        assert!(load_error(serde_json::json!({"a": 1})).contains("no \"schema\" field"));
        assert!(load_error(serde_json::json!({"schema": "vgg-bench/9"})).contains("newer vgg"));
        assert!(load_error(serde_json::json!({"schema": BENCH_SCHEMA}))
            .contains("not a valid vgg-bench/1 record"));
        assert!(load_error(peer_json("X", &[0.1, -1.0])).contains("step time of -1e0 s"));
        let mut zero = peer_json("X", &[0.1]);
        zero["batch"] = 0.into();
        assert!(load_error(zero).contains("batch size is 0"));
        let mut odd = peer_json("X", &[0.1]);
        odd["modes"] = serde_json::json!({"sideways": {"step_seconds": [0.1]}});
        assert!(load_error(odd).contains("sideways"));
        let e = parse(b"not json", Path::new("text.json")).unwrap_err();
        assert!(e.to_string().contains("is not JSON"), "{e}");
    }

    #[test]
    fn the_page_escapes_what_the_records_say_and_warns_of_unlike_runs() {
        let a = read(&peer_json("<script>alert(1)</script>", &[0.1, 0.2]));
        let mut other = peer_json("B", &[0.3]);
        other["batch"] = 4.into();
        other["precision"] = "bf16".into();
        let runs = vec![a, read(&other)];
        let html = page(&runs).unwrap();
        assert!(!html.contains("<script>"), "unescaped");
        assert!(html.contains("&lt;script&gt;"));
        assert!(html.contains("batch 4 against 2"));
        assert!(html.contains("precision bf16 against f32"));
        // Self-contained: nothing fetched.
        for external in ["<script", "src=\"http", "href=\"http", "@import", "url("] {
            assert!(!html.contains(external), "{external}");
        }
        // Two modes, each a series and a distribution, and the throughput bars.
        assert_eq!(html.matches("<svg").count(), 5);
        assert!(matches!(page(&[]), Err(ReportError::NoRuns)));
    }

    #[test]
    fn repeated_names_are_told_apart_by_file() {
        let (a, b) = (PathBuf::from("before.json"), PathBuf::from("after.json"));
        let runs = vec![
            read_as(&peer_json("T", &[0.1]), "before.json"),
            read_as(&peer_json("T", &[0.2]), "after.json"),
        ];
        let runs = distinct_names(runs, &[a, b]);
        assert_eq!(runs[0].name, "T 1.0 (before.json)");
        assert_eq!(runs[1].name, "T 1.0 (after.json)");
        let runs = distinct_names(vec![read(&peer_json("U", &[0.1]))], &["c.json".into()]);
        assert_eq!(runs[0].name, "U 1.0");
    }

    #[test]
    fn long_series_are_thinned_to_a_bounded_number_of_points() {
        let many = vec![0.1; 3 * MAX_SERIES_POINTS + 1];
        let run = Run {
            name: "x".into(),
            network: "vgg16".into(),
            precision: None,
            image: None,
            batch: 1,
            threads: None,
            ours: None,
            modes: vec![RunMode {
                mode: Mode::Forward,
                stats: Stats::of(&many),
                step_seconds: many.clone(),
                flops_per_step: None,
                peak_rss_bytes: None,
                interrupted: false,
                per_layer: Vec::new(),
            }],
        };
        let (kept, stride) = thinned(&[(0, &run, &run.modes[0])]);
        assert_eq!(stride, 4);
        assert!(kept[0].len() <= MAX_SERIES_POINTS);
        assert!(page(&[run]).unwrap().contains("every 4th step"));
    }
}
