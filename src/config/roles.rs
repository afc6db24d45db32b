//! `roles:` → the [`PermissionTable`] that maps a token's roles to the permissions routes
//! require.

use std::collections::BTreeMap;

use super::error::{ConfigError, invalid};
use crate::pipeline::authorize::PermissionTable;

/// Compiles `roles:`: every permission name is checked, so a route's policy can only name a
/// permission some role grants.
pub(super) fn compile(
    roles: &BTreeMap<String, Vec<String>>,
) -> Result<PermissionTable, ConfigError> {
    for (role, perms) in roles {
        for (j, p) in perms.iter().enumerate() {
            if p.is_empty()
                || !p.bytes().all(|b| {
                    b.is_ascii_alphanumeric()
                        || matches!(b, b':' | b'.' | b'_' | b'-' | b'/' | b'*')
                })
            {
                return Err(invalid(
                    format!("roles.{role}[{j}]"),
                    format!("`{p}` is not a permission name (letters, digits and : . _ - / *)"),
                ));
            }
        }
    }
    Ok(PermissionTable::new(
        roles.iter().map(|(r, p)| (r.as_str(), p.as_slice())),
    ))
}
