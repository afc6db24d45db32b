//! The integration suites, one module each, built as one test binary: one link instead of one
//! per suite, and one harness ([`common`]) they all share. Run one suite with
//! `cargo test --test it security_tokens::`.
//!
//! `tests/bounds.rs` stays a binary of its own: it measures a real-time bound, which must not
//! share the cores with the other suites' CPU work.

#[path = "../common/mod.rs"]
mod common;

mod assertion;
mod audit_sinks;
mod browser_e2e;
mod config;
mod config_errors;
mod cookie_domain;
mod edge;
mod forward_auth;
mod forward_auth_proxies;
mod hash_password_cli;
mod identify;
mod keys_cli;
mod login_flow;
mod module_graph;
mod oidc_login;
mod operations;
mod redis_cluster;
mod redis_gateway;
mod redis_sentinel;
mod remote_keys;
mod security_browser;
mod security_edges;
mod security_proxy;
mod security_sessions;
mod security_tokens;
mod smoke;
mod store_clock;
mod store_contract;
mod token_cache_abuse;
mod token_profile;
mod transport;
mod wycheproof;
