//! What a user brings can crash nothing, hang nothing, exhaust nothing and never give a
//! confident wrong answer: closed and full stdout, sizes that would exhaust memory, absurd
//! thread counts, counts that would wrap, NaN, truncated or inconsistent files, hostile output
//! paths and interrupted writes, and training settings that make no sense.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{finish_within, fixture, ok, refused, s, spawn, stderr, stdout, vgg, TINY_TRAIN};
use vgg_nn::io;

fn digits_dir() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../data/digits")
        .to_string_lossy()
        .into_owned()
}

fn no_panic(out: &Output, what: &str) {
    let err = stderr(out);
    assert!(
        !err.contains("panicked") && !err.contains("Broken pipe"),
        "{what}: {err}"
    );
}

const TINY_BENCH: [&str; 13] = [
    "bench",
    "--model",
    "vgg11",
    "--width-mult",
    "0.125",
    "--hidden",
    "16",
    "--image-size",
    "32",
    "--batch-size",
    "1",
    "--burn-in",
    "0",
];

// ---- 1. closed and full stdout ----

#[test]
fn a_closed_pipe_ends_bench_quietly() {
    // `vgg bench ... | head -1`
    let mut args = TINY_BENCH.to_vec();
    args.extend(["--num-batches", "200"]);
    let mut child = spawn(&args);
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.contains("vgg11"), "{first}");
    // The reader goes away, as head's does.
    let out = finish_within(child, Duration::from_secs(60), "bench with a closed stdout");
    no_panic(&out, "bench | head -1");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[cfg(target_os = "linux")]
#[test]
fn a_full_stdout_is_a_named_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_vgg"))
        .args(["summary"])
        .stdout(std::fs::File::create("/dev/full").unwrap())
        .output()
        .unwrap();
    no_panic(&out, "summary > /dev/full");
    // A failure while running, not bad input.
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("stdout") && err.contains("No space left"),
        "{err}"
    );
}

#[test]
fn training_saves_the_checkpoint_before_printing_the_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt.safetensors");
    let mut args = TINY_TRAIN.to_vec();
    let data = digits_dir();
    args.extend(["--epochs", "3", "--data", &data, "--output", s(&ckpt)]);
    let mut child = spawn(&args);
    let mut header = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut header)
        .unwrap();
    assert!(header.contains("training and"), "{header}");
    let out = finish_within(
        child,
        Duration::from_secs(120),
        "train with a closed stdout",
    );
    no_panic(&out, "train | head -1");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // Epoch 1's line could not be printed, but its checkpoint was already safe.
    let file = io::load_safetensors(&ckpt).unwrap();
    assert_eq!(file.metadata["train.epoch"], "1");
}

// ---- 2. allocations sized by user input ----

/// A PNG whose header declares `width` x `height` grey pixels, with a valid CRC, and no data.
fn png_declaring(width: u32, height: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    let chunk = |kind: &[u8], data: &[u8]| {
        let mut c = (data.len() as u32).to_be_bytes().to_vec();
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        c.extend_from_slice(&body);
        c.extend_from_slice(&crc32(&body).to_be_bytes());
        c
    };
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]); // 8-bit greyscale
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(chunk(b"IHDR", &ihdr));
    // An empty zlib stream: decoders read the header up to the first data chunk.
    png.extend(chunk(
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    ));
    png.extend(chunk(b"IEND", &[]));
    png
}

#[test]
fn images_are_bounded_by_pixels_and_their_aspect_ratio_costs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let weights = fixture("classify", "weights.safetensors");
    // 20000 x 20000 declared: refused from the header, before decoding.
    let huge = dir.path().join("huge.png");
    std::fs::write(&huge, png_declaring(20_000, 20_000)).unwrap();
    refused(
        &["classify", "--weights", &weights, s(&huge)],
        &["huge.png", "20000x20000", "more than"],
    );
    // The case: a tiny PNG of 1 x 100000 grey pixels, whose whole resize would be
    // 256 x 25,600,000 pixels (20 GB); only the crop is computed.
    let tall = dir.path().join("tall.png");
    {
        use image::ImageEncoder;
        let mut png = Vec::new();
        image::codecs::png::PngEncoder::new_with_quality(
            &mut png,
            image::codecs::png::CompressionType::Best,
            image::codecs::png::FilterType::NoFilter,
        )
        .write_image(&[0u8; 100_000], 1, 100_000, image::ExtendedColorType::L8)
        .unwrap();
        assert!(png.len() < 2_000, "{} bytes", png.len());
        std::fs::write(&tall, png).unwrap();
    }
    let out = ok(&["classify", "--weights", &weights, s(&tall)]);
    assert!(out.contains("tall.png:") && out.contains("1. "), "{out}");
}

#[test]
fn networks_too_large_for_memory_are_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("w.safetensors");
    refused(
        &["init", "--hidden", "100000", "--output", s(&out)],
        &[
            "hidden 100000",
            "needs an estimated",
            "make the network smaller",
        ],
    );
    refused(
        &["init", "--classes", "1000000000000", "--output", s(&out)],
        &["1000000000000 classes", "needs an estimated"],
    );
    assert!(!out.exists());
    // The same check guards forward, backward, classify and train, here under --max-memory (a
    // budget that still reads the 0.9 MiB weight file: reads plan within it too).
    let (w, x) = (
        fixture("vgg11-w8", "weights.safetensors"),
        fixture("vgg11-w8", "input.npy"),
    );
    let logits = dir.path().join("logits.npy");
    for command in ["forward", "backward"] {
        refused(
            &[
                command,
                "--max-memory",
                "2M",
                "--weights",
                &w,
                "--input",
                &x,
                "--output",
                s(&logits),
            ],
            &["needs an estimated", "2.00 MiB is available"],
        );
    }
    refused(
        &[
            "classify",
            "--max-memory",
            "4M",
            "--weights",
            &fixture("classify", "weights.safetensors"),
            &fixture("classify", "image.png"),
        ],
        &["needs an estimated"],
    );
    let mut args = TINY_TRAIN.to_vec();
    let (ckpt, data) = (dir.path().join("c.safetensors"), digits_dir());
    args.extend(["--max-memory", "1M", "--data", &data, "--output", s(&ckpt)]);
    refused(&args, &["needs an estimated", "1.00 MiB is available"]);
}

// ---- 3. thread counts ----

#[test]
fn absurd_thread_counts_are_refused_at_once() {
    let mut args = TINY_BENCH.to_vec();
    args.extend(["--num-batches", "1", "--threads", "100000"]);
    let out = finish_within(spawn(&args), Duration::from_secs(20), "--threads 100000");
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("100000") && err.contains("at most"), "{err}");
}

// ---- 4. counts that would wrap ----

#[test]
fn counts_that_would_wrap_are_errors() {
    refused(
        &["summary", "--channels", "18446744073709551615"],
        &["does not fit in 64 bits"],
    );
    refused(
        &["summary", "--batch", "18446744073709551615"],
        &["a batch of 18446744073709551615", "does not fit in 64 bits"],
    );
    let mut args = TINY_BENCH.to_vec();
    args.retain(|a| *a != "--burn-in" && *a != "0");
    args.extend(["--burn-in", "18446744073709551615", "--num-batches", "1"]);
    refused(&args, &["18446744073709551615 burn-in steps", "too many"]);
    // An .npy shape whose byte count wraps to what the file holds.
    let dir = tempfile::tempdir().unwrap();
    let npy = dir.path().join("wrap.npy");
    let header =
        "{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, 1, 1, 1), }";
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    std::fs::write(&npy, bytes).unwrap();
    refused(
        &[
            "forward",
            "--weights",
            &fixture("vgg11-w8", "weights.safetensors"),
            "--input",
            s(&npy),
            "--output",
            s(&dir.path().join("o.npy")),
        ],
        &["wrap.npy", "too large"],
    );
}

// ---- 5. NaN ----

#[test]
fn nan_inputs_give_nan_logits_with_a_warning_and_nan_weights_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut x = io::load_npy(Path::new(&fixture("vgg11-w8", "input.npy"))).unwrap();
    x.data[7] = f32::NAN;
    let input = dir.path().join("nan.npy");
    io::save_npy(&input, &x).unwrap();
    let logits = dir.path().join("logits.npy");
    let weights = fixture("vgg11-w8", "weights.safetensors");
    let out = vgg(&[
        "forward",
        "--weights",
        &weights,
        "--input",
        s(&input),
        "--output",
        s(&logits),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("1 NaN or infinite values"),
        "{}",
        stderr(&out)
    );
    // Image 0 holds the NaN and every one of its logits is NaN; image 1 is untouched.
    let y = io::load_npy(&logits).unwrap();
    let classes = y.shape[1];
    assert!(y.data[..classes].iter().all(|v| v.is_nan()));
    assert!(y.data[classes..].iter().all(|v| v.is_finite()));
    assert!(stdout(&out).contains("NaN"), "{}", stdout(&out));

    let mut w = io::load_safetensors(Path::new(&weights)).unwrap();
    w.tensors[0].1.data[0] = f32::INFINITY;
    let bad = dir.path().join("inf.safetensors");
    io::save_safetensors(&bad, &w).unwrap();
    refused(
        &[
            "forward",
            "--weights",
            s(&bad),
            "--input",
            &fixture("vgg11-w8", "input.npy"),
            "--output",
            s(&logits),
        ],
        &["NaN or infinite", &w.tensors[0].0],
    );
}

// ---- 6. truncated or inconsistent files ----

#[test]
fn truncated_images_and_misread_headers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let img = image::RgbImage::from_fn(300, 260, |x, y| image::Rgb([x as u8, y as u8, 7]));
    let jpeg = dir.path().join("photo.jpg");
    img.save(&jpeg).unwrap();
    let bytes = std::fs::read(&jpeg).unwrap();
    let cut = dir.path().join("cut.jpg");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let weights = fixture("classify", "weights.safetensors");
    ok(&["classify", "--weights", &weights, s(&jpeg)]);
    refused(
        &["classify", "--weights", &weights, s(&cut)],
        &["cut.jpg", "truncated"],
    );
    // A <f8 array whose header mentions '<f4' under another key is not read as float32.
    let header =
        "{'comment': '<f4', 'descr': '<f8', 'fortran_order': False, 'shape': (1, 3, 32, 32), }";
    let mut npy = b"\x93NUMPY\x01\x00".to_vec();
    npy.extend_from_slice(&(header.len() as u16).to_le_bytes());
    npy.extend_from_slice(header.as_bytes());
    npy.extend(std::iter::repeat_n(0u8, 8 * 3 * 32 * 32));
    let f8 = dir.path().join("f8.npy");
    std::fs::write(&f8, npy).unwrap();
    refused(
        &[
            "forward",
            "--weights",
            &fixture("vgg11-w8", "weights.safetensors"),
            "--input",
            s(&f8),
            "--output",
            s(&dir.path().join("o.npy")),
        ],
        &["f8.npy", "unexpected key 'comment'"],
    );
}

#[test]
fn a_checkpoint_missing_optimiser_state_does_not_resume() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt.safetensors");
    let data = digits_dir();
    let mut args = TINY_TRAIN.to_vec();
    args.extend(["--epochs", "1", "--data", &data, "--output", s(&ckpt)]);
    ok(&args);
    let mut file = io::load_safetensors(&ckpt).unwrap();
    let before = file.tensors.len();
    file.tensors
        .retain(|(n, _)| n != "optimizer.classifier.6.weight.v");
    assert_eq!(file.tensors.len(), before - 1);
    let broken = dir.path().join("broken.safetensors");
    io::save_safetensors(&broken, &file).unwrap();
    let mut args = TINY_TRAIN.to_vec();
    let out2 = dir.path().join("more.safetensors");
    args.extend([
        "--epochs",
        "2",
        "--data",
        &data,
        "--resume",
        s(&broken),
        "--output",
        s(&out2),
    ]);
    refused(
        &args,
        &["broken.safetensors", "optimizer.classifier.6.weight.v"],
    );
}

// ---- 7. writes ----

#[cfg(unix)]
#[test]
fn links_and_devices_are_never_written_through() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim.txt");
    std::fs::write(&victim, "precious").unwrap();
    let link = dir.path().join("link.safetensors");
    symlink(&victim, &link).unwrap();
    let init = |out: &Path| {
        vec![
            "init".to_string(),
            "--model".into(),
            "vgg11".into(),
            "--width-mult".into(),
            "0.125".into(),
            "--hidden".into(),
            "16".into(),
            "--output".into(),
            s(out).to_string(),
        ]
    };
    let run = |args: Vec<String>| vgg(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let out = run(init(&link));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("symbolic link"), "{}", stderr(&out));
    // A link planted where the old fixed temporary name was is not followed either.
    let target = dir.path().join("w.safetensors");
    symlink(&victim, dir.path().join("w.safetensors.partial")).unwrap();
    assert!(run(init(&target)).status.success());
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    // A pipe (as a device would be) is refused, not replaced by a regular file.
    let fifo = dir.path().join("fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let out = run(init(&fifo));
    assert!(stderr(&out).contains("a named pipe"), "{}", stderr(&out));
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());
}

/// A disk that fills mid-write (here: the file-size limit, which fails writes the same way)
/// leaves the previous file whole and no temporary behind.
#[cfg(target_os = "linux")]
#[test]
fn a_failed_write_keeps_the_old_file_whole() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("w.safetensors");
    std::fs::write(&target, "the previous weights").unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg("trap '' XFSZ; ulimit -f 64; exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_vgg"))
        .args([
            "init",
            "--model",
            "vgg11",
            "--width-mult",
            "0.125",
            "--hidden",
            "64",
            "--output",
            s(&target),
        ])
        .output()
        .unwrap();
    no_panic(&out, "init past the file-size limit");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("File too large"), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(&target).unwrap(),
        "the previous weights"
    );
    assert_eq!(partials(dir.path()), Vec::<String>::new());
}

fn partials(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".partial"))
        .collect()
}

/// Ctrl-C while the file is being written deletes the temporary: nothing partial is left.
#[cfg(unix)]
#[test]
fn an_interrupted_write_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let target: PathBuf = dir.path().join("vgg16.safetensors");
    // Full-size VGG-16: 528 MiB to write, long enough to interrupt mid-write.
    let child = spawn(&["init", "--output", s(&target)]);
    let pid = child.id().to_string();
    let start = Instant::now();
    while partials(dir.path()).is_empty() && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let interrupted = !partials(dir.path()).is_empty();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let out = finish_within(child, Duration::from_secs(60), "init after Ctrl-C");
    no_panic(&out, "init interrupted");
    assert_eq!(partials(dir.path()), Vec::<String>::new());
    if interrupted && out.status.code() == Some(130) {
        assert!(!target.exists(), "a half-written target");
    } else {
        // It finished first: then the file is whole.
        assert!(io::load_safetensors(&target).is_ok());
    }
}

#[test]
fn bad_outputs_are_found_before_long_work_starts() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no/such/dir/ckpt.safetensors");
    let mut args = TINY_TRAIN.to_vec();
    args.extend(["--epochs", "1", "--output", s(&missing)]);
    let out = vgg(&args);
    assert_eq!(out.status.code(), Some(2));
    assert!(!stdout(&out).contains("epoch"), "{}", stdout(&out));
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
    let ok_out = dir.path().join("ok.safetensors");
    let mut args = TINY_TRAIN.to_vec();
    args.extend([
        "--epochs",
        "1",
        "--output",
        s(&ok_out),
        "--plot",
        s(&missing),
    ]);
    refused(&args, &["does not exist"]);
    let mut args = TINY_BENCH.to_vec();
    args.extend(["--num-batches", "1", "--json", s(&missing)]);
    refused(&args, &["does not exist"]);
}

// ---- 8. settings that make no sense ----

#[test]
fn training_settings_that_make_no_sense_are_refused_by_flag() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("c.safetensors");
    let run = |extra: &[&str], needles: &[&str]| {
        let data = digits_dir();
        let mut args = TINY_TRAIN.to_vec();
        args.extend(["--data", &data, "--output", s(&out)]);
        args.extend(extra);
        refused(&args, needles);
    };
    run(
        &["--test-fraction", "0.0001"],
        &["--test-fraction", "no training or no test images"],
    );
    run(&["--test-fraction", "0.9999"], &["--test-fraction"]);
    run(
        &["--schedule", "step", "--gamma", "-0.5"],
        &["--gamma -0.5", "positive"],
    );
    run(
        &["--optimizer", "sgd", "--momentum", "1.5"],
        &["--momentum 1.5"],
    );
    run(&["--weight-decay", "-1"], &["--weight-decay -1"]);
    run(&["--lr", "-0.1"], &["--lr -0.1"]);
    assert!(!out.exists());
}
