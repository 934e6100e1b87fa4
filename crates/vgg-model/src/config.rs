//! The VGG configurations of Simonyan & Zisserman (2014), Table 1.

use std::fmt;
use std::str::FromStr;

use crate::SpecError;

/// One entry of a configuration's feature extractor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// A convolution with `out_channels` filters of `kernel` x `kernel`, stride 1, "same" padding.
    Conv {
        /// Number of filters.
        out_channels: usize,
        /// Side of the square filter.
        kernel: usize,
    },
    /// A 2x2 max-pool with stride 2.
    Pool,
}

/// The five VGG configurations of the paper, and torchvision's four with batch normalisation
/// after every convolution (`vgg11_bn` .. `vgg19_bn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VggConfig {
    /// Config A, 11 weight layers.
    Vgg11,
    /// Config B, 13 weight layers.
    Vgg13,
    /// Config C: VGG-16 whose last convolution in blocks 3-5 is 1x1.
    Vgg16C,
    /// Config D, the usual VGG-16.
    Vgg16,
    /// Config E, 19 weight layers.
    Vgg19,
    /// Config A with BatchNorm after every convolution (torchvision's `vgg11_bn`).
    Vgg11Bn,
    /// Config B with BatchNorm after every convolution.
    Vgg13Bn,
    /// Config D with BatchNorm after every convolution.
    Vgg16Bn,
    /// Config E with BatchNorm after every convolution.
    Vgg19Bn,
}

impl VggConfig {
    /// Every configuration, smallest first.
    pub const ALL: [VggConfig; 9] = [
        VggConfig::Vgg11,
        VggConfig::Vgg13,
        VggConfig::Vgg16C,
        VggConfig::Vgg16,
        VggConfig::Vgg19,
        VggConfig::Vgg11Bn,
        VggConfig::Vgg13Bn,
        VggConfig::Vgg16Bn,
        VggConfig::Vgg19Bn,
    ];

    /// The name used on the command line and in files.
    pub fn name(self) -> &'static str {
        match self {
            VggConfig::Vgg11 => "vgg11",
            VggConfig::Vgg13 => "vgg13",
            VggConfig::Vgg16C => "vgg16c",
            VggConfig::Vgg16 => "vgg16",
            VggConfig::Vgg19 => "vgg19",
            VggConfig::Vgg11Bn => "vgg11_bn",
            VggConfig::Vgg13Bn => "vgg13_bn",
            VggConfig::Vgg16Bn => "vgg16_bn",
            VggConfig::Vgg19Bn => "vgg19_bn",
        }
    }

    /// Whether BatchNorm follows every convolution (torchvision's `_bn` models).
    pub fn batch_norm(self) -> bool {
        self != self.without_batch_norm()
    }

    /// The paper's configuration this one adds batch normalisation to, or itself.
    pub fn without_batch_norm(self) -> VggConfig {
        match self {
            VggConfig::Vgg11Bn => VggConfig::Vgg11,
            VggConfig::Vgg13Bn => VggConfig::Vgg13,
            VggConfig::Vgg16Bn => VggConfig::Vgg16,
            VggConfig::Vgg19Bn => VggConfig::Vgg19,
            plain => plain,
        }
    }

    /// The column letter of the paper's Table 1 (of the configuration without batch norm).
    pub fn paper_letter(self) -> char {
        match self.without_batch_norm() {
            VggConfig::Vgg11 => 'A',
            VggConfig::Vgg13 => 'B',
            VggConfig::Vgg16C => 'C',
            VggConfig::Vgg16 => 'D',
            VggConfig::Vgg19 => 'E',
            _ => unreachable!("without_batch_norm gives a paper configuration"),
        }
    }

    /// Number of 3x3/1x1 convolutions in each of the five blocks, and whether a block's last one is 1x1.
    fn blocks(self) -> ([usize; 5], bool) {
        match self.without_batch_norm() {
            VggConfig::Vgg11 => ([1, 1, 2, 2, 2], false),
            VggConfig::Vgg13 => ([2, 2, 2, 2, 2], false),
            VggConfig::Vgg16C => ([2, 2, 3, 3, 3], true),
            VggConfig::Vgg16 => ([2, 2, 3, 3, 3], false),
            VggConfig::Vgg19 => ([2, 2, 4, 4, 4], false),
            _ => unreachable!("without_batch_norm gives a paper configuration"),
        }
    }

    /// The feature extractor, block by block: each block is its convolutions then one pool.
    pub fn stages(self) -> Vec<Vec<Stage>> {
        const WIDTHS: [usize; 5] = [64, 128, 256, 512, 512];
        let (counts, last_is_1x1) = self.blocks();
        counts
            .iter()
            .zip(WIDTHS)
            .enumerate()
            .map(|(block, (&count, width))| {
                let mut stages: Vec<Stage> = (0..count)
                    .map(|i| {
                        let one_by_one = last_is_1x1 && block >= 2 && i + 1 == count;
                        Stage::Conv {
                            out_channels: width,
                            kernel: if one_by_one { 1 } else { 3 },
                        }
                    })
                    .collect();
                stages.push(Stage::Pool);
                stages
            })
            .collect()
    }

    /// The valid names, for error messages.
    pub fn choices() -> String {
        Self::ALL.map(|c| c.name()).join(", ")
    }
}

impl fmt::Display for VggConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl serde::Serialize for VggConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for VggConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

impl FromStr for VggConfig {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_lowercase().replace('-', "_");
        Self::ALL
            .into_iter()
            .find(|c| {
                let letter = format!("vgg{}", c.paper_letter()).to_lowercase();
                let letter = if c.batch_norm() {
                    format!("{letter}_bn")
                } else {
                    letter
                };
                c.name() == wanted || wanted == letter
            })
            .ok_or_else(|| SpecError::UnknownModel {
                given: s.to_string(),
                choices: Self::choices(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for c in VggConfig::ALL {
            assert_eq!(c.name().parse::<VggConfig>().unwrap(), c);
        }
        assert_eq!("VGG16".parse::<VggConfig>().unwrap(), VggConfig::Vgg16);
        assert_eq!("VGG16-BN".parse::<VggConfig>().unwrap(), VggConfig::Vgg16Bn);
        assert_eq!("vggD_bn".parse::<VggConfig>().unwrap(), VggConfig::Vgg16Bn);
        assert_eq!("vggD".parse::<VggConfig>().unwrap(), VggConfig::Vgg16);
    }

    #[test]
    fn unknown_model_names_the_choices() {
        let err = "vgg17".parse::<VggConfig>().unwrap_err().to_string();
        assert!(
            err.contains("vgg17")
                && err.contains("vgg11, vgg13, vgg16c, vgg16, vgg19, vgg11_bn, vgg13_bn"),
            "{err}"
        );
    }

    #[test]
    fn conv_counts_match_the_paper() {
        let convs = |c: VggConfig| {
            c.stages()
                .iter()
                .flatten()
                .filter(|s| matches!(s, Stage::Conv { .. }))
                .count()
        };
        // Weight layers = convolutions + 3 fully connected.
        assert_eq!(convs(VggConfig::Vgg11) + 3, 11);
        assert_eq!(convs(VggConfig::Vgg13) + 3, 13);
        assert_eq!(convs(VggConfig::Vgg16C) + 3, 16);
        assert_eq!(convs(VggConfig::Vgg16) + 3, 16);
        assert_eq!(convs(VggConfig::Vgg19) + 3, 19);
        for c in VggConfig::ALL {
            assert_eq!(c.stages(), c.without_batch_norm().stages(), "{c}");
            assert_eq!(c.batch_norm(), c.name().ends_with("_bn"), "{c}");
        }
    }
}
