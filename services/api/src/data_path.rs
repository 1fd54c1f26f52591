//! Paths under the data root. One function, [`DataRoot::resolve`], holds every rule; browse uses
//! it, and so will training and analysis. A [`DataPath`] can only be made by it, so a handler
//! holding one holds a path that exists inside the root.
//!
//! Paths are written as users see them: relative to the root with a leading `/`
//! (`/datasets/cats`). Errors name the rule and never the real filesystem.

use std::path::{Component, Path, PathBuf};

use gantry_contracts::error::ErrorCode;

use crate::error::ApiError;

/// Longest accepted path, in bytes.
pub const MAX_PATH_BYTES: usize = 1024;
/// Longest accepted path segment, in bytes.
pub const MAX_SEGMENT_BYTES: usize = 255;

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// A NUL byte.
    #[error("path must not contain NUL bytes")]
    Nul,
    /// Too long overall or in one segment.
    #[error("path is too long (at most {MAX_PATH_BYTES} bytes, {MAX_SEGMENT_BYTES} per segment)")]
    TooLong,
    /// A `..` segment.
    #[error("path must not contain '..' segments")]
    DotDot,
    /// `%2e`, `%2f` and the like: the value was encoded twice.
    #[error("path must not contain percent-encoded sequences (send it encoded once)")]
    PercentEncoded,
    /// A backslash (Windows separators are not paths here).
    #[error("path must not contain backslashes")]
    Backslash,
    /// A control character.
    #[error("path must not contain control characters")]
    Control,
    /// It resolves (through a symbolic link) outside the data root.
    #[error("path resolves outside the data root")]
    Escapes,
    /// Nothing there.
    #[error("no such path: {0}")]
    NotFound(String),
    /// A file where a directory was needed.
    #[error("not a directory: {0}")]
    NotADirectory(String),
    /// The data root itself is missing or unreadable.
    #[error("the data root is not available")]
    RootUnavailable,
}

impl PathError {
    /// The status this rule answers with.
    pub fn code(&self) -> ErrorCode {
        match self {
            PathError::Escapes => ErrorCode::Forbidden,
            PathError::NotFound(_) => ErrorCode::NotFound,
            PathError::RootUnavailable => ErrorCode::Unavailable,
            _ => ErrorCode::BadRequest,
        }
    }
}

impl From<PathError> for ApiError {
    fn from(e: PathError) -> Self {
        ApiError::new(e.code(), e.to_string())
    }
}

/// The configured data root (`GANTRY_DATA_ROOT`).
#[derive(Debug, Clone)]
pub struct DataRoot {
    root: PathBuf,
}

/// A path that exists inside the data root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataPath {
    /// As users see it: `/` or `/a/b`.
    display: String,
    /// Canonical on disk.
    real: PathBuf,
}

impl DataPath {
    /// As users see it.
    pub fn as_str(&self) -> &str {
        &self.display
    }

    /// The canonical path on disk. Never shown to users.
    pub fn real(&self) -> &Path {
        &self.real
    }

    /// The user-facing path of a child named `name`.
    pub fn child_display(&self, name: &str) -> String {
        if self.display == "/" {
            format!("/{name}")
        } else {
            format!("{}/{name}", self.display)
        }
    }
}

/// Check the text of a path against every lexical rule and return its segments.
pub fn segments(raw: &str) -> Result<Vec<&str>, PathError> {
    if raw.contains('\0') {
        return Err(PathError::Nul);
    }
    if raw.len() > MAX_PATH_BYTES {
        return Err(PathError::TooLong);
    }
    if raw.chars().any(|c| c.is_control()) {
        return Err(PathError::Control);
    }
    if raw.contains('\\') {
        return Err(PathError::Backslash);
    }
    let bytes = raw.as_bytes();
    if bytes
        .windows(3)
        .any(|w| w[0] == b'%' && w[1].is_ascii_hexdigit() && w[2].is_ascii_hexdigit())
    {
        return Err(PathError::PercentEncoded);
    }
    let mut out = Vec::new();
    for seg in raw.split('/') {
        match seg {
            "" | "." => continue,
            ".." => return Err(PathError::DotDot),
            s if s.len() > MAX_SEGMENT_BYTES => return Err(PathError::TooLong),
            s => out.push(s),
        }
    }
    Ok(out)
}

impl DataRoot {
    /// The root at `path` (it may not exist yet; requests then answer 503).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { root: path.into() }
    }

    fn canonical_root(&self) -> Result<PathBuf, PathError> {
        std::fs::canonicalize(&self.root).map_err(|_| PathError::RootUnavailable)
    }

    /// Resolve a user's path: lexical rules first, then the real path (symbolic links
    /// followed) must still lie inside the root and exist.
    pub fn resolve(&self, raw: &str) -> Result<DataPath, PathError> {
        let segs = segments(raw)?;
        let root = self.canonical_root()?;
        let mut candidate = root.clone();
        for s in &segs {
            candidate.push(s);
        }
        let display = if segs.is_empty() {
            "/".to_owned()
        } else {
            format!("/{}", segs.join("/"))
        };
        let real = match std::fs::canonicalize(&candidate) {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // A dangling link whose target would be outside is still an escape.
                if std::fs::symlink_metadata(&candidate).is_ok() {
                    if let Ok(target) = std::fs::read_link(&candidate) {
                        if !lexically_inside(&candidate, &target, &root) {
                            return Err(PathError::Escapes);
                        }
                    }
                }
                return Err(PathError::NotFound(display));
            }
            Err(_) => return Err(PathError::NotFound(display)),
        };
        if !real.starts_with(&root) {
            return Err(PathError::Escapes);
        }
        Ok(DataPath { display, real })
    }

    /// [`resolve`](Self::resolve), and it must be a directory.
    pub fn resolve_dir(&self, raw: &str) -> Result<DataPath, PathError> {
        let p = self.resolve(raw)?;
        if !p.real.is_dir() {
            return Err(PathError::NotADirectory(p.display));
        }
        Ok(p)
    }

    /// Whether a path found while walking inside the root (a directory entry) really lies inside
    /// it once links are followed.
    pub fn contains(&self, path: &Path) -> bool {
        match (self.canonical_root(), std::fs::canonicalize(path)) {
            (Ok(root), Ok(real)) => real.starts_with(root),
            _ => false,
        }
    }
}

fn lexically_inside(link: &Path, target: &Path, root: &Path) -> bool {
    let base = if target.is_absolute() {
        PathBuf::new()
    } else {
        link.parent().map(Path::to_path_buf).unwrap_or_default()
    };
    let mut out = PathBuf::new();
    for c in base.join(target).components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out.starts_with(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_rules_name_what_is_wrong() {
        assert_eq!(segments("/a/../b"), Err(PathError::DotDot));
        assert_eq!(segments(".."), Err(PathError::DotDot));
        assert_eq!(segments("/a\0b"), Err(PathError::Nul));
        assert_eq!(segments("/%2e%2e/etc"), Err(PathError::PercentEncoded));
        assert_eq!(segments("/%2F"), Err(PathError::PercentEncoded));
        assert_eq!(segments("/a\\..\\b"), Err(PathError::Backslash));
        assert_eq!(segments(&"a/".repeat(600)), Err(PathError::TooLong));
        assert_eq!(segments(&"x".repeat(300)), Err(PathError::TooLong));
        assert_eq!(segments("/a/./b//c/"), Ok(vec!["a", "b", "c"]));
        assert_eq!(segments(""), Ok(vec![]));
        assert_eq!(segments("/"), Ok(vec![]));
        assert_eq!(segments("/100%"), Ok(vec!["100%"]));
    }

    #[test]
    fn symlinks_out_of_the_root_are_refused_and_inside_ones_allowed() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret.txt"), "s").unwrap();
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("inside")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("out")).unwrap();
        std::os::unix::fs::symlink(root.path().join("inside"), root.path().join("alias")).unwrap();
        std::os::unix::fs::symlink("/nonexistent/elsewhere", root.path().join("dangling")).unwrap();
        let r = DataRoot::new(root.path());
        assert_eq!(r.resolve("/out"), Err(PathError::Escapes));
        assert_eq!(r.resolve("/out/secret.txt"), Err(PathError::Escapes));
        assert_eq!(r.resolve("/dangling"), Err(PathError::Escapes));
        assert_eq!(r.resolve("/alias").unwrap().as_str(), "/alias");
        assert_eq!(
            r.resolve("/missing"),
            Err(PathError::NotFound("/missing".into()))
        );
        assert_eq!(r.resolve("/").unwrap().as_str(), "/");
        // The real root's absolute path is just a (missing) path inside the root.
        let abs = root.path().display().to_string();
        assert!(matches!(r.resolve(&abs), Err(PathError::NotFound(_))));
    }
}
