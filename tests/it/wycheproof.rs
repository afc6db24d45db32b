//! Known-answer vectors (docs/security.md 3): Project Wycheproof's signature-verification
//! vectors for every asymmetric algorithm the gateway verifies, run through the verify stage's
//! signature check.
//!
//! **Which layer.** A Wycheproof vector is (public key, message, signature) with an arbitrary
//! message; a JWS verifier checks a signature over `base64url(header).base64url(payload)`, so a
//! vector's message cannot be fed through a whole token. The vectors therefore go through
//! [`portcullis::pipeline::verify::check_signature`], the function the verify stage calls for
//! every token with the token's signing input: it decodes the signature segment (canonical
//! base64url), applies the stage's own pre-checks (ES256: 64 bytes, `1 ≤ r < n`,
//! `1 ≤ s ≤ n/2`), then calls `jsonwebtoken::crypto::verify` with the key and its pinned
//! algorithm. Keys are loaded from the vectors' PEM with [`portcullis::keys::load_pem`], the
//! loader of `issuers[].keys[].public_key_file`, so key parsing is the gateway's too.
//!
//! | family | file | JWS algorithm |
//! |---|---|---|
//! | ECDSA P-256, SHA-256, P1363 (`r ‖ s`, the JWS form) | `ecdsa_secp256r1_sha256_p1363` | ES256 |
//! | Ed25519 | `ed25519` | EdDSA |
//! | RSASSA-PKCS1-v1_5, SHA-256, 2048/3072/4096 bits | `rsa_signature_{2048,3072,4096}_sha256` | RS256 |
//! | RSASSA-PSS, SHA-256, MGF1-SHA-256, 32-byte salt, 2048/3072/4096 bits | `rsa_pss_{2048,3072,4096}_sha256_mgf1_32` | PS256 |
//!
//! **Expected results.** `valid` → accepted; `invalid` → refused; `acceptable` (legal but
//! dubious encodings, here only PKCS#1 signatures whose DigestInfo lacks the NULL parameter) →
//! refused: the gateway accepts one encoding of a signature, the strict one. **Low S**: about
//! half of Wycheproof's valid P-256 signatures have `s > n/2`, and the gateway refuses those
//! by policy (docs/security.md 12). Each such vector must be refused with exactly
//! [`TokenError::HighS`] — not with a failed check, which would mean something else is wrong —
//! and its low-S twin `(r, n − s)`, computed here independently of the gateway's code, must be
//! accepted, so the vector still shows that the signature math is right. They are counted
//! separately.
//!
//! The counts are printed per family (`cargo test --test wycheproof -- --nocapture`).

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use portcullis::keys::{VerificationKey, load_pem};
use portcullis::pipeline::verify::{TokenError, check_signature};
use wycheproof::TestResult;

/// What became of one family's vectors.
#[derive(Debug, Default)]
struct Tally {
    valid: usize,
    invalid: usize,
    acceptable: usize,
    /// Valid vectors refused for their high S, whose low-S twin was accepted.
    high_s: usize,
    /// Vectors whose outcome was the expected one.
    passed: usize,
    /// Descriptions of those whose outcome was not.
    failures: Vec<String>,
}

impl Tally {
    fn total(&self) -> usize {
        self.valid + self.invalid + self.acceptable
    }

    fn report(&self, family: &str, expected_total: usize) {
        println!(
            "{family}: {} vectors ({} valid, of which {} high-S; {} invalid; {} acceptable), {} passed",
            self.total(),
            self.valid,
            self.high_s,
            self.invalid,
            self.acceptable,
            self.passed
        );
        assert_eq!(self.total(), expected_total, "{family}: vectors skipped");
        assert!(
            self.failures.is_empty(),
            "{family}: {} of {} vectors did not hold:\n{}",
            self.failures.len(),
            self.total(),
            self.failures.join("\n")
        );
        assert_eq!(self.passed, self.total(), "{family}");
    }
}

/// A verification key from a vector's PEM, through the gateway's own loader.
fn key(pem: &str, alg: Algorithm, dir: &Path) -> VerificationKey {
    let path = dir.join("key.pem");
    std::fs::write(&path, pem).unwrap();
    VerificationKey {
        alg,
        key: load_pem(&path, alg).unwrap_or_else(|e| panic!("{e}")),
        issuer: 0,
    }
}

fn check(key: &VerificationKey, msg: &[u8], sig: &[u8]) -> Result<(), TokenError> {
    check_signature(&URL_SAFE_NO_PAD.encode(sig), msg, key)
}

/// One vector: `valid` must be accepted, `invalid` and `acceptable` refused.
fn run(
    tally: &mut Tally,
    key: &VerificationKey,
    id: usize,
    comment: &str,
    result: TestResult,
    msg: &[u8],
    sig: &[u8],
) {
    let outcome = check(key, msg, sig);
    let ok = match result {
        TestResult::Valid => {
            tally.valid += 1;
            outcome.is_ok()
        }
        TestResult::Invalid => {
            tally.invalid += 1;
            outcome.is_err()
        }
        TestResult::Acceptable => {
            tally.acceptable += 1;
            outcome.is_err()
        }
    };
    if ok {
        tally.passed += 1;
    } else {
        tally
            .failures
            .push(format!("  tcId {id} ({result:?}, {comment}): {outcome:?}"));
    }
}

// ---- P-256 arithmetic, independent of the gateway's -------------------------------------------

/// The P-256 group order, from SEC 2 / FIPS 186-4.
const N_HEX: &str = "FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551";

fn order() -> [u8; 32] {
    let mut n = [0u8; 32];
    for (i, byte) in n.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&N_HEX[2 * i..2 * i + 2], 16).unwrap();
    }
    n
}

/// `n − s` for a 32-byte big-endian `s < n`, by schoolbook subtraction on u32 limbs.
fn n_minus(s: &[u8]) -> [u8; 32] {
    let n = order();
    let limb = |b: &[u8], i: usize| u32::from_be_bytes(b[4 * i..4 * i + 4].try_into().unwrap());
    let mut out = [0u8; 32];
    let mut borrow = 0i64;
    for i in (0..8).rev() {
        let mut d = i64::from(limb(&n, i)) - i64::from(limb(s, i)) - borrow;
        borrow = i64::from(d < 0);
        if d < 0 {
            d += 1 << 32;
        }
        out[4 * i..4 * i + 4].copy_from_slice(&(d as u32).to_be_bytes());
    }
    assert_eq!(borrow, 0, "s was not below n");
    out
}

/// Whether `s > ⌊n/2⌋`, i.e. `2s > n`, computed as `n − s < s`.
fn is_high(s: &[u8]) -> bool {
    n_minus(s).as_slice() < s
}

#[test]
fn wycheproof_ecdsa_p256_sha256_p1363_vectors_hold_in_the_verify_stage() {
    use wycheproof::ecdsa::{TestName, TestSet};
    let dir = tempfile::tempdir().unwrap();
    let set = TestSet::load(TestName::EcdsaSecp256r1Sha256P1363).unwrap();
    let mut tally = Tally::default();
    let n = order();
    for group in &set.test_groups {
        let key = key(&group.pem, Algorithm::ES256, dir.path());
        for t in &group.tests {
            let (msg, sig) = (t.msg.as_slice(), t.sig.as_slice());
            let valid_high_s = t.result == TestResult::Valid
                && sig.len() == 64
                && sig[32..] < n[..]
                && is_high(&sig[32..]);
            if !valid_high_s {
                run(&mut tally, &key, t.tc_id, &t.comment, t.result, msg, sig);
                continue;
            }
            // Valid, but the second spelling: refused as such, and its twin accepted.
            tally.valid += 1;
            tally.high_s += 1;
            let twin = [&sig[..32], &n_minus(&sig[32..])[..]].concat();
            match (check(&key, msg, sig), check(&key, msg, &twin)) {
                (Err(TokenError::HighS), Ok(())) => tally.passed += 1,
                (high, low) => tally.failures.push(format!(
                    "  tcId {} (valid, high S, {}): {high:?}; low-S twin: {low:?}",
                    t.tc_id, t.comment
                )),
            }
        }
    }
    tally.report("ECDSA P-256 SHA-256 P1363 (ES256)", set.number_of_tests);
    assert!(
        tally.high_s > 0,
        "no high-S vector: the low-S rule went untested"
    );
}

#[test]
fn wycheproof_ed25519_vectors_hold_in_the_verify_stage() {
    use wycheproof::eddsa::{TestName, TestSet};
    let dir = tempfile::tempdir().unwrap();
    let set = TestSet::load(TestName::Ed25519).unwrap();
    let mut tally = Tally::default();
    for group in &set.test_groups {
        let key = key(&group.pem, Algorithm::EdDSA, dir.path());
        for t in &group.tests {
            run(
                &mut tally, &key, t.tc_id, &t.comment, t.result, &t.msg, &t.sig,
            );
        }
    }
    tally.report("Ed25519 (EdDSA)", set.number_of_tests);
}

#[test]
fn wycheproof_rsa_pkcs1_v1_5_sha256_vectors_hold_in_the_verify_stage() {
    use wycheproof::HashFunction;
    use wycheproof::rsa_pkcs1_verify::{TestName, TestSet};
    let dir = tempfile::tempdir().unwrap();
    for (bits, name) in [
        (2048, TestName::Rsa2048Sha256),
        (3072, TestName::Rsa3072Sha256),
        (4096, TestName::Rsa4096Sha256),
    ] {
        let set = TestSet::load(name).unwrap();
        let mut tally = Tally::default();
        for group in &set.test_groups {
            assert_eq!(group.hash, HashFunction::Sha2_256);
            let key = key(&group.pem, Algorithm::RS256, dir.path());
            for t in &group.tests {
                run(
                    &mut tally, &key, t.tc_id, &t.comment, t.result, &t.msg, &t.sig,
                );
            }
        }
        tally.report(
            &format!("RSASSA-PKCS1-v1_5 {bits} SHA-256 (RS256)"),
            set.number_of_tests,
        );
    }
}

#[test]
fn wycheproof_rsa_pss_sha256_vectors_hold_in_the_verify_stage() {
    use wycheproof::HashFunction;
    use wycheproof::rsa_pss_verify::{TestName, TestSet};
    let dir = tempfile::tempdir().unwrap();
    for (bits, name) in [
        (2048, TestName::RsaPss2048Sha256Mgf1SaltLen32),
        (3072, TestName::RsaPss3072Sha256Mgf1SaltLen32),
        (4096, TestName::RsaPss4096Sha256Mgf1SaltLen32),
    ] {
        let set = TestSet::load(name).unwrap();
        let mut tally = Tally::default();
        for group in &set.test_groups {
            // PS256 is exactly these parameters (RFC 7518 §3.5).
            assert_eq!(group.hash, HashFunction::Sha2_256);
            assert_eq!(group.mgf_hash, Some(HashFunction::Sha2_256));
            assert_eq!(group.salt_size, 32);
            let key = key(&group.pem, Algorithm::PS256, dir.path());
            for t in &group.tests {
                run(
                    &mut tally, &key, t.tc_id, &t.comment, t.result, &t.msg, &t.sig,
                );
            }
        }
        tally.report(
            &format!("RSASSA-PSS {bits} SHA-256 MGF1-SHA-256 salt 32 (PS256)"),
            set.number_of_tests,
        );
    }
}
