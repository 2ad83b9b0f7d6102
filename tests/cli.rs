//! The binary: config errors stop startup with one line naming the key and
//! exit code 2, `check-config` prints no secret, and a full run's logs never
//! contain a key.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use http::Method;
use http_body_util::Full;
use mixpeek_gateway::sim::SimConfig;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_mixpeek-gateway");

fn write_config(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mixpeek-gateway-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn check_config(path: &PathBuf, key: Option<&str>) -> std::process::Output {
    let mut command = Command::new(BIN);
    command
        .arg("check-config")
        .arg("--config")
        .arg(path)
        .env_remove("TEST_MIXPEEK_API_KEY");
    if let Some(key) = key {
        command.env("TEST_MIXPEEK_API_KEY", key);
    }
    command.output().unwrap()
}

fn one_error_line(output: &std::process::Output) -> String {
    assert_eq!(output.status.code(), Some(2), "exit code");
    let stderr = String::from_utf8(output.stderr.clone()).unwrap();
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    stderr
}

#[test]
fn unknown_key_stops_with_exit_2_naming_it() {
    let text = config_toml("http://127.0.0.1:9", "cache_everything = true", "");
    let output = check_config(&write_config("unknown.toml", &text), Some(REAL_KEY));
    let line = one_error_line(&output);
    assert!(line.contains("cache_everything"), "{line}");
    assert!(line.contains("server"), "{line}");
}

#[test]
fn missing_env_var_stops_with_exit_2_naming_it() {
    let text = config_toml("http://127.0.0.1:9", "", "");
    let output = check_config(&write_config("noenv.toml", &text), None);
    let line = one_error_line(&output);
    assert!(line.contains("upstream.api_key_env"), "{line}");
    assert!(line.contains("TEST_MIXPEEK_API_KEY"), "{line}");
}

#[test]
fn malformed_value_stops_with_exit_2_naming_it() {
    let text = config_toml("http://127.0.0.1:9", "max_body_bytes = \"lots\"", "");
    let line = one_error_line(&check_config(
        &write_config("bad.toml", &text),
        Some(REAL_KEY),
    ));
    assert!(line.contains("server.max_body_bytes"), "{line}");
    let text = config_toml("ftp://example.com", "", "");
    let line = one_error_line(&check_config(
        &write_config("scheme.toml", &text),
        Some(REAL_KEY),
    ));
    assert!(line.contains("upstream.base_url"), "{line}");
    // Serve stops the same way.
    let output = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(write_config(
            "bad2.toml",
            &config_toml("http://127.0.0.1:9", "", "").replace("127.0.0.1:0", "nowhere"),
        ))
        .env("TEST_MIXPEEK_API_KEY", REAL_KEY)
        .output()
        .unwrap();
    assert!(one_error_line(&output).contains("server.listen"));
}

#[test]
fn bad_listen_flag_or_env_is_exit_2() {
    let output = Command::new(BIN)
        .args(["check-config", "--listen", "not-an-address"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let output = Command::new(BIN)
        .arg("check-config")
        .env("MIXPEEK_GATEWAY_LISTEN", "x")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn check_config_summarises_without_secrets() {
    let text = config_toml("http://127.0.0.1:9", "", "");
    let output = check_config(&write_config("good.toml", &text), Some(REAL_KEY));
    assert_eq!(output.status.code(), Some(0));
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        stdout.contains("search-team") && stdout.contains("ns_search"),
        "{stdout}"
    );
    assert!(!stdout.contains(REAL_KEY));
}

#[test]
fn shipped_example_config_is_valid() {
    let output = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/config/gateway.toml"))
        .env("MIXPEEK_API_KEY", "sk_example")
        .env_remove("MIXPEEK_GATEWAY_LISTEN")
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // And the config file location comes from the env var too.
    let output = Command::new(BIN)
        .arg("check-config")
        .env(
            "MIXPEEK_GATEWAY_CONFIG",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/gateway.toml"),
        )
        .env("MIXPEEK_API_KEY", "sk_example")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
}

#[tokio::test]
async fn logs_of_a_full_run_never_contain_a_key() {
    let sim = start_sim(SimConfig::new(REAL_KEY)).await;
    let path = write_config("run.toml", &config_toml(&sim.base_url(), "", ""));
    let listen = closed_port().await;
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .args(["--listen", &listen.to_string()])
        .env("TEST_MIXPEEK_API_KEY", REAL_KEY)
        // The most verbose level: whatever any library logs is captured.
        .env("RUST_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Wait for the "listening" line, keeping everything read.
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut logs = String::new();
    let ready = tokio::task::spawn_blocking(move || {
        let mut logs = String::new();
        loop {
            let mut line = String::new();
            if stderr.read_line(&mut line).unwrap() == 0 {
                return (logs, stderr, false);
            }
            logs.push_str(&line);
            if line.contains("mixpeek-gateway listening") {
                return (logs, stderr, true);
            }
        }
    });
    let (start_logs, mut stderr, started) = ready.await.unwrap();
    logs.push_str(&start_logs);
    assert!(started, "gateway did not start: {logs}");

    let client = TestClient::new(format!("http://{listen}"));
    assert_eq!(
        client
            .get("/v1/retrievers/executions/exec_1", SEARCH_KEY)
            .await
            .status,
        200
    );
    assert_eq!(
        client
            .post("/v1/retrievers/executions/list", ADS_KEY, "{}")
            .await
            .status,
        200
    );
    client
        .get("/v1/collections", "gw_wrong_key_123")
        .await
        .assert_error(401, "unauthorized");
    client
        .get("/v1/collections", REAL_KEY)
        .await
        .assert_error(401, "unauthorized");
    let request = client
        .request(Method::GET, "/v1/x")
        .header("authorization", format!("Basic {SEARCH_KEY}"))
        .body(Full::default())
        .unwrap();
    client.send(request).await.assert_error(401, "unauthorized");

    // SIGTERM: graceful shutdown, exit 0.
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit.status.code(), Some(0));
    stderr.read_to_string(&mut logs).unwrap();
    logs.push_str(&String::from_utf8_lossy(&exit.stdout));

    // One access line per request, naming the client but never its key.
    assert!(
        logs.matches("access").count() >= 5 && logs.contains("search-team"),
        "request logs captured: {logs}"
    );
    for secret in [REAL_KEY, SEARCH_KEY, ADS_KEY, "gw_wrong_key_123"] {
        assert!(!logs.contains(secret), "{secret} appears in the logs");
    }
}

/// Reads `child`'s stdout until a line contains `marker`; returns all lines.
async fn read_stdout_until(child: &mut std::process::Child, marker: &'static str) -> Vec<String> {
    let stdout = child.stdout.take().unwrap();
    tokio::task::spawn_blocking(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let done = line.contains(marker);
            lines.push(line);
            if done {
                break;
            }
        }
        lines
    })
    .await
    .unwrap()
}

fn signal(child: &std::process::Child, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn demo_prints_a_working_key_and_curl_line() {
    let listen = closed_port().await;
    let mut child = Command::new(BIN)
        .args(["demo", "--listen", &listen.to_string()])
        .env_remove("MIXPEEK_API_KEY")
        .env(
            "MIXPEEK_GATEWAY_CONFIG",
            "/nonexistent/demo-needs-no-config.toml",
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = read_stdout_until(&mut child, "Ctrl-C stops").await;
    let text = lines.join("\n");
    assert!(text.contains(&format!("http://{listen}")), "{text}");
    let key = lines
        .iter()
        .find_map(|l| l.trim().strip_prefix("demo client key:"))
        .map(|k| k.trim().to_string())
        .expect("demo prints its key");
    let curl = lines
        .iter()
        .find(|l| l.contains("curl"))
        .expect("a curl line");
    assert!(curl.contains(&key) && curl.contains(&format!("http://{listen}/v1/")));

    // What the curl line does, with a real client.
    let client = TestClient::new(format!("http://{listen}"));
    let reply = client.get("/v1/retrievers/executions/exec_42", &key).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["execution_id"], "exec_42");
    assert_eq!(
        client
            .get("/v1/retrievers/executions/exec_42", "wrong")
            .await
            .status,
        401
    );

    signal(&child, "-TERM");
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn sim_subcommand_serves_the_simulated_api() {
    let listen = closed_port().await;
    let mut child = Command::new(BIN)
        .args(["sim", "--listen", &listen.to_string()])
        .env("MIXPEEK_API_KEY", REAL_KEY)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    read_stdout_until(&mut child, "simulated Mixpeek API on").await;
    let client = TestClient::new(format!("http://{listen}"));
    let reply = client
        .get("/v1/retrievers/executions/exec_1", REAL_KEY)
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["status"], "completed");
    assert_eq!(
        client
            .get("/v1/retrievers/executions/exec_1", SEARCH_KEY)
            .await
            .status,
        401
    );
    signal(&child, "-INT");
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
}
