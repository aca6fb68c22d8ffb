//! Small files in data and state dirs, written atomically (temp file, fsync, rename) so a crash never leaves
//! half a key; and files confined under a root ([`Root`], [`write_under`]) for what the server asks an agent
//! to write.
//!
//! Against path races: temp files get an unguessable name and are created with `O_CREAT|O_EXCL|O_NOFOLLOW`
//! in the directory's descriptor, mode and owner are set on the open descriptor (never by path), and the
//! rename happens within that same directory descriptor. Below a [`Root`], every component is opened with
//! `O_NOFOLLOW`: a symlink there is refused with [`FileError::Symlink`]. Each write also removes drover temp
//! files in its directory that a crash left behind ([`STALE_AFTER`]).

mod error;
mod root;
mod temp;

use std::ffi::OsStr;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use rustix::fs::{AtFlags, Gid, Mode, OFlags, Uid, fchmod, fchown, fsync, renameat, unlinkat};

pub use error::FileError;
pub use root::{Root, split_under_root, write_under};
pub use temp::STALE_AFTER;

/// How [`Root::write`] and [`write_under`] write a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteOptions {
    /// Permission bits (including set-id and sticky bits), set exactly: the umask does not apply.
    pub mode: u32,
    /// Owner and group to set on the new file; `None` keeps the writer's.
    pub owner: Option<u32>,
    pub group: Option<u32>,
    /// Wait for the disk (fsync of the file and of the directory) before returning.
    pub durable: bool,
    /// Create missing directories (mode 0755) between the root and the file.
    pub create_dirs: bool,
}

impl Default for WriteOptions {
    fn default() -> Self {
        Self {
            mode: 0o644,
            owner: None,
            group: None,
            durable: true,
            create_dirs: true,
        }
    }
}

/// What a file is now, read from its descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileInfo {
    /// Permission bits (`& 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub len: u64,
}

impl FileInfo {
    fn of(file: &File, path: &Path) -> Result<Self, FileError> {
        let meta = file
            .metadata()
            .map_err(|e| FileError::io("inspect", path, e))?;
        Ok(Self {
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            len: meta.len(),
        })
    }
}

/// Writes `contents` to `path` atomically and durably; `private` files get mode 0600, others 0644.
/// For the writer's own data and state dirs: links in `path`'s directories are followed (they are the
/// operator's), the file itself is replaced, never written through.
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
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} names no file", path.display()),
        )
    })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let dir_fd = rustix::fs::open(dir, flags, Mode::empty())?;
    let options = WriteOptions {
        mode: if private { 0o600 } else { 0o644 },
        durable,
        ..WriteOptions::default()
    };
    replace_in(dir_fd.as_fd(), path, name, contents, &options)?;
    Ok(())
}

/// Replaces `name` in `dir` with `contents` through a fresh temp file in `dir`.
fn replace_in(
    dir: BorrowedFd<'_>,
    path: &Path,
    name: &OsStr,
    contents: &[u8],
    options: &WriteOptions,
) -> Result<FileInfo, FileError> {
    temp::sweep(dir, Some(name));
    let (fd, tmp) =
        temp::create(dir, name).map_err(|e| FileError::io("create a temp file for", path, e))?;
    let mut file = File::from(fd);
    let written = (|| {
        file.write_all(contents)
            .map_err(|e| FileError::io("write", path, e))?;
        set_mode_owner(
            &file,
            path,
            Some(options.mode),
            options.owner,
            options.group,
        )?;
        if options.durable {
            fsync(&file).map_err(|e| FileError::io("sync", path, e))?;
        }
        let info = FileInfo::of(&file, path)?;
        renameat(dir, tmp.as_os_str(), dir, name)
            .map_err(|e| FileError::io("rename into", path, e))?;
        Ok(info)
    })();
    if written.is_err() {
        let _ = unlinkat(dir, tmp.as_os_str(), AtFlags::empty());
        return written;
    }
    if options.durable {
        // Persist the rename itself; failure here only weakens durability, so it is not an error.
        let _ = fsync(dir);
    }
    written
}

/// Owner first, then mode: a chown may clear set-id bits the mode asks for.
fn set_mode_owner(
    file: &File,
    path: &Path,
    mode: Option<u32>,
    owner: Option<u32>,
    group: Option<u32>,
) -> Result<(), FileError> {
    if owner.is_some() || group.is_some() {
        fchown(file, owner.map(Uid::from_raw), group.map(Gid::from_raw))
            .map_err(|e| FileError::io("change the owner of", path, e))?;
    }
    if let Some(mode) = mode {
        fchmod(file, Mode::from_raw_mode(mode & 0o7777))
            .map_err(|e| FileError::io("set the mode of", path, e))?;
    }
    Ok(())
}

/// Removes drover temp files in `dir` that a crash left behind (older than [`STALE_AFTER`]); returns how many.
/// Every write already sweeps its own directory; this is for a start-up pass over a state dir.
pub fn remove_stale_temps(dir: &Path) -> std::io::Result<usize> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let fd = rustix::fs::open(dir, flags, Mode::empty())?;
    Ok(temp::sweep(fd, None))
}

/// Creates a directory (and parents) readable only by its owner; the mode is set on the opened directory.
pub fn create_private_dir(path: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(path)?;
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    fchmod(fd, Mode::from_raw_mode(0o700))?;
    Ok(())
}

#[cfg(test)]
mod tests;
