//! Group commit of intake. Concurrent intake requests hand their payloads to one committer per
//! store, which takes everything waiting and stores it in one transaction (suppression check,
//! queue, quarantine, a few multi-row statements), then answers each request once that
//! transaction is committed. One small transaction per request was what capped intake: each
//! paid its own commit, and on SQLite they queued for the one writer with the matchers' batches.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::{Enqueued, FieldError, MessageOrigin, NewQuarantine, Result, Store, StoreError, WriteTx, now_ms};
use crate::identity::CanonicalRecord;

/// Records in one group at most (a larger request is a group of its own): bounds the size of a
/// transaction, and so the wait of the requests that arrive while it commits.
const MAX_GROUP: usize = 4096;
/// Requests waiting for the committer at most; beyond, senders wait (back-pressure).
const QUEUE_DEPTH: usize = 1024;
/// Tries of a group's transaction when it conflicts with another writer (another process's
/// group on the same keys, SQLite busy): a failure fails every request of the group.
const ATTEMPTS: u32 = 3;

/// One payload of an intake request.
#[derive(Debug)]
pub struct Arrival {
    /// Keyed hashes of its identifiers → attribute: a payload carrying one on the suppression
    /// list is refused (empty: nothing to check).
    pub identifiers: BTreeMap<String, String>,
    /// The [`fingerprint`] of the payload as delivered.
    pub fingerprint: String,
    pub payload: Payload,
}

/// A digest of a payload as its source delivered it: the same payload re-sent has the same
/// one, whatever its fields' order. It tells a redelivery from other content sent under an
/// event id already used, and keeps a re-sent invalid payload once in quarantine. 128 bits of
/// SHA-256: the payload cannot be read back from it.
pub fn fingerprint(source: &str, payload: &serde_json::Value) -> String {
    use sha2::{Digest, Sha256};
    // serde_json's maps are sorted, so the text does not depend on the order fields came in
    let digest = Sha256::new().chain_update(source).chain_update([0]).chain_update(payload.to_string()).finalize();
    hex::encode(&digest[..16])
}

#[derive(Debug)]
pub enum Payload {
    /// Valid: queued for the matchers.
    Record(CanonicalRecord),
    /// Invalid: kept in quarantine with every reason it failed, and the Kafka message it came in.
    Invalid { source: String, payload: serde_json::Value, errors: Vec<FieldError>, origin: Option<MessageOrigin> },
}

/// What became of an arrival.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    Queued(Enqueued),
    Quarantined(i64),
    /// It carries identifiers of an erased person (these attributes): not stored at all.
    Refused(Vec<String>),
    /// Its source sent its event id before with other content (the intake id of that first
    /// delivery, which stands): not stored.
    Conflict(i64),
}

/// A request waiting for the committer.
pub(super) struct Request {
    arrivals: Vec<Arrival>,
    reply: oneshot::Sender<Result<Vec<Admission>>>,
}

pub(super) type Queue = mpsc::Sender<Request>;

/// Start `store`'s committer; it ends once every sender of the returned queue is dropped.
pub(super) fn spawn_committer(store: Store) -> Queue {
    let (queue, requests) = mpsc::channel(QUEUE_DEPTH);
    tokio::spawn(commit_groups(store, requests));
    queue
}

async fn commit_groups(store: Store, mut requests: mpsc::Receiver<Request>) {
    let mut held = None;
    loop {
        let first = match held.take() {
            Some(request) => request,
            None => match requests.recv().await {
                Some(request) => request,
                None => return,
            },
        };
        let (group, next) = take_group(first, &mut requests);
        held = next;
        commit(&store, group).await;
    }
}

/// `first` and whatever waits behind it, up to [`MAX_GROUP`] records; a request that would
/// pass the bound is handed back to open the next group. Never waits for more: a lone
/// request is committed at once.
fn take_group(first: Request, requests: &mut mpsc::Receiver<Request>) -> (Vec<Request>, Option<Request>) {
    let mut size = first.arrivals.len();
    let mut group = vec![first];
    while size < MAX_GROUP {
        let Ok(request) = requests.try_recv() else { break };
        if size + request.arrivals.len() > MAX_GROUP {
            return (group, Some(request));
        }
        size += request.arrivals.len();
        group.push(request);
    }
    (group, None)
}

/// Store a group and answer each of its requests with its own admissions, or all with the error.
async fn commit(store: &Store, group: Vec<Request>) {
    let started = Instant::now();
    let arrivals: Vec<&Arrival> = group.iter().flat_map(|r| &r.arrivals).collect();
    let result = store_group(store, &arrivals).await;
    let ms = started.elapsed().as_millis() as u64;
    tracing::debug!(requests = group.len(), records = arrivals.len(), ms, ok = result.is_ok(), "intake group");
    // a request whose caller is gone was stored all the same: its redelivery is absorbed
    match result {
        Ok(admissions) => {
            let mut admissions = admissions.into_iter();
            for request in group {
                let own = admissions.by_ref().take(request.arrivals.len()).collect();
                let _ = request.reply.send(Ok(own));
            }
        }
        Err(error) => {
            let error = Arc::new(error);
            for request in group {
                let _ = request.reply.send(Err(StoreError::Group(error.clone())));
            }
        }
    }
}

async fn store_group(store: &Store, arrivals: &[&Arrival]) -> Result<Vec<Admission>> {
    let mut attempt = 1;
    loop {
        let result: Result<_> = async {
            let mut tx = store.begin().await?;
            let admissions = tx.admit(arrivals, now_ms()).await?;
            tx.commit().await?;
            Ok(admissions)
        }
        .await;
        match result {
            Err(error) if error.is_conflict() && attempt < ATTEMPTS => {
                tracing::debug!(%error, attempt, "intake group conflicted; retrying");
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// The attributes of `identifiers` whose hash is suppressed, sorted (none: not refused).
fn refused(identifiers: &BTreeMap<String, String>, suppressed: &BTreeSet<String>) -> Vec<String> {
    let attributes: BTreeSet<&String> = identifiers.iter().filter(|(h, _)| suppressed.contains(*h)).map(|(_, a)| a).collect();
    attributes.into_iter().cloned().collect()
}

impl WriteTx {
    /// Store arrivals, in order: refused when they carry a suppressed identifier (checked in
    /// this transaction, so an erasure cannot commit in between), else queued or quarantined.
    pub(super) async fn admit(&mut self, arrivals: &[&Arrival], now: i64) -> Result<Vec<Admission>> {
        let hashes: BTreeSet<String> = arrivals.iter().flat_map(|a| a.identifiers.keys().cloned()).collect();
        let suppressed = self.suppressed(&hashes).await?;
        let refusals: Vec<Vec<String>> = arrivals.iter().map(|a| refused(&a.identifiers, &suppressed)).collect();
        let admitted = || arrivals.iter().zip(&refusals).filter(|(_, r)| r.is_empty()).map(|(a, _)| *a);
        let records: Vec<(&CanonicalRecord, Option<&str>)> = admitted()
            .filter_map(|a| match &a.payload {
                Payload::Record(r) => Some((r, Some(a.fingerprint.as_str()))),
                Payload::Invalid { .. } => None,
            })
            .collect();
        let invalid: Vec<NewQuarantine> = admitted()
            .filter_map(|a| match &a.payload {
                Payload::Invalid { source, payload, errors, origin } => {
                    Some(NewQuarantine { source, payload, errors, fingerprint: &a.fingerprint, origin: origin.as_ref() })
                }
                Payload::Record(_) => None,
            })
            .collect();
        let mut queued = self.enqueue(&records, now).await?.into_iter();
        let mut quarantined = self.quarantine(&invalid, now).await?.into_iter();
        let admissions = arrivals.iter().zip(refusals).map(|(a, refused)| match &a.payload {
            _ if !refused.is_empty() => Admission::Refused(refused),
            Payload::Record(_) => match queued.next().expect("one answer per record") {
                enqueued if enqueued.conflict => Admission::Conflict(enqueued.intake_id),
                enqueued => Admission::Queued(enqueued),
            },
            Payload::Invalid { .. } => Admission::Quarantined(quarantined.next().expect("one id per entry")),
        });
        Ok(admissions.collect())
    }
}

impl Store {
    /// Durably store intake, in order: refused (an identifier of an erased person), queued
    /// (valid; a redelivery is absorbed) or quarantined (invalid). Concurrent calls share one
    /// transaction; each answer comes once it is committed, and if it fails, every call in it
    /// fails.
    pub async fn admit(&self, arrivals: Vec<Arrival>) -> Result<Vec<Admission>> {
        if arrivals.is_empty() {
            return Ok(Vec::new());
        }
        let queue = self.intake.as_ref().ok_or(StoreError::CommitterStopped)?;
        self.intake_seen_ms.store(now_ms(), std::sync::atomic::Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        queue.send(Request { arrivals, reply }).await.map_err(|_| StoreError::CommitterStopped)?;
        answer.await.map_err(|_| StoreError::CommitterStopped)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(records: usize) -> Request {
        let arrival = || Arrival {
            identifiers: BTreeMap::new(),
            fingerprint: String::new(),
            payload: Payload::Invalid { source: "s".into(), payload: serde_json::Value::Null, errors: Vec::new(), origin: None },
        };
        Request { arrivals: (0..records).map(|_| arrival()).collect(), reply: oneshot::channel().0 }
    }

    fn sizes(group: &[Request]) -> Vec<usize> {
        group.iter().map(|r| r.arrivals.len()).collect()
    }

    #[test]
    fn a_group_takes_what_waits_up_to_the_bound() {
        let (queue, mut requests) = mpsc::channel(16);
        // alone: committed at once
        let (group, held) = take_group(request(1), &mut requests);
        assert_eq!((sizes(&group), held.is_none()), (vec![1], true));
        for n in [10, MAX_GROUP - 20, 11, 1] {
            queue.try_send(request(n)).ok().unwrap();
        }
        let (group, held) = take_group(request(5), &mut requests);
        assert_eq!(sizes(&group), vec![5, 10, MAX_GROUP - 20]);
        // the request that would pass the bound opens the next group, with what is behind it
        let held = held.unwrap();
        let (group, none) = take_group(held, &mut requests);
        assert_eq!((sizes(&group), none.is_none()), (vec![11, 1], true));
        // a request larger than the bound is a group of its own
        queue.try_send(request(1)).ok().unwrap();
        let (group, held) = take_group(request(MAX_GROUP + 1), &mut requests);
        assert_eq!((sizes(&group), held.map(|r| r.arrivals.len())), (vec![MAX_GROUP + 1], None));
        assert_eq!(requests.try_recv().map(|r| r.arrivals.len()).ok(), Some(1));
    }

    #[test]
    fn refused_names_the_suppressed_attributes() {
        let identifiers = BTreeMap::from([
            ("h1".to_string(), "email".to_string()),
            ("h2".to_string(), "phone".to_string()),
            ("h3".to_string(), "email".to_string()),
        ]);
        let suppressed = |hashes: &[&str]| hashes.iter().map(|h| h.to_string()).collect::<BTreeSet<_>>();
        assert!(refused(&identifiers, &suppressed(&["h9"])).is_empty());
        assert_eq!(refused(&identifiers, &suppressed(&["h3", "h1"])), vec!["email"]);
        assert_eq!(refused(&identifiers, &suppressed(&["h2", "h3"])), vec!["email", "phone"]);
    }
}
