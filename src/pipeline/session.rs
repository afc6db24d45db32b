//! Stage 4, **session**: is the verified token still allowed to be used?
//!
//! Runs after verify, for every non-public route, on every request (cached tokens included:
//! this is what makes revocation immediate). `Ok` means the `jti` is not denylisted, the user
//! was not revoked after `iat`, and — when the issuer requires sessions — `sid` names a live
//! session of `sub`. `Err(Session)` is a 401; `Err(Store)` is a 503: a store that cannot answer
//! never lets a request through. It reads the store and changes nothing.

use crate::error::GatewayError;
use crate::pipeline::verify::VerifiedToken;
use crate::store::{SessionStore, TokenRef, Verdict};

/// The stage's entry point.
pub async fn session<S: SessionStore>(
    token: &VerifiedToken,
    store: &S,
    now: i64,
) -> Result<(), GatewayError> {
    let query = TokenRef {
        token_key: &token.token_key,
        jti_key: &token.jti_key,
        expires_at: token.expires_at,
        subject: &token.subject,
        session: token.session.as_deref(),
        issued_at: token.issued_at,
        require_session: token.require_session,
    };
    match store.check(&query, now).await? {
        Verdict::Alive => Ok(()),
        refused @ (Verdict::JtiDenied
        | Verdict::SessionUnknown
        | Verdict::SessionMismatch
        | Verdict::UserRevoked
        | Verdict::IssuedBeforeStoreReset) => Err(GatewayError::Session(refused)),
    }
}
