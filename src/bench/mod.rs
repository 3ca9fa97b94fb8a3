//! `cdp bench`: throughput of the matcher on the store, and intake-to-API latency under a
//! steady load, on synthetic person records ([`generate`]). Figures are printed as JSON.

pub mod accuracy;
pub mod enrich;
pub mod generate;
pub mod intake;
pub mod kafka;
pub mod reaction;
pub mod stall;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use crate::runtime::auth::Tokens;
use crate::runtime::ops::{self, Metrics, Secrets, StartError};
use crate::crd::SecretKeyRef;
use crate::crd::source::{Delivery, FieldMapping, HttpDelivery, SourceSpec};
use crate::identity::eval::{PairwiseMetrics, pairwise};
use crate::matcher::{BatchArgs, Decision, Resolver, WorkerOptions, spawn_workers};
use crate::pipeline::{MatchingConfig, NamedSource, PipelineConfig};
use crate::store::{Store, StoreError, scratch_database};
use generate::{Generator, Population};

#[derive(clap::Args, Clone, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub kind: BenchKind,
}

#[derive(clap::Subcommand, Clone, Debug)]
pub enum BenchKind {
    /// Records resolved per second by the matcher, on a fresh store.
    Throughput(ThroughputArgs),
    /// p50/p99 from intake `202` to the profile being readable through the API, under a steady rate.
    Latency(LatencyArgs),
    /// Pairwise precision/recall/F1 of the profiles on FEBRL and pseudopeople, default and trained model.
    Accuracy(accuracy::AccuracyArgs),
    /// p50/p99 from a ticket scan's `202` to the signed webhook of the SMS feed arriving.
    Reaction(reaction::ReactionArgs),
    /// Drive a running platform's intake over HTTP with one of its Sources, and count what it accepted.
    Intake(intake::IntakeArgs),
    /// Intake's answer times while the matcher drains a heavy backlog, against an idle matcher.
    Stall(stall::StallArgs),
    /// Kafka intake on librdkafka's mock cluster: topic to queued and to profiles, and p50/p99
    /// from produce to profile under a steady rate.
    Kafka(kafka::KafkaArgs),
    /// Intake's answer times for records a slow or a failing PreMatch enricher holds, against
    /// records no enricher touches.
    Enrich(enrich::EnrichArgs),
}

#[derive(clap::Args, Clone, Debug)]
pub struct ThroughputArgs {
    /// PostgreSQL server URL (a scratch database is created on it); SQLite in a temporary file by default.
    #[arg(long)]
    pub postgres: Option<String>,
    #[arg(long, default_value_t = 100_000)]
    pub records: usize,
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    #[command(flatten)]
    pub batching: BatchArgs,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Who the records are of: `town` crowds everyone into a few names and postcodes.
    #[arg(long, value_enum, default_value_t)]
    pub population: Population,
}

#[derive(clap::Args, Clone, Debug)]
pub struct LatencyArgs {
    /// Records per second sent to intake, one record per request.
    #[arg(long, default_value_t = 2000)]
    pub rate: u32,
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// Measure one record in N (looked up, oldest first, until it is readable).
    #[arg(long, default_value_t = 10)]
    pub sample: u64,
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Who the records are of: `town` crowds everyone into a few names and postcodes.
    #[arg(long, value_enum, default_value_t)]
    pub population: Population,
}

const BENCH_KEY: &str = "bench-intake-key";
const BENCH_TOKEN: &str = "bench-api-token";

/// An HTTP source keyed by the bench's key, whose payload fields are the canonical names of
/// `attributes`.
pub(crate) fn bench_source<'a>(
    name: &str,
    attributes: impl IntoIterator<Item = &'a str>,
    region: &str,
    trust_rank: i32,
    validation: crate::crd::source::ValidationRules,
) -> NamedSource {
    NamedSource {
        name: name.into(),
        spec: SourceSpec {
            platform_ref: Default::default(),
            delivery: Delivery {
                http: Some(HttpDelivery { auth_secret_ref: SecretKeyRef { name: "bench".into(), key: "token".into() } }),
                ..Delivery::default()
            },
            mapping: attributes.into_iter().map(|a| FieldMapping { from: a.into(), to: a.into() }).collect(),
            event_id_field: "id".into(),
            observed_at_field: None,
            validation,
            default_phone_region: Some(region.into()),
            date_order: None,
            trust_rank,
            privacy: Default::default(),
        },
    }
}

/// A platform whose three sources take canonical attribute names as payload fields.
pub fn bench_config() -> PipelineConfig {
    let attributes = [
        "givenName", "familyName", "birthDate", "email", "phone", "street", "postcode", "city", "identifiers.loyaltyId",
    ];
    let source = |name: &str, trust_rank| bench_source(name, attributes, "FR", trust_rank, Default::default());
    PipelineConfig {
        platform: "bench".into(),
        namespace: "default".into(),
        sources: vec![source("pos", 50), source("ticketing", 30), source("webshop", 80)],
        matching: MatchingConfig { policy: None, model: crate::identity::default_model() },
        feeds: Vec::new(),
        scaling: Vec::new(),
        enrichers: Vec::new(),
        api_tokens: None,
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ThroughputReport {
    pub store: &'static str,
    pub records: usize,
    pub population: Population,
    pub people: usize,
    pub workers: usize,
    pub batch: i64,
    pub batch_budget_ms: u64,
    /// Records written to the intake queue per second (enqueue only).
    pub enqueue_per_second: f64,
    /// Records resolved per second by the matcher workers.
    pub resolved_per_second: f64,
    pub resolve_seconds: f64,
    /// CPU time this process used while resolving (all threads, the store's included): on a
    /// busy machine, records per CPU-second is the steadier figure.
    pub resolve_cpu_seconds: f64,
    pub resolved_per_cpu_second: f64,
    pub profiles: i64,
    pub open_reviews: i64,
    /// Pairwise quality of the final profiles against the generator's truth.
    pub pairwise: PairwiseMetrics,
    pub rss_mb: f64,
    /// The rate over each tenth of the run and the memory at its end.
    pub progress: Vec<Checkpoint>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Checkpoint {
    pub resolved: usize,
    pub seconds: f64,
    /// Records resolved per second since the previous checkpoint.
    pub resolved_per_second: f64,
    /// The same per CPU-second of this process: the steadier figure on a busy machine.
    pub resolved_per_cpu_second: f64,
    /// Stored records each record resolved since the previous checkpoint was compared with.
    pub compared_per_record: f64,
    pub rss_mb: f64,
}

/// CPU time (user + system) of this process so far, from `/proc/self/stat` (Linux; 0 elsewhere).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // the fields after the command name, which is in parentheses and may hold spaces
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime: fields 14 and 15 of the line, indices 11 and 12 after the name; 100 ticks/s
    (ticks(11) + ticks(12)) / 100.0
}

fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

pub(crate) async fn open_scratch(postgres: Option<&str>) -> Result<(Store, Option<PathBuf>), StoreError> {
    match postgres {
        Some(url) => Ok((Store::open(&scratch_database(url, "cdp_bench").await?).await?, None)),
        None => {
            let path = std::env::temp_dir().join(format!("cdp-bench-{:016x}.db", rand::random::<u64>()));
            Ok((Store::open(&crate::local::sqlite_url(&path)).await?, Some(path)))
        }
    }
}

/// Stop a benchmark's platform: its tasks, then its store (a scratch SQLite file is removed).
pub(crate) async fn stop_platform(trigger: ops::ShutdownTrigger, tasks: Vec<tokio::task::JoinHandle<()>>, store: Store, file: Option<PathBuf>) {
    trigger.trigger();
    for task in tasks {
        let _ = task.await;
    }
    store.close().await;
    remove_sqlite(file);
}

pub(crate) fn remove_sqlite(path: Option<PathBuf>) {
    if let Some(path) = path {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }
}

/// Records the matcher workers resolved, by their metrics.
fn resolved_count(metrics: &Metrics) -> usize {
    let count = |d: Decision| metrics.matcher_records.get_or_create(&vec![("decision", d.label().into())]).get();
    Decision::ALL.into_iter().map(count).sum::<u64>() as usize
}

pub async fn throughput(args: &ThroughputArgs) -> Result<ThroughputReport, StartError> {
    let config = bench_config();
    let (store, file) = open_scratch(args.postgres.as_deref()).await?;
    let mut generator = Generator::new(args.seed, args.records, 3.0, args.population);
    let mut entities = Vec::with_capacity(args.records);
    let started = Instant::now();
    let mut done = 0;
    while done < args.records {
        let n = (args.records - done).min(2000);
        let chunk: Vec<_> = (0..n).map(|_| generator.next_record()).collect();
        entities.extend(chunk.iter().map(|g| g.entity.to_string()));
        let records: Vec<_> = chunk.into_iter().map(|g| g.record).collect();
        store.enqueue(&records).await?;
        done += n;
    }
    let enqueue_seconds = started.elapsed().as_secs_f64();

    let resolver = Arc::new(Resolver::new(&config)?);
    let (trigger, shutdown) = ops::shutdown_channel();
    let options = args.batching.worker_options();
    let (started, cpu_started) = (Instant::now(), cpu_seconds());
    let metrics = Metrics::new();
    let workers = spawn_workers(&store, resolver, metrics.clone(), args.workers, options, &shutdown);
    // a checkpoint every tenth of the run: does the rate hold, and the memory, as the store grows
    let step = args.records.div_ceil(10);
    let mut progress: Vec<Checkpoint> = Vec::new();
    let mut last = (0usize, 0.0f64, cpu_started, 0.0f64);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        // from the workers' counters: counting the queue in the store, ten times a second,
        // took a ninth of PostgreSQL's statement time from the workers it measures
        let resolved = resolved_count(&metrics).min(args.records);
        let done = resolved == args.records;
        if resolved >= last.0 + step || done {
            let (seconds, cpu, compared) =
                (started.elapsed().as_secs_f64(), cpu_seconds(), metrics.compared_records.get() as f64);
            let checkpoint = Checkpoint {
                resolved,
                seconds,
                resolved_per_second: (resolved - last.0) as f64 / (seconds - last.1).max(1e-3),
                resolved_per_cpu_second: (resolved - last.0) as f64 / (cpu - last.2).max(0.01),
                compared_per_record: (compared - last.3) / (resolved - last.0).max(1) as f64,
                rss_mb: rss_mb(),
            };
            eprintln!("{}", serde_json::to_string(&checkpoint).expect("serialises"));
            last = (resolved, seconds, cpu, compared);
            progress.push(checkpoint);
        }
        if done {
            break;
        }
    }
    let resolve_seconds = started.elapsed().as_secs_f64();
    let resolve_cpu_seconds = cpu_seconds() - cpu_started;
    trigger.trigger();
    for w in workers {
        let _ = w.await;
    }
    let counts = store.counts().await?;
    let clusters: Vec<Vec<usize>> = store
        .clusters()
        .await?
        .into_iter()
        .map(|c| c.into_iter().map(|(_, id)| id[1..].parse::<usize>().expect("generated id")).collect())
        .collect();
    let refs: Vec<&str> = entities.iter().map(String::as_str).collect();
    let report = ThroughputReport {
        store: match args.postgres {
            Some(_) => "postgres",
            None => "sqlite",
        },
        records: args.records,
        population: args.population,
        people: generator.people(),
        workers: args.workers,
        batch: args.batching.batch,
        batch_budget_ms: args.batching.batch_budget_ms,
        enqueue_per_second: args.records as f64 / enqueue_seconds,
        resolved_per_second: args.records as f64 / resolve_seconds,
        resolve_seconds,
        resolve_cpu_seconds,
        resolved_per_cpu_second: args.records as f64 / resolve_cpu_seconds.max(0.01),
        profiles: counts.profiles,
        open_reviews: counts.open_reviews,
        pairwise: pairwise(&refs, &clusters),
        rss_mb: rss_mb(),
        progress,
    };
    store.close().await;
    remove_sqlite(file);
    Ok(report)
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LatencyReport {
    pub target_rate: u32,
    pub achieved_rate: f64,
    pub seconds: u64,
    pub measured: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Intake answers other than 202, by status and message.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub intake_errors: std::collections::BTreeMap<String, usize>,
}

/// Nest dotted attribute names (`identifiers.loyaltyId`) into JSON objects.
pub(crate) fn payload(record: &crate::identity::CanonicalRecord) -> Value {
    let mut v = serde_json::json!({"id": record.source_record_id});
    for (k, val) in &record.attributes {
        match k.split_once('.') {
            Some((outer, inner)) => v[outer][inner] = val.clone().into(),
            None => v[k] = val.clone().into(),
        }
    }
    v
}

/// How long a measured record may take to reach a profile before the run stops waiting for it
/// (and counts it): a run must end even if the pipeline cannot keep up.
pub(crate) const GIVE_UP: Duration = Duration::from_secs(120);

/// Records a sweep of [`watch`] finds still waiting before it ends.
const SWEEP_MISSES: usize = 8;

/// A measured record: where it is, and since when it is timed.
pub(crate) struct Awaited {
    pub source: String,
    pub id: String,
    pub since: Instant,
}

/// Wait until each awaited record is `found` in a profile (or waited [`GIVE_UP`] for): their
/// latencies in milliseconds, and how many were given up on. One task looks the records up,
/// one after another: a poller per record would load the platform with look-ups in
/// proportion to the very latency measured, which grew until a run never ended.
pub(crate) async fn watch<F, Fut>(mut awaited: tokio::sync::mpsc::UnboundedReceiver<Awaited>, found: F) -> (Vec<f64>, usize)
where
    F: Fn(&Awaited) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let (mut pending, mut latencies, mut gave_up) = (Vec::<Awaited>::new(), Vec::new(), 0);
    let mut open = true;
    while open || !pending.is_empty() {
        loop {
            match awaited.try_recv() {
                Ok(record) => pending.push(record),
                Err(tokio::sync::mpsc::error::TryRecvError::Empty) => break,
                Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        // oldest first, and no further than a few records still waiting: records reach profiles
        // about in the order they were sent, so a sweep costs about what arrived since the last
        // (one arriving ahead of its elders is timed when they are: the latency errs high)
        let mut waiting = Vec::with_capacity(pending.len());
        let mut misses = 0;
        for record in pending {
            if misses >= SWEEP_MISSES {
                waiting.push(record);
            } else if found(&record).await {
                latencies.push(record.since.elapsed().as_secs_f64() * 1000.0);
            } else if record.since.elapsed() > GIVE_UP {
                gave_up += 1;
            } else {
                misses += 1;
                waiting.push(record);
            }
        }
        pending = waiting;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (latencies, gave_up)
}

pub async fn latency(args: &LatencyArgs) -> Result<LatencyReport, StartError> {
    let config = bench_config();
    let (store, file) = open_scratch(None).await?;
    let metrics = Metrics::new();
    let resolver = Arc::new(Resolver::new(&config)?);
    let secrets = Secrets::Values([(SecretKeyRef { name: "bench".into(), key: "token".into() }, BENCH_KEY.to_string())].into());
    let ingest = crate::ingest::IngestState::new(&config, &secrets, store.clone(), metrics.clone())?;
    let tokens = Tokens::parse(&format!("bench read {BENCH_TOKEN}")).map_err(StartError::Tokens)?;
    let api = crate::api::ApiState::new(&config, store.clone(), metrics.clone(), resolver.clone(), tokens);
    let (trigger, shutdown) = ops::shutdown_channel();
    let ingest_listener = ops::bind("127.0.0.1:0".parse().expect("addr")).await?;
    let api_listener = ops::bind("127.0.0.1:0".parse().expect("addr")).await?;
    let ingest_url = format!("http://{}", ingest_listener.local_addr().expect("bound"));
    let api_url = format!("http://{}", api_listener.local_addr().expect("bound"));
    tokio::spawn(ops::serve(ingest_listener, crate::ingest::router(ingest), shutdown.clone()));
    tokio::spawn(ops::serve(api_listener, crate::api::router(api), shutdown.clone()));
    let workers = spawn_workers(&store, resolver, metrics, args.workers, WorkerOptions::default(), &shutdown);

    let client = reqwest::Client::new();
    let mut generator = Generator::new(args.seed, (args.rate as u64 * args.seconds) as usize, 3.0, args.population);
    let total = args.rate as u64 * args.seconds;
    let (errors_tx, mut errors_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let (awaited_tx, awaited_rx) = tokio::sync::mpsc::unbounded_channel::<Awaited>();
    let lookups = (client.clone(), api_url.clone());
    let watcher = tokio::spawn(watch(awaited_rx, move |record: &Awaited| {
        let (client, api_url) = lookups.clone();
        let lookup = format!("{api_url}/v1/profiles/lookup?source={}&sourceRecordId={}", record.source, record.id);
        async move {
            match client.get(&lookup).bearer_auth(BENCH_TOKEN).send().await {
                Ok(r) => r.json::<Value>().await.ok().is_some_and(|v| v["profiles"].as_array().is_some_and(|p| !p.is_empty())),
                Err(_) => false,
            }
        }
    }));
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let per_tick = (args.rate / 100).max(1) as u64;
    let mut sent = 0u64;
    let mut posts = Vec::with_capacity(total as usize);
    while sent < total {
        tick.tick().await;
        for _ in 0..per_tick.min(total - sent) {
            let record = generator.next_record().record;
            let measured = sent % args.sample == 0;
            sent += 1;
            let (client, errors_tx, awaited_tx) = (client.clone(), errors_tx.clone(), awaited_tx.clone());
            let url = format!("{ingest_url}/v1/sources/{}/records", record.source);
            posts.push(tokio::spawn(async move {
                let error = match client.post(url).bearer_auth(BENCH_KEY).json(&payload(&record)).send().await {
                    Ok(r) if r.status() == reqwest::StatusCode::ACCEPTED => {
                        // timed from the answer: what a touchpoint waits for after its 202
                        if measured {
                            let _ = awaited_tx.send(Awaited { source: record.source, id: record.source_record_id, since: Instant::now() });
                        }
                        return;
                    }
                    Ok(r) => format!("{} {}", r.status().as_u16(), r.text().await.unwrap_or_default()),
                    Err(e) => e.to_string(),
                };
                let _ = errors_tx.send(error);
            }));
        }
    }
    let send_seconds = started.elapsed().as_secs_f64();
    drop((errors_tx, awaited_tx));
    for post in posts {
        let _ = post.await;
    }
    let mut errors: std::collections::BTreeMap<String, usize> = Default::default();
    while let Some(e) = errors_rx.recv().await {
        *errors.entry(e.chars().take(120).collect()).or_default() += 1;
    }
    let (mut latencies, gave_up) = watcher.await.expect("the watcher does not panic");
    if gave_up > 0 {
        errors.insert(format!("not readable after {} s", GIVE_UP.as_secs()), gave_up);
    }
    trigger.trigger();
    for w in workers {
        let _ = w.await;
    }
    store.close().await;
    remove_sqlite(file);
    latencies.sort_by(f64::total_cmp);
    Ok(LatencyReport {
        target_rate: args.rate,
        achieved_rate: total as f64 / send_seconds,
        seconds: args.seconds,
        measured: latencies.len(),
        p50_ms: percentile(&latencies, 0.50),
        p99_ms: percentile(&latencies, 0.99),
        max_ms: latencies.last().copied().unwrap_or(0.0),
        intake_errors: errors,
    })
}

/// The value below which a fraction `p` of `sorted` lies (0 for none).
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted.get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1))).copied().unwrap_or(0.0)
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Accuracy(#[from] accuracy::AccuracyError),
    #[error(transparent)]
    Intake(#[from] intake::IntakeBenchError),
}

/// `cdp bench`: prints the report as JSON (accuracy: as the markdown table the results record).
pub async fn run(args: BenchArgs) -> Result<(), BenchError> {
    let report = match &args.kind {
        BenchKind::Throughput(a) => serde_json::to_value(throughput(a).await?),
        BenchKind::Latency(a) => serde_json::to_value(latency(a).await?),
        BenchKind::Reaction(a) => serde_json::to_value(reaction::reaction(a).await?),
        BenchKind::Intake(a) => serde_json::to_value(intake::intake(a).await?),
        BenchKind::Stall(a) => serde_json::to_value(stall::stall(a).await?),
        BenchKind::Kafka(a) => serde_json::to_value(kafka::kafka(a).await?),
        BenchKind::Enrich(a) => serde_json::to_value(enrich::enrich(a).await?),
        BenchKind::Accuracy(a) => {
            let (rows, stored) = accuracy::run(a).await?;
            print!("{}", accuracy::table(&rows, &stored));
            return Ok(());
        }
    }
    .expect("reports serialise");
    println!("{}", serde_json::to_string_pretty(&report).expect("serialises"));
    Ok(())
}
