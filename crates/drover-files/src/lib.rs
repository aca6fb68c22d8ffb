//! Small files in data and state dirs, written atomically (temp file, fsync, rename) so a crash never leaves half a key.

use std::io::Write;
use std::path::Path;

/// Writes `contents` to `path` atomically and durably; `private` files get mode 0600.
pub fn write_atomic(path: &Path, contents: &[u8], private: bool) -> std::io::Result<()> {
    write(path, contents, private, true)
}

/// Writes `contents` to `path` atomically but without waiting for the disk: a crash of the process never
/// leaves half a file, a power loss may leave the old one. For hot paths where each fsync costs milliseconds
/// and losing the write only makes the outcome unknown, never wrong.
pub fn replace(path: &Path, contents: &[u8], private: bool) -> std::io::Result<()> {
    write(path, contents, private, false)
}

fn write(path: &Path, contents: &[u8], private: bool, durable: bool) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Unique per process and call, so two writers of one file never share a temp file.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{file_name}.{}.{n}.tmp", std::process::id()));
    {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(if private { 0o600 } else { 0o644 });
        }
        let mut file = options.open(&tmp)?;
        file.write_all(contents)?;
        if durable {
            file.sync_all()?;
        }
    }
    std::fs::rename(&tmp, path)?;
    if !durable {
        return Ok(());
    }
    if let Ok(d) = std::fs::File::open(dir) {
        // Persist the rename itself; failure here only weakens durability, so it is not an error.
        let _ = d.sync_all();
    }
    Ok(())
}

/// Creates a directory (and parents) readable only by its owner.
pub fn create_private_dir(path: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}
