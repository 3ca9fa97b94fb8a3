//! The platform controller: dereference → validate → build (pure) → apply → status.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ListParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::core::PartialObjectMeta;
use kube::runtime::{Controller, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use thiserror::Error;

use super::apply::{self, SCALER_MANAGER};
use super::leader::{self, LeaderConfig};
use super::members;
use super::metrics::Metrics;
use super::render::{self, RenderError, StorePassword, Workload};
use super::scaler::{self, Scaler, ScalerOptions};
use super::status::{self, Phase};
use crate::crd::common::{CommonStatus, condition};
use crate::crd::platform::{CustomerDataPlatformStatus, MemberCounts};
use crate::crd::{CustomerDataPlatform, Enricher, Feed, MatchingPolicy, ScalingPolicy, Source};
use crate::pipeline::{self, Compiled, Members, PipelineConfig};

/// Annotation that stops every change to a platform's objects while set to "true".
pub const PAUSED_ANNOTATION: &str = "cdp.dev/paused";

#[derive(clap::Args, Clone, Debug)]
pub struct OperatorArgs {
    /// Namespaces to watch (comma-separated); all namespaces when empty.
    #[arg(long, value_delimiter = ',', env = "CDP_WATCH_NAMESPACES")]
    pub namespaces: Vec<String>,
    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Namespace of the leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "cdp-system")]
    pub leader_election_namespace: String,
    /// Run without leader election (a single replica, or local development).
    #[arg(long)]
    pub no_leader_election: bool,
    #[command(flatten)]
    pub images: super::ImageArgs,
}

#[derive(Debug, Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Apply(#[from] apply::ApplyError),
    #[error(transparent)]
    Render(#[from] RenderError),
}

impl Error {
    /// Metric label and event reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(status)) | Error::Apply(apply::ApplyError { source: kube::Error::Api(status), .. })
                if status.code == 409 =>
            {
                "Conflict"
            }
            Error::Kube(_) | Error::Apply(_) => "KubeApi",
            Error::Render(e) => e.reason(),
        }
    }
}

pub struct Context {
    pub client: Client,
    pub metrics: Metrics,
    recorder: Recorder,
    /// What platforms whose spec names no image run.
    pub images: render::Images,
    /// Consecutive failures per platform, for exponential backoff.
    failures: Mutex<HashMap<ObjectRef<CustomerDataPlatform>, u32>>,
    pub(super) scaler: Scaler,
}

impl Context {
    pub fn new(client: Client, metrics: Metrics) -> Self {
        Self::with_scaler(client, metrics, ScalerOptions::default())
    }

    /// A context whose scaler polls and decides as `options` say.
    pub fn with_scaler(client: Client, metrics: Metrics, options: ScalerOptions) -> Self {
        let recorder = Recorder::new(client.clone(), Reporter::from("cdp-operator"));
        Self { client, metrics, recorder, images: render::Images::default(), failures: Mutex::default(), scaler: Scaler::new(options) }
    }

    pub(super) async fn event<K: Resource<DynamicType = ()>>(&self, obj: &K, type_: EventType, reason: &str, note: String) {
        let event = Event { type_, reason: reason.to_string(), note: Some(note), action: "Reconcile".to_string(), secondary: None };
        if let Err(error) = self.recorder.publish(&event, &obj.object_ref(&())).await {
            tracing::warn!(%error, reason, "could not publish event");
        }
    }
}

/// Run the operator until leadership is lost or a signal arrives.
pub async fn run(args: OperatorArgs) -> anyhow::Result<()> {
    let client = Client::try_default().await?;
    let version = client.apiserver_version().await?;
    tracing::info!(kubernetes = %version.git_version, "connected");
    let metrics = Metrics::default();
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    // Ready means "up and connected", not "leading": a standby must be ready, or a rolling
    // update with maxUnavailable 0 would wait forever for the old leader to step down.
    tokio::spawn(serve_health(listener, metrics.clone()));

    let identity = std::env::var("POD_NAME").unwrap_or_else(|_| format!("cdp-operator-{}", std::process::id()));
    let leader_config = LeaderConfig {
        namespace: args.leader_election_namespace.clone(),
        lease_name: "cdp-operator-leader".to_string(),
        identity,
        lease_duration: Duration::from_secs(15),
        renew_every: Duration::from_secs(2),
    };
    if !args.no_leader_election {
        tracing::info!(lease = %leader_config.lease_name, "waiting for leadership");
        leader::acquire(&client, &leader_config).await?;
        tracing::info!("leading");
    }
    let ctx = Arc::new(Context { images: args.images.images(), ..Context::new(client.clone(), metrics) });
    let controllers = run_controllers(ctx, &args.namespaces);
    if args.no_leader_election {
        controllers.await;
        return Ok(());
    }
    tokio::select! {
        _ = controllers => {
            // Shut down by a signal: hand leadership over at once.
            leader::release(&client, &leader_config).await?;
            Ok(())
        }
        _ = leader::hold(client.clone(), leader_config.clone()) => anyhow::bail!("leadership lost; exiting so a new leader can take over"),
    }
}

/// One controller per watched namespace (or one for all namespaces), run together.
pub async fn run_controllers(ctx: Arc<Context>, namespaces: &[String]) {
    let scopes: Vec<Option<&str>> =
        if namespaces.is_empty() { vec![None] } else { namespaces.iter().map(|n| Some(n.as_str())).collect() };
    let runs = scopes.into_iter().flat_map(|scope| {
        let platforms: futures::future::BoxFuture<'_, ()> = Box::pin(controller(ctx.clone(), scope));
        [
            platforms,
            Box::pin(members::orphan_controller::<Source>(ctx.clone(), scope)),
            Box::pin(members::orphan_controller::<MatchingPolicy>(ctx.clone(), scope)),
            Box::pin(members::orphan_controller::<Feed>(ctx.clone(), scope)),
            Box::pin(members::orphan_controller::<ScalingPolicy>(ctx.clone(), scope)),
            Box::pin(members::orphan_controller::<Enricher>(ctx.clone(), scope)),
        ]
    });
    futures::future::join_all(runs).await;
}

pub(super) fn scoped<K>(client: &Client, scope: Option<&str>) -> Api<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
{
    match scope {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

async fn controller(ctx: Arc<Context>, scope: Option<&str>) {
    let client = &ctx.client;
    let config = watcher::Config::default().any_semantic();
    let controller = Controller::new(scoped::<CustomerDataPlatform>(client, scope), config.clone());
    let platforms = controller.store();
    let scaling = scaler::run(ctx.clone(), platforms.clone());
    let reconciling = controller
        .owns(scoped::<Deployment>(client, scope), config.clone())
        .owns(scoped::<StatefulSet>(client, scope), config.clone())
        .owns(scoped::<ConfigMap>(client, scope), config.clone())
        .owns(scoped::<Service>(client, scope), config.clone())
        .watches(scoped::<Source>(client, scope), config.clone(), |s| platform_of(&s, &s.spec.platform_ref.name))
        .watches(scoped::<MatchingPolicy>(client, scope), config.clone(), |p| platform_of(&p, &p.spec.platform_ref.name))
        .watches(scoped::<Feed>(client, scope), config.clone(), |f| platform_of(&f, &f.spec.platform_ref.name))
        .watches(scoped::<ScalingPolicy>(client, scope), config.clone(), |p| platform_of(&p, &p.spec.platform_ref.name))
        .watches(scoped::<Enricher>(client, scope), config.clone(), |e| platform_of(&e, &e.spec.platform_ref.name))
        // Secrets carry no owner link to a platform: any change in a namespace re-checks its platforms.
        // Metadata only: the operator never caches Secret data.
        .watches(scoped::<PartialObjectMeta<Secret>>(client, scope), config.clone(), move |secret| {
            platforms_in(&platforms, secret.namespace())
        })
        .shutdown_on_signal()
        .run(reconcile_platform, error_policy, ctx.clone())
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "reconcile request failed");
            }
        });
    // The scaler lives as long as the controller (it stops with it on a signal).
    tokio::select! {
        _ = reconciling => {}
        _ = scaling => {}
    }
}

fn platform_of<K: Resource>(member: &K, platform: &str) -> Option<ObjectRef<CustomerDataPlatform>> {
    Some(ObjectRef::new(platform).within(&member.meta().namespace.clone().unwrap_or_default()))
}

fn platforms_in(store: &Store<CustomerDataPlatform>, namespace: Option<String>) -> Vec<ObjectRef<CustomerDataPlatform>> {
    store.state().iter().filter(|p| p.namespace() == namespace).map(|p| ObjectRef::from_obj(p.as_ref())).collect()
}

fn error_policy(platform: Arc<CustomerDataPlatform>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failed(error.reason());
    let attempts = {
        let mut failures = ctx.failures.lock().expect("failure map lock");
        let n = failures.entry(ObjectRef::from_obj(platform.as_ref())).or_insert(0);
        *n += 1;
        *n
    };
    let delay = Duration::from_millis(500 * 2u64.pow(attempts.min(10))).min(Duration::from_secs(300));
    tracing::warn!(platform = %platform.name_any(), %error, attempts, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// No finalizer: everything a platform creates carries its owner reference, so Kubernetes'
/// garbage collector removes it with the platform; nothing outside the owner tree needs cleanup.
pub async fn reconcile_platform(platform: Arc<CustomerDataPlatform>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    ctx.metrics.reconciles.inc();
    let span = tracing::info_span!("reconcile", platform = %platform.name_any(), namespace = ?platform.namespace());
    let result = tracing::Instrument::instrument(reconcile_inner(&platform, &ctx), span).await;
    ctx.metrics.duration.observe(started.elapsed().as_secs_f64());
    if result.is_ok() {
        ctx.failures.lock().expect("failure map lock").remove(&ObjectRef::from_obj(platform.as_ref()));
    }
    result
}

async fn reconcile_inner(platform: &CustomerDataPlatform, ctx: &Context) -> Result<Action, Error> {
    let client = &ctx.client;
    let namespace = platform.namespace().unwrap_or_default();
    let name = platform.name_any();
    if platform.metadata.deletion_timestamp.is_some() {
        // Being deleted: garbage collection removes the children; re-applying them would fight it.
        return Ok(Action::await_change());
    }

    // Dereference.
    let members = fetch_members(client, &namespace, platform).await?;
    // Validate.
    let compiled = pipeline::compile(platform, &members, crate::identity::default_model());
    members::update_statuses(ctx, &members, &compiled).await?;

    if let Some(error) = compiled.platform_errors.first() {
        let messages: Vec<String> = compiled.platform_errors.iter().map(ToString::to_string).collect();
        return stall(ctx, platform, &compiled, error.reason(), messages.join("; ")).await;
    }

    let paused = platform.annotations().get(PAUSED_ANNOTATION).is_some_and(|v| v == "true");
    // before the workloads, which read it when they start; left as it is while paused
    let privacy_key = if paused { None } else { Some(privacy_key(client, platform).await?) };
    if !paused {
        // Build (pure), then apply.
        let Some(password) = store_password(client, platform).await? else {
            let message = format!(
                "the store's data volume exists but its password Secret {} is gone; restore it \
                 (the database accepts only the password it was initialised with)",
                render::store_secret_name(&name)
            );
            return stall(ctx, platform, &compiled, "StorePasswordLost", message).await;
        };
        let bundle = render::render(platform, &compiled.config, &compiled.hash, &password, &ctx.images)?;
        if let Err(error) = apply_bundle(client, platform, &compiled.config, &bundle).await {
            return match error.refusal() {
                Some(message) => stall(ctx, platform, &compiled, "ApplyRefused", message).await,
                None => Err(error.into()),
            };
        }
    }

    // Status, from what the cluster reports.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    let mut workloads = Vec::new();
    for workload in Workload::ALL {
        let deployment = deployments.get_opt(&workload.object_name(&name)).await?;
        workloads.push(status::workload_status(workload.name(), deployment.as_ref()));
    }
    let store_ready = match platform.spec.store.external {
        Some(_) => true,
        None => {
            let sts: Api<StatefulSet> = Api::namespaced(client.clone(), &namespace);
            sts.get_opt(&render::store_name(&name))
                .await?
                .and_then(|s| s.status)
                .is_some_and(|s| s.ready_replicas.unwrap_or(0) >= 1)
        }
    };
    let phase = status::rollout_phase(&workloads, store_ready);
    let requeue = match phase {
        Phase::Ready { .. } => Duration::from_secs(300),
        _ => Duration::from_secs(15),
    };
    // Back when a peak window's floor rises, so its replicas are there at the lead time.
    let next_floor = effective_policy(platform, &compiled.config).and_then(|e| scaler::until_next_floor(&e, jiff::Timestamp::now()));
    let requeue = next_floor.map_or(requeue, |d| requeue.min(d + Duration::from_secs(1)));
    // The config in force is the one in the ConfigMap: while paused it is not the compiled one.
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
    let in_force = config_maps
        .get_opt(&render::config_map_name(platform))
        .await?
        .and_then(|cm| cm.annotations().get(render::CONFIG_HASH_ANNOTATION).cloned());
    let extra = ExtraConditions { paused, privacy_key };
    write_platform_status(ctx, platform, &compiled, phase, workloads, in_force, Some(extra)).await?;
    Ok(Action::requeue(requeue))
}

/// Stalled until a spec (or RBAC) changes: say why, with an Event, and retry only slowly.
async fn stall(ctx: &Context, platform: &CustomerDataPlatform, compiled: &Compiled, reason: &str, message: String) -> Result<Action, Error> {
    let phase = Phase::Stalled { reason: reason.to_string(), message };
    let in_force = platform.status.as_ref().and_then(|s| s.config_hash.clone());
    write_platform_status(ctx, platform, compiled, phase, vec![], in_force, None).await?;
    Ok(Action::requeue(Duration::from_secs(300)))
}

/// The resources of `namespace` that name the platform `name` (no Secret keys).
pub async fn platform_members(client: &Client, namespace: &str, name: &str) -> Result<Members, kube::Error> {
    async fn list<K>(client: &Client, namespace: &str, name: &str, platform_of: impl Fn(&K) -> &str) -> Result<Vec<K>, kube::Error>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(client.clone(), namespace);
        Ok(api.list(&ListParams::default()).await?.items.into_iter().filter(|k| platform_of(k) == name).collect())
    }
    Ok(Members {
        sources: list(client, namespace, name, |s: &Source| &s.spec.platform_ref.name).await?,
        matching_policies: list(client, namespace, name, |p: &MatchingPolicy| &p.spec.platform_ref.name).await?,
        feeds: list(client, namespace, name, |f: &Feed| &f.spec.platform_ref.name).await?,
        scaling_policies: list(client, namespace, name, |p: &ScalingPolicy| &p.spec.platform_ref.name).await?,
        enrichers: list(client, namespace, name, |e: &Enricher| &e.spec.platform_ref.name).await?,
        secret_keys: BTreeSet::new(),
    })
}

/// The platform's members and the Secret keys they (and the platform) reference.
async fn fetch_members(client: &Client, namespace: &str, platform: &CustomerDataPlatform) -> Result<Members, kube::Error> {
    let mut members = platform_members(client, namespace, &platform.name_any()).await?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    for secret_name in referenced_secrets(platform, &members) {
        if let Some(secret) = secrets.get_opt(&secret_name).await? {
            members.secret_keys.extend(pipeline::secret_keys(std::iter::once(&secret)));
        }
    }
    Ok(members)
}

fn referenced_secrets(platform: &CustomerDataPlatform, members: &Members) -> BTreeSet<String> {
    let sources = members.sources.iter().flat_map(|s| s.spec.secret_refs());
    let feeds = members.feeds.iter().flat_map(|f| f.spec.secret_refs());
    let enrichers = members.enrichers.iter().flat_map(|e| e.spec.secret_refs());
    platform.spec.secret_refs().into_iter().chain(sources).chain(feeds).chain(enrichers).map(|(_, r)| r.name.clone()).collect()
}

/// The generated store password is created once and never regenerated: the database was
/// initialised with it. `None`: the Secret is gone but the data volume is not, so a new password
/// would lock the workloads out.
async fn store_password(client: &Client, platform: &CustomerDataPlatform) -> Result<Option<StorePassword>, kube::Error> {
    if platform.spec.store.external.is_some() {
        return Ok(Some(StorePassword::Exists));
    }
    let namespace = platform.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    if secrets.get_opt(&render::store_secret_name(&platform.name_any())).await?.is_some() {
        return Ok(Some(StorePassword::Exists));
    }
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &namespace);
    let data_volume = claims.get_opt(&render::store_volume_claim_name(&platform.name_any())).await?;
    Ok(data_volume.is_none().then(|| StorePassword::Create(generate_password())))
}

/// The platform's conditions besides kstatus's, known once everything was applied.
struct ExtraConditions {
    paused: bool,
    /// `None` while paused: nothing was created.
    privacy_key: Option<PrivacyKey>,
}

/// Condition saying whether the key of the identifier hashes is in the platform's Secret.
const PRIVACY_KEY_CONDITION: &str = "PrivacyKey";
/// Its reason, and the Event's, when there is no Secret.
const PRIVACY_KEY_MISSING: &str = "PrivacyKeySecretMissing";

fn privacy_key_missing_message(secret: &str) -> String {
    format!(
        "Secret {secret} does not exist and the store may hold data, so no new key was made. A store made \
         before the key moved to a Secret keeps its key and the workloads use it; to move it out of the \
         store, put it in {secret} under `key` (see the README). If {secret} was deleted, restore it: the \
         workloads refuse any other key."
    )
}

/// Where the key of the platform's identifier hashes is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PrivacyKey {
    /// In the platform's privacy-key Secret.
    InSecret,
    /// No Secret, and a store that may hold data (see [`privacy_key`]).
    NoSecret,
}

/// The privacy-key Secret is created with a fresh key for a store that holds no data yet, once,
/// and never regenerated: the store's suppression list holds nothing but hashes made with it.
/// A store that may hold data (in the cluster: its data volume exists; external: the platform's
/// workloads ran on it) gets no new key. Either it was made before the key moved to a Secret,
/// and its workloads keep using the key it holds (the data plane would ignore another), or its
/// Secret was deleted and must be restored (the data plane refuses any other key). The operator
/// cannot read the store to tell which: the platform's status says both.
async fn privacy_key(client: &Client, platform: &CustomerDataPlatform) -> Result<PrivacyKey, Error> {
    let namespace = platform.namespace().unwrap_or_default();
    let name = platform.name_any();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    if secrets.get_opt(&render::privacy_key_secret_name(&name)).await?.is_some() {
        return Ok(PrivacyKey::InSecret);
    }
    if store_may_hold_data(client, platform).await? {
        return Ok(PrivacyKey::NoSecret);
    }
    let secret = render::privacy_key_secret(platform, &hex::encode(rand::random::<[u8; 32]>()))?;
    // a create, not an apply: it never overwrites a key, even one made meanwhile
    match secrets.create(&PostParams { field_manager: Some(apply::MANAGER.into()), ..PostParams::default() }, &secret).await {
        Ok(_) => Ok(PrivacyKey::InSecret),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(PrivacyKey::InSecret),
        Err(error) => Err(error.into()),
    }
}

/// Whether the platform's store may hold data already: its data volume exists (in the
/// cluster), or one of the platform's workloads does (an external store).
async fn store_may_hold_data(client: &Client, platform: &CustomerDataPlatform) -> Result<bool, kube::Error> {
    let namespace = platform.namespace().unwrap_or_default();
    let name = platform.name_any();
    if platform.spec.store.external.is_none() {
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &namespace);
        return Ok(claims.get_opt(&render::store_volume_claim_name(&name)).await?.is_some());
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    for workload in Workload::ALL {
        if deployments.get_opt(&workload.object_name(&name)).await?.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

fn generate_password() -> String {
    use rand::Rng;
    rand::rng().sample_iter(rand::distr::Alphanumeric).take(32).map(char::from).collect()
}

async fn apply_bundle(
    client: &Client,
    platform: &CustomerDataPlatform,
    config: &PipelineConfig,
    bundle: &render::Bundle,
) -> Result<(), apply::ApplyError> {
    apply::apply(client, &bundle.service_account).await?;
    apply::apply(client, &bundle.config_map).await?;
    if let Some(secret) = &bundle.store_secret {
        apply::apply(client, secret).await?;
    }
    if let Some(service) = &bundle.store_service {
        apply::apply(client, service).await?;
    }
    if let Some(store) = &bundle.store {
        apply::apply(client, store).await?;
    }
    for deployment in &bundle.deployments {
        apply::apply(client, deployment).await?;
    }
    for service in &bundle.services {
        apply::apply(client, service).await?;
    }
    for pdb in &bundle.disruption_budgets {
        apply::apply(client, pdb).await?;
    }
    for policy in &bundle.network_policies {
        apply::apply(client, policy).await?;
    }
    apply::apply(client, &bundle.api_autoscaler).await?;
    // the credentials before the triggers that name them
    let authentication = render::keda::trigger_authentication_resource();
    for trigger_authentication in &bundle.trigger_authentications {
        apply::apply_dynamic(client, &authentication, trigger_authentication).await?;
    }
    remove_stale_trigger_authentications(client, platform, &bundle.trigger_authentications)
        .await
        .map_err(|source| apply::ApplyError { object: "TriggerAuthentications of removed Kafka Sources".to_string(), source })?;
    let keda = render::keda::api_resource();
    for scaled_object in &bundle.scaled_objects {
        apply::apply_dynamic(client, &keda, scaled_object).await?;
    }
    if !bundle.scaled_objects.is_empty() {
        // KEDA's HPA owns the replica counts.
        return Ok(());
    }
    remove_scaled_objects(client, platform)
        .await
        .map_err(|source| apply::ApplyError { object: "ScaledObjects of a former KEDA mode".to_string(), source })?;
    hold_replicas_in_bounds(client, platform, config)
        .await
        .map_err(|source| apply::ApplyError { object: "replica counts".to_string(), source })
}

/// Out of KEDA mode, its ScaledObjects would fight the built-in scaler: delete any left. A
/// cluster without KEDA answers 404 for the kind, which means there is nothing to delete.
async fn remove_scaled_objects(client: &Client, platform: &CustomerDataPlatform) -> Result<(), kube::Error> {
    let namespace = platform.namespace().unwrap_or_default();
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), &namespace, &render::keda::api_resource());
    for workload in [Workload::Ingest, Workload::Matcher, Workload::Feeds] {
        let name = workload.object_name(&platform.name_any());
        match api.get_opt(&name).await {
            Ok(Some(_)) => {
                api.delete(&name, &Default::default()).await?;
            }
            Ok(None) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// The platform's TriggerAuthentications that are not in `kept` (a Kafka Source removed, its
/// credentials dropped, or KEDA mode left). A cluster without KEDA has none.
async fn remove_stale_trigger_authentications(
    client: &Client,
    platform: &CustomerDataPlatform,
    kept: &[kube::api::DynamicObject],
) -> Result<(), kube::Error> {
    let namespace = platform.namespace().unwrap_or_default();
    let resource = render::keda::trigger_authentication_resource();
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), &namespace, &resource);
    let selector = render::selector_labels(&platform.name_any(), Workload::Ingest.name())
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let found = match api.list(&kube::api::ListParams::default().labels(&selector)).await {
        Ok(found) => found.items,
        Err(kube::Error::Api(status)) if status.code == 404 => return Ok(()),
        Err(error) => return Err(error),
    };
    for stale in found.iter().filter(|o| !kept.iter().any(|k| k.metadata.name == o.metadata.name)) {
        api.delete(&stale.name_any(), &Default::default()).await?;
    }
    Ok(())
}

/// Until load-based scaling decides otherwise, keep each scaled workload within the bounds of
/// the platform and its ScalingPolicy, and at or above the floor of a peak window in force
/// (lead time included). The scaler's own field manager owns `spec.replicas`; the main apply
/// never sets it.
async fn hold_replicas_in_bounds(client: &Client, platform: &CustomerDataPlatform, config: &PipelineConfig) -> Result<(), kube::Error> {
    use crate::scaling::{Workload as Scaled, policy};
    let defaults = policy::PlatformDefaults::of(&platform.spec);
    let effective = effective_policy(platform, config);
    if scaler::pause_reason(platform, effective.as_ref()).is_some() {
        return Ok(());
    }
    let floors = effective.as_ref().map(|e| policy::floors_at(e, jiff::Timestamp::now()));
    let namespace = platform.namespace().unwrap_or_default();
    let api: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    for (workload, scaled) in [(Workload::Ingest, Scaled::Ingest), (Workload::Matcher, Scaled::Matcher), (Workload::Feeds, Scaled::Feeds)] {
        let bounds = effective.as_ref().map_or(defaults.get(scaled), |e| e.workload(scaled));
        let floor = floors.map_or(0, |f| f.get(scaled)).max(bounds.min_replicas).min(bounds.max_replicas) as i32;
        let name = workload.object_name(&platform.name_any());
        let current = api.get_opt(&name).await?.and_then(|d| d.spec).and_then(|s| s.replicas);
        let target = current.unwrap_or(floor).clamp(floor, bounds.max_replicas as i32);
        if current != Some(target) {
            let patch = serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment", "spec": {"replicas": target}});
            let params = kube::api::PatchParams::apply(SCALER_MANAGER).force();
            api.patch(&name, &params, &kube::api::Patch::Apply(patch)).await?;
        }
    }
    Ok(())
}

/// The compiled config's ScalingPolicies combined; `None` when they contradict (the policies'
/// own status says why).
fn effective_policy(platform: &CustomerDataPlatform, config: &PipelineConfig) -> Option<crate::scaling::policy::EffectivePolicy> {
    scaler::effective_policy(platform, config.scaling.iter().map(|p| (p.name.as_str(), &p.spec))).ok()
}

async fn write_platform_status(
    ctx: &Context,
    platform: &CustomerDataPlatform,
    compiled: &Compiled,
    phase: Phase,
    workloads: Vec<crate::crd::platform::WorkloadStatus>,
    config_hash: Option<String>,
    extra: Option<ExtraConditions>,
) -> Result<(), kube::Error> {
    let previous = platform.status.clone().unwrap_or_default();
    let generation = platform.meta().generation;
    let now = Time(jiff::Timestamp::now());
    let mut conditions = status::conditions(&previous.common.conditions, generation, &phase, &now);
    let mut privacy_key_missing = None;
    if let Some(ExtraConditions { paused, privacy_key }) = extra {
        let message = if paused { "changes to the platform's objects are paused by the cdp.dev/paused annotation" } else { "" };
        status::set(&mut conditions, &previous.common.conditions, condition::PAUSED, paused, if paused { "Paused" } else { "Active" }, message, generation, &now);
        if let Some(privacy_key) = privacy_key {
            let secret = render::privacy_key_secret_name(&platform.name_any());
            let (in_secret, reason, message) = match privacy_key {
                PrivacyKey::InSecret => (true, "InSecret", format!("Secret {secret} gives the workloads the key of the identifier hashes")),
                PrivacyKey::NoSecret => (false, PRIVACY_KEY_MISSING, privacy_key_missing_message(&secret)),
            };
            let was_missing = previous.common.conditions.iter().any(|c| c.type_ == PRIVACY_KEY_CONDITION && c.status == "False");
            if !in_secret && !was_missing {
                privacy_key_missing = Some(message.clone());
            }
            status::set(&mut conditions, &previous.common.conditions, PRIVACY_KEY_CONDITION, in_secret, reason, &message, generation, &now);
        }
    }
    let count = |kind: &str| compiled.verdicts.iter().filter(|v| v.kind == kind && v.accepted()).count() as u32;
    let next = CustomerDataPlatformStatus {
        common: CommonStatus { conditions, observed_generation: generation },
        store_endpoint: Some(match &platform.spec.store.external {
            Some(_) => "external".to_string(),
            None => render::store_endpoint(&platform.namespace().unwrap_or_default(), &platform.name_any()),
        }),
        config_hash,
        workloads,
        members: Some(MemberCounts {
            sources: count("Source"),
            feeds: count("Feed"),
            matching_policies: count("MatchingPolicy"),
            scaling_policies: count("ScalingPolicy"),
            rejected: compiled.rejected() as u32,
        }),
        // The scaler's part, applied by its own field manager.
        scaling: None,
    };
    let unchanged = status::same_status(&previous.common, &next.common)
        && previous.store_endpoint == next.store_endpoint
        && previous.config_hash == next.config_hash
        && previous.workloads == next.workloads
        && previous.members == next.members;
    if unchanged {
        return Ok(());
    }
    if let Some(message) = privacy_key_missing {
        ctx.event(platform, EventType::Warning, PRIVACY_KEY_MISSING, message).await;
    }
    let was_ready = previous.common.conditions.iter().any(|c| c.type_ == condition::READY && c.status == "True");
    match &phase {
        Phase::Ready { message } if !was_ready => ctx.event(platform, EventType::Normal, "Ready", message.clone()).await,
        Phase::Stalled { reason, message } => ctx.event(platform, EventType::Warning, reason, message.clone()).await,
        _ => {}
    }
    apply::apply_status(&ctx.client, platform, &next).await
}

async fn serve_health(listener: tokio::net::TcpListener, metrics: Metrics) {
    use axum::routing::get;
    let app = axum::Router::new()
        .route("/metrics", get(move || async move { metrics.encode() }))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }));
    if let Err(error) = axum::serve(listener, app).await {
        tracing::error!(%error, "health server stopped");
    }
}
