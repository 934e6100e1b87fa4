//! Any bytes as a safetensors weight file: an error or tensors, never a crash.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = vgg_nn::io::parse_safetensors(data, std::path::Path::new("fuzz.safetensors"));
});
