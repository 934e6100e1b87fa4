//! PyTorch's own files (`torch.save`, as torchvision ships its weights), made by torch
//! (`scripts/make_fixtures.py --pth`): read without Python, in every container torch writes, and
//! refused with a named error when they hold anything but float32 tensors and plain values.

use std::path::PathBuf;

use vgg_nn::io::{self, IoError, TensorFile};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/pth")
        .join(name)
}

fn names(f: &TensorFile) -> Vec<&str> {
    f.tensors.iter().map(|(n, _)| n.as_str()).collect()
}

#[test]
fn a_state_dict_reads_the_same_from_every_container() {
    let zip = io::load_pytorch(&fixture("tiny.pth")).unwrap();
    assert_eq!(names(&zip), ["layer.bias", "layer.weight"]);
    // torch.arange(3.0): exact values, so the bytes are read at the right offsets.
    assert_eq!(zip.tensors[0].1.data, [0.0, 1.0, 2.0]);
    assert_eq!(zip.tensors[1].1.shape, [2, 3]);
    assert!(zip.metadata.is_empty());
    // The pre-1.6 pickle stream, and a checkpoint nesting DataParallel names under "state_dict".
    for other in ["legacy.pth", "nested.pth"] {
        let file = io::load_pytorch(&fixture(other)).unwrap();
        assert_eq!(file.tensors, zip.tensors, "{other}");
    }
}

#[test]
fn torchvision_layout_loads_through_the_format_neutral_entry() {
    let pth = io::load_tensors(&fixture("vgg11-w8.pth")).unwrap();
    let safetensors = io::load_tensors(&fixture("../vgg11-w8/weights.safetensors")).unwrap();
    assert_eq!(pth.tensors, safetensors.tensors);
    assert_eq!(pth.tensors.len(), 22);
}

#[test]
fn other_dtypes_are_named_and_refused() {
    let e = io::load_pytorch(&fixture("float64.pth")).unwrap_err();
    assert!(
        matches!(&e, IoError::Dtype { dtype, .. } if dtype == "F64"),
        "{e}"
    );
    assert!(e.to_string().contains(".float()"), "{e}");
}

#[test]
fn a_pickled_callable_is_refused_unread() {
    // Python would call os.system to rebuild it; we name it and read nothing.
    let e = io::load_pytorch(&fixture("hostile.pth")).unwrap_err();
    match &e {
        IoError::PickledObject {
            at, python_type, ..
        } => {
            assert_eq!(at, "payload");
            assert!(python_type.ends_with("system"), "{python_type}");
        }
        other => panic!("{other}"),
    }
    assert!(e.to_string().contains("hostile.pth"), "{e}");
}

#[test]
fn broken_and_foreign_files_are_named_errors() {
    let dir = tempfile::tempdir().unwrap();
    let valid = std::fs::read(fixture("tiny.pth")).unwrap();
    let cut = dir.path().join("cut.pth");
    std::fs::write(&cut, &valid[..valid.len() / 2]).unwrap();
    let e = io::load_tensors(&cut).unwrap_err();
    assert!(matches!(e, IoError::BadPytorch { .. }), "{e}");
    assert!(e.to_string().contains("cut.pth"), "{e}");
    // A zip that is not a torch file.
    let zip = dir.path().join("other.pth");
    std::fs::write(&zip, b"PK\x03\x04 not really a zip archive").unwrap();
    assert!(matches!(
        io::load_tensors(&zip),
        Err(IoError::BadPytorch { .. })
    ));
    // Neither format: the safetensors reader's error, which says what the bytes look like.
    let png = dir.path().join("w.pth");
    std::fs::write(&png, b"\x89PNG\r\n\x1a\n....").unwrap();
    let e = io::load_tensors(&png).unwrap_err().to_string();
    assert!(e.contains("PNG"), "{e}");
    // A directory is not read.
    assert!(matches!(
        io::load_pytorch(dir.path()),
        Err(IoError::NotRegularFile { .. })
    ));
}
