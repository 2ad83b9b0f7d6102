//! One request through the simulator, top to bottom: read the body, classify
//! the route, count and log it, check the API key, decide the namespace,
//! wait the configured latency, then answer.

use std::sync::Arc;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::auth::authorized;
use super::config::SimConfig;
use super::namespace::namespace;
use super::respond::{self, SimBody};
use super::route::Route;
use super::state::{SeenRequest, SimState};
use super::{echo, execute, executions, list};

/// Largest request body the simulator buffers.
const MAX_BODY: usize = 64 * 1024 * 1024;

/// The simulator: its config and its state, shared by all connections.
#[derive(Debug)]
pub(crate) struct Sim {
    pub(crate) config: SimConfig,
    pub(crate) state: SimState,
}

impl Sim {
    pub(crate) fn new(config: SimConfig) -> Arc<Self> {
        Arc::new(Self {
            config,
            state: SimState::default(),
        })
    }

    /// Answers one request. Never fails: every problem is an HTTP answer.
    pub(crate) async fn handle<B>(&self, request: Request<B>) -> Response<SimBody>
    where
        B: Body,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let (parts, body) = request.into_parts();
        // The simulator's own introspection, for benchmark scripts that run
        // it as a separate process; not part of the simulated API, not counted.
        if parts.method == http::Method::GET && parts.uri.path() == "/_sim/stats" {
            return respond::json(http::StatusCode::OK, &self.state.stats());
        }
        let route = Route::classify(&parts.method, parts.uri.path());
        self.state.count_request(route.class());

        let body = Limited::new(body, MAX_BODY)
            .collect()
            .await
            .map(|b| b.to_bytes());
        self.state.record(SeenRequest {
            method: parts.method.clone(),
            path_and_query: parts
                .uri
                .path_and_query()
                .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned()),
            headers: parts.headers.clone(),
            body: body.as_ref().cloned().unwrap_or_else(|_| Bytes::new()),
        });

        let response = match body {
            Err(error) => body_error(error.is::<LengthLimitError>()),
            Ok(_) if !authorized(&parts.headers, &self.config.api_key) => respond::unauthorized(),
            Ok(body) => match self.config.throttle.take() {
                Some(seconds) => respond::too_many_requests(seconds),
                None => self.answer(&parts, route, body),
            },
        };

        if !self.config.latency.is_zero() {
            tokio::time::sleep(self.config.latency).await;
        }
        response
    }

    /// The answer of an authorized request.
    fn answer(&self, parts: &http::request::Parts, route: Route, body: Bytes) -> Response<SimBody> {
        let query = parts.uri.query();
        let ns = namespace(&parts.headers, query);
        let config = &self.config;
        let state = &self.state;
        match route {
            Route::AdhocDetail { id } => {
                executions::respond(state, config.complete_after, &ns, None, &id)
            }
            Route::RetrieverDetail { retriever_id, id } => {
                executions::respond(state, config.complete_after, &ns, Some(&retriever_id), &id)
            }
            Route::AdhocList => list::respond(&ns, None, query, &body),
            Route::RetrieverList { retriever_id } => {
                list::respond(&ns, Some(&retriever_id), query, &body)
            }
            Route::AdhocExecute => execute::respond(state, config, &ns, None, &body),
            Route::RetrieverExecute { retriever_id } => {
                execute::respond(state, config, &ns, Some(&retriever_id), &body)
            }
            Route::Echo => echo::respond(
                &parts.method,
                &parts.uri,
                parts.headers.get(CONTENT_TYPE),
                &ns,
                body,
            ),
        }
    }
}

fn body_error(too_large: bool) -> Response<SimBody> {
    if too_large {
        respond::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Request body too large",
            "PayloadTooLargeError",
        )
    } else {
        respond::error(
            StatusCode::BAD_REQUEST,
            "Could not read request body",
            "BadRequestError",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;
    use http_body_util::Full;
    use serde_json::Value;
    use std::time::Duration;

    const KEY: &str = "sk_sim_test";

    fn request(
        method: Method,
        uri: &str,
        namespace: Option<&str>,
        body: &str,
    ) -> Request<Full<Bytes>> {
        let mut builder = Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {KEY}"));
        if let Some(ns) = namespace {
            builder = builder.header("x-namespace", ns);
        }
        builder
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap()
    }

    async fn json(response: Response<SimBody>) -> Value {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn detail_per_namespace() {
        let sim = Sim::new(SimConfig::new(KEY));
        let uri = "/v1/retrievers/executions/exec_7";
        let a = json(
            sim.handle(request(Method::GET, uri, Some("ns_a"), ""))
                .await,
        )
        .await;
        let b = json(
            sim.handle(request(
                Method::GET,
                &format!("{uri}?namespace=ns_b"),
                None,
                "",
            ))
            .await,
        )
        .await;
        assert_eq!(a["status"], "completed");
        assert_ne!(a["inputs_hash"], b["inputs_hash"]);
        assert!(b["query_summary"].as_str().unwrap().contains("ns_b"));
        assert_eq!(sim.state.count("GET /v1/retrievers/executions/{id}"), 2);
    }

    #[tokio::test]
    async fn throttle_answers_the_next_request_429_once() {
        let config = SimConfig::new(KEY);
        let throttle = config.throttle.clone();
        let sim = Sim::new(config);
        let uri = "/v1/retrievers/executions/exec_1";
        throttle.next_with_retry_after(2);
        let limited = sim.handle(request(Method::GET, uri, None, "")).await;
        assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(limited.headers()["retry-after"], "2");
        assert_eq!(json(limited).await["error"]["type"], "RateLimitError");
        let next = sim.handle(request(Method::GET, uri, None, "")).await;
        assert_eq!(next.status(), StatusCode::OK);
        assert_eq!(sim.state.count("GET /v1/retrievers/executions/{id}"), 2);
    }

    #[tokio::test]
    async fn unauthorized_is_counted_under_its_route() {
        let sim = Sim::new(SimConfig::new(KEY));
        let request = Request::post("/v1/retrievers/executions/list")
            .header("authorization", "Bearer wrong")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = sim.handle(request).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(sim.state.count("POST /v1/retrievers/executions/list"), 1);
        assert_eq!(sim.state.total(), 1);
        assert_eq!(sim.state.requests().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn lifecycle_over_time() {
        let mut config = SimConfig::new(KEY);
        config.complete_after = Duration::from_secs(3);
        let sim = Sim::new(config);
        let status = |id: &'static str, ns: &'static str| {
            let sim = sim.clone();
            async move {
                let uri = format!("/v1/retrievers/ret_1/executions/{id}");
                json(sim.handle(request(Method::GET, &uri, Some(ns), "")).await).await["status"]
                    .clone()
            }
        };
        assert_eq!(status("exec_fail_1", "a").await, "pending");
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(status("exec_fail_1", "a").await, "processing");
        assert_eq!(status("exec_fail_1", "b").await, "pending");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(status("exec_fail_1", "a").await, "failed");
        let missing = sim
            .handle(request(
                Method::GET,
                "/v1/retrievers/r/executions/x1",
                None,
                "",
            ))
            .await;
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn list_and_echo() {
        let sim = Sim::new(SimConfig::new(KEY));
        let list = sim
            .handle(request(
                Method::POST,
                "/v1/retrievers/r/executions/list?limit=2",
                None,
                r#"{"status":"completed"}"#,
            ))
            .await;
        let list = json(list).await;
        assert_eq!(list["results"].as_array().unwrap().len(), 2);
        assert_eq!(list["results"][0]["retriever_id"], "r");
        let echo = sim
            .handle(request(
                Method::PUT,
                "/v1/things/%41?q=1",
                Some("ns_e"),
                "payload",
            ))
            .await;
        assert_eq!(echo.headers()["x-echo-namespace"], "ns_e");
        assert_eq!(echo.headers()["x-echo-path"], "/v1/things/%41");
        assert_eq!(sim.state.count("other"), 1);
        let seen = sim.state.requests();
        assert_eq!(seen[1].path_and_query, "/v1/things/%41?q=1");
        assert_eq!(seen[1].body, "payload");
    }
}
