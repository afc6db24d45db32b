//! `portcullis keys generate`, run as an operator would: the built binary, a fresh directory.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output};

use jsonwebtoken::Algorithm;
use portcullis::keys::signing::SigningKey;

fn keys_generate(alg: &str, out: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["keys", "generate", "--alg", alg, "--out"])
        .arg(out)
        .output()
        .expect("running portcullis")
}

#[test]
fn keys_generate_writes_an_owner_only_private_key_and_a_public_key_named_by_the_kid() {
    for (name, alg) in [
        ("EdDSA", Algorithm::EdDSA),
        ("ES256", Algorithm::ES256),
        ("RS256", Algorithm::RS256),
    ] {
        let tmp = tempfile::TempDir::new().unwrap();
        // A directory that does not exist yet: the command creates it.
        let out = tmp.path().join("keys");
        let output = keys_generate(name, &out);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{name}: {stderr}");
        let stdout = String::from_utf8(output.stdout).unwrap();
        let kid = stdout.lines().next().unwrap();

        let private = out.join(format!("{kid}.key.pem"));
        let public = out.join(format!("{kid}.pub.pem"));
        assert!(private.is_file(), "{name}: no {}", private.display());
        assert!(public.is_file(), "{name}: no {}", public.display());
        let stem = private
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .strip_suffix(".key.pem")
            .unwrap();
        assert_eq!(stem, kid);
        let mode = std::fs::metadata(&private).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{name}: private key mode {mode:o}");
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 2);

        // The printed config line names the private key, and that key has the printed kid.
        let entry = stdout
            .lines()
            .find(|l| l.starts_with("- {"))
            .unwrap_or_else(|| panic!("{name}: no config line in {stdout}"));
        assert!(entry.contains(&format!("alg: {name}, pem: ")), "{entry}");
        assert!(entry.contains(&format!("{kid}.key.pem")), "{entry}");
        let key = SigningKey::from_pem_file(&private, alg).unwrap();
        assert_eq!(key.kid(), kid);

        // The public file is what a verifying gateway loads, and it verifies the key's tokens.
        let decoding = portcullis::keys::load_pem(&public, alg).unwrap();
        let token = key.sign(&serde_json::json!({"sub": "alice"})).unwrap();
        let mut validation = jsonwebtoken::Validation::new(alg);
        validation.set_required_spec_claims::<&str>(&[]);
        validation.validate_exp = false;
        jsonwebtoken::decode::<serde_json::Value>(&token, &decoding, &validation)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn keys_generate_refuses_an_algorithm_that_cannot_sign_and_writes_nothing() {
    let tmp = tempfile::TempDir::new().unwrap();
    let out = tmp.path().join("keys");
    let output = keys_generate("HS256", &out);
    assert!(!output.status.success());
    assert!(!out.exists());
}

#[test]
fn keys_generate_help_says_what_it_writes() {
    let output = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["keys", "generate", "--help"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    assert!(
        help.contains("<kid>.key.pem") && help.contains("0600"),
        "{help}"
    );
    assert!(help.contains("auth.signing_keys"), "{help}");
}
