//! `portcullis hash-password --stdin`, run as the real binary.

use std::io::Write as _;
use std::process::{Command, Output, Stdio};

use argon2::{Argon2, PasswordHash, PasswordVerifier as _};

fn hash_password_with_stdin(input: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["hash-password", "--stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run portcullis");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(input)
        .expect("write the password");
    child.wait_with_output().expect("wait for portcullis")
}

#[test]
fn the_printed_hash_is_argon2id_and_verifies_the_password() {
    let out = hash_password_with_stdin(b"correct horse battery\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let phc = stdout.trim_end();
    assert_eq!(stdout, format!("{phc}\n"), "one line, nothing else");
    assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");

    let parsed = PasswordHash::new(phc).expect("a PHC string");
    assert_eq!(parsed.algorithm, argon2::ARGON2ID_IDENT);
    let argon2 = Argon2::default();
    assert!(
        argon2
            .verify_password(b"correct horse battery", &parsed)
            .is_ok()
    );
    assert!(
        argon2
            .verify_password(b"correct horse battery\n", &parsed)
            .is_err(),
        "the trailing newline is not part of the password"
    );
}

#[test]
fn a_crlf_line_ending_is_not_part_of_the_password() {
    let out = hash_password_with_stdin(b" spaced pw \r\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let parsed = PasswordHash::new(stdout.trim_end()).unwrap();
    assert!(
        Argon2::default()
            .verify_password(b" spaced pw ", &parsed)
            .is_ok(),
        "surrounding spaces are kept, CR LF is dropped"
    );
}

#[test]
fn an_empty_password_is_refused() {
    for input in [&b""[..], b"\n", b"\r\n"] {
        let out = hash_password_with_stdin(input);
        assert!(!out.status.success(), "input {input:?} was accepted");
        assert!(out.stdout.is_empty());
        assert!(String::from_utf8_lossy(&out.stderr).contains("empty"));
    }
}
