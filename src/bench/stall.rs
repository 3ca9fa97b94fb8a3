//! `cdp bench stall`: how long a touchpoint waits for intake's `202` while the matcher works
//! through a heavy backlog (a crowded population, every record with candidates to compare,
//! batches sized to their time budget), against the same requests with the matcher idle.
//! Intake shares the store with the matcher: on SQLite, its one writer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::generate::{Generator, Population};
use super::{BENCH_KEY, bench_config, open_scratch, payload, resolved_count, stop_platform};
use crate::runtime::ops::{self, Metrics, Secrets, StartError};
use crate::crd::SecretKeyRef;
use crate::matcher::{BatchArgs, Resolver, spawn_workers};

#[derive(clap::Args, Clone, Debug)]
pub struct StallArgs {
    /// PostgreSQL server URL (a scratch database is created on it); SQLite in a temporary file by default.
    #[arg(long)]
    pub postgres: Option<String>,
    /// Records queued for the matcher before intake is measured.
    #[arg(long, default_value_t = 50_000)]
    pub backlog: usize,
    /// Intake requests per second, one record each, during each phase.
    #[arg(long, default_value_t = 100)]
    pub rate: u32,
    /// Length of each phase.
    #[arg(long, default_value_t = 15)]
    pub seconds: u64,
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    #[command(flatten)]
    pub batching: BatchArgs,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StallReport {
    pub store: &'static str,
    pub backlog: usize,
    pub workers: usize,
    pub batch_budget_ms: u64,
    /// Intake answer times with the matcher idle.
    pub idle: Answers,
    /// The same requests while the matcher drains the backlog.
    pub draining: Answers,
    /// Backlog records the matcher resolved during the draining phase.
    pub resolved_meanwhile: usize,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Answers {
    pub requests: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Requests intake did not answer (a connection failure, a 5xx); an invalid record's
    /// 422 is an answer.
    pub errors: usize,
}

pub async fn stall(args: &StallArgs) -> Result<StallReport, StartError> {
    let config = bench_config();
    let (store, file) = open_scratch(args.postgres.as_deref()).await?;
    let metrics = Metrics::new();
    let secrets = Secrets::Values([(SecretKeyRef { name: "bench".into(), key: "token".into() }, BENCH_KEY.to_string())].into());
    let ingest = crate::ingest::IngestState::new(&config, &secrets, store.clone(), metrics.clone())?;
    let (trigger, shutdown) = ops::shutdown_channel();
    let listener = ops::bind("127.0.0.1:0".parse().expect("addr")).await?;
    let url = format!("http://{}/v1/sources/webshop/records", listener.local_addr().expect("bound"));
    tokio::spawn(ops::serve(listener, crate::ingest::router(ingest), shutdown.clone()));

    // the heavy backlog: few names and postcodes, so every record meets many candidates
    let mut crowd = Generator::new(7, args.backlog, 3.0, Population::Town);
    for chunk in (0..args.backlog).collect::<Vec<_>>().chunks(2000) {
        let records: Vec<_> = chunk.iter().map(|_| crowd.next_record().record).collect();
        store.enqueue(&records).await?;
    }
    // touchpoints' records of other people, a distinct event id each
    let mut arrivals = Generator::new(11, (args.rate as u64 * args.seconds * 2) as usize, 1.0, Population::Country);
    let mut next = || {
        let mut record = arrivals.next_record().record;
        record.source_record_id = format!("touchpoint-{}", record.source_record_id);
        payload(&record)
    };
    let http = reqwest::Client::new();
    let idle = answers(&http, &url, args.rate, args.seconds, &mut next).await;

    let resolver = Arc::new(Resolver::new(&config)?);
    let workers = spawn_workers(&store, resolver, metrics.clone(), args.workers, args.batching.worker_options(), &shutdown);
    // the matcher at full speed first
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = resolved_count(&metrics);
    let draining = answers(&http, &url, args.rate, args.seconds, &mut next).await;
    let resolved_meanwhile = resolved_count(&metrics) - before;
    stop_platform(trigger, workers, store, file).await;
    Ok(StallReport {
        store: if args.postgres.is_some() { "postgres" } else { "sqlite" },
        backlog: args.backlog,
        workers: args.workers,
        batch_budget_ms: args.batching.batch_budget_ms,
        idle,
        draining,
        resolved_meanwhile,
    })
}

/// Post one record per request at `rate` for `seconds`; the answer times.
pub(super) async fn answers(
    http: &reqwest::Client,
    url: &str,
    rate: u32,
    seconds: u64,
    next: &mut impl FnMut() -> serde_json::Value,
) -> Answers {
    let total = rate as u64 * seconds;
    let pace = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for n in 0..total {
        tokio::time::sleep_until((started + pace * n as u32).into()).await;
        let request = http.post(url).bearer_auth(BENCH_KEY).json(&next());
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let answered = matches!(request.send().await, Ok(r) if !r.status().is_server_error());
            (sent.elapsed().as_secs_f64() * 1000.0, answered)
        }));
    }
    let mut times = Vec::with_capacity(tasks.len());
    let mut errors = 0;
    for task in tasks {
        let (ms, answered) = task.await.expect("a request task does not panic");
        times.push(ms);
        errors += usize::from(!answered);
    }
    times.sort_by(f64::total_cmp);
    Answers { requests: times.len(), p50_ms: super::percentile(&times, 0.5), p99_ms: super::percentile(&times, 0.99), max_ms: times.last().copied().unwrap_or(0.0), errors }
}
