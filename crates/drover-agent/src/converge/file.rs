//! File resources: content, mode and ownership, written atomically, only under the allowed roots.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;

use drover_types::manifest::{FileSpec, Kind, Resource, file_mode};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::ConvergeCtx;
use super::reconciler::{ConvergeError, Outcome, Reconciler, Summary, Target};

pub struct FileKind;

/// The file as found.
pub struct Observed {
    path: PathBuf,
    /// SHA-256 of the content, when the file exists and is readable.
    sha256: Option<String>,
    existed: bool,
    mode: Option<u32>,
    owner: Option<(u32, u32)>,
    want_uid: Option<u32>,
    want_gid: Option<u32>,
}

pub struct Plan {
    path: PathBuf,
    existed: bool,
    remove: bool,
    /// Write the content (why), then set this mode.
    write: Option<&'static str>,
    write_mode: u32,
    set_mode: Option<u32>,
    chown: Option<(Option<u32>, Option<u32>)>,
    absent: bool,
}

impl Plan {
    fn changes(&self) -> Vec<String> {
        let mut changes = Vec::new();
        if self.remove {
            changes.push("the file exists".to_string());
        }
        if let Some(why) = self.write {
            changes.push(why.to_string());
        }
        if let Some(mode) = self.set_mode {
            changes.push(format!("the mode differs (want {mode:04o})"));
        }
        if self.chown.is_some() {
            changes.push("the owner differs".to_string());
        }
        changes
    }
}

fn desired_sha(spec: &FileSpec) -> Option<String> {
    match (&spec.content, &spec.sha256) {
        (Some(c), _) => Some(hex::encode(Sha256::digest(c.as_bytes()))),
        (None, Some(sha)) => Some(sha.to_ascii_lowercase()),
        (None, None) => None,
    }
}

impl Reconciler for FileKind {
    type Spec = FileSpec;
    type Observed = Observed;
    type Plan = Plan;
    const KIND: &'static str = "file";

    fn spec(resource: &Resource) -> Option<&FileSpec> {
        match resource.kind() {
            Some(Kind::File(f)) => Some(f),
            _ => None,
        }
    }

    async fn observe(
        &self,
        ctx: &ConvergeCtx,
        target: &Target<'_, FileSpec>,
    ) -> Result<Observed, ConvergeError> {
        // The runtime has admitted the path; resolving it again gives the real path to work on.
        let path = ctx.policy.check_writable(&target.spec.path)?;
        let meta = std::fs::metadata(&path).ok();
        let sha256 = std::fs::read(&path)
            .ok()
            .map(|c| hex::encode(Sha256::digest(&c)));
        Ok(Observed {
            existed: meta.is_some(),
            mode: meta.as_ref().map(|m| m.permissions().mode() & 0o7777),
            owner: meta.as_ref().map(|m| (m.uid(), m.gid())),
            want_uid: target.spec.owner.as_deref().map(lookup_user).transpose()?,
            want_gid: target.spec.group.as_deref().map(lookup_group).transpose()?,
            sha256,
            path,
        })
    }

    fn plan(&self, target: &Target<'_, FileSpec>, o: Observed) -> Plan {
        let spec = target.spec;
        let mut plan = Plan {
            path: o.path,
            existed: o.existed,
            remove: false,
            write: None,
            write_mode: file_mode(spec).unwrap_or(0o644),
            set_mode: None,
            chown: None,
            absent: spec.absent,
        };
        if spec.absent {
            plan.remove = o.existed;
            return plan;
        }
        if o.sha256 != desired_sha(spec) || !o.existed {
            plan.write = Some(if o.existed {
                "the content differs"
            } else {
                "the file is missing"
            });
        } else if let Some(mode) = file_mode(spec)
            && o.mode != Some(mode)
        {
            plan.set_mode = Some(mode);
        }
        let (uid, gid) = (o.want_uid, o.want_gid);
        let differs = match o.owner {
            Some((have_uid, have_gid)) => {
                uid.is_some_and(|u| u != have_uid) || gid.is_some_and(|g| g != have_gid)
            }
            None => uid.is_some() || gid.is_some(),
        };
        if differs {
            plan.chown = Some((uid, gid));
        }
        plan
    }

    fn summary(plan: &Plan) -> Summary {
        Summary {
            handle: plan.path.display().to_string(),
            creates: !plan.existed && !plan.absent,
            changes: plan.changes(),
        }
    }

    async fn apply(
        &self,
        ctx: &ConvergeCtx,
        target: &Target<'_, FileSpec>,
        plan: Plan,
    ) -> Result<Outcome, ConvergeError> {
        let spec = target.spec;
        let changes = plan.changes();
        let changed = (!changes.is_empty()).then(|| changes.join(", "));
        let path = &plan.path;
        let handle = path.display().to_string();
        if plan.absent {
            if plan.remove {
                std::fs::remove_file(path).map_err(|e| ConvergeError::io("remove", &handle, e))?;
            }
            return Ok(Outcome {
                changed,
                details: json!({"absent": true}),
                created: false,
            });
        }
        if plan.write.is_some() {
            let content = match (&spec.content, &spec.sha256) {
                (Some(c), _) => c.as_bytes().to_vec(),
                (None, Some(sha)) => ctx.blobs.get(sha).await.map_err(ConvergeError::Content)?,
                (None, None) => return Err(ConvergeError::Content("the spec gives none".into())),
            };
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| ConvergeError::io("create", parent.display(), e))?;
            }
            drover_files::write_atomic(path, &content, false)
                .map_err(|e| ConvergeError::io("write", &handle, e))?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(plan.write_mode))
                .map_err(|e| ConvergeError::io("set the mode of", &handle, e))?;
        }
        if let Some(mode) = plan.set_mode {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                .map_err(|e| ConvergeError::io("set the mode of", &handle, e))?;
        }
        if let Some((uid, gid)) = plan.chown {
            std::os::unix::fs::chown(path, uid, gid)
                .map_err(|e| ConvergeError::io("change the owner of", &handle, e))?;
        }
        let meta = std::fs::metadata(path).map_err(|e| ConvergeError::io("read", &handle, e))?;
        Ok(Outcome {
            changed,
            details: json!({
                "sha256": desired_sha(spec),
                "mode": format!("{:04o}", meta.permissions().mode() & 0o7777),
                "uid": meta.uid(),
                "gid": meta.gid(),
            }),
            created: !plan.existed,
        })
    }

    async fn delete(&self, ctx: &ConvergeCtx, handle: &str) -> Result<(), ConvergeError> {
        let path = ctx.policy.check_writable(handle)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ConvergeError::io("remove", path.display(), e)),
        }
    }
}

fn lookup_user(name: &str) -> Result<u32, ConvergeError> {
    if let Ok(id) = name.parse() {
        return Ok(id);
    }
    let c = std::ffi::CString::new(name).map_err(|_| ConvergeError::NoUser(name.to_string()))?;
    // SAFETY: getpwnam returns a pointer into static storage or null; we only read pw_uid right away.
    let pw = unsafe { libc::getpwnam(c.as_ptr()) };
    if pw.is_null() {
        return Err(ConvergeError::NoUser(name.to_string()));
    }
    // SAFETY: non-null, as checked.
    Ok(unsafe { (*pw).pw_uid })
}

fn lookup_group(name: &str) -> Result<u32, ConvergeError> {
    if let Ok(id) = name.parse() {
        return Ok(id);
    }
    let c = std::ffi::CString::new(name).map_err(|_| ConvergeError::NoGroup(name.to_string()))?;
    // SAFETY: as for getpwnam.
    let gr = unsafe { libc::getgrnam(c.as_ptr()) };
    if gr.is_null() {
        return Err(ConvergeError::NoGroup(name.to_string()));
    }
    // SAFETY: non-null, as checked.
    Ok(unsafe { (*gr).gr_gid })
}
