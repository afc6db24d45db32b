//! The real OpenID Provider the federation suites run: `oidc-provider` from npm, started by
//! `tests/oidc/provider.mjs` on loopback, one process per test, stopped by its pid.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::wait_for;

/// The provider's npm project (`tests/oidc`, pinned by its lockfile).
pub fn project() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc")
}

/// `npm ci` once per test binary when `oidc-provider` is not installed (`.ci/run` installs it
/// beforehand).
pub fn require_provider() {
    static INSTALL: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut done = INSTALL.lock().unwrap();
    if *done || project().join("node_modules/oidc-provider").is_dir() {
        *done = true;
        return;
    }
    let status = Command::new("npm")
        .args([
            "ci",
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
            "--prefix",
        ])
        .arg(project())
        .status();
    assert!(
        status.as_ref().is_ok_and(|s| s.success()),
        "the OpenID Provider tests need Node.js 20+ and npm: npm ci --prefix tests/oidc ({status:?})"
    );
    *done = true;
}

/// Starts `provider.mjs` with `args`, its output in `out`, and waits (it is an external process)
/// until it says `listening <issuer>`: the child and that issuer.
pub fn spawn_provider(args: &[String], out: &Path) -> (Child, String) {
    require_provider();
    let child = Command::new("node")
        .arg(project().join("provider.mjs"))
        .args(args)
        .stdout(Stdio::from(std::fs::File::create(out).unwrap()))
        .stderr(Stdio::null())
        .spawn()
        .expect("node");
    let mut issuer = String::new();
    let up = wait_for(Duration::from_secs(20), || {
        let text = std::fs::read_to_string(out).unwrap_or_default();
        match text.lines().find_map(|l| l.strip_prefix("listening ")) {
            Some(found) => {
                issuer = found.to_owned();
                true
            }
            None => false,
        }
    });
    assert!(up, "the OpenID Provider did not start");
    (child, issuer)
}
