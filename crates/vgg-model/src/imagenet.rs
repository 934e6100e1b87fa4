//! The meaning of an ImageNet-1k network's 1,000 outputs: torchvision's class names, in order.

/// The 1,000 ImageNet-1k class names, one a line, in torchvision's order.
const CLASSES: &str = include_str!("../../../data/imagenet-classes.txt");

/// Class `class`'s ImageNet name, for a network of `classes` outputs (names only make sense for a
/// 1000-class ImageNet network; None otherwise, or for a class out of range).
pub fn class_name(class: usize, classes: usize) -> Option<&'static str> {
    let mut names = CLASSES.lines();
    if classes != CLASSES.lines().count() {
        return None;
    }
    names.nth(class)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torchvisions_names_for_a_thousand_classes_only() {
        assert_eq!(CLASSES.lines().count(), 1000);
        assert!(class_name(0, 1000).is_some_and(|n| n.contains("tench")));
        assert_eq!(class_name(999, 1000).map(|n| !n.is_empty()), Some(true));
        assert_eq!(class_name(1000, 1000), None);
        assert_eq!(class_name(3, 10), None);
    }
}
