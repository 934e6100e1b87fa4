//! Any bytes as a `.npy` input: an error or an array, never a crash.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = vgg_nn::io::parse_npy(data, std::path::Path::new("fuzz.npy"));
});
