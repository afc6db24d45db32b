//! Stage 4, **session**: is the verified token still allowed to be used?
//!
//! Runs after verify, inside [`crate::pipeline::identify`], on every request (cached tokens
//! included: this is what makes revocation immediate). `Ok` means the `jti` is not
//! denylisted, the user was not revoked after `iat`, and — when the issuer requires sessions —
//! `sid` names a live session of `sub`. `Err(Refused)` is a 401; `Err(Store)` is a 503: a store
//! that cannot answer never lets a request through. It reads the store and changes nothing.

use crate::pipeline::verify::VerifiedToken;
use crate::store::{SessionStore, StoreError, TokenRef, Verdict};

/// Why the store refused a verified token: every [`Verdict`] but `Alive`, so a refusal can
/// never say "alive".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Its `jti` is on the denylist (logout).
    #[error("token denylisted")]
    JtiDenied,
    /// Its session does not exist: never created, revoked, or expired.
    #[error("session unknown")]
    SessionUnknown,
    /// Its session belongs to another subject.
    #[error("session of another subject")]
    SessionMismatch,
    /// Its user was revoked after the token was issued.
    #[error("user revoked")]
    UserRevoked,
    /// It has no session and was issued before the store's epoch began.
    #[error("issued before the store was reset")]
    IssuedBeforeStoreReset,
}

impl Refusal {
    /// The refusal a verdict stands for; `None` for [`Verdict::Alive`].
    pub fn of(verdict: Verdict) -> Option<Refusal> {
        match verdict {
            Verdict::Alive => None,
            Verdict::JtiDenied => Some(Refusal::JtiDenied),
            Verdict::SessionUnknown => Some(Refusal::SessionUnknown),
            Verdict::SessionMismatch => Some(Refusal::SessionMismatch),
            Verdict::UserRevoked => Some(Refusal::UserRevoked),
            Verdict::IssuedBeforeStoreReset => Some(Refusal::IssuedBeforeStoreReset),
        }
    }

    /// A stable identifier for logs and audit: the store's name for the verdict.
    pub fn reason_id(self) -> &'static str {
        let verdict = match self {
            Refusal::JtiDenied => Verdict::JtiDenied,
            Refusal::SessionUnknown => Verdict::SessionUnknown,
            Refusal::SessionMismatch => Verdict::SessionMismatch,
            Refusal::UserRevoked => Verdict::UserRevoked,
            Refusal::IssuedBeforeStoreReset => Verdict::IssuedBeforeStoreReset,
        };
        verdict.reason_id()
    }
}

/// Why the session stage did not accept a token.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The store answered, and said no.
    #[error("session refused: {}", .0.reason_id())]
    Refused(Refusal),
    /// The store could not answer: fail closed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The stage's entry point.
pub async fn session<S: SessionStore>(
    token: &VerifiedToken,
    store: &S,
    now: i64,
) -> Result<(), SessionError> {
    let query = TokenRef {
        token_key: &token.token_key,
        jti_key: &token.jti_key,
        expires_at: token.expires_at,
        subject: &token.subject,
        user: &token.user,
        session: token.session.as_deref(),
        issued_at: token.issued_at,
        require_session: token.require_session,
    };
    match Refusal::of(store.check(&query, now).await?) {
        None => Ok(()),
        Some(refused) => Err(SessionError::Refused(refused)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_verdict_but_alive_is_a_refusal_with_the_stores_reason_id() {
        assert_eq!(Refusal::of(Verdict::Alive), None);
        for verdict in [
            Verdict::JtiDenied,
            Verdict::SessionUnknown,
            Verdict::SessionMismatch,
            Verdict::UserRevoked,
            Verdict::IssuedBeforeStoreReset,
        ] {
            let refusal = Refusal::of(verdict).expect("a refusal");
            assert_eq!(refusal.reason_id(), verdict.reason_id());
        }
    }
}
