//! The Lua scripts, each with the invocation that passes it its keys and arguments.
//!
//! Every write is one script, so it is atomic (all of a user's keys share a hash tag, so a
//! script's keys are in one Cluster slot), and every revoking script publishes its
//! [`Invalidation`] in the same script that writes. Every script that decides with the time
//! takes the caller's `now` as an argument; the TTLs it sets are computed by the caller from the
//! gateway's clock (see [`gc_ttl`]) and only free memory.

use redis::{Script, ScriptInvocation};

use super::keys::{GC_MARGIN, Keys, gc_ttl};
use crate::store::cache::Invalidation;
use crate::store::{Attempts, RefreshGrant, Rotation, SessionRecord};

// KEYS: the session, the user's session set, the refresh token (a placeholder when none).
// ARGV: sid, sub, created, last_seen, ip, ua, abs, idle, remember, the refresh token's expiry
// ('' when none), the session's TTL, the refresh token's TTL, the provider link as JSON ('' when
// none).
// A key's TTL only ever grows (`TTL` is -1 without one, -2 when missing).
const CREATE_SESSION: &str = r"
redis.call('HSET', KEYS[1], 'sub', ARGV[2], 'created', ARGV[3], 'last_seen', ARGV[4],
  'ip', ARGV[5], 'ua', ARGV[6], 'abs', ARGV[7], 'idle', ARGV[8], 'remember', ARGV[9])
if ARGV[13] ~= '' then
  redis.call('HSET', KEYS[1], 'idp', ARGV[13])
end
redis.call('EXPIRE', KEYS[1], ARGV[11])
redis.call('SADD', KEYS[2], ARGV[1])
if redis.call('TTL', KEYS[2]) < tonumber(ARGV[11]) then
  redis.call('EXPIRE', KEYS[2], ARGV[11])
end
if ARGV[10] ~= '' then
  redis.call('HSET', KEYS[3], 'sid', ARGV[1], 'state', 'current', 'exp', ARGV[10])
  redis.call('EXPIRE', KEYS[3], ARGV[12])
end
return 1
";

// Publishes only when a session was deleted: a session id named under the wrong subject
// deletes nothing, and must not become a "revoked" fact in anyone's cache.
const REVOKE_SESSION: &str = r"
local existed = redis.call('DEL', KEYS[1])
if existed > 0 then
  redis.call('SREM', KEYS[2], ARGV[1])
  redis.call('PUBLISH', ARGV[2], ARGV[3])
end
return existed
";

// The session keys are not in KEYS: their names are only known from the set. They share the
// set's hash tag, so they live in the same Cluster slot and the script stays atomic there too.
// KEYS: the user's session set, the mark. ARGV: the session key prefix, before, keep_until,
// the channel, the invalidation, the mark's TTL.
// The mark only moves forward: the later `before` and the later `keep_until` of the two. A mark
// written before it held `keep_until` is kept as long as its TTL says.
const REVOKE_USER: &str = r"
local members = redis.call('SMEMBERS', KEYS[1])
for _, sid in ipairs(members) do
  redis.call('DEL', ARGV[1] .. sid)
end
redis.call('DEL', KEYS[1])
local before, keep = tonumber(ARGV[2]), tonumber(ARGV[3])
local raw = redis.call('GET', KEYS[2])
if raw then
  local old_before, old_keep = string.match(raw, '^(%-?%d+) (%-?%d+)$')
  if not old_before then old_before = raw end
  if tonumber(old_before) > before then before = tonumber(old_before) end
  if old_keep and tonumber(old_keep) > keep then keep = tonumber(old_keep) end
end
local ttl = tonumber(ARGV[6])
local old_ttl = redis.call('TTL', KEYS[2])
if old_ttl > ttl then ttl = old_ttl end
redis.call('SET', KEYS[2], string.format('%d %d', before, keep), 'EX', ttl)
redis.call('PUBLISH', ARGV[4], ARGV[5])
return #members
";

// The heartbeat: the epoch, created when missing, published on the invalidation channel with
// the sender's tag (its id and send instant), so that every instance hears the epoch and the
// sender, hearing its own tag back, knows the channel delivered everything published before.
// KEYS: the epoch. ARGV: the epoch to create if there is none, the channel, the tag.
const HEARTBEAT: &str = r"
local e = redis.call('GET', KEYS[1])
if not e then
  redis.call('SET', KEYS[1], ARGV[1])
  e = ARGV[1]
end
redis.call('PUBLISH', ARGV[2], 'b ' .. ARGV[3] .. ' ' .. e)
return e
";

// Rewrites the epoch's state if it is still the epoch the caller means, and announces it.
// KEYS: the epoch. ARGV: its id, the new value, the channel.
const SET_EPOCH_STATE: &str = r"
local e = redis.call('GET', KEYS[1])
if (not e) or string.sub(e, 3, 34) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('PUBLISH', ARGV[3], 'h ' .. ARGV[2])
return 1
";

// KEYS: the denial. ARGV: until, now, the channel, the invalidation, the TTL.
// A denial only moves forward; one written before it held its instant (`1`) is replaced.
const DENY_JTI: &str = r"
local deadline = tonumber(ARGV[1])
if deadline > tonumber(ARGV[2]) then
  local old = tonumber(redis.call('GET', KEYS[1]) or '')
  if (not old) or old == 1 or old < deadline then
    redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[5])
  end
end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
";

// KEYS: presented refresh, session, successor refresh, the user's session set.
// ARGV: sid, now, grace, idle seconds, successor expiry, channel, invalidation message, the
// GC margin. A token written before it held `exp` lives as long as its TTL says.
const ROTATE: &str = r"
local rt = redis.call('HMGET', KEYS[1], 'sid', 'state', 'used_at', 'exp')
if (not rt[1]) or rt[1] ~= ARGV[1] then return {'invalid'} end
local now = tonumber(ARGV[2])
if rt[4] and now >= tonumber(rt[4]) then return {'invalid'} end
local s = redis.call('HGETALL', KEYS[2])
if #s == 0 then return {'invalid'} end
local f = {}
for i = 1, #s, 2 do f[s[i]] = s[i + 1] end
local function revoke()
  redis.call('DEL', KEYS[2])
  redis.call('SREM', KEYS[4], ARGV[1])
  redis.call('PUBLISH', ARGV[6], ARGV[7])
end
if now >= tonumber(f.abs) or now >= tonumber(f.idle) then
  revoke()
  return {'expired'}
end
local function record(kind)
  return {kind, f.sub, f.created, f.last_seen, f.ip, f.ua, f.abs, f.idle, f.remember}
end
if rt[2] == 'current' then
  redis.call('HSET', KEYS[1], 'state', 'used', 'used_at', ARGV[2])
  local expiry = tonumber(ARGV[5])
  if expiry > tonumber(f.abs) then expiry = tonumber(f.abs) end
  redis.call('HSET', KEYS[3], 'sid', ARGV[1], 'state', 'current', 'exp', expiry)
  local ttl = expiry - now
  if ttl < 0 then ttl = 0 end
  redis.call('EXPIRE', KEYS[3], ttl + tonumber(ARGV[8]))
  local idle = now + tonumber(ARGV[4])
  if idle > tonumber(f.abs) then idle = tonumber(f.abs) end
  redis.call('HSET', KEYS[2], 'last_seen', ARGV[2], 'idle', idle)
  f.last_seen = ARGV[2]
  f.idle = tostring(idle)
  return record('rotated')
end
if now - tonumber(rt[3]) <= tonumber(ARGV[3]) then
  return record('concurrent')
end
revoke()
return {'reuse', f.sub}
";

// Reads a counter as `count, resets_at`: `0, 0` when there is none. A counter written before the
// window's end was kept in it holds only its count: its window ends when its key expires
// (rounded up to the second, so that a `Retry-After` built from it is never early).
// KEYS[1] is the counter.
const THROTTLE_READ: &str = r"
local function read(now)
  local raw = redis.call('GET', KEYS[1])
  if not raw then return 0, 0 end
  local count, resets = string.match(raw, '^(%d+) (%-?%d+)$')
  if count then return tonumber(count), tonumber(resets) end
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl < 0 then ttl = 0 end
  return tonumber(raw) or 0, now + math.floor((ttl + 999) / 1000)
end
";

// One failed login, counted in the window open at `now` or in a new one from `now`. The key's
// expiry is set in the same script as the count, so no counter is left without one. Later
// failures do not extend the window.
// KEYS: the counter. ARGV: the window in seconds, now. Returns the count and the window's end.
const THROTTLE_HIT: &str = r"
local now, window = tonumber(ARGV[2]), tonumber(ARGV[1])
local count, resets = read(now)
if count == 0 or now >= resets then
  count, resets = 1, now + window
else
  count = count + 1
end
redis.call('SET', KEYS[1], string.format('%d %d', count, resets), 'EX', resets - now)
return {count, resets}
";

// The count and the window's end, read together so the one cannot outlive the other.
// KEYS: the counter. ARGV: now.
const THROTTLE_PEEK: &str = r"
local count, resets = read(tonumber(ARGV[1]))
return {count, resets}
";

/// A counter's reply as [`Attempts`]: nothing counts once `now` has reached the window's end.
pub(super) fn attempts(count: i64, resets_at: i64, now: i64) -> Attempts {
    if count <= 0 || now >= resets_at {
        return Attempts::NONE;
    }
    Attempts {
        count: u32::try_from(count).unwrap_or(u32::MAX),
        resets_at,
    }
}

/// The store's scripts, loaded once (`EVALSHA`, falling back to `EVAL` when Redis has
/// forgotten them), with the key names they are invoked on.
pub(super) struct Scripts {
    keys: Keys,
    create_session: Script,
    revoke_session: Script,
    revoke_user: Script,
    deny_jti: Script,
    rotate: Script,
    throttle_hit: Script,
    throttle_peek: Script,
    heartbeat: Script,
    set_epoch_state: Script,
}

impl Scripts {
    pub(super) fn new(keys: Keys) -> Self {
        Self {
            keys,
            create_session: Script::new(CREATE_SESSION),
            revoke_session: Script::new(REVOKE_SESSION),
            revoke_user: Script::new(REVOKE_USER),
            deny_jti: Script::new(DENY_JTI),
            rotate: Script::new(ROTATE),
            throttle_hit: Script::new(&format!("{THROTTLE_READ}{THROTTLE_HIT}")),
            throttle_peek: Script::new(&format!("{THROTTLE_READ}{THROTTLE_PEEK}")),
            heartbeat: Script::new(HEARTBEAT),
            set_epoch_state: Script::new(SET_EPOCH_STATE),
        }
    }

    /// Stores `record` and its first refresh token; `now` (the gateway's clock) times their
    /// keys' expiry.
    pub(super) fn create_session(
        &self,
        record: &SessionRecord,
        refresh: Option<RefreshGrant>,
        now: i64,
    ) -> ScriptInvocation<'_> {
        let keys = &self.keys;
        let (subject, sid) = (&record.subject, &record.id);
        let refresh_expiry = refresh.map(|r| r.expires_at.min(record.absolute_expiry));
        let mut invocation = self.create_session.prepare_invoke();
        invocation
            .key(keys.session(subject, sid))
            .key(keys.sessions(subject))
            .key(keys.refresh(subject, &refresh.map_or([0; 32], |r| r.hash)))
            .arg(sid)
            .arg(subject)
            .arg(record.created_at)
            .arg(record.last_seen)
            .arg(&record.ip)
            .arg(&record.user_agent)
            .arg(record.absolute_expiry)
            .arg(record.idle_expiry)
            .arg(if record.remember_me { "1" } else { "0" })
            .arg(refresh_expiry.map(|e| e.to_string()).unwrap_or_default())
            .arg(gc_ttl(record.absolute_expiry, now))
            .arg(refresh_expiry.map_or(0, |e| gc_ttl(e, now)))
            .arg(
                record
                    .provider
                    .as_ref()
                    .and_then(|p| serde_json::to_string(p).ok())
                    .unwrap_or_default(),
            );
        invocation
    }

    /// Deletes a session of `subject`, publishing `event` only if it existed.
    pub(super) fn revoke_session(
        &self,
        subject: &str,
        sid: &str,
        event: &Invalidation,
    ) -> ScriptInvocation<'_> {
        let mut invocation = self.revoke_session.prepare_invoke();
        invocation
            .key(self.keys.session(subject, sid))
            .key(self.keys.sessions(subject))
            .arg(sid)
            .arg(self.keys.channel())
            .arg(event.encode());
        invocation
    }

    /// Ends every session of `subject` and raises its mark; `now` (the gateway's clock) times
    /// the mark's expiry.
    pub(super) fn revoke_user(
        &self,
        subject: &str,
        before: i64,
        keep_until: i64,
        event: &Invalidation,
        now: i64,
    ) -> ScriptInvocation<'_> {
        let mut invocation = self.revoke_user.prepare_invoke();
        invocation
            .key(self.keys.sessions(subject))
            .key(self.keys.revoked_before(subject))
            .arg(self.keys.session_prefix(subject))
            .arg(before)
            .arg(keep_until)
            .arg(self.keys.channel())
            .arg(event.encode())
            .arg(gc_ttl(keep_until, now));
        invocation
    }

    /// Denies the `jti` with key `key` until `until`, as of the caller's `now`; `clock_now`
    /// (the gateway's clock) times the key's expiry.
    pub(super) fn deny_jti(
        &self,
        key: &[u8; 32],
        until: i64,
        now: i64,
        event: &Invalidation,
        clock_now: i64,
    ) -> ScriptInvocation<'_> {
        let mut invocation = self.deny_jti.prepare_invoke();
        invocation
            .key(self.keys.jti(key))
            .arg(until)
            .arg(now)
            .arg(self.keys.channel())
            .arg(event.encode())
            .arg(gc_ttl(until, clock_now));
        invocation
    }

    /// Rotates a refresh token; `event` is published if the session is revoked (reuse or
    /// expiry).
    pub(super) fn rotate(
        &self,
        rotation: &Rotation<'_>,
        event: &Invalidation,
    ) -> ScriptInvocation<'_> {
        let (subject, sid) = (rotation.subject, rotation.session);
        let mut invocation = self.rotate.prepare_invoke();
        invocation
            .key(self.keys.refresh(subject, &rotation.presented))
            .key(self.keys.session(subject, sid))
            .key(self.keys.refresh(subject, &rotation.successor))
            .key(self.keys.sessions(subject))
            .arg(sid)
            .arg(rotation.now)
            .arg(rotation.grace)
            .arg(rotation.idle)
            .arg(rotation.successor_expires_at)
            .arg(self.keys.channel())
            .arg(event.encode())
            .arg(GC_MARGIN);
        invocation
    }

    /// Counts one failure under `key` at `now`; replies `count, resets_at` ([`attempts`]).
    pub(super) fn throttle_hit(&self, key: &str, window: i64, now: i64) -> ScriptInvocation<'_> {
        let mut invocation = self.throttle_hit.prepare_invoke();
        invocation
            .key(self.keys.throttle(key))
            .arg(window.max(1))
            .arg(now);
        invocation
    }

    /// Reads the count under `key` at `now`; replies `count, resets_at` ([`attempts`]).
    pub(super) fn throttle_peek(&self, key: &str, now: i64) -> ScriptInvocation<'_> {
        let mut invocation = self.throttle_peek.prepare_invoke();
        invocation.key(self.keys.throttle(key)).arg(now);
        invocation
    }

    /// Reads the epoch, creating it as `candidate` when there is none, and publishes it.
    pub(super) fn heartbeat(&self, candidate: &str, tag: &str) -> ScriptInvocation<'_> {
        let mut invocation = self.heartbeat.prepare_invoke();
        invocation
            .key(self.keys.epoch())
            .arg(candidate)
            .arg(self.keys.channel())
            .arg(tag);
        invocation
    }

    /// Rewrites the epoch with id `id` as `value` if it is still the current one, and
    /// announces it. Replies 1 if it was.
    pub(super) fn set_epoch_state(&self, id: &str, value: &str) -> ScriptInvocation<'_> {
        let mut invocation = self.set_epoch_state.prepare_invoke();
        invocation
            .key(self.keys.epoch())
            .arg(id)
            .arg(value)
            .arg(self.keys.channel());
        invocation
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttle_reply_counts_nothing_once_now_reaches_the_windows_end() {
        assert_eq!(
            attempts(3, 160, 100),
            Attempts {
                count: 3,
                resets_at: 160
            }
        );
        assert_eq!(attempts(3, 160, 160), Attempts::NONE);
        assert_eq!(attempts(0, 0, 100), Attempts::NONE);
    }
}
