//! The workspace root that agents' file paths must stay inside, and safe file access under it.
//!
//! A path given by a task is resolved against the root, normalised (`.` and `..` removed
//! lexically) and then every existing part is followed through symlinks. A path whose real
//! location is not under the root's real location is refused with the permanent error
//! `path_outside_workspace`, whether it got out with `..`, as an absolute path, or through a
//! symlink. Writes are atomic (temporary file in the same folder, then rename) and never replace
//! an existing file unless the caller says so.

use std::io::Write;
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
    /// whether it was cut.
    pub fn read_text(&self, path: &WsPath, cap: usize) -> Result<(String, bool), TaskError> {
        let bytes = std::fs::read(&path.real).map_err(|e| {
            let kind = if e.kind() == std::io::ErrorKind::NotFound {
                ErrorKind::InvalidInput
            } else {
                ErrorKind::Io
            };
            TaskError::permanent(kind, format!("cannot read '{}': {e}", path.display))
        })?;
        let cut = bytes.len() > cap;
        let mut end = bytes.len().min(cap);
        // Cut on a character boundary.
        while end > 0 && end < bytes.len() && (bytes[end] & 0xC0) == 0x80 {
            end -= 1;
        }
        Ok((String::from_utf8_lossy(&bytes[..end]).into_owned(), cut))
    }

    /// Fails with `file_exists` when `path` exists and `overwrite` is false: checked before any
    /// work (or model call) is spent on the file.
    pub fn check_writable(&self, path: &WsPath, overwrite: bool) -> Result<(), TaskError> {
        if !overwrite && std::fs::symlink_metadata(&path.real).is_ok() {
            return Err(TaskError::permanent(
                ErrorKind::FileExists,
                format!(
                    "'{}' already exists; set \"overwrite\": true to replace it",
                    path.display
                ),
            ));
        }
        if path.real.is_dir() {
            return Err(TaskError::permanent(
                ErrorKind::InvalidInput,
                format!("'{}' is a directory", path.display),
            ));
        }
        Ok(())
    }

    /// Writes `content` to `path` atomically, creating missing folders (inside the workspace).
    /// Without `overwrite`, an existing file is never replaced, even one created meanwhile.
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
}
