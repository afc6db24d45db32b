//! Stage 2, **credential**: find the access token in the request, if there is one.
//!
//! Runs after routing, for non-public routes. `Ok(None)` means no credential was presented (a
//! 401 asking for one, or a login redirect for a browser); `Ok(Some(token))` is the token to
//! verify; `Err` means a credential was presented but cannot be used — it never falls through to
//! another source. Tokens come only from the configured cookie and the `Authorization` header,
//! never from the query string (docs/security.md 24). Precedence, documented:
//! - two `Authorization` headers, or the cookie twice → refused (400);
//! - cookie and bearer both present: accepted only when they carry the same token (400 otherwise),
//!   so the forwarded identity is always the one verified.
//!
//! It reads headers only and changes nothing.

use http::HeaderMap;
use http::header::{AUTHORIZATION, COOKIE};

/// A presented credential that cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// More than one `Authorization` header.
    #[error("more than one Authorization header")]
    DuplicateAuthorization,
    /// The access-token cookie appears more than once.
    #[error("the access-token cookie appears more than once")]
    DuplicateCookie,
    /// Cookie and bearer carry different tokens.
    #[error("cookie and bearer tokens differ")]
    Conflicting,
    /// `Authorization` with a scheme other than Bearer, or an empty token.
    #[error("Authorization is not a Bearer token")]
    NotBearer,
    /// The token has characters a compact JWS cannot have.
    #[error("token has invalid characters")]
    BadCharacters,
}

impl CredentialError {
    /// A stable identifier for logs and audit.
    pub fn reason_id(self) -> &'static str {
        match self {
            CredentialError::DuplicateAuthorization => "credential.duplicate_authorization",
            CredentialError::DuplicateCookie => "credential.duplicate_cookie",
            CredentialError::Conflicting => "credential.conflicting",
            CredentialError::NotBearer => "credential.not_bearer",
            CredentialError::BadCharacters => "credential.bad_characters",
        }
    }
}

/// The stage's entry point.
pub fn credential<'h>(
    headers: &'h HeaderMap,
    cookie_name: &str,
) -> Result<Option<&'h str>, CredentialError> {
    let bearer = bearer(headers)?;
    let cookie = cookie(headers, cookie_name)?;
    let token = match (bearer, cookie) {
        (Some(b), Some(c)) if b != c => return Err(CredentialError::Conflicting),
        (Some(t), _) | (None, Some(t)) => t,
        (None, None) => return Ok(None),
    };
    if token.is_empty()
        || !token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(CredentialError::BadCharacters);
    }
    Ok(Some(token))
}

/// The token of the request's `Authorization: Bearer` header: `Ok(None)` without the header,
/// `Err` when it is doubled, not text, of another scheme, or empty. The scheme is matched in
/// any case (RFC 7235 §2.1) and the token trimmed of spaces; its characters are the caller's to
/// judge. The one bearer parser: the proxy's credential and the admin API's secret.
pub fn bearer(headers: &HeaderMap) -> Result<Option<&str>, CredentialError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(CredentialError::DuplicateAuthorization);
    }
    let value = value.to_str().map_err(|_| CredentialError::NotBearer)?;
    let (scheme, token) = value.split_once(' ').ok_or(CredentialError::NotBearer)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(CredentialError::NotBearer);
    }
    let token = token.trim_matches(' ');
    if token.is_empty() {
        return Err(CredentialError::NotBearer);
    }
    Ok(Some(token))
}

/// Every cookie the request sends, as `(name, value)`, in the order sent, across every
/// `Cookie` header (HTTP/2 sends one per cookie). The one cookie reader of the gateway.
///
/// Read as RFC 6265 §4.1.1 writes them: pairs split on `;`, spaces around names and values
/// dropped, and a value wrapped in one pair of `DQUOTE`s is the text between them (the quotes
/// are not part of the value; an unbalanced quote is kept). A pair without `=` is no cookie,
/// and a header that is not text holds none: other cookies are not ours to judge.
pub fn cookies(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|text| text.split(';'))
        .filter_map(|pair| {
            let (name, value) = pair.split_once('=')?;
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            Some((name.trim(), value))
        })
}

/// Every value sent for cookie `name`, in the order sent (see [`cookies`]).
pub fn cookie_values<'h>(headers: &'h HeaderMap, name: &str) -> impl Iterator<Item = &'h str> {
    cookies(headers).filter_map(move |(n, v)| (n == name).then_some(v))
}

fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, CredentialError> {
    let mut values = cookie_values(headers, name);
    let first = values.next();
    if values.next().is_some() {
        return Err(CredentialError::DuplicateCookie);
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn absent_is_none_not_an_error() {
        assert_eq!(
            credential(&headers(&[("cookie", "other=1")]), "at"),
            Ok(None)
        );
    }

    #[test]
    fn bearer_and_cookie_are_read() {
        assert_eq!(
            credential(&headers(&[("authorization", "Bearer a.b.c")]), "at"),
            Ok(Some("a.b.c"))
        );
        assert_eq!(
            credential(&headers(&[("authorization", "bearer a.b.c")]), "at"),
            Ok(Some("a.b.c"))
        );
        assert_eq!(
            credential(&headers(&[("cookie", "x=1; at=a.b.c; y=2")]), "at"),
            Ok(Some("a.b.c"))
        );
    }

    #[test]
    fn duplicates_and_conflicts_are_refused() {
        let two_auth = headers(&[
            ("authorization", "Bearer a.b.c"),
            ("authorization", "Bearer d.e.f"),
        ]);
        assert_eq!(
            credential(&two_auth, "at"),
            Err(CredentialError::DuplicateAuthorization)
        );
        let two_cookies = headers(&[("cookie", "at=a.b.c"), ("cookie", "at=a.b.c")]);
        assert_eq!(
            credential(&two_cookies, "at"),
            Err(CredentialError::DuplicateCookie)
        );
        let both = headers(&[("authorization", "Bearer a.b.c"), ("cookie", "at=d.e.f")]);
        assert_eq!(credential(&both, "at"), Err(CredentialError::Conflicting));
        let same = headers(&[("authorization", "Bearer a.b.c"), ("cookie", "at=a.b.c")]);
        assert_eq!(credential(&same, "at"), Ok(Some("a.b.c")));
    }

    #[test]
    fn cookies_are_read_as_rfc_6265_writes_them_one_pair_of_quotes_is_not_the_value() {
        let h = headers(&[
            ("cookie", "a=1; at=\"a.b.c\" ;b = 2"),
            ("cookie", "c=\"x; d=\"\"y\"\"; novalue; e=\"z"),
        ]);
        let all: Vec<_> = cookies(&h).collect();
        assert_eq!(
            all,
            [
                ("a", "1"),
                ("at", "a.b.c"),
                ("b", "2"),
                ("c", "\"x"),
                ("d", "\"y\""),
                ("e", "\"z"),
            ]
        );
        assert_eq!(credential(&h, "at"), Ok(Some("a.b.c")));
        // An unbalanced quote stays, and a token cannot contain one.
        assert_eq!(
            credential(&headers(&[("cookie", "at=\"a.b.c")]), "at"),
            Err(CredentialError::BadCharacters)
        );
    }

    #[test]
    fn the_bearer_scheme_is_matched_in_any_case() {
        for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
            let h = headers(&[("authorization", &format!("{scheme}   secret "))]);
            assert_eq!(bearer(&h), Ok(Some("secret")), "{scheme}");
        }
        assert_eq!(bearer(&HeaderMap::new()), Ok(None));
        assert_eq!(
            bearer(&headers(&[("authorization", "Bearerx secret")])),
            Err(CredentialError::NotBearer)
        );
    }

    #[test]
    fn other_schemes_and_odd_characters_are_refused() {
        assert_eq!(
            credential(&headers(&[("authorization", "Basic dXNlcg==")]), "at"),
            Err(CredentialError::NotBearer)
        );
        assert_eq!(
            credential(&headers(&[("authorization", "Bearer")]), "at"),
            Err(CredentialError::NotBearer)
        );
        assert_eq!(
            credential(&headers(&[("authorization", "Bearer a.b+c")]), "at"),
            Err(CredentialError::BadCharacters)
        );
    }
}
