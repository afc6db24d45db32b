//! The JWS parser and verifier (`pipeline::verify`), with the fixed key set of
//! `fuzz/fixtures/verifier.yaml`, on any bytes as a token.
//!
//! Properties: it never panics; a token is accepted only when it is exactly one of the seed
//! tokens those keys signed (`VALID_TOKENS`) — anything else, however close, is refused by the
//! cached and the uncached path alike; ignoring expiry adds only the seeds that are merely
//! expired; and what is accepted carries header-safe identifiers.

use std::panic::AssertUnwindSafe;

use portcullis::metrics::Metrics;
use portcullis::pipeline::verify::{self, TokenCache};
use portcullis_fuzz::{EXPIRED_TOKENS, NOW, VALID_TOKENS, verifier_config};

fn main() {
    // Asserted unwind-safe: a panic aborts the process (afl), nothing observes the state after.
    let state = AssertUnwindSafe((
        verifier_config().runtime,
        TokenCache::new(1024),
        Metrics::default(),
    ));
    afl::fuzz!(|data: &[u8]| {
        // The cache is the target's own: verified seeds stay in it, as in production.
        let (runtime, cache, metrics) = &*state;
        let Ok(token) = std::str::from_utf8(data) else {
            return;
        };
        let valid = VALID_TOKENS.contains(&token);
        let uncached = verify::verify_uncached(
            token,
            &runtime.identify.verifier,
            &runtime.identify.permissions,
            NOW,
        );
        let cached = verify::verify(
            token,
            &runtime.identify.verifier,
            cache,
            &runtime.identify.permissions,
            NOW,
            metrics,
        );
        let lenient = verify::verify_ignoring_expiry(
            token,
            &runtime.identify.verifier,
            &runtime.identify.permissions,
            NOW,
            metrics,
        );
        assert_eq!(
            uncached.is_ok(),
            valid,
            "uncached verdict {uncached:?} on {token:?}"
        );
        assert_eq!(
            cached.is_ok(),
            valid,
            "cached verdict {:?} on {token:?}",
            cached.as_ref().err()
        );
        assert_eq!(
            lenient.is_ok(),
            valid || EXPIRED_TOKENS.contains(&token),
            "expiry-blind verdict {:?} on {token:?}",
            lenient.as_ref().err()
        );
        if let Ok(v) = &uncached {
            assert!(!v.subject.is_empty() && !v.subject.chars().any(char::is_control));
            assert_eq!(v.subject_header.to_str().ok(), Some(&*v.subject));
            assert!(v.expires_at > NOW - runtime.identify.verifier.leeway);
        }
    });
}
