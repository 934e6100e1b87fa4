//! The parameter store: the README's own-network example learns, a store saves and loads itself
//! with its optimiser's state (a resumed run matches an uninterrupted one), and misuse is refused.

#[allow(dead_code)]
#[path = "../examples/own_network.rs"]
mod own_network;

use vgg_autodiff::Tape;
use vgg_ndarray::CpuBackend;
use vgg_nn::{Init, OptimizerKind, ParamError, ParamId, ParamStore};
use vgg_tensor::prelude::*;

#[test]
fn the_example_network_learns() {
    let b = CpuBackend::new(2).unwrap();
    let accuracy = b.execute(|| own_network::train(&b, 150).unwrap());
    assert!(accuracy >= 0.9, "held-out accuracy {accuracy}");
}

/// Fits w . x to 3 for `steps` steps.
fn fit(b: &CpuBackend, store: &mut ParamStore<CpuBackend>, w: ParamId, steps: usize) {
    let x = b.upload(&Shape::from([3, 1]), &[1.0, -2.0, 0.5]).unwrap();
    for _ in 0..steps {
        let tape = Tape::new(b.clone());
        let p = store.attach(&tape);
        let y = tape
            .matmul(&p[w], &tape.constant(x.clone()), false, false)
            .unwrap();
        let err = tape
            .sub(&y, &tape.constant(b.scalar(3.0).unwrap()))
            .unwrap();
        let loss = tape.l2_loss(&err).unwrap();
        let grads = tape.backward(&loss).unwrap();
        store.step(b, &p, &grads, 0.05).unwrap();
    }
}

#[test]
fn a_saved_store_resumes_where_it_stopped() {
    let b = CpuBackend::new(1).unwrap();
    let fresh = || {
        let mut store = ParamStore::new(OptimizerKind::adam());
        let id = store
            .init(&b, "w", [1, 3], Init::Normal { std: 0.1 }, 7)
            .unwrap();
        (store, id)
    };
    let (mut straight, w) = fresh();
    fit(&b, &mut straight, w, 20);

    let (mut first, w) = fresh();
    fit(&b, &mut first, w, 10);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.safetensors");
    first.save(&b, &path).unwrap();
    let (mut resumed, w) = fresh();
    resumed.load(&b, &path).unwrap();
    fit(&b, &mut resumed, w, 10);

    let values = |s: &ParamStore<CpuBackend>| {
        let (_, w) = s.named().next().unwrap();
        b.download(w).unwrap()
    };
    assert_eq!(values(&resumed), values(&straight));

    // A store whose parameter has another shape is refused, naming it.
    let mut other = ParamStore::<CpuBackend>::new(OptimizerKind::adam());
    other.init(&b, "w", [3, 1], Init::Constant(0.0), 0).unwrap();
    let e = other.load(&b, &path).unwrap_err().to_string();
    assert!(e.contains("'w' has shape [1, 3]"), "{e}");
    // As is one that names a parameter the file lacks.
    let mut missing = ParamStore::<CpuBackend>::new(OptimizerKind::adam());
    missing
        .init(&b, "v", [1, 3], Init::Constant(0.0), 0)
        .unwrap();
    let e = missing.load(&b, &path).unwrap_err().to_string();
    assert!(e.contains("no tensor named 'v'"), "{e}");
}

#[test]
fn two_parameters_with_one_name_are_refused() {
    let b = CpuBackend::new(1).unwrap();
    let mut store = ParamStore::new(OptimizerKind::sgd(0.9));
    store.init(&b, "w", [2], Init::Constant(1.0), 0).unwrap();
    let e = store
        .init(&b, "w", [3], Init::Constant(1.0), 0)
        .unwrap_err();
    assert!(matches!(e, ParamError::Duplicate(ref n) if n == "w"), "{e}");
    assert_eq!(store.len(), 1);
}
