//! The gateway's configuration: the TOML file of the public interface, read
//! once at startup and validated into typed values.
//!
//! Every problem is reported as one [`ConfigError`] that names the key
//! (`server.listen`, `clients[1].key_sha256`, …) so that an operator can fix
//! it from a single log line. Unknown keys are errors, never ignored.
//!
//! ```
//! use mixpeek_gateway::config::Config;
//! let toml = r#"
//! [upstream]
//! api_key_env = "MY_KEY"
//! [[clients]]
//! name = "search-team"
//! key_sha256 = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
//! namespace = "ns_search"
//! "#;
//! let config = Config::from_toml(toml, |name| (name == "MY_KEY").then(|| "sk_live".to_string())).unwrap();
//! assert_eq!(config.clients[0].name, "search-team");
//! ```
//!
//! Split by what each part is: `raw` (the file as written, serde
//! types with the defaults), `validate` (raw → typed, every check),
//! [`types`] (the typed config the gateway runs on), [`error`] (the one
//! error type) and [`tls`] (the certificate files the config names, read
//! and checked when it loads).

pub mod error;
mod raw;
pub mod tls;
pub mod types;
mod validate;

pub use error::ConfigError;
pub use types::*;
