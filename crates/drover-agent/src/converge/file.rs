//! File resources: content, mode and ownership, written atomically, only under the allowed roots.

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use drover_types::manifest::{FileSpec, file_mode};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{ConvergeCtx, Outcome};

pub async fn reconcile(spec: &FileSpec, ctx: &ConvergeCtx, dry: bool) -> Result<Outcome, String> {
    let path = ctx
        .policy
        .check_writable(&spec.path)
        .map_err(|e| e.to_string())?;
    let existed = path.exists();
    let handle = path.display().to_string();
    if spec.absent {
        if existed && !dry {
            std::fs::remove_file(&path).map_err(|e| format!("cannot remove {handle}: {e}"))?;
        }
        return Ok(Outcome {
            changed: existed.then(|| "the file existed".to_string()),
            details: json!({"absent": true}),
            created: false,
            handle,
        });
    }
    let current = std::fs::read(&path).ok();
    let content = match (&spec.content, &spec.sha256) {
        (Some(c), _) => c.as_bytes().to_vec(),
        // Fetch only when the file does not already hold it (so a node enforces offline too).
        (None, Some(sha)) => match &current {
            Some(cur) if hex::encode(Sha256::digest(cur)) == *sha => cur.clone(),
            _ => ctx.blobs.get(sha).await?,
        },
        (None, None) => return Err("no content".into()),
    };
    let mut changes = Vec::new();
    if dry {
        return Ok(plan(spec, &path, current.as_deref(), &content));
    }
    if current.as_deref() != Some(content.as_slice()) {
        changes.push(if existed {
            "content differed"
        } else {
            "file was missing"
        });
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        let mode = file_mode(spec).unwrap_or(0o644);
        drover_files::write_atomic(&path, &content, false)
            .map_err(|e| format!("cannot write {handle}: {e}"))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("cannot set the mode of {handle}: {e}"))?;
    }
    let meta = std::fs::metadata(&path).map_err(|e| format!("cannot read {handle}: {e}"))?;
    if let Some(mode) = file_mode(spec)
        && meta.permissions().mode() & 0o7777 != mode
    {
        changes.push("mode differed");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("cannot set the mode of {handle}: {e}"))?;
    }
    let uid = spec.owner.as_deref().map(lookup_user).transpose()?;
    let gid = spec.group.as_deref().map(lookup_group).transpose()?;
    if uid.is_some_and(|u| u != meta.uid()) || gid.is_some_and(|g| g != meta.gid()) {
        changes.push("owner differed");
        std::os::unix::fs::chown(&path, uid, gid)
            .map_err(|e| format!("cannot change the owner of {handle}: {e}"))?;
    }
    let sha = hex::encode(Sha256::digest(&content));
    let meta = std::fs::metadata(&path).map_err(|e| e.to_string())?;
    Ok(Outcome {
        changed: (!changes.is_empty()).then(|| changes.join(", ")),
        details: json!({"sha256": sha, "mode": format!("{:04o}", meta.permissions().mode() & 0o7777), "uid": meta.uid(), "gid": meta.gid()}),
        created: !existed,
        handle,
    })
}

pub async fn delete(path: &str, ctx: &ConvergeCtx) -> Result<(), String> {
    let path = ctx.policy.check_writable(path).map_err(|e| e.to_string())?;
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot remove {}: {e}", path.display())),
    }
}

fn lookup_user(name: &str) -> Result<u32, String> {
    if let Ok(id) = name.parse() {
        return Ok(id);
    }
    let c = std::ffi::CString::new(name).map_err(|_| format!("{name:?} is not a user name"))?;
    // SAFETY: getpwnam returns a pointer into static storage or null; we only read pw_uid right away.
    let pw = unsafe { libc::getpwnam(c.as_ptr()) };
    if pw.is_null() {
        return Err(format!("no user {name:?} on this node"));
    }
    // SAFETY: non-null, as checked.
    Ok(unsafe { (*pw).pw_uid })
}

fn lookup_group(name: &str) -> Result<u32, String> {
    if let Ok(id) = name.parse() {
        return Ok(id);
    }
    let c = std::ffi::CString::new(name).map_err(|_| format!("{name:?} is not a group name"))?;
    // SAFETY: as for getpwnam.
    let gr = unsafe { libc::getgrnam(c.as_ptr()) };
    if gr.is_null() {
        return Err(format!("no group {name:?} on this node"));
    }
    // SAFETY: non-null, as checked.
    Ok(unsafe { (*gr).gr_gid })
}

/// What a reconcile would change, without changing it.
fn plan(
    spec: &FileSpec,
    path: &std::path::Path,
    current: Option<&[u8]>,
    content: &[u8],
) -> Outcome {
    let mut changes = Vec::new();
    match current {
        None => changes.push("create the file".to_string()),
        Some(c) if c != content => changes.push("replace the content".to_string()),
        _ => {}
    }
    if let (Some(mode), Ok(meta)) = (file_mode(spec), std::fs::metadata(path))
        && meta.permissions().mode() & 0o7777 != mode
    {
        changes.push(format!("set mode {mode:04o}"));
    }
    Outcome {
        changed: (!changes.is_empty()).then(|| changes.join(", ")),
        details: serde_json::Value::Null,
        created: current.is_none(),
        handle: path.display().to_string(),
    }
}
