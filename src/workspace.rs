//! The workspace root that agents' file paths must stay inside, and safe file access under it.
//!
//! A path given by a task is resolved against the root, normalised (`.` and `..` removed
//! lexically) and then every existing part is followed through symlinks. A path whose real
//! location is not under the root's real location is refused with the permanent error
//! `path_outside_workspace`, whether it got out with `..`, as an absolute path, or through a
//! symlink. Writes are atomic (temporary file in the same folder, then rename) and never replace
//! an existing file unless the caller says so.
//!
//! Only regular files are ever opened: a FIFO, socket or device inside the workspace is refused
//! with `not_a_regular_file` before any read (opening a FIFO for reading blocks until a writer
//! shows up, and reading a device may never end). The type is checked on the opened descriptor,
//! not only on the path, so a file swapped in between the check and the open is caught too.
//! Everything here is blocking file system work: async callers go through [`blocking`] so a
//! slow disk or a stuck read never holds an async runtime thread, and a timeout or cancellation
//! of the task around it still takes effect.

use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use crate::task_error::{ErrorKind, TaskError};

/// A resolved, canonical workspace root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workspace {
    root: PathBuf,
}

/// A path inside the workspace: its real location and how to show it (relative to the root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsPath {
    pub real: PathBuf,
    pub display: String,
}

impl Workspace {
    /// The workspace at `root`, which must be an existing directory.
    pub fn new(root: &Path) -> std::io::Result<Self> {
        let root = root.canonicalize()?;
        if !root.is_dir() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                format!("'{}' is not a directory", root.display()),
            ));
        }
        Ok(Workspace { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Resolves `given` (relative to the root, or absolute) to a location inside the workspace.
    /// The path need not exist yet.
    pub fn resolve(&self, given: &str) -> Result<WsPath, TaskError> {
        let outside = |why: &str| {
            TaskError::permanent(
                ErrorKind::PathOutsideWorkspace,
                format!(
                    "path '{given}' is outside the workspace '{}' ({why})",
                    self.root.display()
                ),
            )
        };
        if given.is_empty() {
            return Err(TaskError::permanent(
                ErrorKind::InvalidInput,
                "an empty path was given",
            ));
        }
        let joined = self.root.join(given);
        let mut normal = PathBuf::new();
        for c in joined.components() {
            match c {
                Component::ParentDir => {
                    if !normal.pop() {
                        return Err(outside("'..' climbs above the filesystem root"));
                    }
                }
                Component::CurDir => {}
                other => normal.push(other.as_os_str()),
            }
        }
        if !normal.starts_with(&self.root) {
            return Err(outside("it leads out of the workspace"));
        }
        let real = real_location(&normal);
        if !real.starts_with(&self.root) {
            return Err(outside("a symlink leads out of the workspace"));
        }
        let display = real
            .strip_prefix(&self.root)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(WsPath {
            real,
            display: if display.is_empty() {
                ".".into()
            } else {
                display
            },
        })
    }

    /// Reads a text file inside the workspace, keeping at most `cap` bytes. Returns the text and
    /// whether it was cut. Never reads more than `cap + 1` bytes, and refuses anything but a
    /// regular file. Blocking: from async code use [`Workspace::read_text_async`].
    pub fn read_text(&self, path: &WsPath, cap: usize) -> Result<(String, bool), TaskError> {
        let file = open_regular(path)?;
        let mut bytes = Vec::new();
        file.take(cap as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| {
                TaskError::permanent(
                    ErrorKind::Io,
                    format!("cannot read '{}': {e}", path.display),
                )
            })?;
        let cut = bytes.len() > cap;
        let mut end = bytes.len().min(cap);
        // Cut on a character boundary.
        while end > 0 && end < bytes.len() && (bytes[end] & 0xC0) == 0x80 {
            end -= 1;
        }
        bytes.truncate(end);
        let text = match String::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        };
        Ok((text, cut))
    }

    /// [`Workspace::read_text`] on a blocking thread.
    pub async fn read_text_async(
        &self,
        path: &WsPath,
        cap: usize,
    ) -> Result<(String, bool), TaskError> {
        let (ws, path) = (self.clone(), path.clone());
        blocking(move || ws.read_text(&path, cap)).await?
    }

    /// Fails with `file_exists` when `path` exists and `overwrite` is false: checked before any
    /// work (or model call) is spent on the file. Something that is neither a regular file nor
    /// a folder (a FIFO, socket or device) is refused with `not_a_regular_file` either way.
    pub fn check_writable(&self, path: &WsPath, overwrite: bool) -> Result<(), TaskError> {
        let meta = std::fs::symlink_metadata(&path.real).ok();
        if let Some(m) = &meta
            && let Some(what) = special_kind(&m.file_type())
        {
            return Err(not_regular(path, what));
        }
        if !overwrite && meta.is_some() {
            return Err(TaskError::permanent(
                ErrorKind::FileExists,
                format!(
                    "'{}' already exists; set \"overwrite\": true to replace it",
                    path.display
                ),
            ));
        }
        if meta.as_ref().is_some_and(|m| m.is_dir()) || path.real.is_dir() {
            return Err(TaskError::permanent(
                ErrorKind::InvalidInput,
                format!("'{}' is a directory", path.display),
            ));
        }
        Ok(())
    }

    /// [`Workspace::check_writable`] on a blocking thread; also says whether the file exists.
    pub async fn check_writable_async(
        &self,
        path: &WsPath,
        overwrite: bool,
    ) -> Result<bool, TaskError> {
        let (ws, path) = (self.clone(), path.clone());
        blocking(move || {
            ws.check_writable(&path, overwrite)?;
            Ok(std::fs::symlink_metadata(&path.real).is_ok())
        })
        .await?
    }

    /// [`Workspace::write_atomic`] on a blocking thread.
    pub async fn write_atomic_async(
        &self,
        path: &WsPath,
        content: String,
        overwrite: bool,
    ) -> Result<(), TaskError> {
        let (ws, path) = (self.clone(), path.clone());
        blocking(move || ws.write_atomic(&path, &content, overwrite)).await?
    }

    /// Writes `content` to `path` atomically, creating missing folders (inside the workspace).
    /// Without `overwrite`, an existing file is never replaced, even one created meanwhile.
    /// The content goes to a fresh temporary file that is then renamed into place, so nothing
    /// ever opens an existing file (a FIFO at the path cannot block the write).
    pub fn write_atomic(
        &self,
        path: &WsPath,
        content: &str,
        overwrite: bool,
    ) -> Result<(), TaskError> {
        self.check_writable(path, overwrite)?;
        let io = |what: &str, e: std::io::Error| {
            TaskError::permanent(
                ErrorKind::Io,
                format!("cannot {what} '{}': {e}", path.display),
            )
        };
        let dir = path.real.parent().unwrap_or(&self.root);
        std::fs::create_dir_all(dir).map_err(|e| io("create the folder of", e))?;
        // Creating folders cannot have moved us, but a symlink raced in could: check again.
        if !real_location(dir).starts_with(&self.root) {
            return Err(TaskError::permanent(
                ErrorKind::PathOutsideWorkspace,
                format!("the folder of '{}' left the workspace", path.display),
            ));
        }
        let mut tmp = tempfile::Builder::new()
            .prefix(".dispatch-")
            .suffix(".tmp")
            .tempfile_in(dir)
            .map_err(|e| io("create a temporary file for", e))?;
        tmp.write_all(content.as_bytes())
            .and_then(|_| tmp.as_file().sync_all())
            .map_err(|e| io("write", e))?;
        if overwrite {
            tmp.persist(&path.real).map_err(|e| io("write", e.error))?;
        } else {
            tmp.persist_noclobber(&path.real).map_err(|e| {
                if e.error.kind() == std::io::ErrorKind::AlreadyExists {
                    TaskError::permanent(
                        ErrorKind::FileExists,
                        format!("'{}' already exists", path.display),
                    )
                } else {
                    io("write", e.error)
                }
            })?;
        }
        Ok(())
    }
}

/// Runs blocking work on tokio's blocking pool, so the calling task stays responsive to its
/// timeout and to cancellation (the work itself then finishes in the background). A panic in
/// `f` becomes an `internal` error of the task.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, TaskError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        TaskError::permanent(
            ErrorKind::Internal,
            format!("internal error in blocking file work: {e}"),
        )
    })
}

/// What a non-regular, non-folder file is, for messages; `None` for regular files, folders and
/// symlinks (resolved paths have none left but a racing one, which the open refuses).
fn special_kind(t: &std::fs::FileType) -> Option<&'static str> {
    if t.is_fifo() {
        Some("a FIFO (named pipe)")
    } else if t.is_socket() {
        Some("a socket")
    } else if t.is_block_device() || t.is_char_device() {
        Some("a device")
    } else {
        None
    }
}

fn not_regular(path: &WsPath, what: &str) -> TaskError {
    TaskError::permanent(
        ErrorKind::NotARegularFile,
        format!(
            "'{}' is {what}, not a regular file; only regular files are read or written",
            path.display
        ),
    )
}

/// Opens `path` for reading only if it is a regular file. The path is checked first so a FIFO
/// or device is never opened at all; the open itself is non-blocking and does not follow a
/// symlink, and the opened descriptor is checked again, which closes the window between the two.
fn open_regular(path: &WsPath) -> Result<std::fs::File, TaskError> {
    let io = |e: std::io::Error| {
        let kind = if e.kind() == std::io::ErrorKind::NotFound {
            ErrorKind::InvalidInput
        } else {
            ErrorKind::Io
        };
        TaskError::permanent(kind, format!("cannot read '{}': {e}", path.display))
    };
    let kind_of = |m: &std::fs::Metadata| -> Result<(), TaskError> {
        let t = m.file_type();
        if let Some(what) = special_kind(&t) {
            return Err(not_regular(path, what));
        }
        if t.is_dir() {
            return Err(TaskError::permanent(
                ErrorKind::InvalidInput,
                format!("'{}' is a directory, not a file", path.display),
            ));
        }
        if !t.is_file() {
            return Err(not_regular(path, "of an unknown type"));
        }
        Ok(())
    };
    kind_of(&std::fs::symlink_metadata(&path.real).map_err(io)?)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_NOCTTY)
        .open(&path.real)
        .map_err(|e| {
            // O_NOFOLLOW fails with ELOOP when a symlink was swapped in after resolving.
            if e.raw_os_error() == Some(libc::ELOOP) {
                TaskError::permanent(
                    ErrorKind::PathOutsideWorkspace,
                    format!("'{}' became a symlink while being opened", path.display),
                )
            } else {
                io(e)
            }
        })?;
    kind_of(&file.metadata().map_err(io)?)?;
    Ok(file)
}

/// Follows symlinks through the longest existing prefix of `path` and appends the rest.
fn real_location(path: &Path) -> PathBuf {
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            let mut out = real;
            for part in rest.iter().rev() {
                out.push(part);
            }
            return out;
        }
        match (existing.file_name(), existing.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name.to_os_string());
                existing = parent.to_path_buf();
            }
            _ => return path.to_path_buf(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws() -> (tempfile::TempDir, Workspace) {
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspace::new(dir.path()).unwrap();
        (dir, ws)
    }

    #[test]
    fn relative_and_absolute_paths_inside_resolve() {
        let (_d, ws) = ws();
        let p = ws.resolve("a/./b/../c.py").unwrap();
        assert_eq!(p.display, "a/c.py");
        let abs = ws.root().join("x.py");
        assert_eq!(ws.resolve(abs.to_str().unwrap()).unwrap().display, "x.py");
    }

    #[test]
    fn escapes_are_refused() {
        let (dir, ws) = ws();
        for bad in ["../x.py", "a/../../x.py", "/etc/passwd"] {
            let e = ws.resolve(bad).unwrap_err();
            assert_eq!(e.kind, ErrorKind::PathOutsideWorkspace, "{bad}");
            assert!(!e.transient);
        }
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        let e = ws.resolve("link/new.py").unwrap_err();
        assert_eq!(e.kind, ErrorKind::PathOutsideWorkspace);
        assert!(e.message.contains("symlink"), "{}", e.message);
    }

    #[test]
    fn writes_never_clobber_without_overwrite() {
        let (dir, ws) = ws();
        let p = ws.resolve("gen/out.py").unwrap();
        ws.write_atomic(&p, "one", false).unwrap();
        let e = ws.write_atomic(&p, "two", false).unwrap_err();
        assert_eq!(e.kind, ErrorKind::FileExists);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("gen/out.py")).unwrap(),
            "one"
        );
        ws.write_atomic(&p, "three", true).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("gen/out.py")).unwrap(),
            "three"
        );
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("gen"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
    }

    fn mkfifo(p: &Path) {
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    #[test]
    fn fifos_are_refused_without_blocking() {
        let (dir, ws) = ws();
        mkfifo(&dir.path().join("pipe.py"));
        let p = ws.resolve("pipe.py").unwrap();
        // Opening a FIFO for reading would block until a writer came: this returns at once.
        let e = ws.read_text(&p, 100).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotARegularFile, "{e:?}");
        assert!(e.message.contains("FIFO"), "{}", e.message);
        for overwrite in [false, true] {
            let e = ws.write_atomic(&p, "x", overwrite).unwrap_err();
            assert_eq!(e.kind, ErrorKind::NotARegularFile, "{e:?}");
        }
        assert!(
            std::fs::symlink_metadata(dir.path().join("pipe.py"))
                .unwrap()
                .file_type()
                .is_fifo()
        );
    }

    #[test]
    fn reads_are_capped_and_directories_named() {
        let (dir, ws) = ws();
        std::fs::write(dir.path().join("big.txt"), "é".repeat(100)).unwrap();
        let p = ws.resolve("big.txt").unwrap();
        let (text, cut) = ws.read_text(&p, 5).unwrap();
        assert_eq!((text.as_str(), cut), ("éé", true));
        let (text, cut) = ws.read_text(&p, 200).unwrap();
        assert_eq!((text.len(), cut), (200, false));
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let e = ws.read_text(&ws.resolve("sub").unwrap(), 5).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidInput);
        let e = ws
            .read_text(&ws.resolve("none.py").unwrap(), 5)
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidInput);
    }
}
