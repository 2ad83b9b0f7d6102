//! Every row of the HTTP behaviour table of the interface, end to end: the
//! real gateway in front of the simulated Mixpeek API, counted at the sim.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http_body_util::Full;
use mixpeek_gateway::sim::SimConfig;
use support::*;

const ECHO: &str = "other";

#[tokio::test]
async fn no_key_wrong_key_and_malformed_key_are_401_and_not_forwarded() {
    let h = Harness::start().await;
    let no_key = h
        .client
        .send(
            h.client
                .request(Method::GET, "/v1/collections")
                .body(Full::default())
                .unwrap(),
        )
        .await;
    no_key.assert_error(401, "unauthorized");
    assert!(no_key.header("www-authenticate").starts_with("Bearer"));
    h.client
        .get("/v1/collections", "gw_not_a_key")
        .await
        .assert_error(401, "unauthorized");
    // The real key is not a gateway key either.
    h.client
        .get("/v1/collections", REAL_KEY)
        .await
        .assert_error(401, "unauthorized");
    for malformed in [
        format!("Basic {SEARCH_KEY}"),
        SEARCH_KEY.to_string(),
        "Bearer".into(),
    ] {
        let request = h
            .client
            .request(Method::GET, "/v1/collections")
            .header("authorization", malformed)
            .body(Full::default())
            .unwrap();
        h.client
            .send(request)
            .await
            .assert_error(401, "unauthorized");
    }
    assert_eq!(h.sim.total(), 0, "nothing may be forwarded");
}

#[tokio::test]
async fn two_authorization_headers_are_400() {
    let h = Harness::start().await;
    let request = h
        .client
        .request(Method::GET, "/v1/collections")
        .header("authorization", format!("Bearer {SEARCH_KEY}"))
        .header("authorization", format!("Bearer {ADS_KEY}"))
        .body(Full::default())
        .unwrap();
    h.client
        .send(request)
        .await
        .assert_error(400, "bad_request");
    assert_eq!(h.sim.total(), 0);
}

#[tokio::test]
async fn namespace_outside_allowed_is_403_by_header_and_by_query() {
    let h = Harness::start().await;
    let request = h
        .client
        .request(Method::GET, "/v1/collections")
        .header("authorization", format!("Bearer {SEARCH_KEY}"))
        .header("x-namespace", "ns_ads")
        .body(Full::default())
        .unwrap();
    let reply = h.client.send(request).await;
    reply.assert_error(403, "forbidden");
    assert!(reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("search-team"));
    h.client
        .get("/v1/collections?namespace=ns_ads", SEARCH_KEY)
        .await
        .assert_error(403, "forbidden");
    // The ads team may not use the search team's namespace either.
    h.client
        .get("/v1/collections?limit=2&namespace=ns_search", ADS_KEY)
        .await
        .assert_error(403, "forbidden");
    assert_eq!(h.sim.total(), 0);
}

#[tokio::test]
async fn a_look_alike_of_a_gateway_header_never_reaches_upstream() {
    let h = Harness::start().await;
    let request = h
        .client
        .request(Method::GET, "/v1/collections")
        .header("authorization", format!("Bearer {SEARCH_KEY}"))
        .header("x_namespace", "ns_ads")
        .header("X_Request_Id", "forged-id")
        .header("x-request-id", "trace-7")
        .body(Full::default())
        .unwrap();
    let reply = h.client.send(request).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-echo-namespace"), "ns_search");
    let seen = h.sim.requests();
    assert_eq!(seen.len(), 1);
    let headers = &seen[0].headers;
    assert!(headers.get("x_namespace").is_none(), "{headers:?}");
    assert!(headers.get("x_request_id").is_none(), "{headers:?}");
    let namespaces: Vec<_> = headers.get_all("x-namespace").iter().collect();
    assert_eq!(namespaces, ["ns_search"]);
    assert_eq!(headers["x-request-id"], "trace-7");
}

#[tokio::test]
async fn forwards_with_real_key_and_effective_namespace_never_the_client_key() {
    let h = Harness::start().await;
    let reply = h.client.get("/v1/collections", SEARCH_KEY).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-cache"), "BYPASS");
    assert_eq!(reply.header("x-echo-namespace"), "ns_search");

    let request = h
        .client
        .request(Method::GET, "/v1/collections")
        .header("authorization", format!("Bearer {SEARCH_KEY}"))
        .header("x-namespace", "staging")
        .body(Full::default())
        .unwrap();
    assert_eq!(
        h.client.send(request).await.header("x-echo-namespace"),
        "staging"
    );
    let by_query = h
        .client
        .get("/v1/collections?namespace=staging", SEARCH_KEY)
        .await;
    assert_eq!(by_query.header("x-echo-namespace"), "staging");
    let ads = h.client.get("/v1/collections", ADS_KEY).await;
    assert_eq!(ads.header("x-echo-namespace"), "ns_ads");

    let seen = h.sim.requests();
    assert_eq!(seen.len(), 4);
    let namespaces: Vec<_> = seen
        .iter()
        .map(|r| r.headers["x-namespace"].to_str().unwrap().to_string())
        .collect();
    assert_eq!(namespaces, ["ns_search", "staging", "staging", "ns_ads"]);
    for request in &seen {
        let auth: Vec<_> = request.headers.get_all("authorization").iter().collect();
        assert_eq!(auth, [&format!("Bearer {REAL_KEY}")]);
        for (name, value) in &request.headers {
            let value = String::from_utf8_lossy(value.as_bytes());
            assert!(
                !value.contains(SEARCH_KEY) && !value.contains(ADS_KEY),
                "client key reached upstream in {name}"
            );
        }
    }
}

#[tokio::test]
async fn path_query_and_body_pass_through_byte_identical() {
    let h = Harness::start().await;
    let path = "/v1/buckets/b%2F1/objects/%E2%9C%93?z=1&a=%20x&a=2&empty=&flag";
    let body: Vec<u8> = (0u8..=255)
        .chain(b"{\"k\": [1, 2]}".iter().copied())
        .collect();
    for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
        let request = h
            .client
            .request(method.clone(), path)
            .header("authorization", format!("Bearer {SEARCH_KEY}"))
            .header("content-type", "application/octet-stream")
            .body(Full::new(Bytes::from(body.clone())))
            .unwrap();
        let reply = h.client.send(request).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body.as_ref(), body.as_slice(), "{method}");
        assert_eq!(reply.header("x-echo-method"), method.as_str());
        let seen = h.sim.requests().pop().unwrap();
        assert_eq!(seen.path_and_query, path);
        assert_eq!(seen.body.as_ref(), body.as_slice());
    }
    assert_eq!(h.sim.count(ECHO), 4);
}

#[tokio::test]
async fn hop_by_hop_headers_are_dropped_and_host_is_upstreams() {
    let h = Harness::start().await;
    let request = h
        .client
        .request(Method::GET, "/v1/collections")
        .header("authorization", format!("Bearer {SEARCH_KEY}"))
        .header("connection", "x-private-hop")
        .header("x-private-hop", "1")
        .header("proxy-authorization", "Basic abc")
        .header("x-end-to-end", "kept")
        .body(Full::default())
        .unwrap();
    assert_eq!(h.client.send(request).await.status, 200);
    let seen = h.sim.requests().pop().unwrap();
    assert!(seen.headers.get("x-private-hop").is_none());
    assert!(seen.headers.get("proxy-authorization").is_none());
    assert_eq!(seen.headers["x-end-to-end"], "kept");
    assert_eq!(seen.headers["host"], h.sim.addr.to_string());
}

#[tokio::test]
async fn dot_segments_raw_or_encoded_are_400_and_not_forwarded() {
    let h = Harness::start().await;
    for path in [
        "/v1/a/../b",
        "/v1/%2e%2e/admin",
        "/v1/./x",
        "/v1/a%2F..%2Fb",
    ] {
        h.client
            .get(path, SEARCH_KEY)
            .await
            .assert_error(400, "bad_request");
    }
    assert_eq!(h.sim.total(), 0);
}

#[tokio::test]
async fn body_over_max_is_413_by_length_and_when_streamed() {
    let h = Harness::with(SimConfig::new(REAL_KEY), "max_body_bytes = 1024", "").await;
    h.client
        .post("/v1/collections", SEARCH_KEY, vec![b'x'; 2048])
        .await
        .assert_error(413, "payload_too_large");
    // Exactly at the limit is fine.
    assert_eq!(
        h.client
            .post("/v1/collections", SEARCH_KEY, vec![b'x'; 1024])
            .await
            .status,
        200
    );

    // Chunked, no Content-Length: the limit trips while streaming.
    let chunk = "x".repeat(600);
    let request = format!(
        "POST /v1/collections HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {SEARCH_KEY}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    let answer = raw_exchange(h.gateway.addr, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
}

#[tokio::test]
async fn an_over_limit_chunked_body_in_one_write_never_reaches_upstream() {
    let h = Harness::with(SimConfig::new(REAL_KEY), "max_body_bytes = 1024", "").await;
    // 2.1 kB in three chunks, written at once: streamed as it arrived, its
    // first kilobyte would be upstream before the limit struck.
    let chunk = "x".repeat(700);
    let request = format!(
        "POST /v1/collections HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {SEARCH_KEY}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n2bc\r\n{chunk}\r\n2bc\r\n{chunk}\r\n2bc\r\n{chunk}\r\n0\r\n\r\n"
    );
    let answer = raw_exchange(h.gateway.addr, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
    assert_eq!(h.sim.total(), 0);
    // A small chunked body goes upstream whole, with its length.
    let request = format!(
        "POST /v1/collections HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {SEARCH_KEY}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    );
    let answer = raw_exchange(h.gateway.addr, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = h.sim.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, "abcde");
    assert_eq!(seen[0].headers["content-length"], "5");
    assert!(seen[0].headers.get("transfer-encoding").is_none());
}

#[tokio::test]
async fn a_malformed_or_cut_request_body_is_the_clients_400_not_an_upstream_failure() {
    let h = Harness::start().await;
    let head = |framing: &str| {
        format!(
            "POST /v1/collections HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {SEARCH_KEY}\r\n{framing}\r\nconnection: close\r\n\r\n"
        )
    };
    let cases = [
        head("transfer-encoding: chunked") + "FFFFFFFFFFFFFFFFF1\r\nabc\r\n0\r\n\r\n",
        head("transfer-encoding: chunked") + "-5\r\nabc\r\n0\r\n\r\n",
        head("transfer-encoding: chunked") + "3\r\nabcXX0\r\n\r\n",
        // Unterminated, then the client half-closes.
        head("transfer-encoding: chunked") + "3\r\nabc\r\n",
        // Shorter than its Content-Length, then the client half-closes.
        head("content-length: 100") + "only a few bytes",
    ];
    for request in cases {
        let answer = raw_exchange_half_closed(h.gateway.addr, request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{request:?}: {answer}");
        assert!(answer.contains("bad_request"), "{request:?}: {answer}");
    }
    assert_eq!(h.sim.total(), 0);
    // The gateway keeps serving.
    assert_eq!(
        h.client.get("/v1/collections", SEARCH_KEY).await.status,
        200
    );
}

#[tokio::test]
async fn a_large_body_broken_mid_stream_is_the_clients_400_and_no_upstream_error() {
    let h = Harness::start().await;
    // 70 KiB pass the read-ahead and stream on; then the framing breaks.
    let chunk = "x".repeat(70 * 1024);
    let request = format!(
        "POST /v1/collections HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {SEARCH_KEY}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n{:x}\r\n{chunk}\r\nZZZ\r\nabc\r\n0\r\n\r\n",
        chunk.len()
    );
    let answer = raw_exchange_half_closed(h.gateway.addr, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("bad_request"), "{answer}");
    let metrics = h.client.get("/_gateway/metrics", SEARCH_KEY).await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        !text.contains("upstream_requests_total{route=\"passthrough\",status=\"0\"}"),
        "{text}"
    );
}

#[tokio::test]
async fn a_large_upload_still_streams_upstream_whole() {
    let h = Harness::start().await;
    let body: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    let reply = h
        .client
        .post("/v1/collections", SEARCH_KEY, body.clone())
        .await;
    assert_eq!(reply.status, 200);
    let seen = h.sim.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body.len(), body.len());
    assert!(seen[0].body == body);
}

#[tokio::test]
async fn a_declared_oversized_body_is_refused_before_the_client_sends_it() {
    let h = Harness::with(SimConfig::new(REAL_KEY), "max_body_bytes = 1024", "").await;
    // The client waits for 100 Continue; the gateway answers 413 instead,
    // without asking for the body, and nothing goes upstream.
    let request = format!(
        "POST /v1/collections HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {SEARCH_KEY}\r\ncontent-length: 2048\r\nexpect: 100-continue\r\nconnection: close\r\n\r\n"
    );
    let answer = raw_exchange(h.gateway.addr, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(!answer.contains("100 Continue"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
    assert_eq!(h.sim.total(), 0);
}

#[tokio::test]
async fn upstream_unreachable_is_502() {
    let closed = closed_port().await;
    let config = config(&config_toml(&format!("http://{closed}"), "", ""));
    let gateway = mixpeek_gateway::server::spawn(config).await.unwrap();
    let client = TestClient::new(gateway.url());
    client
        .get("/v1/collections", SEARCH_KEY)
        .await
        .assert_error(502, "bad_gateway");
}

#[tokio::test]
async fn upstream_reset_is_502_and_gateway_keeps_serving() {
    // An upstream that accepts, reads the request and closes without answering.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
            drop(stream);
        }
    });
    let config = config(&config_toml(&format!("http://{addr}"), "", ""));
    let gateway = mixpeek_gateway::server::spawn(config).await.unwrap();
    let client = TestClient::new(gateway.url());
    for _ in 0..3 {
        client
            .get("/v1/collections", SEARCH_KEY)
            .await
            .assert_error(502, "bad_gateway");
    }
    assert_eq!(client.get("/_gateway/health", "").await.status, 200);
}

#[tokio::test]
async fn upstream_slower_than_timeout_is_504() {
    let mut sim = SimConfig::new(REAL_KEY);
    sim.latency = Duration::from_secs(3);
    let h = Harness::with(sim, "", "timeout_ms = 200").await;
    let started = std::time::Instant::now();
    h.client
        .get("/v1/collections", SEARCH_KEY)
        .await
        .assert_error(504, "gateway_timeout");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answered before upstream did"
    );
}

#[tokio::test]
async fn gateway_endpoints_answer_without_key_and_are_never_forwarded() {
    let h = Harness::start().await;
    let health = h.client.get("/_gateway/health", "").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["status"], "ok");
    assert_eq!(h.client.get("/_gateway/ready", "").await.status, 200);
    for path in ["/_gateway/nope", "/_gateway/", "/_gateway/health/x"] {
        h.client
            .get(path, SEARCH_KEY)
            .await
            .assert_error(404, "not_found");
    }
    assert_eq!(h.sim.total(), 0);
}

#[tokio::test]
async fn upstream_errors_pass_through_unchanged() {
    let h = Harness::start().await;
    let reply = h
        .client
        .get("/v1/retrievers/executions/nope", SEARCH_KEY)
        .await;
    assert_eq!(reply.status, 404);
    // A cacheable route: this request made the (uncached) upstream call.
    assert_eq!(reply.header("x-cache"), "MISS");
    assert_eq!(reply.json()["error"]["type"], "NotFoundError");
}
