//! Runs the built `vgg` binary.

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A committed fixture: tests/fixtures/DIR/NAME.
#[allow(dead_code)]
pub fn fixture(dir: &str, name: &str) -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(dir)
        .join(name)
        .to_string_lossy()
        .into_owned()
}

/// A path as an argument.
#[allow(dead_code)]
pub fn s(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

/// Runs the built `vgg` with `args`.
pub fn vgg(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vgg"))
        .args(args)
        .output()
        .expect("the vgg binary runs")
}

/// The run's standard output as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The run's standard error as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs and expects success, returning stdout.
pub fn ok(args: &[&str]) -> String {
    let out = vgg(args);
    assert!(
        out.status.success(),
        "vgg {args:?} failed: {}",
        stderr(&out)
    );
    stdout(&out)
}

/// Runs and expects a refusal: exit code 2, no panic, stderr starting with "error:" (one line
/// for vgg's own refusals; clap adds the usage or a pointer to --help for a malformed command line),
/// naming `needles`.
#[allow(dead_code)]
pub fn refused(args: &[&str], needles: &[&str]) {
    let out = vgg(args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "vgg {args:?}: {err}");
    assert!(!err.contains("panicked"), "vgg {args:?} panicked: {err}");
    assert!(err.starts_with("error: "), "vgg {args:?}: {err}");
    let clap = err.contains("\nUsage: ") || err.contains("For more information, try '--help'");
    assert!(
        clap || err.trim_end().lines().count() == 1,
        "vgg {args:?} should print one line: {err}"
    );
    for needle in needles {
        assert!(
            err.contains(needle),
            "vgg {args:?}: '{needle}' missing from: {err}"
        );
    }
}

/// Runs and expects a failure while running: exit code 1, no panic, one "error:" line naming
/// `needles`.
#[allow(dead_code)]
pub fn failed(args: &[&str], needles: &[&str]) {
    let out = vgg(args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "vgg {args:?}: {err}");
    assert!(!err.contains("panicked"), "vgg {args:?} panicked: {err}");
    assert!(err.starts_with("error: "), "vgg {args:?}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "vgg {args:?}: {err}");
    for needle in needles {
        assert!(
            err.contains(needle),
            "vgg {args:?}: '{needle}' missing from: {err}"
        );
    }
}

/// `vgg bench` on a network small enough for a test (VGG-11 at width 1/8, 32x32, batch 2, one
/// burn-in and eight timed steps), then `extra`.
#[allow(dead_code)]
pub fn tiny_bench(extra: &[&str]) -> Vec<String> {
    [
        "bench",
        "--model",
        "vgg11",
        "--width-mult",
        "0.125",
        "--hidden",
        "32",
        "--image-size",
        "32",
        "--batch-size",
        "2",
        "--num-batches",
        "8",
        "--burn-in",
        "1",
    ]
    .iter()
    .chain(extra)
    .map(|s| s.to_string())
    .collect()
}

/// Runs `args` and expects success, returning stdout.
#[allow(dead_code)]
pub fn ok_owned(args: &[String]) -> String {
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Starts the built `vgg` with `args`, its output piped.
#[allow(dead_code)]
pub fn spawn(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_vgg"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for `child`, killing it and failing if it takes longer than `limit` (a hang or a spin).
#[allow(dead_code)]
pub fn finish_within(mut child: Child, limit: Duration, what: &str) -> Output {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("{what} still running after {limit:?}: it hangs");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// `vgg train` on a small network, quick enough for an epoch in a test (add `--epochs`).
#[allow(dead_code)]
pub const TINY_TRAIN: [&str; 8] = [
    "train",
    "--width-mult",
    "0.125",
    "--hidden",
    "16",
    "--batch-size",
    "64",
    "--threads=2",
];

/// `vgg init` of a freshly drawn network of the digits' shape (VGG-11, width 1/16, hidden 8,
/// 10 classes, one channel, 32x32) to `output`; nothing says which data set it is for.
#[allow(dead_code)]
pub fn init_grey_32(output: &str) {
    ok(&[
        "init",
        "--model",
        "vgg11",
        "--width-mult",
        "0.0625",
        "--hidden",
        "8",
        "--channels",
        "1",
        "--input",
        "32x32",
        "--classes",
        "10",
        "--output",
        output,
    ]);
}
