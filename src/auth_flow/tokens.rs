//! The tokens the gateway issues: access tokens (JWT, signed by the newest signing key) and
//! opaque refresh tokens.
//!
//! A refresh token is `prt1.<base64url(sub)>.<sid>.<secret>` (API clients, tokens in JSON
//! bodies) or `prt2.<base64url(sub)>.<sid>.<secret>.<binding>` (browsers, tokens in cookies).
//! The subject and session say where the store keeps its hash, the secret is 256 bits from the
//! OS CSPRNG (docs/security.md 14), and the store knows only the SHA-256 of the whole string, so
//! changing any part of it (another user's name, another session, another binding) yields a
//! hash nobody holds (docs/security.md 21). The `prt` prefix keeps it from being mistaken for a JWT,
//! and a JWT from being taken for it (docs/security.md 9).
//!
//! `<binding>` is base64url(SHA-256) of the value of the browser's `__Host-portcullis-rb`
//! cookie ([`Binding`]), set together with the refresh cookie; a cookie-borne refresh token
//! counts only next to that cookie (docs/security.md 36, see [`super::cookies`]). The binding
//! lives in the token rather than in the session record: the store's hash covers it, so it is
//! as tamper-proof there, and telling a browser's own refresh cookie from planted ones needs
//! no store lookup.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;

/// Random bytes from the OS CSPRNG, base64url without padding.
pub fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    // aws-lc's RNG reads the OS CSPRNG; it fails only if the OS cannot supply randomness, and
    // then nothing about a login can be trusted: refuse to go on.
    aws_lc_rs::rand::fill(&mut buf).expect("the OS CSPRNG is available");
    URL_SAFE_NO_PAD.encode(buf)
}

/// A new session id: 128 bits.
pub fn new_session_id() -> String {
    random_token(16)
}

/// SHA-256 of a refresh token, as the store keeps it.
pub fn refresh_hash(token: &str) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Unbound refresh tokens (handed to API clients in a JSON body).
const UNBOUND_PREFIX: &str = "prt1.";
/// Refresh tokens bound to a browser's binding cookie.
const BOUND_PREFIX: &str = "prt2.";

/// The value of a browser's `__Host-portcullis-rb` cookie: 256 bits from the OS CSPRNG. A new
/// one comes with every refresh token set as a cookie (login, each rotation).
#[derive(Clone, PartialEq, Eq)]
pub struct Binding(String);

impl std::fmt::Debug for Binding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Binding(..)")
    }
}

impl Binding {
    /// A fresh binding value.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Binding(random_token(32))
    }

    /// The cookie value.
    pub fn value(&self) -> &str {
        &self.0
    }

    /// base64url(SHA-256(value)): what the refresh token carries.
    fn digest(value: &str) -> String {
        URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            value.as_bytes(),
        ))
    }
}

/// A new refresh token for a session, bound to `binding` when it goes into a cookie.
pub fn new_refresh_token(subject: &str, session: &str, binding: Option<&Binding>) -> String {
    let sub = URL_SAFE_NO_PAD.encode(subject.as_bytes());
    let secret = random_token(32);
    match binding {
        None => format!("{UNBOUND_PREFIX}{sub}.{session}.{secret}"),
        Some(b) => format!(
            "{BOUND_PREFIX}{sub}.{session}.{secret}.{}",
            Binding::digest(b.value())
        ),
    }
}

/// What a refresh token names. Unverified: only the store, by the token's hash, says whether
/// it is live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshToken<'t> {
    /// The user.
    pub subject: String,
    /// The session id.
    pub session: &'t str,
    /// base64url(SHA-256) of the binding value, for a bound token.
    binding: Option<&'t str>,
}

impl RefreshToken<'_> {
    /// Whether this token was issued for a cookie (its successor must be too).
    pub fn is_bound(&self) -> bool {
        self.binding.is_some()
    }

    /// Whether `cookie` (a `__Host-portcullis-rb` value) is the binding this token was issued
    /// with. Compared in constant time, though both sides are already the client's.
    pub fn is_bound_to(&self, cookie: &str) -> bool {
        self.binding.is_some_and(|expected| {
            aws_lc_rs::constant_time::verify_slices_are_equal(
                expected.as_bytes(),
                Binding::digest(cookie).as_bytes(),
            )
            .is_ok()
        })
    }
}

/// What a refresh token names; `None` when it is not one of ours.
pub fn parse_refresh_token(token: &str) -> Option<RefreshToken<'_>> {
    if token.len() > 1024 {
        return None;
    }
    let (rest, bound) = match token.strip_prefix(BOUND_PREFIX) {
        Some(rest) => (rest, true),
        None => (token.strip_prefix(UNBOUND_PREFIX)?, false),
    };
    let mut parts = rest.split('.');
    let (Some(sub), Some(sid), Some(secret)) = (parts.next(), parts.next(), parts.next()) else {
        return None;
    };
    let binding = if bound {
        Some(parts.next().filter(|b| b.len() == 43)?)
    } else {
        None
    };
    if parts.next().is_some() || sid.len() != 22 || secret.len() != 43 {
        return None;
    }
    let sub = String::from_utf8(URL_SAFE_NO_PAD.decode(sub).ok()?).ok()?;
    if sub.is_empty() {
        return None;
    }
    Some(RefreshToken {
        subject: sub,
        session: sid,
        binding,
    })
}

/// The claims of a gateway-issued access token.
#[derive(Debug, Serialize)]
pub struct AccessClaims<'a> {
    /// The gateway's issuer URL.
    pub iss: &'a str,
    /// The gateway's audience.
    pub aud: &'a str,
    /// The canonical username.
    pub sub: &'a str,
    /// The session.
    pub sid: &'a str,
    /// 128 random bits: the denylist key.
    pub jti: String,
    /// Issued at.
    pub iat: i64,
    /// Expiry.
    pub exp: i64,
    /// The user's roles at issue time (informational: permissions come from the users file
    /// on every request).
    pub roles: &'a [String],
    /// For a session signed in through an OpenID Provider: the provider's id. The verify
    /// stage then takes the permissions from [`AccessClaims::permissions`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idp: Option<&'a str>,
    /// For a session signed in through an OpenID Provider: the permissions its claims named
    /// directly (`prefix:` mappings), kept with the session; its roles are in `roles`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permissions: Option<&'a [String]>,
}

/// What an access token grants, as the gateway mints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessGrant {
    /// A users-file user: the roles (permissions are read from the users file per request).
    Roles(Vec<String>),
    /// A session signed in through the OpenID Provider `provider`, with the roles and
    /// permissions its claims named at login.
    Provider {
        /// The provider's id.
        provider: String,
        /// The role names (granted through the config's `roles:` at each verification).
        roles: Vec<String>,
        /// The permission names.
        permissions: Vec<String>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_tokens_name_their_session_and_carry_256_random_bits() {
        let t = new_refresh_token("alice@example.com", &new_session_id(), None);
        let parsed = parse_refresh_token(&t).unwrap();
        assert_eq!(parsed.subject, "alice@example.com");
        assert_eq!(parsed.session.len(), 22);
        assert!(!parsed.is_bound());
        assert_ne!(
            t,
            new_refresh_token("alice@example.com", parsed.session, None)
        );
        let secret = t.rsplit('.').next().unwrap();
        assert_eq!(URL_SAFE_NO_PAD.decode(secret).unwrap().len(), 32);
    }

    #[test]
    fn a_bound_refresh_token_is_bound_to_its_binding_value_only() {
        let (mine, other) = (Binding::new(), Binding::new());
        assert_eq!(URL_SAFE_NO_PAD.decode(mine.value()).unwrap().len(), 32);
        let t = new_refresh_token("alice", &new_session_id(), Some(&mine));
        let parsed = parse_refresh_token(&t).unwrap();
        assert_eq!(parsed.subject, "alice");
        assert!(parsed.is_bound());
        assert!(parsed.is_bound_to(mine.value()));
        assert!(!parsed.is_bound_to(other.value()));
        assert!(!parsed.is_bound_to(""));
        // The token carries the binding's hash, never the binding.
        assert!(!t.contains(mine.value()));
        // An unbound token is bound to nothing.
        let unbound = new_refresh_token("alice", parsed.session, None);
        assert!(
            !parse_refresh_token(&unbound)
                .unwrap()
                .is_bound_to(mine.value())
        );
        assert_eq!(format!("{mine:?}"), "Binding(..)");
    }

    #[test]
    fn other_strings_are_not_refresh_tokens() {
        let sid = "AAAAAAAAAAAAAAAAAAAAAA";
        let secret = "A".repeat(43);
        for s in [
            String::new(),
            "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhIn0.c2ln".into(),
            "prt1.YWxpY2U.short.x".into(),
            format!("prt1..{sid}.{secret}"),
            format!("prt1.YWxpY2U.{sid}.{secret}.x"),
            format!("prt1.YWxpY2U.{sid}.{secret}.{secret}"),
            format!("prt2.YWxpY2U.{sid}.{secret}"),
            format!("prt2.YWxpY2U.{sid}.{secret}.short"),
            format!("prt2.YWxpY2U.{sid}.{secret}.{secret}.x"),
            format!("prt3.YWxpY2U.{sid}.{secret}"),
        ] {
            assert!(parse_refresh_token(&s).is_none(), "{s}");
        }
        assert!(parse_refresh_token(&format!("prt2.YWxpY2U.{sid}.{secret}.{secret}")).is_some());
    }
}
