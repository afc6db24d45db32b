//! [`ConfigError`]: why a config could not be loaded, naming the key and, where known, the line,
//! with the underlying error (an OS error, a key that does not parse, a bad duration) kept as
//! its [`source`](std::error::Error::source) for callers that act on it.

use std::path::PathBuf;

/// What made a value unacceptable: the concrete error where there is one (an
/// [`std::io::Error`] inside a [`ReadError`], a [`crate::keys::KeyError`], a
/// [`super::units::UnitError`], …), or the rule the value breaks.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

/// Why a config could not be loaded. The message names the key and, where the parser knows
/// it, the line; it also says the cause, because an operator reads one line and fixes the file
/// from it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file itself could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// YAML syntax, an unknown key, or a value of the wrong type.
    #[error("{0}")]
    Parse(#[from] serde_yaml::Error),
    /// A value that parses but is not acceptable.
    #[error("{key}: {cause}{}", at_line(*line))]
    Invalid {
        /// Dotted path of the offending key.
        key: String,
        /// The line the key is written on, when it could be found.
        line: Option<usize>,
        /// What is wrong with it.
        #[source]
        cause: Cause,
    },
}

fn at_line(line: Option<usize>) -> String {
    line.map(|l| format!(" at line {l}")).unwrap_or_default()
}

impl ConfigError {
    /// Where the problem is, without the offending value (for the audit trail): the key path,
    /// or the line and column of a parse error.
    pub fn location(&self) -> String {
        match self {
            ConfigError::Read { .. } => "file".to_owned(),
            ConfigError::Parse(e) => e
                .location()
                .map(|l| format!("line {} column {}", l.line(), l.column()))
                .unwrap_or_else(|| "syntax".to_owned()),
            ConfigError::Invalid { key, .. } => key.clone(),
        }
    }

    /// The error of a check written for a top-level key, found under `section` (a key like
    /// `trusted_proxies[0]` becomes `forward_auth[1].trusted_proxies[0]`).
    pub(super) fn within(self, section: &str) -> Self {
        match self {
            ConfigError::Invalid { key, line, cause } => ConfigError::Invalid {
                key: format!("{section}.{key}"),
                line,
                cause,
            },
            other => other,
        }
    }

    /// The error with the line of its key in `yaml` (the checks after parsing know the key,
    /// the text knows its line).
    pub(super) fn with_line_in(self, yaml: &str) -> Self {
        match self {
            ConfigError::Invalid {
                key,
                line: None,
                cause,
            } => ConfigError::Invalid {
                line: super::units::line_of(yaml, &key),
                key,
                cause,
            },
            other => other,
        }
    }
}

/// The error for the value at `key`: `cause` is an error, or the rule broken (`&str`, `String`).
pub(super) fn invalid(key: impl Into<String>, cause: impl Into<Cause>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        line: None,
        cause: cause.into(),
    }
}

/// A file a config value names could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {}: {source}", path.display())]
pub struct ReadError {
    /// The file, resolved against the config's directory.
    pub path: PathBuf,
    /// The OS error.
    #[source]
    pub source: std::io::Error,
}

/// An error with what it was found in (the value, the file), for causes whose own message
/// does not say.
#[derive(Debug, thiserror::Error)]
#[error("{context}: {source}")]
pub struct ContextError {
    /// What the error concerns, as the message's first part (`` `/a/%zz` ``, `cannot read
    /// certificate c.pem`).
    pub context: String,
    /// The error.
    #[source]
    pub source: Cause,
}

impl ContextError {
    /// `source`, found in `context`.
    pub fn new(context: impl Into<String>, source: impl Into<Cause>) -> Self {
        Self {
            context: context.into(),
            source: source.into(),
        }
    }
}
