//! The official Mixpeek Python SDK (`mixpeek==1.3.783`, installed by
//! `.ci/run`) pointed at the gateway, as the README tells teams to:
//! typed models parse the gateway's answers and its error bodies.
//!
//! Without python3 and the SDK the test fails and says how to get them,
//! unless `MIXPEEK_GATEWAY_SKIP_SDK_TESTS=1`.

mod support;

use std::process::Command;

use support::*;

#[tokio::test]
async fn the_official_python_sdk_works_through_the_gateway() {
    if std::env::var("MIXPEEK_GATEWAY_SKIP_SDK_TESTS").as_deref() == Ok("1") {
        eprintln!("skipping: MIXPEEK_GATEWAY_SKIP_SDK_TESTS=1");
        return;
    }
    let probe = Command::new("python3")
        .args(["-c", "import mixpeek"])
        .output();
    match probe {
        Ok(output) if output.status.success() => {}
        _ => panic!(
            "this test needs python3 with the official SDK: python3 -m pip install mixpeek==1.3.783 \
             (MIXPEEK_GATEWAY_SKIP_SDK_TESTS=1 skips it)"
        ),
    }
    let h = Harness::start().await;
    let url = h.gateway.url();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/check.py");
    let output = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args([script, &url, SEARCH_KEY])
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(
        output.status.success(),
        "SDK check failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // The second detail read was served from cache; every call carried the
    // team's namespace and the real key, never the gateway key.
    assert_eq!(h.sim.count("GET /v1/retrievers/executions/{id}"), 2);
    for request in h.sim.requests() {
        assert_eq!(
            request.headers["authorization"],
            format!("Bearer {REAL_KEY}").as_str()
        );
        assert_eq!(request.headers["x-namespace"], "ns_search");
    }
}
