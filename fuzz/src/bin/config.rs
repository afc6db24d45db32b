//! `gateway.yaml` loading (`config::Config::from_yaml`), on any bytes as the file's text, with
//! relative paths resolved against the repository root (where the seeds' key files are).
//!
//! Properties from the config module's docs: it never panics; a refusal names something — a
//! non-empty message, and for a value that parses but is refused, the key it is at; an
//! accepted config has at least one listener.
//!
//! Harness guard: texts naming `/dev/`, `/proc/` or `/sys/` are skipped, so that a key path
//! mutated into `/dev/zero` or `/dev/stdin` measures the machine, not the parser.

use portcullis::config::{Config, ConfigError};

fn main() {
    let base = portcullis_fuzz::repo_root();
    afl::fuzz!(|data: &[u8]| {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        if ["/dev/", "/proc/", "/sys/"]
            .iter()
            .any(|p| text.contains(p))
        {
            return;
        }
        match Config::from_yaml(text, &base) {
            Ok(config) => assert!(!config.listeners.is_empty()),
            Err(err) => {
                assert!(!err.to_string().trim().is_empty(), "{err:?}");
                assert!(!err.location().is_empty(), "{err:?}");
                if let ConfigError::Invalid { key, cause, .. } = &err {
                    assert!(!key.is_empty() && !cause.to_string().is_empty(), "{err:?}");
                }
            }
        }
    });
}
