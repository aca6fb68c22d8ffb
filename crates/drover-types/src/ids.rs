//! Ids as types: a node's id and a task's id are both strings on the wire, and a function taking one
//! should not take the other. Each serializes as the bare string (`serde(transparent)`), so a body using
//! one is the same JSON as with a `String`.
//!
//! In an OpenAPI schema, a field of one of these is a string: mark it `#[schema(value_type = String)]`
//! (they derive no schema of their own, which would turn the field into a reference).

use std::borrow::Borrow;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A string id as a newtype, with the conversions both ids share.
macro_rules! string_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn new(id: impl Into<String>) -> Self {
                Self(id.into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        // Lets a map keyed by the id be looked up with a `&str`.
        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl From<String> for $name {
            fn from(id: String) -> Self {
                Self(id)
            }
        }

        impl From<&str> for $name {
            fn from(id: &str) -> Self {
                Self(id.to_string())
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> Self {
                id.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

string_id! {
    /// A node's id, as the server gave it when the node enrolled or registered (not its name).
    NodeId
}

string_id! {
    /// A task's id, as the server gave it when the task was created.
    TaskId
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn an_id_is_its_string_on_the_wire_and_as_a_key() {
        let node = NodeId::from("n-1");
        assert_eq!(serde_json::to_string(&node).unwrap(), "\"n-1\"");
        assert_eq!(serde_json::from_str::<NodeId>("\"n-1\"").unwrap(), node);
        assert_eq!(node.to_string(), "n-1");
        assert_eq!(node, "n-1");
        let tasks: HashMap<TaskId, u32> = [(TaskId::new("t-1"), 1)].into();
        assert_eq!(tasks.get("t-1"), Some(&1));
        assert_eq!(String::from(TaskId::new("t-1")), "t-1");
    }
}
