//! Files confined under a root directory: every component is opened from the root's descriptor with
//! `O_NOFOLLOW`, so a symlink planted below the root (before or during the call) is refused, never followed.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, mkdirat, openat, statat, unlinkat};
use rustix::io::Errno;

use crate::{FileError, FileInfo, WriteOptions, replace_in};

/// An open directory that reads and writes stay under.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

/// The root among `roots` that `path` lies under (the longest, when they nest) and the rest of the path.
/// For callers that checked a path against a list of allowed roots and now confine the access to it.
pub fn split_under_root<'a>(roots: &'a [PathBuf], path: &'a Path) -> Option<(&'a Path, &'a Path)> {
    roots
        .iter()
        .filter_map(|root| Some((root.as_path(), path.strip_prefix(root).ok()?)))
        .max_by_key(|(root, _)| root.as_os_str().len())
}

/// [`Root::write`] in one call: writes `contents` at `root/rel` without following any link below `root`.
pub fn write_under(
    root: &Path,
    rel: &Path,
    contents: &[u8],
    options: &WriteOptions,
) -> Result<FileInfo, FileError> {
    Root::open(root)?.write(rel, contents, options)
}

impl Root {
    /// Opens the root itself. Links in `path` are followed: the root is the operator's choice; below it, none.
    pub fn open(path: &Path) -> Result<Self, FileError> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let fd = rustix::fs::open(path, flags, Mode::empty()).map_err(|e| match e {
            Errno::NOENT => FileError::NotFound { path: path.into() },
            Errno::NOTDIR => FileError::NotADirectory { path: path.into() },
            e => FileError::io("open", path, e),
        })?;
        Ok(Self {
            fd,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces (or creates) `rel` with `contents` atomically: a fresh temp file in the same directory, mode
    /// and owner set on its descriptor, then renamed over the target. Missing directories are created (0755)
    /// when `options.create_dirs`. Refused when `rel` or any directory on the way is a symlink.
    pub fn write(
        &self,
        rel: &Path,
        contents: &[u8],
        options: &WriteOptions,
    ) -> Result<FileInfo, FileError> {
        let (dir, name) = self.walk(rel, options.create_dirs)?;
        let path = self.path.join(rel);
        match self.kind_of(&dir, &name, &path)? {
            None | Some(FileType::RegularFile) => {}
            Some(FileType::Symlink) => return Err(FileError::Symlink { path }),
            Some(_) => return Err(FileError::NotAFile { path }),
        }
        replace_in(dir.as_fd(), &path, &name, contents, options)
    }

    /// Opens `rel` for reading, refusing links and anything but a regular file. A FIFO planted there cannot
    /// hang the caller: the open does not block.
    pub fn open_file(&self, rel: &Path) -> Result<File, FileError> {
        let (dir, name) = self.walk(rel, false)?;
        let path = self.path.join(rel);
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let fd =
            openat(dir.as_fd(), name.as_os_str(), flags, Mode::empty()).map_err(|e| match e {
                Errno::NOENT => FileError::NotFound { path: path.clone() },
                // Linux says ELOOP for a link under O_NOFOLLOW, FreeBSD EMLINK.
                Errno::LOOP | Errno::MLINK => FileError::Symlink { path: path.clone() },
                e => FileError::io("open", &path, e),
            })?;
        let file = File::from(fd);
        let meta = file
            .metadata()
            .map_err(|e| FileError::io("inspect", &path, e))?;
        if !meta.is_file() {
            return Err(FileError::NotAFile { path });
        }
        Ok(file)
    }

    /// The content of `rel`, or `None` when it does not exist.
    pub fn read(&self, rel: &Path) -> Result<Option<Vec<u8>>, FileError> {
        use std::io::Read;
        let mut file = match self.open_file(rel) {
            Ok(f) => f,
            Err(FileError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        file.read_to_end(&mut out)
            .map_err(|e| FileError::io("read", self.path.join(rel), e))?;
        Ok(Some(out))
    }

    /// Mode, owner and size of `rel`, or `None` when it does not exist.
    pub fn metadata(&self, rel: &Path) -> Result<Option<FileInfo>, FileError> {
        match self.open_file(rel) {
            Ok(f) => FileInfo::of(&f, &self.path.join(rel)).map(Some),
            Err(FileError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sets the owner and then the mode (a chown may clear set-id bits) on the open file, never by path.
    pub fn set_mode_owner(
        &self,
        rel: &Path,
        mode: Option<u32>,
        owner: Option<u32>,
        group: Option<u32>,
    ) -> Result<FileInfo, FileError> {
        let file = self.open_file(rel)?;
        let path = self.path.join(rel);
        crate::set_mode_owner(&file, &path, mode, owner, group)?;
        FileInfo::of(&file, &path)
    }

    /// Removes `rel` (a link is removed itself, never its target). `false` when nothing was there.
    pub fn remove(&self, rel: &Path) -> Result<bool, FileError> {
        let (dir, name) = match self.walk(rel, false) {
            Ok(found) => found,
            Err(FileError::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        let path = self.path.join(rel);
        match self.kind_of(&dir, &name, &path)? {
            None => Ok(false),
            Some(FileType::Directory) => Err(FileError::NotAFile { path }),
            Some(_) => match unlinkat(dir.as_fd(), name.as_os_str(), AtFlags::empty()) {
                Ok(()) => Ok(true),
                Err(Errno::NOENT) => Ok(false),
                Err(e) => Err(FileError::io("remove", path, e)),
            },
        }
    }

    /// The directory holding `rel`'s last component, opened component by component with `O_NOFOLLOW`,
    /// and that last component.
    fn walk(&self, rel: &Path, create: bool) -> Result<(Dir<'_>, OsString), FileError> {
        let invalid = |reason| FileError::InvalidPath {
            path: rel.to_path_buf(),
            reason,
        };
        let mut parts = Vec::new();
        for c in rel.components() {
            match c {
                Component::Normal(p) => parts.push(p),
                Component::CurDir => {}
                Component::ParentDir => return Err(invalid("`..` is not allowed")),
                Component::RootDir | Component::Prefix(_) => {
                    return Err(invalid("it must be relative to the root"));
                }
            }
        }
        let Some((name, dirs)) = parts.split_last() else {
            return Err(invalid("it names no file"));
        };
        let mut dir = Dir::Root(self.fd.as_fd());
        let mut path = self.path.clone();
        for part in dirs {
            path.push(part);
            dir = Dir::Owned(open_dir(dir.as_fd(), part, &path, create)?);
        }
        Ok((dir, name.to_os_string()))
    }

    /// The type of `name` in `dir` without following a link, `None` when absent.
    fn kind_of(
        &self,
        dir: &Dir<'_>,
        name: &OsStr,
        path: &Path,
    ) -> Result<Option<FileType>, FileError> {
        match statat(dir.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(FileError::io("inspect", path, e)),
        }
    }
}

/// A directory on the walk: the root's own descriptor, or one opened below it.
enum Dir<'a> {
    Root(BorrowedFd<'a>),
    Owned(OwnedFd),
}

impl AsFd for Dir<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Dir::Root(fd) => *fd,
            Dir::Owned(fd) => fd.as_fd(),
        }
    }
}

/// Opens the directory `name` in `parent` without following a link, creating it (0755) when asked.
fn open_dir(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    path: &Path,
    create: bool,
) -> Result<OwnedFd, FileError> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let open = || openat(parent, name, flags, Mode::empty());
    let result = match open() {
        Err(Errno::NOENT) if create => match mkdirat(parent, name, Mode::from_raw_mode(0o755)) {
            // Someone else made it meanwhile: fine, as long as it is a directory (the open checks).
            Ok(()) | Err(Errno::EXIST) => open(),
            Err(e) => return Err(FileError::io("create the directory", path, e)),
        },
        other => other,
    };
    result.map_err(|e| match e {
        Errno::NOENT => FileError::NotFound { path: path.into() },
        Errno::LOOP | Errno::MLINK | Errno::NOTDIR => {
            match statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => {
                    FileError::Symlink { path: path.into() }
                }
                _ => FileError::NotADirectory { path: path.into() },
            }
        }
        e => FileError::io("open the directory", path, e),
    })
}
