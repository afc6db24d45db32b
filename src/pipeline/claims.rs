//! Part of the verify stage: a verified token's claims, read through its issuer's profile
//! ([`crate::keys::profile`]), become its permissions and its extra identity headers. Runs
//! once per token, when it is first verified; the result is cached with the token, so a
//! request never walks claims.
//!
//! Nothing here refuses a token: a claim that is absent, of another type, or whose values are
//! not strings grants nothing (a debug line says so), and an identity claim that is not a
//! plain string fit for a header is left out. Permissions only ever come from the config's
//! names: a role maps through `roles:`, a prefixed value counts only when the config names
//! that permission (a role grants it or a route requires it).

use http::{HeaderName, HeaderValue};
use serde_json::{Map, Value};

use crate::keys::profile::{Mapping, PermissionSource, claim_values};
use crate::pipeline::authorize::{Grant, PermissionTable};
use crate::pipeline::verify::is_plain_identifier;

/// Longest identity-claim value forwarded as a header.
pub const MAX_IDENTITY_CLAIM: usize = 1024;

/// What the `sources` of an issuer's `permissions:` grant for `claims`, under `table`.
pub fn grant(
    claims: &Map<String, Value>,
    sources: &[PermissionSource],
    table: &PermissionTable,
) -> Grant {
    let mut set = table.empty_set();
    let mut ignored = 0;
    let mut name = String::new();
    for source in sources {
        let Some(value) = source.claim.find(claims) else {
            continue;
        };
        for v in claim_values(value, source.space_separated, &mut ignored) {
            match &source.mapping {
                Mapping::Roles => table.add_role(&mut set, v),
                Mapping::Prefix(prefix) => {
                    name.clear();
                    name.push_str(prefix);
                    name.push_str(v);
                    table.add_permission(&mut set, &name);
                }
            }
        }
    }
    if ignored > 0 {
        tracing::debug!(
            ignored,
            "claim values that are not strings were ignored for permissions"
        );
    }
    table.grant_of(set)
}

/// The extra identity headers `mapped` names, from the string claims of `claims` that read the
/// same to every parser ([`is_plain_identifier`]) and fit a header; others are left out.
pub fn identity_headers(
    claims: &Map<String, Value>,
    mapped: &[(crate::keys::profile::ClaimPath, HeaderName)],
) -> Box<[(HeaderName, HeaderValue)]> {
    mapped
        .iter()
        .filter_map(|(path, header)| {
            let value = path.find(claims)?;
            let fit = value
                .as_str()
                .filter(|s| s.len() <= MAX_IDENTITY_CLAIM && is_plain_identifier(s))
                .and_then(|s| HeaderValue::from_str(s).ok());
            if fit.is_none() {
                tracing::debug!(claim = %path, "identity claim is not a plain string; not forwarded");
            }
            Some((header.clone(), fit?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::profile::ClaimPath;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn roles_and_prefixed_values_grant_only_what_the_config_names() {
        let editor = vec!["docs:write".to_string()];
        let table = PermissionTable::with_direct(
            [("editor", editor.as_slice())],
            &["scope:documents.read".to_string()],
        );
        let sources = [
            PermissionSource::new(
                ClaimPath::parse("realm_access.roles").unwrap(),
                Mapping::Roles,
            ),
            PermissionSource::new(ClaimPath::top("scope"), Mapping::Prefix("scope:".into())),
        ];
        let claims = obj(json!({
            "realm_access": { "roles": ["editor", "nobody", 7] },
            "scope": "openid documents.read documents.delete",
        }));
        let g = grant(&claims, &sources, &table);
        assert_eq!(g.permissions_header, "docs:write,scope:documents.read");
        let odd = obj(json!({ "realm_access": { "roles": "editor" }, "scope": ["x"] }));
        assert_eq!(
            grant(&odd, &sources, &table).permissions_header,
            "docs:write"
        );
        let none = obj(json!({ "realm_access": 3, "scope": { "a": 1 } }));
        assert_eq!(grant(&none, &sources, &table).permissions_header, "");
    }

    #[test]
    fn identity_claims_keep_plain_strings_only() {
        let mapped = [
            (
                ClaimPath::top("email"),
                HeaderName::from_static("x-auth-email"),
            ),
            (
                ClaimPath::top("name"),
                HeaderName::from_static("x-auth-name"),
            ),
            (ClaimPath::top("n"), HeaderName::from_static("x-auth-n")),
            (
                ClaimPath::top("missing"),
                HeaderName::from_static("x-auth-m"),
            ),
        ];
        let claims = obj(json!({ "email": "a@b.example", "name": "evil\r\nx: y", "n": 5 }));
        let headers = identity_headers(&claims, &mapped);
        assert_eq!(headers.len(), 1);
        assert_eq!(headers[0].0, "x-auth-email");
        assert_eq!(headers[0].1, "a@b.example");
    }
}
