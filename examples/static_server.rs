//! The ceiling for the load benchmark: a bare hyper server that answers every
//! request with one static body from memory, served with the same hyper
//! builder the gateway uses. Nothing a hyper-based server can do is faster.
//!
//! `cargo run --release --example static_server -- 127.0.0.1:9100 body.json [per-thread]`
//!
//! By default it runs on tokio's multi-threaded runtime, as hyper's own
//! examples do. With `per-thread` it uses the gateway's worker model
//! instead — one single-threaded runtime per CPU, all accepting from one
//! listening socket — so the gateway can also be compared with a bare
//! server built the same way.
//!
//! With `WORK_NS=N` in its environment each response first runs a loop
//! calibrated at startup to take N nanoseconds: a bare server that does N
//! ns of work per request (`benches/load/run.sh bound`). A fixed count of
//! iterations, not a wait on the clock, so a worker preempted in the middle
//! still does all of it.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:9100".into());
    let body = match args.next() {
        Some(path) => Bytes::from(std::fs::read(path)?),
        None => Bytes::from_static(b"{\"status\":\"completed\"}"),
    };
    let per_thread = args.next().as_deref() == Some("per-thread");
    let work = match std::env::var("WORK_NS") {
        Ok(ns) => ns.parse().map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("WORK_NS must be a number of nanoseconds, not {ns:?}"),
            )
        })?,
        Err(_) => 0,
    };
    let work = iterations_for(Duration::from_nanos(work));
    let listener = std::net::TcpListener::bind(&listen)?;
    listener.set_nonblocking(true)?;
    println!(
        "static server on http://{} ({work} iterations of work per request)",
        listener.local_addr()?
    );
    if !per_thread {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        return runtime.block_on(accept(listener, body, work));
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut handles = Vec::new();
    for _ in 0..threads {
        let (listener, body) = (listener.try_clone()?, body.clone());
        handles.push(std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(accept(listener, body, work))
        }));
    }
    for handle in handles {
        handle.join().expect("server thread")?;
    }
    Ok(())
}

/// Busy work: `iterations` rounds of a loop the optimiser cannot remove.
fn spin(iterations: u64) {
    for i in 0..iterations {
        std::hint::black_box(i);
    }
}

/// How many iterations of [`spin`] take `work` on this machine (0 for none):
/// the fastest of 20 probes, so a probe preempted by another process does
/// not make it count fewer.
fn iterations_for(work: Duration) -> u64 {
    if work.is_zero() {
        return 0;
    }
    const PROBE: u64 = 1_000_000;
    let fastest = (0..20)
        .map(|_| {
            let start = Instant::now();
            spin(PROBE);
            start.elapsed()
        })
        .min()
        .unwrap_or(Duration::from_millis(1));
    let per_iteration = fastest.as_secs_f64() / PROBE as f64;
    (work.as_secs_f64() / per_iteration) as u64
}

async fn accept(listener: std::net::TcpListener, body: Bytes, work: u64) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let body = body.clone();
        tokio::spawn(async move {
            let service = service_fn(move |_request: Request<Incoming>| {
                if work > 0 {
                    spin(work);
                }
                let mut response = Response::new(Full::new(body.clone()));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
