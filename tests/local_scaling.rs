//! `cdp local` sizes its matcher pool with the scaling decision: a burst through intake (real
//! sockets, the sample platform, in process) grows the pool, and it shrinks once drained.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cdp_operator::local::{LocalArgs, PlatformArgs, load_platform, run_with};
use serde_json::json;

fn free_port() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// The matcher pool size `cdp local` reports in its metrics.
async fn pool_size(client: &reqwest::Client, ingest: &str) -> Option<u32> {
    let text = client.get(format!("{ingest}/metrics")).send().await.ok()?.text().await.ok()?;
    text.lines().find_map(|l| l.strip_prefix("cdp_load_slots{workload=\"matcher\"} ")?.trim().parse().ok())
}

async fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_grows_the_matcher_pool_and_it_shrinks_once_drained() {
    // The pool logs each resize with its reason: shown when the test fails.
    let _ = tracing_subscriber::fmt().with_env_filter("cdp_operator::local=info").with_test_writer().try_init();
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/samples");
    let loaded = load_platform(&samples, None).unwrap();
    let webshop = loaded.config.source("webshop").unwrap();
    let key = loaded.secrets.get(&webshop.spec.delivery.http.as_ref().unwrap().auth_secret_ref).unwrap();
    let data = tempfile::tempdir().unwrap();
    let (ingest_addr, api_addr) = (free_port(), free_port());
    let args = LocalArgs {
        platform: PlatformArgs { dir: Some(samples), platform: None, config: None },
        data: data.path().join("local.db"),
        listen_ingest: ingest_addr,
        listen_api: api_addr,
        workers: 1,
        imports: Vec::<(String, PathBuf)>::new(),
        feeds_to: None,
    };
    // The sample policy's matcher bounds (1..8), with windows short enough for a test and
    // without its peak windows (a Saturday afternoon would otherwise hold a floor of 3).
    let local = run_with(args, |mut options| {
        options.interval = Duration::from_millis(250);
        options.window = Duration::from_secs(2);
        options.windows.clear();
        options.policy.catch_up_seconds = 2;
        options.policy.scale_down_stabilization_seconds = 2;
        options.tuning.decision_interval_seconds = 1;
        options.tuning.trend_window_seconds = 4;
        options
    });
    // `cdp local` runs beside the test in this task; it stops when the test body ends.
    tokio::select! {
        result = local => panic!("cdp local stopped: {result:?}"),
        () = drive_a_burst(ingest_addr, api_addr, key, data.path().join("local.db")) => {}
    }
}

async fn drive_a_burst(ingest_addr: std::net::SocketAddr, api_addr: std::net::SocketAddr, key: String, db: PathBuf) {

    let ingest = format!("http://{ingest_addr}");
    let client = reqwest::Client::new();
    assert_eq!(wait_for("cdp local to listen", Duration::from_secs(30), async || pool_size(&client, &ingest).await).await, 1);
    // the load the operator's scaler reads from pods, here too: intake's, and the matcher pool's
    for (listener, workload) in [(ingest.clone(), "ingest"), (format!("http://{api_addr}"), "matcher")] {
        let report: serde_json::Value = client.get(format!("{listener}/v1/load")).send().await.unwrap().json().await.unwrap();
        assert_eq!(report["workload"], workload, "{report}");
    }

    // Four touchpoints at once, 10 000 records: faster than one worker resolves them.
    let post = |batch: usize| {
        let records: Vec<_> = (0..500)
            .map(|i| {
                let n = batch * 500 + i;
                json!({"event_id": format!("burst-{n}"), "account": {"id": format!("C-{n}"), "email": format!("visitor{n}@example.com"), "family_name": format!("Visitor{n}")}})
            })
            .collect();
        let request = client.post(format!("{ingest}/v1/sources/webshop/records")).bearer_auth(&key).json(&records);
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
        }
    };
    futures::future::join_all((0..4).map(|client_n| {
        let batches: Vec<_> = (0..5).map(|b| post(client_n * 5 + b)).collect();
        async move {
            for batch in batches {
                batch.await;
            }
        }
    }))
    .await;

    let grown = wait_for("the pool to grow", Duration::from_secs(60), async || {
        pool_size(&client, &ingest).await.filter(|n| *n > 1)
    })
    .await;
    assert!(grown <= 8, "never beyond the policy's maximum: {grown}");
    // Drained, the pool goes back to the policy's minimum, step by step.
    wait_for("the pool to shrink to its minimum", Duration::from_secs(120), async || {
        pool_size(&client, &ingest).await.filter(|n| *n == 1)
    })
    .await;
    let store = cdp_operator::store::Store::open(&format!("sqlite:{}", db.display())).await.unwrap();
    assert_eq!(store.counts().await.unwrap().queued, 0, "shrinks only once the backlog is drained");
    assert_eq!(store.counts().await.unwrap().records, 10_000, "every record resolved, none lost while workers stopped");
}
