//! Leader election on a coordination.k8s.io Lease, so two operator replicas never both write.
//!
//! The holder renews every `renew_every`; a Lease not renewed for `lease_duration` may be taken
//! over. A leader that cannot renew within its lease stops (the process exits and restarts as a
//! candidate) rather than risk two writers.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

#[derive(Clone, Debug)]
pub struct LeaderConfig {
    pub namespace: String,
    pub lease_name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_every: Duration,
}

/// Try once to become (or stay) the holder. `Ok(false)`: someone else holds a live lease.
pub async fn try_acquire(client: &Client, config: &LeaderConfig, now: jiff::Timestamp) -> Result<bool, kube::Error> {
    let api: Api<Lease> = Api::namespaced(client.clone(), &config.namespace);
    let held = |acquired: Option<MicroTime>| LeaseSpec {
        holder_identity: Some(config.identity.clone()),
        lease_duration_seconds: Some(config.lease_duration.as_secs() as i32),
        acquire_time: Some(acquired.unwrap_or(MicroTime(now))),
        renew_time: Some(MicroTime(now)),
        ..Default::default()
    };
    let result = match api.get_opt(&config.lease_name).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(config.lease_name.clone()), ..Default::default() },
                spec: Some(held(None)),
            };
            api.create(&PostParams::default(), &lease).await.map(|_| true)
        }
        Some(mut lease) => {
            let spec = lease.spec.clone().unwrap_or_default();
            let mine = spec.holder_identity.as_deref() == Some(config.identity.as_str());
            let taken = spec.holder_identity.as_deref().is_some_and(|h| !h.is_empty());
            if !mine && taken && !expired(&spec, now) {
                return Ok(false);
            }
            let acquired = if mine { spec.acquire_time.clone() } else { None };
            let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!mine);
            lease.spec = Some(LeaseSpec { lease_transitions: Some(transitions), ..held(acquired) });
            // The resourceVersion read above makes this a compare-and-swap: a racing candidate gets a 409.
            api.replace(&config.lease_name, &PostParams::default(), &lease).await.map(|_| true)
        }
    };
    match result {
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        other => other,
    }
}

fn expired(spec: &LeaseSpec, now: jiff::Timestamp) -> bool {
    let Some(renewed) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else {
        return true;
    };
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    renewed.0.as_second() + duration < now.as_second()
}

/// Wait until this replica holds the lease.
pub async fn acquire(client: &Client, config: &LeaderConfig) -> Result<(), kube::Error> {
    loop {
        match try_acquire(client, config, jiff::Timestamp::now()).await {
            Ok(true) => return Ok(()),
            Ok(false) => tracing::debug!(lease = %config.lease_name, "another replica leads; waiting"),
            Err(error) => tracing::warn!(%error, "leader election: lease not reachable; retrying"),
        }
        tokio::time::sleep(config.renew_every).await;
    }
}

/// Renew the lease until renewal fails for (almost) a lease duration; then return: leadership lost.
pub async fn hold(client: Client, config: LeaderConfig) {
    let mut last_renewed = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(config.renew_every).await;
        // A renewal stuck in a partition must not outlive the lease it is renewing.
        let attempt = tokio::time::timeout(config.renew_every, try_acquire(&client, &config, jiff::Timestamp::now()));
        match attempt.await {
            Ok(Ok(true)) => last_renewed = tokio::time::Instant::now(),
            Ok(Ok(false)) => return,
            Ok(Err(error)) => tracing::warn!(%error, "leader election: renewal failed"),
            Err(_) => tracing::warn!("leader election: renewal timed out"),
        }
        // Stop before the lease can expire under us, so a successor never overlaps this leader.
        if last_renewed.elapsed() + config.renew_every >= config.lease_duration {
            return;
        }
    }
}

/// Give the lease up on shutdown, so a successor need not wait for it to expire.
pub async fn release(client: &Client, config: &LeaderConfig) -> Result<(), kube::Error> {
    let api: Api<Lease> = Api::namespaced(client.clone(), &config.namespace);
    let Some(mut lease) = api.get_opt(&config.lease_name).await? else {
        return Ok(());
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.renew_time = None;
    api.replace(&config.lease_name, &PostParams::default(), &lease).await.map(|_| ())
}
