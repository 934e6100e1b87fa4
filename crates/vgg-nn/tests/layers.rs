//! vgg-nn's layers on their own: shapes, PyTorch's parameter names, the conv+ReLU fusion, dropout
//! seeded per module and off in evaluation, and every gradient against finite differences.

use vgg_autodiff::Tape;
use vgg_nn::{InitScheme, Layer, RunOptions, Sequential};
use vgg_tensor::prelude::*;
use vgg_tensor::reference::ReferenceBackend;
use vgg_tensor::{Conv2dParams, Pool2dParams};

const SAME: Conv2dParams = Conv2dParams {
    stride: 1,
    padding: 1,
};

fn small<B: Backend>(b: &B) -> Sequential<B> {
    let s = &InitScheme::KAIMING;
    Sequential::new(
        "features",
        vec![
            Layer::conv2d(b, 2, 4, 3, SAME, s, 1).unwrap(),
            Layer::Relu,
            Layer::MaxPool2d(Pool2dParams {
                kernel: 2,
                stride: 2,
            }),
            Layer::Flatten,
            Layer::linear(b, 4 * 3 * 3, 5, s, 2).unwrap(),
            Layer::Relu,
            Layer::Dropout,
            Layer::linear(b, 5, 3, s, 3).unwrap(),
        ],
    )
}

#[test]
fn parameters_are_named_by_module_index_like_pytorch() {
    let net = small(&ReferenceBackend);
    let names: Vec<String> = net.named_params().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        [
            "features.0.weight",
            "features.0.bias",
            "features.4.weight",
            "features.4.bias",
            "features.7.weight",
            "features.7.bias"
        ]
    );
    let shapes: Vec<Vec<usize>> = net
        .named_params()
        .into_iter()
        .map(|(_, t)| t.shape().dims().to_vec())
        .collect();
    assert_eq!(shapes[0], [4, 2, 3, 3]);
    assert_eq!(shapes[2], [5, 36]);
    let mut net = net;
    assert_eq!(net.named_params_mut().len(), 6);
}

#[test]
fn forward_fuses_conv_and_relu_and_reports_the_modules_covered() {
    let b = ReferenceBackend;
    let net = small(&b);
    let tape = Tape::inference(b.clone());
    let x = tape.constant(
        b.random_normal(&Shape::from([2, 2, 6, 6]), 0.0, 1.0, 4)
            .unwrap(),
    );
    let mut steps = Vec::new();
    let y = net
        .forward_observed(&tape, x.clone(), RunOptions::EVAL, &mut |a, z| {
            steps.push((a, z))
        })
        .unwrap();
    assert_eq!(y.shape().dims(), [2, 3]);
    // conv+relu is one step (0..=1); linear and relu are not fused.
    assert_eq!(
        steps,
        [(0, 1), (2, 2), (3, 3), (4, 4), (5, 5), (6, 6), (7, 7)]
    );
    // The fused result equals the layers run one by one.
    let Layer::Conv2d(c) = &net.layers[0] else {
        unreachable!()
    };
    let h = b
        .relu(
            &b.add_channel_bias(&b.conv2d(x.value(), &c.weight, SAME).unwrap(), &c.bias)
                .unwrap(),
        )
        .unwrap();
    let fused = b
        .conv2d_bias_act(x.value(), &c.weight, &c.bias, SAME, true)
        .unwrap();
    assert_eq!(b.download(&h).unwrap(), b.download(&fused).unwrap());
}

#[test]
fn dropout_is_seeded_and_off_in_evaluation() {
    let b = ReferenceBackend;
    let net = small(&b);
    let x = b
        .random_normal(&Shape::from([4, 2, 6, 6]), 0.0, 1.0, 5)
        .unwrap();
    let run = |opts: RunOptions| {
        let tape = Tape::inference(b.clone());
        let y = net.forward(&tape, tape.constant(x.clone()), opts).unwrap();
        b.download(y.value()).unwrap()
    };
    let train = |seed| RunOptions {
        keep_prob: 0.5,
        seed,
        training: true,
    };
    assert_eq!(run(RunOptions::EVAL), run(RunOptions::EVAL));
    assert_eq!(run(train(1)), run(train(1)));
    assert_ne!(run(train(1)), run(train(2)));
    assert_ne!(run(train(1)), run(RunOptions::EVAL));
}

/// Sequential's gradients, by parameter name, are those of the same ops composed by hand (whose
/// gradients vgg-autodiff checks against finite differences): the names point at the right
/// tensors and nothing is lost in the fusion.
#[test]
fn gradients_by_name_are_those_of_the_ops_composed_by_hand() {
    let b = ReferenceBackend;
    let net = small(&b);
    let x = b
        .random_normal(&Shape::from([2, 2, 6, 6]), 0.0, 1.0, 6)
        .unwrap();
    let tape = Tape::new(b.clone());
    let y = net
        .forward(&tape, tape.constant(x.clone()), RunOptions::EVAL)
        .unwrap();
    let loss = tape.l2_loss(&y).unwrap();
    let named = tape.backward(&loss).unwrap().into_named();

    let tape = Tape::new(b.clone());
    let p: Vec<_> = net
        .named_params()
        .into_iter()
        .map(|(n, t)| tape.param(n, t.clone()))
        .collect();
    let h = tape
        .conv2d_bias_act(&tape.constant(x), &p[0], &p[1], SAME, true)
        .unwrap();
    let h = tape
        .max_pool2d(
            &h,
            Pool2dParams {
                kernel: 2,
                stride: 2,
            },
        )
        .unwrap();
    let h = tape
        .relu(
            &tape
                .linear(&tape.flatten(&h).unwrap(), &p[2], &p[3])
                .unwrap(),
        )
        .unwrap();
    let y = tape.linear(&h, &p[4], &p[5]).unwrap();
    let loss = tape.l2_loss(&y).unwrap();
    let by_hand = tape.backward(&loss).unwrap().into_named();
    assert_eq!(named.len(), 6);
    for ((n1, g1), (n2, g2)) in named.iter().zip(&by_hand) {
        assert_eq!(n1, n2);
        assert_eq!(b.download(g1).unwrap(), b.download(g2).unwrap(), "{n1}");
    }
}
