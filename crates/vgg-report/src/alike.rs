//! Whether two runs were measured alike: the one place the page and the text table learn which
//! settings differ, so that neither compares a VGG-11 with a VGG-19, or bf16 with f32, silently.

use vgg_bench::record::Run;

/// The settings in which `other` was not run as `first` was, each as "what A against B" (empty
/// where they were run alike): the network, the arithmetic, the batch and the input size.
fn differences(first: &Run, other: &Run) -> Vec<String> {
    let mut differ = Vec::new();
    if other.network != first.network {
        differ.push(format!(
            "network {} against {}",
            other.network, first.network
        ));
    }
    if other.arithmetic() != first.arithmetic() {
        differ.push(format!(
            "precision {} against {}",
            other.arithmetic(),
            first.arithmetic()
        ));
    }
    if other.batch != first.batch {
        differ.push(format!("batch {} against {}", other.batch, first.batch));
    }
    if let (Some(a), Some(b)) = (other.image, first.image) {
        if a != b {
            differ.push(format!("input {}x{} against {}x{}", a.0, a.1, b.0, b.1));
        }
    }
    differ
}

/// The sentence both the page and the table print for a run not measured like the first.
pub(crate) fn not_alike(first: &Run, other: &Run) -> Option<String> {
    let differ = differences(first, other);
    (!differ.is_empty()).then(|| {
        format!(
            "{} was not run with the same settings as {}: {}; its ratios compare those as well as the speed.",
            other.name,
            first.name,
            differ.join(", ")
        )
    })
}
