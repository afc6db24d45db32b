//! The tokens the gateway issues: access tokens (JWT, signed by the newest signing key) and
//! opaque refresh tokens.
//!
//! A refresh token is `prt1.<base64url(sub)>.<sid>.<secret>`: the subject and session say
//! where the store keeps its hash, the secret is 256 bits from the OS CSPRNG (SECURITY.md 14),
//! and the store knows only the SHA-256 of the whole string, so changing any part of it (another
//! user's name, another session) yields a hash nobody holds (SECURITY.md 21). The `prt1.`
//! prefix keeps it from being mistaken for a JWT, and a JWT from being taken for it
//! (SECURITY.md 9).

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

const REFRESH_PREFIX: &str = "prt1.";

/// A new refresh token for a session.
pub fn new_refresh_token(subject: &str, session: &str) -> String {
    format!(
        "{REFRESH_PREFIX}{}.{session}.{}",
        URL_SAFE_NO_PAD.encode(subject.as_bytes()),
        random_token(32)
    )
}

/// The subject and session a refresh token names; `None` when it is not one of ours.
pub fn parse_refresh_token(token: &str) -> Option<(String, &str)> {
    if token.len() > 1024 {
        return None;
    }
    let rest = token.strip_prefix(REFRESH_PREFIX)?;
    let mut parts = rest.split('.');
    let (Some(sub), Some(sid), Some(secret), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    if sid.len() != 22 || secret.len() != 43 {
        return None;
    }
    let sub = String::from_utf8(URL_SAFE_NO_PAD.decode(sub).ok()?).ok()?;
    if sub.is_empty() {
        return None;
    }
    Some((sub, sid))
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_tokens_name_their_session_and_carry_256_random_bits() {
        let t = new_refresh_token("alice@example.com", &new_session_id());
        let (sub, sid) = parse_refresh_token(&t).unwrap();
        assert_eq!(sub, "alice@example.com");
        assert_eq!(sid.len(), 22);
        assert_ne!(t, new_refresh_token("alice@example.com", sid));
        let secret = t.rsplit('.').next().unwrap();
        assert_eq!(URL_SAFE_NO_PAD.decode(secret).unwrap().len(), 32);
    }

    #[test]
    fn other_strings_are_not_refresh_tokens() {
        for s in [
            "",
            "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhIn0.c2ln",
            "prt1.YWxpY2U.short.x",
            "prt1..AAAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "prt1.YWxpY2U.AAAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA.x",
        ] {
            assert!(parse_refresh_token(s).is_none(), "{s}");
        }
    }
}
