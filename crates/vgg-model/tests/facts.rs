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

/// The roofline's figures for VGG-16, worked by hand from the facts above (f32, 4 bytes):
/// conv1_1 at batch 1 does 2 x 86,704,128 FLOPs and moves its 1,792 parameters (7,168 B), the
/// 224x224x3 image (602,112 B) and its 224x224x64 output (12,845,056 B): 12.89 FLOP/B, above a
/// balance of 10, so compute-bound. fc6 streams 102,764,544 parameters (411,058,176 B) for
/// 205,520,896 FLOPs: 0.50 FLOP/B at batch 1, memory-bound; at batch 32 the same weights serve
/// 32 images: 6,576,668,672 FLOPs over 414,793,728 B, 15.86 FLOP/B.
#[test]
fn vgg16_layer_costs_and_intensities() {
    use vgg_model::{Bound, LayerCost};
    let s = spec(VggConfig::Vgg16);
    let one = s.costs(1).unwrap();
    let at =
        |costs: &[LayerCost], name: &str| costs.iter().find(|c| c.layer == name).unwrap().clone();
    let conv1_1 = at(&one, "conv1_1");
    assert_eq!(
        (
            conv1_1.forward_flops,
            conv1_1.input_gradient_flops,
            conv1_1.weight_gradient_flops
        ),
        (173_408_256, 0, 173_408_256)
    );
    assert_eq!(
        (
            conv1_1.weight_bytes,
            conv1_1.input_bytes,
            conv1_1.output_bytes
        ),
        (7_168, 602_112, 12_845_056)
    );
    assert!((conv1_1.forward_intensity() - 12.888_652).abs() < 1e-5);
    assert_eq!(
        LayerCost::bound(conv1_1.forward_intensity(), 10.0),
        Bound::Compute
    );
    let fc6 = at(&one, "fc6");
    assert_eq!(fc6.forward_flops, 205_520_896);
    assert_eq!(fc6.forward_bytes(), 411_174_912);
    assert!((fc6.forward_intensity() - 0.499_838).abs() < 1e-5);
    assert_eq!(
        LayerCost::bound(fc6.forward_intensity(), 10.0),
        Bound::Memory
    );
    let conv5_3 = at(&one, "conv5_3");
    assert_eq!(
        (conv5_3.forward_flops, conv5_3.forward_bytes()),
        (924_844_032, 10_242_048)
    );
    let fc6_32 = at(&s.costs(32).unwrap(), "fc6");
    assert_eq!(
        (fc6_32.forward_flops, fc6_32.forward_bytes()),
        (6_576_668_672, 414_793_728)
    );
    assert!((fc6_32.forward_intensity() - 15.855_275).abs() < 1e-5);
    // Totals: forward is the facts' 30,940,528,640 FLOPs; backward twice that less conv1_1's
    // input gradient, as vgg bench counts a forward-backward step (92,648,177,664 FLOPs).
    let forward: u64 = one.iter().map(|c| c.forward_flops).sum();
    let backward: u64 = one.iter().map(|c| c.backward_flops()).sum();
    assert_eq!(forward, 30_940_528_640);
    assert_eq!(backward, 61_707_649_024);
    assert_eq!(forward + backward, 92_648_177_664);
    assert!(s.costs(usize::MAX).is_err());
}
