//! The key set of an issuer configured by `discovery:` or `jwks_uri:`, and its lifecycle.
//!
//! - **Fetched at start** ([`Trigger::Start`]); a provider that does not answer does not stop
//!   the gateway: until a key set is had, [`RemoteKeys::has_keys`] is false, the issuer's
//!   tokens are refused with 503 (identify) and `/readyz` names the issuer. A discovery
//!   document naming another issuer is the one failure that stops a start (or a reload): it
//!   is a configuration error, not an outage.
//! - **Refreshed in the background** ([`Trigger::Refresh`]) when [`RemoteKeys::next_refresh`]
//!   has passed on the gateway's clock: `Cache-Control: max-age` clamped to
//!   `[min_refresh, max_refresh]`, `min_refresh` when the response has none; after a failure,
//!   one cool-down later. The caller (the refresher in [`crate::reload`]) decides when to ask;
//!   this module decides whether it is due, so a test moves the manual clock and asks.
//! - **Refetched on an unknown `kid`** ([`Trigger::UnknownKid`]): at most one fetch per
//!   cool-down per issuer, whoever asks. Concurrent askers queue on one async mutex, so they
//!   share the fetch in flight (single flight): the first fetches, the others find the
//!   generation moved (use the new set) or the cool-down running (refused, counted).
//! - **The last good set is kept** when a fetch fails; a successful fetch replaces the set
//!   whole, so a key removed from the JWKS stops verifying at once, and the caller drops the
//!   cached tokens of the [`Change::removed`] kids.
//!
//! Which keys of a JWKS are used: public keys for signatures only. A JWK with private
//! members, a symmetric (`oct`) or unknown key type, `use` other than `sig`, no `kid`, or an
//! algorithm it cannot be pinned to is skipped with a warning; the rest of the set is used.
//! A JWK's `alg` pins its algorithm (and must be in the issuer's `algorithms`, when given); a
//! JWK without `alg` takes the one algorithm of `algorithms` its key type allows. A `kid` seen
//! twice in one document, or already used by a file key or another issuer, fails the fetch:
//! never a silent override. Nothing here reads a token: key material never comes from
//! `jku`/`x5u`/`jwk`/`x5c`.
//!
//! A discovery document also names the endpoints a browser login through the provider uses
//! (`auth.providers`): each fetch of it keeps them ([`RemoteKeys::endpoints`]), each checked
//! like any URL the gateway fetches ([`check_url`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::Uri;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

use super::fetch::{FetchError, Fetcher, UrlError, check_url};
use super::{KeySet, VerificationKey, parse_algorithm};
use crate::metrics::Metrics;

/// Where the key set comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The discovery document; its `jwks_uri` is fetched next.
    Discovery(Uri),
    /// The JWKS itself.
    Jwks(Uri),
}

/// How one issuer's remote key set is kept, compiled from its config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteSpec {
    /// The URL.
    pub source: Source,
    /// `algorithms:`: the allow-list of fetched keys' algorithms, at most one per key type.
    /// `None`: every algorithm a JWK names (of EdDSA, ES256, RS256, PS256), and a JWK without
    /// `alg` is skipped.
    pub algorithms: Option<Vec<Algorithm>>,
    /// Shortest interval between background refreshes.
    pub min_refresh: Duration,
    /// Longest interval between background refreshes.
    pub max_refresh: Duration,
    /// Least time between two fetches asked for by an unknown `kid`.
    pub cooldown: Duration,
    /// The CA file, when not the system roots (part of the identity of the source on reload).
    pub ca: Option<std::path::PathBuf>,
}

/// Why a fetch gave no key set.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The document could not be had.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The discovery document's `issuer` is not the configured one.
    #[error("the discovery document names issuer `{found}`, not `{expected}`")]
    IssuerMismatch {
        /// The configured issuer.
        expected: String,
        /// What the document says.
        found: String,
    },
    /// The discovery document has no `jwks_uri` string.
    #[error("the discovery document has no `jwks_uri`")]
    NoJwksUri,
    /// The JWKS has no `keys` array.
    #[error("the JWKS has no `keys` array")]
    NotAJwks,
    /// Every key of the JWKS was skipped.
    #[error("the JWKS holds no usable signature key")]
    NoUsableKey,
    /// A `kid` appears twice in the document.
    #[error("kid `{0}` appears twice in the JWKS")]
    DuplicateKid(String),
    /// A `kid` is already a file key's or another issuer's.
    #[error("kid `{0}` is already used by another key or issuer")]
    KidCollision(String),
}

impl RemoteError {
    /// Whether this failure is a configuration error (stops a start or a reload) rather than
    /// an outage (the gateway runs, and refuses the issuer's tokens with 503).
    pub fn is_config_error(&self) -> bool {
        match self {
            RemoteError::IssuerMismatch { .. } => true,
            RemoteError::Fetch(_)
            | RemoteError::NoJwksUri
            | RemoteError::NotAJwks
            | RemoteError::NoUsableKey
            | RemoteError::DuplicateKid(_)
            | RemoteError::KidCollision(_) => false,
        }
    }
}

/// What asked for a fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The gateway starting (or a reload adding the issuer): always fetches.
    Start,
    /// The background refresher: fetches when [`RemoteKeys::next_refresh`] has passed.
    Refresh,
    /// A token with a `kid` no key has: fetches at most once per cool-down.
    UnknownKid,
}

/// What a fetch changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Change {
    /// Kids new in this set.
    pub added: Vec<Box<str>>,
    /// Kids gone from this set: their cached tokens must be dropped.
    pub removed: Vec<Box<str>>,
}

/// One fetched key set. Replaced whole; never changed in place.
#[derive(Debug)]
pub struct FetchedSet {
    keys: HashMap<Box<str>, Arc<VerificationKey>>,
    /// Each key's JWK as published: a kid whose JWK changed is a removed key and a new one.
    jwks: HashMap<Box<str>, Value>,
    /// The JWKS as fetched: a reload that keeps the source re-reads it instead of refetching.
    document: Value,
}

/// The endpoints a discovery document names for a browser login (OpenID Connect Discovery 3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// `authorization_endpoint`: where the browser is sent to sign in.
    pub authorization: Uri,
    /// `token_endpoint`: where the gateway exchanges the code.
    pub token: Uri,
    /// `end_session_endpoint`, when the provider has one.
    pub end_session: Option<Uri>,
}

impl Endpoints {
    /// The endpoints of a discovery document; `None` without a usable authorization and token
    /// endpoint (an issuer whose tokens are accepted but nobody signs in through).
    fn read(doc: &Value) -> Option<Self> {
        let url = |name: &str| {
            doc.get(name)
                .and_then(Value::as_str)
                .and_then(|u| check_url(u).ok())
        };
        Some(Self {
            authorization: url("authorization_endpoint")?,
            token: url("token_endpoint")?,
            end_session: url("end_session_endpoint"),
        })
    }
}

/// One issuer's remote key set and its fetch state.
#[derive(Debug)]
pub struct RemoteKeys {
    /// Index of the issuer in [`KeySet::issuers`].
    pub issuer: usize,
    /// The issuer's `iss`.
    pub iss: Box<str>,
    spec: RemoteSpec,
    fetcher: Fetcher,
    /// The current set; `None` until a fetch succeeds. Read lock-free on every cold
    /// verification; swapped whole by a fetch.
    current: ArcSwapOption<FetchedSet>,
    /// Bumped when `current` is replaced: a waiter that sees it moved knows the fetch it
    /// queued behind brought a new set.
    generation: AtomicU64,
    /// When (gateway clock, Unix seconds) the background refresh is due; 0: now.
    next_refresh: AtomicI64,
    /// Held across a fetch: one fetch per issuer at a time (single flight), and the instant
    /// of the last attempt, which the unknown-`kid` cool-down counts from. An async mutex
    /// because it is held across the network round trip.
    last_attempt: tokio::sync::Mutex<Option<i64>>,
    /// The login endpoints of the last discovery document fetched (none for `jwks_uri`).
    endpoints: ArcSwapOption<Endpoints>,
}

impl RemoteKeys {
    /// An issuer's remote key set with nothing fetched yet.
    pub fn new(issuer: usize, iss: &str, spec: RemoteSpec, fetcher: Fetcher) -> Self {
        Self {
            issuer,
            iss: iss.into(),
            spec,
            fetcher,
            current: ArcSwapOption::empty(),
            generation: AtomicU64::new(0),
            next_refresh: AtomicI64::new(0),
            last_attempt: tokio::sync::Mutex::new(None),
            endpoints: ArcSwapOption::empty(),
        }
    }

    /// Where this issuer's keys come from.
    pub fn source(&self) -> &Source {
        &self.spec.source
    }

    /// The login endpoints of the last discovery document fetched; `None` before one was, or
    /// for an issuer by `jwks_uri`.
    pub fn endpoints(&self) -> Option<Arc<Endpoints>> {
        self.endpoints.load_full()
    }

    /// The client this issuer's documents are fetched with (its roots, its limits): the login
    /// flow posts the authorization code to the token endpoint with it.
    pub fn fetcher(&self) -> &Fetcher {
        &self.fetcher
    }

    /// Whether a key set has been had.
    pub fn has_keys(&self) -> bool {
        self.current.load().is_some()
    }

    /// When the background refresh is due (Unix seconds on the gateway's clock).
    pub fn next_refresh(&self) -> i64 {
        self.next_refresh.load(Ordering::Relaxed)
    }

    /// The kids of the current set, sorted.
    pub fn kids(&self) -> Vec<Box<str>> {
        let mut kids: Vec<Box<str>> = self
            .current
            .load()
            .as_ref()
            .map(|s| s.keys.keys().cloned().collect())
            .unwrap_or_default();
        kids.sort();
        kids
    }

    fn key(&self, kid: &str) -> Option<Arc<VerificationKey>> {
        self.current.load().as_ref()?.keys.get(kid).cloned()
    }

    fn contains(&self, kid: &str) -> bool {
        self.current
            .load()
            .as_ref()
            .is_some_and(|s| s.keys.contains_key(kid))
    }

    /// The interval until the next refresh for a response's `max-age`.
    fn interval(&self, max_age: Option<Duration>) -> Duration {
        max_age
            .unwrap_or(self.spec.min_refresh)
            .clamp(self.spec.min_refresh, self.spec.max_refresh)
    }

    /// Fetches the documents and reads the JWKS; touches no state but the login endpoints of
    /// a discovery document whose `issuer` matched.
    async fn download(&self) -> Result<(Value, Option<Duration>), RemoteError> {
        let jwks_uri = match &self.spec.source {
            Source::Jwks(uri) => uri.clone(),
            Source::Discovery(uri) => {
                let doc = self.fetcher.get_json(uri).await?;
                let found = doc.json.get("issuer").and_then(Value::as_str);
                // Byte for byte: no trailing-slash or case folding (OpenID Connect Discovery 4.3).
                if found != Some(&*self.iss) {
                    return Err(RemoteError::IssuerMismatch {
                        expected: self.iss.to_string(),
                        found: found.unwrap_or("").to_owned(),
                    });
                }
                if let Some(endpoints) = Endpoints::read(&doc.json) {
                    self.endpoints.store(Some(Arc::new(endpoints)));
                }
                let jwks = doc
                    .json
                    .get("jwks_uri")
                    .and_then(Value::as_str)
                    .ok_or(RemoteError::NoJwksUri)?;
                let jwks_uri = check_url(jwks).map_err(FetchError::from)?;
                // Plain `http` to loopback is for a provider the operator put on loopback; a
                // document fetched over TLS does not get to send the gateway to a local port.
                if jwks_uri.scheme_str() == Some("http") && uri.scheme_str() != Some("http") {
                    return Err(FetchError::from(UrlError::Insecure(jwks.to_owned())).into());
                }
                jwks_uri
            }
        };
        let doc = self.fetcher.get_json(&jwks_uri).await?;
        Ok((doc.json, doc.max_age))
    }
}

impl KeySet {
    /// Adds an issuer's remote key set.
    pub fn add_remote(&mut self, remote: RemoteKeys) {
        self.remote.push(Arc::new(remote));
    }

    /// The remote key sets, in issuer order.
    pub fn remote(&self) -> &[Arc<RemoteKeys>] {
        &self.remote
    }

    /// The remote key set of the issuer whose `iss` is `iss`.
    pub fn remote_for(&self, iss: &str) -> Option<&Arc<RemoteKeys>> {
        self.remote.iter().find(|r| *r.iss == *iss)
    }

    /// The `iss` of every remote issuer that has no key set yet.
    pub fn issuers_without_keys(&self) -> Vec<&str> {
        self.remote
            .iter()
            .filter(|r| !r.has_keys())
            .map(|r| &*r.iss)
            .collect()
    }

    /// A remote key by `kid`; a kid found in two sets (two fetches racing) is no key at all.
    pub(super) fn remote_key(&self, kid: &str) -> Option<Arc<VerificationKey>> {
        let mut found = None;
        for remote in &self.remote {
            if let Some(key) = remote.key(kid) {
                if found.is_some() {
                    return None;
                }
                found = Some(key);
            }
        }
        found
    }

    /// Fetches `remote`'s key set if `trigger` allows it now (see the module docs), and swaps
    /// it in. `Ok(None)`: no fetch was due (or a concurrent one just brought a new set);
    /// `Ok(Some(change))`: a new set is in place; `Err`: the fetch failed and the previous set
    /// (if any) stays. Counted into `metrics`; every fetch is logged here, once.
    pub async fn fetch(
        &self,
        remote: &RemoteKeys,
        trigger: Trigger,
        now: i64,
        metrics: &Metrics,
    ) -> Result<Option<Change>, RemoteError> {
        let seen = remote.generation.load(Ordering::Acquire);
        let mut last_attempt = remote.last_attempt.lock().await;
        match trigger {
            Trigger::Start => {}
            Trigger::Refresh => {
                if now < remote.next_refresh() {
                    return Ok(None);
                }
            }
            Trigger::UnknownKid => {
                if remote.generation.load(Ordering::Acquire) != seen {
                    // The fetch this caller queued behind brought a new set: use that.
                    return Ok(None);
                }
                let cooldown = i64::try_from(remote.spec.cooldown.as_secs()).unwrap_or(i64::MAX);
                if last_attempt.is_some_and(|at| now < at.saturating_add(cooldown)) {
                    metrics
                        .jwks_refetches_refused
                        .fetch_add(1, Ordering::Relaxed);
                    return Ok(None);
                }
                metrics.jwks_refetches.fetch_add(1, Ordering::Relaxed);
            }
        }
        *last_attempt = Some(now);
        metrics.jwks_fetches.fetch_add(1, Ordering::Relaxed);
        let outcome = match remote.download().await {
            Ok((document, max_age)) => self
                .read_set(remote, document)
                .map(|set| (set, remote.interval(max_age))),
            Err(e) => Err(e),
        };
        match outcome {
            Ok((set, interval)) => {
                let Change { added, removed } = diff(remote.current.load().as_deref(), &set);
                remote.current.store(Some(Arc::new(set)));
                remote.generation.fetch_add(1, Ordering::Release);
                let next = now.saturating_add(secs(interval));
                remote.next_refresh.store(next, Ordering::Relaxed);
                tracing::info!(issuer = %remote.iss, ?trigger, ?added, ?removed, next_refresh = next, "remote keys fetched");
                Ok(Some(Change { added, removed }))
            }
            Err(e) => {
                metrics.jwks_fetch_failures.fetch_add(1, Ordering::Relaxed);
                // Try again one cool-down later, not at the (long) refresh interval: the set
                // may be missing altogether.
                let next = now.saturating_add(secs(remote.spec.cooldown));
                remote.next_refresh.store(next, Ordering::Relaxed);
                tracing::warn!(issuer = %remote.iss, ?trigger, error = %e, has_keys = remote.has_keys(), next_refresh = next, "remote keys fetch failed; the previous set (if any) stays");
                Err(e)
            }
        }
    }

    /// Takes over what `old` fetched for the same issuer and source (same `iss`, URL, CA and
    /// `algorithms`), so a reload refetches nothing that did not change. A set that no longer
    /// fits (its kids now collide with a file key) is left behind: the next fetch decides.
    pub fn adopt_remote(&self, old: &KeySet) {
        for new in &self.remote {
            let Some(prev) = old
                .remote
                .iter()
                .find(|p| p.iss == new.iss && p.spec == new.spec)
            else {
                continue;
            };
            let Some(set) = prev.current.load_full() else {
                continue;
            };
            if let Ok(set) = self.read_set(new, set.document.clone()) {
                new.current.store(Some(Arc::new(set)));
                new.generation.fetch_add(1, Ordering::Release);
            }
            new.endpoints.store(prev.endpoints.load_full());
            new.next_refresh
                .store(prev.next_refresh(), Ordering::Relaxed);
            if let (Ok(mut to), Ok(from)) =
                (new.last_attempt.try_lock(), prev.last_attempt.try_lock())
            {
                *to = *from;
            }
        }
    }

    /// Reads a JWKS document into `remote`'s key set, checking its kids against every other
    /// key of this key set.
    fn read_set(&self, remote: &RemoteKeys, document: Value) -> Result<FetchedSet, RemoteError> {
        let (keys, jwks) = read_jwks(&document, &remote.spec, remote.issuer, &remote.iss)?;
        for kid in keys.keys() {
            let elsewhere = self.static_key(kid).is_some()
                || self
                    .remote
                    .iter()
                    .any(|r| r.issuer != remote.issuer && r.contains(kid));
            if elsewhere {
                return Err(RemoteError::KidCollision(kid.to_string()));
            }
        }
        Ok(FetchedSet {
            keys,
            jwks,
            document,
        })
    }
}

/// What replacing `old` by `new` changes. A kid whose published JWK changed (the provider put
/// other key material under the same id) counts as removed and added: tokens verified with the
/// old material must leave the cache.
fn diff(old: Option<&FetchedSet>, new: &FetchedSet) -> Change {
    let same = |a: &FetchedSet, b: &FetchedSet, kid: &str| a.jwks.get(kid) == b.jwks.get(kid);
    let mut added: Vec<Box<str>> = new
        .jwks
        .keys()
        .filter(|kid| old.is_none_or(|old| !same(old, new, kid)))
        .cloned()
        .collect();
    let mut removed: Vec<Box<str>> = old
        .map(|old| {
            old.jwks
                .keys()
                .filter(|kid| !same(old, new, kid))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    added.sort();
    removed.sort();
    Change { added, removed }
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// Private and symmetric JWK members: a set that carries them is leaking secrets, and no such
/// key is used.
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// Keys by kid, and the JWK each came from.
type ReadSet = (
    HashMap<Box<str>, Arc<VerificationKey>>,
    HashMap<Box<str>, Value>,
);

/// The usable keys of a JWKS document, each pinned to one algorithm (see the module docs).
fn read_jwks(
    doc: &Value,
    spec: &RemoteSpec,
    issuer: usize,
    iss: &str,
) -> Result<ReadSet, RemoteError> {
    let keys = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or(RemoteError::NotAJwks)?;
    let mut out: HashMap<Box<str>, Arc<VerificationKey>> = HashMap::new();
    let mut jwks: HashMap<Box<str>, Value> = HashMap::new();
    for (i, raw) in keys.iter().enumerate() {
        match read_jwk(raw, spec) {
            Ok((kid, alg, key)) => {
                if out.contains_key(kid) {
                    return Err(RemoteError::DuplicateKid(kid.to_owned()));
                }
                out.insert(kid.into(), Arc::new(VerificationKey { alg, key, issuer }));
                jwks.insert(kid.into(), raw.clone());
            }
            Err(why) => {
                let kid = raw.get("kid").and_then(Value::as_str).unwrap_or("");
                tracing::warn!(issuer = iss, index = i, kid, why, "JWK skipped");
            }
        }
    }
    if out.is_empty() {
        return Err(RemoteError::NoUsableKey);
    }
    Ok((out, jwks))
}

/// One JWK, or why it is skipped.
fn read_jwk<'a>(
    raw: &'a Value,
    spec: &RemoteSpec,
) -> Result<(&'a str, Algorithm, DecodingKey), &'static str> {
    let obj = raw.as_object().ok_or("not an object")?;
    if PRIVATE_MEMBERS.iter().any(|m| obj.contains_key(*m)) {
        return Err("holds private or symmetric key material");
    }
    match obj.get("use") {
        None => {}
        Some(Value::String(u)) if u == "sig" => {}
        Some(_) => return Err("`use` is not `sig`"),
    }
    if let Some(ops) = obj.get("key_ops") {
        let verifies = ops
            .as_array()
            .is_some_and(|ops| ops.iter().any(|o| o.as_str() == Some("verify")));
        if !verifies {
            return Err("`key_ops` does not allow `verify`");
        }
    }
    let kid = obj
        .get("kid")
        .and_then(Value::as_str)
        .filter(|k| !k.is_empty() && k.len() <= 256)
        .ok_or("no usable `kid`")?;
    let family: &[Algorithm] = match (
        obj.get("kty").and_then(Value::as_str),
        obj.get("crv").and_then(Value::as_str),
    ) {
        (Some("RSA"), _) => &[Algorithm::RS256, Algorithm::PS256],
        (Some("EC"), Some("P-256")) => &[Algorithm::ES256],
        (Some("OKP"), Some("Ed25519")) => &[Algorithm::EdDSA],
        (Some("oct"), _) => return Err("symmetric (`oct`) keys are never trusted from a JWKS"),
        _ => return Err("key type or curve not supported"),
    };
    let allowed = |alg: &Algorithm| {
        family.contains(alg)
            && spec
                .algorithms
                .as_ref()
                .is_none_or(|list| list.contains(alg))
    };
    let alg = match obj.get("alg") {
        Some(Value::String(name)) => {
            let alg = parse_algorithm(name).map_err(|_| "`alg` is not an allowed algorithm")?;
            if !allowed(&alg) {
                return Err("`alg` does not fit the key type or the issuer's `algorithms`");
            }
            alg
        }
        Some(_) => return Err("`alg` is not a string"),
        None => {
            let list = spec
                .algorithms
                .as_ref()
                .ok_or("no `alg`, and the issuer lists no `algorithms`")?;
            let mut fits = list.iter().filter(|a| family.contains(a));
            match (fits.next(), fits.next()) {
                (Some(alg), None) => *alg,
                _ => return Err("no `alg`, and `algorithms` has not exactly one for its key type"),
            }
        }
    };
    let jwk: jsonwebtoken::jwk::Jwk =
        serde_json::from_value(raw.clone()).map_err(|_| "not a valid JWK")?;
    let key = DecodingKey::from_jwk(&jwk).map_err(|_| "not a valid public key")?;
    Ok((kid, alg, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(algorithms: Option<Vec<Algorithm>>) -> RemoteSpec {
        RemoteSpec {
            source: Source::Jwks("https://idp.test/jwks".parse().unwrap()),
            algorithms,
            min_refresh: Duration::from_secs(300),
            max_refresh: Duration::from_secs(86_400),
            cooldown: Duration::from_secs(30),
            ca: None,
        }
    }

    const ED_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";

    #[test]
    fn a_jwk_is_pinned_by_its_alg_or_by_the_issuers_one_algorithm_for_its_type() {
        let with_alg =
            serde_json::json!({"kty":"OKP","crv":"Ed25519","x":ED_X,"kid":"a","alg":"EdDSA"});
        assert_eq!(
            read_jwk(&with_alg, &spec(None)).unwrap().1,
            Algorithm::EdDSA
        );
        let without = serde_json::json!({"kty":"OKP","crv":"Ed25519","x":ED_X,"kid":"a"});
        assert!(read_jwk(&without, &spec(None)).is_err());
        let (_, alg, _) = read_jwk(&without, &spec(Some(vec![Algorithm::EdDSA]))).unwrap();
        assert_eq!(alg, Algorithm::EdDSA);
        // An `alg` outside the issuer's list, or of another key type, is refused.
        assert!(read_jwk(&with_alg, &spec(Some(vec![Algorithm::RS256]))).is_err());
        let wrong =
            serde_json::json!({"kty":"OKP","crv":"Ed25519","x":ED_X,"kid":"a","alg":"RS256"});
        assert!(read_jwk(&wrong, &spec(None)).is_err());
    }

    #[test]
    fn a_kid_whose_jwk_changed_counts_as_removed_and_added() {
        let set = |jwks: Vec<Value>| {
            let document = serde_json::json!({ "keys": jwks });
            let (keys, jwks) = read_jwks(&document, &spec(None), 0, "iss").unwrap();
            FetchedSet {
                keys,
                jwks,
                document,
            }
        };
        let a = serde_json::json!({"kty":"OKP","crv":"Ed25519","x":ED_X,"kid":"a","alg":"EdDSA"});
        let b = serde_json::json!({"kty":"OKP","crv":"Ed25519","x":ED_X,"kid":"b","alg":"EdDSA"});
        let mut a2 = a.clone();
        a2["x"] = serde_json::json!("iWNGWXkaVvEx0ikOrEb7gDTTmmTDxSKAxRaMw2Df_Gs");
        let first = set(vec![a.clone()]);
        assert_eq!(diff(None, &first).added, vec![Box::from("a")]);
        let change = diff(Some(&first), &set(vec![a.clone(), b]));
        assert_eq!(
            (change.added, change.removed),
            (vec![Box::from("b")], vec![])
        );
        let change = diff(Some(&first), &set(vec![a2]));
        assert_eq!(
            (change.added, change.removed),
            (vec![Box::from("a")], vec![Box::from("a")])
        );
        assert_eq!(diff(Some(&first), &set(vec![a])), Change::default());
    }

    #[test]
    fn private_symmetric_and_encryption_keys_are_skipped() {
        for bad in [
            serde_json::json!({"kty":"OKP","crv":"Ed25519","x":ED_X,"d":ED_X,"kid":"a","alg":"EdDSA"}),
            serde_json::json!({"kty":"oct","k":"c2VjcmV0","kid":"a","alg":"HS256"}),
            serde_json::json!({"kty":"OKP","crv":"Ed25519","x":ED_X,"kid":"a","alg":"EdDSA","use":"enc"}),
            serde_json::json!({"kty":"OKP","crv":"Ed25519","x":ED_X,"alg":"EdDSA"}),
        ] {
            assert!(read_jwk(&bad, &spec(None)).is_err(), "{bad}");
        }
    }
}
