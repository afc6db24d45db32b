//! Where a browser may be sent after logging in (docs/security.md 26).
//!
//! A return path is accepted only when it is plainly a path on this origin — it starts with one
//! `/`, contains no backslash, no control character or whitespace, no encoded slash, backslash
//! or control character, and normalizes without ambiguity — or an `https://` URL whose host is
//! listed in `auth.redirect_hosts`. Anything else (`//evil`, `/\evil`, `https:evil`,
//! `javascript:`, `https://gw@evil`, `/%2f%2fevil`, a leading tab, `%0d%0a`, …) ends at the
//! default page. Parsing is deliberately stricter than browsers: an odd but harmless path also
//! falls back to the default, which costs a click, never a redirect to another site.

use crate::pipeline::normalize::normalize;

/// The redirect policy, compiled from `auth.default_redirect` and `auth.redirect_hosts`.
#[derive(Debug, Clone)]
pub struct RedirectPolicy {
    /// Where a login without a usable return path lands.
    pub default: String,
    /// Lower-case hosts (with optional `:port`) an absolute `https://` return URL may name.
    pub hosts: Vec<String>,
}

impl RedirectPolicy {
    /// The target to send the browser to: `requested` when it is safe, else the default.
    pub fn target(&self, requested: Option<&str>) -> String {
        requested
            .and_then(|r| self.safe(r))
            .unwrap_or_else(|| self.default.clone())
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
            let (authority, path) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/"),
            };
            let authority = authority.to_ascii_lowercase();
            if authority.contains('@') || !self.hosts.contains(&authority) {
                return None;
            }
            let path = safe_path(path)?;
            return Some(format!("https://{authority}{path}"));
        }
        safe_path(requested)
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
            hosts: vec!["app.example.com".into()],
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
}
