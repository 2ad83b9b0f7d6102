//! Criterion benches of the gateway's hot paths, in process:
//!
//! - `stack/hit`: the full tower stack serving a cached execution detail
//!   (no sockets at all);
//! - `stack/miss_passthrough`: the full stack forwarding to the simulated
//!   API on a loopback socket (an in-process upstream);
//! - `list_key/typical_body`: canonicalising a list query into its key;
//! - `auth/lookup`: finding a client by its key among 50;
//! - `redis/l1_hit` and `redis/l2_hit`: with `[redis]`, a hit from memory
//!   against a hit from the shared tier (the local entry dropped first);
//!   needs a Redis at `REDIS_URL` (default `redis://127.0.0.1:6379`),
//!   skipped with a note when there is none.
//!
//! `cargo bench --bench gateway`; numbers are in benches/RESULTS.md.

// The gateway's allocator, so the figures are the server's.
#[path = "../src/server/alloc.rs"]
mod alloc;
#[global_allocator]
static GLOBAL: alloc::MiMalloc = alloc::MiMalloc;

use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Full};
use mixpeek_gateway::cache::key::CacheKey;
use mixpeek_gateway::config::{ClientConfig, Config};
use mixpeek_gateway::layers::auth::ClientRegistry;
use mixpeek_gateway::sim::{self, SimConfig};
use mixpeek_gateway::stack::{self, AppState};
use sha2::{Digest, Sha256};
use tower::ServiceExt;

const REAL_KEY: &str = "sk_bench_real";
const CLIENT_KEY: &str = "gw_bench_client";

fn config(upstream: &str) -> Config {
    let digest = hex::encode(Sha256::digest(CLIENT_KEY.as_bytes()));
    let toml = format!(
        "[upstream]\nbase_url = \"{upstream}\"\napi_key_env = \"K\"\n\n[[clients]]\nname = \"bench\"\nkey_sha256 = \"{digest}\"\nnamespace = \"ns_bench\"\n"
    );
    Config::from_toml(&toml, |_| Some(REAL_KEY.into())).unwrap()
}

fn request(path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("authorization", format!("Bearer {CLIENT_KEY}"))
        .header("user-agent", "mixpeek-python/1.3.783")
        .header("accept", "application/json")
        .body(Full::default())
        .unwrap()
}

fn stack(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (sim, state) = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sim = sim::spawn(SimConfig::new(REAL_KEY), listener)
            .await
            .unwrap();
        let state = AppState::new(config(&sim.base_url())).unwrap();
        (sim, state)
    });
    let app = stack::app::<Full<Bytes>>(&state);
    let hit_path = "/v1/retrievers/executions/exec_1";
    let body_len = runtime.block_on(async {
        let first = app.clone().oneshot(request(hit_path)).await.unwrap();
        assert_eq!(first.headers()["x-cache"], "MISS");
        first.into_body().collect().await.unwrap().to_bytes().len()
    });

    let mut group = c.benchmark_group("stack");
    group.throughput(Throughput::Elements(1));
    group.bench_function("hit", |b| {
        b.to_async(&runtime).iter(|| async {
            let response = app.clone().oneshot(request(hit_path)).await.unwrap();
            debug_assert_eq!(response.headers()["x-cache"], "HIT");
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body.len(), body_len);
        })
    });
    group.bench_function("miss_passthrough", |b| {
        b.to_async(&runtime).iter(|| async {
            let response = app
                .clone()
                .oneshot(request("/v1/collections/col_1"))
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            response.into_body().collect().await.unwrap();
        })
    });
    group.finish();
    drop(sim);
}

fn list_key(c: &mut Criterion) {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", "application/json".parse().unwrap());
    let body = br#"{"status": "completed", "start_time": "2026-11-01T00:00:00Z", "end_time": "2026-11-22T00:00:00Z", "count_only": false}"#;
    c.bench_function("list_key/typical_body", |b| {
        b.iter(|| {
            CacheKey::list(
                std::hint::black_box("ns_search"),
                "/v1/retrievers/executions/list".to_string(),
                Some("limit=50&offset=100&include_total=true"),
                &headers,
                std::hint::black_box(body),
            )
        })
    });
}

fn client_lookup(c: &mut Criterion) {
    let clients = (0..50).map(|i| ClientConfig {
        name: format!("team-{i}"),
        key_sha256: Sha256::digest(format!("gw_key_{i}").as_bytes()).into(),
        namespace: format!("ns_{i}"),
        allowed_namespaces: vec![format!("ns_{i}").into()],
        rate_limit: None,
        max_in_flight: None,
    });
    let registry = ClientRegistry::new(clients);
    c.bench_function("auth/lookup_50_clients", |b| {
        b.iter(|| {
            registry
                .lookup(std::hint::black_box(b"gw_key_37"))
                .map(|c| c.name.len())
        })
    });
}

fn redis_tiers(c: &mut Criterion) {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let prepared = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sim = sim::spawn(SimConfig::new(REAL_KEY), listener).await.unwrap();
        let digest = hex::encode(Sha256::digest(CLIENT_KEY.as_bytes()));
        let prefix = format!("bench-{}:", std::process::id());
        let toml = format!(
            "[upstream]\nbase_url = \"{}\"\napi_key_env = \"K\"\n\n[[clients]]\nname = \"bench\"\nkey_sha256 = \"{digest}\"\nnamespace = \"ns_bench\"\n\n[redis]\nurl = \"{url}\"\nkey_prefix = \"{prefix}\"\n",
            sim.base_url()
        );
        let state = AppState::new(Config::from_toml(&toml, |_| Some(REAL_KEY.into())).unwrap()).unwrap();
        let shared = state.cache.shared.clone()?;
        let probe = mixpeek_gateway::cache::CacheKey::detail("ns_probe", "/probe".into());
        for _ in 0..100 {
            if shared.get_entry(&probe).await.is_some() || shared.is_healthy() {
                return Some((sim, state));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    });
    let Some((sim, state)) = prepared else {
        eprintln!("redis benches skipped: no Redis at {url}");
        return;
    };
    let app = stack::app::<Full<Bytes>>(&state);
    let path = "/v1/retrievers/executions/exec_l2";
    let key = mixpeek_gateway::cache::CacheKey::detail("ns_bench", path.into());
    runtime.block_on(async {
        let first = app.clone().oneshot(request(path)).await.unwrap();
        assert_eq!(first.headers()["x-cache"], "MISS");
        first.into_body().collect().await.unwrap();
    });
    let mut group = c.benchmark_group("redis");
    group.bench_function("l1_hit", |b| {
        b.to_async(&runtime).iter(|| async {
            let response = app.clone().oneshot(request(path)).await.unwrap();
            assert!(response.headers().get("x-cache-tier").is_none());
            response.into_body().collect().await.unwrap();
        })
    });
    group.bench_function("l2_hit", |b| {
        b.to_async(&runtime).iter(|| async {
            state.cache.store.remove(&key);
            let response = app.clone().oneshot(request(path)).await.unwrap();
            assert_eq!(response.headers()["x-cache-tier"], "L2");
            response.into_body().collect().await.unwrap();
        })
    });
    group.finish();
    drop(sim);
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    targets = stack, list_key, client_lookup, redis_tiers
}
criterion_main!(benches);
