//! `cdp bench reaction`: from a ticket scan's `202` at intake to the signed webhook of the SMS
//! feed arriving at a receiver, under a steady scan rate, with patrons already in the store.
//! Everything runs in this process over local sockets: intake, matcher workers, the feeds and
//! a signature-checking receiver ([`crate::feeds::receive`]). With `--crash`, the feeds are
//! killed just before the first scan, the way a kill -9 leaves the store (their tasks gone,
//! their leases not released), and started again: the scans are posted right after a restart.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::sync::mpsc;

use super::generate::Generator;
use super::{BENCH_KEY, bench_config, open_scratch, payload, remove_sqlite};
use crate::runtime::ops::{self, Metrics, Secrets, StartError};
use crate::crd::SecretKeyRef;
use crate::crd::source::FieldMapping;
use crate::feeds::{FeedsContext, WorkerOptions};
use crate::identity::CanonicalRecord;
use crate::matcher::{Resolver, WorkerOptions as MatcherOptions, spawn_workers};
use crate::pipeline::{NamedFeed, PipelineConfig};
use crate::store::Store;

#[derive(clap::Args, Clone, Debug)]
pub struct ReactionArgs {
    /// Ticket scans per second sent to intake, one per request.
    #[arg(long, default_value_t = 2000)]
    pub rate: u32,
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// Patrons in the store before the scans start.
    #[arg(long, default_value_t = 10_000)]
    pub patrons: usize,
    /// Matcher workers.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// PostgreSQL server URL (a scratch database is created on it); SQLite in a temporary file by default.
    #[arg(long)]
    pub postgres: Option<String>,
    /// How long to wait after the last scan for the webhooks still on their way.
    #[arg(long, default_value_t = 120)]
    pub drain_seconds: u64,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Kill the feeds without releasing their leases just before the first scan, and start
    /// them again at once.
    #[arg(long)]
    pub crash: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReactionReport {
    pub store: &'static str,
    pub patrons: usize,
    pub seed_seconds: f64,
    pub target_rate: u32,
    pub achieved_rate: f64,
    pub seconds: u64,
    /// Scans accepted with 202.
    pub accepted: usize,
    /// Of those, webhooks received (signature checked) before the drain ended.
    pub delivered: usize,
    /// Scan `202` → webhook received.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// The feed's own part: event committed in the outbox → webhook received.
    pub feed_p50_ms: f64,
    pub feed_p99_ms: f64,
    /// The feeds were killed and started again just before the first scan (`--crash`).
    pub restarted: bool,
    /// Scans posted in the first second (right after the restart with `--crash`): how many
    /// were delivered, and scan `202` → webhook received.
    pub first_second_delivered: usize,
    pub first_second_p50_ms: f64,
    pub first_second_p99_ms: f64,
    pub first_second_max_ms: f64,
    /// Intake answers other than 202, by status and message.
    pub intake_errors: std::collections::BTreeMap<String, usize>,
}

const SIGNING_KEY: &str = "bench-signing-key";

/// When a scan was posted, when it was accepted and when its webhook arrived (the webhook may
/// come before the answer).
#[derive(Default)]
struct Timing {
    posted: Option<Instant>,
    accepted: Option<Instant>,
    arrived: Option<Instant>,
    feed_ms: Option<f64>,
}

/// The bench platform with tiers and SMS consent mapped, and the SMS feed of the samples.
fn reaction_config(receiver: &str) -> PipelineConfig {
    let mut config = bench_config();
    for s in &mut config.sources {
        for a in ["attributes.tier", "consents.sms"] {
            s.spec.mapping.push(FieldMapping { from: a.into(), to: a.into() });
        }
    }
    let spec = format!(
        "platformRef: {{name: bench}}\n\
         destination:\n  webhook: {{url: '{receiver}/v1/welcome', signingSecretRef: {{name: bench, key: signing}}, allowInsecureHttp: true, timeoutSeconds: 3}}\n\
         events: [record.received]\n\
         triggers:\n- {{field: event.source, op: equals, value: ticketing}}\n- {{field: profile.attributes.tier, op: equals, value: patron}}\n\
         attributes: [givenName, phone, attributes.tier]\nrequiredConsent: sms\n"
    );
    config.feeds = vec![NamedFeed { name: "sms-gateway".into(), spec: serde_saphyr::from_str(&spec).expect("the bench feed parses") }];
    config
}

/// Patrons from the generator, sent by the tills and the web shop (not the gates, so seeding
/// triggers no welcome message).
fn patrons(seed: u64, n: usize) -> Vec<CanonicalRecord> {
    // the town: the people its recorded figures were measured with
    let mut generator = Generator::new(seed, n, 1.0, super::generate::Population::Town);
    (0..n)
        .map(|i| {
            let mut record = generator.next_record().record;
            record.source = if i % 2 == 0 { "pos" } else { "webshop" }.into();
            record.attributes.insert("attributes.tier".into(), "patron".into());
            record.attributes.insert("consents.sms".into(), "true".into());
            record
        })
        .collect()
}

async fn seed(store: &Store, config: &PipelineConfig, records: &[CanonicalRecord], workers: usize) -> Result<f64, StartError> {
    let started = Instant::now();
    for chunk in records.chunks(2000) {
        store.enqueue(chunk).await?;
    }
    let (stop, shutdown) = ops::shutdown_channel();
    let tasks = spawn_workers(store, Arc::new(Resolver::new(config)?), Metrics::new(), workers, MatcherOptions::default(), &shutdown);
    while store.counts_queued().await? > 0 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.trigger();
    for t in tasks {
        let _ = t.await;
    }
    Ok(started.elapsed().as_secs_f64())
}

pub async fn reaction(args: &ReactionArgs) -> Result<ReactionReport, StartError> {
    let (store, file) = open_scratch(args.postgres.as_deref()).await?;
    let (received_tx, mut received) = mpsc::unbounded_channel();
    let receiver_listener = ops::bind("127.0.0.1:0".parse().expect("addr")).await?;
    let receiver_url = format!("http://{}", receiver_listener.local_addr().expect("bound"));
    let config = reaction_config(&receiver_url);
    let patrons = patrons(args.seed, args.patrons);
    let seed_seconds = seed(&store, &config, &patrons, args.workers).await?;

    let (trigger, shutdown) = ops::shutdown_channel();
    tokio::spawn(ops::serve(receiver_listener, crate::feeds::receive::router(&[SIGNING_KEY.to_string()], 60, received_tx), shutdown.clone()));
    let secrets = Secrets::Values(
        [
            (SecretKeyRef { name: "bench".into(), key: "token".into() }, BENCH_KEY.to_string()),
            (SecretKeyRef { name: "bench".into(), key: "signing".into() }, SIGNING_KEY.to_string()),
        ]
        .into(),
    );
    let metrics = Metrics::new();
    // as in a cluster, the feeds do not share intake's connections
    let feeds = FeedsContext::new(store.with_own_pool().await?, &metrics, WorkerOptions::default());
    let (mut feed_tasks, _load) = feeds.spawn(feeds.workers(&config, &secrets, None)?, &shutdown);
    // the feed reads past the seeding events (none selected) before the clock starts
    while store.feed_backlog("sms-gateway").await?.unread > 0 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if args.crash {
        for task in &feed_tasks {
            task.abort();
        }
        let restarted = FeedsContext::new(store.with_own_pool().await?, &metrics, WorkerOptions::default());
        feed_tasks = restarted.spawn(restarted.workers(&config, &secrets, None)?, &shutdown).0;
    }

    let ingest = crate::ingest::IngestState::new(&config, &secrets, store.clone(), metrics.clone())?;
    let ingest_listener = ops::bind("127.0.0.1:0".parse().expect("addr")).await?;
    let ingest_url = format!("http://{}", ingest_listener.local_addr().expect("bound"));
    tokio::spawn(ops::serve(ingest_listener, crate::ingest::router(ingest), shutdown.clone()));
    let resolver = Arc::new(Resolver::new(&config)?);
    let workers = spawn_workers(&store, resolver, metrics, args.workers, MatcherOptions::default(), &shutdown);

    let timings: Arc<Mutex<HashMap<String, Timing>>> = Arc::default();
    let arrivals = {
        let timings = timings.clone();
        tokio::spawn(async move {
            while let Some(r) = received.recv().await {
                let now = Instant::now();
                let Some(scan) = r.message["data"]["sourceRecordId"].as_str() else { continue };
                let feed_ms = r.message["createdAtMs"].as_i64().map(|at| (crate::store::now_ms() - at) as f64);
                let mut timings = timings.lock().expect("timings lock");
                let t = timings.entry(scan.to_string()).or_default();
                if t.arrived.is_none() {
                    t.arrived = Some(now);
                    t.feed_ms = feed_ms;
                }
            }
        })
    };

    let client = reqwest::Client::new();
    let (errors_tx, mut errors_rx) = mpsc::unbounded_channel::<String>();
    let mut rng = StdRng::seed_from_u64(args.seed);
    let total = args.rate as u64 * args.seconds;
    let per_tick = (args.rate / 100).max(1) as u64;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let started = Instant::now();
    let mut sent = 0u64;
    let mut requests = Vec::with_capacity(total as usize);
    while sent < total {
        tick.tick().await;
        for _ in 0..per_tick.min(total - sent) {
            let patron = &patrons[rng.random_range(0..patrons.len())];
            let mut scan = patron.clone();
            scan.source = "ticketing".into();
            scan.source_record_id = format!("scan-{sent}");
            sent += 1;
            let (client, url, timings, errors) = (client.clone(), ingest_url.clone(), timings.clone(), errors_tx.clone());
            timings.lock().expect("timings lock").entry(scan.source_record_id.clone()).or_default().posted = Some(Instant::now());
            requests.push(tokio::spawn(async move {
                let response = client.post(format!("{url}/v1/sources/ticketing/records")).bearer_auth(BENCH_KEY).json(&payload(&scan)).send().await;
                match response {
                    Ok(r) if r.status() == reqwest::StatusCode::ACCEPTED => {
                        timings.lock().expect("timings lock").entry(scan.source_record_id).or_default().accepted = Some(Instant::now());
                    }
                    Ok(r) => {
                        let _ = errors.send(format!("{} {}", r.status().as_u16(), r.text().await.unwrap_or_default()));
                    }
                    Err(e) => {
                        let _ = errors.send(e.to_string());
                    }
                }
            }));
        }
    }
    let send_seconds = started.elapsed().as_secs_f64();
    for r in requests {
        let _ = r.await;
    }
    drop(errors_tx);
    let mut intake_errors: std::collections::BTreeMap<String, usize> = Default::default();
    while let Some(e) = errors_rx.recv().await {
        *intake_errors.entry(e.chars().take(120).collect()).or_default() += 1;
    }
    let deadline = Instant::now() + Duration::from_secs(args.drain_seconds);
    loop {
        let waiting = timings.lock().expect("timings lock").values().filter(|t| t.accepted.is_some() && t.arrived.is_none()).count();
        if waiting == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    trigger.trigger();
    for t in workers.into_iter().chain(feed_tasks) {
        let _ = t.await;
    }
    arrivals.abort();
    store.close().await;
    remove_sqlite(file);

    let timings = timings.lock().expect("timings lock");
    let accepted = timings.values().filter(|t| t.accepted.is_some()).count();
    let mut reaction: Vec<f64> = timings
        .values()
        .filter_map(|t| Some(t.arrived?.saturating_duration_since(t.accepted?).as_secs_f64() * 1000.0))
        .collect();
    let mut feed: Vec<f64> = timings.values().filter(|t| t.accepted.is_some()).filter_map(|t| t.feed_ms).collect();
    let first_second = started + Duration::from_secs(1);
    let mut early: Vec<f64> = timings
        .values()
        .filter(|t| t.posted.is_some_and(|at| at < first_second))
        .filter_map(|t| Some(t.arrived?.saturating_duration_since(t.accepted?).as_secs_f64() * 1000.0))
        .collect();
    reaction.sort_by(f64::total_cmp);
    feed.sort_by(f64::total_cmp);
    early.sort_by(f64::total_cmp);
    Ok(ReactionReport {
        store: if args.postgres.is_some() { "postgres" } else { "sqlite" },
        patrons: args.patrons,
        seed_seconds,
        target_rate: args.rate,
        achieved_rate: total as f64 / send_seconds,
        seconds: args.seconds,
        accepted,
        delivered: reaction.len(),
        p50_ms: percentile(&reaction, 0.50),
        p99_ms: percentile(&reaction, 0.99),
        max_ms: reaction.last().copied().unwrap_or(0.0),
        feed_p50_ms: percentile(&feed, 0.50),
        feed_p99_ms: percentile(&feed, 0.99),
        restarted: args.crash,
        first_second_delivered: early.len(),
        first_second_p50_ms: percentile(&early, 0.50),
        first_second_p99_ms: percentile(&early, 0.99),
        first_second_max_ms: early.last().copied().unwrap_or(0.0),
        intake_errors,
    })
}

/// The `p` quantile of sorted values (0 when empty).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted.get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1))).copied().unwrap_or(0.0)
}
