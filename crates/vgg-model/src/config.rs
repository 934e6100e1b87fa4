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

/// The five VGG configurations with no batch normalisation.
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
}

impl VggConfig {
    /// Every configuration, smallest first.
    pub const ALL: [VggConfig; 5] = [
        VggConfig::Vgg11,
        VggConfig::Vgg13,
        VggConfig::Vgg16C,
        VggConfig::Vgg16,
        VggConfig::Vgg19,
    ];

    /// The name used on the command line and in files.
    pub fn name(self) -> &'static str {
        match self {
            VggConfig::Vgg11 => "vgg11",
            VggConfig::Vgg13 => "vgg13",
            VggConfig::Vgg16C => "vgg16c",
            VggConfig::Vgg16 => "vgg16",
            VggConfig::Vgg19 => "vgg19",
        }
    }

    /// The column letter of the paper's Table 1.
    pub fn paper_letter(self) -> char {
        match self {
            VggConfig::Vgg11 => 'A',
            VggConfig::Vgg13 => 'B',
            VggConfig::Vgg16C => 'C',
            VggConfig::Vgg16 => 'D',
            VggConfig::Vgg19 => 'E',
        }
    }

    /// Number of 3x3/1x1 convolutions in each of the five blocks, and whether a block's last one is 1x1.
    fn blocks(self) -> ([usize; 5], bool) {
        match self {
            VggConfig::Vgg11 => ([1, 1, 2, 2, 2], false),
            VggConfig::Vgg13 => ([2, 2, 2, 2, 2], false),
            VggConfig::Vgg16C => ([2, 2, 3, 3, 3], true),
            VggConfig::Vgg16 => ([2, 2, 3, 3, 3], false),
            VggConfig::Vgg19 => ([2, 2, 4, 4, 4], false),
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
        let wanted = s.trim().to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|c| {
                c.name() == wanted || wanted == format!("vgg{}", c.paper_letter()).to_lowercase()
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
    }

    #[test]
    fn unknown_model_names_the_choices() {
        let err = "vgg17".parse::<VggConfig>().unwrap_err().to_string();
        assert!(
            err.contains("vgg17") && err.contains("vgg11, vgg13, vgg16c, vgg16, vgg19"),
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
    }
}
