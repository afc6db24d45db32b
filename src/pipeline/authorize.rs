//! Stage 5, **authorize**: the route's policy against the identity's permissions.
//!
//! Runs after the session stage accepted the token, for every non-public route. `Ok` means the
//! request may be forwarded; `Err(Forbidden)` is a 403. Checks are on permissions, never on role
//! names: roles are mapped to permissions through `roles:` when a token is first verified.
//! Permissions are interned to bit positions when the config is compiled, so a check is a few
//! word operations and allocates nothing.

use std::collections::HashMap;

use http::HeaderValue;

/// A set of permissions as a bitset over the config's interned permission names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PermissionSet(Box<[u64]>);

impl PermissionSet {
    fn with_capacity(bits: usize) -> Self {
        Self(vec![0; bits.div_ceil(64)].into_boxed_slice())
    }

    fn insert(&mut self, bit: usize) {
        self.0[bit / 64] |= 1 << (bit % 64);
    }

    fn union_with(&mut self, other: &PermissionSet) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a |= *b;
        }
    }

    /// Whether every permission of `required` is in `self`.
    pub fn contains_all(&self, required: &PermissionSet) -> bool {
        required
            .0
            .iter()
            .enumerate()
            .all(|(i, r)| self.0.get(i).copied().unwrap_or(0) & r == *r)
    }

    /// Whether `self` and `wanted` share a permission.
    pub fn contains_any(&self, wanted: &PermissionSet) -> bool {
        wanted
            .0
            .iter()
            .enumerate()
            .any(|(i, w)| self.0.get(i).copied().unwrap_or(0) & w != 0)
    }

    fn bits(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().enumerate().flat_map(|(word, bits)| {
            (0..64)
                .filter(move |b| bits & (1 << b) != 0)
                .map(move |b| word * 64 + b)
        })
    }
}

/// Role → permissions, with permission names interned.
#[derive(Debug, Default)]
pub struct PermissionTable {
    names: Vec<Box<str>>,
    index: HashMap<Box<str>, usize>,
    roles: HashMap<Box<str>, PermissionSet>,
}

impl PermissionTable {
    /// Compiles `roles:`. Permission names are interned in sorted order so that the header the
    /// upstream sees lists them sorted.
    pub fn new<'a>(roles: impl IntoIterator<Item = (&'a str, &'a [String])> + Clone) -> Self {
        Self::with_direct(roles, &[])
    }

    /// Compiles `roles:` and the permissions no role grants that a token may carry directly
    /// (through an issuer's `prefix:` mapping) and a route's policy names: those are interned
    /// too, so a policy can require them and a token's claims can set them.
    pub fn with_direct<'a>(
        roles: impl IntoIterator<Item = (&'a str, &'a [String])> + Clone,
        direct: &[String],
    ) -> Self {
        let mut names: Vec<Box<str>> = roles
            .clone()
            .into_iter()
            .flat_map(|(_, perms)| perms.iter().map(|p| p.as_str().into()))
            .chain(direct.iter().map(|p| p.as_str().into()))
            .collect();
        names.sort();
        names.dedup();
        let index: HashMap<Box<str>, usize> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i))
            .collect();
        let mut table = Self {
            names,
            index,
            roles: HashMap::new(),
        };
        for (role, perms) in roles {
            let mut set = PermissionSet::with_capacity(table.names.len());
            for p in perms {
                set.insert(table.index[p.as_str()]);
            }
            table.roles.insert(role.into(), set);
        }
        table
    }

    /// The set for a list of permission names, or the first name no role grants.
    pub fn set_of<'a>(&self, names: &'a [String]) -> Result<PermissionSet, &'a str> {
        let mut set = PermissionSet::with_capacity(self.names.len());
        for name in names {
            set.insert(*self.index.get(name.as_str()).ok_or(name.as_str())?);
        }
        Ok(set)
    }

    /// The union of the permissions of `roles`; unknown roles grant nothing.
    pub fn resolve<'a>(&self, roles: impl IntoIterator<Item = &'a str>) -> PermissionSet {
        let mut set = PermissionSet::with_capacity(self.names.len());
        for role in roles {
            if let Some(perms) = self.roles.get(role) {
                set.union_with(perms);
            }
        }
        set
    }

    /// What `roles` grant under this table: the permission set authorize checks and the header
    /// the upstream receives. The one place role names become permissions, for the roles a
    /// token claims ([`crate::pipeline::verify`]) and for a user's roles in the users file
    /// ([`crate::pipeline::identify`]).
    pub fn grant<'a>(&self, roles: impl IntoIterator<Item = &'a str>) -> Grant {
        let permissions = self.resolve(roles);
        let permissions_header = self.header_value(&permissions);
        Grant {
            permissions,
            permissions_header,
        }
    }

    /// An empty set sized for this table, to fill with [`add_role`] and [`add_permission`].
    ///
    /// [`add_role`]: PermissionTable::add_role
    /// [`add_permission`]: PermissionTable::add_permission
    pub fn empty_set(&self) -> PermissionSet {
        PermissionSet::with_capacity(self.names.len())
    }

    /// Adds the permissions of `role` to `set`; an unknown role adds nothing.
    pub fn add_role(&self, set: &mut PermissionSet, role: &str) {
        if let Some(perms) = self.roles.get(role) {
            set.union_with(perms);
        }
    }

    /// Adds the permission `name` to `set` when the config knows it (a role grants it or a
    /// route requires it); an unknown name adds nothing, since no route could ask for it.
    pub fn add_permission(&self, set: &mut PermissionSet, name: &str) {
        if let Some(&bit) = self.index.get(name) {
            set.insert(bit);
        }
    }

    /// Whether any role is defined.
    pub fn has_roles(&self) -> bool {
        !self.roles.is_empty()
    }

    /// `set` with the header that lists it.
    pub fn grant_of(&self, set: PermissionSet) -> Grant {
        let permissions_header = self.header_value(&set);
        Grant {
            permissions: set,
            permissions_header,
        }
    }

    /// The permissions of `set`, sorted and comma-separated, for the upstream.
    pub fn header_value(&self, set: &PermissionSet) -> HeaderValue {
        let joined = set
            .bits()
            .map(|b| &*self.names[b])
            .collect::<Vec<_>>()
            .join(",");
        // Permission names were validated as header-safe when the config was compiled.
        HeaderValue::from_str(&joined).unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

/// A set of permissions and the header that lists them, compiled once per token or per user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The permissions.
    pub permissions: PermissionSet,
    /// The same, sorted and comma-separated, as the upstream receives them.
    pub permissions_header: HeaderValue,
}

/// A route's compiled policy.
#[derive(Debug, Clone)]
pub enum Policy {
    /// No credential is read; identity headers are still stripped.
    Public,
    /// Any valid token with a live session.
    Authenticated,
    /// Every permission of the set.
    AllOf(PermissionSet),
    /// At least one permission of the set.
    AnyOf(PermissionSet),
}

/// The identity lacks a permission the route requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("insufficient permissions")]
pub struct Forbidden;

/// The stage's entry point.
pub fn authorize(policy: &Policy, granted: &PermissionSet) -> Result<(), Forbidden> {
    let allowed = match policy {
        Policy::Public | Policy::Authenticated => true,
        Policy::AllOf(required) => granted.contains_all(required),
        Policy::AnyOf(wanted) => granted.contains_any(wanted),
    };
    if allowed { Ok(()) } else { Err(Forbidden) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> PermissionTable {
        let reader = vec!["docs:read".to_string()];
        let editor = vec!["docs:read".to_string(), "docs:write".to_string()];
        let admin = vec!["admin".to_string()];
        PermissionTable::new([
            ("reader", reader.as_slice()),
            ("editor", editor.as_slice()),
            ("admin", admin.as_slice()),
        ])
    }

    #[test]
    fn all_of_needs_every_permission_and_any_of_needs_one() {
        let t = table();
        let reader = t.resolve(["reader"]);
        let all = Policy::AllOf(
            t.set_of(&["docs:read".into(), "docs:write".into()])
                .unwrap(),
        );
        let any = Policy::AnyOf(
            t.set_of(&["docs:write".into(), "docs:read".into()])
                .unwrap(),
        );
        assert_eq!(authorize(&all, &reader), Err(Forbidden));
        assert_eq!(authorize(&any, &reader), Ok(()));
        assert_eq!(authorize(&all, &t.resolve(["editor"])), Ok(()));
        assert_eq!(authorize(&any, &t.resolve(["admin"])), Err(Forbidden));
        assert_eq!(
            authorize(&any, &t.resolve(["no-such-role"])),
            Err(Forbidden)
        );
    }

    #[test]
    fn role_names_are_not_permissions() {
        let t = table();
        // A role called "admin" grants the permission "admin"; the role "reader" is not one.
        assert!(t.set_of(&["reader".into()]).is_err());
    }

    #[test]
    fn header_lists_permissions_sorted() {
        let t = table();
        let set = t.resolve(["editor", "admin"]);
        assert_eq!(t.header_value(&set), "admin,docs:read,docs:write");
    }

    #[test]
    fn direct_permissions_are_interned_and_set_by_name_only_when_known() {
        let reader = vec!["docs:read".to_string()];
        let t = PermissionTable::with_direct(
            [("reader", reader.as_slice())],
            &["scope:documents.read".to_string()],
        );
        let mut set = t.empty_set();
        t.add_permission(&mut set, "scope:documents.read");
        t.add_permission(&mut set, "scope:unknown");
        t.add_role(&mut set, "reader");
        t.add_role(&mut set, "nobody");
        let grant = t.grant_of(set);
        assert_eq!(grant.permissions_header, "docs:read,scope:documents.read");
        let required = t.set_of(&["scope:documents.read".into()]).unwrap();
        assert!(grant.permissions.contains_all(&required));
    }
}
