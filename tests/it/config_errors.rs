//! Config errors as values: the key and line of a mistake under `store:` (which used to come
//! without either, or not at all under `kind: memory`), and the underlying error kept as the
//! error's `source` for a caller that acts on it rather than on the message.

use std::error::Error;
use std::io::ErrorKind;

use portcullis::config::units::UnitError;
use portcullis::config::{Config, ConfigError};
use portcullis::keys::KeyError;
use portcullis::net::IpNetError;

/// A valid config without keys: public routes only, an echo upstream. Line 7 is `store:`
/// when a test appends one.
const BASE: &str = "\
listeners:
  - bind: 127.0.0.1:0
upstreams:
  app: { echo: true }
routes:
  - { path: /, upstream: app, policy: public }
";

fn refused(yaml: &str) -> ConfigError {
    let dir = tempfile::tempdir().unwrap();
    match Config::from_yaml(yaml, dir.path()) {
        Ok(_) => panic!("accepted a broken config:\n{yaml}"),
        Err(e) => e,
    }
}

fn assert_names(err: &ConfigError, expected: &[&str]) {
    let message = err.to_string();
    for want in expected {
        assert!(
            message.contains(want),
            "the message lacks `{want}`: {message}"
        );
    }
}

/// The chain of causes below `err`, outermost first.
fn causes(err: &ConfigError) -> Vec<&(dyn Error + 'static)> {
    std::iter::successors(err.source(), |&e| e.source()).collect()
}

#[test]
fn the_base_config_loads() {
    let dir = tempfile::tempdir().unwrap();
    Config::from_yaml(BASE, dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let redis = format!("{BASE}store:\n  kind: redis\n  url: redis://127.0.0.1:6390\n");
    Config::from_yaml(&redis, dir.path()).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn an_unknown_field_under_store_names_its_path_and_line() {
    let yaml =
        format!("{BASE}store:\n  kind: redis\n  url: redis://127.0.0.1:6390\n  timout: 1s\n");
    let err = refused(&yaml);
    assert_names(&err, &["store", "unknown field `timout`", "line 10"]);
    assert!(matches!(err, ConfigError::Parse(_)), "{err:?}");
}

#[test]
fn an_unknown_field_under_store_sentinel_names_its_path_and_line() {
    let yaml = format!(
        "{BASE}store:\n  kind: redis\n  sentinel:\n    master: m\n    nodes: [redis://127.0.0.1:26390]\n    extra: 1\n"
    );
    assert_names(
        &refused(&yaml),
        &["store.sentinel", "unknown field `extra`", "line 12"],
    );
}

#[test]
fn a_value_of_the_wrong_type_under_store_names_its_path_and_line() {
    let yaml = format!(
        "{BASE}store:\n  kind: redis\n  url: redis://127.0.0.1:6390\n  first_start: maybe\n"
    );
    assert_names(
        &refused(&yaml),
        &["store.first_start", "invalid type", "line 10"],
    );
}

#[test]
fn a_redis_setting_under_the_memory_store_is_refused_with_its_line() {
    // It used to be ignored: a `kind: memory` left in by mistake silently dropped the
    // deployment's shared store.
    let yaml = format!("{BASE}store:\n  kind: memory\n  url: redis://127.0.0.1:6390\n");
    assert_names(&refused(&yaml), &["store.url", "kind", "memory", "line 9"]);
    let yaml = format!("{BASE}store:\n  kind: memory\n  timout: 1s\n");
    assert_names(&refused(&yaml), &["unknown field `timout`", "line 9"]);
}

#[test]
fn a_store_without_kind_is_refused_with_its_line() {
    let yaml = format!("{BASE}store:\n  url: redis://127.0.0.1:6390\n");
    assert_names(
        &refused(&yaml),
        &["store", "missing field `kind`", "line 8"],
    );
}

#[test]
fn a_missing_key_file_keeps_the_key_error_and_the_os_error_as_its_causes() {
    let yaml = BASE.replace("policy: public", "policy: authenticated")
        + "issuers:\n  - issuer: https://issuer.test\n    audiences: [a]\n    keys:\n      - { kid: k1, alg: EdDSA, pem: missing.pem }\n";
    let err = refused(&yaml);
    assert_names(&err, &["issuers[0].keys[0]", "missing.pem", "line 11"]);
    let ConfigError::Invalid { key, line, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!((key.as_str(), *line), ("issuers[0].keys[0]", Some(11)));
    let chain = causes(&err);
    assert!(
        matches!(
            chain[0].downcast_ref::<KeyError>(),
            Some(KeyError::Read { .. })
        ),
        "{chain:?}"
    );
    let io = chain
        .iter()
        .find_map(|e| e.downcast_ref::<std::io::Error>())
        .expect("the OS error is in the chain");
    assert_eq!(io.kind(), ErrorKind::NotFound);
}

#[test]
fn an_unreadable_admin_token_file_keeps_the_os_error_as_its_cause() {
    let yaml = format!("{BASE}admin:\n  bind: 127.0.0.1:0\n  token_file: missing.secret\n");
    let err = refused(&yaml);
    assert_names(&err, &["admin.token_file", "missing.secret", "line 9"]);
    let io = causes(&err)
        .into_iter()
        .find_map(|e| e.downcast_ref::<std::io::Error>())
        .expect("the OS error is in the chain");
    assert_eq!(io.kind(), ErrorKind::NotFound);
}

#[test]
fn a_bad_duration_keeps_the_unit_error_as_its_cause() {
    let yaml = BASE.replace(
        "{ echo: true }",
        "{ url: \"http://127.0.0.1:9\", response_timeout: 30 }",
    );
    let err = refused(&yaml);
    assert_names(
        &err,
        &["upstreams.app.response_timeout", "`30` has no unit"],
    );
    assert_eq!(
        causes(&err)[0].downcast_ref::<UnitError>(),
        Some(&UnitError::NoDurationUnit("30".into()))
    );
}

#[test]
fn a_bad_trusted_proxy_keeps_the_network_error_as_its_cause() {
    let yaml = format!("{BASE}trusted_proxies: [10.0.0.0/8, 10.0.0.0/33]\n");
    let err = refused(&yaml);
    assert_names(&err, &["trusted_proxies[1]", "10.0.0.0/33", "line 7"]);
    assert_eq!(
        causes(&err)[0].downcast_ref::<IpNetError>(),
        Some(&IpNetError::Prefix {
            text: "10.0.0.0/33".into(),
            max: 32
        })
    );
}

#[test]
fn a_yaml_error_keeps_the_parser_error_as_its_cause() {
    let err = refused(&format!("{BASE}routes: [\n"));
    assert!(
        causes(&err)[0]
            .downcast_ref::<serde_yaml::Error>()
            .is_some(),
        "{err:?}"
    );
}

#[test]
fn a_provider_whose_client_id_is_an_access_token_audience_of_its_issuer_is_refused() {
    // Its ID tokens (aud = client_id) would pass as bearer access tokens.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret.txt"), "s3cret\n").unwrap();
    let yaml = |audiences: &str| {
        format!(
            "listeners:\n  - bind: 127.0.0.1:0\nissuers:\n  - issuer: http://127.0.0.1:9\n    audiences: [{audiences}]\n    discovery: http://127.0.0.1:9/.well-known/openid-configuration\nupstreams:\n  app: {{ echo: true }}\nroutes:\n  - {{ path: /, upstream: app, policy: public }}\nauth:\n  issuer: https://gw.test\n  providers:\n    - id: corp\n      name: Corp\n      issuer: http://127.0.0.1:9\n      client_id: gw\n      client_secret_file: secret.txt\n"
        )
    };
    let err = Config::from_yaml(&yaml("api, gw"), dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("auth.providers[0].client_id") && err.contains("would pass as access tokens"),
        "{err}"
    );
    Config::from_yaml(&yaml("api"), dir.path()).expect("the API's own audience loads");
}
