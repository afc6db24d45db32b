//! Where a browser may be sent after logging in (docs/security.md 26), and where the proxy
//! asks it to come back to when it sends it to log in ([`return_target`]).
//!
//! A return path is accepted only when it is plainly a path on this origin — it starts with one
//! `/`, contains no backslash, no control character or whitespace, no encoded slash, backslash
//! or control character, and normalizes without ambiguity — or an `https://` URL whose host
//! matches `auth.redirect_hosts` (also spelt `auth.return_hosts`): an exact host, or
//! `*.example.com` for any host under `example.com` (not `example.com` itself), each with an
//! optional `:port` that must then be the URL's. The URL's host must be plain lower-case-able
//! DNS labels: no userinfo, no percent-escape, no empty label, no trailing dot. Anything else
//! (`//evil`, `/\evil`, `https:evil`, `https:/app.example.com`, `javascript:`,
//! `https://gw@evil`, `https://app.example.com.evil.com`, `/%2f%2fevil`, a leading tab,
//! `%0d%0a`, …) ends at the default page. Parsing is deliberately stricter than browsers: an
//! odd but harmless URL also falls back to the default, which costs a click, never a redirect
//! to another site.

use crate::pipeline::normalize::normalize;

/// One entry of `auth.redirect_hosts`, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// This host exactly (lower-case), with this port or none.
    Exact {
        /// The host name.
        host: String,
        /// The port the URL must name; `None`: the URL names none.
        port: Option<u16>,
    },
    /// Any host ending in `.` + `suffix` (`*.example.com`: `suffix` is `example.com`).
    Under {
        /// The parent domain, lower-case.
        suffix: String,
        /// As for [`HostPattern::Exact`].
        port: Option<u16>,
    },
}

impl HostPattern {
    /// Parses an entry: `app.example.com`, `app.example.com:8443`, `*.example.com`. A wildcard
    /// needs at least two labels after `*.` (`*.com` is refused).
    pub fn parse(entry: &str) -> Result<Self, &'static str> {
        let entry = entry.trim().to_ascii_lowercase();
        let (wildcard, rest) = match entry.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, entry.as_str()),
        };
        let (host, port) = split_authority(rest).ok_or(
            "must be a host name with an optional :port, like app.example.com or *.example.com",
        )?;
        if wildcard && !host.contains('.') {
            return Err("a wildcard must stand for subdomains of a domain, like *.example.com");
        }
        let host = host.to_owned();
        Ok(if wildcard {
            Self::Under { suffix: host, port }
        } else {
            Self::Exact { host, port }
        })
    }

    fn matches(&self, host: &str, port: Option<u16>) -> bool {
        match self {
            Self::Exact { host: h, port: p } => h == host && *p == port,
            Self::Under { suffix, port: p } => {
                *p == port
                    && host.len() > suffix.len() + 1
                    && host.ends_with(suffix.as_str())
                    && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
            }
        }
    }

    /// The CSP source expression that allows the same URLs (`https://*.example.com:8443`).
    fn csp_source(&self) -> String {
        let (prefix, host, port) = match self {
            Self::Exact { host, port } => ("", host, port),
            Self::Under { suffix, port } => ("*.", suffix, port),
        };
        match port {
            Some(p) => format!("https://{prefix}{host}:{p}"),
            None => format!("https://{prefix}{host}"),
        }
    }
}

/// `host[:port]` → (host, port) when the host is a [`dns_name`] and the port is 1–65535 in
/// plain digits. `None` for anything else: userinfo, escapes, brackets, a trailing
/// dot, an empty port.
fn split_authority(authority: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => {
            if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let port: u16 = p.parse().ok().filter(|p| *p != 0)?;
            (h, Some(port))
        }
        None => (authority, None),
    };
    dns_name(host).then_some((host, port))
}

/// Whether `host` is a lower-case DNS name: labels of letters, digits and hyphens, none empty,
/// none over 63 bytes, none starting or ending with a hyphen, 253 bytes in all.
pub fn dns_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// The redirect policy, compiled from `auth.default_redirect` and `auth.redirect_hosts`.
#[derive(Debug, Clone)]
pub struct RedirectPolicy {
    /// Where a login without a usable return path lands.
    pub default: String,
    /// The hosts an absolute `https://` return URL may name.
    pub hosts: Vec<HostPattern>,
}

impl RedirectPolicy {
    /// The target to send the browser to: `requested` when it is safe, else the default.
    pub fn target(&self, requested: Option<&str>) -> String {
        requested
            .and_then(|r| self.safe(r))
            .unwrap_or_else(|| self.default.clone())
    }

    /// The `form-action` sources of the pages whose form POST may be answered with a redirect
    /// to a listed host: `'self'` and one source per entry. Chrome applies `form-action` to the
    /// redirect after a form submission too, so without them it would block the redirect.
    pub fn form_action(&self) -> String {
        let mut sources = vec!["'self'".to_owned()];
        sources.extend(self.hosts.iter().map(HostPattern::csp_source));
        sources.join(" ")
    }

    fn safe(&self, requested: &str) -> Option<String> {
        if requested.is_empty() || requested.len() > 2048 {
            return None;
        }
        if requested
            .bytes()
            .any(|b| b.is_ascii_control() || b == b' ' || b == b'\\')
        {
            return None;
        }
        if let Some(rest) = requested.strip_prefix("https://") {
            let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            let (authority, path) = rest.split_at(end);
            let authority = authority.to_ascii_lowercase();
            let (host, port) = split_authority(&authority)?;
            if !self.hosts.iter().any(|p| p.matches(host, port)) {
                return None;
            }
            let path = if path.starts_with('/') {
                safe_path(path)?
            } else {
                safe_path(&format!("/{path}"))?
            };
            return Some(format!("https://{authority}{path}"));
        }
        safe_path(requested)
    }
}

/// What the proxy puts in `return_to` when it sends a browser to `login_url`: the request's
/// path and query when the login page is on the request's own origin (a path, or an absolute
/// URL naming the request's host), else — a central auth host — the absolute URL
/// `scheme://host` + `path_and_query`, so the login page can send the browser back to this
/// host (if `auth.redirect_hosts` lists it). A `host` that is not `name[:port]` gets the path
/// only: the login page then lands on its default.
pub fn return_target(
    login_url: &str,
    request_scheme: &str,
    request_host: &str,
    path_and_query: &str,
) -> String {
    let login_host = login_url
        .strip_prefix("https://")
        .or_else(|| login_url.strip_prefix("http://"))
        .map(|rest| &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())]);
    let request_host = request_host.to_ascii_lowercase();
    match login_host {
        Some(login) if !login.eq_ignore_ascii_case(&request_host) => {
            let plain = split_authority(&request_host).is_some()
                && matches!(request_scheme, "https" | "http");
            if plain {
                format!("{request_scheme}://{request_host}{path_and_query}")
            } else {
                path_and_query.to_owned()
            }
        }
        _ => path_and_query.to_owned(),
    }
}

/// A same-origin path and query, re-normalized; `None` when anything about it is doubtful.
fn safe_path(requested: &str) -> Option<String> {
    let (path, query) = match requested.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (requested, None),
    };
    let path = path.split('#').next().unwrap_or("");
    if !path.starts_with('/') || path.starts_with("//") {
        return None;
    }
    // Encoded `/`, `\` and control characters are refused by normalize (ambiguous); `%2e%2e` is
    // resolved. The normalized path cannot start with `//`.
    let normalized = normalize(path).ok()?;
    let mut out = normalized.path;
    if out.starts_with("//") {
        return None;
    }
    if let Some(q) = query.map(|q| q.split('#').next().unwrap_or(""))
        && !q.is_empty()
    {
        if q.bytes().any(|b| !(b.is_ascii_graphic())) {
            return None;
        }
        // A token put in a URL by mistake (or by a crafted link) is not copied into the
        // `Location` of the post-login redirect (docs/security.md 23).
        let kept: Vec<&str> = q
            .split('&')
            .filter(|p| !p.is_empty())
            .filter(|p| {
                let name = p.split('=').next().unwrap_or("").to_ascii_lowercase();
                !TOKEN_PARAMETERS.contains(&name.as_str())
            })
            .collect();
        if !kept.is_empty() {
            out.push('?');
            out.push_str(&kept.join("&"));
        }
    }
    Some(out)
}

/// Query parameters that commonly carry tokens (the same list the login redirect drops).
const TOKEN_PARAMETERS: &[&str] = &[
    "access_token",
    "id_token",
    "refresh_token",
    "token",
    "code",
    "jwt",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RedirectPolicy {
        RedirectPolicy {
            default: "/".into(),
            hosts: vec![HostPattern::parse("app.example.com").unwrap()],
        }
    }

    /// `auth.redirect_hosts: [app.example.com, "*.corp.example.com", "wiki.example.com:8443"]`.
    fn central() -> RedirectPolicy {
        RedirectPolicy {
            default: "/".into(),
            hosts: [
                "app.example.com",
                "*.corp.example.com",
                "wiki.example.com:8443",
            ]
            .iter()
            .map(|h| HostPattern::parse(h).unwrap())
            .collect(),
        }
    }

    #[test]
    fn open_redirect_attempts_end_at_the_default_page() {
        for evil in [
            "https://evil",
            "https://evil.com/x",
            "//evil",
            "//evil.com/x",
            "/\\evil",
            "\\/evil",
            "https:evil",
            "/%2f%2fevil",
            "/%2F/evil",
            "/%5cevil",
            "javascript:alert(1)",
            "data:text/html,x",
            "https://gw@evil",
            "https://app.example.com@evil.com/",
            "\t/path",
            " /path",
            "/path%0d%0aSet-Cookie:x",
            "/a\r\nb",
            "http://app.example.com/",
            "",
            "relative/path",
            "///evil",
            "/./\\evil",
        ] {
            assert_eq!(policy().target(Some(evil)), "/", "{evil:?} was accepted");
        }
    }

    #[test]
    fn same_origin_paths_and_listed_hosts_are_kept() {
        let p = policy();
        assert_eq!(p.target(Some("/docs/a?x=1")), "/docs/a?x=1");
        assert_eq!(p.target(Some("/pub/../admin")), "/admin");
        assert_eq!(p.target(Some("/a#frag")), "/a");
        assert_eq!(
            p.target(Some("/docs?access_token=eyJ.x.y&page=2&Refresh_Token=z")),
            "/docs?page=2"
        );
        assert_eq!(p.target(Some("/docs?token=x")), "/docs");
        assert_eq!(
            p.target(Some("https://APP.example.com/x")),
            "https://app.example.com/x"
        );
        assert_eq!(p.target(None), "/");
    }

    #[test]
    fn sec26_return_urls_to_hosts_not_listed_or_in_a_tricky_form_end_at_the_default_page() {
        let p = central();
        for evil in [
            // Protocol-relative, backslashes, a missing slash.
            "//evil.com",
            "//app.example.com/x",
            "https://evil.com\\@app.example.com",
            "https://evil.com\\.corp.example.com/",
            "https:/app.example.com/x",
            "https:app.example.com/x",
            "https:///app.example.com/x",
            // A listed name as a prefix or label of another host.
            "https://app.example.com.evil.com/",
            "https://app.example.com.evil.com",
            "https://evilapp.example.com/",
            "https://evil-corp.example.com/",
            "https://corp.example.com.evil.com/",
            // The wildcard's own domain is not under it.
            "https://corp.example.com/",
            // Userinfo, in every spelling.
            "https://user@app.example.com/",
            "https://user:pass@app.example.com/",
            "https://@app.example.com/",
            "https://evil.com@app.example.com/",
            "https://app.example.com@evil.com/",
            "https://app.example.com:443@evil.com/",
            // Ports other than the listed one (none, for an entry without one).
            "https://app.example.com:443/",
            "https://app.example.com:8443/",
            "https://app.example.com:/",
            "https://app.example.com:0/",
            "https://app.example.com:99999/",
            "https://wiki.example.com/",
            "https://wiki.example.com:8444/",
            "https://a.corp.example.com:8443/",
            // Encoded characters in the host, or an encoded slash in the path.
            "https://app%2eexample.com/",
            "https://app.example.com%2f@evil.com/",
            "https://%61pp.example.com/",
            "https://app.example.com/%2f%2fevil.com",
            "https://app.example.com/%5c%5cevil.com",
            "https://app.example.com/x%0d%0aSet-Cookie:a",
            // Odd host spellings: trailing dot, empty label, wildcard, IP literal, non-ASCII.
            "https://app.example.com./",
            "https://app..example.com/",
            "https://.corp.example.com/",
            "https://*.corp.example.com/",
            "https://[::1]/",
            "https://аpp.example.com/",
            "https://app.example.com\t/",
            // Not https.
            "http://app.example.com/",
            "HTTPS://app.example.com/",
            "ftp://app.example.com/",
            "javascript://app.example.com/%0aalert(1)",
        ] {
            assert_eq!(p.target(Some(evil)), "/", "{evil:?} was accepted");
        }
    }

    #[test]
    fn sec26_return_urls_to_listed_hosts_are_kept_lower_cased_and_renormalized() {
        let p = central();
        for (requested, kept) in [
            (
                "https://app.example.com/x?y=1",
                "https://app.example.com/x?y=1",
            ),
            ("https://APP.Example.COM/x", "https://app.example.com/x"),
            ("https://app.example.com", "https://app.example.com/"),
            (
                "https://app.example.com?q=1",
                "https://app.example.com/?q=1",
            ),
            ("https://app.example.com#top", "https://app.example.com/"),
            (
                "https://app.example.com/a/../b#f",
                "https://app.example.com/b",
            ),
            (
                "https://app.example.com/x?token=t&page=2",
                "https://app.example.com/x?page=2",
            ),
            (
                "https://wiki.corp.example.com/w",
                "https://wiki.corp.example.com/w",
            ),
            (
                "https://a.b.corp.example.com/",
                "https://a.b.corp.example.com/",
            ),
            (
                "https://wiki.example.com:8443/p",
                "https://wiki.example.com:8443/p",
            ),
        ] {
            assert_eq!(p.target(Some(requested)), kept, "{requested:?}");
        }
    }

    #[test]
    fn host_entries_are_checked_and_become_form_action_sources() {
        for bad in [
            "",
            "*",
            "*.com",
            "**.example.com",
            "a.*.example.com",
            "https://app.example.com",
            "app.example.com/x",
            "user@app.example.com",
            "app.example.com:",
            "app.example.com:0",
            "app.example.com:65536",
            "app.example.com.",
            "-app.example.com",
            "[::1]",
            "app example.com",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(
            HostPattern::parse(" App.Example.com ").unwrap(),
            HostPattern::Exact {
                host: "app.example.com".into(),
                port: None
            }
        );
        assert_eq!(
            central().form_action(),
            "'self' https://app.example.com https://*.corp.example.com https://wiki.example.com:8443"
        );
        assert_eq!(
            RedirectPolicy {
                default: "/".into(),
                hosts: Vec::new()
            }
            .form_action(),
            "'self'"
        );
    }

    #[test]
    fn the_return_target_is_absolute_only_when_the_login_page_is_on_another_host() {
        let t = return_target;
        // Login on this gateway: a path, as before.
        assert_eq!(
            t("/auth/login", "https", "app.example.com", "/x?y=1"),
            "/x?y=1"
        );
        assert_eq!(
            t(
                "https://App.example.com/auth/login",
                "https",
                "app.example.com",
                "/x"
            ),
            "/x"
        );
        // A central auth host: the absolute original URL.
        assert_eq!(
            t(
                "https://auth.example.com/auth/login",
                "https",
                "App.Example.com",
                "/x?y=1"
            ),
            "https://app.example.com/x?y=1"
        );
        assert_eq!(
            t(
                "https://auth.example.com",
                "https",
                "app.example.com:8443",
                "/"
            ),
            "https://app.example.com:8443/"
        );
        // The same host on another port is another origin.
        assert_eq!(
            t(
                "https://app.example.com:8443/auth/login",
                "https",
                "app.example.com",
                "/x"
            ),
            "https://app.example.com/x"
        );
        // A host that is not a plain name: only the path (the login page lands on its default).
        for odd in ["evil.com/x", "a@b.example.com", "[::1]:8080", "", "a b"] {
            assert_eq!(
                t("https://auth.example.com/auth/login", "https", odd, "/x"),
                "/x"
            );
        }
        assert_eq!(
            t(
                "https://auth.example.com/auth/login",
                "javascript",
                "app.example.com",
                "/x"
            ),
            "/x"
        );
    }
}
