//! The browser login flow in a real browser: headless Chromium driven by playwright-core
//! (`tests/e2e/login_flow.mjs`) against a gateway started here, and the same login through
//! nginx in front of a backend, asking the gateway with forward-auth
//! (`tests/e2e/forward_auth.mjs`, nginx from `examples/forward-auth/nginx`). See the scripts
//! for the steps.
//!
//! Needs Debian's `chromium` (`/usr/bin/chromium`), Node.js and `npm ci --prefix tests/e2e`
//! (with `PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1`), and nginx for the second; `.ci/run` installs
//! them. A missing piece is a
//! failure, not a skip: a skipped browser test would pass CI without testing anything.
//!
//! The screenshots go to a temporary directory; set `PORTCULLIS_UPDATE_SCREENSHOTS=1` to write
//! `docs/screenshots/login.png` and `sessions.png` instead (they carry times, so a run would
//! otherwise change tracked files).

use crate::common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::auth::{ALICE_PASSWORD, AuthSetup};

const CHROMIUM: &str = "/usr/bin/chromium";
/// The script gives up after 100 s on its own; this is the backstop.
const TIMEOUT: Duration = Duration::from_secs(120);

fn e2e_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e")
}

/// Panics with what to install when the browser test cannot run.
fn require_tools() {
    let node = Command::new("node").arg("--version").output();
    let version = node
        .as_ref()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    let major = version
        .as_deref()
        .and_then(|v| v.strip_prefix('v')?.split('.').next()?.parse::<u32>().ok());
    assert!(
        major.is_some_and(|m| m >= 20),
        "the browser test needs Node.js 20 or newer as `node` on PATH, with npm \
         (found: {version:?}; {node:?})"
    );
    assert!(
        Path::new(CHROMIUM).exists(),
        "the browser test needs Debian's Chromium at {CHROMIUM}: apt-get install chromium"
    );
    assert!(
        e2e_dir().join("node_modules/playwright-core").is_dir(),
        "the browser test needs playwright-core: \
         PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --prefix tests/e2e"
    );
}

/// What a finished (or killed) child printed.
struct Outcome {
    status: Option<ExitStatus>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

/// Runs `command` to completion, killing it after `timeout`. Blocking: call it off the runtime
/// the gateway runs on.
fn run_with_timeout(mut command: Command, timeout: Duration) -> Outcome {
    let started = Instant::now();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node starts");
    // Drain both pipes on their own threads so a chatty child never blocks on a full pipe.
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for node") {
            break Some(status);
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        // node and the browser it drives are external processes: only asking again sees
        // that they ended.
        std::thread::sleep(Duration::from_millis(100));
    };
    Outcome {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
        elapsed: started.elapsed(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_browser_signs_in_refreshes_manages_sessions_and_logs_out() {
    require_tools();
    let gw = AuthSetup {
        access_ttl: "3s".into(),
        extra: "tokens: { leeway: 0s }".into(),
        ..AuthSetup::default()
    }
    .start()
    .await;
    // `localhost`, not 127.0.0.1: Chromium treats http://localhost as a secure context, so it
    // stores the gateway's `Secure` and `__Host-` cookies over plain HTTP (the script checks).
    let base = format!("http://localhost:{}", gw.addr.port());
    let screenshots = if std::env::var_os("PORTCULLIS_UPDATE_SCREENSHOTS").is_some() {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/screenshots")
    } else {
        gw.dir.path().join("screenshots")
    };

    let mut node = Command::new("node");
    node.arg(e2e_dir().join("login_flow.mjs"))
        .current_dir(e2e_dir())
        .env("PORTCULLIS_E2E_BASE_URL", &base)
        .env("PORTCULLIS_E2E_USER", "alice")
        .env("PORTCULLIS_E2E_PASSWORD", ALICE_PASSWORD)
        .env("PORTCULLIS_E2E_SCREENSHOTS", &screenshots);
    let outcome = tokio::task::spawn_blocking(move || run_with_timeout(node, TIMEOUT))
        .await
        .unwrap();

    let report = format!(
        "--- stdout ---\n{}\n--- stderr ---\n{}",
        outcome.stdout, outcome.stderr
    );
    let audit = || std::fs::read_to_string(gw.audit_path()).unwrap_or_default();
    match outcome.status {
        None => panic!(
            "the browser flow was killed after {:?}\n{report}\n--- audit ---\n{}",
            outcome.elapsed,
            audit()
        ),
        Some(status) => assert!(
            status.success(),
            "the browser flow failed ({status})\n{report}\n--- audit ---\n{}",
            audit()
        ),
    }
    println!("{report}");
    assert!(screenshots.join("login.png").is_file());
    assert!(screenshots.join("sessions.png").is_file());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_browser_signs_in_and_out_through_nginx_in_front_of_a_backend() {
    require_tools();
    let stack =
        crate::forward_auth_proxies::Stack::start(crate::forward_auth_proxies::Kind::Nginx).await;
    // `localhost`: a secure context for Chromium, which then keeps the `__Host-` cookies.
    let base = format!("http://localhost:{}", stack.proxy.port);
    let mut node = Command::new("node");
    node.arg(e2e_dir().join("forward_auth.mjs"))
        .current_dir(e2e_dir())
        .env("PORTCULLIS_E2E_BASE_URL", &base)
        .env("PORTCULLIS_E2E_USER", "alice")
        .env("PORTCULLIS_E2E_PASSWORD", ALICE_PASSWORD);
    let outcome = tokio::task::spawn_blocking(move || run_with_timeout(node, TIMEOUT))
        .await
        .unwrap();
    let report = format!(
        "--- stdout ---\n{}\n--- stderr ---\n{}\n--- nginx ---\n{}",
        outcome.stdout,
        outcome.stderr,
        stack.proxy.log()
    );
    match outcome.status {
        None => panic!(
            "the browser flow was killed after {:?}\n{report}",
            outcome.elapsed
        ),
        Some(status) => assert!(
            status.success(),
            "the browser flow failed ({status})\n{report}"
        ),
    }
    println!("{report}");
    assert!(
        stack.gw.upstream.count() >= 1,
        "the backend served the protected page"
    );
}
