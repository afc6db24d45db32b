//! Stage 1, **route**: host + normalized path + method → the one [`Route`] that applies.
//!
//! Runs first, before any credential is looked at. `Ok` is the most specific matching route;
//! `Err` is a denial (404 for no match, 405 for a method the matching rule does not list).
//! Specificity, independent of the order routes are written in:
//! 1. host: an exact host beats `*.suffix` (longer suffix first), which beats routes with no host;
//! 2. within the first host tier that has a matching path, the longest segment-wise prefix wins
//!    (`/api` matches `/api` and `/api/x`, never `/apix`), compared case-insensitively;
//! 3. at that prefix, a route that lists the method beats one that allows every method.
//!
//! When the winning prefix has no route allowing the method, the request is refused (405)
//! rather than handed to a shorter, possibly public, prefix: an unlisted method is denied.
//! Lookup walks one trie node per path segment and a hash lookup per host label, so its cost
//! does not grow with the number of routes.

use std::collections::HashMap;
use std::sync::Arc;

use http::Method;

use crate::metrics::{Metrics, RouteCounters};
use crate::pipeline::authorize::Policy;

/// A compiled route.
#[derive(Debug)]
pub struct Route {
    /// Stable name for logs and audit.
    pub id: Box<str>,
    /// The path prefix as configured (lower-case, normalized).
    pub prefix: Box<str>,
    /// Allowed methods; `None` allows every method.
    pub methods: Option<Vec<Method>>,
    /// Index into the runtime's upstreams; `None` for a route only decided for forward-auth
    /// (a proxied request to it is answered 404).
    pub upstream: Option<usize>,
    /// Who may pass.
    pub policy: Policy,
    /// Largest request body.
    pub max_body: u64,
    /// Whether the client's `Authorization` header is passed on.
    pub forward_authorization: bool,
    /// Whether a well-formed WebSocket handshake is forwarded as one (`websocket`, default
    /// on); off, its `Upgrade` is removed and it goes upstream as a plain request.
    pub websocket: bool,
    /// Audit every request let through (`access.granted`).
    pub audit: bool,
    /// The signed identity assertion its upstream receives (the route's own setting, else
    /// the upstream's); `None`: none.
    pub assertion: Option<crate::pipeline::assertion::AssertionSpec>,
    /// This route's response counters: its own until a gateway adopts the runtime, then the
    /// gateway's for this id (shared by every config generation with this id).
    pub counters: Arc<RouteCounters>,
}

impl Route {
    fn allows(&self, method: &Method) -> bool {
        match &self.methods {
            None => true,
            Some(list) => list
                .iter()
                .any(|m| m == method || (m == Method::GET && method == Method::HEAD)),
        }
    }
}

/// Why no route applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// No rule matches host and path.
    #[error("no route")]
    NotFound,
    /// The most specific rule does not allow this method.
    #[error("method not allowed")]
    MethodNotAllowed,
}

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    /// Indices of routes whose prefix ends exactly here.
    routes: Vec<usize>,
}

/// The routing table: one path trie per host tier.
#[derive(Debug, Default)]
pub struct Router {
    routes: Vec<Route>,
    exact: HashMap<Box<str>, Node>,
    wildcard: HashMap<Box<str>, Node>,
    any: Node,
}

/// How a route's host is written.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// Any host.
    Any,
    /// Exactly this host (lower-case).
    Exact(String),
    /// Any subdomain of this suffix (`*.example.com` → `example.com`).
    Suffix(String),
}

impl HostPattern {
    /// Parses a configured host.
    pub fn parse(host: Option<&str>) -> Result<Self, String> {
        let Some(host) = host else {
            return Ok(Self::Any);
        };
        let host = host.trim().trim_end_matches('.').to_ascii_lowercase();
        let (wild, name) = match host.strip_prefix("*.") {
            Some(rest) => (true, rest.to_owned()),
            None => (false, host),
        };
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'[' | b']' | b':'))
        {
            return Err(format!(
                "`{name}` is not a host name (use `example.com` or `*.example.com`)"
            ));
        }
        Ok(if wild {
            Self::Suffix(name)
        } else {
            Self::Exact(name)
        })
    }
}

impl Router {
    /// Makes every route count into `metrics`, under its id.
    pub fn count_into(&mut self, metrics: &Metrics) {
        for route in &mut self.routes {
            route.counters = metrics.route(&route.id);
        }
    }

    /// Adds a route. Two routes with the same host and prefix whose methods overlap are
    /// ambiguous and refused, naming the route already there.
    pub fn add(&mut self, host: HostPattern, route: Route) -> Result<(), String> {
        let root = match &host {
            HostPattern::Any => &mut self.any,
            HostPattern::Exact(h) => self.exact.entry(h.as_str().into()).or_default(),
            HostPattern::Suffix(h) => self.wildcard.entry(h.as_str().into()).or_default(),
        };
        let mut node = root;
        for segment in route.prefix.split('/').filter(|s| !s.is_empty()) {
            node = node.children.entry(segment.into()).or_default();
        }
        for &other in &node.routes {
            let existing: &Route = &self.routes[other];
            let overlap = match (&existing.methods, &route.methods) {
                (None, None) => true,
                (Some(a), Some(b)) => a.iter().any(|m| b.contains(m)),
                _ => false,
            };
            if overlap {
                return Err(format!(
                    "route `{}` has the same host, path and methods as route `{}`",
                    route.id, existing.id
                ));
            }
        }
        node.routes.push(self.routes.len());
        self.routes.push(route);
        Ok(())
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether there are no routes.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The stage's entry point. `host` is lower-case without port; `segments` are lower-case.
    pub fn route<'s>(
        &self,
        host: Option<&str>,
        segments: impl Iterator<Item = &'s str> + Clone,
        method: &Method,
    ) -> Result<&Route, RouteError> {
        let found = host
            .and_then(|h| self.exact.get(h))
            .and_then(|root| self.deepest(root, segments.clone()))
            .or_else(|| {
                let host = host?;
                // Longest suffix first: `a.b.example.com` tries `b.example.com`, `example.com`, `com`.
                let mut rest = host;
                while let Some((_, suffix)) = rest.split_once('.') {
                    if let Some(root) = self.wildcard.get(suffix)
                        && let Some(node) = self.deepest(root, segments.clone())
                    {
                        return Some(node);
                    }
                    rest = suffix;
                }
                None
            })
            .or_else(|| self.deepest(&self.any, segments));
        let node = found.ok_or(RouteError::NotFound)?;
        // A route naming the method beats a route allowing all methods at the same prefix.
        let mut fallback = None;
        for &i in &node.routes {
            let route = &self.routes[i];
            if route.allows(method) {
                if route.methods.is_some() {
                    return Ok(route);
                }
                fallback = Some(route);
            }
        }
        fallback.ok_or(RouteError::MethodNotAllowed)
    }

    /// The deepest node on the path that carries routes.
    fn deepest<'n, 's>(
        &self,
        root: &'n Node,
        segments: impl Iterator<Item = &'s str>,
    ) -> Option<&'n Node> {
        let mut best = (!root.routes.is_empty()).then_some(root);
        let mut node = root;
        for segment in segments {
            match node.children.get(segment) {
                Some(child) => {
                    node = child;
                    if !node.routes.is_empty() {
                        best = Some(node);
                    }
                }
                None => break,
            }
        }
        best
    }
}

/// Lower-cases a request host and strips its port and trailing dot; `None` if it is not a
/// plausible host (the caller answers 400).
pub fn canonical_host(raw: &str) -> Option<String> {
    let raw = raw.trim();
    let host = if let Some(rest) = raw.strip_prefix('[') {
        let end = rest.find(']')?;
        &raw[..end + 2]
    } else {
        raw.rsplit_once(':').map_or(raw, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                raw
            }
        })
    };
    let host = host.trim_end_matches('.');
    if host.is_empty()
        || host.len() > 253
        || !host.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'[' | b']' | b':' | b'_')
        })
    {
        return None;
    }
    Some(host.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(id: &str, prefix: &str, methods: Option<Vec<Method>>) -> Route {
        Route {
            counters: Arc::new(RouteCounters::new(id)),
            id: id.into(),
            prefix: prefix.into(),
            methods,
            upstream: Some(0),
            policy: Policy::Public,
            max_body: 0,
            forward_authorization: false,
            websocket: true,
            audit: false,
            assertion: None,
        }
    }

    fn segs(p: &str) -> std::str::Split<'_, char> {
        p.split('/')
    }

    fn find<'r>(
        r: &'r Router,
        host: Option<&str>,
        path: &str,
        m: Method,
    ) -> Result<&'r str, RouteError> {
        r.route(host, segs(path).filter(|s| !s.is_empty()), &m)
            .map(|r| &*r.id)
    }

    #[test]
    fn prefixes_respect_segments_and_the_longest_wins() {
        let mut r = Router::default();
        r.add(HostPattern::Any, route("root", "/", None)).unwrap();
        r.add(HostPattern::Any, route("api", "/api", None)).unwrap();
        r.add(HostPattern::Any, route("api-admin", "/api/admin", None))
            .unwrap();
        assert_eq!(find(&r, None, "/api", Method::GET), Ok("api"));
        assert_eq!(find(&r, None, "/api/x", Method::GET), Ok("api"));
        assert_eq!(find(&r, None, "/apix", Method::GET), Ok("root"));
        assert_eq!(
            find(&r, None, "/api/admin/users", Method::GET),
            Ok("api-admin")
        );
    }

    #[test]
    fn order_of_definition_does_not_matter() {
        let mut a = Router::default();
        a.add(HostPattern::Any, route("deep", "/a/b", None))
            .unwrap();
        a.add(HostPattern::Any, route("shallow", "/a", None))
            .unwrap();
        assert_eq!(find(&a, None, "/a/b/c", Method::GET), Ok("deep"));
    }

    #[test]
    fn exact_host_beats_wildcard_beats_any() {
        let mut r = Router::default();
        r.add(HostPattern::Any, route("any", "/", None)).unwrap();
        r.add(
            HostPattern::parse(Some("*.example.com")).unwrap(),
            route("wild", "/", None),
        )
        .unwrap();
        r.add(
            HostPattern::parse(Some("API.example.com")).unwrap(),
            route("exact", "/", None),
        )
        .unwrap();
        assert_eq!(
            find(&r, Some("api.example.com"), "/", Method::GET),
            Ok("exact")
        );
        assert_eq!(
            find(&r, Some("www.example.com"), "/", Method::GET),
            Ok("wild")
        );
        assert_eq!(
            find(&r, Some("a.b.example.com"), "/", Method::GET),
            Ok("wild")
        );
        assert_eq!(find(&r, Some("example.com"), "/", Method::GET), Ok("any"));
        assert_eq!(find(&r, None, "/", Method::GET), Ok("any"));
    }

    #[test]
    fn unlisted_methods_are_denied_not_sent_to_a_shorter_prefix() {
        let mut r = Router::default();
        r.add(HostPattern::Any, route("public", "/", None)).unwrap();
        r.add(
            HostPattern::Any,
            route("read", "/admin", Some(vec![Method::GET])),
        )
        .unwrap();
        assert_eq!(find(&r, None, "/admin", Method::GET), Ok("read"));
        assert_eq!(find(&r, None, "/admin", Method::HEAD), Ok("read"));
        assert_eq!(
            find(&r, None, "/admin", Method::POST),
            Err(RouteError::MethodNotAllowed)
        );
    }

    #[test]
    fn a_listed_method_beats_an_all_methods_route() {
        let mut r = Router::default();
        r.add(HostPattern::Any, route("all", "/doc", None)).unwrap();
        r.add(
            HostPattern::Any,
            route("write", "/doc", Some(vec![Method::POST])),
        )
        .unwrap();
        assert_eq!(find(&r, None, "/doc", Method::POST), Ok("write"));
        assert_eq!(find(&r, None, "/doc", Method::GET), Ok("all"));
    }

    #[test]
    fn overlapping_routes_are_a_config_error() {
        let mut r = Router::default();
        r.add(HostPattern::Any, route("a", "/x", None)).unwrap();
        assert!(r.add(HostPattern::Any, route("b", "/x", None)).is_err());
        r.add(HostPattern::Any, route("c", "/y", Some(vec![Method::GET])))
            .unwrap();
        assert!(
            r.add(
                HostPattern::Any,
                route("d", "/y", Some(vec![Method::GET, Method::PUT]))
            )
            .is_err()
        );
        assert!(
            r.add(HostPattern::Any, route("e", "/y", Some(vec![Method::PUT])))
                .is_ok()
        );
    }

    #[test]
    fn no_match_is_not_found() {
        let mut r = Router::default();
        r.add(HostPattern::Any, route("api", "/api", None)).unwrap();
        assert_eq!(
            find(&r, None, "/other", Method::GET),
            Err(RouteError::NotFound)
        );
    }

    #[test]
    fn hosts_are_canonicalized() {
        assert_eq!(
            canonical_host("Example.COM:8080").as_deref(),
            Some("example.com")
        );
        assert_eq!(
            canonical_host("example.com.").as_deref(),
            Some("example.com")
        );
        assert_eq!(canonical_host("[::1]:443").as_deref(), Some("[::1]"));
        assert_eq!(canonical_host("exa mple.com"), None);
        assert_eq!(canonical_host(""), None);
    }
}
