//! The communicators' collectives, the bucket layout and the reducer, with ranks as threads.

use std::collections::HashMap;
use std::thread;
use std::time::{Duration, Instant};

use vgg_dist::{
    BucketMemory, Communicator, DistError, ExchangeOptions, GradientBuckets, GradientExchange,
    GradientReducer, HostExchange, LocalGroup, Solo, StepReducer,
};
use vgg_ndarray::CpuBackend;
use vgg_tensor::prelude::*;

/// Runs `body(rank, comm)` on `size` threads and returns their results in rank order.
fn on_ranks<T: Send + 'static>(
    size: usize,
    body: impl Fn(LocalGroup) -> T + Send + Sync + Clone + 'static,
) -> Vec<T> {
    let handles: Vec<_> = LocalGroup::new(size, Duration::from_secs(20))
        .into_iter()
        .map(|comm| {
            let body = body.clone();
            thread::spawn(move || body(comm))
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn collectives_give_every_rank_the_same_answer() {
    let results = on_ranks(3, |comm| {
        let r = comm.rank() as f32;
        let sum = comm.allreduce(vec![r, 10.0 * r, 1.0]).unwrap().data;
        let mut counts = [comm.rank() as f64, 1.0];
        comm.allreduce_f64(&mut counts).unwrap();
        let mut from_one = [comm.rank() as u8; 4];
        comm.broadcast(&mut from_one, 1).unwrap();
        let mut weights = vec![r; 3];
        comm.broadcast_f32(&mut weights, 2).unwrap();
        comm.barrier().unwrap();
        (sum, counts, from_one, weights)
    });
    for (sum, counts, from_one, weights) in results {
        assert_eq!(sum, [3.0, 30.0, 3.0]);
        assert_eq!(counts, [3.0, 3.0]);
        assert_eq!(from_one, [1; 4]);
        assert_eq!(weights, [2.0; 3]);
    }
}

/// A file only rank 1 could read reaches every rank whole; a rank that offers bytes out of turn
/// is refused.
#[test]
fn one_ranks_bytes_reach_every_rank() {
    let file: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let sent = file.clone();
    let results = on_ranks(3, move |comm| {
        let mine = (comm.rank() == 1).then(|| sent.clone());
        comm.broadcast_bytes(mine, 1).unwrap()
    });
    for got in results {
        assert_eq!(got, file);
    }
    let refused = on_ranks(1, |comm| comm.broadcast_bytes(None, 0));
    assert!(
        matches!(&refused[0], Err(DistError::Layout(_))),
        "{refused:?}"
    );
    assert_eq!(Solo.broadcast_bytes(Some(vec![1, 2]), 0).unwrap(), [1, 2]);
}

#[test]
fn ranks_started_differently_are_named_on_every_rank() {
    let results = on_ranks(3, |comm| {
        let settings = if comm.rank() == 2 {
            "batch 16"
        } else {
            "batch 32"
        };
        comm.check_same("settings", settings)
    });
    match &results[2] {
        Err(DistError::Mismatch {
            rank, root, ours, ..
        }) => {
            assert_eq!(
                (*rank, root.as_str(), ours.as_str()),
                (2, "batch 32", "batch 16")
            );
        }
        other => panic!("rank 2 should see the difference: {other:?}"),
    }
    // Those that agree stop too, and name the rank that differs and both values themselves
    // (under mpirun that rank may be ended before it prints its own error).
    for r in &results[..2] {
        match r {
            Err(DistError::OtherMismatch {
                ranks: 1,
                first: 2,
                root,
                theirs,
                ..
            }) => assert_eq!((root.as_str(), theirs.as_str()), ("batch 32", "batch 16")),
            other => panic!("ranks that agree with rank 0 must stop too: {other:?}"),
        }
    }
    // With several ranks that differ, the lowest is named and all are counted.
    let results = on_ranks(4, |comm| {
        let settings = format!(
            "batch {}",
            if comm.rank() == 0 {
                32
            } else {
                8 * comm.rank()
            }
        );
        comm.check_same("settings", &settings)
    });
    let named = results.iter().filter_map(|r| match r {
        Err(DistError::OtherMismatch {
            ranks,
            first,
            theirs,
            ..
        }) => Some((*ranks, *first, theirs.as_str())),
        _ => None,
    });
    assert_eq!(
        named.collect::<Vec<_>>(),
        [(3, 1, "batch 8")],
        "{results:?}"
    );
    assert!(results[1..]
        .iter()
        .all(|r| matches!(r, Err(DistError::Mismatch { .. }))));
    // Equal settings pass; so does one process.
    assert!(on_ranks(2, |c| c.check_same("s", "same"))
        .iter()
        .all(Result::is_ok));
    Solo.check_same("s", "anything").unwrap();
}

#[test]
fn a_rank_that_leaves_is_named_instead_of_waited_for() {
    let start = Instant::now();
    let results = on_ranks(2, |comm| {
        if comm.rank() == 1 {
            drop(comm);
            return None;
        }
        Some(comm.allreduce(vec![1.0]).map(|r| r.data))
    });
    match &results[0] {
        Some(Err(e @ DistError::PeerGone { gone: 1, .. })) => {
            assert!(e.to_string().contains("rank 1 left the job"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[test]
fn a_stalled_rank_ends_in_a_timeout() {
    let mut group = LocalGroup::new(2, Duration::from_millis(200));
    let stalled = group.pop().unwrap();
    let waiting = group.pop().unwrap();
    let start = Instant::now();
    let e = waiting.barrier().unwrap_err();
    assert!(
        matches!(
            e,
            DistError::Timeout {
                op: "barrier",
                rank: 0,
                size: 2,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("communicator's timeout"), "{e}");
    assert!(start.elapsed() < Duration::from_secs(5));
    drop(stalled);
}

fn params() -> Vec<(String, Shape)> {
    vec![
        ("fc.bias".into(), Shape::from([10])),
        ("fc.weight".into(), Shape::from([10, 40])),
        ("conv.bias".into(), Shape::from([4])),
        ("conv.weight".into(), Shape::from([4, 1, 3, 3])),
    ]
}

#[test]
fn buckets_follow_the_order_and_the_size() {
    // 400 elements = 1600 bytes: a 1 KiB bucket closes after fc.weight.
    let b = GradientBuckets::new(&params(), 1024);
    assert_eq!(b.bucket_elements(), [410, 40]);
    assert_eq!(
        GradientBuckets::new(&params(), usize::MAX).bucket_elements(),
        [450]
    );
    // Tiny buckets: one parameter each.
    assert_eq!(GradientBuckets::new(&params(), 4).len(), 4);
    assert_ne!(
        b.fingerprint(),
        GradientBuckets::new(&params(), 4).fingerprint()
    );
}

/// Each rank's gradients are `rank + 1` everywhere; rank r has weight w_r.
fn reduce_on_ranks(weights: &'static [f32], overlap: bool, skip: Option<&'static str>) {
    let results = on_ranks(weights.len(), move |comm| {
        let cpu = CpuBackend::new(1).unwrap();
        let layout = GradientBuckets::new(&params(), 1024);
        let r = comm.rank();
        // Through the exchange the training loop uses: host buffers kept between steps.
        let exchange = HostExchange::new(&comm);
        let options = ExchangeOptions {
            overlap,
            compression: None,
        };
        // Two steps: the second reuses the first's buffers, which hold its sums.
        let mut last = HashMap::new();
        for _ in 0..2 {
            let mut reducer =
                GradientExchange::<CpuBackend>::reducer(&exchange, &layout, weights[r], options)
                    .unwrap();
            // Backward's order, fc first; one parameter may get no gradient.
            for (name, shape) in params() {
                if Some(name.as_str()) == skip {
                    continue;
                }
                let g = cpu.full(&shape, (r + 1) as f32).unwrap();
                reducer.add(&cpu, &name, &g).unwrap();
            }
            let (grads, times) = reducer.finish(&cpu).unwrap();
            assert!(times.total >= 0.0 && times.exposed >= 0.0);
            last = grads
                .into_iter()
                .map(|(n, t)| (n, cpu.download(&t).unwrap()))
                .collect::<HashMap<_, _>>();
        }
        last
    });
    let expected: f32 = weights
        .iter()
        .enumerate()
        .map(|(r, w)| w * (r + 1) as f32)
        .sum();
    for grads in &results {
        assert_eq!(grads.len(), 4);
        for (name, shape) in params() {
            let g = &grads[&name];
            assert_eq!(g.len(), shape.elements());
            let want = if Some(name.as_str()) == skip {
                0.0
            } else {
                expected
            };
            assert!(
                g.iter().all(|&v| (v - want).abs() < 1e-6),
                "{name}: {g:?} vs {want}"
            );
        }
    }
}

#[test]
fn the_reducer_weights_each_rank_by_its_images() {
    reduce_on_ranks(&[0.5, 0.5], true, None);
    reduce_on_ranks(&[0.75, 0.25, 0.0], true, None);
    reduce_on_ranks(&[0.5, 0.5], false, None);
    // A parameter the loss did not reach is zero on every rank, and the bucket still goes.
    reduce_on_ranks(&[0.5, 0.5], true, Some("conv.bias"));
}

#[test]
fn the_reducer_refuses_gradients_that_do_not_fit() {
    let cpu = CpuBackend::new(1).unwrap();
    let layout = GradientBuckets::new(&params(), 1024);
    let memory = BucketMemory::default();
    let mut reducer = StepReducer::new(&Solo, &layout, 1.0, true, &memory);
    let bad = cpu.zeros(&Shape::from([3])).unwrap();
    let e = reducer.add(&cpu, "fc.bias", &bad).unwrap_err();
    assert!(e.to_string().contains("expects [10]"), "{e}");
    let e = reducer.add(&cpu, "nowhere", &bad).unwrap_err();
    assert!(e.to_string().contains("in no bucket"), "{e}");
    let fine = cpu.zeros(&Shape::from([4])).unwrap();
    reducer.add(&cpu, "conv.bias", &fine).unwrap();
    let e = reducer.add(&cpu, "conv.bias", &fine).unwrap_err();
    assert!(e.to_string().contains("a second gradient"), "{e}");
}

#[test]
fn a_launcher_is_recognised_by_its_variables() {
    use std::collections::HashMap;
    let launch = |vars: &[(&str, &str)]| {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        vgg_dist::launch_from(|name| vars.get(name).cloned())
    };
    assert_eq!(launch(&[]).unwrap(), None);
    // Open MPI, MPICH/Intel MPI's Hydra, MVAPICH and Slurm's srun.
    type Vars<'a> = &'a [(&'a str, &'a str)];
    let cases: [(Vars, (usize, usize, usize, usize)); 5] = [
        (
            &[
                ("OMPI_COMM_WORLD_SIZE", "4"),
                ("OMPI_COMM_WORLD_RANK", "3"),
                ("OMPI_COMM_WORLD_LOCAL_SIZE", "2"),
                ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
            ],
            (3, 4, 2, 1),
        ),
        (
            &[
                ("PMI_SIZE", "2"),
                ("PMI_RANK", "1"),
                ("MPI_LOCALNRANKS", "2"),
                ("MPI_LOCALRANKID", "1"),
            ],
            (1, 2, 2, 1),
        ),
        (&[("MV2_COMM_WORLD_SIZE", "3")], (0, 3, 3, 0)),
        (
            &[
                ("SLURM_STEP_NUM_TASKS", "6"),
                ("SLURM_PROCID", "5"),
                ("SLURM_STEP_TASKS_PER_NODE", "2(x3)"),
                ("SLURM_LOCALID", "1"),
            ],
            (5, 6, 2, 1),
        ),
        // An allocation's batch script is no step: SLURM_NTASKS alone starts nothing.
        (&[("SLURM_NTASKS", "8"), ("PMI_SIZE", "1")], (0, 1, 1, 0)),
    ];
    for (vars, (rank, size, local, local_rank)) in cases {
        let l = launch(vars).unwrap().expect("a launcher");
        assert_eq!(
            (l.rank, l.size, l.local, l.local_rank),
            (rank, size, local, local_rank),
            "{vars:?}"
        );
    }
    assert_eq!(launch(&[("SLURM_NTASKS", "8")]).unwrap(), None);
    // Malformed values are errors, never one rank.
    for vars in [
        &[("OMPI_COMM_WORLD_SIZE", "two")][..],
        &[("OMPI_COMM_WORLD_SIZE", "")],
        &[("PMI_SIZE", "0")],
        &[("PMI_SIZE", "2"), ("PMI_RANK", "2")],
        &[("SLURM_STEP_NUM_TASKS", "-1")],
        &[
            ("OMPI_COMM_WORLD_SIZE", "4"),
            ("OMPI_COMM_WORLD_LOCAL_SIZE", "2"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "2"),
        ],
    ] {
        let e = launch(vars).unwrap_err().to_string();
        assert!(e.contains(vars.last().unwrap().0), "{vars:?}: {e}");
    }
}
