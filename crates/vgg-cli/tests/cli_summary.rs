//! `vgg summary`: the layer table, its columns, JSON and errors.

mod common;

use common::{ok, refused};

#[test]
fn vgg16_summary_prints_the_reference_totals() {
    let out = ok(&["summary", "--model", "vgg16"]);
    assert!(out.contains("Total params: 138,357,544"), "{out}");
    assert!(out.contains("Total MACs: 15,470,264,320"), "{out}");
    assert!(out.contains("1 MAC = 2 FLOPs"), "{out}");
    let row = |name: &str| {
        out.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} row"))
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    // layer, op (2 words for convs), shape, weights, biases, params, MACs, RF, jump, memory
    assert_eq!(row("conv5_3")[8], "196");
    assert_eq!(row("pool5")[7], "212");
    assert_eq!(row("conv1_1")[4], "1,728");
}

#[test]
fn json_carries_every_column_and_parses() {
    let out = ok(&[
        "summary", "--model", "vgg19", "--format", "json", "--batch", "4",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
    assert_eq!(v["schema"], "vgg-summary/1");
    assert_eq!(v["model"], "vgg19");
    assert_eq!(v["paper_config"], "E");
    assert_eq!(v["batch"], 4);
    assert_eq!(v["totals"]["params"], 143_667_240u64);
    assert_eq!(v["totals"]["macs_per_image"], 19_632_062_464u64);
    assert_eq!(v["totals"]["macs_per_batch"], 4 * 19_632_062_464u64);
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 16 + 5 + 3);
    let conv = &layers[0];
    for key in [
        "name",
        "op",
        "kernel",
        "stride",
        "padding",
        "relu",
        "dropout",
        "input",
        "output",
        "batch_norm",
        "weights",
        "biases",
        "norm_params",
        "params",
        "macs",
        "receptive_field",
        "floored",
        "torch_index",
        "output_bytes",
    ] {
        assert!(conv.get(key).is_some(), "conv1_1 lacks {key}: {conv}");
    }
    assert_eq!(conv["op"], "conv");
    assert_eq!(conv["receptive_field"]["size"], 3);
    assert_eq!(conv["output_bytes"], 4 * 224 * 224 * 64 * 4);
    let fc8 = layers.last().unwrap();
    assert_eq!(fc8["op"], "linear");
    assert_eq!(fc8["relu"], false);
    assert!(fc8["receptive_field"].is_null());
    for key in [
        "estimated_forward_backward_bytes",
        "saved_for_backward_bytes",
        "params_and_grads_bytes",
    ] {
        assert!(v["memory"][key].as_u64().unwrap() > 0, "{key}");
    }
}

#[test]
fn csv_and_markdown_render() {
    let csv = ok(&["summary", "--model", "vgg11", "--format", "csv"]);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 1 + 8 + 5 + 3);
    assert!(lines[0].starts_with("layer,op,"));
    assert!(lines[1].starts_with("conv1_1,conv3x3/1 p1,224x224x64,1728,64,1792,86704128,3,1,"));
    let md = ok(&["summary", "--model", "vgg13", "--format", "markdown"]);
    assert!(md.starts_with("| layer | op |"));
    assert!(md.contains("|---|---|---:|"));
    assert!(md.contains("- Total params: 133,047,848"));
}

#[test]
fn other_input_sizes_follow_pool5_and_note_floors() {
    let out = ok(&["summary", "--model", "vgg16", "--input", "225x97"]);
    assert!(
        out.contains("note: pool1 floors its odd input 225x97 to 112x48"),
        "{out}"
    );
    assert!(out.contains("7x3x512 = 10752 features"), "{out}");
    let small = ok(&["summary", "--input", "32"]);
    assert!(small.contains("1x1x512"), "{small}");
}

#[test]
fn bad_input_is_refused_with_the_choices() {
    refused(
        &["summary", "--model", "vgg17"],
        &["vgg17", "vgg11, vgg13, vgg16c, vgg16, vgg19"],
    );
    refused(&["summary", "--input", "0x224"], &["0x224", "positive"]);
    refused(
        &["summary", "--input", "16x16"],
        &["16x16", "at least 32x32"],
    );
    refused(&["summary", "--input", "banana"], &["HxW"]);
    refused(&["summary", "--batch", "0"], &["--batch", "at least 1"]);
    refused(
        &["summary", "--format", "xml"],
        &["xml", "table, json, csv, markdown"],
    );
    refused(&["summary", "--width-mult", "0"], &["width multiplier"]);
    refused(&["frobnicate"], &["frobnicate"]);
}

/// The roofline columns in CSV (exact numbers) and JSON, against the figures worked by hand in
/// vgg-model's facts test: conv1_1 12.89 FLOP/B, fc6 0.50 at batch 1 and 15.86 at batch 32.
#[test]
fn the_roofline_columns_give_flops_bytes_intensity_and_bound() {
    let csv = ok(&[
        "summary",
        "--model",
        "vgg16",
        "--columns",
        "roofline",
        "--format",
        "csv",
    ]);
    let mut lines = csv.lines();
    assert_eq!(
        lines.next().unwrap(),
        "layer,FLOPs,dX FLOPs,dW FLOPs,weight bytes,input bytes,output bytes,FLOP/B,bound"
    );
    let row = |name: &str| {
        csv.lines()
            .find(|l| l.starts_with(&format!("{name},")))
            .unwrap()
            .to_string()
    };
    assert_eq!(
        row("conv1_1"),
        "conv1_1,173408256,0,173408256,7168,602112,12845056,12.89,compute"
    );
    assert_eq!(
        row("fc6"),
        "fc6,205520896,205520896,205520896,411058176,100352,16384,0.50,memory"
    );
    assert_eq!(row("pool1"), "pool1,0,0,0,0,12845056,3211264,0.00,memory");
    // A balance below fc6's intensity makes it compute-bound; at batch 32 it is anyway.
    let low = ok(&[
        "summary",
        "--model",
        "vgg16",
        "--columns",
        "layer,bound",
        "--balance",
        "0.4",
    ]);
    assert!(
        low.lines()
            .any(|l| l.starts_with("fc6") && l.ends_with("compute")),
        "{low}"
    );
    let text = ok(&[
        "summary",
        "--model",
        "vgg16",
        "--columns",
        "roofline",
        "--batch-size",
        "32",
    ]);
    assert!(
        text.lines()
            .any(|l| l.starts_with("fc6") && l.contains("15.86") && l.ends_with("compute")),
        "{text}"
    );
    assert!(
        text.contains("the forward pass of pool1, pool2, pool3, pool4, pool5 is memory-bound"),
        "{text}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(&["summary", "--model", "vgg16", "--format", "json"])).unwrap();
    assert_eq!(json["balance"], 10.0);
    let fc6 = json["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "fc6")
        .unwrap();
    assert_eq!(fc6["cost"]["forward_flops"], 205_520_896u64);
    assert_eq!(fc6["cost"]["weight_bytes"], 411_058_176u64);
    assert_eq!(fc6["forward_bound"], "memory");
    assert!((fc6["forward_intensity"].as_f64().unwrap() - 0.4998).abs() < 1e-4);
    for bad in ["0", "-1", "nan", "inf", "x"] {
        refused(&["summary", "--balance", bad], &["is not a balance"]);
    }
    refused(
        &["summary", "--columns", "flops,oops"],
        &["'oops' is not a column", "roofline"],
    );
}
