//! TLS on both sides, with rustls and the ring provider.
//!
//! - Serving: `server.tls_cert_file` and `server.tls_key_file` (PEM) make
//!   the gateway speak HTTPS, HTTP/2 and HTTP/1.1 by ALPN.
//! - Upstream: the webpki roots, plus `upstream.ca_file` (PEM) for a private
//!   upstream's CA.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::ConfigError;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a PEM certificate chain; `key` names the config key in errors.
pub fn load_certs(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ConfigError::new(key, format!("cannot read {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(ConfigError::new(
            key,
            format!("{} holds no PEM certificate", path.display()),
        ));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, ConfigError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        ConfigError::new(
            "server.tls_key_file",
            format!("cannot read a PEM private key from {}: {e}", path.display()),
        )
    })
}

/// The serving configuration: HTTP/2 and HTTP/1.1 offered by ALPN.
pub fn server_config(
    cert_file: &Path,
    key_file: &Path,
) -> Result<Arc<rustls::ServerConfig>, ConfigError> {
    let certs = load_certs(cert_file, "server.tls_cert_file")?;
    let key = load_key(key_file)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::new("server.tls_cert_file", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            ConfigError::new(
                "server.tls_key_file",
                format!("does not match the certificate: {e}"),
            )
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The upstream client configuration: webpki roots plus `ca_file`.
pub fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, ConfigError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        for cert in load_certs(path, "upstream.ca_file")? {
            roots.add(cert).map_err(|e| {
                ConfigError::new(
                    "upstream.ca_file",
                    format!("not a usable CA certificate: {e}"),
                )
            })?;
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::new("upstream.ca_file", e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
