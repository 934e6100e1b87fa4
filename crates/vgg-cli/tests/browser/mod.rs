//! A real browser for the tests of pages people open: headless Chromium draws a page into pixels.

use std::path::{Path, PathBuf};
use std::process::Command;

use resvg::tiny_skia;

/// Chromium, from VGG_CHROMIUM or the PATH. The browser test fails without one: a report no
/// browser has drawn is not tested.
pub fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("VGG_CHROMIUM") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in [
            "chromium",
            "chromium-browser",
            "google-chrome",
            "google-chrome-stable",
        ] {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "no Chromium to draw the report with: install it (Debian: apt-get install chromium; \
         .ci/run does) or set VGG_CHROMIUM to a Chromium or Chrome binary"
    );
}

/// The page as headless Chromium draws it, `width` x `height` CSS pixels.
pub fn screenshot(page: &Path, width: u32, height: u32) -> tiny_skia::Pixmap {
    let profile = tempfile::tempdir().unwrap();
    let png = profile.path().join("page.png");
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--window-size={width},{height}"))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("Chromium runs");
    assert!(
        out.status.success() && png.exists(),
        "Chromium drew nothing: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pixmap = tiny_skia::Pixmap::load_png(&png).expect("a PNG");
    if let Some(dir) = std::env::var_os("VGG_FIGURES") {
        std::fs::copy(
            &png,
            Path::new(&dir).join(page.with_extension("png").file_name().unwrap()),
        )
        .unwrap();
    }
    pixmap
}
