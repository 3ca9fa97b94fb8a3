//! `cdp matcher`: worker tasks that wake on new intake work, claim it and resolve it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::pace::BatchSizer;
use super::{Resolver, claim_and_resolve};
use crate::runtime::load;
use crate::runtime::ops::{self, Metrics, Shutdown, StartError};
use crate::store::{Store, StoreError, now_ms};

#[derive(clap::Args, Clone, Debug)]
pub struct MatcherArgs {
    /// The platform's PipelineConfig (JSON, as the operator mounts it).
    #[arg(long, env = "CDP_CONFIG")]
    pub config: PathBuf,
    /// Address for /healthz, /readyz and /metrics.
    #[arg(long, default_value = "0.0.0.0:8081")]
    pub listen: SocketAddr,
    /// Concurrent workers in this process.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    #[command(flatten)]
    pub batching: BatchArgs,
}

/// How a worker sizes its claims, on the command line.
#[derive(clap::Args, Clone, Debug)]
pub struct BatchArgs {
    /// Most records claimed at a time by one worker.
    #[arg(long, default_value_t = WorkerOptions::default().batch)]
    pub batch: i64,
    /// Time a batch should take, in milliseconds: claims are sized to it at the recent pace.
    #[arg(long, default_value_t = WorkerOptions::default().batch_budget.as_millis() as u64)]
    pub batch_budget_ms: u64,
}

impl BatchArgs {
    pub fn worker_options(&self) -> WorkerOptions {
        WorkerOptions {
            batch: self.batch,
            batch_budget: Duration::from_millis(self.batch_budget_ms),
            ..WorkerOptions::default()
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct WorkerOptions {
    /// Most records claimed at a time.
    pub batch: i64,
    /// Time a batch should take ([`BatchSizer`]).
    pub batch_budget: Duration,
    /// A claim older than this is presumed abandoned by a dead worker.
    pub lease: Duration,
    /// Sleep between queue checks when no wake-up arrives (work queued by another process
    /// on SQLite, or a lost LISTEN connection on PostgreSQL).
    pub idle_poll: Duration,
}

/// Default time a batch should take: long enough to write many records per commit, short
/// enough that intake, waiting for the writer behind it, still answers within a fraction of a
/// second.
const BATCH_BUDGET_MS: u64 = 250;

/// Time a batch may take while intake waits for the same writer ([`Store::intake_shares_writer`]):
/// a touchpoint's `202` waits for at most about one batch. Shorter batches cost the matcher
/// commits, only while intake is active.
const INTAKE_FIRST_BUDGET: Duration = Duration::from_millis(20);

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            batch: 4096,
            batch_budget: Duration::from_millis(BATCH_BUDGET_MS),
            lease: Duration::from_secs(60),
            idle_poll: Duration::from_secs(1),
        }
    }
}

/// One matcher worker.
pub struct Worker {
    store: Store,
    resolver: Arc<Resolver>,
    metrics: Arc<Metrics>,
    name: String,
    options: WorkerOptions,
    sizer: BatchSizer,
}

impl Worker {
    /// A worker claiming under `name` (unique among the store's workers).
    pub fn new(store: Store, resolver: Arc<Resolver>, metrics: Arc<Metrics>, name: String, options: WorkerOptions) -> Worker {
        let sizer = BatchSizer::new(options.batch_budget, options.batch.max(1) as usize);
        Worker { store, resolver, metrics, name, options, sizer }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// How many records the next claim takes at most.
    pub fn next_claim(&self) -> usize {
        self.sizer.next()
    }

    /// Claim and resolve one batch; returns how many records were claimed.
    pub async fn step(&self) -> Result<usize, StoreError> {
        let work = self.metrics.meters.matcher.start();
        let limit = if self.store.intake_shares_writer() {
            self.sizer.next_within(INTAKE_FIRST_BUDGET)
        } else {
            self.sizer.next()
        } as i64;
        let (items, results, held) = claim_and_resolve(&self.store, &self.resolver, &self.name, limit, self.options.lease).await?;
        if items.is_empty() {
            return Ok(0);
        }
        self.sizer.observe(items.len(), held);
        work.finished(items.len() as u64);
        let now = now_ms();
        for (item, result) in items.iter().zip(results) {
            match result {
                Ok(resolved) => {
                    self.metrics.matcher_records.get_or_create(&vec![("decision", resolved.decision.label().into())]).inc();
                    self.metrics.resolve_lag.observe((now - item.received_at_ms).max(0) as f64 / 1000.0);
                    self.metrics.compared_records.inc_by(resolved.compared as u64);
                    self.metrics.review_items.inc_by(resolved.reviews_opened as u64);
                }
                Err(error) => {
                    tracing::warn!(intake_id = item.id, %error, reason = error.reason(), "resolution failed; released for retry");
                    self.metrics.matcher_errors.get_or_create(&vec![("reason", error.reason().into())]).inc();
                    self.store.release(&[item.id], error.reason()).await?;
                }
            }
        }
        Ok(items.len())
    }

    /// Resolve until the queue is empty.
    pub async fn drain(&self) -> Result<usize, StoreError> {
        let mut total = 0;
        loop {
            match self.step().await? {
                0 => return Ok(total),
                n => total += n,
            }
        }
    }

    /// Work until shutdown, sleeping while the queue is empty.
    pub async fn run(self, shutdown: Shutdown) {
        while !shutdown.requested() {
            let signal = match self.store.work_signal().await {
                Ok(signal) => signal,
                Err(error) => {
                    tracing::warn!(worker = %self.name, %error, "cannot listen for work; polling");
                    Arc::new(tokio::sync::Notify::new())
                }
            };
            // registered before looking at the queue, so a wake-up in between is not lost
            let notified = signal.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let claimed = match self.step().await {
                Ok(n) => n,
                Err(error) => {
                    tracing::warn!(worker = %self.name, %error, reason = error.reason(), "matcher step failed");
                    self.metrics.matcher_errors.get_or_create(&vec![("reason", error.reason().into())]).inc();
                    0
                }
            };
            if claimed == 0 {
                tokio::select! {
                    _ = &mut notified => {}
                    _ = tokio::time::sleep(self.options.idle_poll) => {}
                    _ = shutdown.clone().wait() => {}
                }
            }
        }
    }
}

/// Start `count` workers sharing one resolver; they stop on shutdown.
pub fn spawn_workers(
    store: &Store,
    resolver: Arc<Resolver>,
    metrics: Arc<Metrics>,
    count: usize,
    options: WorkerOptions,
    shutdown: &Shutdown,
) -> Vec<tokio::task::JoinHandle<()>> {
    let spawn = worker_spawner(store, resolver, metrics, options);
    (0..count).map(|_| spawn(shutdown.clone())).collect()
}

/// A function that starts one more worker, running until the shutdown it is given; worker
/// names stay unique within the process (claims are recorded under them).
pub fn worker_spawner(
    store: &Store,
    resolver: Arc<Resolver>,
    metrics: Arc<Metrics>,
    options: WorkerOptions,
) -> impl Fn(Shutdown) -> tokio::task::JoinHandle<()> + Send + Sync + 'static {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
    let id: u32 = rand::random();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let store = store.clone();
    move |shutdown| {
        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let worker = Worker::new(store.clone(), resolver.clone(), metrics.clone(), format!("{host}-{id:08x}-{i}"), options);
        tokio::spawn(worker.run(shutdown))
    }
}

/// Sample the intake queue length (what the scaler reads) and the review backlog into the metrics.
pub fn spawn_queue_gauge(store: Store, metrics: Arc<Metrics>, shutdown: Shutdown) {
    tokio::spawn(async move {
        while !shutdown.requested() {
            // the queue alone: the other counts scan whole tables
            if let Ok(queued) = store.counts_queued().await {
                metrics.intake_queued.set(queued);
            }
            if let Ok(open) = store.counts_open_reviews().await {
                metrics.review_open.set(open);
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                _ = shutdown.clone().wait() => {}
            }
        }
    });
}

/// `cdp matcher`.
pub async fn run(args: MatcherArgs) -> Result<(), StartError> {
    let config = ops::load_config(&args.config)?;
    let store = ops::open_store_from_env().await?;
    let resolver = Arc::new(Resolver::new(&config)?);
    let metrics = Metrics::new();
    let (trigger, shutdown) = ops::shutdown_channel();
    ops::on_signal(trigger, std::time::Duration::ZERO);
    let listener = ops::bind(args.listen).await?;
    let options = args.batching.worker_options();
    metrics.meters.matcher.set_slots(args.workers as u32);
    crate::privacy::retention::spawn(&store, &config, resolver.clone(), shutdown.clone());
    let workers = spawn_workers(&store, resolver, metrics.clone(), args.workers, options, &shutdown);
    spawn_queue_gauge(store.clone(), metrics.clone(), shutdown.clone());
    tracing::info!(platform = %config.platform, workers = args.workers, listen = %args.listen, "matcher started");
    let load = load::router(store.clone(), &metrics, crate::scaling::Workload::Matcher);
    let router = ops::ops_router(store.clone(), metrics, shutdown.clone()).merge(load);
    if let Err(error) = ops::serve(listener, router, shutdown).await {
        tracing::error!(%error, "ops server failed");
    }
    for w in workers {
        let _ = w.await;
    }
    store.close().await;
    Ok(())
}
