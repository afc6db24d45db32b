//! Verification keys: every key is bound to one algorithm and one issuer when the config is
//! compiled, and is found by `kid` alone. Nothing about a key is ever read from a token.

pub mod ecdsa;
pub mod fetch;
pub mod profile;
pub mod remote;
pub mod signing;

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey};

/// Algorithms an operator may bind a key to. Anything else (`none`, HS384, …) is a config error.
pub const ALLOWED_ALGORITHMS: [&str; 5] = ["EdDSA", "ES256", "RS256", "PS256", "HS256"];

/// A trusted issuer, compiled.
#[derive(Debug)]
pub struct Issuer {
    /// The exact `iss` value its tokens must carry.
    pub iss: Box<str>,
    /// Accepted audiences; a token's `aud` must contain one.
    pub audiences: Box<[Box<str>]>,
    /// Whether `sid` is required and must be a live session in the store.
    pub require_session: bool,
    /// Longest accepted `exp - iat`.
    pub max_lifetime: Duration,
    /// `typ`, `jti`, clients, subject claim, permissions and identity claims.
    pub profile: profile::TokenProfile,
    /// Whether the store knows this issuer's users by `iss` and subject (every issuer but the
    /// gateway's own) rather than by the subject alone (the users file's names): `alice` at
    /// two providers are two users, revoked one at a time. See [`Issuer::user_key`].
    pub qualify_users: bool,
}

impl Issuer {
    /// The name the store knows `subject` of this issuer by: per-user revocation marks and
    /// session ownership key on it. The subject alone for the gateway's own issuer; else
    /// `<iss>#<subject>` (an external issuer's `iss` holds no `#`, checked at load, so the
    /// first `#` ends it).
    pub fn user_key(&self, subject: &str) -> Box<str> {
        if self.qualify_users {
            format!("{}#{subject}", self.iss).into()
        } else {
            subject.into()
        }
    }
}

/// One public key (or HMAC secret) and the only algorithm it verifies.
pub struct VerificationKey {
    /// The pinned algorithm.
    pub alg: Algorithm,
    /// The key material.
    pub key: DecodingKey,
    /// Index into [`KeySet::issuers`] of the issuer this key belongs to.
    pub issuer: usize,
}

impl fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Key material stays out of logs, even public halves: they are noise, and HS256 is secret.
        f.debug_struct("VerificationKey")
            .field("alg", &self.alg)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

/// All verification keys, indexed by `kid`: the file keys, compiled with the config, and the
/// remote key sets of issuers configured by discovery or JWKS URI ([`remote`]), which change
/// under a running runtime.
#[derive(Debug, Default)]
pub struct KeySet {
    by_kid: HashMap<Box<str>, Arc<VerificationKey>>,
    /// The issuers the keys belong to.
    pub issuers: Vec<Issuer>,
    /// Remote key sets, one per issuer that has `discovery` or `jwks_uri`. `Arc`: the
    /// refresher holds one across a fetch while a reload may drop the runtime.
    remote: Vec<Arc<remote::RemoteKeys>>,
}

/// Why a key could not be loaded. The caller adds the config key path.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file's content is not a usable key for the algorithm.
    #[error("{path} is not a valid {alg} key: {source}")]
    Parse {
        /// The file.
        path: String,
        /// The algorithm it was meant for.
        alg: &'static str,
        /// The parser's complaint.
        #[source]
        source: jsonwebtoken::errors::Error,
    },
    /// Anything else wrong with the key's declaration.
    #[error("{0}")]
    Invalid(String),
    /// The crypto library refused the key material: wrong curve, too short, inconsistent.
    #[error("{path} is not a usable {alg} private key: {source}")]
    Rejected {
        /// The file (or "generated key").
        path: String,
        /// The algorithm it was meant for.
        alg: &'static str,
        /// The library's complaint.
        #[source]
        source: aws_lc_rs::error::KeyRejected,
    },
    /// The crypto library failed at something that does not depend on the input (key
    /// generation, encoding a public key).
    #[error("{what} failed")]
    Crypto {
        /// What was being done.
        what: &'static str,
        /// The library's (deliberately uninformative) error.
        #[source]
        source: aws_lc_rs::error::Unspecified,
    },
}

impl KeySet {
    /// Adds an issuer and returns its index.
    pub fn add_issuer(&mut self, issuer: Issuer) -> usize {
        self.issuers.push(issuer);
        self.issuers.len() - 1
    }

    /// Adds a key; a `kid` may be used only once across all issuers.
    pub fn insert(&mut self, kid: &str, key: VerificationKey) -> Result<(), KeyError> {
        if kid.is_empty() || kid.len() > 256 {
            return Err(KeyError::Invalid("kid must be 1 to 256 characters".into()));
        }
        if self.by_kid.contains_key(kid) {
            return Err(KeyError::Invalid(format!("kid `{kid}` is used twice")));
        }
        self.by_kid.insert(kid.into(), Arc::new(key));
        Ok(())
    }

    /// Finds a key by `kid`: a file key, else a key of a remote set as it is now. Unknown ids
    /// are simply absent: no file, no fetch, no delay (an unknown `kid` of a remote issuer is
    /// refetched by identify, rate-limited, never here).
    pub fn get(&self, kid: &str) -> Option<Arc<VerificationKey>> {
        self.static_key(kid).or_else(|| self.remote_key(kid))
    }

    fn static_key(&self, kid: &str) -> Option<Arc<VerificationKey>> {
        self.by_kid.get(kid).cloned()
    }

    /// The ids of the file keys, in no order (remote sets: [`remote::RemoteKeys::kids`]).
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.by_kid.keys().map(|k| &**k)
    }

    /// How many file keys there are.
    pub fn len(&self) -> usize {
        self.by_kid.len()
    }

    /// Whether no key is loaded and none can be fetched.
    pub fn is_empty(&self) -> bool {
        self.by_kid.is_empty() && self.remote.is_empty()
    }
}

/// Maps a config algorithm name (compared exactly) to the crate's algorithm.
pub fn parse_algorithm(name: &str) -> Result<Algorithm, KeyError> {
    match name {
        "EdDSA" => Ok(Algorithm::EdDSA),
        "ES256" => Ok(Algorithm::ES256),
        "RS256" => Ok(Algorithm::RS256),
        "PS256" => Ok(Algorithm::PS256),
        "HS256" => Ok(Algorithm::HS256),
        other => Err(KeyError::Invalid(format!(
            "algorithm `{other}` is not allowed (one of {})",
            ALLOWED_ALGORITHMS.join(", ")
        ))),
    }
}

/// The name a token's `alg` header must carry, byte for byte, for a key bound to `alg`.
pub fn algorithm_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::EdDSA => "EdDSA",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        // The enum is non-exhaustive; a future algorithm can never be bound to a key here,
        // because `parse_algorithm` only produces the five above.
        _ => "unsupported",
    }
}

fn read(path: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|source| KeyError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Loads a public key PEM for `alg`.
pub fn load_pem(path: &Path, alg: Algorithm) -> Result<DecodingKey, KeyError> {
    let pem = read(path)?;
    let parsed = match alg {
        Algorithm::RS256 | Algorithm::PS256 => DecodingKey::from_rsa_pem(&pem),
        Algorithm::ES256 => DecodingKey::from_ec_pem(&pem),
        Algorithm::EdDSA => DecodingKey::from_ed_pem(&pem),
        _ => {
            return Err(KeyError::Invalid(format!(
                "{} keys cannot come from a PEM file",
                algorithm_name(alg)
            )));
        }
    };
    parsed.map_err(|source| KeyError::Parse {
        path: path.display().to_string(),
        alg: algorithm_name(alg),
        source,
    })
}

/// Loads an HS256 secret file: raw bytes, at least 32 of them (RFC 7518 §3.2).
pub fn load_secret(path: &Path) -> Result<DecodingKey, KeyError> {
    let secret = read(path)?;
    if secret.len() < 32 {
        return Err(KeyError::Invalid(format!(
            "{} holds {} bytes; an HS256 secret needs at least 32",
            path.display(),
            secret.len()
        )));
    }
    Ok(DecodingKey::from_secret(&secret))
}

/// Loads a local JWKS file: `(kid, alg, key)` for each public key. Each JWK must name its
/// `kid` and `alg`; private members and symmetric keys are refused.
pub fn load_jwks(path: &Path) -> Result<Vec<(String, Algorithm, DecodingKey)>, KeyError> {
    let bytes = read(path)?;
    let invalid = |msg: String| KeyError::Invalid(format!("{}: {msg}", path.display()));
    let doc: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| invalid(format!("not JSON: {e}")))?;
    let keys = doc
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or_else(|| invalid("no `keys` array".into()))?;
    let mut out = Vec::with_capacity(keys.len());
    for (i, raw) in keys.iter().enumerate() {
        let obj = raw
            .as_object()
            .ok_or_else(|| invalid(format!("keys[{i}] is not an object")))?;
        for private in ["d", "p", "q", "dp", "dq", "qi", "k"] {
            if obj.contains_key(private) {
                return Err(invalid(format!(
                    "keys[{i}] holds private or symmetric material (`{private}`); publish public keys only"
                )));
            }
        }
        let kid = obj
            .get("kid")
            .and_then(|v| v.as_str())
            .ok_or_else(|| invalid(format!("keys[{i}] has no `kid`")))?;
        let alg_name = obj
            .get("alg")
            .and_then(|v| v.as_str())
            .ok_or_else(|| invalid(format!("keys[{i}] has no `alg`")))?;
        let alg = parse_algorithm(alg_name)?;
        if alg == Algorithm::HS256 {
            return Err(invalid(format!(
                "keys[{i}]: HS256 keys belong in secret_file"
            )));
        }
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(raw.clone())
            .map_err(|e| invalid(format!("keys[{i}] is not a JWK: {e}")))?;
        let key = DecodingKey::from_jwk(&jwk).map_err(|source| KeyError::Parse {
            path: path.display().to_string(),
            alg: algorithm_name(alg),
            source,
        })?;
        out.push((kid.to_owned(), alg, key));
    }
    Ok(out)
}
