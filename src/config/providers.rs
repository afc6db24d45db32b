//! `auth.providers` → the OpenID Providers browsers sign in through ([`Provider`]).

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use super::claims::permission_sources;
use super::error::{ConfigError, invalid};
use super::raw::RawProvider;
use crate::auth_flow::oidc::{ClientSecret, PREFIX, Provider, RefreshKey};
use crate::keys::KeySet;
use crate::keys::profile::ClaimPath;
use crate::keys::remote::Source;

/// Compiles `auth.providers`. Each names an `issuers:` entry configured by `discovery:` (its
/// document gives the endpoints; its key set verifies the ID tokens), at most one provider per
/// issuer (a user is `<iss>#<sub>`, so one issuer is one namespace of users). `gateway` is
/// `auth.issuer`, the gateway's public URL, which the callback URL is built on.
pub(super) fn compile(
    raw: &[RawProvider],
    keys: &KeySet,
    gateway: &str,
    base: &Path,
) -> Result<Vec<Arc<Provider>>, ConfigError> {
    let mut out = Vec::with_capacity(raw.len());
    let (mut ids, mut issuers) = (HashSet::new(), HashSet::new());
    for (i, p) in raw.iter().enumerate() {
        let key = format!("auth.providers[{i}]");
        let id_ok = !p.id.is_empty()
            && p.id.len() <= 64
            && p.id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !id_ok {
            return Err(invalid(
                format!("{key}.id"),
                "must be 1 to 64 letters, digits, `-` or `_`",
            ));
        }
        if !ids.insert(p.id.as_str()) {
            return Err(invalid(
                format!("{key}.id"),
                format!("`{}` names two providers", p.id),
            ));
        }
        let name = p.name.trim();
        if name.is_empty() || name.len() > 64 {
            return Err(invalid(format!("{key}.name"), "must be 1 to 64 characters"));
        }
        let Some(issuer) = keys.issuers.iter().position(|x| *x.iss == *p.issuer) else {
            return Err(invalid(
                format!("{key}.issuer"),
                format!("`{}` is not listed under `issuers`", p.issuer),
            ));
        };
        let by_discovery = keys
            .remote_for(&p.issuer)
            .is_some_and(|r| matches!(r.source(), Source::Discovery(_)));
        if !by_discovery {
            return Err(invalid(
                format!("{key}.issuer"),
                format!(
                    "the `issuers` entry `{}` must have `discovery:` (its document names the \
                     provider's endpoints)",
                    p.issuer
                ),
            ));
        }
        if !issuers.insert(p.issuer.as_str()) {
            return Err(invalid(
                format!("{key}.issuer"),
                format!("`{}` is the issuer of another provider", p.issuer),
            ));
        }
        if p.client_id.is_empty() {
            return Err(invalid(format!("{key}.client_id"), "must not be empty"));
        }
        // The provider's ID tokens are addressed to the client (`aud` = `client_id`): if its
        // issuer's access tokens were accepted for that audience too, an ID token (or a logout
        // token) would pass as a bearer access token, past this provider's mapping and
        // allow-lists, and outlive the session it was issued for.
        if keys.issuers[issuer]
            .audiences
            .iter()
            .any(|a| **a == *p.client_id)
        {
            return Err(invalid(
                format!("{key}.client_id"),
                format!(
                    "`{}` is one of the `audiences` of the issuer `{}`: its ID tokens would pass \
                     as access tokens; accept the API's own audience there",
                    p.client_id, p.issuer
                ),
            ));
        }
        let secret_path = base.join(&p.client_secret_file);
        let secret = std::fs::read_to_string(&secret_path)
            .map_err(|e| {
                invalid(
                    format!("{key}.client_secret_file"),
                    format!("cannot read {}: {e}", secret_path.display()),
                )
            })?
            .trim()
            .to_owned();
        if secret.is_empty() {
            return Err(invalid(
                format!("{key}.client_secret_file"),
                format!("{} is empty", secret_path.display()),
            ));
        }
        let scopes = p
            .scopes
            .clone()
            .unwrap_or_else(|| vec!["openid".to_owned()]);
        if let Some(j) = scopes.iter().position(|s| {
            s.is_empty()
                || !s
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        }) {
            return Err(invalid(
                format!("{key}.scopes[{j}]"),
                "must be a scope token (printable, no spaces)",
            ));
        }
        if !scopes.iter().any(|s| s == "openid") {
            return Err(invalid(
                format!("{key}.scopes"),
                "must include `openid` (without it there is no ID token)",
            ));
        }
        let permissions = permission_sources(&key, &p.permissions)?;
        let mut email_domains = Vec::with_capacity(p.email_domains.len());
        for (j, d) in p.email_domains.iter().enumerate() {
            let d = d.trim().to_ascii_lowercase();
            if d.is_empty() || d.contains(['@', '/', ' ']) || d.starts_with('.') {
                return Err(invalid(
                    format!("{key}.email_domains[{j}]"),
                    "must be a domain like example.com",
                ));
            }
            email_domains.push(d);
        }
        if let Some(j) = p.required_groups.iter().position(String::is_empty) {
            return Err(invalid(
                format!("{key}.required_groups[{j}]"),
                "must not be empty",
            ));
        }
        let groups_claim = ClaimPath::parse(p.groups_claim.as_deref().unwrap_or("groups"))
            .map_err(|m| invalid(format!("{key}.groups_claim"), m))?;
        let refresh_key = match &p.refresh_token_key_file {
            None => None,
            Some(file) => {
                let path = base.join(file);
                let content = std::fs::read(&path).map_err(|e| {
                    invalid(
                        format!("{key}.refresh_token_key_file"),
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                Some(RefreshKey::from_file_content(&content).ok_or_else(|| {
                    invalid(
                        format!("{key}.refresh_token_key_file"),
                        format!(
                            "{} must hold 32 bytes, raw or in base64 (`openssl rand -base64 32`)",
                            path.display()
                        ),
                    )
                })?)
            }
        };
        let interval_key = format!("{key}.provider_refresh_interval");
        let refresh_interval = super::units::duration(
            &interval_key,
            p.provider_refresh_interval.as_ref(),
            std::time::Duration::from_secs(300),
        )?;
        if refresh_interval < std::time::Duration::from_secs(10)
            || refresh_interval > std::time::Duration::from_secs(86_400)
        {
            return Err(invalid(interval_key, "must be between 10s and 24h"));
        }
        out.push(Arc::new(Provider {
            id: p.id.clone(),
            name: name.to_owned(),
            iss: p.issuer.clone(),
            issuer,
            client_id: p.client_id.clone(),
            client_secret: ClientSecret::new(secret),
            scope: scopes.join(" "),
            redirect_uri: format!("{}{PREFIX}{}/callback", gateway.trim_end_matches('/'), p.id),
            permissions,
            email_domains: email_domains.into(),
            required_groups: p.required_groups.clone().into(),
            groups_claim,
            refresh_key,
            refresh_interval,
        }));
    }
    Ok(out)
}
