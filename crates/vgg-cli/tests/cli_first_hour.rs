//! A newcomer's first hour, as the README gives it: `vgg` installed by the README's install line
//! into a fresh root, then every command of "Your first hour" run from a directory outside the
//! repository. They must all succeed, and the training line must reach the accuracy the README
//! states for it, within a point.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// The README's text.
fn readme() -> String {
    std::fs::read_to_string(repo().join("README.md")).unwrap()
}

/// The install command the README gives, as words.
fn install_line(readme: &str) -> Vec<String> {
    let start = readme
        .find("`cargo install ")
        .expect("the README gives an install line");
    let line = &readme[start + 1..];
    let line = &line[..line.find('`').unwrap()];
    line.split_whitespace().map(str::to_string).collect()
}

/// The commands of the "Your first hour" block, comments removed.
fn first_hour(readme: &str) -> Vec<Vec<String>> {
    let section = &readme[readme
        .find("## Your first hour")
        .expect("the section exists")..];
    let block = &section[section.find("```sh").unwrap() + 5..];
    let block = &block[..block.find("```").unwrap()];
    block
        .lines()
        .map(|l| l.split('#').next().unwrap().trim())
        .filter(|l| !l.is_empty())
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

/// The held-out accuracy, in percent, that the README's comment on its `vgg train` line states.
fn stated_accuracy(readme: &str) -> f64 {
    let line = readme
        .lines()
        .find(|l| l.starts_with("vgg train "))
        .expect("the first hour trains");
    let comment = &line[line.find('#').expect("a comment") + 1..];
    let end = comment
        .find("% held out")
        .expect("the comment states the accuracy");
    let number = comment[..end].rsplit([' ', ',', '(']).next().unwrap();
    number.parse().unwrap()
}

/// The accuracy `vgg train` printed last ("test accuracy 98.05% after ...").
fn printed_accuracy(stdout: &str) -> Option<f64> {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.contains("test accuracy "))?;
    let after = &line[line.find("test accuracy ")? + "test accuracy ".len()..];
    after[..after.find('%')?].parse().ok()
}

#[test]
fn the_readme_commands_work_from_anywhere_after_the_readme_install() {
    let text = readme();
    let install = install_line(&text);
    assert_eq!(install[..2], ["cargo", "install"], "{install:?}");
    let root = tempfile::tempdir().unwrap();
    // The README's line, into a temporary root. --debug reuses the test build's artifacts
    // (a release build would take minutes); the line is otherwise run as written.
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(&install[1..])
        .arg("--root")
        .arg(root.path())
        .arg("--debug")
        .arg("--offline")
        .current_dir(repo())
        .env("CARGO_TARGET_DIR", repo().join("target"));
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{install:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let vgg = root.path().join("bin/vgg");
    assert!(vgg.is_file(), "no {}", vgg.display());

    let elsewhere = tempfile::tempdir().unwrap();
    let commands = first_hour(&text);
    assert!(commands.len() >= 5, "{commands:?}");
    for words in commands {
        assert_eq!(words[0], "vgg", "{words:?}");
        let out = Command::new(&vgg)
            .args(&words[1..])
            .current_dir(elsewhere.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{} failed in a fresh directory: {}",
            words.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !out.stdout.is_empty(),
            "{} printed nothing",
            words.join(" ")
        );
        if words[1] == "train" {
            let stdout = String::from_utf8_lossy(&out.stdout);
            let got = printed_accuracy(&stdout).expect("train prints its accuracy");
            let stated = stated_accuracy(&text);
            assert!(
                (got - stated).abs() <= 1.0,
                "the README states {stated}% for `{}`; it reached {got}%",
                words.join(" ")
            );
        }
    }
    assert!(elsewhere.path().join("digits.safetensors").is_file());
}
