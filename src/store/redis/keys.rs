//! The names of the store's keys (the table in the [parent module](super)'s docs) and the
//! formats of their values. A subject appears in key names only as base64url and anything a
//! client sent only as a SHA-256 digest, so no input can name another key.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::store::cache::{Mark, hex};
use crate::store::{SessionRecord, throttle_digest};

/// Key names.
#[derive(Debug, Clone)]
pub(super) struct Keys {
    pub(super) prefix: String,
}

impl Keys {
    pub(super) fn user(&self, subject: &str) -> String {
        format!("{}:{{u:{}}}", self.prefix, URL_SAFE_NO_PAD.encode(subject))
    }
    pub(super) fn sessions(&self, subject: &str) -> String {
        format!("{}:sessions", self.user(subject))
    }
    pub(super) fn session_prefix(&self, subject: &str) -> String {
        format!("{}:s:", self.user(subject))
    }
    pub(super) fn session(&self, subject: &str, sid: &str) -> String {
        format!("{}{sid}", self.session_prefix(subject))
    }
    pub(super) fn refresh(&self, subject: &str, hash: &[u8; 32]) -> String {
        format!("{}:rt:{}", self.user(subject), hex(hash))
    }
    pub(super) fn revoked_before(&self, subject: &str) -> String {
        format!("{}:rb", self.user(subject))
    }
    pub(super) fn jti(&self, key: &[u8; 32]) -> String {
        format!("{}:{{j:{}}}", self.prefix, hex(key))
    }
    pub(super) fn login_state(&self, key: &[u8; 32]) -> String {
        format!("{}:{{ls:{}}}", self.prefix, hex(key))
    }
    pub(super) fn provider_sid(&self, key: &[u8; 32]) -> String {
        format!("{}:{{ps:{}}}", self.prefix, hex(key))
    }
    pub(super) fn once(&self, key: &[u8; 32]) -> String {
        format!("{}:{{once:{}}}", self.prefix, hex(key))
    }
    pub(super) fn throttle(&self, key: &str) -> String {
        format!("{}:{{t:{}}}", self.prefix, hex(&throttle_digest(key)))
    }
    pub(super) fn channel(&self) -> String {
        format!("{}:invalidate", self.prefix)
    }
    pub(super) fn epoch(&self) -> String {
        format!("{}:{{epoch}}", self.prefix)
    }
}

/// Session ids are ours (base64url); anything else cannot name a session and could only be an
/// attempt to build another key's name.
pub(super) fn plausible_sid(sid: &str) -> bool {
    !sid.is_empty()
        && sid.len() <= 128
        && sid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

/// How long after the instant it holds a session or revocation key is kept (see the parent
/// module's docs): a margin for a gateway clock that runs slower than Redis's, e.g. a test's manual
/// clock held still while real time passes.
pub(super) const GC_MARGIN: i64 = 300;

/// The TTL of a key that matters until `until`, as seen at `now`.
pub(super) fn gc_ttl(until: i64, now: i64) -> i64 {
    until.saturating_sub(now).max(0).saturating_add(GC_MARGIN)
}

/// The value a `jti` denial was written with before it held its instant: denied for as long as
/// the key lives.
pub(super) const LEGACY_DENIAL: i64 = 1;

/// Whether a `jti` denial's value refuses at `now`.
pub(super) fn denial_refuses(value: i64, now: i64) -> bool {
    value == LEGACY_DENIAL || now < value
}

/// A user's mark as stored (`<before> <keep_until>`, or only `<before>` when written before the
/// mark held its `keep_until`: kept as long as its key lives).
pub(super) fn parse_mark(value: &str) -> Option<Mark> {
    let mut parts = value.split(' ');
    let before = parts.next()?.parse().ok()?;
    let keep_until = match parts.next() {
        Some(keep) => keep.parse().ok()?,
        None => i64::MAX,
    };
    parts
        .next()
        .is_none()
        .then_some(Mark { before, keep_until })
}

/// A session hash read with `HMGET sub created last_seen ip ua abs idle remember idp`; `None` when
/// the session does not exist or a field it cannot do without is missing or unreadable.
pub(super) fn parse_session(id: &str, f: &[Option<String>]) -> Option<SessionRecord> {
    let get = |i: usize| f.get(i).cloned().flatten();
    let num = |i: usize| get(i).and_then(|v| v.parse::<i64>().ok());
    Some(SessionRecord {
        id: id.to_owned(),
        subject: get(0)?,
        created_at: num(1)?,
        last_seen: num(2)?,
        ip: get(3).unwrap_or_default(),
        user_agent: get(4).unwrap_or_default(),
        absolute_expiry: num(5)?,
        idle_expiry: num(6)?,
        remember_me: get(7).as_deref() == Some("1"),
        // An unreadable link is no link: the session then refreshes as a password login's
        // would, and finds no such user (refused), rather than with made-up permissions.
        provider: get(8).and_then(|v| serde_json::from_str(&v).ok()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn a_denial_refuses_before_its_instant_and_a_legacy_one_while_its_key_lives() {
        assert!(denial_refuses(1_700_000_100, 1_700_000_099));
        assert!(!denial_refuses(1_700_000_100, 1_700_000_100));
        assert!(denial_refuses(LEGACY_DENIAL, 1_700_000_100));
    }

    #[test]
    pub(super) fn a_mark_is_read_with_its_keep_until_or_kept_when_written_without_one() {
        assert_eq!(
            parse_mark("100 1000"),
            Some(Mark {
                before: 100,
                keep_until: 1000
            })
        );
        assert_eq!(
            parse_mark("100"),
            Some(Mark {
                before: 100,
                keep_until: i64::MAX
            })
        );
        assert_eq!(parse_mark("100 x"), None);
        assert_eq!(parse_mark("100 1000 7"), None);
    }

    #[test]
    pub(super) fn a_keys_ttl_runs_the_margin_past_its_instant_and_never_below_it() {
        assert_eq!(gc_ttl(1_000, 900), 100 + GC_MARGIN);
        assert_eq!(gc_ttl(900, 1_000), GC_MARGIN);
    }
}
