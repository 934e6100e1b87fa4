//! The benchmark report as people see it: `vgg bench --report` and `vgg report` write the same
//! self-contained page, a real browser (headless Chromium) draws its charts, and bad records are
//! refused by name.

mod browser;
mod common;

use std::path::{Path, PathBuf};

use browser::screenshot;
use common::{ok, ok_owned as run, refused, tiny_bench};
use resvg::tiny_skia;

fn path(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// A peer's record as bench/peers/common.py writes it, with made-up steps `factor` times ours.
fn peer_record(dir: &Path, framework: &str, ours: &serde_json::Value, factor: f64) -> PathBuf {
    let mut modes = serde_json::Map::new();
    for m in ours["modes"].as_array().unwrap() {
        let steps: Vec<f64> = m["step_seconds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_f64().unwrap() * factor)
            .collect();
        modes.insert(
            m["mode"].as_str().unwrap().to_string(),
            serde_json::json!({"step_seconds": steps, "peak_rss_bytes": 123456789}),
        );
    }
    let record = serde_json::json!({
        "schema": "vgg-peer-bench/1", "framework": framework, "version": "9.9", "threads": 2,
        "batch": 2, "image_size": 32, "burn_in": 1, "num_batches": 8, "modes": modes,
    });
    let file = dir.join(format!("{framework}.json"));
    std::fs::write(&file, record.to_string()).unwrap();
    file
}

#[test]
fn bench_and_report_write_the_same_page_from_the_same_record() {
    let dir = tempfile::tempdir().unwrap();
    let (json, page) = (dir.path().join("run.json"), dir.path().join("run.html"));
    run(&tiny_bench(&[
        "--json",
        &path(&json),
        "--report",
        &path(&page),
    ]));
    let from_bench = std::fs::read_to_string(&page).unwrap();
    let again = dir.path().join("again.html");
    assert_eq!(ok(&["report", &path(&json), "--output", &path(&again)]), "");
    assert_eq!(std::fs::read_to_string(&again).unwrap(), from_bench);
    assert_eq!(ok(&["report", &path(&json)]), from_bench, "stdout");
    for needle in [
        "<!DOCTYPE html>",
        "Settings and machine",
        "matrix-product peak",
        "logical CPUs",
        "Forward: step times",
        "Forward-backward: step times",
        "Throughput",
    ] {
        assert!(from_bench.contains(needle), "{needle}");
    }
    // The record carries what the page shows.
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(record["matmul_peak"]["gflops_per_second"].as_f64().unwrap() > 0.0);
    assert!(record["machine"]["logical_cpus"].as_u64().unwrap() >= 1);
}

#[test]
fn bad_records_and_outputs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.json");
    refused(&["report", &path(&missing)], &["missing.json"]);
    let text = dir.path().join("notes.json");
    std::fs::write(&text, "{\"a\": 1}").unwrap();
    refused(&["report", &path(&text)], &["notes.json", "schema"]);
    let truncated = dir.path().join("cut.json");
    std::fs::write(&truncated, "{\"schema\": \"vgg-bench/1\", \"modes\": [").unwrap();
    refused(&["report", &path(&truncated)], &["cut.json", "not JSON"]);
    refused(&["report"], &["RECORD.json"]);
    // Never written through a link.
    let json = dir.path().join("run.json");
    run(&tiny_bench(&["--mode", "forward", "--json", &path(&json)]));
    let target = dir.path().join("target.html");
    std::fs::write(&target, "keep").unwrap();
    let link = dir.path().join("link.html");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    refused(
        &["report", &path(&json), "-o", &path(&link)],
        &["link.html"],
    );
    refused(
        &tiny_bench(&["--report", &path(&link)])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        &["link.html"],
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
}

/// Pixels within a few levels of `rgb` in each channel.
fn pixels_of(p: &tiny_skia::Pixmap, rgb: (u8, u8, u8)) -> usize {
    let near = |a: u8, b: u8| a.abs_diff(b) <= 6;
    p.pixels()
        .iter()
        .filter(|c| near(c.red(), rgb.0) && near(c.green(), rgb.1) && near(c.blue(), rgb.2))
        .count()
}

const OURS: (u8, u8, u8) = (31, 119, 180);
const SECOND: (u8, u8, u8) = (255, 127, 14);
const THIRD: (u8, u8, u8) = (44, 160, 44);
const FORWARD: (u8, u8, u8) = (78, 121, 167);
const BACKWARD: (u8, u8, u8) = (242, 142, 43);
const PEAK: (u8, u8, u8) = (214, 39, 40);

#[test]
fn a_browser_draws_the_report_charts() {
    let dir = tempfile::tempdir().unwrap();
    let (json, page) = (dir.path().join("ours.json"), dir.path().join("ours.html"));
    run(&tiny_bench(&[
        "--per-layer",
        "--json",
        &path(&json),
        "--report",
        &path(&page),
    ]));
    let shot = screenshot(&page, 1200, 4200);
    let (w, h) = (shot.width() as usize, shot.height() as usize);
    assert_eq!((w, h), (1200, 4200));
    let white = pixels_of(&shot, (255, 255, 255));
    assert!(white < w * h * 95 / 100, "the page is almost blank");
    // Text: dark glyphs.
    let ink = shot
        .pixels()
        .iter()
        .filter(|c| (c.red() as u32 + c.green() as u32 + c.blue() as u32) < 200)
        .count();
    assert!(ink > 5000, "only {ink} dark pixels: no text?");
    // Our series lines and throughput bars, the layers' forward and backward bars, the peak line.
    for (what, colour, least) in [
        ("our series and bars", OURS, 3000),
        ("forward per layer", FORWARD, 3000),
        ("backward per layer", BACKWARD, 2000),
        ("the matrix-product peak", PEAK, 40),
    ] {
        let n = pixels_of(&shot, colour);
        assert!(
            n >= least,
            "{what}: {n} pixels of {colour:?}, expected {least}+"
        );
    }
    // Without peers there is no second framework's colour.
    assert!(pixels_of(&shot, SECOND) < 50);

    // Side by side with two peers (the xtask's --peers --report path). Our step times are fixed
    // first: the pixels counted depend on the series' shapes (how tall each histogram bar is), and
    // this test checks the drawing, not the machine's timing.
    let mut ours: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for (i, m) in ours["modes"].as_array_mut().unwrap().iter_mut().enumerate() {
        let base = 0.010 * (i + 1) as f64;
        m["step_seconds"] = [1.0, 1.2, 1.1, 1.3, 1.0, 1.2, 1.4, 1.1]
            .iter()
            .map(|f| base * f)
            .collect();
    }
    std::fs::write(&json, ours.to_string()).unwrap();
    let torch = peer_record(dir.path(), "PyTorch", &ours, 2.0);
    let tf = peer_record(dir.path(), "TensorFlow", &ours, 1.5);
    let side = dir.path().join("side.html");
    ok(&[
        "report",
        &path(&json),
        &path(&torch),
        &path(&tf),
        "-o",
        &path(&side),
    ]);
    let html = std::fs::read_to_string(&side).unwrap();
    assert!(html.contains("PyTorch 9.9") && html.contains("TensorFlow 9.9"));
    assert!(html.contains("2.00x") && html.contains("1.50x"), "ratios");
    let shot = screenshot(&side, 1200, 4200);
    for (what, colour) in [("ours", OURS), ("PyTorch", SECOND), ("TensorFlow", THIRD)] {
        let n = pixels_of(&shot, colour);
        eprintln!("{what}: {n} pixels of {colour:?}");
        assert!(n >= 1500, "{what}: {n} pixels of {colour:?}");
    }
}

#[test]
fn the_roofline_is_drawn_from_a_per_layer_record_and_refused_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let (layers, plain) = (
        dir.path().join("layers.json"),
        dir.path().join("plain.json"),
    );
    run(&tiny_bench(&["--per-layer", "--json", &path(&layers)]));
    run(&tiny_bench(&["--json", &path(&plain)]));
    let svg = ok(&["report", &path(&layers), "--format", "roofline"]);
    assert!(svg.trim_start().starts_with("<svg"), "{svg}");
    for needle in [
        "compute roof",
        "memory roof",
        "\nconv1_1\n",
        "\nfc6\n",
        "roofline: vgg11",
    ] {
        assert!(svg.contains(needle), "{needle} missing");
    }
    let page = ok(&["report", &path(&layers)]);
    assert!(page.contains("memory roof") && page.contains("arithmetic intensity"));
    refused(
        &["report", &path(&plain), "--format", "roofline"],
        &["counts no layer's FLOPs and bytes", "--per-layer"],
    );
}
