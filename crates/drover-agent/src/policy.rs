//! The node's own policy. It is set where the agent starts and beats anything the server asks for.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use drover_types::manifest::{Kind, Resource, ResourceKind};
use drover_types::signing::PublicKey;

/// Roots under which `read_file` (and, later, File resources) may touch files, when none are configured.
pub const DEFAULT_ALLOWED_ROOTS: &[&str] = &["/var/log"];

/// Environment variables that change how any program loads or finds code: an `--allow-exec` program with
/// one of them set is arbitrary code. Only an entry naming them explicitly lets them through.
const LOADER_PREFIXES: &[&str] = &["LD_", "DYLD_"];

fn dangerous(name: &str) -> bool {
    name == "PATH" || LOADER_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// What this node allows, from its flags and TOML; nothing the server sends changes it.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Canonical directories file access is confined to.
    pub allowed_roots: Vec<PathBuf>,
    /// Resource kinds accepted besides `file`, which is always accepted (bound by the allowed roots); the
    /// others run code or reach the container engine, so each must be named with `--allow-kind`.
    pub kinds: Vec<ResourceKind>,
    /// Canonical directories bind-mount sources of containers must lie under (none: no bind mounts).
    pub mount_roots: Vec<PathBuf>,
    /// Shell tasks, shell jobs and any program, with any environment.
    pub allow_shell: bool,
    /// Programs tasks may run without `allow_shell`, as absolute paths.
    pub allow_exec: Vec<PathBuf>,
    /// Environment variables tasks may set without `allow_shell`: names, or prefixes ending in `*`.
    pub allow_env: Vec<String>,
    /// Keys manifests and commands must be signed with (any one of them); none: nothing needs a signature.
    pub manifest_keys: Vec<PublicKey>,
}

/// What the node's policy refuses, naming the rule (the flag that would allow it).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error(
        "refused by this node's policy (rule allow-kind): {kind} resources are off on this node; its agent must be started with --allow-kind {kind}"
    )]
    Kind { kind: ResourceKind },
    #[error("refused by this node's policy (rule allow-path): {0}")]
    Path(#[from] PathDenied),
    #[error(
        "refused by this node's policy (rule allow-mount): bind mount {volume:?}: {host_path} is outside this node's allowed mount roots ({roots}); the node's operator can add one with --allow-mount"
    )]
    Mount {
        volume: String,
        host_path: String,
        roots: String,
    },
    #[error(
        "refused by this node's policy (rule allow-shell): {what} are off on this node: its agent must be started with --allow-shell"
    )]
    Shell { what: &'static str },
    #[error(
        "refused by this node's policy (rule allow-exec): {program} is not allowed on this node: its agent runs without --allow-shell and {path} is not in --allow-exec"
    )]
    Program { program: String, path: String },
    #[error(
        "refused by this node's policy (rule allow-env): the task sets {name}, which is not allowed on this node: its agent runs without --allow-shell and {name} is not in --allow-env{hint}"
    )]
    Env { name: String, hint: &'static str },
    #[error(
        "refused by this node's policy (rule unsigned): {what} carries no signature, and this node applies and runs only what is signed by a key it pins (--manifest-key)"
    )]
    Unsigned { what: String },
    #[error("refused by this node's policy (rule bad signature): {what}: {reason}")]
    BadSignature { what: String, reason: String },
    #[error(
        "refused by this node's policy (rule older version): manifest {manifest:?} version {version}: {reason}"
    )]
    OlderVersion {
        manifest: String,
        version: u64,
        reason: String,
    },
    #[error("refused by this node's policy (rule expired): {what}: {reason}")]
    Expired { what: String, reason: String },
    #[error(
        "refused by this node's policy (rule replayed): {what}: its nonce was used already; a signed command runs once"
    )]
    Replayed { what: String },
}

impl Refusal {
    /// The rule, as status details carry it.
    pub fn rule(&self) -> &'static str {
        match self {
            Self::Kind { .. } => "allow-kind",
            Self::Path(_) => "allow-path",
            Self::Mount { .. } => "allow-mount",
            Self::Shell { .. } => "allow-shell",
            Self::Program { .. } => "allow-exec",
            Self::Env { .. } => "allow-env",
            Self::Unsigned { .. } => "unsigned",
            Self::BadSignature { .. } => "bad signature",
            Self::OlderVersion { .. } => "older version",
            Self::Expired { .. } => "expired",
            Self::Replayed { .. } => "replayed",
        }
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
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

fn canonical_roots(roots: impl IntoIterator<Item = PathBuf>) -> Vec<PathBuf> {
    // A root that does not exist (yet) is kept as given; it can only match paths under it once it exists.
    roots
        .into_iter()
        .map(|r| r.canonicalize().unwrap_or(r))
        .collect()
}

fn join(roots: &[PathBuf]) -> String {
    if roots.is_empty() {
        return "none".into();
    }
    roots
        .iter()
        .map(|r| r.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Resolves a path that may not exist yet: its nearest existing ancestor is resolved (symlinks included)
/// and the rest appended. `..` is refused outright.
fn resolve_new(path: &str) -> Result<PathBuf, PathDenied> {
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
    Ok(real)
}

impl Policy {
    /// The default policy: files under `roots` (or /var/log), nothing that runs code.
    pub fn new(roots: &[PathBuf]) -> Self {
        let configured: Vec<PathBuf> = if roots.is_empty() {
            DEFAULT_ALLOWED_ROOTS.iter().map(PathBuf::from).collect()
        } else {
            roots.to_vec()
        };
        Self {
            allowed_roots: canonical_roots(configured),
            kinds: Vec::new(),
            mount_roots: Vec::new(),
            allow_shell: false,
            allow_exec: Vec::new(),
            allow_env: Vec::new(),
            manifest_keys: Vec::new(),
        }
    }

    /// Whether manifests and commands must be signed on this node.
    pub fn pins_keys(&self) -> bool {
        !self.manifest_keys.is_empty()
    }

    /// Also accepts these kinds.
    pub fn with_kinds(mut self, kinds: &[ResourceKind]) -> Self {
        for k in kinds {
            if *k != ResourceKind::File && !self.kinds.contains(k) {
                self.kinds.push(k.clone());
            }
        }
        self
    }

    pub fn with_mount_roots(mut self, roots: &[PathBuf]) -> Self {
        self.mount_roots = canonical_roots(roots.iter().cloned());
        self
    }

    pub fn allows_kind(&self, kind: &ResourceKind) -> bool {
        *kind == ResourceKind::File || self.kinds.contains(kind)
    }

    fn kind(&self, kind: ResourceKind) -> Result<(), Refusal> {
        if self.allows_kind(&kind) {
            Ok(())
        } else {
            Err(Refusal::Kind { kind })
        }
    }

    /// Whether this node accepts a resource at all: its kind, its paths, its bind mounts, its shell. The
    /// converge runtime asks this once, before any kind's reconciler observes or changes anything.
    pub fn admit(&self, resource: &Resource) -> Result<(), Refusal> {
        self.kind(resource.resource_kind())?;
        match resource.kind() {
            Some(Kind::File(f)) => {
                self.check_writable(&f.path)?;
            }
            Some(Kind::Container(c)) => {
                for volume in &c.volumes {
                    self.check_mount(volume)?;
                }
            }
            Some(Kind::ShellJob(_)) if !self.allow_shell => {
                return Err(Refusal::Shell {
                    what: "shell_job resources",
                });
            }
            _ => {}
        }
        Ok(())
    }

    /// A container's `HOST_PATH:CONTAINER_PATH[:ro]`: the host path must resolve under a mount root.
    pub fn check_mount(&self, volume: &str) -> Result<(), Refusal> {
        let source = volume.split(':').next().unwrap_or_default();
        let refused = || Refusal::Mount {
            volume: volume.to_string(),
            host_path: source.to_string(),
            roots: join(&self.mount_roots),
        };
        let real = resolve_new(source).map_err(|_| refused())?;
        if self.mount_roots.iter().any(|root| real.starts_with(root)) {
            Ok(())
        } else {
            Err(refused())
        }
    }

    /// Container tasks reach the engine, which can start and remove anything on the node.
    pub fn check_container_task(&self) -> Result<(), Refusal> {
        self.kind(ResourceKind::Container)
    }

    /// A task's program: any with `allow_shell`, else one of `allow_exec` (`path` is the resolved one).
    pub fn check_program(&self, program: &str, path: &Path) -> Result<(), Refusal> {
        if self.allow_shell || self.allow_exec.iter().any(|p| p == path) {
            Ok(())
        } else {
            Err(Refusal::Program {
                program: program.to_string(),
                path: path.display().to_string(),
            })
        }
    }

    pub fn check_shell_task(&self) -> Result<(), Refusal> {
        if self.allow_shell {
            Ok(())
        } else {
            Err(Refusal::Shell {
                what: "shell tasks",
            })
        }
    }

    /// A task's environment: any with `allow_shell`; else each name must be allowed by `allow_env`, and the
    /// loader's variables (`LD_*`, `DYLD_*`) and `PATH` only by an entry that names them explicitly.
    pub fn check_env(&self, env: &BTreeMap<String, String>) -> Result<(), Refusal> {
        if self.allow_shell {
            return Ok(());
        }
        match env.keys().find(|name| !self.env_allowed(name)) {
            None => Ok(()),
            Some(name) => Err(Refusal::Env {
                name: name.clone(),
                hint: if dangerous(name) {
                    " (loader variables and PATH must be named exactly)"
                } else {
                    ""
                },
            }),
        }
    }

    fn env_allowed(&self, name: &str) -> bool {
        self.allow_env
            .iter()
            .any(|entry| match entry.strip_suffix('*') {
                // A wildcard lets a loader variable or PATH through only when it is itself in that family
                // (`LD_*`), never by being broad (`*`, `L*`).
                Some(prefix) => name.starts_with(prefix) && (!dangerous(name) || dangerous(prefix)),
                None => entry == name,
            })
    }

    /// Checks a path that may not exist yet: its nearest existing ancestor is resolved (symlinks
    /// included) and the whole must lie under an allowed root. `..` is refused outright.
    pub fn check_writable(&self, path: &str) -> Result<PathBuf, PathDenied> {
        let real = resolve_new(path)?;
        if self.allowed_roots.iter().any(|root| real.starts_with(root)) {
            Ok(real)
        } else {
            Err(self.outside(path))
        }
    }

    fn outside(&self, path: &str) -> PathDenied {
        PathDenied::Outside {
            path: path.to_string(),
            roots: join(&self.allowed_roots),
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

    fn resource(v: serde_json::Value) -> Resource {
        serde_json::from_value(v).unwrap()
    }

    fn env(names: &[&str]) -> BTreeMap<String, String> {
        names
            .iter()
            .map(|n| (n.to_string(), "x".to_string()))
            .collect()
    }

    #[test]
    fn a_plain_node_accepts_files_under_its_roots_and_nothing_that_runs_code() {
        let root = tempfile::tempdir().unwrap();
        let policy = Policy::new(&[root.path().to_path_buf()]);
        let inside = root.path().join("f").display().to_string();
        assert_eq!(
            policy.admit(&resource(
                serde_json::json!({"id": "a", "file": {"path": inside, "content": "x"}})
            )),
            Ok(())
        );
        let outside = policy
            .admit(&resource(
                serde_json::json!({"id": "a", "file": {"path": "/etc/passwd", "content": "x"}}),
            ))
            .unwrap_err();
        assert_eq!(outside.rule(), "allow-path");
        for r in [
            serde_json::json!({"id": "c", "container": {"image": "busybox"}}),
            serde_json::json!({"id": "u", "systemd_unit": {"name": "x.service"}}),
            serde_json::json!({"id": "j", "shell_job": {"command": "true", "unless": "true"}}),
        ] {
            let refusal = policy.admit(&resource(r)).unwrap_err();
            assert_eq!(refusal.rule(), "allow-kind", "{refusal}");
            assert!(refusal.to_string().contains("--allow-kind"), "{refusal}");
        }
        assert!(policy.check_container_task().is_err());
        assert_eq!(policy.check_shell_task().unwrap_err().rule(), "allow-shell");
    }

    #[test]
    fn kinds_are_added_and_shell_jobs_also_need_shell() {
        let policy =
            Policy::new(&[]).with_kinds(&[ResourceKind::ShellJob, ResourceKind::SystemdUnit]);
        let job = resource(
            serde_json::json!({"id": "j", "shell_job": {"command": "true", "unless": "true"}}),
        );
        assert_eq!(policy.admit(&job).unwrap_err().rule(), "allow-shell");
        let policy = Policy {
            allow_shell: true,
            ..policy
        };
        assert_eq!(policy.admit(&job), Ok(()));
        assert_eq!(
            policy.admit(&resource(
                serde_json::json!({"id": "u", "systemd_unit": {"name": "x.service"}})
            )),
            Ok(())
        );
        assert!(policy.check_container_task().is_err());
        let all = Policy::new(&[]).with_kinds(&ResourceKind::RESOURCES);
        assert!(ResourceKind::RESOURCES.iter().all(|k| all.allows_kind(k)));
        assert!(all.check_container_task().is_ok());
    }

    #[test]
    fn bind_mounts_must_lie_under_the_mount_roots() {
        let data = tempfile::tempdir().unwrap();
        let container = |volumes: Vec<String>| {
            resource(
                serde_json::json!({"id": "c", "container": {"image": "busybox", "volumes": volumes}}),
            )
        };
        let policy = Policy::new(&[]).with_kinds(&[ResourceKind::Container]);
        assert_eq!(policy.admit(&container(vec![])), Ok(()));
        let host = policy
            .admit(&container(vec!["/:/host".into()]))
            .unwrap_err();
        assert_eq!(host.rule(), "allow-mount");
        assert!(host.to_string().contains("\"/:/host\""), "{host}");
        let policy = policy.with_mount_roots(&[data.path().to_path_buf()]);
        let ok = format!("{}/sub:/data:ro", data.path().display());
        assert_eq!(policy.admit(&container(vec![ok.clone()])), Ok(()));
        assert!(
            policy
                .admit(&container(vec![ok, "/:/host".into()]))
                .is_err()
        );
        // A symlink under the root that points out of it does not count as under it.
        std::os::unix::fs::symlink("/etc", data.path().join("etc")).unwrap();
        let escape = format!("{}/etc:/x", data.path().display());
        assert_eq!(
            policy.admit(&container(vec![escape])).unwrap_err().rule(),
            "allow-mount"
        );
        let dotdot = format!("{}/../..:/x", data.path().display());
        assert!(policy.admit(&container(vec![dotdot])).is_err());
        let everything = Policy::new(&[])
            .with_kinds(&[ResourceKind::Container])
            .with_mount_roots(&["/".into()]);
        assert_eq!(everything.admit(&container(vec!["/:/host".into()])), Ok(()));
    }

    #[test]
    fn exec_only_nodes_pass_just_the_named_variables_and_never_the_loader_unless_named() {
        let mut policy = Policy::new(&[]);
        assert_eq!(policy.check_env(&env(&[])), Ok(()));
        let refusal = policy.check_env(&env(&["LD_PRELOAD"])).unwrap_err();
        assert_eq!(refusal.rule(), "allow-env");
        assert!(refusal.to_string().contains("LD_PRELOAD"), "{refusal}");
        assert!(policy.check_env(&env(&["LANG"])).is_err());
        policy.allow_env = vec!["LANG".into(), "APP_*".into(), "*".into()];
        assert_eq!(
            policy.check_env(&env(&["LANG", "APP_MODE", "OTHER"])),
            Ok(())
        );
        // Broad wildcards never let the loader's variables or PATH through.
        for name in [
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
            "DYLD_INSERT_LIBRARIES",
            "PATH",
        ] {
            assert_eq!(
                policy.check_env(&env(&[name])).unwrap_err().rule(),
                "allow-env",
                "{name}"
            );
        }
        policy.allow_env = vec!["L*".into()];
        assert!(policy.check_env(&env(&["LD_PRELOAD"])).is_err());
        policy.allow_env = vec!["LD_LIBRARY_PATH".into(), "PATH".into(), "DYLD_*".into()];
        assert_eq!(
            policy.check_env(&env(&["LD_LIBRARY_PATH", "PATH", "DYLD_FOO"])),
            Ok(())
        );
        assert!(policy.check_env(&env(&["LD_PRELOAD"])).is_err());
        // With shell allowed, any environment.
        let shell = Policy {
            allow_shell: true,
            allow_env: vec![],
            ..policy
        };
        assert_eq!(shell.check_env(&env(&["LD_PRELOAD", "PATH"])), Ok(()));
    }

    #[test]
    fn programs_need_shell_or_the_exec_list() {
        let mut policy = Policy::new(&[]);
        let sh = Path::new("/bin/sh");
        assert_eq!(
            policy.check_program("sh", sh).unwrap_err().rule(),
            "allow-exec"
        );
        policy.allow_exec = vec![sh.to_path_buf()];
        assert_eq!(policy.check_program("sh", sh), Ok(()));
        assert!(policy.check_program("ls", Path::new("/bin/ls")).is_err());
    }
}
