//! The names convergence puts on the wire: a resource's kind, a plan item's action, a condition's type.
//! Each is one enum, serialized as exactly the string it always was.
//!
//! All three travel from agents to the server (reports, dry runs) and on to clients, and the server keeps
//! reports as they came: a newer agent may send a name this build does not know. Today such a name is
//! taken and shown as is, so each enum keeps it, in `Other`, rather than failing the whole report. A
//! value is compared by its name: `Other("file")` equals [`ResourceKind::File`].

use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An enum of known names plus `Other(String)` for the rest, with the string conversions and the serde
/// form (the bare string) they all share.
macro_rules! open_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
            /// A name this build does not know (sent by a newer peer), kept as it came.
            Other(String),
        }

        impl $name {
            /// Every name this build knows.
            pub const KNOWN: &[$name] = &[$($name::$variant),+];

            /// The name as serialized.
            pub fn as_str(&self) -> &str {
                match self {
                    Self::Other(s) => s,
                    known => known.known_name().unwrap_or_default(),
                }
            }

            /// The name of a known value; `None` for `Other`.
            pub fn known_name(&self) -> Option<&'static str> {
                match self {
                    $(Self::$variant => Some($text),)+
                    Self::Other(_) => None,
                }
            }

            /// The value a name stands for (`Other` when this build does not know it); case-sensitive,
            /// as the wire is.
            pub fn parse(s: &str) -> Self {
                match s {
                    $($text => Self::$variant,)+
                    other => Self::Other(other.to_string()),
                }
            }

            pub fn is_known(&self) -> bool {
                !matches!(self, Self::Other(_))
            }
        }

        impl PartialEq for $name {
            fn eq(&self, other: &Self) -> bool {
                self.as_str() == other.as_str()
            }
        }

        impl Eq for $name {}

        impl Hash for $name {
            fn hash<H: Hasher>(&self, state: &mut H) {
                self.as_str().hash(state);
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = std::convert::Infallible;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Ok(Self::parse(s))
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self::parse(s)
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                match Self::parse(&s) {
                    Self::Other(_) => Self::Other(s),
                    known => known,
                }
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d).map(Self::from)
            }
        }
    };
}

open_enum! {
    /// What a resource is: the kind field a manifest gives it, as reports, dry runs and the agent's ledger
    /// name it. In an OpenAPI schema, a field of this type is a string (`schema(value_type = String)`).
    pub enum ResourceKind {
        File = "file",
        Container = "container",
        SystemdUnit = "systemd_unit",
        ShellJob = "shell_job",
        /// The agent could not tell: the resource gives no kind, several, or one it does not understand
        /// (also the kind of a conflicting id, which no single resource gives).
        Unknown = "unknown",
    }
}

impl ResourceKind {
    /// The kinds a resource may have, each with its reconciler on the agent.
    pub const RESOURCES: [ResourceKind; 4] = [
        ResourceKind::File,
        ResourceKind::Container,
        ResourceKind::SystemdUnit,
        ResourceKind::ShellJob,
    ];

    /// No kind at all, the empty string: the dry run of a desired state the agent could not read is one
    /// item about no resource.
    pub const NONE: ResourceKind = ResourceKind::Other(String::new());
}

open_enum! {
    /// What a dry run says a node would do about one resource. In an OpenAPI schema, a field of this type
    /// is a string (`schema(value_type = String)`).
    pub enum PlanAction {
        Create = "create",
        Update = "update",
        Delete = "delete",
        /// Nothing: the node matches already, or what no manifest wants is only forgotten (the agent did
        /// not create it).
        None = "none",
        /// The kind cannot plan it (or the desired state is unreadable, or in conflict).
        Fail = "fail",
        /// The node's policy, or a manifest signature it requires, refuses it.
        Refuse = "refuse",
    }
}

open_enum! {
    /// The type of a condition a node reports about its convergence. In an OpenAPI schema, a field of this
    /// type is a string (`schema(value_type = String)`).
    pub enum ConditionKind {
        /// Every resource is Ready.
        Ready = "Ready",
        /// Some resource is Pending or Reconciling.
        Reconciling = "Reconciling",
        /// Some resource failed, is refused, of an unknown kind or in conflict.
        Degraded = "Degraded",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_names_are_the_strings_on_the_wire_and_unknown_ones_come_back_as_they_went() {
        let names =
            |known: &[ResourceKind]| known.iter().map(|k| k.to_string()).collect::<Vec<_>>();
        assert_eq!(
            names(ResourceKind::KNOWN),
            ["file", "container", "systemd_unit", "shell_job", "unknown"]
        );
        assert_eq!(
            PlanAction::KNOWN
                .iter()
                .map(PlanAction::as_str)
                .collect::<Vec<_>>(),
            ["create", "update", "delete", "none", "fail", "refuse"]
        );
        assert_eq!(
            ConditionKind::KNOWN
                .iter()
                .map(ConditionKind::as_str)
                .collect::<Vec<_>>(),
            ["Ready", "Reconciling", "Degraded"]
        );
        for text in ["\"systemd_unit\"", "\"volume\"", "\"\""] {
            let kind: ResourceKind = serde_json::from_str(text).unwrap();
            assert_eq!(serde_json::to_string(&kind).unwrap(), text);
        }
        assert_eq!(
            serde_json::from_str::<PlanAction>("\"none\"").unwrap(),
            PlanAction::None
        );
        assert_eq!(
            serde_json::from_str::<ConditionKind>("\"Healthy\"").unwrap(),
            ConditionKind::Other("Healthy".into())
        );
        // Case matters, as it did when these were compared as strings.
        assert!(!ConditionKind::parse("ready").is_known());
        assert_eq!(ResourceKind::Other("file".into()), ResourceKind::File);
        assert_eq!(ResourceKind::NONE.as_str(), "");
        assert_eq!(ResourceKind::File.known_name(), Some("file"));
    }
}
