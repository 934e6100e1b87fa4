//! `vgg explain` as people see it: its pictures checked pixel by pixel against PyTorch's maps
//! (tests/fixtures/explain, from hooks on the classify fixture's network and picture), its page
//! drawn by a real browser, a trained digits network explained on its held-out images, and bad
//! requests refused by name before anything is written.

mod browser;
mod common;

use std::path::Path;

use common::{fixture, ok, refused, s};
use vgg_nn::io::{self, HostTensor, TensorFile};

fn tensor<'a>(file: &'a TensorFile, name: &str) -> &'a HostTensor {
    &file.tensors.iter().find(|(n, _)| n == name).unwrap().1
}

fn rgb(path: &Path) -> image::RgbImage {
    image::open(path).unwrap().to_rgb8()
}

fn colour(gradient: colorous::Gradient, t: f32) -> [f32; 3] {
    let c = gradient.eval_continuous(t.clamp(0.0, 1.0) as f64);
    [c.r as f32, c.g as f32, c.b as f32]
}

/// The share of pixels within `levels` of `want(x, y)` in every channel.
fn share_within(pic: &image::RgbImage, levels: f32, want: impl Fn(u32, u32) -> [f32; 3]) -> f64 {
    let close = pic
        .enumerate_pixels()
        .filter(|(x, y, p)| {
            let w = want(*x, *y);
            (0..3).all(|c| (p[c] as f32 - w[c]).abs() <= levels)
        })
        .count();
    close as f64 / (pic.width() * pic.height()) as f64
}

fn explain_fixture(out: &Path, extra: &[&str]) -> String {
    let weights = fixture("classify", "weights.safetensors");
    let image = fixture("classify", "image.png");
    let mut args = vec!["explain", "--weights", &weights, &image, "--output", s(out)];
    args.extend(extra);
    ok(&args)
}

#[test]
fn grad_cam_and_saliency_pictures_match_pytorchs_maps() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("explained");
    let text = explain_fixture(&out, &[]);
    let want =
        io::load_safetensors(Path::new(&fixture("explain", "expected.safetensors"))).unwrap();
    let top = &want.metadata["top_class"];
    assert!(
        text.contains(&format!("explained: class {top} black widow")),
        "{text}"
    );
    assert!(text.contains("Grad-CAM at conv5_2 (14x14)"), "{text}");
    // The input as the network sees it is torchvision's preparation, to the level.
    let input = rgb(&out.join("image.input.png"));
    let x = tensor(&want, "input");
    let (mean, std) = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);
    let prepared = |px: u32, py: u32| -> [f32; 3] {
        std::array::from_fn(|c| {
            let v = x.data[(c * 224 + py as usize) * 224 + px as usize] * std[c] + mean[c];
            (v * 255.0).round().clamp(0.0, 255.0)
        })
    };
    assert_eq!(share_within(&input, 0.0, prepared), 1.0);
    // Grad-CAM over it: PyTorch's map, scaled to its peak, in turbo colours blended in
    // proportion (0.6 at the peak); where the map is zero, the picture itself.
    let cam = tensor(&want, "cam_conv5_2_top_224");
    let peak = cam.data.iter().cloned().fold(0.0, f32::max);
    let overlay = rgb(&out.join("image.gradcam-conv5_2.png"));
    let blended = |px: u32, py: u32| -> [f32; 3] {
        let t = cam.data[py as usize * 224 + px as usize] / peak;
        let (base, heat) = (prepared(px, py), colour(colorous::TURBO, t));
        std::array::from_fn(|c| (1.0 - 0.6 * t) * base[c] + 0.6 * t * heat[c])
    };
    let share = share_within(&overlay, 1.0, blended);
    assert!(share > 0.999, "{share} of Grad-CAM's pixels within a level");
    // Grad-CAM++ likewise, against pytorch-grad-cam's formula on PyTorch's gradients.
    let campp = tensor(&want, "campp_conv5_2_top_224");
    let peak = campp.data.iter().cloned().fold(0.0, f32::max);
    let overlay = rgb(&out.join("image.gradcampp-conv5_2.png"));
    let share = share_within(&overlay, 1.0, |px, py| {
        let t = campp.data[py as usize * 224 + px as usize] / peak;
        let (base, heat) = (prepared(px, py), colour(colorous::TURBO, t));
        std::array::from_fn(|c| (1.0 - 0.6 * t) * base[c] + 0.6 * t * heat[c])
    });
    assert!(
        share > 0.999,
        "{share} of Grad-CAM++'s pixels within a level"
    );
    // Saliency: PyTorch's |d logit / d input|, max over channels, scaled to its 99th percentile.
    let sal = tensor(&want, "saliency_top");
    let mut sorted = sal.data.clone();
    sorted.sort_by(f32::total_cmp);
    let q = sorted[((sorted.len() - 1) as f32 * 0.99).round() as usize];
    let saliency = rgb(&out.join("image.saliency.png"));
    let share = share_within(&saliency, 2.0, |px, py| {
        colour(
            colorous::INFERNO,
            sal.data[py as usize * 224 + px as usize] / q,
        )
    });
    assert!(
        share > 0.995,
        "{share} of saliency's pixels within 2 levels"
    );
}

#[test]
fn a_browser_draws_the_page_with_its_pictures() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("explained");
    let text = explain_fixture(&out, &["--features", "conv1_1", "--smooth-grad", "2"]);
    for name in [
        "image.input.png",
        "image.gradcam-conv5_2.png",
        "image.gradcampp-conv5_2.png",
        "image.saliency.png",
        "image.smoothgrad.png",
        "image.conv1_1.png",
        "filters-conv1_1.png",
        "index.html",
    ] {
        assert!(out.join(name).is_file(), "{name} missing: {text}");
        assert!(text.contains(name), "{name} not said: {text}");
    }
    let page = std::fs::read_to_string(out.join("index.html")).unwrap();
    assert_eq!(page.matches("data:image/png;base64,").count(), 7);
    assert!(page.contains("black widow"));
    let shot = browser::screenshot(&out.join("index.html"), 1200, 1600);
    // Saliency's and SmoothGrad's brightest pixels (inferno's end) and conv1_1's grid (viridis'
    // start, each map's lowest value): drawn only if the browser decoded the inline pictures.
    let count = |c: [f32; 3]| {
        shot.pixels()
            .iter()
            .filter(|p| {
                (p.red() as f32 - c[0]).abs() <= 3.0
                    && (p.green() as f32 - c[1]).abs() <= 3.0
                    && (p.blue() as f32 - c[2]).abs() <= 3.0
            })
            .count()
    };
    let inferno = count(colour(colorous::INFERNO, 1.0));
    let viridis = count(colour(colorous::VIRIDIS, 0.0));
    assert!(inferno > 500, "{inferno} saliency peak pixels on the page");
    assert!(viridis > 5000, "{viridis} activation pixels on the page");
}

#[test]
fn a_trained_digits_network_is_explained_on_its_held_out_images() {
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("digits.safetensors");
    ok(&["train", "--epochs", "1", "--output", s(&weights)]);
    let out = dir.path().join("seen");
    let text = ok(&[
        "explain",
        "--weights",
        s(&weights),
        "--held-out",
        "2",
        "--layer",
        "conv3_2",
        "--features",
        "conv1_1",
        "--output",
        s(&out),
    ]);
    assert_eq!(text.matches("true class ").count(), 2, "{text}");
    assert!(text.contains("held-out image 1 of digits"), "{text}");
    assert!(text.contains("Grad-CAM at conv3_2 (8x8)"), "{text}");
    // The 32x32 digit is drawn 4x, in grey; conv1_1's filters take one channel: grey too.
    let input = rgb(&out.join("held-out-0.input.png"));
    assert_eq!((input.width(), input.height()), (128, 128));
    assert!(input.pixels().all(|p| p[0] == p[1] && p[1] == p[2]));
    assert!(input.pixels().any(|p| p[0] > 200) && input.pixels().any(|p| p[0] < 50));
    let filters = rgb(&out.join("filters-conv1_1.png"));
    assert!(filters.pixels().all(|p| p[0] == p[1] && p[1] == p[2]));
    assert!(out.join("held-out-1.conv1_1.png").is_file());
}

#[test]
fn bad_requests_are_refused_by_name_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let weights = fixture("classify", "weights.safetensors");
    let image = fixture("classify", "image.png");
    let out = dir.path().join("out");
    let explain = |extra: &[&str], needles: &[&str]| {
        let mut args = vec![
            "explain",
            "--weights",
            &weights,
            &image,
            "--output",
            s(&out),
        ];
        args.extend(extra);
        refused(&args, needles);
        assert!(!out.exists(), "{extra:?} left {}", out.display());
    };
    explain(
        &["--layer", "conv9_9"],
        &["no layer named 'conv9_9'", "conv5_2", "--layer"],
    );
    explain(&["--layer", "fc6"], &["fc6 is fully connected"]);
    explain(&["--features", "conv1_1,fc8"], &["fc8 is fully connected"]);
    explain(
        &["--class", "1000"],
        &["class 1000 is out of range", "1000 classes"],
    );
    explain(&["--smooth-grad", "5000"], &["--smooth-grad 5000"]);
    explain(&["--noise", "0"], &["(0, 1]"]);
    explain(&["--held-out", "2"], &["cannot be used with"]);
    // Outputs: a file, a link, a missing parent, an input among the outputs.
    let file = dir.path().join("file");
    std::fs::write(&file, "keep").unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(dir.path(), &link).unwrap();
    for (target, needle) in [
        (&file, "is a file, not a directory"),
        (&link, "a symbolic link"),
        (&dir.path().join("no/such"), "does not exist"),
    ] {
        refused(
            &[
                "explain",
                "--weights",
                &weights,
                &image,
                "--output",
                s(target),
            ],
            &[needle],
        );
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep");
    let inside = dir.path().join("inside");
    std::fs::create_dir(&inside).unwrap();
    let copy = inside.join("image.png");
    std::fs::copy(&image, &copy).unwrap();
    let input_as_output = inside.join("image.input.png");
    std::fs::copy(&image, &input_as_output).unwrap();
    refused(
        &[
            "explain",
            "--weights",
            &weights,
            s(&input_as_output),
            s(&copy),
            "--output",
            s(&inside),
        ],
        &["image.input.png"],
    );
    // A corrupt image stops the run before anything is written.
    let bad = dir.path().join("bad.png");
    std::fs::write(&bad, "not a picture").unwrap();
    refused(
        &[
            "explain",
            "--weights",
            &weights,
            &image,
            s(&bad),
            "--output",
            s(&out),
        ],
        &["bad.png"],
    );
    assert_eq!(std::fs::read_dir(&out).map_or(0, |d| d.count()), 0);
    // Held-out images need weights trained on a data set of their size.
    refused(
        &[
            "explain",
            "--weights",
            &weights,
            "--held-out",
            "1",
            "--output",
            s(&out),
        ],
        &["does not take the digits data set's 1x32x32 images"],
    );
}
