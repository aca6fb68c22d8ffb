//! What can go wrong writing or reading a file confined under a root.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// A component of the path (or the file itself) is a symbolic link: refused, never followed, so a link
    /// planted under a root cannot lead a write or a read outside it.
    #[error("{path} is a symbolic link; drover does not follow links below an allowed root")]
    Symlink { path: PathBuf },
    #[error("{path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("{path} is not a regular file")]
    NotAFile { path: PathBuf },
    #[error("{path} does not exist")]
    NotFound { path: PathBuf },
    /// The relative path is empty, absolute, or climbs out with `..`.
    #[error("{path} is not a plain relative path under the root: {reason}")]
    InvalidPath { path: PathBuf, reason: &'static str },
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl FileError {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
        e: impl Into<std::io::Error>,
    ) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source: e.into(),
        }
    }

    /// The closest `std::io::ErrorKind`, for callers of the path-based functions that return `io::Error`.
    pub fn kind(&self) -> std::io::ErrorKind {
        use std::io::ErrorKind;
        match self {
            Self::Symlink { .. } => ErrorKind::PermissionDenied,
            Self::NotADirectory { .. } => ErrorKind::NotADirectory,
            Self::NotAFile { .. } => ErrorKind::InvalidInput,
            Self::NotFound { .. } => ErrorKind::NotFound,
            Self::InvalidPath { .. } => ErrorKind::InvalidInput,
            Self::Io { source, .. } => source.kind(),
        }
    }
}

impl From<FileError> for std::io::Error {
    fn from(e: FileError) -> Self {
        std::io::Error::new(e.kind(), e)
    }
}
