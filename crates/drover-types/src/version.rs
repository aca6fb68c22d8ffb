//! Versions and the skew policy between a server and its agents. As Kubernetes does for kubelets: a server
//! serves agents of its own release line back to two minor versions older (at 0.x a minor version is a
//! release line: server 0.3 serves 0.1, 0.2 and 0.3), refuses older ones with a message saying how to
//! upgrade, and an agent newer than its server works at the server's level (the protocol version in its
//! hello says which messages it may use; fields a server does not know are ignored by serde).

use std::fmt;
use std::str::FromStr;

/// How many minor versions older than the server an agent may be.
pub const MINORS_SERVED_BEHIND: u64 = 2;

/// A release version, `MAJOR.MINOR.PATCH` (a `-pre` or `+build` suffix is ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a version (MAJOR.MINOR.PATCH)")]
pub struct BadVersion(pub String);

impl FromStr for Version {
    type Err = BadVersion;

    fn from_str(s: &str) -> Result<Self, BadVersion> {
        let bad = || BadVersion(s.to_string());
        let core = s.split(['-', '+']).next().unwrap_or_default();
        let mut parts = core.split('.').map(|p| p.parse::<u64>().map_err(|_| bad()));
        let (Some(major), Some(minor), Some(patch), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        Ok(Self {
            major: major?,
            minor: minor?,
            patch: patch?,
        })
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl Version {
    /// This build's version.
    pub fn current() -> Self {
        crate::VERSION.parse().unwrap_or(Self {
            major: 0,
            minor: 0,
            patch: 0,
        })
    }

    /// The oldest release line a server of this version serves (`MAJOR.MINOR`).
    pub fn oldest_served(self) -> (u64, u64) {
        (self.major, self.minor.saturating_sub(MINORS_SERVED_BEHIND))
    }
}

/// How an agent's version stands to its server's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skew {
    /// The same release line.
    Same,
    /// Older, within the lines the server serves.
    Older,
    /// Older than the server serves: refused.
    TooOld,
    /// Newer than the server: it works at the server's level.
    Newer,
}

/// The skew of an agent of version `agent` against a server of version `server`.
pub fn skew(server: Version, agent: Version) -> Skew {
    let line = |v: Version| (v.major, v.minor);
    match line(agent).cmp(&line(server)) {
        std::cmp::Ordering::Equal => Skew::Same,
        std::cmp::Ordering::Greater => Skew::Newer,
        std::cmp::Ordering::Less if line(agent) >= server.oldest_served() => Skew::Older,
        std::cmp::Ordering::Less => Skew::TooOld,
    }
}

/// Why a server refuses an agent it does not serve, and what to do.
pub fn too_old(server: Version, agent: Version) -> String {
    let (major, minor) = server.oldest_served();
    format!(
        "agent {agent} is too old for server {server}, which serves agents {major}.{minor} and newer: upgrade \
         the agent to {major}.{minor} or later (docs/operations.md, \"Versions\")"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    #[test]
    fn versions_parse_and_bad_ones_are_named() {
        assert_eq!(
            v("0.2.1"),
            Version {
                major: 0,
                minor: 2,
                patch: 1
            }
        );
        assert_eq!(v("1.4.0-rc.1"), v("1.4.0"));
        assert_eq!(v("0.3.0+abc"), v("0.3.0"));
        for bad in ["", "1", "1.2", "1.2.3.4", "a.b.c", "1.-2.3"] {
            assert_eq!(bad.parse::<Version>(), Err(BadVersion(bad.into())), "{bad}");
        }
        assert_eq!(Version::current().to_string(), crate::VERSION);
    }

    #[test]
    fn a_server_serves_two_minor_versions_back_and_newer_agents_at_its_level() {
        let server = v("0.3.4");
        assert_eq!(skew(server, v("0.3.0")), Skew::Same);
        assert_eq!(skew(server, v("0.2.9")), Skew::Older);
        assert_eq!(skew(server, v("0.1.0")), Skew::Older);
        assert_eq!(skew(server, v("0.0.9")), Skew::TooOld);
        assert_eq!(skew(server, v("0.4.0")), Skew::Newer);
        assert_eq!(skew(v("1.0.0"), v("0.9.0")), Skew::TooOld, "another major");
        assert_eq!(
            skew(v("0.1.0"), v("0.0.1")),
            Skew::Older,
            "at the first lines"
        );
        let why = too_old(server, v("0.0.9"));
        assert!(
            why.starts_with(
                "agent 0.0.9 is too old for server 0.3.4, which serves agents 0.1 and newer"
            ),
            "{why}"
        );
    }
}
