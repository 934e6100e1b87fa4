//! Any bytes as an image for `vgg classify`: decoding and ImageNet preprocessing end in an error
//! or a 3x224x224 tensor, never a crash.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = vgg_nn::io::image::preprocess_imagenet(data, std::path::Path::new("fuzz.img")) {
        assert_eq!(t.len(), 3 * 224 * 224);
    }
});
