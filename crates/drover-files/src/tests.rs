//! Symlinks planted where a write or read goes: refused (or replaced, never followed), the outside untouched.

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::*;

/// An allowed root and, beside it, a file that must never change: content "precious", mode 0600.
struct Scene {
    root: tempfile::TempDir,
    outside: tempfile::TempDir,
}

impl Scene {
    fn new() -> Self {
        let s = Self {
            root: tempfile::tempdir().unwrap(),
            outside: tempfile::tempdir().unwrap(),
        };
        std::fs::write(s.secret(), "precious").unwrap();
        std::fs::set_permissions(s.secret(), std::fs::Permissions::from_mode(0o600)).unwrap();
        s
    }
    fn root(&self) -> &Path {
        self.root.path()
    }
    fn secret(&self) -> PathBuf {
        self.outside.path().join("secret")
    }
    fn assert_secret_untouched(&self) {
        assert_eq!(std::fs::read_to_string(self.secret()).unwrap(), "precious");
        let mode = std::fs::metadata(self.secret())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o600, "the outside file's mode changed");
    }
}

fn opts(mode: u32) -> WriteOptions {
    WriteOptions {
        mode,
        ..WriteOptions::default()
    }
}

#[test]
fn a_symlink_as_the_file_is_refused() {
    let s = Scene::new();
    symlink(s.secret(), s.root().join("app.conf")).unwrap();
    let err = write_under(s.root(), Path::new("app.conf"), b"evil", &opts(0o666)).unwrap_err();
    assert!(matches!(err, FileError::Symlink { .. }), "{err}");
    s.assert_secret_untouched();
    let root = Root::open(s.root()).unwrap();
    let err = root.open_file(Path::new("app.conf")).unwrap_err();
    assert!(matches!(err, FileError::Symlink { .. }), "{err}");
    let err = root
        .set_mode_owner(Path::new("app.conf"), Some(0o777), None, None)
        .unwrap_err();
    assert!(matches!(err, FileError::Symlink { .. }), "{err}");
    s.assert_secret_untouched();
    // Removing removes the link, never what it points at.
    assert!(root.remove(Path::new("app.conf")).unwrap());
    assert!(s.root().join("app.conf").symlink_metadata().is_err());
    s.assert_secret_untouched();
}

#[test]
fn a_symlink_as_a_directory_on_the_way_is_refused() {
    let s = Scene::new();
    symlink(s.outside.path(), s.root().join("etc")).unwrap();
    for rel in ["etc/secret", "etc/new.conf", "etc/sub/new.conf"] {
        let err = write_under(s.root(), Path::new(rel), b"evil", &opts(0o644)).unwrap_err();
        assert!(matches!(err, FileError::Symlink { .. }), "{rel}: {err}");
        let err = Root::open(s.root())
            .unwrap()
            .read(Path::new(rel))
            .unwrap_err();
        assert!(matches!(err, FileError::Symlink { .. }), "{rel}: {err}");
    }
    s.assert_secret_untouched();
    let names: Vec<_> = std::fs::read_dir(s.outside.path()).unwrap().collect();
    assert_eq!(names.len(), 1, "nothing was created outside the root");
}

#[test]
fn squatted_temp_names_do_not_redirect_the_write() {
    let s = Scene::new();
    // The old predictable names (`.NAME.PID.N.tmp`) and a sample of the new shape, all pointing outside.
    let pid = std::process::id();
    for n in 0..32 {
        symlink(
            s.secret(),
            s.root().join(format!(".app.conf.{pid}.{n}.tmp")),
        )
        .unwrap();
        symlink(
            s.secret(),
            s.root().join(format!(".app.conf.drover-{n:016x}.tmp")),
        )
        .unwrap();
    }
    write_under(s.root(), Path::new("app.conf"), b"fine", &opts(0o640)).unwrap();
    write_atomic(&s.root().join("app.conf"), b"fine", false).unwrap();
    replace(&s.root().join("app.conf"), b"fine", true).unwrap();
    s.assert_secret_untouched();
    let meta = std::fs::symlink_metadata(s.root().join("app.conf")).unwrap();
    assert!(meta.is_file());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
}

#[test]
fn the_path_api_replaces_a_link_rather_than_writing_through_it() {
    let s = Scene::new();
    let target = s.root().join("state.json");
    symlink(s.secret(), &target).unwrap();
    write_atomic(&target, b"{}", false).unwrap();
    s.assert_secret_untouched();
    assert!(std::fs::symlink_metadata(&target).unwrap().is_file());
    assert_eq!(std::fs::read(&target).unwrap(), b"{}");
}

#[test]
fn writes_set_the_exact_mode_and_create_directories() {
    let s = Scene::new();
    let rel = Path::new("a/b/c.conf");
    let info = write_under(s.root(), rel, b"x", &opts(0o4750)).unwrap();
    assert_eq!(info.mode, 0o4750);
    assert_eq!(info.len, 1);
    let root = Root::open(s.root()).unwrap();
    assert_eq!(root.read(rel).unwrap().as_deref(), Some(&b"x"[..]));
    assert_eq!(root.read(Path::new("a/none")).unwrap(), None);
    assert_eq!(root.metadata(Path::new("none/at/all")).unwrap(), None);
    let info = root.set_mode_owner(rel, Some(0o600), None, None).unwrap();
    assert_eq!(info.mode, 0o600);
    let no_dirs = WriteOptions {
        create_dirs: false,
        ..opts(0o644)
    };
    let err = write_under(s.root(), Path::new("d/e"), b"x", &no_dirs).unwrap_err();
    assert!(matches!(err, FileError::NotFound { .. }), "{err}");
}

#[test]
fn paths_that_leave_the_root_are_invalid() {
    let s = Scene::new();
    for rel in ["../secret", "a/../../secret", "/etc/passwd", "", "."] {
        let err = write_under(s.root(), Path::new(rel), b"x", &opts(0o644)).unwrap_err();
        assert!(
            matches!(err, FileError::InvalidPath { .. }),
            "{rel:?}: {err}"
        );
    }
    s.assert_secret_untouched();
}

#[test]
fn a_fifo_or_directory_is_not_a_file_and_does_not_block() {
    let s = Scene::new();
    let fifo = s.root().join("pipe");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    std::fs::create_dir(s.root().join("dir")).unwrap();
    let root = Root::open(s.root()).unwrap();
    for rel in ["pipe", "dir"] {
        let err = root.open_file(Path::new(rel)).unwrap_err();
        assert!(matches!(err, FileError::NotAFile { .. }), "{rel}: {err}");
        let err = root.write(Path::new(rel), b"x", &opts(0o644)).unwrap_err();
        assert!(matches!(err, FileError::NotAFile { .. }), "{rel}: {err}");
    }
    let err = root
        .write(Path::new("pipe/x"), b"x", &opts(0o644))
        .unwrap_err();
    assert!(matches!(err, FileError::NotADirectory { .. }), "{err}");
}

#[test]
fn stale_temp_files_are_swept_and_fresh_ones_and_links_kept() {
    let s = Scene::new();
    let old = SystemTime::now() - STALE_AFTER - Duration::from_secs(60);
    let stale = s.root().join(".other.conf.drover-00000000000000aa.tmp");
    let legacy = s.root().join(".app.conf.4242.7.tmp");
    let fresh = s.root().join(".other.conf.drover-00000000000000bb.tmp");
    let link = s.root().join(".x.drover-00000000000000cc.tmp");
    for p in [&stale, &legacy, &fresh] {
        std::fs::write(p, "half").unwrap();
    }
    for p in [&stale, &legacy] {
        std::fs::File::options()
            .write(true)
            .open(p)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    symlink(s.secret(), &link).unwrap();
    write_under(s.root(), Path::new("app.conf"), b"x", &opts(0o644)).unwrap();
    assert!(!stale.exists(), "a stale temp file is removed");
    assert!(
        !legacy.exists(),
        "the old-style temp file of the written file is removed"
    );
    assert!(fresh.exists(), "a temp file that may be in use is kept");
    assert!(
        link.symlink_metadata().is_ok(),
        "links are not ours to remove"
    );
    s.assert_secret_untouched();
    // And the start-up pass over a whole directory.
    let other = tempfile::tempdir().unwrap();
    let stale = other
        .path()
        .join(".ledger.json.drover-0123456789abcdef.tmp");
    std::fs::write(&stale, "half").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_modified(old)
        .unwrap();
    assert_eq!(remove_stale_temps(other.path()).unwrap(), 1);
    assert!(!stale.exists());
}

#[test]
fn split_under_root_picks_the_longest_root() {
    let roots = vec![PathBuf::from("/etc"), PathBuf::from("/etc/app")];
    let (root, rel) = split_under_root(&roots, Path::new("/etc/app/x.conf")).unwrap();
    assert_eq!((root, rel), (Path::new("/etc/app"), Path::new("x.conf")));
    assert!(split_under_root(&roots, Path::new("/etcetera/x")).is_none());
}
