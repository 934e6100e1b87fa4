//! The figures of `shared/reference/vgg-facts.md`, copied here so the test owns them.

use vgg_model::{ModelSpec, SpecOptions, VggConfig};

fn spec(model: VggConfig) -> ModelSpec {
    ModelSpec::new(model, SpecOptions::default()).unwrap()
}

#[test]
fn totals_of_all_five_configs() {
    // (model, params, MACs, FLOPs, RF after the last pool)
    let facts = [
        (
            VggConfig::Vgg11,
            132_863_336u64,
            7_609_090_048u64,
            15_218_180_096u64,
            150usize,
        ),
        (
            VggConfig::Vgg13,
            133_047_848,
            11_308_466_176,
            22_616_932_352,
            156,
        ),
        (
            VggConfig::Vgg16C,
            133_638_952,
            11_770_888_192,
            23_541_776_384,
            156,
        ),
        (
            VggConfig::Vgg16,
            138_357_544,
            15_470_264_320,
            30_940_528_640,
            212,
        ),
        (
            VggConfig::Vgg19,
            143_667_240,
            19_632_062_464,
            39_264_124_928,
            268,
        ),
    ];
    for (model, params, macs, flops, rf) in facts {
        let s = spec(model);
        assert_eq!(s.params(), params, "{model} params");
        assert_eq!(s.macs(), macs, "{model} MACs");
        assert_eq!(s.flops(), flops, "{model} FLOPs");
        let pool5 = s.layer("pool5").unwrap();
        assert_eq!(pool5.receptive_field.unwrap().size, rf, "{model} RF");
    }
}

#[test]
fn vgg16_layer_by_layer() {
    // (name, H, W, C, weights, biases, MACs, RF, jump); RF 0 marks the fully connected layers.
    type Row = (
        &'static str,
        usize,
        usize,
        usize,
        u64,
        u64,
        u64,
        usize,
        usize,
    );
    #[rustfmt::skip]
    let rows: [Row; 21] = [
        ("conv1_1", 224, 224, 64, 1_728, 64, 86_704_128, 3, 1),
        ("conv1_2", 224, 224, 64, 36_864, 64, 1_849_688_064, 5, 1),
        ("pool1", 112, 112, 64, 0, 0, 0, 6, 2),
        ("conv2_1", 112, 112, 128, 73_728, 128, 924_844_032, 10, 2),
        ("conv2_2", 112, 112, 128, 147_456, 128, 1_849_688_064, 14, 2),
        ("pool2", 56, 56, 128, 0, 0, 0, 16, 4),
        ("conv3_1", 56, 56, 256, 294_912, 256, 924_844_032, 24, 4),
        ("conv3_2", 56, 56, 256, 589_824, 256, 1_849_688_064, 32, 4),
        ("conv3_3", 56, 56, 256, 589_824, 256, 1_849_688_064, 40, 4),
        ("pool3", 28, 28, 256, 0, 0, 0, 44, 8),
        ("conv4_1", 28, 28, 512, 1_179_648, 512, 924_844_032, 60, 8),
        ("conv4_2", 28, 28, 512, 2_359_296, 512, 1_849_688_064, 76, 8),
        ("conv4_3", 28, 28, 512, 2_359_296, 512, 1_849_688_064, 92, 8),
        ("pool4", 14, 14, 512, 0, 0, 0, 100, 16),
        ("conv5_1", 14, 14, 512, 2_359_296, 512, 462_422_016, 132, 16),
        ("conv5_2", 14, 14, 512, 2_359_296, 512, 462_422_016, 164, 16),
        ("conv5_3", 14, 14, 512, 2_359_296, 512, 462_422_016, 196, 16),
        ("pool5", 7, 7, 512, 0, 0, 0, 212, 32),
        ("fc6", 1, 1, 4096, 102_760_448, 4_096, 102_760_448, 0, 0),
        ("fc7", 1, 1, 4096, 16_777_216, 4_096, 16_777_216, 0, 0),
        ("fc8", 1, 1, 1000, 4_096_000, 1_000, 4_096_000, 0, 0),
    ];
    let s = spec(VggConfig::Vgg16);
    assert_eq!(s.layers.len(), rows.len());
    for (layer, (name, h, w, c, weights, biases, macs, rf, jump)) in s.layers.iter().zip(rows) {
        assert_eq!(layer.name, name);
        assert_eq!(
            (
                layer.output.height,
                layer.output.width,
                layer.output.channels
            ),
            (h, w, c),
            "{name}"
        );
        assert_eq!(
            (layer.weights, layer.biases, layer.macs),
            (weights, biases, macs),
            "{name}"
        );
        match layer.receptive_field {
            Some(f) => assert_eq!((f.size, f.jump), (rf, jump), "{name}"),
            None => assert_eq!(rf, 0, "{name} should have a receptive field"),
        }
    }
}

#[test]
fn vgg16c_uses_1x1_at_the_end_of_blocks_3_to_5() {
    let s = spec(VggConfig::Vgg16C);
    for name in ["conv3_3", "conv4_3", "conv5_3"] {
        let layer = s.layer(name).unwrap();
        assert!(
            matches!(
                layer.op,
                vgg_model::LayerOp::Conv {
                    kernel: 1,
                    padding: 0,
                    ..
                }
            ),
            "{name}"
        );
    }
    assert!(matches!(
        s.layer("conv3_2").unwrap().op,
        vgg_model::LayerOp::Conv { kernel: 3, .. }
    ));
}
