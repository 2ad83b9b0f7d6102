//! Runs the cache-hit path of the full stack N times in process, for
//! instruction counting under `valgrind --tool=callgrind`, which is
//! repeatable whatever else the machine is doing:
//!
//! `valgrind --tool=callgrind target/release/examples/hit_path 20000`

// The gateway's allocator, so the figures are the server's.
#[path = "../src/server/alloc.rs"]
mod alloc;
#[global_allocator]
static GLOBAL: alloc::MiMalloc = alloc::MiMalloc;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use mixpeek_gateway::config::Config;
use mixpeek_gateway::sim::{self, SimConfig};
use mixpeek_gateway::stack::{self, AppState};
use sha2::{Digest, Sha256};
use tower::ServiceExt;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sim = sim::spawn(SimConfig::new("sk_x"), listener).await.unwrap();
        let digest = hex::encode(Sha256::digest(b"gw_k"));
        let toml = format!(
            "[upstream]\nbase_url = \"{}\"\napi_key_env = \"K\"\n[[clients]]\nname = \"b\"\nkey_sha256 = \"{digest}\"\nnamespace = \"ns_b\"\n",
            sim.base_url()
        );
        let state = AppState::new(Config::from_toml(&toml, |_| Some("sk_x".into())).unwrap()).unwrap();
        let app = stack::app::<Full<Bytes>>(&state);
        let request = || {
            Request::get("/v1/retrievers/executions/exec_1")
                .header("authorization", "Bearer gw_k")
                .header("user-agent", "mixpeek-python/1.3.783")
                .body(Full::default())
                .unwrap()
        };
        app.clone().oneshot(request()).await.unwrap().into_body().collect().await.unwrap();
        let mut bytes = 0;
        for _ in 0..n {
            let response = app.clone().oneshot(request()).await.unwrap();
            assert_eq!(response.headers()["x-cache"], "HIT");
            bytes += response.into_body().collect().await.unwrap().to_bytes().len();
        }
        println!("{n} hits, {bytes} bytes");
    });
}
