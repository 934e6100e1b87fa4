//! The flags that fix an error. Libraries say what is wrong in their own terms (a setting, the
//! CPU backend, the learning rate); this maps those typed errors to this command line's flags,
//! which `main` appends to the error's one line in parentheses.

use vgg_dist::DistError;
use vgg_model::{model::meta, ModelError, SettingDiffers};
use vgg_nn::io::IoError;
use vgg_train::data::DataError;
use vgg_train::TrainError;

use crate::causes::causes;

/// The flags that would fix `e`, where this CLI knows them.
pub fn hint(e: &anyhow::Error) -> Option<String> {
    causes(e).into_iter().find_map(|cause| {
        if cause.is::<vgg_cuda::CudaError>() {
            return Some("--backend cpu".into());
        }
        if let Some(DistError::Timeout { .. }) = cause.downcast_ref::<DistError>() {
            return Some("--comm-timeout SECONDS".into());
        }
        if let Some(ModelError::Weights { made_with, .. }) = cause.downcast_ref::<ModelError>() {
            return settings_flags(made_with);
        }
        if let Some(ModelError::NoSuchLayer { .. }) = cause.downcast_ref::<ModelError>() {
            return Some("--layer, --features".into());
        }
        if let Some(TrainError::NonFinite { .. }) = cause.downcast_ref::<TrainError>() {
            return Some("--lr, --optimizer".into());
        }
        if let Some(DataError::Missing { dataset, .. }) = cause.downcast_ref::<DataError>() {
            return Some(if dataset.contains("CIFAR") {
                "--data cifar-10-batches-bin".into()
            } else {
                "leave out --data".into()
            });
        }
        if let Some(IoError::BadSafetensors {
            what_it_is: Some(kind),
            ..
        }) = cause.downcast_ref::<IoError>()
        {
            if kind.contains(".npy") {
                return Some("--input for data, --weights for weights".into());
            }
        }
        None
    })
}

/// The flags that build the network a weight file was made for.
fn settings_flags(made_with: &[SettingDiffers]) -> Option<String> {
    let flags: Vec<String> = made_with
        .iter()
        .map(|s| match s.key {
            meta::MODEL => format!("--model {}", s.file),
            meta::CLASSES => format!("--classes {}", s.file),
            meta::HIDDEN => format!("--hidden {}", s.file),
            meta::WIDTH_MULT => format!("--width-mult {}", s.file),
            meta::INPUT => format!("inputs of {}", s.file),
            other => format!("{other} {}", s.file),
        })
        .collect();
    (!flags.is_empty()).then(|| flags.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_errors_map_to_flags() {
        let weights = ModelError::Weights {
            model: "VGG-16".into(),
            problems: vec!["missing x".into()],
            made_with: vec![
                SettingDiffers {
                    key: meta::MODEL,
                    file: "vgg11".into(),
                },
                SettingDiffers {
                    key: meta::CLASSES,
                    file: "10".into(),
                },
            ],
        };
        let wrapped = anyhow::Error::new(TrainError::Model(weights)).context("loading");
        let text = hint(&wrapped).unwrap();
        assert_eq!(text, "--model vgg11 --classes 10");
        let diverged = TrainError::NonFinite {
            value: f32::NAN,
            epoch: 0,
            step: 3,
        };
        assert!(hint(&anyhow::Error::new(diverged))
            .unwrap()
            .contains("--lr"));
        assert_eq!(hint(&anyhow::anyhow!("something else")), None);
    }
}
