//! `cdp bench intake`: drive a running platform's HTTP intake as a touchpoint would, and
//! report exactly what it accepted.
//!
//! Records are synthetic people ([`Generator`]) shaped by one Source's own mapping, so any
//! Source of a deployed platform can be driven with the platform's own config and key. Every
//! request is retried with the same event ids until intake gives a final answer (a connection
//! refused by a pod that is going away, a `503` while the store restarts, a `429`), the way an
//! at-least-once client behaves; redeliveries are absorbed by intake. So `accepted` counts the
//! records intake holds, whatever failed in between: what a test compares with the store.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;
use tokio::sync::Mutex;

use super::generate::{Generator, Population};
use crate::runtime::ops::StartError;
use crate::local::PlatformArgs;
use crate::pipeline::NamedSource;

#[derive(clap::Args, Clone, Debug)]
pub struct IntakeArgs {
    /// Base URL of the platform's intake, e.g. `http://retail-ingest.shop.svc:8080`.
    #[arg(long)]
    pub url: String,
    /// The Source to send as: its mapping shapes the payloads, its key authenticates them.
    #[arg(long)]
    pub source: String,
    #[command(flatten)]
    pub platform: PlatformArgs,
    #[arg(long, default_value_t = 1000)]
    pub records: usize,
    /// Records per second; 0 sends as fast as `--concurrency` allows.
    #[arg(long, default_value_t = 0)]
    pub rate: u32,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Records per request (a JSON array when above 1).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Records per person on average: repeat customers, whom the matcher links.
    #[arg(long, default_value_t = 2.0)]
    pub records_per_person: f64,
    /// Prefix of the event ids. Runs with different ids add records; a run repeated with the
    /// same id and seed is absorbed as redeliveries.
    #[arg(long, default_value = "bench")]
    pub run_id: String,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// A request with no final answer after this long is given up (and counted as failed).
    #[arg(long, default_value_t = 300)]
    pub give_up_seconds: u64,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IntakeReport {
    pub source: String,
    pub run_id: String,
    pub records: usize,
    /// Answered `202` (first delivery or redelivery): held by intake.
    pub accepted: usize,
    /// Of `accepted`, those intake already held (a retry after a lost answer).
    pub duplicates: usize,
    /// Final answers other than acceptance, by code (invalid and quarantined, refused, ...).
    pub rejected: BTreeMap<String, usize>,
    /// Records of requests given up after `--give-up-seconds`.
    pub failed: usize,
    /// Attempts that were retried, by cause.
    pub retries: BTreeMap<String, usize>,
    pub seconds: f64,
    pub records_per_second: f64,
    /// From a request's first attempt to its final answer.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl IntakeReport {
    fn add(&mut self, outcome: Outcome) {
        self.accepted += outcome.accepted;
        self.duplicates += outcome.duplicates;
        self.failed += outcome.failed;
        for (code, n) in outcome.rejected {
            *self.rejected.entry(code).or_default() += n;
        }
        for (cause, n) in outcome.retries {
            *self.retries.entry(cause).or_default() += n;
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IntakeBenchError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("no Source {0:?} in the platform's config")]
    NoSuchSource(String),
    #[error("Source {0:?} does not deliver over HTTP")]
    NotHttp(String),
    #[error("--batch and --concurrency must be at least 1")]
    Zero,
}

/// The final answer for one request, and what it took to get it.
#[derive(Debug, Default)]
struct Outcome {
    accepted: usize,
    duplicates: usize,
    rejected: BTreeMap<String, usize>,
    failed: usize,
    retries: BTreeMap<String, usize>,
}

pub async fn intake(args: &IntakeArgs) -> Result<IntakeReport, IntakeBenchError> {
    if args.batch == 0 || args.concurrency == 0 {
        return Err(IntakeBenchError::Zero);
    }
    let loaded = args.platform.load()?;
    let source = loaded
        .config
        .sources
        .iter()
        .find(|s| s.name == args.source)
        .ok_or_else(|| IntakeBenchError::NoSuchSource(args.source.clone()))?
        .clone();
    let http = source.spec.delivery.http.as_ref().ok_or_else(|| IntakeBenchError::NotHttp(args.source.clone()))?;
    let key = loaded.secrets.get(&http.auth_secret_ref)?;
    let url = format!("{}/v1/sources/{}/records", args.url.trim_end_matches('/'), source.name);

    let mut generator = Generator::new(args.seed, args.records, args.records_per_person.max(1.0), Population::Country);
    let batches: Vec<Vec<Value>> = (0..args.records)
        .map(|i| payload(&source, &mut generator, &format!("{}-{i}", args.run_id)))
        .collect::<Vec<_>>()
        .chunks(args.batch)
        .map(<[Value]>::to_vec)
        .collect();

    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("an HTTP client without TLS settings builds");
    let report = Arc::new(Mutex::new(IntakeReport { source: source.name.clone(), run_id: args.run_id.clone(), records: args.records, ..Default::default() }));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(batches.len())));
    let permits = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
    let give_up = Duration::from_secs(args.give_up_seconds);
    // One request every `pace`, when a rate is set.
    let pace = (args.rate > 0).then(|| Duration::from_secs_f64(args.batch as f64 / f64::from(args.rate)));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(batches.len());
    for (n, batch) in batches.into_iter().enumerate() {
        if let Some(pace) = pace {
            tokio::time::sleep_until((started + pace * n as u32).into()).await;
        }
        let permit = permits.clone().acquire_owned().await.expect("the semaphore is never closed");
        let (client, url, key) = (client.clone(), url.clone(), key.clone());
        let (report, latencies) = (report.clone(), latencies.clone());
        tasks.push(tokio::spawn(async move {
            let began = Instant::now();
            let outcome = deliver(&client, &url, &key, &batch, give_up).await;
            latencies.lock().await.push(began.elapsed().as_secs_f64() * 1000.0);
            report.lock().await.add(outcome);
            drop(permit);
        }));
    }
    for task in tasks {
        task.await.expect("a delivery task does not panic");
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut latencies = std::mem::take(&mut *latencies.lock().await);
    latencies.sort_by(f64::total_cmp);
    let mut report = std::mem::take(&mut *report.lock().await);
    report.seconds = seconds;
    report.records_per_second = args.records as f64 / seconds.max(1e-9);
    report.p50_ms = super::percentile(&latencies, 0.50);
    report.p99_ms = super::percentile(&latencies, 0.99);
    report.max_ms = latencies.last().copied().unwrap_or(0.0);
    Ok(report)
}

/// Post one batch until intake answers for good (`202`, or a refusal that a retry cannot change).
async fn deliver(client: &reqwest::Client, url: &str, key: &str, batch: &[Value], give_up: Duration) -> Outcome {
    let body = if batch.len() == 1 { batch[0].clone() } else { Value::Array(batch.to_vec()) };
    let deadline = Instant::now() + give_up;
    let mut backoff = Duration::from_millis(50);
    let mut outcome = Outcome::default();
    loop {
        let cause = match client.post(url).bearer_auth(key).json(&body).send().await {
            Ok(response) => {
                let status = response.status();
                let answer = response.json::<Value>().await.unwrap_or(Value::Null);
                match status.as_u16() {
                    202 | 422 => {
                        let accepted = answer["accepted"].as_array().cloned().unwrap_or_default();
                        outcome.accepted = accepted.len();
                        outcome.duplicates = accepted.iter().filter(|a| a["duplicate"] == true).count();
                        if status.as_u16() == 422 {
                            let code = answer["error"]["code"].as_str().unwrap_or("unprocessable").to_string();
                            outcome.rejected.insert(code, batch.len() - accepted.len());
                        }
                        return outcome;
                    }
                    429 | 500..=599 => format!("http {}", status.as_u16()),
                    other => {
                        let code = answer["error"]["code"].as_str().map_or_else(|| format!("http {other}"), str::to_string);
                        outcome.rejected.insert(code, batch.len());
                        return outcome;
                    }
                }
            }
            Err(error) if error.is_connect() => "connect".to_string(),
            Err(error) if error.is_timeout() => "timeout".to_string(),
            Err(_) => "connection".to_string(),
        };
        if Instant::now() + backoff > deadline {
            outcome.failed = batch.len();
            return outcome;
        }
        *outcome.retries.entry(cause).or_default() += 1;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// A payload of `source` for the next generated person record that meets the Source's
/// validation: each canonical attribute the generator produced goes where the Source's mapping
/// reads it from; a source identifier it lacks is the person's own, stable across their records.
fn payload(source: &NamedSource, generator: &mut Generator, event_id: &str) -> Value {
    const ATTEMPTS: usize = 32;
    let validation = &source.spec.validation;
    let mut attributes = BTreeMap::new();
    for _ in 0..ATTEMPTS {
        let generated = generator.next_record();
        attributes = generated.record.attributes;
        for mapping in &source.spec.mapping {
            if mapping.to.starts_with("identifiers.") && !attributes.contains_key(&mapping.to) {
                attributes.insert(mapping.to.clone(), format!("P{:08}", generated.entity));
            }
        }
        let mapped = |attribute: &String| source.spec.mapping.iter().any(|m| &m.to == attribute) && attributes.contains_key(attribute);
        let any_of = validation.require_any_of.is_empty() || validation.require_any_of.iter().any(mapped);
        if validation.required.iter().all(mapped) && any_of {
            break;
        }
    }
    let mut payload = Value::Object(Default::default());
    for mapping in &source.spec.mapping {
        if let Some(value) = attributes.get(&mapping.to) {
            set_path(&mut payload, &mapping.from, Value::String(value.clone()));
        }
    }
    set_path(&mut payload, &source.spec.event_id_field, Value::String(event_id.to_string()));
    if let Some(field) = &source.spec.observed_at_field {
        set_path(&mut payload, field, Value::String(jiff::Timestamp::now().to_string()));
    }
    payload
}

/// Set `value` at a dotted path (`ticket.holder.email`), creating the objects on the way.
fn set_path(target: &mut Value, path: &str, value: Value) {
    let mut node = target;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            node[part] = value;
            return;
        }
        if !node[part].is_object() {
            node[part] = Value::Object(Default::default());
        }
        node = &mut node[part];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::source::FieldMapping;

    fn ticketing() -> NamedSource {
        let mut source = super::super::bench_source("ticketing", [], "FR", 30, Default::default());
        source.spec.mapping = [
            ("ticket.holder.email", "email"),
            ("ticket.holder.first_name", "givenName"),
            ("ticket.holder.phone", "phone"),
            ("buyer.ref", "identifiers.buyerId"),
        ]
        .into_iter()
        .map(|(from, to)| FieldMapping { from: from.into(), to: to.into() })
        .collect();
        source.spec.event_id_field = "scan_id".into();
        source.spec.validation.required = vec!["identifiers.buyerId".into()];
        source.spec.validation.require_any_of = vec!["email".into(), "phone".into()];
        source
    }

    #[test]
    fn payloads_follow_the_sources_mapping_and_validation() {
        let source = ticketing();
        let mut generator = Generator::new(7, 200, 2.0, Population::Country);
        for i in 0..200 {
            let p = payload(&source, &mut generator, &format!("run-{i}"));
            assert_eq!(p["scan_id"], format!("run-{i}"));
            assert!(p["ticket"]["holder"]["first_name"].is_string(), "{p}");
            assert!(p["buyer"]["ref"].as_str().is_some_and(|r| r.starts_with('P')), "the required identifier: {p}");
            let holder = &p["ticket"]["holder"];
            assert!(holder["email"].is_string() || holder["phone"].is_string(), "one of email or phone: {p}");
            // nothing the mapping does not read
            assert!(p.get("familyName").is_none() && p.get("givenName").is_none(), "{p}");
        }
    }

    #[test]
    fn a_persons_records_carry_the_same_source_identifier() {
        let source = ticketing();
        let mut generator = Generator::new(7, 100, 4.0, Population::Country);
        let ids: std::collections::HashSet<String> = (0..100)
            .map(|i| payload(&source, &mut generator, &i.to_string())["buyer"]["ref"].as_str().unwrap().to_string())
            .collect();
        assert!(ids.len() <= 25, "25 people for 100 records, got {} ids", ids.len());
    }

    #[test]
    fn dotted_paths_nest() {
        let mut v = serde_json::json!({"a": {"x": 1}});
        set_path(&mut v, "a.b.c", "d".into());
        set_path(&mut v, "e", "f".into());
        assert_eq!(v, serde_json::json!({"a": {"x": 1, "b": {"c": "d"}}, "e": "f"}));
    }
}
