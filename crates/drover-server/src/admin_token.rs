//! The bootstrap admin token in the data dir: made once, read at every start. Its own module because both
//! the server's start-up and `cluster` (which replaces it with the cluster's shared token) need it.

use std::path::{Path, PathBuf};

use drover_files::write_atomic;

pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// The admin token file cannot be read or written.
#[derive(Debug, thiserror::Error)]
#[error("cannot use the data dir {path}: {source}")]
pub struct AdminTokenError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// The admin token in `dir`, made (and written) when there is none; `true` when it was just made.
pub(crate) fn load_or_create(dir: &Path) -> Result<(String, bool), AdminTokenError> {
    let path = dir.join(ADMIN_TOKEN_FILE);
    let io = |source| AdminTokenError {
        path: path.clone(),
        source,
    };
    let create = || {
        let token = format!("drvadm.{}", hex::encode(rand::random::<[u8; 24]>()));
        write_atomic(&path, format!("{token}\n").as_bytes(), true).map_err(io)?;
        Ok((token, true))
    };
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => Ok((t.trim().to_string(), false)),
        Ok(_) => create(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(),
        Err(e) => Err(io(e)),
    }
}
