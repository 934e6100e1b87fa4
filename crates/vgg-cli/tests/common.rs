//! Runs the built `vgg` binary.

use std::process::{Command, Output};

pub fn vgg(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vgg"))
        .args(args)
        .output()
        .expect("the vgg binary runs")
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

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

/// Runs and expects a refusal: exit code 2, one line on stderr naming `needles`, no panic.
pub fn refused(args: &[&str], needles: &[&str]) {
    let out = vgg(args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "vgg {args:?}: {err}");
    assert!(!err.contains("panicked"), "vgg {args:?} panicked: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "vgg {args:?} should print one line: {err}"
    );
    for needle in needles {
        assert!(
            err.contains(needle),
            "vgg {args:?}: '{needle}' missing from: {err}"
        );
    }
}
