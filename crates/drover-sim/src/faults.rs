//! What makes the simulated fleet uneven, for rollout benchmarks, all of it a pure function of the agent's
//! index so that every run (and every process of a split fleet) draws the same nodes: the arch each node
//! reports (`--arch-mix`), its `site` label (`--sites`), which nodes are offline (`--offline-share`), and the
//! desired states that fail on one stratum (`--fail-when`).
//!
//! Each draw hashes the index with its own salt, so the strata are independent of one another: the offline
//! nodes are not all aarch64, and neither follows the index order.

use std::fmt;
use std::str::FromStr;

use drover_types::Labels;

use crate::payloads::Gen;

/// The arch every node not drawn for another one reports.
pub const DEFAULT_ARCH: &str = "x86_64";
/// The default mix: aarch64 3 %, armv7 2 %, the rest x86_64 (95 %).
pub const DEFAULT_ARCH_MIX: &str = "aarch64=3%,armv7=2%";
/// Sites the nodes are spread over unless told (`site=site-00` .. `site-07`).
pub const DEFAULT_SITES: u32 = 8;

const SALT_ARCH: u64 = 0xA2C4;
const SALT_SITE: u64 = 0x517E;
const SALT_OFFLINE: u64 = 0x0FF1;

/// A number in [0, 1) drawn from the agent's index and a salt.
fn unit(agent: u32, salt: u64) -> f64 {
    (Gen::new(agent, salt, 0).next() >> 11) as f64 / (1u64 << 53) as f64
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FaultError {
    #[error("--arch-mix: {0:?} is not ARCH=PERCENT% (e.g. aarch64=3%)")]
    ArchShare(String),
    #[error("--arch-mix: the shares add up to {0:.1} %, more than 100 %")]
    ArchTotal(f64),
    #[error("--offline-share: {0} is not a share between 0 and 1")]
    OfflineShare(f64),
    #[error(
        "--fail-when {rule:?}: {why} (give arch=ARCH and/or label:KEY=VALUE, one of content=TEXT or \
         sha256=HEX, and optionally as=change or as=infra)"
    )]
    Rule { rule: String, why: String },
}

/// The share of nodes reporting each arch other than x86_64.
#[derive(Debug, Clone, PartialEq)]
pub struct ArchMix(Vec<(String, f64)>);

impl FromStr for ArchMix {
    type Err = FaultError;

    /// `aarch64=3%,armv7=2%` (the `%` may be left out); empty: every node x86_64.
    fn from_str(s: &str) -> Result<Self, FaultError> {
        let mut shares = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let bad = || FaultError::ArchShare(part.to_string());
            let (arch, pct) = part.split_once('=').ok_or_else(bad)?;
            let arch = arch.trim();
            let pct: f64 = pct
                .trim()
                .trim_end_matches('%')
                .trim()
                .parse()
                .map_err(|_| bad())?;
            let valid_name = !arch.is_empty()
                && arch
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !valid_name || !(0.0..=100.0).contains(&pct) {
                return Err(bad());
            }
            shares.push((arch.to_string(), pct / 100.0));
        }
        let total: f64 = shares.iter().map(|(_, s)| s).sum();
        if total > 1.0 + 1e-9 {
            return Err(FaultError::ArchTotal(total * 100.0));
        }
        Ok(Self(shares))
    }
}

impl ArchMix {
    /// The arch agent `index` reports.
    pub fn arch(&self, index: u32) -> &str {
        let u = unit(index, SALT_ARCH);
        let mut upto = 0.0;
        for (arch, share) in &self.0 {
            upto += share;
            if u < upto {
                return arch;
            }
        }
        DEFAULT_ARCH
    }
}

/// What one node is, for the fail rules and for what it reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub arch: String,
    /// Every label the node enrolls with and reports (the fleet's, plus its `site`).
    pub labels: Labels,
}

/// The fleet's strata and offline share.
#[derive(Debug, Clone, PartialEq)]
pub struct Strata {
    pub archs: ArchMix,
    /// `site` label values (`site-00` ..); 0: no site label.
    pub sites: u32,
    /// Share of the nodes that are offline (0 to 1).
    pub offline_share: f64,
}

impl Strata {
    pub fn new(archs: ArchMix, sites: u32, offline_share: f64) -> Result<Self, FaultError> {
        if !(0.0..=1.0).contains(&offline_share) {
            return Err(FaultError::OfflineShare(offline_share));
        }
        Ok(Self {
            archs,
            sites,
            offline_share,
        })
    }

    /// Agent `index`'s arch and labels: `common` (the fleet's labels) plus `site`, unless `common` sets it.
    pub fn profile(&self, index: u32, common: &Labels) -> Profile {
        let mut labels = common.clone();
        if self.sites > 0 && !labels.contains_key("site") {
            let site = (unit(index, SALT_SITE) * f64::from(self.sites)) as u32;
            labels.insert(
                "site".into(),
                format!("site-{:02}", site.min(self.sites - 1)),
            );
        }
        Profile {
            arch: self.archs.arch(index).to_string(),
            labels,
        }
    }

    /// Whether agent `index` is one of the offline share.
    pub fn offline(&self, index: u32) -> bool {
        self.offline_share > 0.0 && unit(index, SALT_OFFLINE) < self.offline_share
    }
}

/// How a rule's failure reads, which decides how the server counts it (`outcome::is_infrastructure`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FailureClass {
    /// The change is broken: a command the change runs exits 1.
    #[default]
    Change,
    /// Something around the change is: the content's source refuses connections.
    Infra,
}

impl FailureClass {
    /// The resource error a node reports.
    pub fn error(self) -> &'static str {
        match self {
            FailureClass::Change => "simulated failure: exit code 1: broken",
            FailureClass::Infra => {
                "simulated failure: dial tcp 10.0.0.1:5000: connect: connection refused"
            }
        }
    }
}

/// What a desired state must carry for a rule to fire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// A File's content (inline, or sent along with the update) contains this text.
    Content(String),
    /// A File's `sha256` starts with this (lowercase hex).
    Sha256(String),
}

impl Trigger {
    /// Whether a File with this inline content (or content sent along) and sha256 carries the marker.
    pub fn hits(&self, content: Option<&[u8]>, sha256: Option<&str>) -> bool {
        match self {
            Trigger::Content(text) => content.is_some_and(|c| {
                text.is_empty() || c.windows(text.len()).any(|w| w == text.as_bytes())
            }),
            Trigger::Sha256(prefix) => sha256.is_some_and(|s| s.starts_with(prefix.as_str())),
        }
    }
}

/// `--fail-when`: the nodes of one stratum report a File resource Failed when their desired state carries
/// a marker, e.g. `arch=aarch64,content=BAD` or `label:site=site-03,sha256=ab12,as=infra`. Strata
/// conditions (`arch=`, `label:KEY=`) must all hold; none: every node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailRule {
    pub arch: Option<String>,
    pub labels: Vec<(String, String)>,
    pub trigger: Trigger,
    pub class: FailureClass,
}

impl FromStr for FailRule {
    type Err = FaultError;

    fn from_str(s: &str) -> Result<Self, FaultError> {
        let bad = |why: &str| FaultError::Rule {
            rule: s.to_string(),
            why: why.to_string(),
        };
        let mut arch = None;
        let mut labels: Vec<(String, String)> = Vec::new();
        let mut trigger = None;
        let mut class = None;
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| bad(&format!("{part:?} is not KEY=VALUE")))?;
            let (key, value) = (key.trim(), value.trim());
            if value.is_empty() {
                return Err(bad(&format!("{key} needs a value")));
            }
            let twice = || bad(&format!("{key} is given twice"));
            match key {
                "arch" if arch.is_none() => arch = Some(value.to_string()),
                "content" | "sha256" if trigger.is_some() => {
                    return Err(bad("give one of content= and sha256="));
                }
                "content" => trigger = Some(Trigger::Content(value.to_string())),
                "sha256" if value.chars().all(|c| c.is_ascii_hexdigit()) => {
                    trigger = Some(Trigger::Sha256(value.to_ascii_lowercase()));
                }
                "sha256" => return Err(bad("sha256 takes hex digits (a prefix is enough)")),
                "as" if class.is_none() => {
                    class = Some(match value {
                        "change" => FailureClass::Change,
                        "infra" => FailureClass::Infra,
                        _ => return Err(bad("as is change or infra")),
                    });
                }
                "arch" | "as" => return Err(twice()),
                other => match other.strip_prefix("label:") {
                    Some(label) if drover_types::labels::validate_label(label, value).is_ok() => {
                        if labels.iter().any(|(k, _)| k == label) {
                            return Err(twice());
                        }
                        labels.push((label.to_string(), value.to_string()));
                    }
                    Some(_) => return Err(bad(&format!("{part:?} is not a valid label"))),
                    None => return Err(bad(&format!("unknown key {other:?}"))),
                },
            }
        }
        Ok(Self {
            arch,
            labels,
            trigger: trigger.ok_or_else(|| bad("give content=TEXT or sha256=HEX"))?,
            class: class.unwrap_or_default(),
        })
    }
}

impl fmt::Display for FailRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(a) = &self.arch {
            parts.push(format!("arch={a}"));
        }
        for (k, v) in &self.labels {
            parts.push(format!("label:{k}={v}"));
        }
        parts.push(match &self.trigger {
            Trigger::Content(t) => format!("content={t}"),
            Trigger::Sha256(h) => format!("sha256={h}"),
        });
        parts.push(
            match self.class {
                FailureClass::Change => "as=change",
                FailureClass::Infra => "as=infra",
            }
            .into(),
        );
        f.write_str(&parts.join(","))
    }
}

impl FailRule {
    /// Whether a node of this profile is in the rule's stratum.
    pub fn applies_to(&self, node: &Profile) -> bool {
        self.arch.as_ref().is_none_or(|a| *a == node.arch)
            && self
                .labels
                .iter()
                .all(|(k, v)| node.labels.get(k) == Some(v))
    }
}

/// The rules a node checks its desired states against: every rule's marker is noticed (to count the nodes
/// that received a marked revision), only those of the node's strata fail.
#[derive(Debug, Clone, Copy)]
pub struct Faults<'a> {
    pub rules: &'a [FailRule],
    /// `mine[i]`: the node is in `rules[i]`'s stratum.
    pub mine: &'a [bool],
}

impl Faults<'_> {
    /// No rules: every File is Ready.
    #[cfg(test)]
    pub const NONE: Faults<'static> = Faults {
        rules: &[],
        mine: &[],
    };

    /// For a File: whether it carries any rule's marker, and the failure when one of the node's own fires.
    pub fn check(
        &self,
        content: Option<&[u8]>,
        sha256: Option<&str>,
    ) -> (bool, Option<FailureClass>) {
        let mut marked = false;
        let mut fails = None;
        for (i, rule) in self.rules.iter().enumerate() {
            if rule.trigger.hits(content, sha256) {
                marked = true;
                if fails.is_none() && self.mine.get(i).copied().unwrap_or(false) {
                    fails = Some(rule.class);
                }
            }
        }
        (marked, fails)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_types::outcome::is_infrastructure;

    fn mix() -> ArchMix {
        DEFAULT_ARCH_MIX.parse().unwrap()
    }

    #[test]
    fn the_default_mix_is_about_3_percent_aarch64_2_percent_armv7_and_stable() {
        let m = mix();
        let n = 19_000u32;
        let count = |arch: &str| (0..n).filter(|&i| m.arch(i) == arch).count() as f64;
        let share = |arch: &str| count(arch) / f64::from(n);
        assert!(
            (share("aarch64") - 0.03).abs() < 0.005,
            "{}",
            share("aarch64")
        );
        assert!((share("armv7") - 0.02).abs() < 0.005, "{}", share("armv7"));
        assert!(
            (share("x86_64") - 0.95).abs() < 0.006,
            "{}",
            share("x86_64")
        );
        // Deterministic, and spread over the index range rather than in a block.
        assert_eq!(m.arch(1234), mix().arch(1234));
        let first_thousand = (0..1000).filter(|&i| m.arch(i) == "aarch64").count();
        assert!((15..=45).contains(&first_thousand), "{first_thousand}");
    }

    #[test]
    fn arch_mixes_parse_and_refuse_nonsense() {
        let m: ArchMix = "aarch64=50, riscv64=50%".parse().unwrap();
        assert!((0..200).all(|i| m.arch(i) != DEFAULT_ARCH));
        let all_x86: ArchMix = "".parse().unwrap();
        assert!((0..200).all(|i| all_x86.arch(i) == "x86_64"));
        let none: ArchMix = "aarch64=0%".parse().unwrap();
        assert!((0..200).all(|i| none.arch(i) == "x86_64"));
        for bad in [
            "aarch64",
            "aarch64=x",
            "=3%",
            "aarch64=-1",
            "a b=3",
            "aarch64=101",
        ] {
            assert!(bad.parse::<ArchMix>().is_err(), "{bad}");
        }
        let e = "aarch64=60,armv7=50".parse::<ArchMix>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "--arch-mix: the shares add up to 110.0 %, more than 100 %"
        );
    }

    #[test]
    fn profiles_add_a_site_unless_the_fleet_sets_one() {
        let strata = Strata::new(mix(), 8, 0.0).unwrap();
        let common: Labels = [("sim".to_string(), "1".to_string())].into();
        let sites: std::collections::BTreeSet<String> = (0..2000)
            .map(|i| strata.profile(i, &common).labels["site"].clone())
            .collect();
        assert_eq!(sites.len(), 8);
        assert!(sites.contains("site-00") && sites.contains("site-07"));
        let p = strata.profile(5, &common);
        assert_eq!(p.labels["sim"], "1");
        assert_eq!(p, strata.profile(5, &common));
        drover_types::labels::validate_labels(&p.labels).unwrap();

        let fixed: Labels = [("site".to_string(), "lab".to_string())].into();
        assert_eq!(strata.profile(5, &fixed).labels["site"], "lab");
        let no_sites = Strata::new(mix(), 0, 0.0).unwrap();
        assert!(!no_sites.profile(5, &common).labels.contains_key("site"));
    }

    #[test]
    fn the_offline_share_is_drawn_by_index_independently_of_the_arch() {
        let strata = Strata::new(mix(), 8, 0.02).unwrap();
        let offline: Vec<u32> = (0..19_000).filter(|&i| strata.offline(i)).collect();
        let share = offline.len() as f64 / 19_000.0;
        assert!((share - 0.02).abs() < 0.004, "{share}");
        assert_eq!(
            offline,
            (0..19_000)
                .filter(|&i| strata.offline(i))
                .collect::<Vec<_>>()
        );
        // Not all of one arch: about the fleet's mix.
        let x86 = offline
            .iter()
            .filter(|&&i| strata.archs.arch(i) == "x86_64")
            .count();
        assert!(x86 > offline.len() * 8 / 10, "{x86} of {}", offline.len());
        assert!(!(0..19_000).any(|i| Strata::new(mix(), 8, 0.0).unwrap().offline(i)));
        assert!((0..100).all(|i| Strata::new(mix(), 8, 1.0).unwrap().offline(i)));
        assert!(Strata::new(mix(), 8, 1.5).is_err());
        assert!(Strata::new(mix(), 8, -0.1).is_err());
    }

    #[test]
    fn fail_rules_parse_and_round_trip() {
        let r: FailRule = "arch=aarch64,content=BAD".parse().unwrap();
        assert_eq!(r.arch.as_deref(), Some("aarch64"));
        assert_eq!(r.trigger, Trigger::Content("BAD".into()));
        assert_eq!(r.class, FailureClass::Change);
        assert_eq!(r.to_string(), "arch=aarch64,content=BAD,as=change");

        let r: FailRule = "label:site=site-03, sha256=AB12 ,as=infra".parse().unwrap();
        assert_eq!(r.labels, [("site".to_string(), "site-03".to_string())]);
        assert_eq!(r.trigger, Trigger::Sha256("ab12".into()));
        assert_eq!(r.class, FailureClass::Infra);
        assert_eq!(r.to_string().parse::<FailRule>().unwrap(), r);

        let every: FailRule = "content=X".parse().unwrap();
        assert_eq!((every.arch, every.labels.len()), (None, 0));

        for bad in [
            "arch=aarch64",
            "content=a,sha256=ab",
            "arch=a,arch=b,content=x",
            "content=x,as=maybe",
            "content=x,as=change,as=infra",
            "sha256=xyz",
            "content=",
            "zone=a,content=x",
            "label:bad key=a,content=x",
            "label:k=a,label:k=b,content=x",
            "content",
        ] {
            let e = bad.parse::<FailRule>().unwrap_err().to_string();
            assert!(e.starts_with("--fail-when"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_rule_selects_its_stratum_and_every_rule_marks() {
        let strata = Strata::new(mix(), 8, 0.0).unwrap();
        let common = Labels::new();
        let aarch64: FailRule = "arch=aarch64,content=BAD".parse().unwrap();
        let site: FailRule = "label:site=site-03,arch=x86_64,content=NET,as=infra"
            .parse()
            .unwrap();
        let profiles: Vec<Profile> = (0..5000).map(|i| strata.profile(i, &common)).collect();
        let picked: Vec<&Profile> = profiles.iter().filter(|p| aarch64.applies_to(p)).collect();
        assert!(!picked.is_empty());
        assert!(picked.iter().all(|p| p.arch == "aarch64"));
        assert_eq!(
            picked.len(),
            profiles.iter().filter(|p| p.arch == "aarch64").count()
        );
        assert!(
            profiles
                .iter()
                .filter(|p| site.applies_to(p))
                .all(|p| p.labels["site"] == "site-03" && p.arch == "x86_64")
        );

        let rules = [aarch64, site];
        let mine = [true, false];
        let faults = Faults {
            rules: &rules,
            mine: &mine,
        };
        assert_eq!(
            faults.check(Some(b"v3 BAD\n"), None),
            (true, Some(FailureClass::Change))
        );
        assert_eq!(faults.check(Some(b"v3 NET\n"), None), (true, None));
        assert_eq!(faults.check(Some(b"v3 good\n"), None), (false, None));
        assert_eq!(faults.check(None, Some("abcd")), (false, None));
        let by_sha = ["sha256=abc".parse::<FailRule>().unwrap()];
        let f = Faults {
            rules: &by_sha,
            mine: &[true],
        };
        assert_eq!(
            f.check(None, Some("abcdef")),
            (true, Some(FailureClass::Change))
        );
        assert_eq!(f.check(None, Some("abd")), (false, None));
    }

    #[test]
    fn the_two_classes_read_as_the_server_counts_them() {
        assert!(!is_infrastructure(FailureClass::Change.error()));
        assert!(is_infrastructure(FailureClass::Infra.error()));
    }
}
