//! Shared fixtures of the fuzz targets in `src/bin/`: the fixed key set and its config, the
//! seed tokens that key set accepts, and a parser from fuzz bytes to a header map.
//!
//! The keys under `fuzz/fixtures/` are published test keys: they sign nothing but fuzz seeds.

use std::path::{Path, PathBuf};

use http::{HeaderMap, HeaderName, HeaderValue};
use portcullis::config::Config;

/// The clock every target verifies at: a minute after the seed tokens' `iat`
/// (`fuzz/fixtures/mint_tokens.py`).
pub const NOW: i64 = 1_800_000_060;

/// The seed tokens the fixed key set accepts at [`NOW`]: the only inputs a verifier may accept.
pub const VALID_TOKENS: &[&str] = &[
    include_str!("../corpus/jws_verify/valid-eddsa"),
    include_str!("../corpus/jws_verify/valid-es256"),
    include_str!("../corpus/jws_verify/valid-rs256"),
    include_str!("../corpus/jws_verify/valid-ps256"),
    include_str!("../corpus/jws_verify/valid-hs256"),
    include_str!("../corpus/jws_verify/valid-eddsa-aud-array-nbf"),
    include_str!("../corpus/jws_verify/valid-rs256-no-roles"),
    include_str!("../corpus/jws_verify/valid-rs256-float-exp"),
];

/// Signed by the fixed key set and wrong only in being expired at [`NOW`]: accepted by
/// `verify_ignoring_expiry` and nothing else.
pub const EXPIRED_TOKENS: &[&str] = &[include_str!("../corpus/jws_verify/expired-eddsa")];

/// The repository root: relative paths in the config seeds resolve against it.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `fuzz/fixtures/`: the fixed keys and `verifier.yaml`.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// The compiled `fuzz/fixtures/verifier.yaml`: the fixed key set (EdDSA, ES256 with sessions;
/// RS256, PS256, HS256 without) and only protected routes, to the built-in echo upstream.
pub fn verifier_config() -> Config {
    let dir = fixtures();
    let text =
        std::fs::read_to_string(dir.join("verifier.yaml")).expect("fuzz/fixtures/verifier.yaml");
    Config::from_yaml(&text, &dir).expect("fuzz/fixtures/verifier.yaml compiles")
}

/// Headers from fuzz bytes: one `name: value` per line (`\n` or `\r\n`); lines that are not
/// a valid header name and value are skipped, repeated names are appended.
pub fn headers(data: &[u8]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let value = value.strip_prefix(b" ").unwrap_or(value);
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            map.append(name, value);
        }
    }
    map
}
