//! `forward_auth:` → the [`ForwardAuth`] endpoints: each one's contract, path, trusted peers
//! and login URL, checked against the login flow's paths and each other.

use std::sync::Arc;

use super::auth;
use super::error::{ConfigError, invalid};
use super::mutate::trusted_proxies;
use super::raw::{RawForwardAuth, RawRoute};
use crate::metrics::ForwardAuthCounters;
use crate::net::IpNet;
use crate::pipeline::forward_auth::{Contract, Endpoint, ForwardAuth};
use crate::pipeline::normalize;

/// Compiles `forward_auth:`. `trusted` is the top-level `trusted_proxies`, the default list of
/// who may ask; `login_url` the top-level one.
pub(super) fn compile(
    raw: &[RawForwardAuth],
    routes: &[RawRoute],
    trusted: &[IpNet],
    login_url: Option<&str>,
) -> Result<ForwardAuth, ConfigError> {
    let mut endpoints: Vec<Endpoint> = Vec::with_capacity(raw.len());
    for (i, r) in raw.iter().enumerate() {
        let key = format!("forward_auth[{i}]");
        let contract = match r.contract.as_str() {
            "nginx" => Contract::Nginx,
            "forwarded" => Contract::Forwarded,
            "envoy" => Contract::Envoy,
            other => {
                return Err(invalid(
                    format!("{key}.contract"),
                    format!("`{other}` is not one of nginx, forwarded, envoy"),
                ));
            }
        };
        let path = r
            .path
            .as_deref()
            .unwrap_or(contract.default_path())
            .to_owned();
        let normalized = normalize::normalize(&path).ok().map(|p| p.path);
        if normalized.as_deref() != Some(path.as_str()) || path == "/" || path.ends_with('/') {
            return Err(invalid(
                format!("{key}.path"),
                format!("`{path}` is not a normalized absolute path like /_portcullis/nginx"),
            ));
        }
        if crate::auth_flow::owns(&path) {
            return Err(invalid(
                format!("{key}.path"),
                format!("`{path}` belongs to the login flow"),
            ));
        }
        if let Some(other) = endpoints
            .iter()
            .find(|e| nested(&e.path, &path) || nested(&path, &e.path))
        {
            return Err(invalid(
                format!("{key}.path"),
                format!("`{path}` overlaps the endpoint `{}`", other.path),
            ));
        }
        // Endpoints are matched before the route table: a route below one would never match.
        if let Some(j) = routes
            .iter()
            .position(|route| nested(&path, route.path.trim_end_matches('/')))
        {
            return Err(invalid(
                format!("routes[{j}].path"),
                format!(
                    "`{}` is below the forward-auth endpoint `{path}`",
                    routes[j].path
                ),
            ));
        }
        let trusted = match &r.trusted_proxies {
            Some(list) => trusted_proxies(list).map_err(|e| e.within(&key))?,
            None => trusted.to_vec(),
        };
        if trusted.is_empty() {
            return Err(invalid(
                format!("{key}.trusted_proxies"),
                "lists no peer: set it (or the top-level trusted_proxies) to the front proxy's \
                 addresses; forward-auth trusts no one by default",
            ));
        }
        auth::login_url(r.login_url.as_deref()).map_err(|e| e.within(&key))?;
        endpoints.push(Endpoint {
            counters: Arc::new(ForwardAuthCounters::new(&path)),
            path: path.into(),
            contract,
            trusted,
            login_url: r.login_url.clone().or(login_url.map(str::to_owned)),
        });
    }
    Ok(ForwardAuth { endpoints })
}

/// An endpoint that takes the top-level `trusted_proxies` while the gateway also proxies
/// requests: that list says whose `X-Forwarded-For` is believed, and a load balancer in it
/// would let every client behind it ask for decisions (and get identity assertions) by
/// sending its own `X-Original-*` headers. Loads, but is probably not what was meant.
pub(super) fn warnings(raw: &super::raw::RawConfig) -> Vec<super::claims::ConfigWarning> {
    let proxies = raw.routes.iter().any(|route| route.upstream.is_some());
    raw.forward_auth
        .iter()
        .enumerate()
        .filter(|(_, endpoint)| proxies && endpoint.trusted_proxies.is_none())
        .map(|(i, _)| super::claims::ConfigWarning {
            key: format!("forward_auth[{i}].trusted_proxies"),
            line: None,
            message: "not set: the endpoint trusts every peer of the top-level trusted_proxies, \
                      while this gateway also proxies requests; if one of those peers is a load \
                      balancer in front of it, clients behind it can ask for decisions. List \
                      the front proxy's addresses here"
                .into(),
        })
        .collect()
}

/// Whether `inner` is `outer` or below it.
fn nested(outer: &str, inner: &str) -> bool {
    inner == outer
        || inner
            .strip_prefix(outer)
            .is_some_and(|rest| rest.starts_with('/'))
}
