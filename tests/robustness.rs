//! Bad input never takes the gateway down: each gets an error response or a
//! clean close, and the next normal request is served.

mod support;

use std::time::Duration;

use http_body_util::BodyExt;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn malformed_requests_get_errors_and_the_gateway_keeps_serving() {
    let h = Harness::start().await;
    let addr = h.gateway.addr;
    let auth = format!("authorization: Bearer {SEARCH_KEY}\r\n");

    // A header line without a colon.
    let answer = raw_exchange(
        addr,
        b"GET /v1/x HTTP/1.1\r\nhost: gw\r\nthis is not a header\r\n\r\n",
    )
    .await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
        "{answer}"
    );
    // Invalid UTF-8 and raw bytes in the path.
    let mut request = b"GET /v1/\xff\xfe/x HTTP/1.1\r\nhost: gw\r\n".to_vec();
    request.extend_from_slice(auth.as_bytes());
    request.extend_from_slice(b"\r\n");
    let answer = raw_exchange(addr, &request).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
        "{answer}"
    );
    // Percent-encoded invalid UTF-8 is legal on the wire and forwarded as is.
    let reply = h.client.get("/v1/%FF%FE/x", SEARCH_KEY).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-echo-path"), "/v1/%FF%FE/x");
    // A header value with a non-ASCII byte as the namespace.
    let request = format!("GET /v1/x HTTP/1.1\r\nhost: gw\r\n{auth}x-namespace: \u{e9}t\u{e9}\r\nconnection: close\r\n\r\n");
    let answer = raw_exchange(addr, request.as_bytes()).await;
    assert!(
        answer.starts_with("HTTP/1.1 400") || answer.starts_with("HTTP/1.1 403"),
        "{answer}"
    );
    // A truncated body: Content-Length promises more than is sent.
    let request =
        format!("POST /v1/objects HTTP/1.1\r\nhost: gw\r\n{auth}content-length: 100\r\n\r\nshort");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    let answer = String::from_utf8_lossy(&out);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 4") || answer.starts_with("HTTP/1.1 5"),
        "{answer}"
    );
    // Garbage that is not HTTP at all.
    let _ = raw_exchange(
        addr,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
    )
    .await;
    // An absolute-form target must not redirect the request elsewhere.
    let request = format!("GET http://evil.example/v1/x HTTP/1.1\r\nhost: evil.example\r\n{auth}connection: close\r\n\r\n");
    let answer = raw_exchange(addr, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(
        h.sim.requests().last().unwrap().headers["host"],
        h.sim.addr.to_string()
    );

    // Still serving.
    let reply = h
        .client
        .get("/v1/retrievers/executions/exec_7", SEARCH_KEY)
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["execution_id"], "exec_7");
}

#[tokio::test]
async fn upstream_closing_mid_body_closes_cleanly_and_the_gateway_keeps_serving() {
    // An upstream that promises 1000 bytes, sends 10 and hangs up.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"partial\"")
                    .await;
            });
        }
    });
    let config = config(&config_toml(&format!("http://{addr}"), "", ""));
    let gateway = mixpeek_gateway::server::spawn(config).await.unwrap();
    let client = TestClient::new(gateway.url());
    for _ in 0..3 {
        let request = client
            .request(http::Method::GET, "/v1/collections")
            .header("authorization", format!("Bearer {SEARCH_KEY}"))
            .body(Default::default())
            .unwrap();
        let response = client.send_streaming(request).await;
        assert_eq!(response.status(), 200);
        // The client sees the body end in an error, never a silently short body.
        let collected =
            tokio::time::timeout(Duration::from_secs(10), response.into_body().collect())
                .await
                .unwrap();
        assert!(collected.is_err(), "truncated body must not look complete");
    }
    assert_eq!(client.get("/_gateway/health", "").await.status, 200);
}

#[tokio::test]
async fn upstream_that_stalls_mid_body_is_cut_off_after_the_timeout() {
    // Sends the head and one chunk, then goes silent while keeping the
    // connection open.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (hold, mut held) = tokio::sync::mpsc::channel::<tokio::net::TcpStream>(8);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).await;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
                .await;
            let _ = hold.send(stream).await;
        }
    });
    let config = config(&config_toml(
        &format!("http://{addr}"),
        "",
        "timeout_ms = 300",
    ));
    let gateway = mixpeek_gateway::server::spawn(config).await.unwrap();
    let client = TestClient::new(gateway.url());
    let request = client
        .request(http::Method::GET, "/v1/collections")
        .header("authorization", format!("Bearer {SEARCH_KEY}"))
        .body(Default::default())
        .unwrap();
    let response = client.send_streaming(request).await;
    assert_eq!(response.status(), 200);
    let collected = tokio::time::timeout(Duration::from_secs(10), response.into_body().collect())
        .await
        .expect("the gateway ends a stalled body instead of hanging");
    assert!(collected.is_err());
    // The upstream connection is still open: the gateway gave up, not upstream.
    assert!(held.try_recv().is_ok());
}

#[tokio::test]
async fn reserved_prefix_cannot_be_smuggled_upstream() {
    let h = Harness::start().await;
    for path in [
        "/%5Fgateway/health",
        "//_gateway/health",
        "/%5fgateway/cache",
        "///_gateway",
    ] {
        h.client
            .get(path, SEARCH_KEY)
            .await
            .assert_error(404, "not_found");
    }
    assert_eq!(h.sim.total(), 0);
}

#[tokio::test]
async fn http2_clients_are_served() {
    let h = Harness::start().await;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let request = http::Request::get(format!(
        "{}/v1/retrievers/executions/exec_1",
        h.gateway.url()
    ))
    .header("authorization", format!("Bearer {SEARCH_KEY}"))
    .body(Default::default())
    .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("exec_1"));
    // Forwarded upstream over HTTP/1.1 with the real key all the same.
    let seen = h.sim.requests().pop().unwrap();
    assert_eq!(
        seen.headers["authorization"],
        format!("Bearer {REAL_KEY}").as_str()
    );
}

/// The status and JSON body of a raw answer, checking its Content-Length.
fn status_and_body(answer: &str) -> (u16, serde_json::Value) {
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {answer:?}"));
    let status = head[9..12].parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(str::to_owned)
        })
        .unwrap_or_else(|| panic!("no content-length in {head}"))
        .parse()
        .unwrap();
    assert_eq!(length, body.len(), "{answer}");
    (status, serde_json::from_str(body).unwrap())
}

#[tokio::test]
async fn heads_the_parser_refuses_are_answered_in_mixpeeks_error_shape() {
    let h = Harness::start().await;
    let addr = h.gateway.addr;
    let long_uri = format!(
        "GET /v1/{} HTTP/1.1\r\nhost: gw\r\n\r\n",
        "a".repeat(70_000)
    );
    let big_headers = format!(
        "GET /v1/x HTTP/1.1\r\nhost: gw\r\nx-big: {}\r\n\r\n",
        "a".repeat(500_000)
    );
    let cases: [(&[u8], u16); 4] = [
        (b"G@T /v1/x HTTP/1.1\r\nhost: gw\r\n\r\n", 400),
        (b"GET /v1/x HTTP/1.1\r\nhost: gw\r\nbad header\r\n\r\n", 400),
        (long_uri.as_bytes(), 414),
        (big_headers.as_bytes(), 431),
    ];
    for (request, status) in cases {
        let answer = raw_exchange(addr, request).await;
        let (got, body) = status_and_body(&answer);
        assert_eq!(got, status, "{answer}");
        assert_eq!(body["success"], false);
        assert_eq!(body["status"], status);
        assert_eq!(body["error"]["type"], "bad_request");
        assert!(
            answer.contains("content-type: application/json\r\n"),
            "{answer}"
        );
    }
    // Pipelined behind two good requests: those answered as ever, then the
    // malformed one in the error shape.
    let pipelined = b"GET /_gateway/health HTTP/1.1\r\nhost: gw\r\n\r\n\
                      GET /_gateway/health HTTP/1.1\r\nhost: gw\r\n\r\n\
                      BAD\x01 / HTTP/1.1\r\n\r\n";
    let answer = raw_exchange(addr, pipelined).await;
    let parts: Vec<&str> = answer.split("HTTP/1.1 ").collect();
    assert_eq!(parts.len(), 4, "{answer}");
    assert!(
        parts[1].starts_with("200") && parts[2].starts_with("200"),
        "{answer}"
    );
    let (status, body) = status_and_body(&format!("HTTP/1.1 {}", parts[3]));
    assert_eq!(
        (status, body["error"]["type"].as_str()),
        (400, Some("bad_request"))
    );
    assert_eq!(h.sim.count("other"), 0);
    assert_eq!(
        h.client.get("/v1/collections", SEARCH_KEY).await.status,
        200
    );
}
