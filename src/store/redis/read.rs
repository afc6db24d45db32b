//! The read-through of one token's facts, for a check the local cache could not answer: its
//! `jti` denial, its user's mark, its session's lifetimes and the epoch, read in one round
//! trip (per slot in a Cluster), and the verdict they give at the caller's `now`.

use super::keys::{LEGACY_DENIAL, denial_refuses, parse_mark, plausible_sid};
use super::{RedisStore, StoreError};
use crate::store::cache::Mark;
use crate::store::{TokenRef, Verdict};

/// What a read-through reads: a `jti` denial's value, the user's mark, the session's `abs` and
/// `idle`, and the epoch.
pub(super) type Facts = (
    Option<i64>,
    Option<String>,
    (Option<i64>, Option<i64>),
    Option<String>,
);

/// A read-through's verdict and what the cache may keep of it.
pub(super) struct Read {
    pub(super) verdict: Verdict,
    /// The denial that refused the token, and until when.
    pub(super) denied_until: Option<i64>,
    /// The user's mark that refused the token.
    pub(super) mark: Option<Mark>,
    /// When an `Alive` verdict stops being true.
    pub(super) alive_until: i64,
}

impl RedisStore {
    /// Reads the three facts a verdict needs and the epoch, read after them (so that a reset
    /// that happened before the facts were read cannot go unseen), and decides as of `now`.
    /// Single server and Sentinel: one pipeline, in that order. Cluster: the keys live in
    /// different slots, so the commands are issued concurrently, one round trip in all (per-node
    /// data loss in a Cluster is detected only for the node that holds the epoch: see the
    /// README).
    pub(super) async fn read_verdict(
        &self,
        token: &TokenRef<'_>,
        now: i64,
    ) -> Result<Read, StoreError> {
        let jti_key = self.keys.jti(token.jti_key);
        let rb_key = self.keys.revoked_before(token.user);
        let check_session = token.require_session;
        let session_key = check_session.then(|| {
            let sid = token.session.filter(|s| plausible_sid(s)).unwrap_or("-");
            self.keys.session(token.subject, sid)
        });
        let epoch_key = self.keys.epoch();
        let facts = if self.cluster {
            // The user's mark and the subject's session share a slot (one hash tag) unless the
            // user is another issuer's, named apart from the subject.
            let same_slot = token.user == token.subject;
            self.read_facts_apart(jti_key, rb_key, session_key, same_slot, epoch_key)
                .await
        } else {
            let mut pipe = redis::pipe();
            pipe.get(jti_key).get(rb_key);
            if let Some(key) = &session_key {
                pipe.cmd("HMGET").arg(key).arg("abs").arg("idle");
            }
            pipe.get(epoch_key);
            let mut conn = self.conn.clone();
            self.run(async move {
                if check_session {
                    pipe.query_async::<Facts>(&mut conn).await
                } else {
                    pipe.query_async::<(Option<i64>, Option<String>, Option<String>)>(&mut conn)
                        .await
                        .map(|(denied, rb, epoch)| (denied, rb, (None, None), epoch))
                }
            })
            .await
        };
        let (denied_until, mark, (abs, idle), epoch) = facts?;
        self.guard.check_epoch(epoch.as_deref()).await?;
        // An unreadable mark refuses every token of the user: it can only be damage, and a
        // revocation must not be lost to it.
        let mark = mark.map(|m| {
            parse_mark(&m).unwrap_or(Mark {
                before: i64::MAX,
                keep_until: i64::MAX,
            })
        });
        let denied_until = denied_until.filter(|until| denial_refuses(*until, now));
        let mark = mark.filter(|m| m.refuses(token.issued_at, now));
        let mut alive_until = token.expires_at;
        let verdict = if denied_until.is_some() {
            Verdict::JtiDenied
        } else if mark.is_some() {
            Verdict::UserRevoked
        } else if check_session {
            match (abs, idle) {
                (Some(abs), Some(idle)) if now < abs && now < idle => {
                    alive_until = alive_until.min(abs).min(idle);
                    Verdict::Alive
                }
                // Unknown, expired, or (the key is under `sub`) another user's session.
                _ => Verdict::SessionUnknown,
            }
        } else if self.guard.epoch.refuses(token.issued_at) {
            // No session vouches for it, and it predates the store's epoch: a revocation of
            // it may have been lost with the store's data.
            Verdict::IssuedBeforeStoreReset
        } else {
            Verdict::Alive
        };
        Ok(Read {
            verdict,
            denied_until: denied_until.map(|until| {
                if until == LEGACY_DENIAL {
                    token.expires_at
                } else {
                    until
                }
            }),
            mark,
            alive_until,
        })
    }

    /// [`Self::read_verdict`]'s reads for a Cluster, where every key may live on another node.
    async fn read_facts_apart(
        &self,
        jti_key: String,
        rb_key: String,
        session_key: Option<String>,
        same_slot: bool,
        epoch_key: String,
    ) -> Result<Facts, StoreError> {
        let (mut jti_conn, mut user_conn, mut session_conn, mut epoch_conn) = (
            self.conn.clone(),
            self.conn.clone(),
            self.conn.clone(),
            self.conn.clone(),
        );
        let denied = async move {
            redis::cmd("GET")
                .arg(jti_key)
                .query_async::<Option<i64>>(&mut jti_conn)
                .await
        };
        let user = async move {
            let mut pipe = redis::pipe();
            pipe.get(rb_key);
            match session_key {
                Some(key) if !same_slot => {
                    let mark = pipe.query_async::<(Option<String>,)>(&mut user_conn);
                    let mut hmget = redis::cmd("HMGET");
                    hmget.arg(key).arg("abs").arg("idle");
                    let session =
                        hmget.query_async::<(Option<i64>, Option<i64>)>(&mut session_conn);
                    tokio::try_join!(mark, session).map(|((rb,), session)| (rb, session))
                }
                Some(key) => {
                    pipe.cmd("HMGET").arg(key).arg("abs").arg("idle");
                    pipe.query_async::<(Option<String>, (Option<i64>, Option<i64>))>(&mut user_conn)
                        .await
                }
                None => pipe
                    .query_async::<(Option<String>,)>(&mut user_conn)
                    .await
                    .map(|(rb,)| (rb, (None, None))),
            }
        };
        // Concurrently with the facts: on other nodes, an order would not order anything.
        let epoch = async move {
            redis::cmd("GET")
                .arg(epoch_key)
                .query_async::<Option<String>>(&mut epoch_conn)
                .await
        };
        let (denied, (rb, session), epoch) = self
            .run(async { tokio::try_join!(denied, user, epoch) })
            .await?;
        Ok((denied, rb, session, epoch))
    }
}
