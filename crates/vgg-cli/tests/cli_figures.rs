//! The figures as people see them: every SVG `vgg` writes is rendered with a real SVG renderer
//! (resvg) and its pixels checked: the declared size, not blank, and ink where each label is.
//! Set VGG_FIGURES=DIR to keep the renderings as PNG files.

mod common;

use common::ok;
use resvg::{tiny_skia, usvg};

/// The SVG rendered at its own size, with the system's fonts.
fn render(svg: &str) -> tiny_skia::Pixmap {
    let mut options = usvg::Options::default();
    let fonts = options.fontdb_mut();
    fonts.load_system_fonts();
    assert!(
        !fonts.is_empty(),
        "no fonts on this machine: install one (Debian: fonts-dejavu-core) to render the labels"
    );
    fonts.set_sans_serif_family("DejaVu Sans");
    let tree = usvg::Tree::from_str(svg, &options).expect("the SVG parses");
    let size = tree.size().to_int_size();
    let mut pixmap = tiny_skia::Pixmap::new(size.width(), size.height()).expect("a pixmap");
    resvg::render(&tree, tiny_skia::Transform::default(), &mut pixmap.as_mut());
    pixmap
}

/// The number after `name="` in an element's text.
fn attribute(element: &str, name: &str) -> Option<f64> {
    let key = format!(" {name}=\"");
    let start = element.find(&key)? + key.len();
    element[start..].split('"').next()?.parse().ok()
}

fn dark(p: &tiny_skia::Pixmap, x: u32, y: u32) -> bool {
    let c = p.pixel(x, y).expect("inside");
    c.alpha() > 0 && (c.red() as u32 + c.green() as u32 + c.blue() as u32) < 3 * 140
}

/// Checks the rendering: the size the SVG declares, some share of it drawn, and dark pixels
/// (glyphs) within a few pixels of every text element's anchor.
fn check(svg: &str, name: &str, min_ink: f64) -> tiny_skia::Pixmap {
    let pixmap = render(svg);
    let head = &svg[..svg.find('>').unwrap()];
    let (w, h) = (
        attribute(head, "width").unwrap(),
        attribute(head, "height").unwrap(),
    );
    assert_eq!(
        (pixmap.width(), pixmap.height()),
        (w as u32, h as u32),
        "{name}"
    );
    let white = tiny_skia::PremultipliedColorU8::from_rgba(255, 255, 255, 255).unwrap();
    let inked = pixmap.pixels().iter().filter(|&&c| c != white).count();
    let share = inked as f64 / pixmap.pixels().len() as f64;
    assert!(share > min_ink, "{name}: only {:.1}% drawn", 100.0 * share);
    let mut labels = 0;
    for element in svg.split("<text").skip(1) {
        let element = &element[..element.find('>').unwrap()];
        let (x, y) = (
            attribute(element, "x").unwrap(),
            attribute(element, "y").unwrap(),
        );
        let rotated = element.contains("rotate(");
        // Text grows right (or up when rotated) from its anchor; look at a box beside it.
        let (x0, x1, y0, y1) = if rotated {
            (x - 9.0, x + 9.0, y - 40.0, y + 2.0)
        } else {
            (x - 40.0, x + 40.0, y - 4.0, y + 16.0)
        };
        let ink = (x0.max(0.0) as u32..(x1 as u32).min(pixmap.width()))
            .flat_map(|px| {
                (y0.max(0.0) as u32..(y1 as u32).min(pixmap.height())).map(move |py| (px, py))
            })
            .any(|(px, py)| dark(&pixmap, px, py));
        assert!(ink, "{name}: nothing drawn at the label {element}");
        labels += 1;
    }
    assert!(labels > 0, "{name}: no labels");
    if let Some(dir) = std::env::var_os("VGG_FIGURES") {
        pixmap
            .save_png(std::path::Path::new(&dir).join(format!("{name}.png")))
            .unwrap();
    }
    pixmap
}

#[test]
fn the_network_diagram_draws_every_model_at_every_size() {
    for model in ["vgg11", "vgg13", "vgg16", "vgg19"] {
        for size in ["32", "224", "448"] {
            let svg = ok(&[
                "summary",
                "--model",
                model,
                "--image-size",
                size,
                "--format",
                "svg",
            ]);
            assert!(svg.starts_with("<svg"), "{svg}");
            let layers = match model {
                "vgg11" => 8 + 5 + 3,
                "vgg13" => 10 + 5 + 3,
                "vgg16" => 13 + 5 + 3,
                _ => 16 + 5 + 3,
            };
            // One block per layer and the softmax, each filled and outlined, plus the
            // background and the legend's four swatches.
            let rects = svg.matches("<rect").count();
            assert_eq!(rects, 1 + 2 * (layers + 1) + 4, "{model} at {size}");
            // The blocks' scales are said, not left to guess.
            for label in [
                "conv1_1",
                "pool5",
                "fc8",
                "softmax",
                "stage 5",
                "params",
                "RF",
                "square-root scale",
                "log scale",
            ] {
                assert!(svg.contains(label), "{model} at {size}: no {label}");
            }
            check(&svg, &format!("diagram-{model}-{size}"), 0.05);
        }
    }
}

#[test]
fn the_training_curves_are_drawn() {
    let dir = tempfile::tempdir().unwrap();
    let plot = dir.path().join("curves.svg");
    let ckpt = dir.path().join("c.safetensors");
    ok(&[
        "train",
        "--width-mult",
        "0.0625",
        "--hidden",
        "16",
        "--epochs",
        "3",
        "--output",
        ckpt.to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
    ]);
    let svg = std::fs::read_to_string(&plot).unwrap();
    for label in ["cross-entropy loss", "accuracy", "epoch", "train", "test"] {
        assert!(svg.contains(label), "no {label}");
    }
    // Two curves in each panel, each a polyline with three points, and two legend keys.
    let curves = svg
        .split("<polyline")
        .skip(1)
        .filter(|p| {
            p.split("points=\"")
                .nth(1)
                .is_some_and(|pts| pts.split('"').next().unwrap().split_whitespace().count() >= 3)
        })
        .count();
    assert_eq!(curves, 4, "{svg}");
    check(&svg, "training-curves", 0.02);
}

#[test]
fn committed_figures_are_current() {
    // The README shows these; `cargo xtask figures` redraws them (its list is the same).
    let figures: [(&str, &[&str]); 2] = [
        (
            "vgg16.svg",
            &["summary", "--model", "vgg16", "--format", "svg"],
        ),
        (
            "rf-three-3x3.svg",
            &["rf", "--layers", "conv3,conv3,conv3", "--format", "svg"],
        ),
    ];
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/figures");
    for (name, args) in figures {
        let committed = std::fs::read_to_string(dir.join(name)).unwrap();
        assert!(
            committed == ok(args),
            "docs/figures/{name} is not what vgg draws now: run `cargo xtask figures`"
        );
    }
}

#[test]
fn the_receptive_field_picture_shows_three_3x3_against_one_7x7() {
    let svg = ok(&["rf", "--layers", "conv3,conv3,conv3", "--format", "svg"]);
    for label in [
        "after conv3/1: 3x3",
        "after conv3/1: 5x5",
        "after conv3/1: 7x7",
        "one 7x7 kernel",
        "27 for the stack, 49 for one kernel",
    ] {
        assert!(svg.contains(label), "no '{label}' in {svg}");
    }
    check(&svg, "rf-stack", 0.05);
    let svg = ok(&["rf", "--model", "vgg16", "--format", "svg"]);
    assert!(
        svg.contains("after pool5: 212x212") && svg.contains("input 224x224"),
        "{svg}"
    );
    check(&svg, "rf-vgg16", 0.05);
}

#[test]
fn the_benchmark_report_charts_render() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("report.html");
    common::ok_owned(&common::tiny_bench(&[
        "--per-layer",
        "--report",
        page.to_str().unwrap(),
    ]));
    let html = std::fs::read_to_string(&page).unwrap();
    let charts: Vec<&str> = html
        .split("<svg")
        .skip(1)
        .map(|rest| &rest[..rest.find("</svg>").expect("closed") + "</svg>".len()])
        .collect();
    // Per mode a series and a distribution, the throughput, and per mode the layers' times and
    // their roofline.
    assert_eq!(charts.len(), 2 * 2 + 1 + 2 * 2);
    for (i, chart) in charts.iter().enumerate() {
        check(&format!("<svg{chart}"), &format!("report-chart-{i}"), 0.03);
    }
}
