//! The operator's own configuration, `$XDG_CONFIG_HOME/drover/config.toml` (else
//! `~/.config/drover/config.toml`): named contexts, each a server, its pinned CA and a token. It holds
//! secrets, so it is written 0600 in a 0700 directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorConfig {
    /// The context commands use when none is named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

/// One server as this operator reaches it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    /// The REST API's URL, like `https://cp.example.com:8080`.
    pub server: String,
    /// The operator's API token for that server.
    pub token: String,
    /// The pinned CA certificate (PEM) the server's TLS certificate must chain to; absent for plain HTTP
    /// on loopback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// SHA-256 of the pinned CA, as shown at login.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_fingerprint: Option<String>,
    /// The token may go to this (non-loopback) server over plain HTTP: set by `drover login http://…
    /// --insecure-send-token-over-http`, and only that way.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_plain_http: bool,
}

/// Where the config file lives.
pub fn path() -> PathBuf {
    std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("drover")
        .join("config.toml")
}

/// Reads the config file; a missing one is an empty config.
pub fn load(path: &Path) -> anyhow::Result<OperatorConfig> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(OperatorConfig::default()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    warn_if_readable_by_others(path);
    toml::from_str(&text).with_context(|| format!("the config file {} is invalid", path.display()))
}

/// Writes the config file atomically, readable by its owner only.
pub fn save(path: &Path, config: &OperatorConfig) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        drover_files::create_private_dir(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let text = toml::to_string(config).context("cannot write the config")?;
    drover_files::write_atomic(path, text.as_bytes(), true)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Tokens in a file others can read are as good as theirs: say so (ssh refuses such keys outright; a
/// warning keeps a shared lab machine working).
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        eprintln!(
            "warning: {} holds API tokens but others may read it; run `chmod 600 {}`",
            path.display(),
            path.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_survive_a_round_trip_and_the_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("drover/config.toml");
        assert!(load(&path).unwrap().contexts.is_empty(), "missing is empty");
        let mut config = OperatorConfig::default();
        config.contexts.insert(
            "prod".into(),
            Context {
                server: "https://cp:8080".into(),
                token: "drvop.x".into(),
                ca: Some("PEM".into()),
                ca_fingerprint: Some("ab".into()),
                insecure_plain_http: false,
            },
        );
        config.current = Some("prod".into());
        save(&path, &config).unwrap();
        let back = load(&path).unwrap();
        assert_eq!(back.current.as_deref(), Some("prod"));
        assert_eq!(back.contexts, config.contexts);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
