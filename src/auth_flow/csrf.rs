//! Cross-site request defence for every state-changing auth endpoint (docs/security.md 25).
//!
//! Two independent checks, both required where they apply:
//! 1. **Fetch metadata and `Origin`.** A browser labels every request: `Sec-Fetch-Site` must be
//!    `same-origin` (or `none`, a typed URL), and `Origin`, when sent, must be this gateway's
//!    own origin. A form posted from another site fails here. Clients that send neither (curl,
//!    a backend) are not browsers and carry no ambient cookies of a victim.
//! 2. **Double-submit token.** A request that authenticates with the gateway's cookies must
//!    repeat the `__Host-portcullis-csrf` cookie's value in the form field `csrf` or the header
//!    `X-CSRF-Token`, compared in constant time. The cookie is `__Host-`, so a sibling subdomain
//!    cannot plant it. The login form carries one too, against login CSRF.
//!
//! GET and HEAD never change state, so neither check applies to them.

use http::HeaderMap;

use crate::error::CsrfError;

/// Check 1: the request comes from this origin, or from no browser at all.
pub fn same_origin(headers: &HeaderMap, own_origin: &str) -> Result<(), CsrfError> {
    for site in headers.get_all("sec-fetch-site") {
        match site.as_bytes() {
            b"same-origin" | b"none" => {}
            _ => return Err(CsrfError::CrossSite),
        }
    }
    for origin in headers.get_all(http::header::ORIGIN) {
        let origin = origin.to_str().map_err(|_| CsrfError::CrossSite)?;
        if !origin.eq_ignore_ascii_case(own_origin) {
            return Err(CsrfError::CrossSite);
        }
    }
    Ok(())
}

/// Check 2: `presented` equals the CSRF cookie's value.
pub fn token_matches(cookie: Option<&str>, presented: Option<&str>) -> Result<(), CsrfError> {
    match (cookie, presented) {
        (Some(c), Some(p)) if !c.is_empty() && c.len() == p.len() => {
            aws_lc_rs::constant_time::verify_slices_are_equal(c.as_bytes(), p.as_bytes())
                .map_err(|_| CsrfError::Token)
        }
        _ => Err(CsrfError::Token),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn foreign_origins_and_cross_site_fetches_are_refused() {
        let own = "https://gw.example.com";
        let mut h = HeaderMap::new();
        assert_eq!(same_origin(&h, own), Ok(()));
        h.insert("origin", HeaderValue::from_static("https://gw.example.com"));
        h.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        assert_eq!(same_origin(&h, own), Ok(()));
        for (name, value) in [
            ("origin", "https://evil.example"),
            ("origin", "null"),
            ("origin", "http://gw.example.com"),
            ("sec-fetch-site", "cross-site"),
            ("sec-fetch-site", "same-site"),
        ] {
            let mut bad = h.clone();
            bad.insert(name, HeaderValue::from_static(value));
            assert_eq!(same_origin(&bad, own), Err(CsrfError::CrossSite), "{value}");
        }
    }

    #[test]
    fn the_token_must_equal_the_cookie() {
        assert_eq!(token_matches(Some("abc"), Some("abc")), Ok(()));
        assert!(token_matches(Some("abc"), Some("abd")).is_err());
        assert!(token_matches(Some("abc"), None).is_err());
        assert!(token_matches(None, Some("abc")).is_err());
        assert!(token_matches(Some(""), Some("")).is_err());
    }
}
