//! Streaming in both directions: Server-Sent Events reach the client event
//! by event, and request bodies reach upstream before the client finishes.

mod support;

use std::time::Duration;

use http_body_util::BodyExt;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Reads body frames until `needle` has been seen; fails after 10 s.
async fn read_until(body: &mut hyper::body::Incoming, seen: &mut String, needle: &str) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !seen.contains(needle) {
            let frame = body.frame().await.expect("stream ended early").unwrap();
            if let Ok(data) = frame.into_data() {
                seen.push_str(std::str::from_utf8(&data).unwrap());
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{needle:?} did not arrive; got {seen:?}"));
}

#[tokio::test]
async fn sse_first_event_arrives_before_the_last_is_sent() {
    // The sim sends the first stage event, then waits for a permit before
    // each further one: the client must see event one while the sim is
    // still holding the others back. A buffering proxy never delivers it.
    let (sim, gate) = gated_sse_sim();
    let h = Harness::with(sim, "", "").await;

    let response = h.client.send_streaming(h.client.sse_execute()).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    assert_eq!(response.headers()["x-cache"], "BYPASS");
    let mut body = response.into_body();
    let mut seen = String::new();
    read_until(&mut body, &mut seen, "\n\n").await;
    assert!(seen.contains("\"stage_index\":0"), "{seen}");
    assert!(!seen.contains("event: complete"));

    gate.add_permits(16);
    read_until(&mut body, &mut seen, "event: complete").await;
    assert_eq!(seen.matches("event: stage").count(), 4);
}

#[tokio::test]
async fn request_body_reaches_upstream_before_the_client_finishes_sending() {
    // A bare upstream that reports what it has read so far.
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    let (first_chunk_tx, first_chunk_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let (mut stream, _) = upstream.accept().await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let mut first_chunk_tx = Some(first_chunk_tx);
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "gateway closed early");
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got);
            if text.contains("first-part") {
                if let Some(tx) = first_chunk_tx.take() {
                    let _ = tx.send(());
                }
            }
            if text.contains("second-part") && text.ends_with("0\r\n\r\n") {
                break;
            }
        }
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
            .await
            .unwrap();
    });

    let config = config(&config_toml(&format!("http://{upstream_addr}"), "", ""));
    let gateway = mixpeek_gateway::server::spawn(config).await.unwrap();
    let mut client = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    let head = format!(
        "POST /v1/objects HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {SEARCH_KEY}\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    client.write_all(head.as_bytes()).await.unwrap();
    // Bodies up to 64 KiB are read whole before the call (so one over the
    // limit never reaches upstream); a larger one streams: its first part
    // is upstream while the client still sends.
    let first = format!("{}first-part", "x".repeat(70 * 1024));
    client
        .write_all(format!("{:x}\r\n{first}\r\n", first.len()).as_bytes())
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), first_chunk_rx)
        .await
        .expect("first chunk reached upstream while the client was still sending")
        .unwrap();
    client
        .write_all(b"b\r\nsecond-part\r\n0\r\n\r\n")
        .await
        .unwrap();
    let mut answer = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), client.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    server.await.unwrap();
}
