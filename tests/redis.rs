//! Scale-out on Redis, against a real Redis server: two gateway replicas in
//! one test share the cache tier and in-flight calls, and keep serving when
//! Redis goes away.
//!
//! Each test starts its own `redis-server` on an ephemeral port (or uses
//! `REDIS_URL` with a unique key prefix). Without either, they fail and say
//! how to get one, unless `MIXPEEK_GATEWAY_SKIP_REDIS_TESTS=1`.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use mixpeek_gateway::cache::CacheKey;
use mixpeek_gateway::server::{self, RunningGateway};
use mixpeek_gateway::sim::{SimConfig, SimHandle};
use support::*;

const DETAIL: &str = "GET /v1/retrievers/executions/{id}";
const LIST: &str = "POST /v1/retrievers/executions/list";

struct RedisServer {
    child: Option<Child>,
    port: u16,
    url: String,
}

impl RedisServer {
    /// A Redis for this test, or `None` when tests are to be skipped.
    async fn start() -> Option<Self> {
        if std::env::var("MIXPEEK_GATEWAY_SKIP_REDIS_TESTS").as_deref() == Ok("1") {
            eprintln!("skipping: MIXPEEK_GATEWAY_SKIP_REDIS_TESTS=1");
            return None;
        }
        let port = closed_port().await.port();
        let mut server = Self {
            child: None,
            port,
            url: format!("redis://127.0.0.1:{port}"),
        };
        if server.spawn().await {
            return Some(server);
        }
        match std::env::var("REDIS_URL") {
            Ok(url) => Some(Self {
                child: None,
                port: 0,
                url,
            }),
            Err(_) => panic!(
                "these tests need Redis: install redis-server (apt-get install redis-server) \
                 or set REDIS_URL=redis://host:port; MIXPEEK_GATEWAY_SKIP_REDIS_TESTS=1 skips them"
            ),
        }
    }

    /// Starts redis-server on `self.port`; false when it is not installed.
    async fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let Ok(child) = child else { return false };
        self.child = Some(child);
        let client = redis::Client::open(self.url.as_str()).unwrap();
        for _ in 0..200 {
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                if redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .is_ok()
                {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("redis-server did not come up on {}", self.port);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn can_restart(&self) -> bool {
        self.child.is_some()
    }

    async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A unique key prefix, so tests sharing one Redis never meet.
async fn unique_prefix(name: &str) -> String {
    format!(
        "test-{name}-{}-{}:",
        std::process::id(),
        closed_port().await.port()
    )
}

/// The `[redis]` table for `redis`, with `extra` lines.
async fn redis_table(redis: &RedisServer, extra: &str) -> String {
    format!(
        "\n[redis]\nurl = \"{}\"\nkey_prefix = \"{}\"\n{extra}\n",
        redis.url,
        unique_prefix("r").await
    )
}

/// Two replicas from one config, once both have reached Redis.
async fn replicas_from(toml: &str) -> (RunningGateway, RunningGateway) {
    let a = server::spawn(config(toml)).await.unwrap();
    let b = server::spawn(config(toml)).await.unwrap();
    for gateway in [&a, &b] {
        let shared = gateway
            .state
            .cache
            .shared
            .clone()
            .expect("redis configured");
        // The first connection is made in the background: wait for it.
        let probe = CacheKey::detail("ns_probe", "/probe".into());
        let started = Instant::now();
        while (shared.get_entry(&probe).await.is_none() && !shared.is_healthy())
            || !shared.is_subscribed()
        {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "replica never reached redis"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    (a, b)
}

/// Two replicas of the gateway sharing `redis`, in front of one sim.
async fn replicas(
    redis: &RedisServer,
    sim: &SimHandle,
    extra_redis: &str,
) -> (RunningGateway, RunningGateway) {
    let toml = config_toml(&sim.base_url(), "", "timeout_ms = 5000")
        + &redis_table(redis, extra_redis).await;
    replicas_from(&toml).await
}

fn slow_sim(ms: u64) -> SimConfig {
    let mut sim = SimConfig::new(REAL_KEY);
    sim.latency = Duration::from_millis(ms);
    sim
}

#[tokio::test]
async fn one_replica_fetches_the_other_serves_from_the_shared_tier() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let sim = start_sim(SimConfig::new(REAL_KEY)).await;
    let (a, b) = replicas(&redis, &sim, "").await;
    let (ca, cb) = (TestClient::new(a.url()), TestClient::new(b.url()));
    let path = "/v1/retrievers/executions/exec_shared";
    let first = ca.get(path, SEARCH_KEY).await;
    assert_eq!(first.header("x-cache"), "MISS");
    let second = cb.get(path, SEARCH_KEY).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.header("x-cache"), "HIT");
    assert_eq!(second.header("x-cache-tier"), "L2");
    assert_eq!(second.body, first.body);
    // Now in B's memory too.
    let third = cb.get(path, SEARCH_KEY).await;
    assert_eq!(
        (third.header("x-cache"), third.header("x-cache-tier")),
        ("HIT", "")
    );
    assert_eq!(sim.count(DETAIL), 1);
    // Another namespace never sees it.
    assert_eq!(cb.get(path, ADS_KEY).await.header("x-cache"), "MISS");
    assert_eq!(sim.count(DETAIL), 2);
}

#[tokio::test]
async fn fifty_requests_across_two_replicas_make_one_upstream_call() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let sim = start_sim(slow_sim(300)).await;
    let (a, b) = replicas(&redis, &sim, "").await;
    let (ca, cb) = (TestClient::new(a.url()), TestClient::new(b.url()));
    ca.warm(25).await;
    cb.warm(25).await;
    let path = "/v1/retrievers/executions/exec_burst";
    let replies = join_all((0..50).map(|i| {
        if i % 2 == 0 {
            ca.get(path, SEARCH_KEY)
        } else {
            cb.get(path, SEARCH_KEY)
        }
    }))
    .await;
    assert!(replies
        .iter()
        .all(|r| r.status == 200 && r.body == replies[0].body));
    assert_eq!(sim.count(DETAIL), 1);
    assert_eq!(
        replies
            .iter()
            .filter(|r| r.header("x-cache") == "MISS")
            .count(),
        1
    );

    let body = r#"{"status":"completed"}"#;
    let lists = join_all((0..50).map(|i| {
        let client = if i % 2 == 0 { &ca } else { &cb };
        client.post("/v1/retrievers/executions/list?limit=3", SEARCH_KEY, body)
    }))
    .await;
    assert!(lists
        .iter()
        .all(|r| r.status == 200 && r.body == lists[0].body));
    assert_eq!(sim.count(LIST), 1);
}

#[tokio::test]
async fn a_dead_lease_holder_delays_others_by_no_more_than_the_lease() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let sim = start_sim(SimConfig::new(REAL_KEY)).await;
    let (a, _b) = replicas(&redis, &sim, "lease_ms = 600").await;
    let path = "/v1/retrievers/executions/exec_orphan";
    // A replica that died right after taking the lease.
    let shared = a.state.cache.shared.clone().unwrap();
    let lease = shared.lease_key(&CacheKey::detail("ns_search", path.into()));
    let mut conn = redis.connection().await;
    let _: () = redis::cmd("SET")
        .arg(&lease)
        .arg("dead-replica")
        .arg("PX")
        .arg(600)
        .query_async(&mut conn)
        .await
        .unwrap();
    let started = Instant::now();
    let reply = TestClient::new(a.url()).get(path, SEARCH_KEY).await;
    let waited = started.elapsed();
    assert_eq!(reply.status, 200);
    assert_eq!(sim.count(DETAIL), 1);
    assert!(
        waited >= Duration::from_millis(400),
        "it waited for the lease: {waited:?}"
    );
    assert!(
        waited < Duration::from_millis(2500),
        "not for the upstream timeout: {waited:?}"
    );
}

#[tokio::test]
async fn losing_redis_keeps_both_replicas_serving_and_shared_mode_comes_back() {
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    if !redis.can_restart() {
        eprintln!("skipping: needs redis-server to stop and restart Redis");
        return;
    }
    let sim = start_sim(SimConfig::new(REAL_KEY)).await;
    let (a, b) = replicas(&redis, &sim, "timeout_ms = 100").await;
    let (ca, cb) = (TestClient::new(a.url()), TestClient::new(b.url()));
    redis.kill();
    // Both keep answering, alone: each fetches for itself.
    let started = Instant::now();
    for (i, client) in [&ca, &cb].into_iter().enumerate() {
        let reply = client
            .get(
                &format!("/v1/retrievers/executions/exec_down_{i}"),
                SEARCH_KEY,
            )
            .await;
        assert_eq!(reply.status, 200);
        assert_eq!(client.get("/v1/collections", ADS_KEY).await.status, 200);
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "no request waited long on a dead Redis"
    );
    let fallbacks = a
        .state
        .cache
        .shared
        .as_ref()
        .unwrap()
        .metrics
        .fallbacks
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(fallbacks >= 1);
    let text = String::from_utf8(ca.get("/_gateway/metrics", "").await.body.to_vec()).unwrap();
    assert!(text.contains("mixpeek_gateway_redis_up 0"), "{text}");
    assert!(
        !text.contains("mixpeek_gateway_redis_errors_total 0\n"),
        "errors counted"
    );

    // Redis back on the same port: shared mode returns by itself.
    assert!(redis.spawn().await);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut n = 0;
    loop {
        n += 1;
        let path = format!("/v1/retrievers/executions/exec_back_{n}");
        ca.get(&path, SEARCH_KEY).await;
        if cb.get(&path, SEARCH_KEY).await.header("x-cache-tier") == "L2" {
            break;
        }
        assert!(Instant::now() < deadline, "shared mode never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = String::from_utf8(cb.get("/_gateway/metrics", "").await.body.to_vec()).unwrap();
    assert!(text.contains("mixpeek_gateway_redis_up 1"), "{text}");
    assert!(
        !text.contains("mixpeek_gateway_cache_l2_hits_total 0\n"),
        "{text}"
    );
}

#[tokio::test]
async fn a_client_limit_holds_across_replicas() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let sim = start_sim(SimConfig::new(REAL_KEY)).await;
    let toml = config_toml(&sim.base_url(), "", "").replace(
        "namespace = \"ns_search\"\n",
        "namespace = \"ns_search\"\nrate_limit = { requests_per_second = 5, burst = 5 }\n",
    ) + &redis_table(&redis, "").await;
    let (a, b) = replicas_from(&toml).await;
    let (ca, cb) = (TestClient::new(a.url()), TestClient::new(b.url()));
    ca.warm(15).await;
    cb.warm(15).await;
    let started = Instant::now();
    let replies = join_all((0..30).map(|i| {
        if i % 2 == 0 {
            ca.get("/v1/collections", SEARCH_KEY)
        } else {
            cb.get("/v1/collections", SEARCH_KEY)
        }
    }))
    .await;
    let elapsed = started.elapsed();
    let ok = replies.iter().filter(|r| r.status == 200).count();
    let limited: Vec<_> = replies.iter().filter(|r| r.status == 429).collect();
    // One burst of 5 for both replicas together (plus what refilled meanwhile),
    // not 5 each.
    let refilled = (elapsed.as_secs_f64() * 5.0).ceil() as usize;
    assert!(ok >= 5 && ok <= 5 + refilled, "{ok} passed in {elapsed:?}");
    assert!(ok < 10, "the limit was multiplied by the replicas: {ok}");
    for reply in &limited {
        assert!(reply.header("retry-after").parse::<u64>().unwrap() >= 1);
        assert_eq!(reply.header("x-ratelimit-limit"), "5");
        assert!(!reply.header("ratelimit-policy").is_empty());
    }
    assert_eq!(ok + limited.len(), 30);
}

#[tokio::test]
async fn the_upstream_rate_guard_is_shared_by_replicas() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let sim = start_sim(SimConfig::new(REAL_KEY)).await;
    // Two replicas with a gateway-wide 2 calls per second and no queue.
    let toml = config_toml(
        &sim.base_url(),
        "",
        "max_requests_per_second = 2\nqueue_timeout_ms = 0",
    ) + &redis_table(&redis, "").await;
    let (a, b) = replicas_from(&toml).await;
    let (ca, cb) = (TestClient::new(a.url()), TestClient::new(b.url()));
    ca.warm(5).await;
    cb.warm(5).await;
    let before = sim.count("other");
    let started = Instant::now();
    let replies = join_all((0..10).map(|i| {
        if i % 2 == 0 {
            ca.get("/v1/collections", ADS_KEY)
        } else {
            cb.get("/v1/collections", ADS_KEY)
        }
    }))
    .await;
    let elapsed = started.elapsed();
    let upstream = sim.count("other") - before;
    let refilled = (elapsed.as_secs_f64() * 2.0).ceil() as u64;
    assert!(
        upstream >= 2 && upstream <= 2 + refilled,
        "{upstream} calls in {elapsed:?}"
    );
    assert!(
        upstream < 4,
        "the guard was multiplied by the replicas: {upstream}"
    );
    assert_eq!(
        replies.iter().filter(|r| r.status == 200).count() as u64,
        upstream
    );
    assert!(replies.iter().filter(|r| r.status == 429).all(|r| r
        .header("retry-after")
        .parse::<u64>()
        .unwrap()
        >= 1));
}

#[tokio::test]
async fn a_mutation_on_one_replica_retires_the_shared_entry_for_all() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let sim = start_sim(SimConfig::new(REAL_KEY)).await;
    let (a, b) = replicas(&redis, &sim, "").await;
    let (ca, cb) = (TestClient::new(a.url()), TestClient::new(b.url()));
    let path = "/v1/retrievers/ret_1/executions/exec_mut";
    assert_eq!(ca.get(path, SEARCH_KEY).await.header("x-cache"), "MISS");
    // DELETE of the retriever on A: B must not find the entry in Redis.
    let request = ca
        .request(http::Method::DELETE, "/v1/retrievers/ret_1")
        .header("authorization", format!("Bearer {SEARCH_KEY}"))
        .body(Default::default())
        .unwrap();
    assert_eq!(ca.send(request).await.status, 200);
    assert_eq!(cb.get(path, SEARCH_KEY).await.header("x-cache"), "MISS");
    assert_eq!(
        sim.count("GET /v1/retrievers/{retriever_id}/executions/{id}"),
        2
    );
}

#[tokio::test]
async fn fail_mode_open_lets_requests_through_while_redis_is_down() {
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    if !redis.can_restart() {
        return;
    }
    let sim = start_sim(SimConfig::new(REAL_KEY)).await;
    let toml = config_toml(&sim.base_url(), "", "").replace(
        "namespace = \"ns_search\"\n",
        "namespace = \"ns_search\"\nrate_limit = { requests_per_second = 1, burst = 1 }\n",
    ) + &format!(
        "\n[redis]\nurl = \"{}\"\ntimeout_ms = 100\nrate_limit_fail_mode = \"open\"\n",
        redis.url
    );
    let gateway = server::spawn(config(&toml)).await.unwrap();
    redis.kill();
    let client = TestClient::new(gateway.url());
    for _ in 0..4 {
        assert_eq!(client.get("/v1/collections", SEARCH_KEY).await.status, 200);
    }
}

#[tokio::test]
async fn a_mutation_on_one_replica_drops_the_entry_from_the_others_memory() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let sim = start_sim(SimConfig::new(REAL_KEY)).await;
    let (a, b) = replicas(&redis, &sim, "").await;
    let (ca, cb) = (TestClient::new(a.url()), TestClient::new(b.url()));
    let path = "/v1/retrievers/executions/exec_everywhere";
    ca.get(path, SEARCH_KEY).await;
    // B now holds it in memory (L2 hit, stored locally).
    assert_eq!(cb.get(path, SEARCH_KEY).await.header("x-cache-tier"), "L2");
    let key = CacheKey::detail("ns_search", path.into());
    assert!(b.state.cache.store.get(&key).is_some());
    let request = ca
        .request(http::Method::PATCH, path)
        .header("authorization", format!("Bearer {SEARCH_KEY}"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
        .unwrap();
    assert_eq!(ca.send(request).await.status, 200);
    // The invalidation reaches B through Redis pub/sub.
    let started = Instant::now();
    while b.state.cache.store.get(&key).is_some() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "B kept its copy"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(cb.get(path, SEARCH_KEY).await.header("x-cache"), "MISS");
}

#[tokio::test]
async fn answers_nobody_waits_for_are_not_published() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let sim = start_sim(SimConfig::new(REAL_KEY)).await;
    let prefix = unique_prefix("publish").await;
    let toml = config_toml(&sim.base_url(), "", "timeout_ms = 5000")
        + &format!(
            "\n[redis]\nurl = \"{}\"\nkey_prefix = \"{prefix}\"\n",
            redis.url
        );
    let (a, b) = replicas_from(&toml).await;
    let (ca, _b) = (TestClient::new(a.url()), b);
    let conn = redis.connection().await;
    let published = |pattern: String| {
        let mut conn = conn.clone();
        async move {
            redis::cmd("KEYS")
                .arg(pattern)
                .query_async::<Vec<String>>(&mut conn)
                .await
                .unwrap()
        }
    };
    // Distinct executions, still pending (not cacheable): each a flight of
    // its own with nobody waiting on another replica.
    for i in 0..20 {
        let reply = ca
            .get(
                &format!("/v1/retrievers/executions/exec_lone_{i}"),
                SEARCH_KEY,
            )
            .await;
        assert_eq!(reply.status, 200);
    }
    assert_eq!(sim.count(DETAIL), 20);
    assert_eq!(
        published(format!("{prefix}f:*")).await,
        Vec::<String>::new()
    );
    assert_eq!(
        published(format!("{prefix}w:*")).await,
        Vec::<String>::new()
    );
    // (Waiters on another replica still get theirs: see
    // fifty_requests_across_two_replicas_make_one_upstream_call.)
}

#[tokio::test]
async fn a_waiter_still_gets_the_answer_of_a_call_slower_than_the_lease() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    // The call takes longer than a lease: the holder renews its lease, and
    // the waiter its registration, so the answer is still published for it.
    let sim = start_sim(slow_sim(700)).await;
    let (a, b) = replicas(&redis, &sim, "lease_ms = 200").await;
    let (ca, cb) = (TestClient::new(a.url()), TestClient::new(b.url()));
    let path = "/v1/retrievers/executions/exec_slow_flight";
    let replies = join_all([ca.get(path, SEARCH_KEY), cb.get(path, SEARCH_KEY)]).await;
    assert!(replies.iter().all(|r| r.status == 200));
    assert_eq!(sim.count(DETAIL), 1);
}
