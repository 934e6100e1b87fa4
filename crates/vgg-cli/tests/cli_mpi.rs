//! `mpirun -np 2 vgg train|bench ...`: with the `mpi` feature (which `.ci/run` builds and runs
//! these with, Open MPI installed), two ranks train to the weights of one process, a failing
//! rank ends the job with named errors within seconds, and the benchmark reports scaling.
//! Without the feature, a vgg started by a launcher refuses instead of running N copies.

mod common;

#[cfg(feature = "mpi")]
mod with_mpi {
    use std::collections::BTreeMap;
    use std::io::{BufRead, BufReader, Read};
    use std::path::Path;
    use std::process::{Command, Output, Stdio};
    use std::time::{Duration, Instant};

    use super::common::{stderr, stdout};

    /// `mpirun` with `groups` of (ranks, program and arguments), the vgg under test by default.
    fn mpirun(groups: &[(usize, Vec<String>)]) -> Output {
        let mut cmd = Command::new("mpirun");
        // CI runs as root; these runs are small enough to share the cores.
        cmd.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
            .args(["--oversubscribe", "--bind-to", "none"]);
        for (i, (np, args)) in groups.iter().enumerate() {
            if i > 0 {
                cmd.arg(":");
            }
            cmd.args(["-np", &np.to_string()]).args(args);
        }
        cmd.output()
            .expect("mpirun runs (Open MPI: apt-get install openmpi-bin)")
    }

    fn vgg(args: &[&str]) -> Vec<String> {
        std::iter::once(env!("CARGO_BIN_EXE_vgg"))
            .chain(args.iter().copied())
            .map(String::from)
            .collect()
    }

    fn weights(path: &Path) -> BTreeMap<String, Vec<f32>> {
        let bytes = std::fs::read(path).unwrap();
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        file.tensors()
            .into_iter()
            .filter(|(name, _)| !name.starts_with("optimizer."))
            .map(|(name, view)| {
                let values = view
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                (name, values)
            })
            .collect()
    }

    /// The largest relative difference between two checkpoints' weights (of the 22 tensors of
    /// the digits VGG-11), which must hold the same names.
    fn relative_difference(a: &BTreeMap<String, Vec<f32>>, b: &BTreeMap<String, Vec<f32>>) -> f32 {
        assert_eq!(a.len(), 22);
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        let mut worst = 0.0f32;
        for (name, x) in a {
            for (p, q) in x.iter().zip(&b[name]) {
                worst = worst.max((p - q).abs() / p.abs().max(1e-2));
            }
        }
        worst
    }

    fn train_args(output: &Path, epochs: &str, extra: &[&str]) -> Vec<String> {
        let mut args = vec![
            "train",
            "--epochs",
            epochs,
            "--optimizer",
            "sgd",
            "--lr",
            "0.02",
            "--seed",
            "3",
            "--width-mult",
            "0.125",
            "--hidden",
            "64",
            "--output",
            output.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        vgg(&args)
    }

    #[test]
    fn two_ranks_train_to_the_weights_of_one_process() {
        let dir = tempfile::tempdir().unwrap();
        let (one, two) = (dir.path().join("one.st"), dir.path().join("two.st"));
        let log = dir.path().join("log.json");
        let solo = Command::new(env!("CARGO_BIN_EXE_vgg"))
            .args(&train_args(&one, "1", &[])[1..])
            .output()
            .unwrap();
        assert!(solo.status.success(), "{}", stderr(&solo));
        let out = mpirun(&[(
            2,
            train_args(
                &two,
                "1",
                &["--json", log.to_str().unwrap(), "--bucket-size", "64K"],
            ),
        )]);
        let text = stdout(&out);
        assert!(out.status.success(), "{text}\n{}", stderr(&out));
        // Rank 0 alone reports.
        assert_eq!(text.matches("epoch 1/1").count(), 1, "{text}");
        assert!(text.contains("x 2 (MPI (Open MPI"), "{text}");
        assert!(text.contains("16 images per rank"), "{text}");
        // Not to the bit: the gradients' sums run in another order.
        let worst = relative_difference(&weights(&one), &weights(&two));
        assert!(worst < 2e-3, "relative difference {worst}");
        let log: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&log).unwrap()).unwrap();
        let epoch = &log[0];
        assert!(
            epoch["communication_seconds"].as_f64().unwrap() > 0.0,
            "{log}"
        );
        assert!(epoch["exposed_communication_seconds"].as_f64().is_some());
    }

    /// Hosts that share no files: rank 1 runs in a directory without the checkpoint (a relative
    /// `--resume`), as on a machine that cannot see rank 0's disk. Rank 0 reads it and sends it.
    #[test]
    fn a_checkpoint_only_rank_0_can_read_resumes_the_job() {
        let dir = tempfile::tempdir().unwrap();
        let (here, elsewhere) = (dir.path().join("host0"), dir.path().join("host1"));
        std::fs::create_dir_all(&here).unwrap();
        std::fs::create_dir_all(&elsewhere).unwrap();
        let first = Command::new(env!("CARGO_BIN_EXE_vgg"))
            .current_dir(&here)
            .args(&train_args(Path::new("ck.st"), "1", &[])[1..])
            .output()
            .unwrap();
        assert!(first.status.success(), "{}", stderr(&first));
        let rank = |wdir: &Path| {
            let mut args = vec!["-wdir".to_string(), wdir.to_str().unwrap().to_string()];
            args.extend(train_args(
                Path::new("resumed.st"),
                "2",
                &["--resume", "ck.st"],
            ));
            (1, args)
        };
        let out = mpirun(&[rank(&here), rank(&elsewhere)]);
        let text = stdout(&out);
        assert!(out.status.success(), "{text}\n{}", stderr(&out));
        assert!(
            text.contains("from epoch 2") && text.contains("epoch 2/2"),
            "{text}"
        );
        assert!(here.join("resumed.st").is_file());
        assert!(!elsewhere.join("ck.st").exists());
        // One rank 0 cannot read either: named, and the job ends instead of waiting for it.
        let start = Instant::now();
        let mut missing = rank(&here);
        let at = missing.1.iter().position(|a| a == "ck.st").unwrap();
        missing.1[at] = "missing.st".into();
        let out = mpirun(&[missing, rank(&elsewhere)]);
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains("rank 0 of 2: cannot read missing.st"),
            "{}",
            stderr(&out)
        );
        assert!(start.elapsed() < Duration::from_secs(30));
    }

    /// Rank 1 fails on its own (its data directory does not exist): it names its error, and the
    /// job ends at once instead of rank 0 waiting for it.
    #[test]
    fn a_failing_rank_ends_the_job_with_named_errors() {
        let dir = tempfile::tempdir().unwrap();
        let out_path = dir.path().join("w.st");
        let start = Instant::now();
        let out = mpirun(&[
            (1, train_args(&out_path, "50", &[])),
            (
                1,
                train_args(&out_path, "50", &["--data", "/nonexistent/digits"]),
            ),
        ]);
        let err = stderr(&out);
        assert!(!out.status.success(), "{err}");
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{:?}",
            start.elapsed()
        );
        assert!(err.contains("error: rank 1 of 2: "), "{err}");
        assert!(err.contains("/nonexistent/digits"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(!out_path.exists(), "no checkpoint from a failed job");
    }

    /// Rank 1 is killed mid-training (a crash): rank 0 is ended within seconds and says why.
    #[test]
    fn a_killed_rank_ends_the_job_within_seconds() {
        let dir = tempfile::tempdir().unwrap();
        let out_path = dir.path().join("w.st");
        let mut killed = vec![
            "timeout".to_string(),
            "-s".into(),
            "KILL".into(),
            "5".into(),
        ];
        killed.extend(train_args(&out_path, "50", &[]));
        let start = Instant::now();
        let out = mpirun(&[(1, train_args(&out_path, "50", &[])), (1, killed)]);
        let err = stderr(&out);
        let took = start.elapsed();
        assert!(!out.status.success(), "{err}");
        // 50 epochs take minutes: the job ended because rank 1 died, a few seconds after.
        assert!(took < Duration::from_secs(40), "{took:?}\n{err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(
            err.contains("rank 0 of 2: stopped by a signal")
                || err.contains("rank 0 of 2: rank 1 left")
                || err.contains("rank 0 of 2: allreduce waited"),
            "rank 0 must say why it stopped: {err}"
        );
    }

    #[test]
    fn ranks_started_with_other_settings_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let out_path = dir.path().join("w.st");
        let out = mpirun(&[
            (1, train_args(&out_path, "1", &["--batch-size", "32"])),
            (1, train_args(&out_path, "1", &["--batch-size", "16"])),
        ]);
        let err = stderr(&out);
        assert!(!out.status.success(), "{err}");
        assert!(err.contains("differs from rank 0"), "{err}");
        assert!(err.contains("batch_size: 16"), "{err}");
        // Nor may they compute in other arithmetic.
        let out = mpirun(&[
            (1, train_args(&out_path, "1", &[])),
            (1, train_args(&out_path, "1", &["--precision", "bf16"])),
        ]);
        let err = stderr(&out);
        assert!(!out.status.success(), "{err}");
        assert!(
            err.contains("arithmetic (--precision)") && err.contains("bf16"),
            "{err}"
        );
        // Nor send their gradients in other formats.
        let out = mpirun(&[
            (1, train_args(&out_path, "1", &[])),
            (
                1,
                train_args(&out_path, "1", &["--gradient-compression", "fp16"]),
            ),
        ]);
        let err = stderr(&out);
        assert!(!out.status.success(), "{err}");
        assert!(
            err.contains("gradient compression (--gradient-compression)") && err.contains("Fp16"),
            "{err}"
        );
    }

    /// `--gradient-compression`: one SGD step on the whole digits set (one batch of 1438), sent
    /// in bf16 and fp16, moves the weights as the f32 step does to within the format's precision
    /// (a segment summed or placed wrongly would be off by its whole size); the job says how its
    /// gradients travel, and the benchmark counts half the bytes.
    #[test]
    fn gradients_sent_in_16_bits_step_as_f32_to_their_precision() {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        let one_step = ["--batch-size", "1438"];
        // The initial weights: a step too small to change any.
        let mut args = train_args(&path("start.st"), "1", &one_step);
        let lr = args.iter().position(|a| a == "--lr").unwrap() + 1;
        args[lr] = "1e-30".into();
        let start = Command::new(&args[0]).args(&args[1..]).output().unwrap();
        assert!(start.status.success(), "{}", stderr(&start));
        let start = weights(&path("start.st"));
        let step = |output: &str, extra: &[&str]| {
            let out = mpirun(&[(
                2,
                train_args(&path(output), "1", &[&one_step[..], extra].concat()),
            )]);
            assert!(out.status.success(), "{}", stderr(&out));
            let moved: BTreeMap<String, Vec<f32>> = weights(&path(output))
                .into_iter()
                .map(|(name, w)| {
                    let from = &start[&name];
                    (name, w.iter().zip(from).map(|(a, b)| a - b).collect())
                })
                .collect();
            (stdout(&out), moved)
        };
        let (_, exact) = step("f32.st", &[]);
        for (format, bits) in [("bf16", 8), ("fp16", 11)] {
            let (text, sent) = step(format, &["--gradient-compression", format]);
            assert!(
                text.contains(&format!("during backward, sent in {format})")),
                "{text}"
            );
            for (name, d) in &exact {
                let norm = |v: &mut dyn Iterator<Item = f32>| v.map(|x| x * x).sum::<f32>().sqrt();
                let error = norm(&mut d.iter().zip(&sent[name]).map(|(a, b)| a - b));
                let size = norm(&mut d.iter().copied());
                // Two roundings of 2^-bits each (values, then sums), with a margin.
                assert!(
                    error <= size * 4.0 * 2f32.powi(-bits),
                    "{format} {name}: step off by {error:e} of {size:e}"
                );
            }
            assert_ne!(exact, sent, "{format}: nothing was rounded");
        }

        let mut bench = vec![env!("CARGO_BIN_EXE_vgg").to_string()];
        bench.extend(super::common::tiny_bench(&[
            "--gradient-compression",
            "bf16",
        ]));
        let out = mpirun(&[(2, bench)]);
        let text = stdout(&out);
        assert!(out.status.success(), "{text}\n{}", stderr(&out));
        assert!(text.contains("of gradients (bf16) per rank"), "{text}");
    }

    #[test]
    fn the_benchmark_reports_the_job_and_its_scaling() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("b.json");
        let mut bench = vec![env!("CARGO_BIN_EXE_vgg").to_string()];
        bench.extend(super::common::tiny_bench(&[
            "--bucket-size",
            "16K",
            "--json",
            json.to_str().unwrap(),
        ]));
        let out = mpirun(&[(2, bench)]);
        let text = stdout(&out);
        assert!(out.status.success(), "{text}\n{}", stderr(&out));
        for needle in [
            "forward-backward (compute)",
            "allreduce, exposed",
            "SGD step",
            "overlapped backward",
            "images/s",
            "scaling efficiency",
        ] {
            assert!(text.contains(needle), "'{needle}' missing: {text}");
        }
        assert_eq!(
            text.matches("scaling efficiency").count(),
            1,
            "rank 0 alone: {text}"
        );
        let record: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert_eq!(record["schema"], "vgg-bench-parallel/1");
        let report = &record["data_parallel"];
        assert_eq!(report["ranks"], 2);
        assert_eq!(report["steps"].as_array().unwrap().len(), 8);
        assert!(report["buckets"].as_u64().unwrap() > 1, "{report}");
        let e = report["efficiency"].as_f64().unwrap();
        assert!(e > 0.0 && e.is_finite(), "{report}");
    }

    /// Two "hosts" of the emulated cluster (`scripts/cluster.sh`: network namespaces on a bridge,
    /// links shaped by tc, Open MPI over TCP only): they train to the weights of one process at
    /// double batch, a slow link changes the time but not the weights, and a link pulled
    /// mid-training ends the job within seconds, naming the lost host, with the last checkpoint
    /// whole. Needs root; `cargo xtask test` runs it where it can make network namespaces.
    #[test]
    #[ignore = "needs root and network namespaces: cargo xtask test runs it as root"]
    fn an_emulated_two_host_cluster() {
        let cluster = Cluster::up(2);
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        let solo = Command::new(env!("CARGO_BIN_EXE_vgg"))
            .args(&train_args(&path("one.st"), "1", &[])[1..])
            .output()
            .unwrap();
        assert!(solo.status.success(), "{}", stderr(&solo));

        let hosts = |output: &str, epochs: &str, extra: &[&str]| {
            let mut args = vec!["--host", "h1,h2", "-np", "2"]
                .into_iter()
                .map(String::from)
                .collect::<Vec<_>>();
            args.extend(train_args(&path(output), epochs, extra));
            args
        };
        let out = cluster
            .command(&["mpirun"])
            .args(hosts("two.st", "1", &[]))
            .output()
            .unwrap();
        let text = stdout(&out);
        assert!(out.status.success(), "{text}\n{}", stderr(&out));
        assert!(text.contains("x 2 (MPI (Open MPI"), "{text}");
        let two = weights(&path("two.st"));
        let worst = relative_difference(&weights(&path("one.st")), &two);
        assert!(worst < 2e-3, "relative difference {worst}");

        // One link at a tenth of the other's rate: slower, the same sums.
        cluster.run(&["rate", "100mbit", "h2"]);
        let out = cluster
            .command(&["mpirun"])
            .args(hosts("slow.st", "1", &[]))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(
            weights(&path("slow.st")),
            two,
            "a slow link changed the weights"
        );
        cluster.run(&["rate", "1gbit", "h2"]);

        // A host's rank killed, then a cable pulled, each once the first checkpoint is written.
        let killed = fault_mid_training(&cluster, hosts("killed.st", "50", &[]), || {
            cluster.kill_vgg("h2")
        });
        assert!(
            killed.contains("exited on signal 9") && killed.contains("on node h2"),
            "mpirun must name the killed rank's host: {killed}"
        );
        assert_eq!(
            weights(&path("killed.st")).len(),
            22,
            "the last checkpoint is whole"
        );
        let pulled = fault_mid_training(
            &cluster,
            hosts("pulled.st", "50", &["--comm-timeout", "10"]),
            || cluster.run(&["link", "h2", "down"]),
        );
        assert!(
            pulled.contains("lost communication with a remote daemon")
                || pulled.contains("rank 0 of 2: allreduce waited"),
            "the error must name the lost host or the stalled exchange: {pulled}"
        );
        assert_eq!(
            weights(&path("pulled.st")).len(),
            22,
            "the last checkpoint is whole"
        );
    }

    /// Starts `mpirun_args` on the cluster, applies `fault` once the second epoch has ended (a
    /// checkpoint written), and returns the job's standard error after checking that it failed,
    /// within 20 s (its --comm-timeout is 10 s; the rest is a margin for mpirun's ending), without
    /// a panic.
    fn fault_mid_training(
        cluster: &Cluster,
        mpirun_args: Vec<String>,
        fault: impl FnOnce(),
    ) -> String {
        let mut job = cluster
            .command(&["mpirun"])
            .args(mpirun_args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut errors = job.stderr.take().unwrap();
        let errors = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = errors.read_to_string(&mut text);
            text
        });
        let mut seen = String::new();
        for line in BufReader::new(job.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            seen.push_str(&line);
            seen.push('\n');
            if line.starts_with("epoch 2/") {
                break;
            }
        }
        assert!(seen.contains("epoch 2/"), "the job did not train: {seen}");
        fault();
        let faulted = Instant::now();
        let status = loop {
            if let Some(status) = job.try_wait().unwrap() {
                break status;
            }
            if faulted.elapsed() > Duration::from_secs(90) {
                let _ = job.kill();
                let _ = job.wait();
                panic!("the job still ran 90 s after the fault");
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let took = faulted.elapsed();
        let err = errors.join().unwrap();
        eprintln!("the job ended {took:?} after the fault");
        assert!(!status.success(), "{err}");
        assert!(took < Duration::from_secs(20), "{took:?}\n{err}");
        assert!(!err.contains("panicked"), "{err}");
        err
    }

    /// A cluster made by scripts/cluster.sh under a name of this test's own, removed when dropped
    /// (also when the test fails).
    struct Cluster {
        prefix: String,
    }

    impl Cluster {
        fn up(hosts: usize) -> Cluster {
            let cluster = Cluster {
                prefix: format!("vggtest{}", std::process::id()),
            };
            cluster.run(&["up", &hosts.to_string(), "1gbit"]);
            cluster
        }

        fn command(&self, args: &[&str]) -> Command {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/cluster.sh");
            let mut cmd = Command::new(script);
            cmd.args(args).env("VGG_CLUSTER_PREFIX", &self.prefix);
            cmd
        }

        /// Kills (SIGKILL) the vgg under test running on `host`: a crashed rank.
        fn kill_vgg(&self, host: &str) {
            let namespace = format!("{}-{host}", self.prefix);
            let out = Command::new("ip")
                .args(["netns", "pids", &namespace])
                .output()
                .unwrap();
            let program = std::fs::canonicalize(env!("CARGO_BIN_EXE_vgg")).unwrap();
            let mut killed = 0;
            for pid in stdout(&out).split_whitespace() {
                let exe = std::fs::read_link(format!("/proc/{pid}/exe"));
                if exe.is_ok_and(|exe| exe == program) {
                    let status = Command::new("kill").args(["-KILL", pid]).status().unwrap();
                    killed += usize::from(status.success());
                }
            }
            assert_eq!(killed, 1, "one rank of vgg on {host}");
        }

        fn run(&self, args: &[&str]) {
            let out = self.command(args).output().unwrap();
            assert!(
                out.status.success(),
                "cluster.sh {args:?}: {}",
                stderr(&out)
            );
        }
    }

    impl Drop for Cluster {
        fn drop(&mut self) {
            let _ = self.command(&["down"]).output();
        }
    }
}

/// A vgg without MPI, started by a launcher, would run as N independent copies writing the same
/// files: it refuses and says how to get one with MPI.
#[cfg(not(feature = "mpi"))]
#[test]
fn a_launcher_without_mpi_built_in_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vgg"))
        .args(["train", "--epochs", "1", "--output"])
        .arg(dir.path().join("w.st"))
        .env("OMPI_COMM_WORLD_SIZE", "2")
        .env("OMPI_COMM_WORLD_RANK", "0")
        .output()
        .unwrap();
    let err = common::stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("built without MPI") && err.contains("--features mpi"),
        "{err}"
    );
    assert!(!dir.path().join("w.st").exists());
}
