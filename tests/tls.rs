//! TLS on both sides, with certificates made at test time: a client speaks
//! HTTPS (HTTP/1.1 and HTTP/2 by ALPN) to the gateway, and the gateway
//! speaks HTTPS to the simulated upstream, trusting it through
//! `upstream.ca_file`.

mod support;

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mixpeek_gateway::sim::SimConfig;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use support::*;

struct Pki {
    dir: PathBuf,
    ca_pem: String,
}

impl Pki {
    /// A CA and a server certificate for 127.0.0.1 / localhost, as files.
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("mixpeek-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
        Self {
            dir,
            ca_pem: ca.pem(),
        }
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }

    fn client_config(&self) -> rustls::ClientConfig {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
    }

    /// Terminates TLS on an ephemeral port and forwards the bytes to `backend`.
    async fn terminate_in_front_of(&self, backend: std::net::SocketAddr) -> std::net::SocketAddr {
        let config = mixpeek_gateway::config::tls::server_config(
            &self.dir.join("cert.pem"),
            &self.dir.join("key.pem"),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let Ok(mut plain) = tokio::net::TcpStream::connect(backend).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        addr
    }
}

#[tokio::test]
async fn clients_speak_https_to_the_gateway_with_h2_and_http1() {
    let pki = Pki::new("serve");
    let sim = start_sim(SimConfig::new(REAL_KEY)).await;
    let extra = format!(
        "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"",
        pki.path("cert.pem"),
        pki.path("key.pem")
    );
    let gateway = mixpeek_gateway::server::spawn(config(&config_toml(&sim.base_url(), &extra, "")))
        .await
        .unwrap();
    assert!(gateway.url().starts_with("https://"));
    for (alpn_h2, expected) in [(true, Version::HTTP_2), (false, Version::HTTP_11)] {
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(pki.client_config())
            .https_only();
        let connector = if alpn_h2 {
            builder.enable_http2().build()
        } else {
            builder.enable_http1().build()
        };
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
        let request = Request::get(format!(
            "https://127.0.0.1:{}/v1/retrievers/executions/exec_1",
            gateway.addr.port()
        ))
        .header("authorization", format!("Bearer {SEARCH_KEY}"))
        .body(Full::default())
        .unwrap();
        let response = client.request(request).await.unwrap();
        assert_eq!(response.version(), expected);
        assert_eq!(response.status(), 200);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert!(String::from_utf8_lossy(&body).contains("exec_1"));
    }
    // Plain HTTP to the TLS port gets nowhere.
    let plain = raw_exchange(
        gateway.addr,
        b"GET /_gateway/health HTTP/1.1\r\nhost: x\r\n\r\n",
    )
    .await;
    assert!(!plain.contains("200 OK"));
}

#[tokio::test]
async fn gateway_speaks_https_to_upstream_trusting_ca_file() {
    let pki = Pki::new("upstream");
    let sim = start_sim(SimConfig::new(REAL_KEY)).await;
    let tls_upstream = pki.terminate_in_front_of(sim.addr).await;
    let base = format!("https://127.0.0.1:{}", tls_upstream.port());

    let trusted = format!("ca_file = \"{}\"", pki.path("ca.pem"));
    let gateway = mixpeek_gateway::server::spawn(config(&config_toml(&base, "", &trusted)))
        .await
        .unwrap();
    let client = TestClient::new(gateway.url());
    let reply = client
        .get("/v1/retrievers/executions/exec_2", SEARCH_KEY)
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["execution_id"], "exec_2");
    assert_eq!(sim.count("GET /v1/retrievers/executions/{id}"), 1);

    // Without the CA the upstream is not trusted: 502, nothing reaches it.
    let untrusted = mixpeek_gateway::server::spawn(config(&config_toml(&base, "", "")))
        .await
        .unwrap();
    let client = TestClient::new(untrusted.url());
    client
        .get("/v1/retrievers/executions/exec_3", SEARCH_KEY)
        .await
        .assert_error(502, "bad_gateway");
    assert_eq!(sim.count("GET /v1/retrievers/executions/{id}"), 1);
}

#[test]
fn unreadable_tls_files_are_config_errors_naming_the_key() {
    let err = mixpeek_gateway::config::Config::from_toml(
        &config_toml(
            "http://127.0.0.1:9",
            "tls_cert_file = \"/nonexistent/cert.pem\"\ntls_key_file = \"/nonexistent/key.pem\"",
            "",
        ),
        |_| Some(REAL_KEY.into()),
    )
    .unwrap_err();
    assert_eq!(err.key, "server.tls_cert_file");
    let err = mixpeek_gateway::config::Config::from_toml(
        &config_toml(
            "http://127.0.0.1:9",
            "",
            "ca_file = \"/nonexistent/ca.pem\"",
        ),
        |_| Some(REAL_KEY.into()),
    )
    .unwrap_err();
    assert_eq!(err.key, "upstream.ca_file");
}
