//! Serving the simulator on a listener: HTTP/1.1 and h2c on the same port,
//! in the background ([`spawn`]) or in the foreground until ctrl-c ([`run`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

use super::app::Sim;
use super::config::SimConfig;
use super::state::SeenRequest;

/// How long in-flight requests may finish after shutdown before their
/// connections are closed anyway (a gated SSE stream may never finish).
const GRACE: Duration = Duration::from_secs(1);

/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop
/// does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// A running simulator. Dropping it stops the server too, without waiting.
#[derive(Debug)]
pub struct SimHandle {
    /// The address the simulator listens on.
    pub addr: SocketAddr,
    sim: Arc<Sim>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl SimHandle {
    /// `http://<addr>`, e.g. `http://127.0.0.1:40123`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests seen for one route class, 401s included. Keys:
    /// `"GET /v1/retrievers/executions/{id}"`,
    /// `"GET /v1/retrievers/{retriever_id}/executions/{id}"`,
    /// `"POST /v1/retrievers/executions/list"`,
    /// `"POST /v1/retrievers/{retriever_id}/executions/list"`,
    /// `"POST /v1/retrievers/execute"`,
    /// `"POST /v1/retrievers/{retriever_id}/execute"` and `"other"`
    /// (echoed). Unknown keys count 0.
    pub fn count(&self, route: &str) -> u64 {
        self.sim.state.count(route)
    }

    /// All requests seen.
    pub fn total(&self) -> u64 {
        self.sim.state.total()
    }

    /// The last 1000 requests seen, oldest first.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.sim.state.requests()
    }

    /// Stops accepting, lets in-flight requests finish for up to a second,
    /// then closes every connection.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Serves the simulator on an already bound listener in a background task.
pub async fn spawn(config: SimConfig, listener: TcpListener) -> std::io::Result<SimHandle> {
    let addr = listener.local_addr()?;
    let sim = Sim::new(config);
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(serve(listener, sim.clone(), stopped));
    Ok(SimHandle {
        addr,
        sim,
        stop: Some(stop),
        task: Some(task),
    })
}

/// Serves the simulator in the foreground until ctrl-c.
pub async fn run(config: SimConfig, listener: TcpListener) -> std::io::Result<()> {
    let handle = spawn(config, listener).await?;
    tracing::info!(addr = %handle.addr, "simulated Mixpeek API listening");
    let signal = tokio::signal::ctrl_c().await;
    tracing::info!("simulated Mixpeek API shutting down");
    handle.shutdown().await;
    signal
}

/// The accept loop; returns once `stopped` fires (or its sender is dropped)
/// and the connections are closed.
async fn serve(listener: TcpListener, sim: Arc<Sim>, mut stopped: oneshot::Receiver<()>) {
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    // Owning the connection tasks means dropping this set closes them.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let sim = sim.clone();
                    let service = service_fn(move |request| {
                        let sim = sim.clone();
                        async move { Ok::<_, Infallible>(sim.handle(request).await) }
                    });
                    let connection = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .into_owned();
                    let connection = graceful.watch(connection);
                    connections.spawn(async move {
                        if let Err(error) = connection.await {
                            tracing::debug!(%peer, %error, "sim connection ended with an error");
                        }
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, "sim accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    if tokio::time::timeout(GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("sim closing connections still busy after the grace period");
    }
    connections.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::{Request, StatusCode};
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::{connect::HttpConnector, Client};
    use tokio::sync::Semaphore;

    const KEY: &str = "sk_socket_test";

    async fn start(config: SimConfig) -> SimHandle {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        spawn(config, listener).await.unwrap()
    }

    fn client(http2: bool) -> Client<HttpConnector, Full<Bytes>> {
        Client::builder(TokioExecutor::new())
            .http2_only(http2)
            .build_http()
    }

    fn request(method: &str, url: String, body: &'static str) -> Request<Full<Bytes>> {
        Request::builder()
            .method(method)
            .uri(url)
            .header("authorization", format!("Bearer {KEY}"))
            .header("x-namespace", "ns_sock")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    }

    #[tokio::test]
    async fn serves_http1_and_h2c() {
        let sim = start(SimConfig::new(KEY)).await;
        for http2 in [false, true] {
            let url = format!("{}/v1/retrievers/executions/exec_1", sim.base_url());
            let response = client(http2)
                .request(request("GET", url, ""))
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.headers()["content-type"], "application/json");
            assert!(response.headers().get("cache-control").is_none());
            let body = response.into_body().collect().await.unwrap().to_bytes();
            let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(value["execution_mode"], "adhoc");
            assert!(value["query_summary"].as_str().unwrap().contains("ns_sock"));
        }
        let unauthenticated = Request::get(format!("{}/anything", sim.base_url()))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = client(false).request(unauthenticated).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

        assert_eq!(sim.count("GET /v1/retrievers/executions/{id}"), 2);
        assert_eq!(sim.count("other"), 1);
        assert_eq!(sim.total(), 3);
        assert_eq!(sim.requests()[2].path_and_query, "/anything");
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn streams_events_as_produced() {
        let gate = Arc::new(Semaphore::new(0));
        let mut config = SimConfig::new(KEY);
        config.sse_interval = Duration::ZERO;
        config.sse_gate = Some(gate.clone());
        let sim = start(config).await;
        let url = format!("{}/v1/retrievers/ret_1/execute", sim.base_url());
        let response = client(false)
            .request(request("POST", url, r#"{"stream":true}"#))
            .await
            .unwrap();
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let mut body = response.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert!(first.starts_with(b"event: stage\n"), "{first:?}");
        // The rest is held back by the gate until the test releases it.
        gate.add_permits(4);
        let rest = body.collect().await.unwrap().to_bytes();
        let text = String::from_utf8(rest.to_vec()).unwrap();
        assert_eq!(text.matches("event: stage\n").count(), 3);
        assert!(text.ends_with("\n\n") && text.contains("event: complete\n"));
        assert_eq!(sim.count("POST /v1/retrievers/{retriever_id}/execute"), 1);
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn shutdown_closes_the_port() {
        let sim = start(SimConfig::new(KEY)).await;
        let addr = sim.addr;
        sim.shutdown().await;
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }
}
