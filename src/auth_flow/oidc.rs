//! Browser sign-in through an external OpenID Provider (`auth.providers`, docs/security.md 41):
//! the authorization code flow with PKCE (S256), `state` and `nonce`, ending in a gateway
//! session exactly like a password login's.
//!
//! | step | where |
//! |---|---|
//! | `GET /auth/oidc/<id>?return_to=…`: new `state`, `nonce` and PKCE verifier, kept in the store; 303 to the provider | [`crate::auth_flow::handlers`] (`oidc.rs`) |
//! | the provider signs the user in and sends the browser back | |
//! | `GET /auth/oidc/<id>/callback?code=…&state=…`: the state taken (single use), the code exchanged, the ID token verified, the user admitted, the session opened | `oidc.rs` |
//!
//! **Where the flow's secrets live.** The `state` is 256 random bits; the store keeps, under its
//! SHA-256 and for [`FLOW_TTL`], the provider, `nonce`, PKCE verifier, return path and the
//! SHA-256 of this browser's [`cookies::OIDC_COOKIE`] ([`FlowState`]). The callback *takes* it
//! (read and delete in one step, so a replayed or concurrent callback finds nothing), on any
//! instance sharing the store. Several tabs each have their own state; they share the browser's
//! cookie, which only proves that the callback comes back to the browser that started the
//! flow (a callback URL with an attacker's code, opened in a victim's browser, is refused).
//!
//! **Who the user is.** The ID token is verified by the verify stage
//! ([`crate::pipeline::verify::verify_id_token`]) with the keys of the provider's `issuers:`
//! entry: signature by a key of that issuer's JWKS with its pinned algorithm, `iss`, `aud`
//! containing `client_id`, `azp`, `exp`, `iat`; then its `nonce` must be the flow's. The user
//! is `<iss>#<sub>` ([`crate::keys::Issuer::user_key`]): the same name the provider's own
//! access tokens are revoked under, so logout-all and the admin API's revocation reach both,
//! and the same `sub` at two providers is two users.
//!
//! **Permissions.** The ID token's claims go through the provider's `permissions:` mapping (the
//! mapping of an issuer's token profile) at the callback ([`mapped`]), and again when a refresh
//! against the provider brings a new ID token (`handlers/provider_refresh.rs`): the role names and
//! direct permission names it yields are kept with the session ([`crate::store::ProviderLink`])
//! and carried in the gateway's access tokens (`idp`, `roles`, `permissions`), so the hot path
//! looks nothing up; the roles are granted through `roles:` when each token is verified (a
//! change to `roles:` applies from the next request), and each refresh mints them again from
//! the session (refused when the provider is no longer configured).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::keys::profile::{ClaimPath, Mapping, PermissionSource, claim_values};
use crate::pipeline::authorize::PermissionTable;

/// At most this many roles and as many permissions are kept from one sign-in's claims.
const MAX_MAPPED: usize = 256;

/// How long a started sign-in may take before its state is gone.
pub const FLOW_TTL: Duration = Duration::from_secs(600);

/// Where the sign-ins start: `/auth/oidc/<id>`.
pub const PREFIX: &str = "/auth/oidc/";

/// A client secret: never printed.
#[derive(Clone)]
pub struct ClientSecret(String);

impl ClientSecret {
    /// Wraps a secret read from its file.
    pub fn new(secret: String) -> Self {
        Self(secret)
    }

    /// The secret, for the token request.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientSecret(..)")
    }
}

/// One of `auth.providers`, compiled.
#[derive(Debug)]
pub struct Provider {
    /// The short name in URLs, the audit trail and sessions.
    pub id: String,
    /// The button's "Sign in with <name>".
    pub name: String,
    /// The provider's `iss`: an `issuers:` entry by discovery.
    pub iss: String,
    /// Index of that issuer in the key set.
    pub issuer: usize,
    /// The client id registered at the provider.
    pub client_id: String,
    /// Its secret (`client_secret_basic`).
    pub client_secret: ClientSecret,
    /// The `scope` parameter: space-separated, `openid` among them.
    pub scope: String,
    /// `<auth.issuer>/auth/oidc/<id>/callback`, registered at the provider.
    pub redirect_uri: String,
    /// How the ID token's claims become permissions.
    pub permissions: Box<[PermissionSource]>,
    /// Lower-case email domains a user must be at (empty: any, and no email needed).
    pub email_domains: Box<[String]>,
    /// Groups a user must all be in (empty: none needed).
    pub required_groups: Box<[String]>,
    /// The claim listing the groups.
    pub groups_claim: ClaimPath,
    /// The key sealing the provider's refresh tokens at rest; without it none is kept.
    pub refresh_key: Option<RefreshKey>,
    /// The gateway refreshes against the provider at most this often per session.
    pub refresh_interval: Duration,
}

/// The AES-256-GCM key the provider's refresh tokens are sealed with in the store
/// (`refresh_token_key_file`): never printed.
pub struct RefreshKey(aws_lc_rs::aead::LessSafeKey);

impl std::fmt::Debug for RefreshKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RefreshKey(..)")
    }
}

impl RefreshKey {
    /// A key of exactly 32 bytes.
    pub fn new(bytes: &[u8]) -> Option<Self> {
        let key = aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::AES_256_GCM, bytes).ok()?;
        (bytes.len() == 32).then(|| Self(aws_lc_rs::aead::LessSafeKey::new(key)))
    }

    /// A key file's content: 32 raw bytes, or their base64 (standard or URL-safe, padded or
    /// not; surrounding whitespace ignored).
    pub fn from_file_content(content: &[u8]) -> Option<Self> {
        if content.len() == 32 {
            return Self::new(content);
        }
        let text = std::str::from_utf8(content).ok()?.trim();
        let text = text.trim_end_matches('=');
        let decoded = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(text)
            .or_else(|_| URL_SAFE_NO_PAD.decode(text))
            .ok()?;
        Self::new(&decoded)
    }

    /// `token` sealed for session `sid`: base64url(nonce ‖ ciphertext ‖ tag), a fresh random
    /// 96-bit nonce each time, the session id as associated data (a sealed token moved to
    /// another session does not open).
    pub fn seal(&self, sid: &str, token: &str) -> String {
        use aws_lc_rs::aead::{Aad, NONCE_LEN, Nonce};
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).expect("the OS CSPRNG is available");
        let mut data = token.as_bytes().to_vec();
        self.0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(sid.as_bytes()),
                &mut data,
            )
            .expect("AES-GCM seals any token size the provider sends");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        URL_SAFE_NO_PAD.encode(out)
    }

    /// What [`RefreshKey::seal`] sealed for `sid`; `None` when it was sealed with another key,
    /// for another session, or altered.
    pub fn open(&self, sid: &str, sealed: &str) -> Option<String> {
        use aws_lc_rs::aead::{Aad, NONCE_LEN, Nonce};
        let raw = URL_SAFE_NO_PAD.decode(sealed).ok()?;
        if raw.len() < NONCE_LEN {
            return None;
        }
        let (nonce, data) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut data = data.to_vec();
        let plain = self
            .0
            .open_in_place(nonce, Aad::from(sid.as_bytes()), &mut data)
            .ok()?;
        String::from_utf8(plain.to_vec()).ok()
    }
}

/// The store key of the mark that a session refreshed against its provider within the
/// interval (and that a refresh is under way): at most one per session per interval, on
/// every instance sharing the store.
pub fn provider_refresh_key(sid: &str) -> [u8; 32] {
    super::tokens::refresh_hash(&format!("provider-refresh\0{sid}"))
}

/// The store key of a provider session: SHA-256 of the provider's issuer and its `sid`, under
/// which the gateway user signed in through it is indexed (a back-channel logout may name only
/// the `sid`).
pub fn provider_sid_key(iss: &str, sid: &str) -> [u8; 32] {
    crate::store::jti_key(iss, &format!("provider-sid\0{sid}"))
}

/// The refresh request's form (RFC 6749 6).
pub fn refresh_form(token: &str) -> String {
    format!(
        "grant_type=refresh_token&refresh_token={}",
        crate::keys::fetch::form_encode(token)
    )
}

/// Why the provider's answer did not sign anyone in: the audit trail's reason id, and what
/// the login page tells the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The callback has no `state`, or one the store does not hold (replayed, expired, made up).
    State,
    /// The state was issued to another browser (no or another [`super::cookies::OIDC_COOKIE`]).
    Browser,
    /// The state was issued for another provider's callback.
    WrongProvider,
    /// The answer's `iss` (RFC 9207) names another issuer than the provider's: a mix-up.
    Issuer,
    /// The provider answered with an error (`error=access_denied`, …).
    ProviderError,
    /// No `code`.
    NoCode,
    /// The provider's endpoints are not known yet (its discovery document was never fetched).
    Discovery,
    /// The token endpoint could not be reached or refused the code.
    TokenEndpoint,
    /// The token response has no `id_token`.
    NoIdToken,
    /// The ID token failed verification.
    IdToken,
    /// The ID token's `nonce` is missing or not the flow's.
    Nonce,
    /// The user's email is not verified or not in `email_domains`.
    Email,
    /// The user is not in every one of `required_groups`.
    Groups,
}

impl Failure {
    /// A stable identifier for the audit trail.
    pub fn reason_id(self) -> &'static str {
        match self {
            Failure::State => "oidc.state",
            Failure::Browser => "oidc.browser",
            Failure::WrongProvider => "oidc.provider_mismatch",
            Failure::Issuer => "oidc.issuer",
            Failure::ProviderError => "oidc.provider_error",
            Failure::NoCode => "oidc.no_code",
            Failure::Discovery => "oidc.discovery",
            Failure::TokenEndpoint => "oidc.token_endpoint",
            Failure::NoIdToken => "oidc.no_id_token",
            Failure::IdToken => "oidc.id_token",
            Failure::Nonce => "oidc.nonce",
            Failure::Email => "oidc.email",
            Failure::Groups => "oidc.groups",
        }
    }

    /// What the login page says: plain, never the details.
    pub fn message(self) -> &'static str {
        match self {
            Failure::State | Failure::Browser | Failure::WrongProvider => {
                "That sign-in link has expired or was already used. Please sign in again."
            }
            Failure::ProviderError => "The sign-in was cancelled or refused by the provider.",
            Failure::Email | Failure::Groups => "Your account is not allowed to sign in here.",
            Failure::Issuer
            | Failure::NoCode
            | Failure::Discovery
            | Failure::TokenEndpoint
            | Failure::NoIdToken
            | Failure::IdToken
            | Failure::Nonce => "The sign-in through the provider failed. Please try again.",
        }
    }
}

/// What the store keeps for a started sign-in, under the SHA-256 of its `state`.
#[derive(Debug, Serialize, Deserialize)]
pub struct FlowState {
    /// The provider's id.
    pub provider: String,
    /// The `nonce` sent, which the ID token must carry.
    pub nonce: String,
    /// The PKCE code verifier.
    pub verifier: String,
    /// Where to go afterwards (checked again by the redirect policy at the end).
    pub return_to: Option<String>,
    /// base64url(SHA-256) of the browser's [`super::cookies::OIDC_COOKIE`].
    pub browser: String,
}

/// base64url(SHA-256(`text`)), unpadded: a PKCE S256 challenge (RFC 7636 4.2), and how a
/// browser's binding cookie is kept.
pub fn s256(text: &str) -> String {
    URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        text.as_bytes(),
    ))
}

/// The store key of a `state`.
pub fn state_key(state: &str) -> [u8; 32] {
    super::tokens::refresh_hash(state)
}

/// The authorization request URL (OpenID Connect Core 3.1.2.1 with RFC 7636).
pub fn authorization_url(
    endpoint: &http::Uri,
    provider: &Provider,
    state: &str,
    nonce: &str,
    challenge: &str,
) -> String {
    use crate::keys::fetch::form_encode as enc;
    let endpoint = endpoint.to_string();
    let sep = if endpoint.contains('?') { '&' } else { '?' };
    // A refresh token for `offline_access` is issued only with consent asked for (OpenID
    // Connect Core 11).
    let prompt = if provider.scope.split(' ').any(|s| s == "offline_access") {
        "&prompt=consent"
    } else {
        ""
    };
    format!(
        "{endpoint}{sep}response_type=code&client_id={}&redirect_uri={}&scope={}&state={}&nonce={}&code_challenge={}&code_challenge_method=S256{prompt}",
        enc(&provider.client_id),
        enc(&provider.redirect_uri),
        enc(&provider.scope),
        enc(state),
        enc(nonce),
        enc(challenge),
    )
}

/// The token request's form (RFC 6749 4.1.3 with the PKCE verifier).
pub fn token_form(provider: &Provider, code: &str, verifier: &str) -> String {
    use crate::keys::fetch::form_encode as enc;
    format!(
        "grant_type=authorization_code&code={}&redirect_uri={}&code_verifier={}",
        enc(code),
        enc(&provider.redirect_uri),
        enc(verifier),
    )
}

/// Whether the provider's allow-lists admit the user of these ID-token claims.
pub fn admit(provider: &Provider, claims: &Map<String, Value>) -> Result<(), Failure> {
    if !provider.email_domains.is_empty() {
        // An email is an identity only when the provider says it verified it.
        if claims.get("email_verified") != Some(&Value::Bool(true)) {
            return Err(Failure::Email);
        }
        let email = claims
            .get("email")
            .and_then(Value::as_str)
            .ok_or(Failure::Email)?;
        let domain = email
            .rsplit_once('@')
            .map(|(_, d)| d.to_ascii_lowercase())
            .ok_or(Failure::Email)?;
        if !provider.email_domains.contains(&domain) {
            return Err(Failure::Email);
        }
    }
    if !provider.required_groups.is_empty() {
        let mut ignored = 0;
        let groups = provider
            .groups_claim
            .find(claims)
            .map(|v| claim_values(v, false, &mut ignored))
            .unwrap_or_default();
        if !provider
            .required_groups
            .iter()
            .all(|g| groups.contains(&g.as_str()))
        {
            return Err(Failure::Groups);
        }
    }
    Ok(())
}

/// What the provider's `permissions:` mapping takes from the ID token's claims: the role names
/// (`via: roles`; plain identifiers, each kept whether or not `roles:` defines it now, so a
/// role added later applies) and the permission names (`prefix:`; those `table` knows, since no
/// route could ask for another). Sorted, without duplicates, at most [`MAX_MAPPED`] of each.
pub fn mapped(
    provider: &Provider,
    claims: &Map<String, Value>,
    table: &PermissionTable,
) -> (Vec<String>, Vec<String>) {
    let (mut roles, mut permissions) = (
        std::collections::BTreeSet::new(),
        std::collections::BTreeSet::new(),
    );
    let mut ignored = 0;
    for source in provider.permissions.iter() {
        let Some(value) = source.claim.find(claims) else {
            continue;
        };
        for v in claim_values(value, source.space_separated, &mut ignored) {
            match &source.mapping {
                Mapping::Roles => {
                    if roles.len() < MAX_MAPPED
                        && crate::pipeline::verify::is_plain_identifier(v)
                        && v.len() <= 256
                    {
                        roles.insert(v.to_owned());
                    }
                }
                Mapping::Prefix(prefix) => {
                    let name = format!("{prefix}{v}");
                    if permissions.len() < MAX_MAPPED
                        && table.set_of(std::slice::from_ref(&name)).is_ok()
                    {
                        permissions.insert(name);
                    }
                }
            }
        }
    }
    (
        roles.into_iter().collect(),
        permissions.into_iter().collect(),
    )
}

/// The provider with `id`, among `providers`.
pub fn find<'p>(providers: &'p [Arc<Provider>], id: &str) -> Option<&'p Arc<Provider>> {
    providers.iter().find(|p| p.id == id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn provider(domains: &[&str], groups: &[&str]) -> Provider {
        Provider {
            id: "corp".into(),
            name: "Corp".into(),
            iss: "https://idp.example".into(),
            issuer: 0,
            client_id: "gw".into(),
            client_secret: ClientSecret::new("s".into()),
            scope: "openid email".into(),
            redirect_uri: "https://gw.example/auth/oidc/corp/callback".into(),
            permissions: Box::new([]),
            email_domains: domains.iter().map(|d| d.to_string()).collect(),
            required_groups: groups.iter().map(|g| g.to_string()).collect(),
            groups_claim: ClaimPath::top("groups"),
            refresh_key: None,
            refresh_interval: Duration::from_secs(300),
        }
    }

    #[test]
    fn a_sealed_refresh_token_opens_only_for_its_session_with_its_key() {
        let key = RefreshKey::new(&[7u8; 32]).unwrap();
        let sealed = key.seal("sid-1", "the-provider-refresh-token");
        assert!(!sealed.contains("the-provider-refresh-token"));
        assert_ne!(
            sealed,
            key.seal("sid-1", "the-provider-refresh-token"),
            "a fresh nonce"
        );
        assert_eq!(
            key.open("sid-1", &sealed).as_deref(),
            Some("the-provider-refresh-token")
        );
        assert_eq!(key.open("sid-2", &sealed), None, "moved to another session");
        let other = RefreshKey::new(&[8u8; 32]).unwrap();
        assert_eq!(other.open("sid-1", &sealed), None, "another key");
        let mut raw = URL_SAFE_NO_PAD.decode(&sealed).unwrap();
        raw[20] ^= 1;
        assert_eq!(
            key.open("sid-1", &URL_SAFE_NO_PAD.encode(raw)),
            None,
            "altered"
        );
        assert!(RefreshKey::new(&[0u8; 31]).is_none());
        assert!(RefreshKey::from_file_content(&[1u8; 32]).is_some());
        let b64 = base64::engine::general_purpose::STANDARD.encode([2u8; 32]);
        assert!(RefreshKey::from_file_content(format!("{b64}\n").as_bytes()).is_some());
        assert!(RefreshKey::from_file_content(b"too short").is_none());
    }

    #[test]
    fn the_mapping_keeps_role_names_and_the_direct_permissions_the_config_knows() {
        let mut p = provider(&[], &[]);
        p.permissions = Box::new([
            PermissionSource::new(ClaimPath::top("groups"), Mapping::Roles),
            PermissionSource::new(ClaimPath::top("scope"), Mapping::Prefix("scope:".into())),
        ]);
        let reader = vec!["docs:read".to_owned()];
        let table = PermissionTable::with_direct(
            [("reader", reader.as_slice())],
            &["scope:documents.write".to_owned()],
        );
        let claims = json!({
            "groups": ["reader", "not-yet-a-role", "bad\u{200B}role", " padded", "reader"],
            "scope": "openid documents.write unknown",
        });
        let (roles, permissions) = mapped(&p, claims.as_object().unwrap(), &table);
        assert_eq!(roles, ["not-yet-a-role", "reader"]);
        assert_eq!(permissions, ["scope:documents.write"]);
    }

    #[test]
    fn the_pkce_challenge_is_the_rfc_7636_appendix_b_example() {
        assert_eq!(
            s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn email_domains_need_a_verified_email_at_a_listed_domain() {
        let p = provider(&["example.com"], &[]);
        let ok = json!({"email": "a@Example.com", "email_verified": true});
        assert_eq!(admit(&p, ok.as_object().unwrap()), Ok(()));
        for bad in [
            json!({"email": "a@example.com"}),
            json!({"email": "a@example.com", "email_verified": "true"}),
            json!({"email": "a@evil.com", "email_verified": true}),
            json!({"email": "a@example.com.evil", "email_verified": true}),
            json!({"email_verified": true}),
        ] {
            assert_eq!(
                admit(&p, bad.as_object().unwrap()),
                Err(Failure::Email),
                "{bad}"
            );
        }
        // No allow-list: anyone, with or without an email.
        assert_eq!(admit(&provider(&[], &[]), &Map::new()), Ok(()));
    }

    #[test]
    fn required_groups_must_all_be_there() {
        let p = provider(&[], &["staff", "vpn"]);
        let ok = json!({"groups": ["vpn", "staff", "x"]});
        assert_eq!(admit(&p, ok.as_object().unwrap()), Ok(()));
        let bad = json!({"groups": ["staff"]});
        assert_eq!(admit(&p, bad.as_object().unwrap()), Err(Failure::Groups));
        assert_eq!(admit(&p, &Map::new()), Err(Failure::Groups));
    }

    #[test]
    fn the_authorization_url_carries_state_nonce_and_an_s256_challenge() {
        let p = provider(&[], &[]);
        let url = authorization_url(
            &"https://idp.example/auth".parse().unwrap(),
            &p,
            "st",
            "no",
            "ch",
        );
        assert_eq!(
            url,
            "https://idp.example/auth?response_type=code&client_id=gw&redirect_uri=https%3A%2F%2Fgw.example%2Fauth%2Foidc%2Fcorp%2Fcallback&scope=openid%20email&state=st&nonce=no&code_challenge=ch&code_challenge_method=S256"
        );
        assert_eq!(format!("{:?}", p.client_secret), "ClientSecret(..)");
    }
}
