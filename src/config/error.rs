//! A configuration problem, named by the key it concerns.

use std::fmt;

/// A configuration problem: the key it concerns and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The dotted key (`server.listen`, `clients[0].namespace`) or the file.
    pub key: String,
    /// What is wrong, in one line.
    pub message: String,
}

impl ConfigError {
    /// A problem with `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

impl std::error::Error for ConfigError {}
