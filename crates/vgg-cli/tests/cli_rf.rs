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
        out.contains("27C^2 for the stack vs 49C^2 for one 7x7 kernel"),
        "{out}"
    );
}

#[test]
fn model_fields_match_the_spec() {
    let out = ok(&["rf", "--model", "vgg16"]);
    let pool5 = out.lines().find(|l| l.starts_with("pool5")).unwrap();
    let cols: Vec<&str> = pool5.split_whitespace().collect();
    assert_eq!(cols[4..6], ["212", "32"]);
    let json = ok(&["rf", "--model", "vgg19", "--format", "json"]);
    let rows: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(rows.as_array().unwrap().last().unwrap()["size"], 268);
}

#[test]
fn malformed_layers_are_refused() {
    refused(&["rf", "--layers", "conv3,,conv3"], &["convK/S"]);
    refused(&["rf", "--layers", "conv0"], &["conv0", "convK/S"]);
    refused(&["rf", "--layers", "dense3"], &["dense3"]);
    refused(&["rf", "--layers", "pool2/x"], &["pool2/x"]);
}
