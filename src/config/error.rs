//! [`ConfigError`]: why a config could not be loaded, naming the key and, where known, the line.

use std::path::PathBuf;

/// Why a config could not be loaded. The message names the key and, where the parser knows
/// it, the line.
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
    #[error("{key}: {message}")]
    Invalid {
        /// Dotted path of the offending key.
        key: String,
        /// What is wrong with it.
        message: String,
    },
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
}

/// The error for the value at `key`.
pub(super) fn invalid(key: impl Into<String>, message: impl std::fmt::Display) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.to_string(),
    }
}
