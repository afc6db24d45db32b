//! The token profile of each `issuers[]` entry (`token_types`, `require_jti`, `clients`,
//! `subject_claim`, `permissions`, `identity_claims`) → [`TokenProfile`], and the checks
//! between it and the rest of the config: which permissions a `prefix:` mapping lets a route
//! require, the identity-claim headers against the other identity headers, and the warnings
//! for mappings that can never grant anything.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use http::HeaderName;

use super::error::{ConfigError, invalid};
use super::raw::{RawConfig, RawIssuer, RawPermissionSource, RawPolicy};
use crate::keys::profile::{ClaimPath, Mapping, PermissionSource, TokenProfile, TokenTypes};
use crate::pipeline::mutate::IdentityHeaders;

/// Something in the config that loads but is probably not what was meant: logged at load and
/// printed by `portcullis check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    /// Dotted path of the key.
    pub key: String,
    /// The line the key is written on, when it could be found.
    pub line: Option<usize>,
    /// What is odd about it.
    pub message: String,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)?;
        if let Some(line) = self.line {
            write!(f, " at line {line}")?;
        }
        Ok(())
    }
}

fn warning(key: String, message: impl Into<String>) -> ConfigWarning {
    ConfigWarning {
        key,
        line: None,
        message: message.into(),
    }
}

/// Whether `name` may be a permission name (the rule of `roles:`).
pub(super) fn is_permission_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(permission_byte)
}

fn permission_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b':' | b'.' | b'_' | b'-' | b'/' | b'*')
}

/// Compiles the profile of the issuer at `key` (`issuers[i]`).
pub(super) fn profile(key: &str, raw: &RawIssuer) -> Result<TokenProfile, ConfigError> {
    let mut profile = TokenProfile::default();
    if let Some(types) = &raw.token_types {
        profile.token_types =
            TokenTypes::parse(types).map_err(|m| invalid(format!("{key}.token_types"), m))?;
    }
    profile.require_jti = raw.require_jti.unwrap_or(true);
    if let Some(clients) = &raw.clients {
        if clients.is_empty() {
            return Err(invalid(
                format!("{key}.clients"),
                "lists no client (leave `clients` out to accept tokens of any client)",
            ));
        }
        if let Some(j) = clients.iter().position(String::is_empty) {
            return Err(invalid(format!("{key}.clients[{j}]"), "must not be empty"));
        }
        profile.clients = Some(clients.iter().map(|c| c.as_str().into()).collect());
    }
    if let Some(subject) = &raw.subject_claim {
        profile.subject_claim =
            ClaimPath::parse(subject).map_err(|m| invalid(format!("{key}.subject_claim"), m))?;
    }
    if let Some(sources) = &raw.permissions {
        profile.permissions = Some(permission_sources(key, sources)?);
    }
    let mut claims = Vec::with_capacity(raw.identity_claims.len());
    for (claim, header) in &raw.identity_claims {
        let ckey = format!("{key}.identity_claims.{claim}");
        let path = ClaimPath::parse(claim).map_err(|m| invalid(&ckey, m))?;
        let name = claim_header_name(&ckey, header)?;
        if claims
            .iter()
            .any(|(_, n): &(ClaimPath, HeaderName)| *n == name)
        {
            return Err(invalid(
                ckey,
                format!("`{header}` is the header of another claim of this issuer"),
            ));
        }
        claims.push((path, name));
    }
    profile.identity_claims = claims.into();
    Ok(profile)
}

/// An `identity_claims` header name: an identity header name (not reserved) that is none of
/// the headers the gateway writes or strips for another purpose.
fn claim_header_name(key: &str, name: &str) -> Result<HeaderName, ConfigError> {
    let parsed = super::mutate::identity_header_name(key, name)?;
    let n = parsed.as_str();
    let other_meaning = crate::pipeline::mutate::HOP_BY_HOP.contains(&n)
        || n.starts_with("x-forwarded-")
        || n.starts_with("content-")
        || matches!(
            n,
            "forwarded" | "x-real-ip" | "traceparent" | "tracestate" | "set-cookie" | "expect"
        );
    if other_meaning {
        return Err(invalid(
            key,
            format!("`{name}` is a header with another meaning"),
        ));
    }
    Ok(parsed)
}

/// Every header the issuers' `identity_claims` name, each once, after checking that none is an
/// identity header (`identity_headers:`) or a header an identity assertion goes in.
pub(super) fn claim_headers(
    issuers: &[RawIssuer],
    identity: &IdentityHeaders,
    assertion_headers: &[HeaderName],
) -> Result<Vec<HeaderName>, ConfigError> {
    let mut all: BTreeMap<String, HeaderName> = BTreeMap::new();
    for (i, issuer) in issuers.iter().enumerate() {
        for (claim, header) in &issuer.identity_claims {
            let key = format!("issuers[{i}].identity_claims.{claim}");
            let name = claim_header_name(&key, header)?;
            let same =
                |h: &HeaderName| h.as_str().replace('_', "-") == name.as_str().replace('_', "-");
            if [&identity.subject, &identity.session, &identity.permissions]
                .into_iter()
                .any(same)
            {
                return Err(invalid(
                    key,
                    format!("`{header}` is already an identity header (identity_headers)"),
                ));
            }
            if assertion_headers.iter().any(same) {
                return Err(invalid(
                    key,
                    format!("`{header}` is the header of an identity assertion"),
                ));
            }
            all.insert(name.as_str().to_owned(), name);
        }
    }
    Ok(all.into_values().collect())
}

/// The `permissions:` entries under `key` (an issuer's or a provider's) → how claims become
/// permissions: `via: roles` or `prefix:`, exactly one.
pub(super) fn permission_sources(
    key: &str,
    sources: &[RawPermissionSource],
) -> Result<Box<[PermissionSource]>, ConfigError> {
    let mut compiled = Vec::with_capacity(sources.len());
    for (j, s) in sources.iter().enumerate() {
        let skey = format!("{key}.permissions[{j}]");
        let claim = ClaimPath::parse(&s.claim).map_err(|m| invalid(format!("{skey}.claim"), m))?;
        let mapping = match (s.via.as_deref(), s.prefix.as_deref()) {
            (Some("roles"), None) => Mapping::Roles,
            (Some(other), None) => {
                return Err(invalid(
                    format!("{skey}.via"),
                    format!("`{other}` is not a mapping (the one is `roles`)"),
                ));
            }
            (None, Some(prefix)) => {
                if !prefix.bytes().all(permission_byte) {
                    return Err(invalid(
                        format!("{skey}.prefix"),
                        format!(
                            "`{prefix}` cannot start a permission name (letters, digits and : . _ - / *)"
                        ),
                    ));
                }
                Mapping::Prefix(prefix.into())
            }
            _ => {
                return Err(invalid(
                    skey,
                    "set exactly one of `via: roles` or `prefix:`",
                ));
            }
        };
        compiled.push(PermissionSource::new(claim, mapping));
    }
    Ok(compiled.into())
}

/// The permission names route policies require that no role grants but some issuer's
/// `prefix:` mapping can produce: these are interned next to the roles' permissions, so a
/// policy may name them and a token may carry them.
pub(super) fn direct_permissions(raw: &RawConfig) -> Vec<String> {
    let granted: BTreeSet<&str> = raw.roles.values().flatten().map(String::as_str).collect();
    let mut prefixes = prefixes(&raw.issuers);
    prefixes.extend(
        raw.auth
            .iter()
            .flat_map(|a| &a.providers)
            .flat_map(|p| &p.permissions)
            .filter_map(|s| s.prefix.as_deref()),
    );
    let mut direct: BTreeSet<String> = BTreeSet::new();
    for name in policy_permissions(raw) {
        if !granted.contains(name)
            && is_permission_name(name)
            && prefixes
                .iter()
                .any(|p| name.len() > p.len() && name.starts_with(p))
        {
            direct.insert(name.to_owned());
        }
    }
    direct.into_iter().collect()
}

fn prefixes(issuers: &[RawIssuer]) -> Vec<&str> {
    issuers
        .iter()
        .flat_map(|i| i.permissions.iter().flatten())
        .filter_map(|s| s.prefix.as_deref())
        .collect()
}

fn policy_permissions(raw: &RawConfig) -> impl Iterator<Item = &str> {
    raw.routes
        .iter()
        .flat_map(|r| match &r.policy {
            RawPolicy::AllOf(names) | RawPolicy::AnyOf(names) => names.as_slice(),
            RawPolicy::Public | RawPolicy::Authenticated => &[],
        })
        .map(String::as_str)
}

/// The warnings of the issuers' mappings: `via: roles` with no role defined, and a `prefix:`
/// that no route's policy could ever ask for.
pub(super) fn warnings(raw: &RawConfig) -> Vec<ConfigWarning> {
    let mut out = Vec::new();
    let required: Vec<&str> = policy_permissions(raw).collect();
    for (i, issuer) in raw.issuers.iter().enumerate() {
        for (j, s) in issuer.permissions.iter().flatten().enumerate() {
            let key = format!("issuers[{i}].permissions[{j}]");
            if s.via.is_some() && raw.roles.is_empty() {
                out.push(warning(
                    format!("{key}.via"),
                    "maps values through `roles:`, but no role is defined: it grants nothing",
                ));
            }
            if let Some(prefix) = &s.prefix
                && !required
                    .iter()
                    .any(|n| n.len() > prefix.len() && n.starts_with(prefix.as_str()))
            {
                out.push(warning(
                    format!("{key}.prefix"),
                    format!(
                        "no route's policy names a permission starting with `{prefix}`: this mapping can never grant one a route requires"
                    ),
                ));
            }
        }
    }
    out
}
