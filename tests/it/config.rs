//! Config errors, one test per class, through the library (`Config::from_yaml`) and through
//! the binary (`portcullis check --config FILE`). Every message must name the key, and the
//! line where the YAML parser knows it, because an operator fixes the file from that message.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use jsonwebtoken::Algorithm;
use portcullis::config::Config;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// A valid config; the tests break one thing in it. Line numbers below refer to this text
/// (line 1 is `listeners:`).
const VALID: &str = "\
listeners:
  - bind: 127.0.0.1:0
issuers:
  - issuer: https://issuer.test
    audiences: [portcullis-tests]
    keys:
      - { kid: k1, alg: EdDSA, pem: k1.pub.pem }
roles:
  reader: [docs:read]
upstreams:
  app: { url: \"http://127.0.0.1:9\", response_timeout: 5s }
routes:
  - { id: docs, path: /docs, upstream: app, policy: { all_of: [docs:read] } }
  - { id: home, path: /, upstream: app, policy: public }
trusted_proxies: [10.0.0.0/8]
";

/// A temp dir holding the key file `k1.pub.pem` that [`VALID`] names.
fn dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    TestKey::generate(Algorithm::EdDSA, "k1").yaml_entry(dir.path());
    dir
}

/// [`VALID`] with `from` replaced by `to` (which must occur exactly once).
fn edit(from: &str, to: &str) -> String {
    assert_eq!(
        VALID.matches(from).count(),
        1,
        "`{from}` must occur once in VALID"
    );
    VALID.replace(from, to)
}

/// Runs `portcullis check --config <dir>/gateway.yaml` on `yaml`.
fn check_cli(dir: &Path, yaml: &str) -> Output {
    let path = write(dir, "gateway.yaml", yaml);
    run_check(&path)
}

fn run_check(path: &Path) -> Output {
    Command::new(BIN)
        .arg("check")
        .arg("--config")
        .arg(path)
        .output()
        .expect("the portcullis binary runs")
}

/// Asserts that `yaml` is refused both by the library and by `portcullis check`, and that
/// both messages contain every one of `expected`. Returns the library's message.
fn refused(yaml: &str, expected: &[&str]) -> String {
    let dir = dir();
    let err = match Config::from_yaml(yaml, dir.path()) {
        Ok(_) => panic!("accepted a broken config:\n{yaml}"),
        Err(e) => e.to_string(),
    };
    for want in expected {
        assert!(err.contains(want), "library message lacks `{want}`: {err}");
    }
    let out = check_cli(dir.path(), yaml);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "check exited 0 for a broken config: {stdout}"
    );
    assert!(
        !stdout.contains("ok"),
        "check printed ok for a broken config: {stdout}"
    );
    for want in expected {
        assert!(
            stderr.contains(want),
            "check output lacks `{want}`: {stderr}"
        );
    }
    err
}

#[test]
fn the_valid_base_config_loads_and_check_prints_ok() {
    let dir = dir();
    let config = Config::from_yaml(VALID, dir.path()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.runtime.router.len(), 2);
    let out = check_cli(dir.path(), VALID);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ok"), "{stdout}");
}

#[test]
fn a_yaml_syntax_error_names_its_line() {
    // An unclosed flow mapping on line 13.
    let yaml = edit(
        "  - { id: docs, path: /docs, upstream: app, policy: { all_of: [docs:read] } }",
        "  - { id: docs, path: /docs, upstream: app, policy: { all_of: [docs:read] }",
    );
    refused(&yaml, &["line 13"]);
}

#[test]
fn an_unknown_top_level_key_is_an_error_with_its_line() {
    let yaml = format!("{VALID}polcy: public\n");
    refused(&yaml, &["unknown field `polcy`", "line 16"]);
}

#[test]
fn an_unknown_nested_key_names_its_path_and_line() {
    let yaml = edit(
        "id: home, path: /, upstream: app, policy: public",
        "id: home, path: /, upstream: app, polcy: public",
    );
    refused(&yaml, &["routes[1]", "unknown field `polcy`", "line 14"]);
}

#[test]
fn a_misspelt_key_in_a_block_mapping_is_refused_not_defaulted() {
    let yaml = edit(
        "  - bind: 127.0.0.1:0\n",
        "  - bind: 127.0.0.1:0\n    tsl: { cert: c.pem, key: k.pem }\n",
    );
    refused(&yaml, &["listeners[0]", "unknown field `tsl`", "line 3"]);
}

#[test]
fn a_value_of_the_wrong_type_names_its_path_and_line() {
    let yaml = format!("{VALID}limits:\n  max_connections: lots\n");
    refused(
        &yaml,
        &["limits.max_connections", "invalid type", "line 17"],
    );
}

#[test]
fn an_unknown_policy_name_is_refused_with_the_accepted_forms() {
    let yaml = edit("policy: public", "policy: admins_only");
    refused(
        &yaml,
        &[
            "routes[1].policy",
            "unknown policy `admins_only`",
            "all_of",
            "line 14",
        ],
    );
}

#[test]
fn an_unknown_policy_form_in_a_mapping_is_refused() {
    let yaml = edit(
        "policy: { all_of: [docs:read] }",
        "policy: { one_of: [docs:read] }",
    );
    refused(
        &yaml,
        &["routes[0].policy", "unknown policy `one_of`", "line 13"],
    );
}

#[test]
fn all_of_naming_a_permission_no_role_grants_is_refused() {
    let yaml = edit("all_of: [docs:read]", "all_of: [docs:read, docs:wrte]");
    refused(&yaml, &["routes[0].policy.all_of[1]", "docs:wrte"]);
}

#[test]
fn a_route_to_an_upstream_that_does_not_exist_is_refused() {
    let yaml = edit(
        "id: home, path: /, upstream: app",
        "id: home, path: /, upstream: ap",
    );
    refused(&yaml, &["routes[1].upstream", "`ap`"]);
}

#[test]
fn two_routes_with_the_same_host_path_and_methods_are_refused() {
    let yaml = VALID.replace(
        "trusted_proxies",
        "  - { id: docs-again, path: /docs/, upstream: app, policy: public }\ntrusted_proxies",
    );
    let err = refused(&yaml, &["routes[2]", "docs-again", "docs"]);
    assert!(err.contains("same host, path and methods"), "{err}");
}

#[test]
fn routes_on_one_path_are_allowed_only_when_their_methods_are_disjoint() {
    let dir = dir();
    let yaml = VALID.replace(
        "trusted_proxies",
        "  - { id: docs-write, path: /docs, methods: [POST], upstream: app, policy: public }\n  - { id: docs-get, path: /docs/x, methods: [GET], upstream: app, policy: public }\ntrusted_proxies",
    );
    Config::from_yaml(&yaml, dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let yaml = yaml.replace(
        "id: docs-get, path: /docs/x, methods: [GET]",
        "id: docs-get, path: /docs/x, methods: [GET, POST]",
    );
    Config::from_yaml(&yaml, dir.path())
        .unwrap_or_else(|e| panic!("a different path is no duplicate: {e}"));
    let yaml = VALID.replace(
        "trusted_proxies",
        "  - { id: docs-post, path: /docs, methods: [POST, GET], upstream: app, policy: public }\n  - { id: docs-get, path: /docs, methods: [GET], upstream: app, policy: public }\ntrusted_proxies",
    );
    let err = Config::from_yaml(&yaml, dir.path()).expect_err("overlapping methods on one path");
    assert!(err.to_string().contains("routes[3]"), "{err}");
}

#[test]
fn a_route_path_not_in_normal_form_is_refused_with_the_normal_form() {
    let yaml = edit("path: /docs,", "path: /a/../docs,");
    refused(
        &yaml,
        &["routes[0].path", "/a/../docs", "normal form", "`/docs`"],
    );
}

#[test]
fn a_duration_without_a_unit_is_refused() {
    // Written bare, as an operator would, and quoted: both reach the unit check.
    for value in ["30", "\"30\""] {
        let yaml = edit(
            "response_timeout: 5s",
            &format!("response_timeout: {value}"),
        );
        refused(
            &yaml,
            &["upstreams.app.response_timeout", "`30` has no unit"],
        );
    }
}

#[test]
fn a_bad_cidr_in_trusted_proxies_is_refused() {
    let yaml = edit("[10.0.0.0/8]", "[10.0.0.0/8, 10.0.0.0/33]");
    refused(&yaml, &["trusted_proxies[1]", "10.0.0.0/33"]);
    let yaml = edit("[10.0.0.0/8]", "[10.0.0.0/8, gateway.internal]");
    refused(&yaml, &["trusted_proxies[1]", "gateway.internal"]);
}

#[test]
fn a_missing_key_file_is_refused() {
    let yaml = edit("pem: k1.pub.pem", "pem: k9.pub.pem");
    refused(&yaml, &["issuers[0].keys[0]", "k9.pub.pem"]);
}

#[test]
fn a_key_bound_to_alg_none_or_hs512_is_refused() {
    for alg in ["none", "None", "HS512", "rs256"] {
        let yaml = edit("alg: EdDSA", &format!("alg: {alg}"));
        refused(
            &yaml,
            &["issuers[0].keys[0]", &format!("`{alg}` is not allowed")],
        );
    }
}

#[test]
fn an_hs256_secret_shorter_than_32_bytes_is_refused() {
    let dir = dir();
    write(
        dir.path(),
        "short.secret",
        "0123456789abcdef0123456789abcde",
    );
    let yaml = edit(
        "{ kid: k1, alg: EdDSA, pem: k1.pub.pem }",
        "{ kid: k1, alg: HS256, secret_file: short.secret }",
    );
    let err = Config::from_yaml(&yaml, dir.path())
        .expect_err("a 31-byte secret")
        .to_string();
    assert!(
        err.contains("issuers[0].keys[0]") && err.contains("at least 32"),
        "{err}"
    );
    let out = check_cli(dir.path(), &yaml);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("issuers[0].keys[0]") && stderr.contains("at least 32"),
        "{stderr}"
    );
    // 32 bytes is enough.
    write(
        dir.path(),
        "short.secret",
        "0123456789abcdef0123456789abcdef",
    );
    Config::from_yaml(&yaml, dir.path()).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn an_upstream_with_both_url_and_echo_is_refused() {
    let yaml = edit(
        "app: { url: \"http://127.0.0.1:9\",",
        "app: { echo: true, url: \"http://127.0.0.1:9\",",
    );
    refused(
        &yaml,
        &["upstreams.app", "exactly one of `url` or `echo: true`"],
    );
}

#[test]
fn a_protected_route_without_any_issuer_is_refused() {
    let start = VALID.find("issuers:").unwrap();
    let end = VALID.find("roles:").unwrap();
    let yaml = format!("{}{}", &VALID[..start], &VALID[end..]);
    refused(&yaml, &["routes[0].policy", "no issuer"]);
    // Public routes alone need no issuer.
    let dir = dir();
    let public_only = yaml.replace("policy: { all_of: [docs:read] }", "policy: public");
    Config::from_yaml(&public_only, dir.path()).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn a_missing_tls_certificate_file_is_refused() {
    let yaml = edit(
        "  - bind: 127.0.0.1:0\n",
        "  - bind: 127.0.0.1:0\n    tls: { cert: missing-cert.pem, key: missing-key.pem }\n",
    );
    refused(&yaml, &["listeners[0].tls", "missing-cert.pem"]);
}

#[test]
fn a_listener_bind_that_is_not_an_address_is_refused() {
    for bind in ["localhost:8080", "127.0.0.1", "0.0.0.0:http"] {
        let yaml = edit("bind: 127.0.0.1:0", &format!("bind: \"{bind}\""));
        refused(&yaml, &["listeners[0].bind", bind]);
    }
}

#[test]
fn a_missing_config_file_makes_check_fail_with_the_path() {
    let dir = dir();
    let path = dir.path().join("nope.yaml");
    let out = run_check(&path);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.yaml"));
}

#[test]
fn check_resolves_relative_paths_against_the_config_file_directory() {
    // The key path in VALID is relative; run the binary from elsewhere.
    let dir = dir();
    let path = write(dir.path(), "gateway.yaml", VALID);
    let out = Command::new(BIN)
        .current_dir(std::env::temp_dir())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn help_explains_the_commands() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for want in ["run", "check", "gateway"] {
        assert!(text.contains(want), "--help lacks `{want}`:\n{text}");
    }
}

#[test]
fn run_help_explains_its_options() {
    let out = Command::new(BIN).args(["run", "--help"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for want in ["--config", "gateway.yaml", "--log-format"] {
        assert!(text.contains(want), "run --help lacks `{want}`:\n{text}");
    }
}

#[test]
fn check_help_explains_itself() {
    let out = Command::new(BIN)
        .args(["check", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("--config") && text.to_lowercase().contains("valid"),
        "{text}"
    );
}

#[test]
fn the_example_gateway_yaml_passes_check() {
    let path = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.yaml"));
    assert!(path.exists(), "the example {} is missing", path.display());
    let out = run_check(&path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ok"), "{stdout}");
}

#[test]
fn a_bare_number_for_a_store_duration_names_the_key_and_its_line() {
    // Inside `store:` (read after its `kind`), a bare number used to be refused as "invalid
    // type: integer `500`, expected a string", with neither key nor line.
    for (key, value) in [("timeout", "500"), ("cache_ttl", "30")] {
        let yaml = format!(
            "{VALID}store:\n  kind: redis\n  url: redis://127.0.0.1:6390\n  {key}: {value}\n"
        );
        refused(
            &yaml,
            &[
                &format!("store.{key}"),
                &format!("`{value}` has no unit"),
                "line 19",
            ],
        );
    }
}

#[test]
fn an_invalid_limit_names_the_key_and_its_line() {
    let yaml = format!("{VALID}limits:\n  max_connections: 100\n  body_deadline: 0s\n");
    refused(
        &yaml,
        &["limits.body_deadline", "must be above zero", "line 18"],
    );
    let yaml = format!("{VALID}limits: {{ body_min_rate: fast }}\n");
    refused(&yaml, &["limits.body_min_rate", "line 16"]);
}

#[test]
fn the_slow_client_limits_have_their_documented_defaults() {
    let dir = dir();
    let config = Config::from_yaml(VALID, dir.path()).unwrap();
    assert_eq!(config.limits.max_connections, 10_000);
    assert_eq!(config.limits.max_connections_per_ip, 1_000);
    let pace = config.runtime.body_pace;
    assert_eq!(pace.stall_after, std::time::Duration::from_secs(30));
    assert_eq!(pace.min_rate, 500);
    assert_eq!(pace.grace, std::time::Duration::from_secs(20));
    assert_eq!(pace.deadline, None);
    assert_eq!(
        config.audit.aggregate_window,
        std::time::Duration::from_secs(10)
    );
    // A small max_connections still allows 64 per address; 0 turns the cap off.
    let small = format!("{VALID}limits: {{ max_connections: 200 }}\n");
    let config = Config::from_yaml(&small, dir.path()).unwrap();
    assert_eq!(config.limits.max_connections_per_ip, 64);
    let off = format!("{VALID}limits: {{ max_connections_per_ip: 0 }}\n");
    let config = Config::from_yaml(&off, dir.path()).unwrap();
    assert_eq!(config.limits.max_connections_per_ip, 0);
}
