//! The `mixpeek-gateway` binary: parse arguments, load config, start logging,
//! install the TLS crypto provider, run.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use mixpeek_gateway::cli::{Cli, Command};
use mixpeek_gateway::config::{Config, LogFormat};
use mixpeek_gateway::{demo, server, sim, stack, telemetry};

#[path = "server/alloc.rs"]
mod alloc;

/// mimalloc (see `server/alloc.rs`).
#[global_allocator]
static GLOBAL: alloc::MiMalloc = alloc::MiMalloc;

/// Exit code for configuration errors, as the interface specifies.
const CONFIG_ERROR: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One process-wide provider, chosen explicitly: ring builds with gcc alone.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli))
}

async fn run(mut cli: Cli) -> ExitCode {
    let command = cli.command.take().unwrap_or(Command::Serve);
    // Held until the command ends: dropping it writes out the queued lines.
    let _log = (!matches!(command, Command::Serve)).then(|| telemetry::init(LogFormat::Text));
    match command {
        Command::Serve => {
            let Some(config) = load(&cli) else {
                return ExitCode::from(CONFIG_ERROR);
            };
            let _log = telemetry::init(config.log.format);
            serve(config, cli.config.clone()).await
        }
        Command::CheckConfig => match load(&cli) {
            Some(config) => {
                println!("config {} is valid", cli.config.display());
                print!("{}", config.summary());
                ExitCode::SUCCESS
            }
            None => ExitCode::from(CONFIG_ERROR),
        },
        Command::Demo => match demo::run(cli.listen).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: demo failed: {error}");
                ExitCode::FAILURE
            }
        },
        Command::Sim {
            latency_ms,
            complete_after_ms,
            api_key_env,
        } => {
            let Ok(key) = std::env::var(&api_key_env) else {
                eprintln!("error: --api-key-env: environment variable {api_key_env} is not set");
                return ExitCode::from(CONFIG_ERROR);
            };
            let listen = cli.listen.unwrap_or_else(|| ([127, 0, 0, 1], 8081).into());
            let mut config = sim::SimConfig::new(key);
            config.latency = Duration::from_millis(latency_ms);
            config.complete_after = Duration::from_millis(complete_after_ms);
            let result = async {
                let listener = tokio::net::TcpListener::bind(listen).await?;
                println!("simulated Mixpeek API on http://{}", listener.local_addr()?);
                sim::run(config, listener).await
            };
            match result.await {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("error: sim: {error}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Loads the config, applying `--listen`; prints one line and returns
/// `None` on error.
fn load(cli: &Cli) -> Option<Config> {
    match Config::load(&cli.config) {
        Ok(mut config) => {
            if let Some(listen) = cli.listen {
                config.server.listen = listen;
            }
            Some(config)
        }
        Err(error) => {
            eprintln!("error: config {}: {error}", cli.config.display());
            None
        }
    }
}

async fn serve(config: Config, path: std::path::PathBuf) -> ExitCode {
    let listen = config.server.listen;
    let state = match stack::AppState::with_path(config, Some(path)) {
        Ok(state) => state,
        Err(error) => {
            eprintln!("error: cannot build the upstream client: {error}");
            return ExitCode::FAILURE;
        }
    };
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("error: server.listen: cannot listen on {listen}: {error}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        %listen,
        upstream = %state.config.upstream.base_url,
        clients = state.clients.load().len(),
        "mixpeek-gateway listening"
    );
    server::reload_on_sighup(state.reloader.clone());
    match server::serve(listener, state, server::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
