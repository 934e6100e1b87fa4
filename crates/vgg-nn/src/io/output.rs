//! The one way every output file is written. A write goes to a temporary created exclusively, with
//! a unique name, in the target's directory; it is flushed and fsync'd, given the target's
//! permissions, and renamed over the target, then the directory is fsync'd. A reader sees the old
//! file or the whole new one, never half of one, and a link planted anywhere is never followed.
//! Targets that are not regular files (links, devices, directories) are refused.

use std::fs::{File, Permissions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::IoError;

/// Temporaries being written now, for `remove_partial_outputs`.
static PENDING: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn pending() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    // A panic elsewhere while holding the lock leaves a list that is still valid.
    PENDING.lock().unwrap_or_else(|e| e.into_inner())
}

/// Deletes every temporary still being written: for a Ctrl-C or termination handler that exits
/// the process without unwinding, so that an interrupted run leaves no partial file behind.
pub fn remove_partial_outputs() {
    for path in pending().drain(..) {
        let _ = std::fs::remove_file(path);
    }
}

/// The directory a target is written in ("." for a bare file name).
fn directory_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// What kind of file `path` is when it is not a regular file.
fn not_regular(path: &Path) -> Option<&'static str> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    let kind = meta.file_type();
    if kind.is_file() {
        return None;
    }
    Some(super::kind_in_words(kind))
}

/// The target's current permissions, kept by the replacement.
fn existing_permissions(path: &Path) -> Option<Permissions> {
    std::fs::symlink_metadata(path)
        .ok()
        .filter(|m| m.file_type().is_file())
        .map(|m| m.permissions())
}

fn refuse_non_regular(path: &Path) -> Result<(), IoError> {
    match not_regular(path) {
        Some(kind) => Err(IoError::NotRegularFile {
            path: path.to_path_buf(),
            kind,
        }),
        None => Ok(()),
    }
}

fn create_temporary(path: &Path) -> Result<tempfile::NamedTempFile, IoError> {
    let dir = directory_of(path);
    match std::fs::metadata(&dir) {
        Ok(m) if m.is_dir() => {}
        _ => {
            return Err(IoError::NoDirectory {
                path: path.to_path_buf(),
                dir,
            })
        }
    }
    let name = path.file_name().ok_or_else(|| IoError::NotRegularFile {
        path: path.to_path_buf(),
        kind: "a directory",
    })?;
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(name);
    prefix.push(".");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".partial");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // A new file gets the usual 0666 less the umask, as with any other tool.
        builder.permissions(Permissions::from_mode(0o666));
    }
    builder.tempfile_in(&dir).map_err(|error| IoError::Write {
        path: path.to_path_buf(),
        error,
    })
}

/// Checks, before long work starts, that `path` can be written: its directory exists and takes
/// new files, and it is not a link, device or directory.
pub fn check_output(path: &Path) -> Result<(), IoError> {
    refuse_non_regular(path)?;
    // Creating (and dropping) a temporary is the honest test of permission and space for inodes.
    create_temporary(path).map(drop)
}

/// Makes `dir` ready to take outputs before long work starts: created where missing (its parent
/// must exist), refused where it is a link (never followed) or anything but a directory.
pub fn output_directory(dir: &Path) -> Result<(), IoError> {
    match std::fs::symlink_metadata(dir) {
        Ok(meta) if meta.file_type().is_dir() => Ok(()),
        Ok(meta) => Err(IoError::NotADirectory {
            path: dir.to_path_buf(),
            kind: if meta.file_type().is_file() {
                "a file"
            } else {
                super::kind_in_words(meta.file_type())
            },
        }),
        Err(_) => match std::fs::create_dir(dir) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                Err(IoError::NoDirectory {
                    path: dir.to_path_buf(),
                    dir: directory_of(dir),
                })
            }
            Err(error) => Err(IoError::Write {
                path: dir.to_path_buf(),
                error,
            }),
        },
    }
}

/// Writes `bytes` to `path` as described in the module's documentation.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), IoError> {
    write_with(path, |w| w.write_all(bytes))
}

/// Writes what `fill` writes to `path` as described in the module's documentation, streaming
/// through a buffer.
pub fn write_with(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<(), IoError> {
    refuse_non_regular(path)?;
    let err = |error| IoError::Write {
        path: path.to_path_buf(),
        error,
    };
    let temp = create_temporary(path)?;
    let temp_path = temp.path().to_path_buf();
    pending().push(temp_path.clone());
    let result = (|| {
        // Through the File, not the NamedTempFile, whose errors name the temporary's path.
        let mut writer = BufWriter::new(temp.as_file());
        fill(&mut writer).map_err(err)?;
        writer.into_inner().map_err(|e| err(e.into_error()))?;
        if let Some(permissions) = existing_permissions(path) {
            temp.as_file().set_permissions(permissions).map_err(err)?;
        }
        temp.as_file().sync_all().map_err(err)?;
        // A link or device planted at the target since the check is refused, not replaced.
        refuse_non_regular(path)?;
        temp.persist(path).map_err(|e| err(e.error))?;
        sync_directory(&directory_of(path));
        Ok(())
    })();
    pending().retain(|p| p != &temp_path);
    result
}

/// A file a command reads or writes, under the name the command gives it (a flag, say).
#[derive(Debug, Clone, Copy)]
pub struct NamedPath<'a> {
    /// How the command names it.
    pub name: &'a str,
    /// The path.
    pub path: &'a Path,
}

/// What a path resolves to: the file itself where it exists (through links), else the canonical
/// directory and the name a new file would take there.
#[derive(Debug, PartialEq, Eq)]
enum FileIdentity {
    Existing { device: u64, inode: u64 },
    New(PathBuf),
}

fn identity(path: &Path) -> Option<FileIdentity> {
    #[cfg(unix)]
    if let Ok(meta) = std::fs::metadata(path) {
        use std::os::unix::fs::MetadataExt;
        return Some(FileIdentity::Existing {
            device: meta.dev(),
            inode: meta.ino(),
        });
    }
    let dir = std::fs::canonicalize(directory_of(path)).ok()?;
    Some(FileIdentity::New(dir.join(path.file_name()?)))
}

/// Refuses, before any work starts, two outputs that are the same file, and an output that is
/// one of the inputs (compared as files: through links, `..` and hard links). A command whose
/// point is to rewrite an input leaves that input out of `inputs`.
pub fn check_distinct(outputs: &[NamedPath], inputs: &[NamedPath]) -> Result<(), IoError> {
    let ids: Vec<Option<FileIdentity>> = outputs.iter().map(|o| identity(o.path)).collect();
    for (i, (out, id)) in outputs.iter().zip(&ids).enumerate() {
        let Some(id) = id else { continue };
        if let Some(other) = outputs[..i]
            .iter()
            .zip(&ids)
            .find(|(_, other)| other.as_ref() == Some(id))
        {
            return Err(IoError::SameFile {
                output: out.name.to_string(),
                other: other.0.name.to_string(),
                other_is_input: false,
                path: out.path.to_path_buf(),
            });
        }
        if let Some(input) = inputs
            .iter()
            .find(|input| identity(input.path).as_ref() == Some(id))
        {
            return Err(IoError::SameFile {
                output: out.name.to_string(),
                other: input.name.to_string(),
                other_is_input: true,
                path: out.path.to_path_buf(),
            });
        }
    }
    Ok(())
}

/// Makes the rename durable. Best effort: some file systems cannot sync a directory.
fn sync_directory(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_output_directory_is_created_and_links_or_files_refused() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("new");
        output_directory(&dir).unwrap();
        assert!(dir.is_dir());
        output_directory(&dir).unwrap();
        let file = root.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let e = output_directory(&file).unwrap_err().to_string();
        assert!(e.contains("is a file, not a directory"), "{e}");
        #[cfg(unix)]
        {
            let link = root.path().join("link");
            std::os::unix::fs::symlink(&dir, &link).unwrap();
            let e = output_directory(&link).unwrap_err().to_string();
            assert!(e.contains("a symbolic link"), "{e}");
        }
        let e = output_directory(&root.path().join("no/such"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
    }

    fn dir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".partial"))
            .collect()
    }

    #[test]
    fn writes_replace_whole_files_and_leave_nothing_behind() {
        let d = dir();
        let target = d.path().join("out.bin");
        write_atomic(&target, b"first").unwrap();
        write_atomic(&target, b"second").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"second");
        assert!(leftovers(d.path()).is_empty());
        // A failing writer leaves the old file whole.
        let e = write_with(&target, |w| {
            w.write_all(b"half")?;
            Err(std::io::Error::other("disk full"))
        })
        .unwrap_err();
        assert!(e.to_string().contains("disk full"), "{e}");
        assert_eq!(std::fs::read(&target).unwrap(), b"second");
        assert!(leftovers(d.path()).is_empty());
        assert!(!pending().iter().any(|p| p.starts_with(d.path())));
    }

    #[cfg(unix)]
    #[test]
    fn links_devices_and_directories_are_refused() {
        use std::os::unix::fs::symlink;
        let d = dir();
        let victim = d.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let link = d.path().join("link");
        symlink(&victim, &link).unwrap();
        // A pipe stands for a device (a test must not risk replacing a real one).
        let fifo = d.path().join("fifo");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        for target in [link.as_path(), fifo.as_path(), d.path()] {
            let e = write_atomic(target, b"x").unwrap_err();
            assert!(matches!(e, IoError::NotRegularFile { .. }), "{e}");
            assert!(check_output(target).is_err());
        }
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        // The old fixed temporary name is no longer used: a link planted there is not followed.
        symlink(&victim, d.path().join("out.bin.partial")).unwrap();
        write_atomic(&d.path().join("out.bin"), b"new").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    }

    #[cfg(unix)]
    #[test]
    fn permissions_are_kept() {
        use std::os::unix::fs::PermissionsExt;
        let d = dir();
        let target = d.path().join("kept");
        std::fs::write(&target, b"old").unwrap();
        std::fs::set_permissions(&target, Permissions::from_mode(0o640)).unwrap();
        write_atomic(&target, b"new").unwrap();
        let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        // A new file is not the temporary's private 0600.
        let fresh = d.path().join("fresh");
        write_atomic(&fresh, b"x").unwrap();
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777;
        assert_ne!(mode & 0o044, 0, "{mode:o}");
    }

    #[test]
    fn missing_directories_are_named() {
        let d = dir();
        let target = d.path().join("no/such/dir/out.bin");
        let e = check_output(&target).unwrap_err().to_string();
        assert!(
            e.contains("no/such/dir") && e.contains("does not exist"),
            "{e}"
        );
    }
}
