//! The login return-path validator (`auth_flow::redirect::RedirectPolicy::target`), on any
//! bytes as the requested return path.
//!
//! Properties from its module docs: it never panics; the answer is the default page, a
//! same-origin path (one leading `/`, not `//`, no `\`, only visible ASCII, no `.`/`..`/empty
//! segment left), or an `https://` URL on a listed host (exact, or under the wildcard entry)
//! with such a path; a browser resolving it against the gateway's page lands on the gateway or
//! a listed host, never elsewhere (the `url` crate is a WHATWG URL parser, as browsers use); no
//! token-carrying query parameter survives; and validating the answer again returns it
//! unchanged.

use portcullis::auth_flow::redirect::{HostPattern, RedirectPolicy};

const LISTED: &str = "app.example.com";
/// The wildcard entry `*.apps.example.com`: any host ending in this.
const UNDER: &str = ".apps.example.com";
const TOKEN_PARAMETERS: &[&str] = &[
    "access_token",
    "id_token",
    "refresh_token",
    "token",
    "code",
    "jwt",
];

fn check_relative(requested: &str, target: &str) {
    assert!(
        target.starts_with('/') && !target.starts_with("//"),
        "{requested:?} → {target:?}"
    );
    assert!(
        target.bytes().all(|b| b.is_ascii_graphic() && b != b'\\'),
        "{requested:?} → {target:?}"
    );
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let inner = path.strip_suffix('/').unwrap_or(path);
    for segment in inner.split('/').skip(1) {
        assert!(
            !matches!(segment, "" | "." | ".."),
            "{requested:?} → {target:?}"
        );
    }
    for pair in query.split('&') {
        let name = pair.split('=').next().unwrap_or("").to_ascii_lowercase();
        assert!(
            !TOKEN_PARAMETERS.contains(&name.as_str()),
            "{requested:?} → {target:?}"
        );
    }
}

fn main() {
    let policy = RedirectPolicy {
        default: "/".into(),
        hosts: vec![
            HostPattern::parse(LISTED).unwrap(),
            HostPattern::parse(&format!("*{UNDER}")).unwrap(),
        ],
    };
    let page = url::Url::parse("https://gw.example/auth/login").unwrap();
    afl::fuzz!(|data: &[u8]| {
        let Ok(requested) = std::str::from_utf8(data) else {
            return;
        };
        let target = policy.target(Some(requested));
        match target.strip_prefix("https://") {
            Some(rest) => {
                let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
                assert!(
                    host == LISTED || (host.ends_with(UNDER) && host.len() > UNDER.len()),
                    "{requested:?} → {target:?}"
                );
                check_relative(requested, path);
            }
            None => check_relative(requested, &target),
        }
        let resolved = page
            .join(&target)
            .unwrap_or_else(|e| panic!("{target:?}: {e}"));
        assert_eq!(resolved.scheme(), "https");
        let host = resolved.host_str().unwrap_or("");
        assert!(
            (host == "gw.example" || host == LISTED || host.ends_with(UNDER))
                && resolved.port().is_none()
                && resolved.username().is_empty(),
            "{requested:?} → {target:?} → {resolved}"
        );
        assert_eq!(
            policy.target(Some(&target)),
            target,
            "not idempotent: {requested:?}"
        );
    });
}
