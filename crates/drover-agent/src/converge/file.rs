//! File resources: content, mode and ownership, written atomically, only under the allowed roots.
//!
//! Every access goes through the allowed root's descriptor with `O_NOFOLLOW` on each component
//! (`drover_files::Root`), and modes and owners are set on the open file: a symlink planted under a root
//! after the policy check cannot lead a read, a write, a chmod or a chown outside it.

use std::path::{Path, PathBuf};

use drover_files::{Root, WriteOptions};
use drover_types::manifest::{FileSpec, Kind, Resource, ResourceKind, file_mode};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::ConvergeCtx;
use super::reconciler::{ConvergeError, Outcome, Reconciler, Summary, Target};

pub struct FileKind;

/// The file's path, admitted by the policy, as a root held open and the rest of the path under it.
struct Confined {
    root: Root,
    rel: PathBuf,
    path: PathBuf,
}

fn confine(ctx: &ConvergeCtx, path: &str) -> Result<Confined, ConvergeError> {
    let path = ctx.policy.check_writable(path)?;
    let (root, rel) =
        drover_files::split_under_root(&ctx.policy.allowed_roots, &path).ok_or_else(|| {
            ConvergeError::Content(format!("{} is under no allowed root", path.display()))
        })?;
    let (root, rel) = (Root::open(root)?, rel.to_path_buf());
    Ok(Confined { root, rel, path })
}

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
    const KIND: ResourceKind = ResourceKind::File;

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
        let file = confine(ctx, &target.spec.path)?;
        let meta = file.root.metadata(&file.rel)?;
        let sha256 = file
            .root
            .read(&file.rel)?
            .map(|c| hex::encode(Sha256::digest(&c)));
        let path = file.path;
        Ok(Observed {
            existed: meta.is_some(),
            mode: meta.map(|m| m.mode),
            owner: meta.map(|m| (m.uid, m.gid)),
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
        let handle = plan.path.display().to_string();
        let file = confine(ctx, &handle)?;
        let rel = file.rel.as_path();
        if plan.absent {
            if plan.remove {
                file.root.remove(rel)?;
            }
            return Ok(Outcome {
                changed,
                details: json!({"absent": true}),
                created: false,
            });
        }
        let (uid, gid) = plan.chown.unwrap_or((None, None));
        let info = if plan.write.is_some() {
            let content = match (&spec.content, &spec.sha256) {
                (Some(c), _) => c.as_bytes().to_vec(),
                (None, Some(sha)) => ctx.blobs.get(sha).await?,
                (None, None) => return Err(ConvergeError::Content("the spec gives none".into())),
            };
            let options = WriteOptions {
                mode: plan.write_mode,
                owner: uid,
                group: gid,
                durable: true,
                create_dirs: true,
            };
            file.root.write(rel, &content, &options)?
        } else if plan.set_mode.is_some() || plan.chown.is_some() {
            file.root.set_mode_owner(rel, plan.set_mode, uid, gid)?
        } else {
            present(&file.root, rel, &handle)?
        };
        Ok(Outcome {
            changed,
            details: json!({
                "sha256": desired_sha(spec),
                "mode": format!("{:04o}", info.mode),
                "uid": info.uid,
                "gid": info.gid,
            }),
            created: !plan.existed,
        })
    }

    async fn delete(&self, ctx: &ConvergeCtx, handle: &str) -> Result<(), ConvergeError> {
        let file = confine(ctx, handle)?;
        file.root.remove(&file.rel)?;
        Ok(())
    }
}

/// The file as it is, which must exist.
fn present(root: &Root, rel: &Path, handle: &str) -> Result<drover_files::FileInfo, ConvergeError> {
    root.metadata(rel)?.ok_or_else(|| {
        ConvergeError::io(
            "read",
            handle,
            std::io::Error::from(std::io::ErrorKind::NotFound),
        )
    })
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
