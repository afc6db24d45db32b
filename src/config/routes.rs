//! `routes:` → the [`Router`]: each route's host and path matcher, methods, upstream, policy,
//! body limit and identity assertion, checked against the upstreams and permissions compiled
//! before it.

use std::collections::BTreeSet;

use http::Method;

use super::error::{ConfigError, ContextError, invalid};
use super::raw::{RawPolicy, RawRoute, RawRouteAssertion};
use super::units::size;
use super::upstreams::{self, AssertionContext};
use crate::pipeline::assertion::{AssertionSpec, AudienceTable};
use crate::pipeline::authorize::{PermissionTable, Policy};
use crate::pipeline::normalize::normalize;
use crate::pipeline::route::{HostPattern, Route, Router};

/// What `routes:` is checked against: the sections compiled before it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Context<'a> {
    /// `upstreams:` names, in the order of the runtime's upstreams.
    pub(super) upstreams: &'a [String],
    /// `roles:`, which every permission a policy names must be granted by.
    pub(super) permissions: &'a PermissionTable,
    /// `limits.max_body`, for routes that set none.
    pub(super) default_max_body: u64,
    /// Whether any token can be verified (an issuer, or the gateway's own `auth:`): without
    /// one, a route that needs a token could never be passed.
    pub(super) tokens_verified: bool,
    /// Each upstream's assertion, in the order of `upstreams`: a route's unless it sets its own.
    pub(super) upstream_assertions: &'a [Option<AssertionSpec>],
    /// What a route's own `assertion:` is checked against.
    pub(super) assertion: AssertionContext<'a>,
}

/// Compiles `routes:` (at least one: unmatched requests are denied, so none would deny all);
/// the audiences of the routes' own assertions go into `table`.
pub(super) fn compile(
    raw: &[RawRoute],
    cx: Context<'_>,
    table: &mut AudienceTable,
) -> Result<Router, ConfigError> {
    let Context {
        upstreams,
        permissions,
        default_max_body,
        tokens_verified,
        upstream_assertions,
        assertion: assertion_cx,
    } = cx;
    if raw.is_empty() {
        return Err(invalid(
            "routes",
            "at least one route is required (unmatched requests are denied)",
        ));
    }
    let mut router = Router::default();
    let mut ids = BTreeSet::new();
    for (i, r) in raw.iter().enumerate() {
        let key = format!("routes[{i}]");
        let id = r.id.clone().unwrap_or_else(|| format!("route-{i}"));
        if !ids.insert(id.clone()) {
            return Err(invalid(
                format!("{key}.id"),
                format!("`{id}` is used by another route"),
            ));
        }
        let host =
            HostPattern::parse(r.host.as_deref()).map_err(|m| invalid(format!("{key}.host"), m))?;
        let normalized = normalize(&r.path).map_err(|e| {
            invalid(
                format!("{key}.path"),
                ContextError::new(format!("`{}`", r.path), e),
            )
        })?;
        let prefix = normalized.lower.trim_end_matches('/');
        if normalized.path.trim_end_matches('/') != r.path.trim_end_matches('/') {
            return Err(invalid(
                format!("{key}.path"),
                format!(
                    "`{}` is not in normal form; write `{}`",
                    r.path, normalized.path
                ),
            ));
        }
        let methods = match &r.methods {
            None => None,
            Some(list) if list.is_empty() => {
                return Err(invalid(
                    format!("{key}.methods"),
                    "an empty list would deny everything; omit it to allow all",
                ));
            }
            Some(list) => Some(
                list.iter()
                    .enumerate()
                    .map(|(j, m)| {
                        if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
                            return Err(invalid(
                                format!("{key}.methods[{j}]"),
                                format!("`{m}` is not an upper-case method name"),
                            ));
                        }
                        Method::from_bytes(m.as_bytes()).map_err(|_| {
                            invalid(
                                format!("{key}.methods[{j}]"),
                                format!("`{m}` is not a method"),
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        let upstream = match &r.upstream {
            None => None,
            Some(name) => Some(upstreams.iter().position(|n| n == name).ok_or_else(|| {
                invalid(
                    format!("{key}.upstream"),
                    format!("no upstream is named `{name}`"),
                )
            })?),
        };
        let policy = match &r.policy {
            RawPolicy::Public => Policy::Public,
            RawPolicy::Authenticated => Policy::Authenticated,
            RawPolicy::AllOf(names) | RawPolicy::AnyOf(names) => {
                let which = if matches!(r.policy, RawPolicy::AllOf(_)) {
                    "all_of"
                } else {
                    "any_of"
                };
                if names.is_empty() {
                    return Err(invalid(
                        format!("{key}.policy.{which}"),
                        "lists no permission",
                    ));
                }
                let set = permissions.set_of(names).map_err(|missing| {
                    let j = names.iter().position(|n| n == missing).unwrap_or(0);
                    invalid(
                        format!("{key}.policy.{which}[{j}]"),
                        format!(
                            "no role grants the permission `{missing}`, nor can an issuer's `prefix:` mapping produce it"
                        ),
                    )
                })?;
                if which == "all_of" {
                    Policy::AllOf(set)
                } else {
                    Policy::AnyOf(set)
                }
            }
        };
        if !matches!(policy, Policy::Public) && !tokens_verified {
            return Err(invalid(
                format!("{key}.policy"),
                "requires a token, but no issuer is configured",
            ));
        }
        let assertion = match &r.assertion {
            None => upstream.and_then(|u| upstream_assertions.get(u).cloned().flatten()),
            Some(RawRouteAssertion::Off) => None,
            Some(RawRouteAssertion::On(_)) if matches!(policy, Policy::Public) => {
                return Err(invalid(
                    format!("{key}.assertion"),
                    "a public route has no identity to assert",
                ));
            }
            Some(RawRouteAssertion::On(a)) => Some(upstreams::assertion(
                &format!("{key}.assertion"),
                a,
                assertion_cx,
                table,
            )?),
        };
        let route = Route {
            counters: std::sync::Arc::new(crate::metrics::RouteCounters::new(&id)),
            id: id.as_str().into(),
            prefix: prefix.into(),
            methods,
            upstream,
            policy,
            max_body: size(
                &format!("{key}.max_body"),
                r.max_body.as_ref(),
                default_max_body,
            )?,
            forward_authorization: r.forward_authorization.unwrap_or(false),
            websocket: r.websocket.unwrap_or(true),
            audit: r.audit.unwrap_or(false),
            assertion,
        };
        router.add(host, route).map_err(|m| invalid(&key, m))?;
    }
    Ok(router)
}

/// With `auth:` configured, no route may take a path the login flow answers.
pub(super) fn outside_login_flow(raw: &[RawRoute]) -> Result<(), ConfigError> {
    for (i, r) in raw.iter().enumerate() {
        let p = r.path.to_ascii_lowercase();
        if crate::auth_flow::owns(p.trim_end_matches('/')) {
            return Err(invalid(
                format!("routes[{i}].path"),
                format!(
                    "`{}` belongs to the login flow (`auth:` is configured)",
                    r.path
                ),
            ));
        }
    }
    Ok(())
}
