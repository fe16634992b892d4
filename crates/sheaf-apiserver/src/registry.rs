//! The served kinds, looked up by URL, and where their objects live in the
//! store.
//!
//! Store keys: `/registry/<group or "core">/<plural>/<namespace>/<name>` for
//! namespaced kinds and `/registry/<group or "core">/<plural>/<name>` for
//! cluster-scoped ones.

use sheaf_types::ResourceType;

#[derive(Debug, Clone)]
pub struct Registry {
    types: Vec<ResourceType>,
}

/// An API group with its versions, in discovery order.
#[derive(Debug, Clone)]
pub struct Group {
    pub name: &'static str,
    pub versions: Vec<&'static str>,
}

impl Registry {
    pub fn new(types: Vec<ResourceType>) -> Self {
        Registry { types }
    }

    pub fn all(&self) -> &[ResourceType] {
        &self.types
    }

    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceType> {
        self.types.iter().find(|t| t.group == group && t.version == version && t.plural == plural)
    }

    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<&ResourceType> {
        self.types.iter().find(|t| t.api_version() == api_version && t.kind == kind)
    }

    pub fn in_group_version<'a>(
        &'a self,
        group: &'a str,
        version: &'a str,
    ) -> impl Iterator<Item = &'a ResourceType> + 'a {
        self.types.iter().filter(move |t| t.group == group && t.version == version)
    }

    /// Named groups (not the core group), in registration order.
    pub fn groups(&self) -> Vec<Group> {
        let mut out: Vec<Group> = Vec::new();
        for t in self.types.iter().filter(|t| !t.group.is_empty()) {
            match out.iter_mut().find(|g| g.name == t.group) {
                Some(g) => {
                    if !g.versions.contains(&t.version) {
                        g.versions.push(t.version);
                    }
                }
                None => out.push(Group { name: t.group, versions: vec![t.version] }),
            }
        }
        out
    }
}

fn group_dir(rt: &ResourceType) -> &'static str {
    if rt.group.is_empty() {
        "core"
    } else {
        rt.group
    }
}

/// The store key of one object.
pub fn object_key(rt: &ResourceType, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) if rt.namespaced => format!("/registry/{}/{}/{}/{}", group_dir(rt), rt.plural, ns, name),
        _ => format!("/registry/{}/{}/{}", group_dir(rt), rt.plural, name),
    }
}

/// The key prefix of a collection: one namespace, or all of them.
pub fn collection_prefix(rt: &ResourceType, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) if rt.namespaced => format!("/registry/{}/{}/{}/", group_dir(rt), rt.plural, ns),
        _ => format!("/registry/{}/{}/", group_dir(rt), rt.plural),
    }
}
