//! vgg-bench on its own: settings refused by name, the memory workload per mode, FLOP counts from
//! the spec, and a tiny run of both modes (on the plain-loops reference backend) that counts its
//! steps, can be stopped early and times every layer.

use std::ops::ControlFlow;

mod common;

use common::tiny;
use vgg_bench::{step_flops, workload, Bench, BenchConfig, BenchError, Mode};
use vgg_model::{VggConfig, Workload};
use vgg_tensor::reference::ReferenceBackend;

#[test]
fn settings_are_refused_by_name() {
    let mut c = tiny();
    c.batch = 0;
    assert!(matches!(c.spec(), Err(BenchError::Zero(_))));
    let mut c = tiny();
    c.burn_in = usize::MAX;
    assert!(matches!(c.spec(), Err(BenchError::TooManySteps { .. })));
    assert_eq!(tiny().total_steps().unwrap(), 4);
    let mut c = tiny();
    c.height = 8;
    assert!(c.spec().is_err());
}

#[test]
fn memory_and_flops_come_from_the_spec() {
    assert_eq!(
        workload(&[Mode::Forward]),
        Workload::Inference { copies: 1 }
    );
    assert_eq!(
        workload(&[Mode::Forward, Mode::ForwardBackward]),
        Workload::Training { copies: 1 }
    );
    let spec = BenchConfig::default().spec().unwrap();
    // VGG-16: 15.47 GMACs per image; forward-backward adds two more passes, less conv1_1's
    // input gradient.
    assert_eq!(step_flops(&spec, 1, Mode::Forward), Some(30_940_528_640));
    let conv1 = spec.layer("conv1_1").unwrap().macs;
    assert_eq!(
        step_flops(&spec, 2, Mode::ForwardBackward),
        Some(2 * (3 * 30_940_528_640 - 2 * conv1))
    );
    assert!(vgg_bench::check_memory(&spec, 32, &[Mode::ForwardBackward], 1 << 30).is_err());
}

#[test]
fn a_tiny_run_counts_its_steps_stops_early_and_times_layers() {
    let mut config = tiny();
    config.per_layer = true;
    let bench = Bench::new(ReferenceBackend, config).unwrap();
    for mode in [Mode::Forward, Mode::ForwardBackward] {
        let mut events = Vec::new();
        let report = bench
            .run(mode, &mut |e| {
                events.push((e.burn_in, e.index));
                ControlFlow::Continue(())
            })
            .unwrap();
        assert_eq!(events, [(true, 0), (false, 0), (false, 1), (false, 2)]);
        assert_eq!(report.step_seconds.len(), 3);
        assert_eq!(report.burn_in_seconds.len(), 1);
        assert_eq!(report.stats.steps, 3);
        assert!(!report.interrupted);
        assert!(report.gflops_per_second > 0.0);
        let names: Vec<&str> = report.per_layer.iter().map(|l| l.layer.as_str()).collect();
        assert_eq!(names.first(), Some(&"conv1_1"), "{names:?}");
        assert!(names.contains(&"fc8"), "{names:?}");
        let backward: f64 = report.per_layer.iter().map(|l| l.backward_ms).sum();
        match mode {
            Mode::Forward => assert_eq!(backward, 0.0),
            Mode::ForwardBackward => assert!(backward > 0.0),
        }
    }
    // Stopped after the first timed step.
    let report = bench
        .run(Mode::Forward, &mut |e| {
            if e.burn_in {
                ControlFlow::Continue(())
            } else {
                ControlFlow::Break(())
            }
        })
        .unwrap();
    assert!(report.interrupted);
    assert_eq!(report.step_seconds.len(), 1);
}

/// Executed FLOPs follow the method the backend reports per convolution and pass: the direct
/// method's count on im2col and the reference backend, a quarter of it for each 4x4 block of
/// Winograd F(4x4, 3x3) on the CPU, and the first convolution's input gradient not at all.
#[test]
fn executed_flops_follow_the_backends_method() {
    use vgg_bench::executed_flops;
    use vgg_ndarray::{ConvAlgorithm, CpuBackend, CpuConfig};
    use vgg_tensor::ConvPass;

    let batch = 8;
    let spec = vgg_model::ModelSpec::new(VggConfig::Vgg16, Default::default()).unwrap();
    let costs = spec.costs(batch).unwrap();
    let layer = |name: &str| {
        let i = spec.layers.iter().position(|l| l.name == name).unwrap();
        (&spec.layers[i], &costs[i])
    };
    let all = [
        ConvPass::Forward,
        ConvPass::InputGradient,
        ConvPass::WeightGradient,
    ];
    let cpu = |convolution| {
        CpuBackend::with_config(CpuConfig {
            convolution,
            ..CpuConfig::detect(2)
        })
        .unwrap()
    };
    let (auto, im2col) = (cpu(ConvAlgorithm::Auto), cpu(ConvAlgorithm::Im2col));
    let (conv3_1, cost) = layer("conv3_1");
    let direct = cost.forward_flops + cost.backward_flops();
    for direct_backend in [
        executed_flops(&ReferenceBackend, conv3_1, cost, batch, &all),
        executed_flops(&im2col, conv3_1, cost, batch, &all),
    ] {
        assert_eq!(direct_backend, Some(direct));
    }
    // 56x56 outputs are 14x14 blocks of 4x4, each 36 products per channel pair instead of 144.
    assert_eq!(
        executed_flops(&auto, conv3_1, cost, batch, &[ConvPass::Forward]),
        Some(2 * batch as u64 * 14 * 14 * 36 * 128 * 256)
    );
    assert_eq!(
        executed_flops(&auto, conv3_1, cost, batch, &all),
        Some(direct / 4)
    );
    // conv1_1 (3 input channels) runs by the direct method, and its input gradient is never made.
    let (conv1_1, cost) = layer("conv1_1");
    assert_eq!(
        executed_flops(&auto, conv1_1, cost, batch, &all),
        Some(cost.forward_flops + cost.weight_gradient_flops)
    );
    assert_eq!(cost.input_gradient_flops, 0);
    // Fully connected layers and pools count as the spec does.
    for name in ["fc6", "pool5"] {
        let (l, cost) = layer(name);
        assert_eq!(
            executed_flops(&auto, l, cost, batch, &all),
            Some(cost.forward_flops + cost.backward_flops())
        );
    }
}
