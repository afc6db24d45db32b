//! `roles:` → the [`PermissionTable`] that maps a token's roles to the permissions routes
//! require.

use std::collections::BTreeMap;

use super::error::{ConfigError, invalid};
use crate::pipeline::authorize::PermissionTable;

/// Compiles `roles:`: every permission name is checked, so a route's policy can only name a
/// permission some role grants — or, among `direct`, one an issuer's `prefix:` mapping can
/// produce ([`super::claims::direct_permissions`]).
pub(super) fn compile(
    roles: &BTreeMap<String, Vec<String>>,
    direct: &[String],
) -> Result<PermissionTable, ConfigError> {
    for (role, perms) in roles {
        for (j, p) in perms.iter().enumerate() {
            if !super::claims::is_permission_name(p) {
                return Err(invalid(
                    format!("roles.{role}[{j}]"),
                    format!("`{p}` is not a permission name (letters, digits and : . _ - / *)"),
                ));
            }
        }
    }
    Ok(PermissionTable::with_direct(
        roles.iter().map(|(r, p)| (r.as_str(), p.as_slice())),
        direct,
    ))
}
