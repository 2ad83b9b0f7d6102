//! The command line: `serve` (default), `demo`, `check-config`, and the
//! hidden `sim` that runs only the simulated Mixpeek API.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::DEFAULT_CONFIG_PATH;

/// mixpeek-gateway: an authenticating, caching gateway in front of the Mixpeek API.
#[derive(Debug, Parser)]
#[command(name = "mixpeek-gateway", version, about)]
pub struct Cli {
    /// Config file.
    #[arg(long, global = true, env = "MIXPEEK_GATEWAY_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,

    /// Address to listen on (overrides server.listen).
    #[arg(
        long,
        global = true,
        env = "MIXPEEK_GATEWAY_LISTEN",
        value_name = "ADDR:PORT"
    )]
    pub listen: Option<SocketAddr>,

    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway with the config file.
    Serve,
    /// Run a simulated Mixpeek API and the gateway in front of it; needs nothing.
    Demo,
    /// Load and validate the config and the env vars it names; print a summary.
    CheckConfig,
    /// Run only the simulated Mixpeek API (benchmarks, manual tests).
    #[command(hide = true)]
    Sim {
        /// Added latency before every response, in milliseconds.
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
        /// Time for a new execution to become terminal, in milliseconds.
        #[arg(long, default_value_t = 0)]
        complete_after_ms: u64,
        /// Env var holding the key the simulated API accepts.
        #[arg(long, default_value = "MIXPEEK_API_KEY")]
        api_key_env: String,
    },
}
