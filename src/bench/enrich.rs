//! `cdp bench enrich`: intake's answer times for records of a Source a slow PreMatch enricher
//! holds, and of one a failing enricher holds, against records no enricher touches, sent at
//! the same time to one running platform (intake, matcher, enrichers, the reference
//! enrichment service on a real socket). Enrichment is never on intake's path: the three
//! should answer alike.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::generate::{Generator, Population};
use super::stall::{Answers, answers};
use super::{BENCH_KEY, bench_config, open_scratch, payload, stop_platform};
use crate::crd::SecretKeyRef;
use crate::enrich::demo::{self, Behaviour};
use crate::enrich::{EnrichContext, WorkerOptions as EnrichOptions};
use crate::matcher::{BatchArgs, Resolver, spawn_workers};
use crate::pipeline::NamedEnricher;
use crate::runtime::ops::{self, Metrics, Secrets, StartError};

const SIGNING_KEY: &str = "bench-enricher-signing";

#[derive(clap::Args, Clone, Debug)]
pub struct EnrichArgs {
    /// PostgreSQL server URL (a scratch database is created on it); SQLite in a temporary file by default.
    #[arg(long)]
    pub postgres: Option<String>,
    /// Intake requests per second to each of the three Sources, one record each.
    #[arg(long, default_value_t = 100)]
    pub rate: u32,
    /// How long the three send.
    #[arg(long, default_value_t = 15)]
    pub seconds: u64,
    /// How long the slow enricher takes to answer.
    #[arg(long, default_value_t = 2000)]
    pub slow_ms: u64,
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    #[command(flatten)]
    pub batching: BatchArgs,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EnrichReport {
    pub store: &'static str,
    pub rate: u32,
    pub seconds: u64,
    pub slow_ms: u64,
    /// Intake answer times for a Source no enricher names.
    pub none: Answers,
    /// For a Source whose records wait (up to 1 s) for an enricher answering in `slow_ms`.
    pub slow: Answers,
    /// For a Source whose records wait for an enricher answering 503.
    pub failing: Answers,
    /// Records matched by the end (all three Sources', enriched or not).
    pub matched: i64,
    /// Records of the slow enricher matched before it answered.
    pub slow_matched_unenriched: i64,
    /// Enrichments of the failing enricher given up so far (the rest are still retrying).
    pub failing_dead_letters: i64,
}

fn enricher(name: &str, source: &str, url: &str) -> NamedEnricher {
    let yaml = format!(
        "platformRef: {{name: bench}}
stage: PreMatch
sources: [{source}]
maxWaitSeconds: 1
attributes: [street, postcode, city]
endpoint: {{url: '{url}', signingSecretRef: {{name: enrich, key: signing}}, allowInsecureHttp: true, timeoutSeconds: 10}}
write: [{{from: address.street, to: street}}, {{from: address.postcode, to: postcode}}, {{from: address.city, to: city}}]
concurrency: 16
rateLimitPerSecond: 1000
retry: {{maxAttempts: 3, initialBackoffSeconds: 1, maxBackoffSeconds: 2}}"
    );
    NamedEnricher { name: name.into(), spec: serde_saphyr::from_str(&yaml).expect("the bench's enricher parses") }
}

/// The reference service on an ephemeral port; its base URL.
async fn service(behaviour: Behaviour) -> Result<String, StartError> {
    let listener = ops::bind("127.0.0.1:0".parse().expect("addr")).await?;
    let url = format!("http://{}", listener.local_addr().expect("bound"));
    // the requests are not looked at: the channel's receiver is dropped
    let (tx, _) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move { axum::serve(listener, demo::router(SIGNING_KEY, behaviour, tx)).await });
    Ok(url)
}

pub async fn enrich(args: &EnrichArgs) -> Result<EnrichReport, StartError> {
    let slow_url = service(Behaviour { delay: Duration::from_millis(args.slow_ms), fail_status: None }).await?;
    let failing_url = service(Behaviour { delay: Duration::ZERO, fail_status: Some(503) }).await?;
    let mut config = bench_config();
    config.enrichers = vec![enricher("failing", "pos", &failing_url), enricher("slow", "webshop", &slow_url)];
    let (store, file) = open_scratch(args.postgres.as_deref()).await?;
    let metrics = Metrics::new();
    let secrets = Secrets::Values(
        [
            (SecretKeyRef { name: "bench".into(), key: "token".into() }, BENCH_KEY.to_string()),
            (SecretKeyRef { name: "enrich".into(), key: "signing".into() }, SIGNING_KEY.to_string()),
        ]
        .into(),
    );
    let ingest = crate::ingest::IngestState::new(&config, &secrets, store.clone(), metrics.clone())?;
    let (trigger, shutdown) = ops::shutdown_channel();
    let listener = ops::bind("127.0.0.1:0".parse().expect("addr")).await?;
    let base = format!("http://{}/v1/sources", listener.local_addr().expect("bound"));
    tokio::spawn(ops::serve(listener, crate::ingest::router(ingest), shutdown.clone()));
    let resolver = Arc::new(Resolver::new(&config)?);
    let mut tasks = spawn_workers(&store, resolver, metrics.clone(), args.workers, args.batching.worker_options(), &shutdown);
    let enrich = EnrichContext::new(store.clone(), &metrics, EnrichOptions::default());
    tasks.extend(enrich.spawn(enrich.workers(&config, &secrets)?, &shutdown));

    // the three Sources at once, each at `rate`: the same machine, store and matcher load
    let http = reqwest::Client::new();
    let people = |seed| Generator::new(seed, (args.rate as u64 * args.seconds) as usize, 1.0, Population::Country);
    let (mut a, mut b, mut c) = (people(13), people(17), people(19));
    let (mut next_a, mut next_b, mut next_c) =
        (|| payload(&a.next_record().record), || payload(&b.next_record().record), || payload(&c.next_record().record));
    let urls = ["ticketing", "webshop", "pos"].map(|source| format!("{base}/{source}/records"));
    let (none, slow, failing) = tokio::join!(
        answers(&http, &urls[0], args.rate, args.seconds, &mut next_a),
        answers(&http, &urls[1], args.rate, args.seconds, &mut next_b),
        answers(&http, &urls[2], args.rate, args.seconds, &mut next_c),
    );
    // every record's wait is over a second after the last one arrived
    tokio::time::sleep(Duration::from_secs(3)).await;
    let matched = store.counts().await?.records;
    let slow_counts = store.enricher_counts("slow").await?;
    let failing_counts = store.enricher_counts("failing").await?;
    stop_platform(trigger, tasks, store, file).await;
    Ok(EnrichReport {
        store: if args.postgres.is_some() { "postgres" } else { "sqlite" },
        rate: args.rate,
        seconds: args.seconds,
        slow_ms: args.slow_ms,
        none,
        slow,
        failing,
        matched,
        slow_matched_unenriched: slow_counts.matched_unenriched,
        failing_dead_letters: failing_counts.dead_letters,
    })
}
