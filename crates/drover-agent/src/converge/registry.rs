//! The table of every kind this agent knows. Apart from [`reconciler`](super::reconciler) because the kinds
//! implement the reconciler trait: the table naming them beside it would make the two import each other.

use drover_types::manifest::{Resource, ResourceKind};

use super::container::ContainerKind;
use super::file::FileKind;
use super::reconciler::{AnyKind, ConvergeError};
use super::shell_job::ShellJobKind;
use super::unit::UnitKind;

/// Every kind this agent knows, by name: the one table dispatch and garbage collection both use.
pub struct Registry {
    kinds: Vec<Box<dyn AnyKind>>,
}

impl Registry {
    pub fn new() -> Self {
        Self {
            kinds: vec![
                Box::new(FileKind),
                Box::new(ContainerKind),
                Box::new(UnitKind),
                Box::new(ShellJobKind),
            ],
        }
    }

    pub fn get(&self, kind: &ResourceKind) -> Option<&dyn AnyKind> {
        self.kinds
            .iter()
            .find(|k| k.name() == *kind)
            .map(|k| k.as_ref())
    }

    /// The kind for a resource; `NoKind` when this agent has none.
    pub fn for_resource(&self, resource: &Resource) -> Result<&dyn AnyKind, ConvergeError> {
        let kind = resource.resource_kind();
        self.get(&kind).ok_or(ConvergeError::NoKind(kind))
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_knows_every_kind_the_policy_names() {
        let registry = Registry::new();
        for kind in ResourceKind::RESOURCES {
            assert_eq!(registry.get(&kind).map(|k| k.name()), Some(kind));
        }
        assert!(registry.get(&ResourceKind::parse("volume")).is_none());
        assert!(registry.get(&ResourceKind::Unknown).is_none());
    }
}
