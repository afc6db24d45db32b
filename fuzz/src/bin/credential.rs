//! Cookie and credential parsing (`pipeline::credential::credential` and the auth flow's
//! `auth_flow::cookies::read`), on any bytes as request headers (`name: value` lines).
//!
//! Properties from the stage's contract: it never panics; a token found has only the
//! characters of a compact JWS and is the value of the one `Authorization: Bearer` header or
//! of the one access-token cookie (the same token when both are sent); two `Authorization`
//! headers are refused; `Ok(None)` means no `Authorization` header was sent at all (absent is
//! not invalid, and a malformed one never falls through). A cookie the auth flow reads was
//! sent once and is trimmed.

use http::header::{AUTHORIZATION, COOKIE};
use portcullis::auth_flow::cookies;
use portcullis::config::DEFAULT_COOKIE;
use portcullis::pipeline::credential::{CredentialError, credential};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let headers = portcullis_fuzz::headers(data);
        let authorizations = headers.get_all(AUTHORIZATION).iter().count();
        let cookie_text: Vec<&str> = headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        match credential(&headers, DEFAULT_COOKIE) {
            Ok(Some(token)) => {
                assert!(!token.is_empty());
                assert!(
                    token
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
                );
                assert!(authorizations <= 1);
                let in_bearer = headers
                    .get(AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.contains(token));
                let in_cookie = cookie_text.iter().any(|c| c.contains(token));
                assert!(in_bearer || in_cookie, "token {token:?} from nowhere");
                if authorizations == 1 {
                    assert!(
                        in_bearer,
                        "a cookie token {token:?} beside another Authorization"
                    );
                }
            }
            Ok(None) => assert_eq!(authorizations, 0, "an Authorization header was ignored"),
            Err(CredentialError::DuplicateAuthorization) => assert!(authorizations > 1),
            Err(_) => {}
        }
        if authorizations > 1 {
            assert_eq!(
                credential(&headers, DEFAULT_COOKIE),
                Err(CredentialError::DuplicateAuthorization)
            );
        }
        for name in [cookies::REFRESH_COOKIE, DEFAULT_COOKIE] {
            if let Some(value) = cookies::read(&headers, name) {
                assert_eq!(value, value.trim());
                assert!(!value.contains(';'));
                assert!(cookie_text.iter().any(|c| c.contains(value)));
            }
        }
    });
}
