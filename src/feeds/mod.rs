//! `cdp feeds`: one worker per Feed reads the outbox after the feed's own cursor, selects and
//! minimises events ([`select`]), and delivers them at least once ([`deliver`]) with retries,
//! backoff and a dead-letter list. Feeds never wait for one another: each has its own cursor,
//! its own kept deliveries and its own task. Within a feed, events of one profile go out in
//! order; a retrying event holds back the later events of its profile only. One replica works a
//! feed at a time, under a short lease ([`lease`]); every message carries an idempotency key
//! unique to its store, feed and event ([`keys`]).

pub mod deliver;
pub mod keys;
pub mod lease;
pub mod receive;
pub mod select;
pub mod status;

/// Signatures moved below the services, which share them; the path stays for receivers.
pub use crate::runtime::sign;
pub use crate::runtime::backoff;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use futures::StreamExt;
use tokio::sync::OnceCell;
use tokio::time::Instant;

use self::deliver::{DeliveryError, Destination, DestinationError, Outgoing};
use self::keys::EventKeys;
use self::lease::{FeedClaim, Lease};
use crate::runtime::outage::{OutageLog, Report};
use self::select::{Selector, SelectorError};
use self::status::{FeedBoard, FeedMetrics, Sample, feed_label, load_report};
use crate::runtime::ops::{self, Metrics, Secrets, Shutdown, StartError};
use crate::crd::feed::DeliveryPolicy;
use crate::pipeline::PipelineConfig;
use crate::scaling::load::LoadReport;
use crate::store::{Delivery, FeedProgress, NewDelivery, RetryOutcome, Store, StoreError, now_ms};

#[derive(clap::Args, Clone, Debug)]
pub struct FeedsArgs {
    /// The platform's PipelineConfig (JSON, as the operator mounts it).
    #[arg(long, env = "CDP_CONFIG")]
    pub config: PathBuf,
    /// Address for /v1/load, /healthz, /readyz and /metrics.
    #[arg(long, default_value = "0.0.0.0:8082")]
    pub listen: SocketAddr,
    /// Outbox events read at a time by one feed.
    #[arg(long, default_value_t = 500)]
    pub batch: i64,
    /// Deliveries in flight at a time per feed (distinct profiles).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
}

#[derive(Clone, Copy, Debug)]
pub struct WorkerOptions {
    pub batch: i64,
    pub concurrency: usize,
    /// How long a feed stays with a replica after its last lease renewal: after a crash,
    /// another replica takes the feed over within this. Renewed every fifth of it, whatever
    /// the sends in flight take ([`lease`]).
    pub lease: Duration,
    /// Sleep between outbox checks when no wake-up arrives (events committed by another
    /// process on SQLite, a lost LISTEN connection, retries coming due).
    pub idle_poll: Duration,
    /// How often lag and dead letters are sampled for metrics and `/v1/load`.
    pub status_interval: Duration,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            batch: 500,
            concurrency: 64,
            lease: Duration::from_secs(5),
            idle_poll: Duration::from_secs(1),
            status_interval: Duration::from_secs(5),
        }
    }
}

/// Why a feed cannot run.
#[derive(Debug, thiserror::Error)]
pub enum FeedsError {
    #[error("feed {feed}: {source}")]
    Selector { feed: String, source: SelectorError },
    #[error("feed {feed}: {source}")]
    Destination { feed: String, source: DestinationError },
}

impl FeedsError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Selector { source, .. } => source.reason(),
            Self::Destination { source, .. } => source.reason(),
        }
    }
}

/// Events of one profile go out in order; events without a profile stand alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Line {
    Profile(i64),
    Alone(i64),
}

/// A selected event with its message.
struct Item {
    event_id: i64,
    profile_id: Option<i64>,
    kind: String,
    /// Its idempotency key, also the message's `id`.
    key: String,
    message: serde_json::Value,
    created_at_ms: i64,
}

/// What one line of a batch came to.
#[derive(Default)]
struct LineOutcome {
    /// Commit times of the delivered events.
    delivered: Vec<i64>,
    kept: Vec<NewDelivery>,
    error: Option<DeliveryError>,
}

/// How one send ended.
enum Attempt {
    Delivered,
    Failed(DeliveryError),
    /// Shutdown came first: not sent, or dropped in flight. The event stays owed.
    Stopped,
}

/// Another replica holds the feed: since when this one waits, and when it asks again.
#[derive(Clone, Copy)]
struct Waiting {
    since: Instant,
    retry_at: Instant,
}

/// Where this replica stands with its feed.
#[derive(Default)]
struct Tenure {
    lease: Option<Lease>,
    waiting: Option<Waiting>,
}

/// One feed's worker.
pub struct FeedWorker {
    pub name: String,
    selector: Selector,
    destination: Destination,
    policy: DeliveryPolicy,
    store: Store,
    owner: String,
    metrics: FeedMetrics,
    board: FeedBoard,
    options: WorkerOptions,
    keys: Arc<OnceCell<EventKeys>>,
    outage: Mutex<OutageLog>,
}

impl FeedWorker {
    /// One batch of new events, then the kept deliveries that are due, under the feed's lease.
    /// Returns how many events were handled; 0 when there was nothing to do, another replica
    /// holds the feed, or the lease lapsed meanwhile.
    async fn step(&self, tenure: &mut Tenure, shutdown: &Shutdown) -> Result<usize, StoreError> {
        let mut lease = match tenure.lease.take() {
            Some(lease) if lease.valid() => lease,
            _ => match self.take(&mut tenure.waiting).await? {
                Some(lease) => lease,
                None => return Ok(0),
            },
        };
        let started = Instant::now();
        let done = tokio::select! {
            done = self.work(lease.cursor, shutdown) => done?,
            // dropped with its sends in flight and nothing saved: the next holder sends again
            () = lease.lapsed() => return Ok(0),
        };
        // `None`: the step was refused, another replica holds the feed now
        let Some((handled, cursor)) = done else { return Ok(0) };
        lease.cursor = cursor;
        tenure.lease = Some(lease);
        if handled > 0 {
            let busy = started.elapsed().as_millis() as u64;
            self.board.update(&self.name, |c| c.busy_ms += busy);
        }
        Ok(handled)
    }

    /// Take the feed's lease, unless another replica holds it: then ask again when its lease
    /// runs out (or after an idle poll, for a release).
    async fn take(&self, waiting: &mut Option<Waiting>) -> Result<Option<Lease>, StoreError> {
        let asked_at = Instant::now();
        if waiting.is_some_and(|w| asked_at < w.retry_at) {
            return Ok(None);
        }
        match self.store.take_feed(&self.name, &self.owner, self.options.lease).await? {
            FeedClaim::Held { owner, until_ms } => {
                let left = Duration::from_millis((until_ms - now_ms()).max(0) as u64);
                if waiting.is_none() {
                    tracing::info!(feed = %self.name, holder = %owner, left_ms = left.as_millis() as u64, "feed held by another replica");
                }
                let since = waiting.map_or(asked_at, |w| w.since);
                *waiting = Some(Waiting { since, retry_at: asked_at + left.min(self.options.idle_poll) });
                Ok(None)
            }
            FeedClaim::Taken { position, lapsed } => {
                let waited_ms = waiting.take().map_or(0, |w| (asked_at - w.since).as_millis() as u64);
                match lapsed {
                    Some(lapsed) => tracing::warn!(
                        feed = %self.name,
                        from = %lapsed.owner,
                        waited_ms,
                        lease_ended_ms_ago = (now_ms() - lapsed.ended_at_ms).max(0),
                        "took the feed over from a replica that stopped without releasing it"
                    ),
                    None => tracing::info!(feed = %self.name, waited_ms, "feed taken"),
                }
                Ok(Some(Lease::start(&self.store, &self.name, &self.owner, self.options.lease, asked_at, position.cursor)))
            }
        }
    }

    /// New events after `cursor`, then the due retries. Returns how many events were handled
    /// and the new cursor, or `None` when the store refused the progress (lease lost).
    async fn work(&self, cursor: i64, shutdown: &Shutdown) -> Result<Option<(usize, i64)>, StoreError> {
        let keys = self.keys().await?;
        let Some((new, cursor)) = self.step_new(cursor, keys, shutdown).await? else { return Ok(None) };
        let Some(retried) = self.step_retries(keys, shutdown).await? else { return Ok(None) };
        Ok(Some((new + retried, cursor)))
    }

    /// The store's idempotency keys, made from its secret on first use.
    async fn keys(&self) -> Result<&EventKeys, StoreError> {
        // the secret made once per store (the one its keyed hashes use): keys differ across stores
        self.keys.get_or_try_init(|| async { Ok(EventKeys::new(self.store.privacy_secret().await?.as_bytes())) }).await
    }

    /// Read, select and deliver the events after the cursor. Returns how many were read and
    /// the new cursor; `None` when the lease was lost meanwhile.
    async fn step_new(&self, cursor: i64, keys: &EventKeys, shutdown: &Shutdown) -> Result<Option<(usize, i64)>, StoreError> {
        let events = self.store.events_after(cursor, self.options.batch).await?;
        let Some(last) = events.last().map(|e| e.id) else { return Ok(Some((0, cursor))) };
        let profiles: Vec<i64> = events.iter().filter_map(|e| e.profile_id).collect::<BTreeSet<_>>().into_iter().collect();
        let goldens = self.store.goldens(&profiles).await?;
        let held = self.store.held_profiles(&self.name, &profiles).await?;
        let now = now_ms();
        let mut lines: BTreeMap<Line, Vec<Item>> = BTreeMap::new();
        let mut step = FeedProgress { cursor: Some(last), ..FeedProgress::default() };
        for event in &events {
            let mut message = match self.selector.select(event, event.profile_id.and_then(|p| goldens.get(&p))) {
                Ok(message) => message,
                Err(skip) => {
                    self.metrics.skipped.get_or_create(&vec![("feed", self.name.clone()), ("reason", skip.label().into())]).inc();
                    continue;
                }
            };
            let key = keys.key(&self.name, event.id);
            message["id"] = key.clone().into();
            let item = Item {
                event_id: event.id,
                profile_id: event.profile_id,
                kind: event.kind.clone(),
                key,
                message,
                created_at_ms: event.created_at_ms,
            };
            match event.profile_id {
                // an earlier event of this profile is still being retried: wait behind it
                Some(p) if held.contains(&p) => step.kept.push(waiting(item, now)),
                Some(p) => lines.entry(Line::Profile(p)).or_default().push(item),
                None => lines.entry(Line::Alone(event.id)).or_default().push(item),
            }
        }
        let outcomes: Vec<LineOutcome> = futures::stream::iter(lines.into_values())
            .map(|line| self.deliver_line(line, shutdown))
            .buffer_unordered(self.options.concurrency.max(1))
            .collect()
            .await;
        let skipped = events.len() - outcomes.iter().map(|o| o.delivered.len() + o.kept.len()).sum::<usize>() - step.kept.len();
        let mut finished = skipped as u64;
        for outcome in outcomes {
            step.delivered += outcome.delivered.len() as i64;
            finished += outcome.delivered.len() as u64;
            for created_at_ms in outcome.delivered {
                self.metrics.delivery_lag.get_or_create(&feed_label(&self.name)).observe((now_ms() - created_at_ms).max(0) as f64 / 1000.0);
            }
            if let Some(error) = outcome.error {
                step.failures += 1;
                step.last_error = Some(error.to_string());
            }
            finished += outcome.kept.iter().filter(|k| k.dead).count() as u64;
            step.kept.extend(outcome.kept);
        }
        let saved = self.save(&step, finished).await?;
        Ok(saved.then_some((events.len(), last)))
    }

    /// Deliver the events of one line in order; at the first failure, that event is kept for
    /// a retry and the rest of the line waits behind it. At shutdown, the unsent rest waits.
    async fn deliver_line(&self, line: Vec<Item>, shutdown: &Shutdown) -> LineOutcome {
        let mut outcome = LineOutcome::default();
        let mut items = line.into_iter();
        for item in items.by_ref() {
            match self.send(&item.key, &item.message, item.event_id, item.profile_id, 1, shutdown).await {
                Attempt::Delivered => outcome.delivered.push(item.created_at_ms),
                Attempt::Failed(error) => {
                    let now = now_ms();
                    outcome.kept.push(NewDelivery {
                        attempts: 1,
                        next_attempt_ms: now + self.retry_delay(1),
                        last_error: Some(error.to_string()),
                        dead: self.policy.max_attempts <= 1,
                        ..waiting(item, now)
                    });
                    outcome.error = Some(error);
                    break;
                }
                Attempt::Stopped => {
                    outcome.kept.push(waiting(item, now_ms()));
                    break;
                }
            }
        }
        let now = now_ms();
        outcome.kept.extend(items.map(|item| waiting(item, now)));
        outcome
    }

    /// Attempt the kept deliveries that are due. Returns how many were attempted; `None` when
    /// the lease was lost meanwhile.
    async fn step_retries(&self, keys: &EventKeys, shutdown: &Shutdown) -> Result<Option<usize>, StoreError> {
        if shutdown.requested() {
            return Ok(Some(0));
        }
        let due = self.store.due_deliveries(&self.name, now_ms(), self.options.batch).await?;
        if due.is_empty() {
            return Ok(Some(0));
        }
        let results: Vec<(Delivery, Attempt)> = futures::stream::iter(due)
            .map(|d| async move {
                let key = keys.key(&self.name, d.event_id);
                let attempt = self.send(&key, &d.message, d.event_id, d.profile_id, d.attempts + 1, shutdown).await;
                (d, attempt)
            })
            .buffer_unordered(self.options.concurrency.max(1))
            .collect()
            .await;
        let mut step = FeedProgress::default();
        let mut finished = 0;
        for (d, attempt) in results {
            let outcome = match attempt {
                Attempt::Delivered => {
                    step.delivered += 1;
                    finished += 1;
                    RetryOutcome::Delivered { event_id: d.event_id }
                }
                Attempt::Failed(error) => {
                    step.failures += 1;
                    step.last_error = Some(error.to_string());
                    let attempts = d.attempts + 1;
                    if attempts >= i64::from(self.policy.max_attempts) {
                        finished += 1;
                        RetryOutcome::Dead { event_id: d.event_id, error: error.to_string() }
                    } else {
                        RetryOutcome::Failed {
                            event_id: d.event_id,
                            error: error.to_string(),
                            next_attempt_ms: now_ms() + self.retry_delay(attempts),
                        }
                    }
                }
                // left as it was: due at the next start
                Attempt::Stopped => continue,
            };
            step.retried.push(outcome);
        }
        let attempted = step.retried.len();
        Ok(self.save(&step, finished).await?.then_some(attempted))
    }

    /// Send one message once, unless shutdown comes first. `attempt` counts from 1; a failed
    /// last allowed attempt sends the event to the dead letters.
    async fn send(
        &self,
        key: &str,
        message: &serde_json::Value,
        event_id: i64,
        profile_id: Option<i64>,
        attempt: i64,
        shutdown: &Shutdown,
    ) -> Attempt {
        if shutdown.requested() {
            return Attempt::Stopped;
        }
        let body = message.to_string();
        let result = tokio::select! {
            result = self.destination.send(Outgoing { key, profile_id, body: body.as_bytes() }) => result,
            () = shutdown.clone().wait() => return Attempt::Stopped,
        };
        tracing::debug!(feed = %self.name, event_id, kind = message["type"].as_str(), ok = result.is_ok(), "sent");
        match result {
            Ok(()) => {
                self.metrics.delivered.get_or_create(&feed_label(&self.name)).inc();
                let report = self.outage.lock().expect("outage lock").delivered(Instant::now());
                if let Some(report) = report {
                    self.log_outage(report, None);
                }
                Attempt::Delivered
            }
            Err(error) => {
                let dead = attempt >= i64::from(self.policy.max_attempts);
                self.metrics.failures.get_or_create(&vec![("feed", self.name.clone()), ("reason", error.reason().into())]).inc();
                self.metrics.last_failure.get_or_create(&feed_label(&self.name)).set(now_ms() / 1000);
                if dead {
                    self.metrics.dead_lettered.get_or_create(&feed_label(&self.name)).inc();
                }
                tracing::debug!(feed = %self.name, event_id, attempt, dead, reason = error.reason(), %error, "delivery attempt failed");
                let report = self.outage.lock().expect("outage lock").failed(Instant::now(), dead);
                if let Some(report) = report {
                    self.log_outage(report, Some(&error));
                }
                Attempt::Failed(error)
            }
        }
    }

    /// One line about the destination's state; the attempts themselves are logged at debug.
    fn log_outage(&self, report: Report, error: Option<&DeliveryError>) {
        let feed = &self.name;
        let reason = error.map(DeliveryError::reason);
        let error = error.map(tracing::field::display);
        match report {
            Report::Failing { failed, dead_lettered, next_in } => tracing::warn!(
                %feed,
                reason,
                error,
                retries = %self.retry_policy(),
                failed,
                dead_lettered,
                next_report_s = next_in.as_secs(),
                "destination failing; its events are retried with backoff"
            ),
            Report::StillFailing { for_, failed, dead_lettered, next_in } => tracing::warn!(
                %feed,
                reason,
                error,
                failing_s = for_.as_secs(),
                failed,
                dead_lettered,
                next_report_s = next_in.as_secs(),
                "destination still failing (attempts and dead letters since the last report)"
            ),
            Report::Recovered { after, failed, dead_lettered } => tracing::info!(
                %feed,
                failing_s = after.as_secs(),
                failed,
                dead_lettered,
                "destination recovered (attempts and dead letters since the last report)"
            ),
        }
    }

    fn retry_policy(&self) -> String {
        let p = &self.policy;
        format!(
            "up to {} attempts per event, {} s apart at first, doubling up to {} s, then the dead-letter list",
            p.max_attempts, p.initial_backoff_seconds, p.max_backoff_seconds
        )
    }

    fn retry_delay(&self, attempts: i64) -> i64 {
        backoff(&self.policy, attempts, rand::random::<f64>()).as_millis() as i64
    }

    /// Write the step; false when the lease was lost meanwhile (nothing written).
    async fn save(&self, step: &FeedProgress, finished: u64) -> Result<bool, StoreError> {
        let saved = self.store.feed_progress(&self.name, &self.owner, step).await?;
        if saved {
            self.board.update(&self.name, |c| {
                c.processed += finished;
                c.delivered += step.delivered as u64;
                c.failures += step.failures as u64;
                if step.last_error.is_some() {
                    c.last_error.clone_from(&step.last_error);
                }
            });
        } else {
            tracing::warn!(feed = %self.name, "lease lost to another replica; its step is redone there");
        }
        Ok(saved)
    }

    /// Work until shutdown, sleeping while there is nothing to do. At shutdown the sends in
    /// flight are dropped, what was acknowledged is saved, and the lease is released.
    pub async fn run(self, shutdown: Shutdown) {
        let mut tenure = Tenure::default();
        while !shutdown.requested() {
            let signal = match self.store.outbox_signal().await {
                Ok(signal) => signal,
                Err(error) => {
                    tracing::warn!(feed = %self.name, %error, "cannot listen for events; polling");
                    Arc::new(tokio::sync::Notify::new())
                }
            };
            // registered before reading the outbox, so a wake-up in between is not lost
            let notified = signal.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let handled = match self.step(&mut tenure, &shutdown).await {
                Ok(n) => n,
                Err(error) => {
                    tracing::warn!(feed = %self.name, %error, reason = error.reason(), "feed step failed");
                    0
                }
            };
            if handled == 0 {
                // a feed held by another replica is asked for again as soon as its lease ends
                let wake = tenure.waiting.map_or(self.options.idle_poll, |w| w.retry_at.saturating_duration_since(Instant::now()));
                tokio::select! {
                    _ = &mut notified => {}
                    _ = tokio::time::sleep(wake.min(self.options.idle_poll)) => {}
                    _ = shutdown.clone().wait() => {}
                }
            }
        }
        // no renewal after the release
        drop(tenure.lease.take());
        if let Err(error) = self.store.release_feed(&self.name, &self.owner).await {
            tracing::warn!(feed = %self.name, %error, "cannot release the feed's lease");
        }
    }
}

/// An event kept without an attempt, due as soon as it is first of its profile.
fn waiting(item: Item, now: i64) -> NewDelivery {
    NewDelivery {
        event_id: item.event_id,
        profile_id: item.profile_id,
        kind: item.kind,
        message: item.message,
        attempts: 0,
        next_attempt_ms: now,
        last_error: None,
        dead: false,
    }
}

/// Everything the feeds of a platform share in one process.
#[derive(Clone)]
pub struct FeedsContext {
    pub store: Store,
    pub metrics: FeedMetrics,
    pub board: FeedBoard,
    pub options: WorkerOptions,
    /// This replica's name (the pod name in a cluster).
    pub replica: String,
    keys: Arc<OnceCell<EventKeys>>,
}

impl FeedsContext {
    /// `store` is best a handle of the feeds' own ([`Store::with_own_pool`]) when other roles
    /// share the process.
    pub fn new(store: Store, metrics: &Metrics, options: WorkerOptions) -> FeedsContext {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
        FeedsContext {
            store,
            metrics: metrics.feeds.clone(),
            board: FeedBoard::default(),
            options,
            replica: format!("{host}-{:08x}", rand::random::<u32>()),
            keys: Arc::default(),
        }
    }

    /// A worker per feed of `config`; `redirect` points every webhook at another base URL.
    pub fn workers(&self, config: &PipelineConfig, secrets: &Secrets, redirect: Option<&url::Url>) -> Result<Vec<FeedWorker>, FeedsError> {
        config
            .feeds
            .iter()
            .map(|feed| {
                let name = feed.name.clone();
                let selector = Selector::compile(&name, &feed.spec).map_err(|source| FeedsError::Selector { feed: name.clone(), source })?;
                let mut target = feed.spec.destination.clone();
                if let (Some(base), Some(webhook)) = (redirect, target.webhook.as_mut()) {
                    webhook.url = deliver::redirected(&webhook.url, base);
                    webhook.allow_insecure_http |= base.scheme() == "http";
                }
                let destination =
                    Destination::new(&target, secrets).map_err(|source| FeedsError::Destination { feed: name.clone(), source })?;
                Ok(FeedWorker {
                    name,
                    selector,
                    destination,
                    policy: feed.spec.delivery.clone(),
                    store: self.store.clone(),
                    owner: self.replica.clone(),
                    metrics: self.metrics.clone(),
                    board: self.board.clone(),
                    options: self.options,
                    keys: self.keys.clone(),
                    outage: Mutex::default(),
                })
            })
            .collect()
    }

    /// Start the workers and the status sampler; they stop on shutdown.
    pub fn spawn(&self, workers: Vec<FeedWorker>, shutdown: &Shutdown) -> (Vec<tokio::task::JoinHandle<()>>, LoadBoard) {
        let names: Vec<String> = workers.iter().map(|w| w.name.clone()).collect();
        let load = LoadBoard { replica: self.replica.clone(), samples: Arc::default(), enrichers: None };
        let mut tasks: Vec<_> = workers.into_iter().map(|w| tokio::spawn(w.run(shutdown.clone()))).collect();
        tasks.push(tokio::spawn(sample_status(self.clone(), names, load.clone(), shutdown.clone())));
        (tasks, load)
    }
}

/// The two latest status samples, for `/v1/load`.
#[derive(Clone)]
pub struct LoadBoard {
    replica: String,
    samples: Arc<Mutex<(Sample, Sample)>>,
    /// The enrichers this workload runs beside the feeds.
    enrichers: Option<crate::enrich::status::EnrichBoard>,
}

impl LoadBoard {
    pub fn report(&self) -> LoadReport {
        let samples = self.samples.lock().expect("samples lock");
        let enrichers = self.enrichers.as_ref().map(|b| b.figures()).unwrap_or_default();
        LoadReport { enrichers, ..load_report(&self.replica, &samples.0, &samples.1) }
    }

    /// Report the figures of these enrichers too.
    pub fn with_enrichers(self, board: crate::enrich::status::EnrichBoard) -> LoadBoard {
        LoadBoard { enrichers: Some(board), ..self }
    }
}

async fn sample_status(ctx: FeedsContext, feeds: Vec<String>, load: LoadBoard, shutdown: Shutdown) {
    while !shutdown.requested() {
        let counters = ctx.board.snapshot();
        let mut sample = Sample { at_ms: now_ms(), feeds: BTreeMap::new() };
        for feed in &feeds {
            match ctx.store.feed_backlog(feed).await {
                Ok(backlog) => {
                    ctx.metrics.lag.get_or_create(&feed_label(feed)).set(backlog.unread + backlog.pending);
                    ctx.metrics.dead_letters.get_or_create(&feed_label(feed)).set(backlog.dead);
                    sample.feeds.insert(feed.clone(), (counters.get(feed).cloned().unwrap_or_default(), backlog));
                }
                Err(error) => tracing::warn!(%feed, %error, "cannot read the feed's backlog"),
            }
        }
        {
            let mut samples = load.samples.lock().expect("samples lock");
            let latest = std::mem::replace(&mut samples.1, sample);
            samples.0 = if latest.at_ms == 0 { samples.1.clone() } else { latest };
        }
        tokio::select! {
            _ = tokio::time::sleep(ctx.options.status_interval) => {}
            _ = shutdown.clone().wait() => {}
        }
    }
}

/// `GET /v1/load`: this replica's feeds figures over the last sampling window.
pub fn router(load: LoadBoard) -> Router {
    Router::new().route("/v1/load", get(|State(load): State<LoadBoard>| async move { Json(load.report()) })).with_state(load)
}

/// `cdp feeds`.
pub async fn run(args: FeedsArgs) -> Result<(), StartError> {
    let config = ops::load_config(&args.config)?;
    let store = ops::open_store_from_env().await?;
    let metrics = Metrics::new();
    let options = WorkerOptions { batch: args.batch, concurrency: args.concurrency, ..WorkerOptions::default() };
    let ctx = FeedsContext::new(store.clone(), &metrics, options);
    let workers = ctx.workers(&config, &Secrets::from_env(), None)?;
    // the enrichers call out as the feeds do, and run in the same workload
    let enrich = crate::enrich::EnrichContext::new(store.clone(), &metrics, crate::enrich::WorkerOptions::default());
    let enrichers = enrich.workers(&config, &Secrets::from_env())?;
    let (trigger, shutdown) = ops::shutdown_channel();
    ops::on_signal(trigger, std::time::Duration::ZERO);
    let listener = ops::bind(args.listen).await?;
    tracing::info!(platform = %config.platform, feeds = workers.len(), enrichers = enrichers.len(), listen = %args.listen, "feeds started");
    let (mut tasks, load) = ctx.spawn(workers, &shutdown);
    tasks.extend(enrich.spawn(enrichers, &shutdown));
    let load = load.with_enrichers(enrich.board.clone());
    ops::serve_with_ops(listener, router(load), store.clone(), metrics, shutdown).await;
    for task in tasks {
        let _ = task.await;
    }
    store.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_initial_delay_up_to_the_cap_with_equal_jitter() {
        let policy = DeliveryPolicy { max_attempts: 10, initial_backoff_seconds: 2, max_backoff_seconds: 30 };
        let secs = |attempts, jitter| backoff(&policy, attempts, jitter).as_secs_f64();
        assert_eq!([secs(1, 1.0), secs(2, 1.0), secs(3, 1.0), secs(4, 1.0), secs(5, 1.0)], [2.0, 4.0, 8.0, 16.0, 30.0]);
        assert_eq!([secs(1, 0.0), secs(3, 0.0), secs(9, 0.0)], [1.0, 4.0, 15.0]);
        assert_eq!(secs(1000, 0.5), 22.5);
    }
}
