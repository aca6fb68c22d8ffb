//! Temp files for atomic replaces: unguessable names, created exclusively, and swept when stale.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::time::{Duration, SystemTime};

use rustix::fs::{AtFlags, Dir, Mode, OFlags, openat, unlinkat};
use rustix::io::Errno;

/// A drover temp file older than this is left over from a crash mid-write and is removed. Writes are small and
/// take milliseconds, so an hour never catches one in progress.
pub const STALE_AFTER: Duration = Duration::from_secs(3600);

/// Directory entries looked at per sweep, so a huge directory costs a bounded time per write.
const SWEEP_MAX_ENTRIES: usize = 10_000;

/// Bytes of the target's name kept in the temp name, so the temp name stays under NAME_MAX (255).
const NAME_PREFIX_MAX: usize = 100;

const MARKER: &[u8] = b".drover-";
const SUFFIX: &[u8] = b".tmp";
const RANDOM_HEX: usize = 16;

/// `.NAME.drover-<16 hex>.tmp`: the random part makes the name unguessable, so nobody can plant a link there
/// beforehand (and `O_EXCL` refuses whatever is there anyway).
fn temp_name(target: &OsStr) -> OsString {
    let name = target.as_bytes();
    let name = &name[..name.len().min(NAME_PREFIX_MAX)];
    let mut out = Vec::with_capacity(name.len() + 32);
    out.push(b'.');
    out.extend_from_slice(name);
    out.extend_from_slice(MARKER);
    out.extend_from_slice(format!("{:016x}", rand::random::<u64>()).as_bytes());
    out.extend_from_slice(SUFFIX);
    OsString::from_vec(out)
}

/// Whether `name` has the shape of [`temp_name`].
pub(crate) fn is_temp_name(name: &[u8]) -> bool {
    let Some(stem) = name.strip_suffix(SUFFIX) else {
        return false;
    };
    if !name.starts_with(b".") || stem.len() < MARKER.len() + RANDOM_HEX {
        return false;
    }
    let (head, hex) = stem.split_at(stem.len() - RANDOM_HEX);
    head.ends_with(MARKER) && hex.iter().all(u8::is_ascii_hexdigit)
}

/// Whether `name` is the temp name drover used before 0.1 hardening for `target`: `.TARGET.PID.N.tmp`.
/// Matched only for the file being written, since the shape alone is too common to delete on sight.
fn is_legacy_temp_name(name: &[u8], target: &[u8]) -> bool {
    let Some(rest) = name
        .strip_prefix(b".")
        .and_then(|r| r.strip_prefix(target))
        .and_then(|r| r.strip_prefix(b"."))
        .and_then(|r| r.strip_suffix(SUFFIX))
    else {
        return false;
    };
    let mut parts = rest.split(|b| *b == b'.');
    let digits =
        |p: Option<&[u8]>| p.is_some_and(|p| !p.is_empty() && p.iter().all(u8::is_ascii_digit));
    digits(parts.next()) && digits(parts.next()) && parts.next().is_none()
}

/// Creates a new temp file next to `target` in `dir`, readable only by its owner until the caller sets the
/// final mode on the descriptor.
pub(crate) fn create(dir: impl AsFd, target: &OsStr) -> Result<(OwnedFd, OsString), Errno> {
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut tries = 0;
    loop {
        let name = temp_name(target);
        match openat(
            dir.as_fd(),
            name.as_os_str(),
            flags,
            Mode::from_raw_mode(0o600),
        ) {
            Ok(fd) => return Ok((fd, name)),
            // A collision of 64 random bits means someone is squatting names: try a few, then give up.
            Err(Errno::EXIST) if tries < 3 => tries += 1,
            Err(e) => return Err(e),
        }
    }
}

/// Removes drover temp files in `dir` older than [`STALE_AFTER`] (any target's, and the old-style ones of
/// `target`). Best effort: returns how many it removed; errors only make it stop early.
pub(crate) fn sweep(dir: impl AsFd, target: Option<&OsStr>) -> usize {
    let dir = dir.as_fd();
    let Ok(entries) = Dir::read_from(dir) else {
        return 0;
    };
    let now = SystemTime::now();
    let mut removed = 0;
    for entry in entries.take(SWEEP_MAX_ENTRIES) {
        let Ok(entry) = entry else { break };
        let name = entry.file_name().to_bytes();
        let ours =
            is_temp_name(name) || target.is_some_and(|t| is_legacy_temp_name(name, t.as_bytes()));
        if ours && is_stale(dir, OsStr::from_bytes(name), now) {
            removed +=
                usize::from(unlinkat(dir, OsStr::from_bytes(name), AtFlags::empty()).is_ok());
        }
    }
    removed
}

/// A regular file (never a link: those are someone else's) last modified before [`STALE_AFTER`].
fn is_stale(dir: impl AsFd, name: &OsStr, now: SystemTime) -> bool {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let Ok(fd) = openat(dir, name, flags, Mode::empty()) else {
        return false;
    };
    let Ok(meta) = std::fs::File::from(fd).metadata() else {
        return false;
    };
    meta.is_file()
        && meta
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .is_some_and(|age| age > STALE_AFTER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_are_recognised_and_others_are_not() {
        let name = temp_name(OsStr::new("config.toml"));
        assert!(is_temp_name(name.as_bytes()), "{name:?}");
        assert_ne!(
            name,
            temp_name(OsStr::new("config.toml")),
            "names are random"
        );
        for other in [
            &b"config.toml"[..],
            b".config.toml.swp",
            b".x.drover-0123.tmp",
            b".x.drover-0123456789abcdeg.tmp",
            b"x.drover-0123456789abcdef.tmp",
        ] {
            assert!(!is_temp_name(other), "{}", String::from_utf8_lossy(other));
        }
        let long = OsString::from("n".repeat(255));
        assert!(temp_name(&long).len() < 255);
    }

    #[test]
    fn legacy_names_match_only_their_target() {
        assert!(is_legacy_temp_name(b".a.conf.123.4.tmp", b"a.conf"));
        assert!(!is_legacy_temp_name(b".a.conf.123.4.tmp", b"b.conf"));
        assert!(!is_legacy_temp_name(b".a.conf.123.tmp", b"a.conf"));
        assert!(!is_legacy_temp_name(b".a.conf.1x3.4.tmp", b"a.conf"));
        assert!(!is_legacy_temp_name(b".a.conf.1.2.3.tmp", b"a.conf"));
    }
}
