//! The node's own policy. It is set where the agent starts and beats anything the server asks for.

use std::path::{Path, PathBuf};

/// Roots under which `read_file` (and, later, File resources) may touch files, when none are configured.
pub const DEFAULT_ALLOWED_ROOTS: &[&str] = &["/var/log"];

#[derive(Debug, Clone)]
pub struct Policy {
    /// Canonical directories file access is confined to.
    pub allowed_roots: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathDenied {
    #[error("{0} is not an absolute path")]
    Relative(String),
    #[error("{path} does not exist or cannot be resolved: {reason}")]
    Unresolvable { path: String, reason: String },
    #[error(
        "{path} is outside this node's allowed roots ({roots}); the node's operator can add one with --allow-path"
    )]
    Outside { path: String, roots: String },
}

impl Policy {
    pub fn new(roots: &[PathBuf]) -> Self {
        let configured: Vec<PathBuf> = if roots.is_empty() {
            DEFAULT_ALLOWED_ROOTS.iter().map(PathBuf::from).collect()
        } else {
            roots.to_vec()
        };
        // A root that does not exist (yet) is kept as given; it can only match paths under it once it exists.
        let allowed_roots = configured
            .into_iter()
            .map(|r| r.canonicalize().unwrap_or(r))
            .collect();
        Self { allowed_roots }
    }

    /// Checks a path that may not exist yet: its nearest existing ancestor is resolved (symlinks
    /// included) and the whole must lie under an allowed root. `..` is refused outright.
    pub fn check_writable(&self, path: &str) -> Result<PathBuf, PathDenied> {
        let p = Path::new(path);
        if !p.is_absolute() {
            return Err(PathDenied::Relative(path.to_string()));
        }
        if p.components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(PathDenied::Unresolvable {
                path: path.to_string(),
                reason: "`..` is not allowed".into(),
            });
        }
        let mut existing = p.to_path_buf();
        let mut rest = Vec::new();
        while !existing.exists() {
            match (
                existing.file_name().map(|n| n.to_os_string()),
                existing.parent(),
            ) {
                (Some(name), Some(parent)) => {
                    rest.push(name);
                    existing = parent.to_path_buf();
                }
                _ => break,
            }
        }
        let mut real = existing
            .canonicalize()
            .map_err(|e| PathDenied::Unresolvable {
                path: path.to_string(),
                reason: e.to_string(),
            })?;
        for part in rest.iter().rev() {
            real.push(part);
        }
        if self.allowed_roots.iter().any(|root| real.starts_with(root)) {
            Ok(real)
        } else {
            Err(self.outside(path))
        }
    }

    fn outside(&self, path: &str) -> PathDenied {
        PathDenied::Outside {
            path: path.to_string(),
            roots: self
                .allowed_roots
                .iter()
                .map(|r| r.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    /// Resolves `path` (symlinks and `..` included) and checks it lies under an allowed root.
    pub fn check_existing(&self, path: &str) -> Result<PathBuf, PathDenied> {
        let p = Path::new(path);
        if !p.is_absolute() {
            return Err(PathDenied::Relative(path.to_string()));
        }
        let real = p.canonicalize().map_err(|e| PathDenied::Unresolvable {
            path: path.to_string(),
            reason: e.to_string(),
        })?;
        if self.allowed_roots.iter().any(|root| real.starts_with(root)) {
            Ok(real)
        } else {
            Err(self.outside(path))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confines_paths_to_roots_even_through_symlinks() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("ok.txt"), "x").unwrap();
        std::fs::write(outside.path().join("secret"), "x").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), root.path().join("link"))
            .unwrap();
        let policy = Policy::new(&[root.path().to_path_buf()]);
        let ok = root.path().join("ok.txt");
        assert!(policy.check_existing(ok.to_str().unwrap()).is_ok());
        let link = root.path().join("link");
        assert!(matches!(
            policy.check_existing(link.to_str().unwrap()),
            Err(PathDenied::Outside { .. })
        ));
        let dotdot = format!(
            "{}/../{}",
            root.path().display(),
            outside.path().file_name().unwrap().to_str().unwrap()
        );
        assert!(matches!(
            policy.check_existing(&dotdot),
            Err(PathDenied::Outside { .. })
        ));
        assert!(matches!(
            policy.check_existing("relative"),
            Err(PathDenied::Relative(_))
        ));
    }
}
