//! Signing keys for the tokens the gateway issues, and the JWKS document.
//!
//! A [`SigningKey`] is read once, when the config is compiled: its public half, its public JWK,
//! its `kid` (the RFC 7638 thumbprint of that JWK) and the JWT header it signs with are all
//! derived then, so minting a token parses nothing. [`SigningKeys`] is the configured list: the
//! last listed key signs, every listed key verifies and is published in the JWKS. Rotation is
//! therefore "append the new key, reload; remove the old one once its tokens have expired".

use std::fmt;
use std::path::{Path, PathBuf};

use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use serde::Serialize;

use super::{KeyError, algorithm_name};

/// The only algorithms a gateway signing key may have. HS256 is missing on purpose: a shared
/// secret cannot be published in a JWKS, and it cannot come from a private-key PEM.
const SIGNING_ALGORITHMS: &str = "EdDSA, ES256, RS256 or PS256";

/// Smallest RSA modulus accepted, in bits (RFC 7518 §3.3 requires at least 2048).
const MIN_RSA_BITS: usize = 2048;

/// One private key the gateway signs access tokens with.
///
/// The algorithm is fixed when the key is loaded and is the only one it signs with. Private
/// material never leaves this type: [`fmt::Debug`] shows the `kid` and algorithm only, and the
/// accessors give out the public half.
pub struct SigningKey {
    alg: Algorithm,
    /// RFC 7638 SHA-256 thumbprint of the public key, base64url without padding.
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// The public JWK with `kid`, `alg` and `use: "sig"`; what the JWKS publishes.
    jwk: serde_json::Value,
    /// The public key as DER SubjectPublicKeyInfo.
    spki_der: Vec<u8>,
    /// base64url of `{"typ":"at+jwt","alg":…,"kid":…}`: the header is the same for every
    /// token this key signs, so it is encoded once.
    header: String,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Loads a private key PEM for `alg`: PKCS#8 (`PRIVATE KEY`) for every algorithm, and also
    /// PKCS#1 (`RSA PRIVATE KEY`) for RS256/PS256 and SEC1 (`EC PRIVATE KEY`) for ES256.
    /// Encrypted keys, public keys, and keys of another type or curve are errors.
    pub fn from_pem_file(path: &Path, alg: Algorithm) -> Result<SigningKey, KeyError> {
        let pem = super::read(path)?;
        Self::from_pem(&pem, alg, &path.display().to_string())
    }

    /// Generates a fresh key for `alg` (RSA: 2048 bits) and returns it with its private key as
    /// a PKCS#8 PEM document. The caller decides where, and whether, the PEM is stored.
    pub fn generate(alg: Algorithm) -> Result<(SigningKey, String), KeyError> {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair};

        let crypto = |what| move |source| KeyError::Crypto { what, source };
        let pkcs8: Vec<u8> = match alg {
            Algorithm::EdDSA => Ed25519KeyPair::generate()
                .and_then(|kp| kp.to_pkcs8v1())
                .map_err(crypto("generating an Ed25519 key"))?
                .as_ref()
                .to_vec(),
            Algorithm::ES256 => EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
                .and_then(|kp| kp.to_pkcs8v1())
                .map_err(crypto("generating a P-256 key"))?
                .as_ref()
                .to_vec(),
            Algorithm::RS256 | Algorithm::PS256 => {
                aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
                    .and_then(|kp| kp.as_der())
                    .map_err(crypto("generating an RSA key"))?
                    .as_ref()
                    .to_vec()
            }
            other => return Err(not_a_signing_algorithm(other)),
        };
        let pem = pem_encode("PRIVATE KEY", &pkcs8);
        // Parse the PEM just written: a generated key goes through the same checks, and the
        // same code, as one an operator supplies.
        let key = Self::from_pem(pem.as_bytes(), alg, "generated key")?;
        Ok((key, pem))
    }

    /// Builds the key from PEM text; `origin` names it in errors.
    fn from_pem(pem: &[u8], alg: Algorithm, origin: &str) -> Result<SigningKey, KeyError> {
        let name = algorithm_name(alg);
        let invalid = |msg: String| KeyError::Invalid(format!("{origin}: {msg}"));
        let rejected = |source| KeyError::Rejected {
            path: origin.to_owned(),
            alg: name,
            source,
        };
        let (label, der) = pem_decode(pem).map_err(invalid)?;
        let accepted: &[&str] = match alg {
            Algorithm::EdDSA => &["PRIVATE KEY"],
            Algorithm::ES256 => &["PRIVATE KEY", "EC PRIVATE KEY"],
            Algorithm::RS256 | Algorithm::PS256 => &["PRIVATE KEY", "RSA PRIVATE KEY"],
            other => return Err(not_a_signing_algorithm(other)),
        };
        if !accepted.contains(&label.as_str()) {
            let hint = if label == "ENCRYPTED PRIVATE KEY" {
                "; decrypt it first (openssl pkcs8 -nocrypt)"
            } else {
                ""
            };
            return Err(invalid(format!(
                "holds a `{label}`, not a {name} private key ({}){hint}",
                accepted.join(" or ")
            )));
        }

        let public_der = |r: Result<aws_lc_rs::encoding::PublicKeyX509Der<'static>, _>| {
            r.map(|d| d.as_ref().to_vec())
                .map_err(|source| KeyError::Crypto {
                    what: "encoding the public key",
                    source,
                })
        };
        let (members, spki_der, encoding) = match alg {
            Algorithm::EdDSA => {
                let kp =
                    aws_lc_rs::signature::Ed25519KeyPair::from_pkcs8(&der).map_err(rejected)?;
                let x = URL_SAFE_NO_PAD.encode(kp.public_key().as_ref());
                let spki = public_der(kp.public_key().as_der())?;
                // jsonwebtoken signs EdDSA from PKCS#8 (v1 or v2), which is what we were given.
                (
                    PublicMembers::Okp { x },
                    spki,
                    EncodingKey::from_ed_der(&der),
                )
            }
            Algorithm::ES256 => {
                let kp = aws_lc_rs::signature::EcdsaKeyPair::from_private_key_der(
                    &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    &der,
                )
                .map_err(rejected)?;
                // Uncompressed SEC1 point: 0x04 || x (32 bytes) || y (32 bytes).
                let point = kp.public_key().as_ref();
                if point.len() != 65 || point[0] != 4 {
                    return Err(invalid("unexpected P-256 public key encoding".into()));
                }
                let x = URL_SAFE_NO_PAD.encode(&point[1..33]);
                let y = URL_SAFE_NO_PAD.encode(&point[33..]);
                let spki = public_der(kp.public_key().as_der())?;
                // jsonwebtoken signs ES256 from PKCS#8 only; a SEC1 key is re-wrapped.
                let pkcs8 = kp.to_pkcs8v1().map_err(|source| KeyError::Crypto {
                    what: "encoding the P-256 key as PKCS#8",
                    source,
                })?;
                (
                    PublicMembers::Ec { x, y },
                    spki,
                    EncodingKey::from_ec_der(pkcs8.as_ref()),
                )
            }
            _ => {
                // jsonwebtoken signs RSA from the PKCS#1 `RSAPrivateKey`, which its PEM reader
                // unwraps from PKCS#8; the public half is derived from exactly those bytes.
                let encoding =
                    EncodingKey::from_rsa_pem(pem).map_err(|source| KeyError::Parse {
                        path: origin.to_owned(),
                        alg: name,
                        source,
                    })?;
                let kp =
                    aws_lc_rs::rsa::KeyPair::from_der(encoding.as_bytes()).map_err(rejected)?;
                if kp.public_modulus_len() * 8 < MIN_RSA_BITS {
                    return Err(invalid(format!(
                        "a {}-bit RSA key is too short; {MIN_RSA_BITS} bits at least",
                        kp.public_modulus_len() * 8
                    )));
                }
                let parts = aws_lc_rs::rsa::PublicKeyComponents::<Vec<u8>>::from(kp.public_key());
                let n = URL_SAFE_NO_PAD.encode(&parts.n);
                let e = URL_SAFE_NO_PAD.encode(&parts.e);
                let spki = public_der(kp.public_key().as_der())?;
                (PublicMembers::Rsa { n, e }, spki, encoding)
            }
        };

        let kid = members.thumbprint();
        let jwk = members.jwk(&kid, alg);
        // The verifying key is built from the published JWK, so what verifies our tokens here
        // is exactly what relying parties get from the JWKS.
        let parsed: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk.clone())
            .map_err(|e| invalid(format!("the derived public JWK does not parse: {e}")))?;
        let decoding = DecodingKey::from_jwk(&parsed).map_err(|source| KeyError::Parse {
            path: origin.to_owned(),
            alg: name,
            source,
        })?;
        let header = serde_json::to_vec(&TokenHeader {
            typ: "at+jwt",
            alg: name,
            kid: &kid,
        })
        .map_err(|e| invalid(format!("cannot encode the token header: {e}")))?;
        Ok(SigningKey {
            alg,
            header: URL_SAFE_NO_PAD.encode(header),
            kid,
            encoding,
            decoding,
            jwk,
            spki_der,
        })
    }

    /// The key id: the RFC 7638 SHA-256 thumbprint of the public key, base64url.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The algorithm this key signs with, and the only one.
    pub fn alg(&self) -> Algorithm {
        self.alg
    }

    /// The public JWK (with `kid`, `alg`, `use: "sig"`), as published in the JWKS.
    pub fn public_jwk(&self) -> &serde_json::Value {
        &self.jwk
    }

    /// The public half, for verifying what this key signed.
    pub fn decoding_key(&self) -> &DecodingKey {
        &self.decoding
    }

    /// The public key as a SubjectPublicKeyInfo PEM (`PUBLIC KEY`), the format
    /// [`super::load_pem`] reads.
    pub fn public_key_pem(&self) -> String {
        pem_encode("PUBLIC KEY", &self.spki_der)
    }

    /// Signs `claims` (which should serialize to a JSON object) into a compact JWT whose header
    /// is exactly `{"typ":"at+jwt","alg":…,"kid":…}`. An ES256 signature is always low-S.
    pub fn sign<T: Serialize>(&self, claims: &T) -> Result<String, jsonwebtoken::errors::Error> {
        self.sign_with_header(&self.header, claims)
    }

    /// Signs `claims` like [`SigningKey::sign`], with `typ` in place of `at+jwt`: a token of
    /// another type (the identity assertion sent to backends), which the verify stage, taking
    /// only `at+jwt`, never accepts as an access token (docs/security.md 9, 42). The header is
    /// encoded on each call; that costs little beside the signature.
    pub fn sign_as<T: Serialize>(
        &self,
        typ: &'static str,
        claims: &T,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let header = serde_json::to_vec(&TokenHeader {
            typ,
            alg: algorithm_name(self.alg),
            kid: &self.kid,
        })?;
        self.sign_with_header(&URL_SAFE_NO_PAD.encode(header), claims)
    }

    /// `header` (base64url) `.` base64url(`claims`) `.` signature.
    fn sign_with_header<T: Serialize>(
        &self,
        header: &str,
        claims: &T,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let claims = serde_json::to_vec(claims)?;
        let mut token = String::with_capacity(header.len() + claims.len() * 4 / 3 + 400);
        token.push_str(header);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&claims, &mut token);
        let signature = jsonwebtoken::crypto::sign(token.as_bytes(), &self.encoding, self.alg)?;
        token.push('.');
        if self.alg == Algorithm::ES256 {
            // The verify stage accepts only low-S ECDSA signatures (see `super::ecdsa`), and
            // aws-lc's S is uniformly random: half of its signatures need rewriting.
            token.push_str(&super::ecdsa::normalize_p256_jws(&signature));
        } else {
            token.push_str(&signature);
        }
        Ok(token)
    }
}

/// The configured signing keys: the last one signs, all of them verify and are published.
/// Never empty.
pub struct SigningKeys {
    keys: Vec<SigningKey>,
    /// The JWKS document, built once: it is served as is on every request for it.
    jwks: Bytes,
}

impl fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKeys")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl SigningKeys {
    /// Loads `auth.signing_keys` in order. On failure, returns the index of the entry at fault
    /// so the caller can name `auth.signing_keys[i]`. The same key listed twice is an error (at
    /// the second listing), and so is an empty list (index 0): use [`SigningKeys::ephemeral`].
    pub fn load(list: &[(PathBuf, Algorithm)]) -> Result<Self, (usize, KeyError)> {
        if list.is_empty() {
            return Err((
                0,
                KeyError::Invalid("no signing keys listed (an ephemeral key is used then)".into()),
            ));
        }
        let mut keys: Vec<SigningKey> = Vec::with_capacity(list.len());
        for (i, (path, alg)) in list.iter().enumerate() {
            let key = SigningKey::from_pem_file(path, *alg).map_err(|e| (i, e))?;
            if let Some(j) = keys.iter().position(|k| k.kid == key.kid) {
                return Err((
                    i,
                    KeyError::Invalid(format!(
                        "{} is the same key as entry {j} (kid `{}`)",
                        path.display(),
                        key.kid
                    )),
                ));
            }
            keys.push(key);
        }
        Ok(Self::new(keys))
    }

    /// One fresh EdDSA key, for a gateway configured without signing keys. Its tokens die with
    /// the process, and no other instance can verify them.
    ///
    /// # Panics
    /// If the crypto library cannot generate an Ed25519 key, which means the OS random
    /// generator failed: nothing secure can run then.
    pub fn ephemeral() -> Self {
        let (key, _pem) = SigningKey::generate(Algorithm::EdDSA)
            .expect("the crypto library failed to generate an Ed25519 key");
        Self::new(vec![key])
    }

    fn new(keys: Vec<SigningKey>) -> Self {
        let jwks = serde_json::json!({
            "keys": keys.iter().map(|k| &k.jwk).collect::<Vec<_>>(),
        });
        SigningKeys {
            jwks: Bytes::from(jwks.to_string()),
            keys,
        }
    }

    /// The key that signs: the last one listed.
    pub fn current(&self) -> &SigningKey {
        // `load` refuses an empty list and `ephemeral` makes one key.
        &self.keys[self.keys.len() - 1]
    }

    /// Every key, in the order listed.
    pub fn iter(&self) -> std::slice::Iter<'_, SigningKey> {
        self.keys.iter()
    }

    /// Signs `claims` with [`SigningKeys::current`]; see [`SigningKey::sign`].
    pub fn sign<T: Serialize>(&self, claims: &T) -> Result<String, jsonwebtoken::errors::Error> {
        self.current().sign(claims)
    }

    /// The JWKS document, `{"keys":[…]}`: the public JWK of every key, in the order listed.
    pub fn jwks_json(&self) -> Bytes {
        self.jwks.clone()
    }

    /// `(kid, alg, public key)` of every key, for the gateway's own issuer in the
    /// [`super::KeySet`].
    pub fn verification_keys(&self) -> Vec<(String, Algorithm, DecodingKey)> {
        self.keys
            .iter()
            .map(|k| (k.kid.clone(), k.alg, k.decoding.clone()))
            .collect()
    }
}

impl<'a> IntoIterator for &'a SigningKeys {
    type Item = &'a SigningKey;
    type IntoIter = std::slice::Iter<'a, SigningKey>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// The JOSE header of every token the gateway signs, and nothing else.
#[derive(Serialize)]
struct TokenHeader<'a> {
    typ: &'static str,
    alg: &'static str,
    kid: &'a str,
}

/// The members RFC 7638 requires for each key type, base64url-encoded.
enum PublicMembers {
    Okp { x: String },
    Ec { x: String, y: String },
    Rsa { n: String, e: String },
}

impl PublicMembers {
    /// RFC 7638 §3.2: the required members only, in lexicographic order, no whitespace. Every
    /// value is base64url or a fixed name, so none needs JSON escaping.
    fn canonical_json(&self) -> String {
        match self {
            PublicMembers::Okp { x } => format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#),
            PublicMembers::Ec { x, y } => {
                format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#)
            }
            PublicMembers::Rsa { n, e } => format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#),
        }
    }

    /// The JWK thumbprint with SHA-256, base64url without padding.
    fn thumbprint(&self) -> String {
        let digest =
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, self.canonical_json().as_bytes());
        URL_SAFE_NO_PAD.encode(digest.as_ref())
    }

    /// The public JWK to publish.
    fn jwk(&self, kid: &str, alg: Algorithm) -> serde_json::Value {
        let mut jwk = match self {
            PublicMembers::Okp { x } => serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": x}),
            PublicMembers::Ec { x, y } => {
                serde_json::json!({"kty": "EC", "crv": "P-256", "x": x, "y": y})
            }
            PublicMembers::Rsa { n, e } => serde_json::json!({"kty": "RSA", "n": n, "e": e}),
        };
        jwk["kid"] = kid.into();
        jwk["alg"] = algorithm_name(alg).into();
        jwk["use"] = "sig".into();
        jwk
    }
}

fn not_a_signing_algorithm(alg: Algorithm) -> KeyError {
    KeyError::Invalid(format!(
        "{} cannot be a signing key algorithm (one of {SIGNING_ALGORITHMS})",
        algorithm_name(alg)
    ))
}

/// PEM text (RFC 7468) with 64-column base64 lines.
fn pem_encode(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut pem = String::with_capacity(body.len() + body.len() / 64 + 2 * label.len() + 40);
    pem.push_str("-----BEGIN ");
    pem.push_str(label);
    pem.push_str("-----\n");
    for line in body.as_bytes().chunks(64) {
        // base64 output is ASCII, so any split is on a char boundary.
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END ");
    pem.push_str(label);
    pem.push_str("-----\n");
    pem
}

/// The first PEM block of `text`: its label and its DER content. Text around the block is
/// ignored (OpenSSL writes "Bag Attributes" and such); headers inside it (legacy encryption)
/// are refused.
fn pem_decode(text: &[u8]) -> Result<(String, Vec<u8>), String> {
    let text = std::str::from_utf8(text).map_err(|_| "is not a PEM file".to_owned())?;
    let mut lines = text.lines().map(str::trim);
    let label = lines
        .by_ref()
        .find_map(|l| l.strip_prefix("-----BEGIN ")?.strip_suffix("-----"))
        .ok_or("is not a PEM file (no -----BEGIN line)")?
        .to_owned();
    let end = format!("-----END {label}-----");
    let mut body = String::new();
    for line in lines.by_ref() {
        if line == end {
            return match STANDARD.decode(&body) {
                Ok(der) => Ok((label, der)),
                Err(e) => Err(format!("the `{label}` block is not valid base64: {e}")),
            };
        }
        if line.contains(':') {
            return Err(format!(
                "the `{label}` block has PEM headers (a legacy encrypted key?); \
                 decrypt it and convert it to PKCS#8 (openssl pkcs8 -topk8 -nocrypt)"
            ));
        }
        body.push_str(line);
    }
    Err(format!("the `{label}` block has no {end} line"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Algorithm; 4] = [
        Algorithm::EdDSA,
        Algorithm::ES256,
        Algorithm::RS256,
        Algorithm::PS256,
    ];

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn keys_of(key: SigningKey) -> SigningKeys {
        SigningKeys::new(vec![key])
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn the_rfc_7638_example_rsa_key_has_the_published_thumbprint() {
        // RFC 7638 §3.1.
        let members = PublicMembers::Rsa {
            n: "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSo\
                c_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YG\
                jQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt\
                -bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
                .into(),
            e: "AQAB".into(),
        };
        assert_eq!(
            members.thumbprint(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn the_kid_agrees_with_jsonwebtokens_own_thumbprint_of_the_published_jwk() {
        for alg in ALL {
            let (key, _) = SigningKey::generate(alg).unwrap();
            let jwk: jsonwebtoken::jwk::Jwk =
                serde_json::from_value(key.public_jwk().clone()).unwrap();
            let theirs = jwk
                .thumbprint(jsonwebtoken::jwk::ThumbprintHash::SHA256)
                .unwrap();
            assert_eq!(key.kid(), theirs, "{alg:?}");
            assert_eq!(key.public_jwk()["kid"], key.kid());
            assert_eq!(key.public_jwk()["alg"], algorithm_name(alg));
            assert_eq!(key.public_jwk()["use"], "sig");
        }
    }

    #[test]
    fn each_algorithm_signs_a_token_its_decoding_key_verifies() {
        for alg in ALL {
            let (key, _) = SigningKey::generate(alg).unwrap();
            let keys = keys_of(key);
            let claims = serde_json::json!({"sub": "alice", "iat": now(), "exp": now() + 60});
            let token = keys.sign(&claims).unwrap();

            let mut validation = jsonwebtoken::Validation::new(alg);
            validation.validate_aud = false;
            let (_, _, decoding) = &keys.verification_keys()[0];
            let data =
                jsonwebtoken::decode::<serde_json::Value>(&token, decoding, &validation).unwrap();
            assert_eq!(data.claims, claims, "{alg:?}");
            assert_eq!(data.header.alg, alg);
            assert_eq!(data.header.kid.as_deref(), Some(keys.current().kid()));
        }
    }

    #[test]
    fn every_es256_token_the_gateway_signs_is_low_s_and_verifies() {
        let (key, _) = SigningKey::generate(Algorithm::ES256).unwrap();
        // 64 tokens: were S left as aws-lc makes it, the chance that all are low is 2^-64.
        for i in 0..64 {
            let token = key.sign(&serde_json::json!({ "n": i })).unwrap();
            let (signed, signature) = token.rsplit_once('.').unwrap();
            let raw = URL_SAFE_NO_PAD.decode(signature).unwrap();
            assert_eq!(super::super::ecdsa::check_p256(&raw), Ok(()), "token {i}");
            assert!(
                jsonwebtoken::crypto::verify(
                    signature,
                    signed.as_bytes(),
                    key.decoding_key(),
                    Algorithm::ES256
                )
                .unwrap(),
                "token {i}"
            );
        }
    }

    #[test]
    fn a_token_header_holds_exactly_typ_alg_and_kid() {
        for alg in ALL {
            let (key, _) = SigningKey::generate(alg).unwrap();
            let token = key.sign(&serde_json::json!({"sub": "alice"})).unwrap();
            let header = token.split('.').next().unwrap();
            let header: serde_json::Value =
                serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
            assert_eq!(
                header,
                serde_json::json!({"typ": "at+jwt", "alg": algorithm_name(alg), "kid": key.kid()})
            );
            let other = key.sign_as("example+jwt", &serde_json::json!({})).unwrap();
            let header = jsonwebtoken::decode_header(&other).unwrap();
            assert_eq!(header.typ.as_deref(), Some("example+jwt"));
            assert_eq!(header.kid.as_deref(), Some(key.kid()));
            assert_eq!(header.alg, alg);
        }
    }

    #[test]
    fn a_token_signed_by_one_key_does_not_verify_with_another() {
        let (a, _) = SigningKey::generate(Algorithm::EdDSA).unwrap();
        let (b, _) = SigningKey::generate(Algorithm::EdDSA).unwrap();
        let token = a.sign(&serde_json::json!({"exp": now() + 60})).unwrap();
        let validation = jsonwebtoken::Validation::new(Algorithm::EdDSA);
        assert!(
            jsonwebtoken::decode::<serde_json::Value>(&token, b.decoding_key(), &validation)
                .is_err()
        );
    }

    #[test]
    fn the_jwks_publishes_no_private_member_for_any_algorithm() {
        for alg in ALL {
            let (key, _) = SigningKey::generate(alg).unwrap();
            let jwks: serde_json::Value =
                serde_json::from_slice(&keys_of(key).jwks_json()).unwrap();
            let keys = jwks["keys"].as_array().unwrap();
            assert_eq!(keys.len(), 1);
            let jwk = keys[0].as_object().unwrap();
            for private in ["d", "p", "q", "dp", "dq", "qi", "oth", "k"] {
                assert!(!jwk.contains_key(private), "{alg:?} JWK has `{private}`");
            }
        }
    }

    #[test]
    fn the_last_listed_key_signs_and_every_key_is_published_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let mut list = Vec::new();
        for (i, alg) in [Algorithm::ES256, Algorithm::EdDSA].into_iter().enumerate() {
            let (_, pem) = SigningKey::generate(alg).unwrap();
            list.push((write(dir.path(), &format!("{i}.pem"), &pem), alg));
        }
        let keys = SigningKeys::load(&list).unwrap();
        assert_eq!(keys.current().alg(), Algorithm::EdDSA);

        let kids: Vec<&str> = keys.iter().map(SigningKey::kid).collect();
        let jwks: serde_json::Value = serde_json::from_slice(&keys.jwks_json()).unwrap();
        let published: Vec<&str> = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap())
            .collect();
        assert_eq!(published, kids);
        let verifying: Vec<String> = keys.verification_keys().into_iter().map(|v| v.0).collect();
        assert_eq!(verifying, kids);

        let token = keys.sign(&serde_json::json!({"sub": "alice"})).unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.kid.as_deref(), Some(kids[1]));
    }

    #[test]
    fn the_same_key_listed_twice_is_refused_at_its_second_listing() {
        let dir = tempfile::tempdir().unwrap();
        let (_, pem) = SigningKey::generate(Algorithm::EdDSA).unwrap();
        let a = write(dir.path(), "a.pem", &pem);
        let b = write(dir.path(), "b.pem", &pem);
        let err = SigningKeys::load(&[(a, Algorithm::EdDSA), (b, Algorithm::EdDSA)]).unwrap_err();
        assert_eq!(err.0, 1);
        assert!(matches!(err.1, KeyError::Invalid(_)), "{}", err.1);
    }

    #[test]
    fn a_load_failure_names_the_index_of_the_failing_entry() {
        let dir = tempfile::tempdir().unwrap();
        let (_, pem) = SigningKey::generate(Algorithm::EdDSA).unwrap();
        let good = write(dir.path(), "good.pem", &pem);
        let missing = dir.path().join("missing.pem");
        let err = SigningKeys::load(&[(good, Algorithm::EdDSA), (missing, Algorithm::EdDSA)])
            .unwrap_err();
        assert_eq!(err.0, 1);
        assert!(matches!(err.1, KeyError::Read { .. }), "{}", err.1);
        assert!(SigningKeys::load(&[]).is_err());
    }

    #[test]
    fn a_key_read_back_from_its_pem_keeps_its_kid() {
        let dir = tempfile::tempdir().unwrap();
        for alg in ALL {
            let (key, pem) = SigningKey::generate(alg).unwrap();
            assert!(pem.lines().all(|l| l.len() <= 64), "{pem}");
            let path = write(dir.path(), "key.pem", &pem);
            assert_eq!(
                SigningKey::from_pem_file(&path, alg).unwrap().kid(),
                key.kid()
            );
        }
    }

    #[test]
    fn the_public_key_pem_is_what_the_verifier_config_loads() {
        let dir = tempfile::tempdir().unwrap();
        for alg in ALL {
            let (key, _) = SigningKey::generate(alg).unwrap();
            let path = write(dir.path(), "pub.pem", &key.public_key_pem());
            let decoding = super::super::load_pem(&path, alg).unwrap();
            let token = key.sign(&serde_json::json!({"exp": now() + 60})).unwrap();
            let validation = jsonwebtoken::Validation::new(alg);
            jsonwebtoken::decode::<serde_json::Value>(&token, &decoding, &validation)
                .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        }
    }

    #[test]
    fn sec1_ec_and_pkcs1_rsa_pem_files_load_as_the_same_keys() {
        let dir = tempfile::tempdir().unwrap();

        let ec = aws_lc_rs::signature::EcdsaKeyPair::generate(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        )
        .unwrap();
        let sec1 = ec.private_key().as_der().unwrap();
        let sec1 = write(
            dir.path(),
            "ec.pem",
            &pem_encode("EC PRIVATE KEY", sec1.as_ref()),
        );
        let pkcs8 = write(
            dir.path(),
            "ec8.pem",
            &pem_encode("PRIVATE KEY", ec.to_pkcs8v1().unwrap().as_ref()),
        );
        let a = SigningKey::from_pem_file(&sec1, Algorithm::ES256).unwrap();
        let b = SigningKey::from_pem_file(&pkcs8, Algorithm::ES256).unwrap();
        assert_eq!(a.kid(), b.kid());
        a.sign(&serde_json::json!({})).unwrap();

        let (rsa, pem) = SigningKey::generate(Algorithm::RS256).unwrap();
        let pkcs1 = EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
        let pkcs1 = write(
            dir.path(),
            "rsa.pem",
            &pem_encode("RSA PRIVATE KEY", pkcs1.as_bytes()),
        );
        let loaded = SigningKey::from_pem_file(&pkcs1, Algorithm::PS256).unwrap();
        assert_eq!(loaded.kid(), rsa.kid());
        loaded.sign(&serde_json::json!({})).unwrap();
    }

    #[test]
    fn hs256_and_other_algorithms_cannot_be_signing_keys() {
        let dir = tempfile::tempdir().unwrap();
        let (_, pem) = SigningKey::generate(Algorithm::EdDSA).unwrap();
        let path = write(dir.path(), "k.pem", &pem);
        for alg in [Algorithm::HS256, Algorithm::ES384, Algorithm::RS512] {
            let err = SigningKey::from_pem_file(&path, alg).unwrap_err();
            assert!(matches!(err, KeyError::Invalid(_)), "{err}");
            assert!(SigningKey::generate(alg).is_err());
        }
    }

    #[test]
    fn a_key_of_another_type_or_curve_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_, ed) = SigningKey::generate(Algorithm::EdDSA).unwrap();
        let ed = write(dir.path(), "ed.pem", &ed);
        assert!(SigningKey::from_pem_file(&ed, Algorithm::ES256).is_err());
        assert!(SigningKey::from_pem_file(&ed, Algorithm::RS256).is_err());

        let p384 = aws_lc_rs::signature::EcdsaKeyPair::generate(
            &aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED_SIGNING,
        )
        .unwrap();
        let p384 = write(
            dir.path(),
            "p384.pem",
            &pem_encode("PRIVATE KEY", p384.to_pkcs8v1().unwrap().as_ref()),
        );
        let err = SigningKey::from_pem_file(&p384, Algorithm::ES256).unwrap_err();
        assert!(matches!(err, KeyError::Rejected { .. }), "{err}");
    }

    #[test]
    fn a_public_key_or_an_encrypted_key_is_refused_as_a_signing_key() {
        let dir = tempfile::tempdir().unwrap();
        for alg in ALL {
            let (key, _) = SigningKey::generate(alg).unwrap();
            let path = write(dir.path(), "pub.pem", &key.public_key_pem());
            let err = SigningKey::from_pem_file(&path, alg).unwrap_err();
            assert!(err.to_string().contains("PUBLIC KEY"), "{err}");
        }
        let path = write(
            dir.path(),
            "enc.pem",
            &pem_encode("ENCRYPTED PRIVATE KEY", b"whatever"),
        );
        let err = SigningKey::from_pem_file(&path, Algorithm::EdDSA).unwrap_err();
        assert!(err.to_string().contains("decrypt"), "{err}");
        let path = write(dir.path(), "junk.pem", "not a key");
        assert!(SigningKey::from_pem_file(&path, Algorithm::EdDSA).is_err());
    }

    #[test]
    fn debug_output_shows_the_kid_and_alg_and_no_key_material() {
        let (key, pem) = SigningKey::generate(Algorithm::EdDSA).unwrap();
        let shown = format!("{:?}", SigningKeys::new(vec![key]));
        assert!(shown.contains("kid") && shown.contains("EdDSA"), "{shown}");
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        assert!(!shown.contains(&body[..16]), "{shown}");
        assert!(
            !shown.contains("encoding") && !shown.contains("jwk"),
            "{shown}"
        );
    }

    #[test]
    fn an_ephemeral_key_set_is_one_eddsa_key() {
        let keys = SigningKeys::ephemeral();
        assert_eq!(keys.iter().len(), 1);
        assert_eq!(keys.current().alg(), Algorithm::EdDSA);
        keys.sign(&serde_json::json!({"sub": "alice"})).unwrap();
    }
}
