//! Any bytes as a PyTorch `.pth` weight file: an error or tensors, never a crash. The reader
//! takes a path, so each input is written to a file of this process's own first.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fn path() -> &'static PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| std::env::temp_dir().join(format!("vgg-fuzz-{}.pth", std::process::id())))
}

fuzz_target!(|data: &[u8]| {
    std::fs::write(path(), data).expect("the fuzzer's scratch file");
    let _ = vgg_nn::io::load_pytorch(path());
});
