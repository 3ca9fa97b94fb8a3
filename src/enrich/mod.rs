//! Enrichers: third-party data joins records and profiles, never on intake's path.
//!
//! One worker per Enricher, in the feeds workload (like the feeds, it calls out). Its work is
//! a job per target, kept in the store, so nothing is lost to a crash or an outage:
//! - **ProfileChange**: the worker reads the outbox after its own cursor and queues a job per
//!   profile created, updated or merged (whose change its triggers select); it sends the allow-listed golden values and writes
//!   the answer back into the profile as a record of its source `enricher/<name>`, where
//!   survivorship weighs it with the enricher's trust rank and provenance names it. Its own
//!   write-back changes the profile again: the digest of the values sent is the same, so that
//!   job ends without a call.
//! - **PreMatch**: intake marks records of the named Sources with a time the matcher leaves
//!   them alone until ([`Store::hold_for_enrichment`]); the worker queues a job per such
//!   record, writes the answer into the queued record (provenance kept apart, by record id)
//!   and releases it to the matcher. A record whose wait ran out was matched as it was: its
//!   answer then goes to its profile as above, and the enricher's status counts it.
//!
//! Each call is signed like the feeds' webhooks, bounded by a timeout, a rate limit and a
//! concurrency bound, and retried with backoff until it is dead-lettered. The answer is cached
//! by a keyed digest of the values sent. No call is made for a person who has not granted the
//! enricher's consent purpose.

pub mod call;
pub mod demo;
pub mod plan;
pub mod status;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use tokio::sync::OnceCell;
use tokio::time::Instant;

use self::call::{Caller, EndpointError};
use self::status::{EnrichBoard, EnrichMetrics, Recorder};
use crate::crd::enricher::{EnrichStage, EnricherSpec};
use crate::identity::GoldenProfile;
use crate::identity::consent::ConsentState;
use crate::matcher::{Enrichment, MatchError, Resolver};
use crate::pipeline::trigger::{self, Conditions, TriggerError};
use crate::pipeline::{ENRICHER_SOURCE_PREFIX, PipelineConfig, enricher_source};
use crate::runtime::ops::{Metrics, Secrets, Shutdown};
use crate::runtime::outage::{OutageLog, Report};
use crate::store::{EnrichJob, EnrichTarget, Event, HeldForEnrichment, Store, StoreError, StoredRecord, now_ms};

/// Why the enrichers could not start.
#[derive(Debug, thiserror::Error)]
pub enum EnrichError {
    #[error("enricher {enricher}: {source}")]
    Endpoint { enricher: String, source: EndpointError },
    #[error("enricher {enricher}: {source}")]
    Triggers { enricher: String, source: TriggerError },
    #[error("matching model: {0}")]
    Model(#[from] crate::identity::ModelError),
}

impl EnrichError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Endpoint { source: EndpointError::Secret(e), .. } => e.reason(),
            Self::Endpoint { .. } => "EnricherClient",
            Self::Triggers { source, .. } => source.reason(),
            Self::Model(_) => "Model",
        }
    }
}

/// How the workers pace themselves.
#[derive(Clone, Copy, Debug)]
pub struct WorkerOptions {
    /// Outbox events read at a time.
    pub batch: i64,
    /// Sleep between looks for work when no wake-up arrives (retries coming due, waits of
    /// records running out, events committed by another process on SQLite).
    pub idle_poll: Duration,
    /// How often the store's figures (dead letters, late records) are sampled.
    pub status_interval: Duration,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions { batch: 500, idle_poll: Duration::from_millis(200), status_interval: Duration::from_secs(5) }
    }
}

/// Outbox events that change what a profile holds.
const PROFILE_CHANGES: &[&str] = &["profile.created", "profile.updated", "profile.merged"];

/// Retries of a write-back that met a concurrent change of the profile.
const WRITE_ATTEMPTS: usize = 5;

/// One Enricher at work.
pub struct EnrichWorker {
    name: String,
    source: String,
    spec: EnricherSpec,
    /// The spec's triggers, compiled.
    triggers: Conditions,
    caller: Caller,
    store: Store,
    resolver: Arc<Resolver>,
    /// The key of the cache digests: the store's privacy secret, read once.
    digest_key: Arc<OnceCell<Vec<u8>>>,
    /// One lookup per digest at a time: the same values sent twice at once make one call,
    /// the second answered by the cache.
    lookups: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    recorder: Recorder,
    options: WorkerOptions,
    /// The endpoint's outages, told once, not per attempt.
    outage: Mutex<OutageLog>,
}

/// What a job is about, as found now.
struct Subject {
    values: BTreeMap<String, String>,
    consent: Option<ConsentState>,
    /// The digest of what was sent for the values the profile holds from this enricher.
    previous_digest: Option<String>,
    /// A PreMatch record already matched (its wait ran out): its profile.
    matched_into: Option<i64>,
}

/// How an attempt ended, when not with values written.
enum Failure {
    Call(call::CallError),
    Store(StoreError),
    Match(MatchError),
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Store(e)
    }
}

impl From<MatchError> for Failure {
    fn from(e: MatchError) -> Self {
        Failure::Match(e)
    }
}

impl EnrichWorker {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Work until shutdown.
    pub async fn run(self: Arc<Self>, shutdown: Shutdown) {
        tracing::info!(enricher = %self.name, stage = ?self.spec.stage, "enricher started");
        while !shutdown.requested() {
            let signal = match self.spec.stage {
                EnrichStage::ProfileChange => self.store.outbox_signal().await,
                EnrichStage::PreMatch => self.store.work_signal().await,
            };
            let signal = signal.unwrap_or_else(|error| {
                tracing::warn!(enricher = %self.name, %error, "cannot listen for work; polling");
                Arc::default()
            });
            // registered before looking, so a wake-up in between is not lost
            let notified = signal.notified();
            let busy = match self.step().await {
                Ok(n) => n > 0,
                Err(error) => {
                    tracing::warn!(enricher = %self.name, %error, "enrichment step failed; retrying");
                    false
                }
            };
            if !busy {
                tokio::select! {
                    _ = notified => {}
                    _ = tokio::time::sleep(self.options.idle_poll) => {}
                    _ = shutdown.clone().wait() => {}
                }
            }
        }
    }

    /// Queue new work, then do what is due; returns how much there was.
    async fn step(self: &Arc<Self>) -> Result<usize, StoreError> {
        let scheduled = match self.spec.stage {
            EnrichStage::ProfileChange => self.schedule_changed_profiles().await?,
            EnrichStage::PreMatch => self.store.schedule_held(&self.name, &self.spec.sources, self.options.batch).await?,
        };
        let concurrency = self.spec.concurrency.max(1) as usize;
        let limit = (concurrency * 2).min(self.spec.rate_limit_per_second.max(1) as usize) as i64;
        // long enough for a claimed batch to pass the rate limit and the timeout
        let lease_ms = i64::from(self.spec.endpoint.timeout_seconds) * 1000 * 2 + 10_000;
        let jobs = self.store.claim_enrich_jobs(&self.name, limit, lease_ms).await?;
        let claimed = jobs.len();
        futures::stream::iter(jobs).for_each_concurrent(concurrency, |job| self.work(job)).await;
        Ok(scheduled + claimed)
    }

    async fn schedule_changed_profiles(&self) -> Result<usize, StoreError> {
        let cursor = self.store.enrich_cursor(&self.name).await?;
        let events = self.store.events_after(cursor, self.options.batch).await?;
        let Some(last) = events.last().map(|e| e.id) else { return Ok(0) };
        let changes: Vec<(&Event, i64)> = events
            .iter()
            .filter(|e| PROFILE_CHANGES.contains(&e.kind.as_str()))
            .filter_map(|e| e.profile_id.map(|p| (e, p)))
            .collect();
        let goldens = match self.triggers.is_empty() {
            true => BTreeMap::new(),
            false => self.store.goldens(&changes.iter().map(|(_, p)| *p).collect::<Vec<_>>()).await?,
        };
        let mut profiles: Vec<i64> = changes
            .into_iter()
            .filter(|(e, p)| {
                let event_source = e.payload.get("source").and_then(serde_json::Value::as_str);
                self.triggers.hold(trigger::Subject { event_source, event_type: Some(&e.kind), profile: goldens.get(p) })
            })
            .map(|(_, p)| p)
            .collect();
        profiles.sort_unstable();
        profiles.dedup();
        self.store.schedule_profiles(&self.name, &profiles, last).await?;
        Ok(events.len())
    }

    /// One attempt at one job; a failed call is retried later or dead-lettered.
    async fn work(&self, job: EnrichJob) {
        let (error, endpoint_failed) = match self.attempt(job).await {
            Ok(()) => return,
            Err(Failure::Call(e)) => {
                self.recorder.failed(e.reason(), &e.to_string());
                (e.to_string(), true)
            }
            Err(Failure::Match(e)) => {
                tracing::warn!(enricher = %self.name, target = ?job.target, error = %e, "cannot write an enrichment back");
                (e.to_string(), false)
            }
            // the claim lapses and the job comes due again
            Err(Failure::Store(e)) => {
                tracing::warn!(enricher = %self.name, target = ?job.target, error = %e, "cannot store an enrichment; retrying");
                return;
            }
        };
        let attempts = job.attempts + 1;
        let retry_at = (attempts < i64::from(self.spec.retry.max_attempts))
            .then(|| now_ms() + crate::runtime::backoff(&self.spec.retry, attempts, rand::random::<f64>()).as_millis() as i64);
        tracing::debug!(enricher = %self.name, target = ?job.target, attempts, dead = retry_at.is_none(), %error, "enrichment failed");
        if endpoint_failed {
            let report = self.outage.lock().unwrap_or_else(PoisonError::into_inner).failed(Instant::now(), retry_at.is_none());
            if let Some(report) = report {
                self.log_outage(report, Some(&error));
            }
        }
        if let Err(e) = self.store.enrich_failed(&self.name, job.target, &error, retry_at).await {
            tracing::warn!(enricher = %self.name, target = ?job.target, error = %e, "cannot record a failed enrichment");
        }
    }

    async fn attempt(&self, job: EnrichJob) -> Result<(), Failure> {
        let Some(subject) = self.subject(job.target).await? else { return self.finish(job.target).await };
        if !plan::consent_allows(&self.spec, |_| subject.consent) {
            self.recorder.skipped("consent");
            return self.finish(job.target).await;
        }
        let Some(sent) = plan::request_values(&self.spec, &subject.values) else {
            self.recorder.skipped("nothing_to_send");
            return self.finish(job.target).await;
        };
        let key = self.digest_key.get_or_try_init(|| async { self.store.privacy_secret().await.map(String::into_bytes) }).await?;
        let digest = plan::digest(key, &self.name, &sent);
        if subject.previous_digest.as_deref() == Some(digest.as_str()) {
            self.recorder.skipped("unchanged");
            return self.finish(job.target).await;
        }
        let lookup = self.lookups.lock().unwrap_or_else(PoisonError::into_inner).entry(digest.clone()).or_default().clone();
        let answered = {
            let _one_at_a_time = lookup.lock().await;
            self.look_up(job.target, &digest, &sent).await
        };
        {
            let mut lookups = self.lookups.lock().unwrap_or_else(PoisonError::into_inner);
            // the last one out takes the entry away
            if Arc::strong_count(&lookup) == 2 {
                lookups.remove(&digest);
            }
        }
        let (call_id, now, values, cached) = answered?;
        let evidence = json!({
            "decision": "enriched",
            "enricher": self.name,
            "callId": call_id,
            "atMs": now,
            "cached": cached,
            "sent": sent.keys().collect::<Vec<_>>(),
            "digest": digest,
        });
        self.write(job.target, subject.matched_into, &call_id, &values, evidence).await
    }

    /// The answer for `sent`: from the cache while fresh, else from the endpoint (and cached).
    /// Returns the call id, its time, the values to write back and whether they were cached.
    async fn look_up(
        &self,
        target: EnrichTarget,
        digest: &str,
        sent: &BTreeMap<String, String>,
    ) -> Result<(String, i64, BTreeMap<String, String>, bool), Failure> {
        let now = now_ms();
        let call_id = format!("{}-{:016x}", self.name, rand::random::<u64>());
        let (values, cached) = match self.store.cached_answer(&self.name, digest, now).await? {
            Some(values) => {
                self.recorder.cache_hit();
                self.store.note_lookup(&self.name, target, digest).await?;
                (values, true)
            }
            None => {
                self.store.note_lookup(&self.name, target, digest).await?;
                let (answer, took) = self.caller.call(&self.name, &call_id, sent).await.map_err(Failure::Call)?;
                self.recorder.answered(took);
                let report = self.outage.lock().unwrap_or_else(PoisonError::into_inner).delivered(Instant::now());
                if let Some(report) = report {
                    self.log_outage(report, None);
                }
                let values = plan::write_back(&self.spec, &answer);
                let expires = now + i64::from(self.spec.cache_ttl_seconds) * 1000;
                self.store.cache_answer(&self.name, target, digest, &values, expires).await?;
                (values, false)
            }
        };
        Ok((call_id, now, values, cached))
    }

    /// The values a target holds now, with the consent state that gates the call; `None`
    /// when the target is gone (erased) or out of this enricher's reach.
    async fn subject(&self, target: EnrichTarget) -> Result<Option<Subject>, StoreError> {
        let purpose = self.spec.required_consent.as_deref();
        match target {
            EnrichTarget::Profile(id) => self.profile_subject(id, None).await,
            EnrichTarget::Record(id) => match self.store.held_record(id).await? {
                HeldForEnrichment::Queued(record) => Ok(Some(Subject {
                    consent: purpose.and_then(|p| plan::record_consent(&record.attributes, p)),
                    values: record.attributes,
                    previous_digest: None,
                    matched_into: None,
                })),
                HeldForEnrichment::Matched { attributes, profile_id } => {
                    // the record's values are what the call is about; the person's consent is
                    // their profile's now
                    let profile = self.profile_subject(profile_id, Some(attributes)).await?;
                    Ok(profile.map(|p| Subject { previous_digest: None, matched_into: Some(profile_id), ..p }))
                }
                HeldForEnrichment::Gone => Ok(None),
            },
        }
    }

    async fn profile_subject(&self, id: i64, values: Option<BTreeMap<String, String>>) -> Result<Option<Subject>, StoreError> {
        let Some(row) = self.store.profile(id).await? else { return Ok(None) };
        let golden: GoldenProfile = row.golden.map(serde_json::from_value).transpose()?.unwrap_or_default();
        let records = self.store.records_of(row.id).await?;
        if !self.spec.sources.is_empty() && values.is_none() && !records.iter().any(|r| self.spec.sources.contains(&r.source)) {
            self.recorder.skipped("source");
            return Ok(None);
        }
        let previous_digest =
            records.iter().find(|r| r.source == self.source).and_then(|r| r.evidence["digest"].as_str().map(str::to_string));
        let consent = self.spec.required_consent.as_deref().and_then(|p| golden.consents.get(p)).map(|s| s.state);
        let values = values.unwrap_or_else(|| sources_values(&golden, &records));
        Ok(Some(Subject { values, consent, previous_digest, matched_into: Some(row.id) }))
    }

    /// Write the values where they go, and end the job, in one transaction.
    async fn write(
        &self,
        target: EnrichTarget,
        matched_into: Option<i64>,
        call_id: &str,
        values: &BTreeMap<String, String>,
        evidence: serde_json::Value,
    ) -> Result<(), Failure> {
        if values.is_empty() {
            self.recorder.skipped("empty_answer");
            return self.finish(target).await;
        }
        let enrichment = Enrichment { source: &self.source, call_id, values, evidence };
        for attempt in 1..=WRITE_ATTEMPTS {
            let now = now_ms();
            let mut tx = self.store.begin().await?;
            let result = async {
                match (target, matched_into) {
                    (EnrichTarget::Record(id), None) => {
                        if !tx.enrich_queued_record(id, &self.name, call_id, values, now).await? {
                            // the wait ran out meanwhile and the record was matched as it was
                            tx.count_matched_unenriched(&self.name).await?;
                            if let Some(profile) = self.store.record(id).await?.map(|r| r.profile_id) {
                                self.resolver.attach_enrichment(&mut tx, profile, &enrichment, now).await?;
                            }
                        }
                    }
                    (EnrichTarget::Record(_), Some(profile)) => {
                        tx.count_matched_unenriched(&self.name).await?;
                        self.resolver.attach_enrichment(&mut tx, profile, &enrichment, now).await?;
                    }
                    (EnrichTarget::Profile(id), _) => {
                        self.resolver.attach_enrichment(&mut tx, id, &enrichment, now).await?;
                    }
                }
                tx.enrich_done(&self.name, target).await?;
                Ok::<(), MatchError>(())
            }
            .await;
            match result {
                Ok(()) => return Ok(tx.commit().await?),
                Err(e) if e.is_retryable() && attempt < WRITE_ATTEMPTS => {
                    tx.rollback().await?;
                }
                Err(e) => {
                    tx.rollback().await?;
                    return Err(e.into());
                }
            }
        }
        unreachable!("the last attempt returns")
    }

    /// One line about the endpoint's state; the attempts themselves are logged at debug.
    fn log_outage(&self, report: Report, error: Option<&str>) {
        let enricher = &self.name;
        let retry = &self.spec.retry;
        match report {
            Report::Failing { failed, dead_lettered, next_in } => tracing::warn!(
                %enricher,
                error,
                max_attempts = retry.max_attempts,
                initial_backoff_s = retry.initial_backoff_seconds,
                max_backoff_s = retry.max_backoff_seconds,
                failed,
                dead_lettered,
                next_report_s = next_in.as_secs(),
                "enricher failing; its calls are retried with backoff, then dead-lettered"
            ),
            Report::StillFailing { for_, failed, dead_lettered, next_in } => tracing::warn!(
                %enricher,
                error,
                failing_s = for_.as_secs(),
                failed,
                dead_lettered,
                next_report_s = next_in.as_secs(),
                "enricher still failing (attempts and dead letters since the last report)"
            ),
            Report::Recovered { after, failed, dead_lettered } => tracing::info!(
                %enricher,
                failing_s = after.as_secs(),
                failed,
                dead_lettered,
                "enricher recovered (attempts and dead letters since the last report)"
            ),
        }
    }

    /// End a job with nothing to write.
    async fn finish(&self, target: EnrichTarget) -> Result<(), Failure> {
        let mut tx = self.store.begin().await?;
        tx.enrich_done(&self.name, target).await?;
        Ok(tx.commit().await?)
    }
}

/// What a profile holds from its Sources: the golden values, except that a value an enricher
/// won survivorship with gives way to the latest one a Source sent for that attribute. What is
/// sent is then the same before and after an enrichment, and the digest says so: writing the
/// answer back does not cause another call.
fn sources_values(golden: &GoldenProfile, records: &[StoredRecord]) -> BTreeMap<String, String> {
    let mut latest: Vec<&StoredRecord> = records.iter().filter(|r| !r.source.starts_with(ENRICHER_SOURCE_PREFIX)).collect();
    latest.sort_by_key(|r| std::cmp::Reverse(r.observed_at_ms));
    golden
        .attributes
        .iter()
        .filter_map(|(attribute, v)| {
            let value = if v.source.starts_with(ENRICHER_SOURCE_PREFIX) {
                latest.iter().find_map(|r| r.attributes.get(attribute))?.clone()
            } else if v.display.is_empty() {
                v.value.clone()
            } else {
                v.display.clone()
            };
            Some((attribute.clone(), value))
        })
        .collect()
}

/// Everything the enrichers of a platform share in one process.
#[derive(Clone)]
pub struct EnrichContext {
    pub store: Store,
    pub metrics: EnrichMetrics,
    pub board: EnrichBoard,
    pub options: WorkerOptions,
}

impl EnrichContext {
    pub fn new(store: Store, metrics: &Metrics, options: WorkerOptions) -> EnrichContext {
        EnrichContext { store, metrics: metrics.enrich.clone(), board: EnrichBoard::default(), options }
    }

    /// A worker per Enricher of `config`.
    pub fn workers(&self, config: &PipelineConfig, secrets: &Secrets) -> Result<Vec<Arc<EnrichWorker>>, EnrichError> {
        if config.enrichers.is_empty() {
            return Ok(Vec::new());
        }
        let resolver = Arc::new(Resolver::new(config)?);
        let digest_key = Arc::new(OnceCell::new());
        config
            .enrichers
            .iter()
            .map(|e| {
                let spec = &e.spec;
                let caller = Caller::new(&spec.endpoint, spec.rate_limit_per_second, spec.concurrency, secrets)
                    .map_err(|source| EnrichError::Endpoint { enricher: e.name.clone(), source })?;
                let triggers = Conditions::compile(&spec.triggers)
                    .map_err(|source| EnrichError::Triggers { enricher: e.name.clone(), source })?;
                Ok(Arc::new(EnrichWorker {
                    name: e.name.clone(),
                    source: enricher_source(&e.name),
                    spec: spec.clone(),
                    triggers,
                    caller,
                    store: self.store.clone(),
                    resolver: resolver.clone(),
                    digest_key: digest_key.clone(),
                    lookups: Mutex::default(),
                    outage: Mutex::default(),
                    recorder: Recorder { enricher: e.name.clone(), metrics: self.metrics.clone(), board: self.board.clone() },
                    options: self.options,
                }))
            })
            .collect()
    }

    /// Start the workers and the status sampler; they stop on shutdown.
    pub fn spawn(&self, workers: Vec<Arc<EnrichWorker>>, shutdown: &Shutdown) -> Vec<tokio::task::JoinHandle<()>> {
        if workers.is_empty() {
            return Vec::new();
        }
        let recorders: Vec<Recorder> = workers.iter().map(|w| w.recorder.clone()).collect();
        let mut tasks: Vec<_> = workers.into_iter().map(|w| tokio::spawn(w.run(shutdown.clone()))).collect();
        tasks.push(tokio::spawn(sample_counts(self.store.clone(), recorders, self.options.status_interval, shutdown.clone())));
        tasks
    }
}

async fn sample_counts(store: Store, recorders: Vec<Recorder>, every: Duration, shutdown: Shutdown) {
    while !shutdown.requested() {
        for recorder in &recorders {
            match store.enricher_counts(&recorder.enricher).await {
                Ok(counts) => recorder.store_counts(counts),
                Err(error) => tracing::warn!(enricher = %recorder.enricher, %error, "cannot read the enricher's figures"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.clone().wait() => {}
        }
    }
}
