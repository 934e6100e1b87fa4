//! `vgg bench` on a tiny setting: the reference's line formats, the JSON record, statistics that
//! match the per-step times, and refusals of invalid settings.

mod common;

use common::{ok, refused};

const TINY: [&str; 15] = [
    "bench",
    "--model",
    "vgg11",
    "--width-mult",
    "0.125",
    "--hidden",
    "64",
    "--image-size",
    "32",
    "--batch-size",
    "2",
    "--num-batches",
    "3",
    "--burn-in",
    "1",
];

fn tiny(extra: &[&str]) -> Vec<String> {
    TINY.iter().chain(extra).map(|s| s.to_string()).collect()
}

/// "YYYY-MM-DD HH:MM:SS.ffffff: rest" -> rest, checking the timestamp's shape.
fn after_timestamp(line: &str) -> &str {
    let (stamp, rest) = line.split_at(26);
    let digits = |r: std::ops::Range<usize>| stamp[r].chars().all(|c| c.is_ascii_digit());
    assert!(
        digits(0..4)
            && &stamp[4..5] == "-"
            && digits(11..13)
            && &stamp[19..20] == "."
            && digits(20..26),
        "bad timestamp in {line:?}"
    );
    rest.strip_prefix(": ")
        .unwrap_or_else(|| panic!("no ': ' after the timestamp in {line:?}"))
}

#[test]
fn prints_the_reference_lines_and_a_consistent_json_record() {
    let json = std::env::temp_dir().join(format!("vgg-bench-{}.json", std::process::id()));
    let args = tiny(&["--json", json.to_str().unwrap()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = ok(&args);
    let lines: Vec<&str> = out.lines().collect();
    let step_lines: Vec<&&str> = lines.iter().filter(|l| l.contains(": step ")).collect();
    assert_eq!(
        step_lines.len(),
        2,
        "one step line per mode (step 0): {out}"
    );
    for l in step_lines {
        let rest = after_timestamp(l);
        assert!(rest.starts_with("step 0, duration = "), "{l}");
        let secs = rest.trim_start_matches("step 0, duration = ");
        assert!(
            secs.len() >= 5
                && secs.parse::<f64>().is_ok()
                && secs.split('.').nth(1).unwrap().len() == 3
        );
    }
    let summaries: Vec<&str> = lines
        .iter()
        .filter(|l| l.contains(" across "))
        .map(|l| after_timestamp(l))
        .collect();
    assert_eq!(summaries.len(), 2, "{out}");
    assert!(
        summaries[0].starts_with("Forward across 3 steps, ")
            && summaries[0].ends_with(" sec/batch")
    );
    assert!(summaries[1].starts_with("Forward-backward across 3 steps, "));
    assert!(
        out.contains("GFLOP/s") && out.contains("peak RSS") && out.contains("images/s"),
        "{out}"
    );

    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(record["schema"], "vgg-bench/1");
    assert_eq!(record["config"]["model"], "vgg11");
    assert_eq!(record["config"]["batch"], 2);
    let modes = record["modes"].as_array().unwrap();
    assert_eq!(modes.len(), 2);
    for (mode, summary) in modes.iter().zip(&summaries) {
        let steps: Vec<f64> = mode["step_seconds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(steps.len(), 3);
        assert_eq!(mode["burn_in_seconds"].as_array().unwrap().len(), 1);
        let mean = steps.iter().sum::<f64>() / 3.0;
        let sd = (steps.iter().map(|t| (t - mean).powi(2)).sum::<f64>() / 3.0).sqrt();
        let stats = &mode["stats"];
        assert!((stats["mean"].as_f64().unwrap() - mean).abs() < 1e-12);
        assert!((stats["sd"].as_f64().unwrap() - sd).abs() < 1e-12);
        let mut sorted = steps.clone();
        sorted.sort_by(f64::total_cmp);
        assert_eq!(stats["median"].as_f64().unwrap(), sorted[1]);
        assert_eq!(stats["min"].as_f64().unwrap(), sorted[0]);
        // The printed line shows the same mean and sd.
        assert!(
            summary.contains(&format!("{mean:.3} +/- {sd:.3} sec/batch")),
            "{summary} vs {mean} {sd}"
        );
        assert!(mode["flops_per_step"].as_u64().unwrap() > 0);
        assert_eq!(mode["interrupted"], false);
    }
    assert_eq!(modes[0]["mode"], "forward");
    assert_eq!(modes[1]["mode"], "forward-backward");
}

#[test]
fn per_layer_breaks_time_down_by_layer() {
    let args = tiny(&["--per-layer", "--mode", "forward-backward"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = ok(&args);
    assert!(out.contains("Forward-backward by layer"), "{out}");
    for layer in ["conv1_1", "conv5_2", "pool5", "fc6", "fc8"] {
        assert!(
            out.lines().any(|l| l.starts_with(layer)),
            "{layer} missing: {out}"
        );
    }
    assert!(
        !out.contains("Forward across"),
        "only the chosen mode runs: {out}"
    );
    // Each layer's achieved rates against the two roofs, and where the time goes.
    assert!(
        out.contains("GFLOP/s") && out.contains("executed") && out.contains("of bw"),
        "{out}"
    );
    assert!(out.contains("Most time: "), "{out}");
    assert!(out.contains("the measured memory bandwidth"), "{out}");
}

/// The record keeps each layer's FLOPs and bytes (as `vgg summary --columns roofline` counts
/// them) and the measured memory bandwidth, so a report can place the layers on a roofline.
#[test]
fn the_record_places_each_layer_on_the_roofline() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("run.json");
    let mut args = tiny(&["--per-layer", "--mode", "forward-backward"]);
    args.extend(["--json".to_string(), json.to_str().unwrap().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(&args);
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let bandwidth = &record["memory_bandwidth"];
    assert!(
        bandwidth["gb_per_second"].as_f64().unwrap() > 0.0,
        "{record}"
    );
    // The summary of the network TINY benchmarks: its flags up to and with the batch size.
    let network = &TINY[1..TINY.iter().position(|a| *a == "--num-batches").unwrap()];
    let mut summary_args = vec!["summary"];
    summary_args.extend(network);
    summary_args.extend(["--format", "json"]);
    let summary: serde_json::Value = serde_json::from_str(&ok(&summary_args)).unwrap();
    let layers = record["modes"][0]["per_layer"].as_array().unwrap();
    assert_eq!(
        layers.len(),
        summary["layers"].as_array().unwrap().len() + 1
    );
    for l in layers {
        let name = l["layer"].as_str().unwrap();
        let Some(layer) = summary["layers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
        else {
            // The time outside the network's layers (the loss, say) has no FLOPs counted.
            assert_eq!(l["forward_flops"], 0, "{name}");
            continue;
        };
        let cost = &layer["cost"];
        let f = cost["forward_flops"].as_u64().unwrap();
        assert_eq!(l["forward_flops"].as_u64().unwrap(), f, "{name}");
        let b = cost["weight_bytes"].as_u64().unwrap()
            + cost["input_bytes"].as_u64().unwrap()
            + cost["output_bytes"].as_u64().unwrap();
        assert_eq!(l["forward_bytes"].as_u64().unwrap(), b, "{name}");
        let backward = cost["input_gradient_flops"].as_u64().unwrap()
            + cost["weight_gradient_flops"].as_u64().unwrap();
        assert_eq!(l["backward_flops"].as_u64().unwrap(), backward, "{name}");
        // The products executed: this small network's convolutions (under 16 input channels or
        // 56x56) all run by the direct method, which counts what the spec does.
        assert_eq!(l["forward_executed_flops"].as_u64(), Some(f), "{name}");
        assert_eq!(
            l["backward_executed_flops"].as_u64(),
            Some(backward),
            "{name}"
        );
    }
}

#[test]
fn invalid_settings_are_refused() {
    refused(
        &["bench", "--batch-size", "0"],
        &["--batch-size", "at least 1"],
    );
    refused(
        &["bench", "--num-batches", "0"],
        &["--num-batches", "at least 1"],
    );
    refused(
        &["bench", "--image-size", "16"],
        &["16x16", "at least 32x32"],
    );
    refused(&["bench", "--backend", "tpu"], &["tpu", "cpu, cuda"]);
    refused(
        &["bench", "--backend", "cuda", "--num-batches", "1"],
        &["backend unavailable", "--backend cpu"],
    );
    refused(
        &["bench", "--mode", "sideways"],
        &["sideways", "forward, forward-backward, both"],
    );
}

#[test]
fn a_batch_that_cannot_fit_is_refused_before_allocating() {
    let out = common::vgg(&["bench", "--batch-size", "100000"]);
    let err = common::stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("a batch of 100000")
            && err.contains("needs an estimated")
            && err.contains("GiB"),
        "{err}"
    );
    let largest: usize = err
        .split("the largest batch that fits is ")
        .nth(1)
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no largest batch in: {err}"));
    assert!(largest > 0 && largest < 100_000, "{err}");
}

#[cfg(unix)]
#[test]
fn ctrl_c_reports_what_was_measured() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    let args = tiny(&[]);
    let mut args: Vec<String> = args.into_iter().collect();
    // Far more steps than can run before the interrupt.
    let at = args.iter().position(|a| a == "--num-batches").unwrap();
    args[at + 1] = "1000000".into();
    let child = Command::new(env!("CARGO_BIN_EXE_vgg"))
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    // The shell's own kill, present wherever sh is.
    let kill = format!("kill -INT {}", child.id());
    let status = Command::new("sh").args(["-c", &kill]).status().unwrap();
    assert!(status.success());
    let start = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "it stops promptly"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    // Interrupted, as the shell reports a Ctrl-C: 130, after the report.
    assert_eq!(
        out.status.code(),
        Some(130),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find(|l| l.contains("Forward across"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(line.ends_with("sec/batch (interrupted)"), "{line}");
    assert!(
        !stdout.contains("Forward-backward across"),
        "the next mode does not start: {stdout}"
    );
    assert!(
        stdout.contains("mode ") && stdout.contains("Forward "),
        "the summary is printed: {stdout}"
    );
}

#[test]
fn the_cpu_kernels_can_be_capped_and_the_algorithm_chosen() {
    let args = tiny(&[
        "--mode",
        "forward",
        "--isa",
        "portable",
        "--conv-algorithm",
        "im2col",
    ]);
    let out = ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let first = out.lines().next().unwrap();
    assert!(
        first.contains("portable") && first.contains("im2col only"),
        "{first}"
    );
    // F(6x6) Winograd for the forward pass, on request; the backend's name says so.
    let args = tiny(&["--mode", "forward", "--conv-algorithm", "winograd6"]);
    let six = ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let first = six.lines().next().unwrap();
    assert!(first.contains("Winograd F(6x6) forward"), "{first}");
    // The of-peak column and its footnote come with every run.
    assert!(
        out.contains("of peak") && out.contains("matrix product"),
        "{out}"
    );
    #[cfg(target_arch = "x86_64")]
    let has_avx512 = std::arch::is_x86_feature_detected!("avx512f");
    #[cfg(not(target_arch = "x86_64"))]
    let has_avx512 = false;
    let args = tiny(&["--isa", "avx512"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    if has_avx512 {
        assert!(ok(&args).lines().next().unwrap().contains("AVX-512"));
    } else {
        refused(&args, &["--isa", "no AVX-512"]);
    }
    let args = tiny(&["--backend", "cuda", "--isa", "avx2"]);
    refused(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &["--backend cuda"],
    );
}

#[test]
fn the_bf16_mode_names_its_unit_and_its_precision_in_the_record() {
    let json = std::env::temp_dir().join(format!("vgg-bench-bf16-{}.json", std::process::id()));
    let args = tiny(&[
        "--mode",
        "forward",
        "--precision",
        "bf16",
        "--json",
        json.to_str().unwrap(),
    ]);
    let out = ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let first = out.lines().next().unwrap();
    // Or, where the CPU's unit multiplies more slowly than f32 (Intel's AVX512_BF16), named
    // with what it still does.
    assert!(
        first.contains("bf16 products on") || first.contains("weights' streams only: AVX512_BF16"),
        "{first}"
    );
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    std::fs::remove_file(&json).unwrap();
    assert_eq!(record["precision"], "bf16");
    // On the f32 units wherever the AVX-512 path is capped away (AMX and AVX512_BF16 come with it).
    let args = tiny(&["--mode", "forward", "--precision", "bf16", "--isa", "avx2"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    #[cfg(target_arch = "x86_64")]
    let has_avx2 = std::arch::is_x86_feature_detected!("avx2");
    #[cfg(not(target_arch = "x86_64"))]
    let has_avx2 = false;
    if has_avx2 {
        let first = ok(&args).lines().next().unwrap().to_string();
        assert!(first.contains("bf16 products on f32 units"), "{first}");
    }
    let args = tiny(&["--backend", "cuda", "--precision", "bf16"]);
    refused(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &["--precision bf16", "TF32"],
    );
}
