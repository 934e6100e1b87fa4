//! Any bytes as a CIFAR-10 batch file: an error or labelled images, never a crash.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(set) = vgg_train::data::parse_cifar_batch(data, std::path::Path::new("fuzz.bin")) {
        assert_eq!(set.images.len(), set.len() * 3 * 32 * 32);
    }
});
