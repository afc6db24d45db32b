//! ES256 signatures in their one accepted spelling (docs/security.md 12).
//!
//! A JWS ES256 signature is `R || S`, 32 big-endian bytes each (RFC 7518 §3.4). ECDSA is
//! malleable: if `(r, s)` verifies, so does `(r, n − s)`, so anyone holding a token can make a
//! second valid token with other bytes and the same claims. Nothing in the gateway keys on token
//! bytes for a security decision (the denylist keys on `jti`), but a second spelling is a
//! standing invitation for the next component that does; so, as Bitcoin (BIP 62/146) and
//! libsecp256k1 do, the gateway accepts only the low-S spelling, `1 ≤ s ≤ ⌊n/2⌋`, and signs
//! only that spelling itself ([`normalize_p256`]).
//!
//! The interoperability cost: a signer that does not normalize (most JOSE libraries do not)
//! produces a high-S signature about half the time, and the gateway refuses those tokens. An
//! external ES256 issuer must therefore sign low-S (normalizing is `s ← n − s` when
//! `s > ⌊n/2⌋`, a few lines after any ECDSA call). EdDSA has no such ambiguity (RFC 8032
//! requires `S < L`, which the crypto library checks) and RSA signatures are deterministic.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The order `n` of the P-256 group, big-endian.
pub const P256_ORDER: [u8; 32] = [
    0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
    0xBC, 0xE6, 0xFA, 0xAD, 0xA7, 0x17, 0x9E, 0x84, 0xF3, 0xB9, 0xCA, 0xC2, 0xFC, 0x63, 0x25, 0x51,
];

/// `⌊n/2⌋` for P-256: the largest accepted `s`.
const P256_HALF_ORDER: [u8; 32] = [
    0x7F, 0xFF, 0xFF, 0xFF, 0x80, 0x00, 0x00, 0x00, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
    0xDE, 0x73, 0x7D, 0x56, 0xD3, 0x8B, 0xCF, 0x42, 0x79, 0xDC, 0xE5, 0x61, 0x7E, 0x31, 0x92, 0xA8,
];

/// Why an ES256 signature was refused before any curve arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    /// Not exactly 64 bytes (a DER signature, a truncated or padded one).
    #[error("an ES256 signature is 64 bytes")]
    Length,
    /// `r` or `s` is zero or not below `n` (psychic signatures and their cousins).
    #[error("r or s is out of range")]
    OutOfRange,
    /// `s > ⌊n/2⌋`: the second spelling of a signature.
    #[error("s is high")]
    HighS,
}

/// Checks the shape of a raw ES256 signature: 64 bytes, `1 ≤ r < n`, `1 ≤ s ≤ ⌊n/2⌋`.
/// It says nothing about whether the signature verifies.
pub fn check_p256(signature: &[u8]) -> Result<(), ShapeError> {
    let (r, s) = split(signature).ok_or(ShapeError::Length)?;
    if is_zero(r) || is_zero(s) || *r >= P256_ORDER[..] || *s >= P256_ORDER[..] {
        return Err(ShapeError::OutOfRange);
    }
    // Big-endian byte strings of one length compare as the numbers they spell.
    if *s > P256_HALF_ORDER[..] {
        return Err(ShapeError::HighS);
    }
    Ok(())
}

/// Rewrites a raw ES256 signature in place to its low-S spelling (`s ← n − s` when
/// `s > ⌊n/2⌋`); anything that is not 64 bytes with `s < n` is left alone.
pub fn normalize_p256(signature: &mut [u8]) {
    if signature.len() != 64 {
        return;
    }
    let s = &mut signature[32..];
    if s[..] <= P256_HALF_ORDER[..] || s[..] >= P256_ORDER[..] {
        return;
    }
    let mut borrow = 0u16;
    for i in (0..32).rev() {
        let diff = u16::from(P256_ORDER[i])
            .wrapping_sub(u16::from(s[i]))
            .wrapping_sub(borrow);
        s[i] = diff as u8;
        borrow = (diff >> 8) & 1;
    }
}

/// [`normalize_p256`] on a base64url (JWS) signature: what every ES256 signer of the gateway
/// (the login flow, `portcullis token`) applies to its output. Text that is not base64url is
/// returned unchanged.
pub fn normalize_p256_jws(signature_b64: &str) -> String {
    match URL_SAFE_NO_PAD.decode(signature_b64) {
        Ok(mut raw) => {
            normalize_p256(&mut raw);
            URL_SAFE_NO_PAD.encode(raw)
        }
        Err(_) => signature_b64.to_owned(),
    }
}

/// A compact JWS signed under `alg`, with its ES256 signature in low-S form (any other
/// algorithm's token is returned as it is): for code that signs with `jsonwebtoken` directly.
pub fn low_s_token(alg: jsonwebtoken::Algorithm, token: String) -> String {
    if alg != jsonwebtoken::Algorithm::ES256 {
        return token;
    }
    match token.rsplit_once('.') {
        Some((signed, signature)) => format!("{signed}.{}", normalize_p256_jws(signature)),
        None => token,
    }
}

fn split(signature: &[u8]) -> Option<(&[u8], &[u8])> {
    (signature.len() == 64).then(|| signature.split_at(32))
}

fn is_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig(r: [u8; 32], s: [u8; 32]) -> Vec<u8> {
        [r, s].concat()
    }

    fn one() -> [u8; 32] {
        let mut x = [0u8; 32];
        x[31] = 1;
        x
    }

    #[test]
    fn half_order_is_n_shifted_right_by_one() {
        let mut half = [0u8; 32];
        let mut carry = 0u8;
        for (i, byte) in P256_ORDER.iter().enumerate() {
            half[i] = (byte >> 1) | carry;
            carry = (byte & 1) << 7;
        }
        assert_eq!(half, P256_HALF_ORDER);
    }

    #[test]
    fn shape_bounds_are_inclusive_where_they_should_be() {
        assert_eq!(check_p256(&sig(one(), P256_HALF_ORDER)), Ok(()));
        assert_eq!(check_p256(&sig(one(), one())), Ok(()));
        let mut above_half = P256_HALF_ORDER;
        above_half[31] += 1;
        assert_eq!(check_p256(&sig(one(), above_half)), Err(ShapeError::HighS));
        let mut n_minus_1 = P256_ORDER;
        n_minus_1[31] -= 1;
        assert_eq!(check_p256(&sig(n_minus_1, one())), Ok(()));
        assert_eq!(
            check_p256(&sig(P256_ORDER, one())),
            Err(ShapeError::OutOfRange)
        );
        assert_eq!(
            check_p256(&sig(one(), P256_ORDER)),
            Err(ShapeError::OutOfRange)
        );
        assert_eq!(
            check_p256(&sig([0; 32], one())),
            Err(ShapeError::OutOfRange)
        );
        assert_eq!(
            check_p256(&sig(one(), [0; 32])),
            Err(ShapeError::OutOfRange)
        );
        assert_eq!(check_p256(&[1u8; 63]), Err(ShapeError::Length));
        assert_eq!(check_p256(&[1u8; 65]), Err(ShapeError::Length));
    }

    #[test]
    fn normalizing_maps_s_to_n_minus_s_and_is_idempotent() {
        // s = n − 1 becomes 1; s = ⌊n/2⌋ + 1 becomes ⌊n/2⌋ (n is odd).
        let mut n_minus_1 = P256_ORDER;
        n_minus_1[31] -= 1;
        let mut s = sig(one(), n_minus_1);
        normalize_p256(&mut s);
        assert_eq!(&s[32..], &one());
        let mut above_half = P256_HALF_ORDER;
        above_half[31] += 1;
        let mut s = sig(one(), above_half);
        normalize_p256(&mut s);
        assert_eq!(&s[32..], &P256_HALF_ORDER);
        let before = s.clone();
        normalize_p256(&mut s);
        assert_eq!(s, before);
        // A borrow across bytes: s = n − 0x100 has a zero low byte.
        let mut s_big = P256_ORDER;
        s_big[30] -= 1;
        let mut s = sig(one(), s_big);
        normalize_p256(&mut s);
        let mut expected = [0u8; 32];
        expected[30] = 1;
        assert_eq!(&s[32..], &expected);
    }

    #[test]
    fn a_generated_signature_normalizes_to_one_that_still_verifies() {
        use aws_lc_rs::rand::SystemRandom;
        use aws_lc_rs::signature::{
            ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
            UnparsedPublicKey,
        };
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        let public = UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, pair.public_key().as_ref());
        let rng = SystemRandom::new();
        let (mut high, mut low) = (0, 0);
        // 64 signatures: the chance that none is high-S is 2^-64.
        for i in 0..64u8 {
            let message = [i; 16];
            let mut raw = pair.sign(&rng, &message).unwrap().as_ref().to_vec();
            match check_p256(&raw) {
                Ok(()) => low += 1,
                Err(ShapeError::HighS) => high += 1,
                Err(e) => panic!("{e}"),
            }
            normalize_p256(&mut raw);
            assert_eq!(check_p256(&raw), Ok(()));
            public.verify(&message, &raw).unwrap();
        }
        assert!(high > 0 && low > 0, "high {high}, low {low}");
    }
}
