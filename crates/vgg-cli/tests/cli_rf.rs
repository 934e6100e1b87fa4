//! `vgg rf`: the receptive-field table, its JSON and its errors.

mod common;

use common::{ok, refused};

#[test]
fn three_3x3_convs_see_seven_pixels() {
    let out = ok(&["rf", "--layers", "conv3,conv3,conv3"]);
    let fields: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("conv3/1"))
        .map(|l| l.split_whitespace().nth(4).unwrap())
        .collect();
    assert_eq!(fields, ["3", "5", "7"]);
    assert!(
        out.contains("27C^2 for the stack vs 49C^2 for one 7x7 kernel (0.55x)"),
        "{out}"
    );
    // The picture states the same comparison the same way round as the table.
    let svg = ok(&["rf", "--layers", "conv3,conv3,conv3", "--format", "svg"]);
    assert!(
        svg.contains("27 for the stack, 49 for one kernel (0.55x)"),
        "{svg}"
    );
}

#[test]
fn model_fields_match_the_spec() {
    let out = ok(&["rf", "--model", "vgg16"]);
    let pool5 = out.lines().find(|l| l.starts_with("pool5")).unwrap();
    let cols: Vec<&str> = pool5.split_whitespace().collect();
    assert_eq!(cols[4..6], ["212", "32"]);
    let json = ok(&["rf", "--model", "vgg19", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["schema"], "vgg-rf/1");
    assert_eq!(v["of"], "vgg19");
    assert_eq!(v["layers"].as_array().unwrap().last().unwrap()["size"], 268);
    let stack = ok(&["rf", "--layers", "conv3,conv3", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&stack).unwrap();
    assert_eq!(v["weights_per_c2"], 18);
    // Options that do not change receptive fields are accepted from old command lines.
    let out = common::vgg(&["rf", "--classes", "10", "--width-mult", "0.5"]);
    assert!(out.status.success());
    assert!(common::stderr(&out).contains("ignored"));
}

#[test]
fn malformed_layers_are_refused() {
    refused(&["rf", "--layers", "conv3,,conv3"], &["convK/S"]);
    refused(&["rf", "--layers", "conv0"], &["conv0", "convK/S"]);
    refused(&["rf", "--layers", "dense3"], &["dense3"]);
    refused(&["rf", "--layers", "pool2/x"], &["pool2/x"]);
}
