//! The `/auth/*` endpoints. Each handler reads the request, asks the users file and the store,
//! emits exactly one audit event for a security decision, and answers.
//!
//! This file holds what every handler is given ([`Env`]) and the router ([`handle`]); the
//! handlers live one endpoint group to a file:
//!
//! | file | holds |
//! |---|---|
//! | `login.rs` | `GET`/`POST /auth/login`; minting an access token, setting the token cookies |
//! | `refresh.rs` | `POST /auth/refresh` |
//! | `logout.rs` | `POST /auth/logout`, `POST /auth/logout-all` |
//! | `sessions.rs` | `GET /auth/sessions`, `POST /auth/sessions/revoke` |
//! | `oidc.rs` | `GET /auth/oidc/<id>`, `GET /auth/oidc/<id>/callback`: sign-in through an OpenID Provider; `POST /auth/oidc/<id>/backchannel-logout` |
//! | `assets.rs` | `GET /.well-known/jwks.json`, `GET /auth/static/*` |
//! | `caller.rs` | who the caller is: access token, or refresh cookie proven by rotating it |
//! | `input.rs` | what a request brings: its body, form fields, headers, CSRF token |
//! | `respond.rs` | audited refusals and the response builders |

use http::{HeaderValue, Method, Request, Response};
use hyper::body::Incoming;

use super::{AuthSettings, Client, JWKS_PATH, LOGIN_PATH, pages};
use crate::audit::{Audit, AuditEvent};
use crate::body::GatewayBody;
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::pipeline::identify::Identify;
use crate::pipeline::route::RouteError;
use crate::store::Store;

mod assets;
mod caller;
mod input;
mod login;
mod logout;
mod oidc;
mod provider_refresh;
mod refresh;
mod respond;
mod sessions;

pub(crate) use input::url_decode;

use assets::{asset, jwks};
use login::{login, login_page};
use logout::{logout, logout_all};
use refresh::refresh;
use sessions::{revoke, sessions_page};

/// What a handler needs besides the request.
#[derive(Debug)]
pub struct Env<'a> {
    /// The auth settings of this request's runtime snapshot.
    pub auth: &'a AuthSettings,
    /// Who a request is, in the same snapshot.
    pub identify: &'a Identify,
    /// Longest wait for the next part of a request body (`limits.body_read_timeout`).
    pub body_read_timeout: std::time::Duration,
    /// The session store.
    pub store: &'a Store,
    /// The audit trail.
    pub audit: &'a Audit,
    /// The gateway's metrics (the signature checks the auth flow performs count there too).
    pub metrics: &'a Metrics,
    /// The request id.
    pub request_id: &'a HeaderValue,
    /// The instant of this request, read once from the gateway's clock: every decision the
    /// handler makes (expiry, lifetimes, revocation instants, throttle windows) uses it.
    pub now: i64,
    /// The client.
    pub client: Client,
}

impl Env<'_> {
    fn event<'e>(
        &'e self,
        event: &'static str,
        reason_id: &'static str,
        path: &'e str,
    ) -> AuditEvent<'e> {
        AuditEvent {
            event,
            reason_id,
            client_ip: Some(self.client.ip),
            user_agent: Some(&self.client.user_agent),
            request_id: self.request_id.to_str().ok(),
            method: Some("POST"),
            path: Some(path),
            ..AuditEvent::default()
        }
    }
}

/// Answers a request for one of the paths [`super::owns`].
pub async fn handle(
    request: Request<Incoming>,
    path: &str,
    env: &Env<'_>,
) -> Result<Response<GatewayBody>, GatewayError> {
    let method = request.method().clone();
    let read = method == Method::GET || method == Method::HEAD;
    match path {
        LOGIN_PATH if read => Ok(login_page(request.headers(), request.uri().query(), env)),
        LOGIN_PATH if method == Method::POST => login(request, env).await,
        "/auth/refresh" if method == Method::POST => refresh(request, env).await,
        "/auth/logout" if method == Method::POST => logout(request, env).await,
        "/auth/logout-all" if method == Method::POST => logout_all(request, env).await,
        "/auth/sessions" if read => sessions_page(request.headers(), method.as_str(), env).await,
        "/auth/sessions/revoke" if method == Method::POST => revoke(request, env).await,
        JWKS_PATH if read => Ok(jwks(env.auth)),
        "/auth/static/portcullis.css" if read => {
            Ok(asset(pages::STYLESHEET, "text/css; charset=utf-8"))
        }
        "/auth/static/refresh.js" if read => Ok(asset(
            pages::REFRESH_SCRIPT,
            "text/javascript; charset=utf-8",
        )),
        LOGIN_PATH
        | "/auth/refresh"
        | "/auth/logout"
        | "/auth/logout-all"
        | "/auth/sessions"
        | "/auth/sessions/revoke"
        | JWKS_PATH
        | "/auth/static/portcullis.css"
        | "/auth/static/refresh.js" => Err(RouteError::MethodNotAllowed.into()),
        p if p.starts_with(super::oidc::PREFIX) => match p.strip_prefix(super::oidc::PREFIX) {
            Some(rest) if method == Method::POST && rest.ends_with(oidc::BACKCHANNEL_SUFFIX) => {
                let rest = rest.to_owned();
                oidc::backchannel_logout(request, &rest, env).await
            }
            Some(rest) if read => {
                oidc::handle(request.headers(), rest, request.uri().query(), env).await
            }
            Some(_) => Err(RouteError::MethodNotAllowed.into()),
            None => Err(RouteError::NotFound.into()),
        },
        _ => Err(RouteError::NotFound.into()),
    }
}
