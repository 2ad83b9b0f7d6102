//! `mixpeek-gateway demo`: the simulated Mixpeek API and the gateway in front
//! of it, in one process, with a demo client. Needs no key, no network and
//! no config file.

use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::body::BoxError;
use crate::config::Config;
use crate::{server, sim};

/// A random hex token from the standard library's randomly seeded hasher;
/// good enough for throwaway demo keys, and no extra dependency.
pub fn random_token(prefix: &str) -> String {
    let mut out = String::from(prefix);
    for _ in 0..2 {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(std::process::id().into());
        out.push_str(&format!("{:016x}", hasher.finish()));
    }
    out
}

/// The demo's config: one client `demo` in namespace `ns_demo` (also allowed:
/// `ns_other`), upstream at `upstream`.
pub fn demo_config(
    upstream: &str,
    listen: SocketAddr,
    api_key: &str,
    client_key: &str,
) -> Result<Config, BoxError> {
    let digest = hex::encode(Sha256::digest(client_key.as_bytes()));
    let toml = format!(
        r#"
[server]
listen = "{listen}"

[upstream]
base_url = "{upstream}"
api_key_env = "DEMO_MIXPEEK_API_KEY"
timeout_ms = 10000

[[clients]]
name = "demo"
key_sha256 = "{digest}"
namespace = "ns_demo"
allowed_namespaces = ["ns_demo", "ns_other"]
"#
    );
    let api_key = api_key.to_string();
    Ok(Config::from_toml(&toml, move |_| Some(api_key.clone()))?)
}

/// Runs the demo until Ctrl-C.
pub async fn run(listen: Option<SocketAddr>) -> Result<(), BoxError> {
    let api_key = random_token("sk_demo_");
    let client_key = random_token("gw_demo_");
    let mut sim_config = sim::SimConfig::new(api_key.clone());
    sim_config.complete_after = Duration::from_secs(5);
    let sim_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let sim = sim::spawn(sim_config, sim_listener).await?;

    let listen = listen.unwrap_or_else(|| ([127, 0, 0, 1], 8080).into());
    let config = demo_config(&sim.base_url(), listen, &api_key, &client_key)?;
    let gateway = server::spawn(config).await?;
    let url = gateway.url();
    println!("mixpeek-gateway demo");
    println!("  gateway:         {url}");
    println!("  simulated API:   {}", sim.base_url());
    println!("  demo client key: {client_key}");
    println!("  namespace:       ns_demo (ns_other also allowed)");
    println!();
    println!("Try:");
    println!(
        "  curl -s -H 'Authorization: Bearer {client_key}' {url}/v1/retrievers/executions/exec_42"
    );
    println!("  curl -s -X POST -H 'Authorization: Bearer {client_key}' -H 'Content-Type: application/json' -d '{{\"status\":\"completed\"}}' {url}/v1/retrievers/executions/list");
    println!("Executions complete 5 s after they are first requested. Ctrl-C stops.");
    server::shutdown_signal().await;
    gateway.shutdown().await?;
    sim.shutdown().await;
    Ok(())
}
