//! Shared end-to-end test harness: the simulated Mixpeek API and the real
//! gateway on ephemeral 127.0.0.1 ports, and a real HTTP client.
#![allow(dead_code)]

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use mixpeek_gateway::config::Config;
use mixpeek_gateway::server::{self, RunningGateway};
use mixpeek_gateway::sim::{self, SimConfig, SimHandle};
use sha2::{Digest, Sha256};

/// The organisation's real key, known only to the gateway and the sim.
pub const REAL_KEY: &str = "sk_real_4f1d9c0e7b2a";
/// The search team's gateway key: namespace ns_search, may also use staging.
pub const SEARCH_KEY: &str = "gw_search_8b3e51aa";
/// The ads team's gateway key: namespace ns_ads only.
pub const ADS_KEY: &str = "gw_ads_27c0d4f9";

/// A config TOML for `upstream`, with the two clients; `extra` is inserted
/// into the `[server]` and `[upstream]` tables via `server_extra` /
/// `upstream_extra`.
pub fn config_toml(upstream: &str, server_extra: &str, upstream_extra: &str) -> String {
    let digest = |key: &str| hex::encode(Sha256::digest(key.as_bytes()));
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
{server_extra}

[upstream]
base_url = "{upstream}"
api_key_env = "TEST_MIXPEEK_API_KEY"
{upstream_extra}

[[clients]]
name = "search-team"
key_sha256 = "{search}"
namespace = "ns_search"
allowed_namespaces = ["ns_search", "staging"]

[[clients]]
name = "ads-team"
key_sha256 = "{ads}"
namespace = "ns_ads"
allowed_namespaces = ["ns_ads", "staging"]
"#,
        search = digest(SEARCH_KEY),
        ads = digest(ADS_KEY),
    )
}

/// Parses a test config, with `TEST_MIXPEEK_API_KEY` = [`REAL_KEY`].
pub fn config(toml: &str) -> Config {
    Config::from_toml(toml, |name| {
        (name == "TEST_MIXPEEK_API_KEY").then(|| REAL_KEY.to_string())
    })
    .expect("test config is valid")
}

/// A sim whose SSE stream sends its first event at once and each further
/// one only when the returned gate gets a permit.
pub fn gated_sse_sim() -> (SimConfig, std::sync::Arc<tokio::sync::Semaphore>) {
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let mut sim = SimConfig::new(REAL_KEY);
    sim.sse_interval = Duration::ZERO;
    sim.sse_gate = Some(gate.clone());
    (sim, gate)
}

/// Starts the simulated API on an ephemeral port.
pub async fn start_sim(config: SimConfig) -> SimHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    sim::spawn(config, listener).await.unwrap()
}

/// A sim and a gateway in front of it.
pub struct Harness {
    pub sim: SimHandle,
    pub gateway: RunningGateway,
    pub client: TestClient,
}

impl Harness {
    /// Default sim, default gateway settings.
    pub async fn start() -> Self {
        Self::with(SimConfig::new(REAL_KEY), "", "").await
    }

    /// A sim built from `sim_config` and a gateway with extra config lines.
    pub async fn with(sim_config: SimConfig, server_extra: &str, upstream_extra: &str) -> Self {
        Self::with_config(sim_config, server_extra, upstream_extra, |_| {}).await
    }

    /// Like [`Harness::with`], with `edit` applied to the parsed config
    /// (e.g. to give a client a `rate_limit`).
    pub async fn with_config(
        sim_config: SimConfig,
        server_extra: &str,
        upstream_extra: &str,
        edit: impl FnOnce(&mut Config),
    ) -> Self {
        let sim = start_sim(sim_config).await;
        let mut config = config(&config_toml(&sim.base_url(), server_extra, upstream_extra));
        edit(&mut config);
        let gateway = server::spawn(config).await.unwrap();
        let client = TestClient::new(gateway.url());
        Self {
            sim,
            gateway,
            client,
        }
    }
}

/// A collected response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    /// A header as a string ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }

    /// Asserts the gateway's own error shape with this status and type.
    pub fn assert_error(&self, status: u16, kind: &str) {
        assert_eq!(self.status.as_u16(), status, "body: {:?}", self.body);
        let json = self.json();
        assert_eq!(json["success"], false);
        assert_eq!(json["status"], status);
        assert_eq!(json["error"]["type"], kind, "{json}");
    }
}

/// A real HTTP/1.1 client pointed at the gateway.
#[derive(Clone)]
pub struct TestClient {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl TestClient {
    pub fn new(base: String) -> Self {
        Self {
            base,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// A request builder for `path` on the gateway.
    pub fn request(&self, method: Method, path: &str) -> http::request::Builder {
        Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path))
    }

    /// Sends and collects.
    pub async fn send(&self, request: Request<Full<Bytes>>) -> Reply {
        let response = tokio::time::timeout(Duration::from_secs(20), self.client.request(request))
            .await
            .expect("gateway answered within 20 s")
            .expect("request reached the gateway");
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            headers,
            body,
        }
    }

    /// A streaming (SSE) retriever execution by the search team.
    pub fn sse_execute(&self) -> Request<Full<Bytes>> {
        self.request(Method::POST, "/v1/retrievers/execute")
            .header("authorization", format!("Bearer {SEARCH_KEY}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(
                br#"{"stream": true, "inputs": {"q": "cats"}}"#,
            )))
            .unwrap()
    }

    /// Sends the raw response without collecting its body.
    pub async fn send_streaming(
        &self,
        request: Request<Full<Bytes>>,
    ) -> http::Response<hyper::body::Incoming> {
        self.client.request(request).await.unwrap()
    }

    /// Opens `n` pooled connections (by `n` concurrent health checks), so a
    /// following burst reaches the gateway without connection set-up.
    pub async fn warm(&self, n: usize) {
        let checks = (0..n).map(|_| self.get("/_gateway/health", ""));
        for reply in futures_util::future::join_all(checks).await {
            assert_eq!(reply.status, StatusCode::OK);
        }
    }

    /// GET with a gateway key.
    pub async fn get(&self, path: &str, key: &str) -> Reply {
        let request = self
            .request(Method::GET, path)
            .header("authorization", format!("Bearer {key}"))
            .body(Full::default())
            .unwrap();
        self.send(request).await
    }

    /// POST of a body with a gateway key.
    pub async fn post(&self, path: &str, key: &str, body: impl Into<Bytes>) -> Reply {
        let request = self
            .request(Method::POST, path)
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json")
            .body(Full::new(body.into()))
            .unwrap();
        self.send(request).await
    }
}

/// Writes raw bytes to `addr` and reads until the peer closes (or 10 s).
pub async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Writes raw bytes to `addr`, half-closes (the client has sent all it
/// will), and reads until the peer closes (or 10 s).
pub async fn raw_exchange_half_closed(addr: std::net::SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Sends `GET /_gateway/health` on a raw keep-alive connection.
pub async fn ask_health(stream: &mut tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    stream
        .write_all(b"GET /_gateway/health HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
}

/// Reads the status line of the answer to [`ask_health`]: it must be 200.
pub async fn assert_health_answered(stream: &mut tokio::net::TcpStream) {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut head))
        .await
        .expect("every connection is answered")
        .unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
}

/// The `worker_connections` gauges of a metrics scrape, by worker label.
pub fn worker_connections(text: &str) -> Vec<(String, i64)> {
    text.lines()
        .filter_map(|line| line.strip_prefix("mixpeek_gateway_worker_connections{worker=\""))
        .filter_map(|rest| {
            let (worker, value) = rest.split_once("\"} ")?;
            Some((worker.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// A port on 127.0.0.1 with nothing listening on it.
pub async fn closed_port() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// The gateway binary running `serve` on a config file, with its standard
/// error followed line by line.
pub struct Process {
    pub child: std::process::Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Process {
    /// Starts `serve --config path [--listen listen]` with the test key in
    /// the environment, and waits for its "listening" line.
    pub async fn serve(path: &std::path::Path, listen: Option<std::net::SocketAddr>) -> Self {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_mixpeek-gateway"));
        command.args(["serve", "--config"]).arg(path);
        if let Some(listen) = listen {
            command.args(["--listen", &listen.to_string()]);
        }
        let mut child = command
            .env("TEST_MIXPEEK_API_KEY", REAL_KEY)
            .env("RUST_LOG", "info")
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel::<String>();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut process = Self { child, lines };
        assert!(
            process.wait_for("listening").await.is_some(),
            "gateway did not start"
        );
        process
    }

    /// The next log line containing `needle`, within 10 s.
    pub async fn wait_for(&mut self, needle: &str) -> Option<String> {
        let lines = &mut self.lines;
        let found = async {
            while let Some(line) = lines.recv().await {
                if line.contains(needle) {
                    return Some(line);
                }
            }
            None
        };
        tokio::time::timeout(Duration::from_secs(10), found)
            .await
            .ok()
            .flatten()
    }

    /// Every log line still to come, until standard error closes (10 s).
    pub async fn remaining_lines(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        let lines = &mut self.lines;
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(line) = lines.recv().await {
                out.push(line);
            }
        })
        .await;
        out
    }

    /// Sends a signal (`-TERM`, `-HUP`, …).
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit.
    pub async fn exit_code(mut self) -> Option<i32> {
        tokio::task::spawn_blocking(move || self.child.wait())
            .await
            .unwrap()
            .unwrap()
            .code()
    }
}
