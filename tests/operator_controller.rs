//! The real controller, through the kube client, against the in-process API fake.

mod support;

use std::sync::Arc;
use std::time::Duration;

use cdp_operator::crd::{CustomerDataPlatform, Enricher, Feed, Source};
use cdp_operator::operator::{Context, Metrics, run_controllers};
use cdp_operator::pipeline::{self, PipelineConfig};
use http::Method;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams};
use kube::{Resource, ResourceExt};
use support::fake_api::FakeApi;

const NS: &str = "default";
const WAIT: Duration = Duration::from_secs(20);

/// Load the samples into the fake and start the operator's controllers on it.
async fn start() -> (FakeApi, kube::Client, tokio::task::JoinHandle<()>) {
    let (fake, client) = FakeApi::new();
    support::samples::put_samples_out_of_peak(&fake);
    let ctx = Arc::new(Context::new(client.clone(), Metrics::default()));
    let task = tokio::spawn(async move { run_controllers(ctx, &[NS.to_string()]).await });
    (fake, client, task)
}

fn platform(fake: &FakeApi) -> CustomerDataPlatform {
    fake.get(NS, "retail").expect("platform exists")
}

fn condition(fake: &FakeApi, type_: &str) -> Option<(String, String)> {
    let platform = platform(fake);
    let status = platform.status?;
    status.common.conditions.iter().find(|c| c.type_ == type_).map(|c| (c.status.clone(), c.reason.clone()))
}

fn member_condition<K: Resource<DynamicType = ()> + serde::de::DeserializeOwned + serde::Serialize>(
    fake: &FakeApi,
    name: &str,
    type_: &str,
) -> Option<(String, String, String)> {
    let obj: K = fake.get(NS, name)?;
    let value = serde_json::to_value(obj).unwrap();
    let conditions = value["status"]["conditions"].as_array()?.clone();
    conditions.iter().find(|c| c["type"] == type_).map(|c| {
        (c["status"].as_str().unwrap().into(), c["reason"].as_str().unwrap().into(), c["message"].as_str().unwrap().into())
    })
}

fn pipeline_config(fake: &FakeApi) -> Option<PipelineConfig> {
    let cm: ConfigMap = fake.get(NS, "retail-pipeline")?;
    serde_json::from_str(cm.data?.get("pipeline.json")?).ok()
}

/// Stand in for the kubelet and the deployment/statefulset controllers from now on: every
/// rollout the operator causes completes, as it would in a healthy cluster.
async fn make_everything_available(fake: &FakeApi) {
    fake.wait_until(WAIT, |f| f.get::<StatefulSet>(NS, "retail-postgres").is_some() && f.list::<Deployment>(Some(NS)).len() == 4)
        .await;
    let fake = fake.clone();
    tokio::spawn(async move {
        loop {
            for deployment in fake.list::<Deployment>(Some(NS)) {
                let observed = deployment.status.as_ref().and_then(|s| s.observed_generation);
                if observed != deployment.metadata.generation {
                    fake.mark_deployment_available(NS, &deployment.name_any());
                }
            }
            let sts: StatefulSet = fake.get(NS, "retail-postgres").unwrap();
            if sts.status.is_none() {
                fake.modify::<StatefulSet>(NS, "retail-postgres", |sts| {
                    sts.status = Some(serde_json::from_value(serde_json::json!({"replicas": 1, "readyReplicas": 1})).unwrap());
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}

#[tokio::test]
async fn applying_a_platform_creates_its_objects_and_reports_truthful_status() {
    let (fake, _client, task) = start().await;
    fake.wait_until(WAIT, |f| f.get::<Deployment>(NS, "retail-feeds").is_some() && condition(f, "Reconciling").is_some()).await;

    let owner_uid = platform(&fake).uid().unwrap();
    for (kind, name) in [("Deployment", "retail-ingest"), ("Deployment", "retail-api"), ("StatefulSet", "retail-postgres")] {
        let owners = match kind {
            "Deployment" => fake.get::<Deployment>(NS, name).unwrap().owner_references().to_vec(),
            _ => fake.get::<StatefulSet>(NS, name).unwrap().owner_references().to_vec(),
        };
        assert_eq!(owners.len(), 1, "{name}");
        assert_eq!((owners[0].uid.as_str(), owners[0].controller), (owner_uid.as_str(), Some(true)), "{name}");
    }
    assert!(fake.get::<Service>(NS, "retail-api").is_some());
    assert!(fake.get::<NetworkPolicy>(NS, "retail-ingest").is_some());
    assert!(fake.get::<Secret>(NS, "retail-store").is_some(), "generated store password");

    // Nothing is available yet: the status says so instead of echoing what was sent.
    assert_eq!(condition(&fake, "Ready").unwrap().0, "False");
    assert_eq!(condition(&fake, "Reconciling").unwrap().0, "True");

    make_everything_available(&fake).await;
    fake.wait_until(WAIT, |f| condition(f, "Ready").is_some_and(|(s, _)| s == "True")).await;
    let status = platform(&fake).status.unwrap();
    assert_eq!(status.common.observed_generation, platform(&fake).metadata.generation);
    assert_eq!(condition(&fake, "Reconciling").unwrap().0, "False");
    assert_eq!(status.config_hash.as_deref(), Some(pipeline_config(&fake).unwrap().content_hash().as_str()));
    assert!(status.workloads.iter().all(|w| w.available), "{:?}", status.workloads);
    assert_eq!(status.members.unwrap().sources, 3);
    // Members carry their own Ready condition.
    assert_eq!(member_condition::<Source>(&fake, "pos", "Ready").unwrap().0, "True");
    task.abort();
}

#[tokio::test]
async fn scaled_replicas_are_owned_by_the_scaler_field_manager() {
    let (fake, _client, task) = start().await;
    fake.wait_until(WAIT, |f| f.get::<Deployment>(NS, "retail-ingest").and_then(|d| d.spec?.replicas).is_some()).await;
    let ingest: Deployment = fake.get(NS, "retail-ingest").unwrap();
    assert_eq!(ingest.spec.as_ref().unwrap().replicas, Some(2), "floor of the platform's ingest bounds");
    let managers: Vec<String> = ingest.managed_fields().iter().filter_map(|m| m.manager.clone()).collect();
    assert!(managers.contains(&"cdp-operator".to_string()) && managers.contains(&"cdp-operator-scaler".to_string()), "{managers:?}");
    task.abort();
}

#[tokio::test]
async fn deleting_a_source_changes_the_pipeline_config() {
    let (fake, client, task) = start().await;
    let status_hash = |f: &FakeApi| platform(f).status.and_then(|s| s.config_hash);
    fake.wait_until(WAIT, |f| pipeline_config(f).is_some_and(|c| Some(c.content_hash()) == status_hash(f))).await;
    let before = status_hash(&fake);

    Api::<Source>::namespaced(client, NS).delete("ticketing", &DeleteParams::default()).await.unwrap();
    fake.wait_until(WAIT, |f| pipeline_config(f).is_some_and(|c| c.source("ticketing").is_none())).await;
    fake.wait_until(WAIT, |f| status_hash(f) != before && pipeline_config(f).map(|c| c.content_hash()) == status_hash(f)).await;
    let rolled: Deployment = fake.get(NS, "retail-ingest").unwrap();
    let annotation = rolled.spec.unwrap().template.metadata.unwrap().annotations.unwrap()["cdp.dev/config-hash"].clone();
    assert_eq!(Some(annotation), platform(&fake).status.and_then(|s| s.config_hash), "pods roll to the new config");
    task.abort();
}

#[tokio::test]
async fn feed_with_unknown_attribute_is_stalled_while_the_rest_stays_ready() {
    let (fake, _client, task) = start().await;
    make_everything_available(&fake).await;
    fake.wait_until(WAIT, |f| condition(f, "Ready").is_some_and(|(s, _)| s == "True")).await;

    fake.modify::<Feed>(NS, "crm", |feed| feed.spec.attributes.push("attributes.shoeSize".to_string()));
    fake.wait_until(WAIT, |f| member_condition::<Feed>(f, "crm", "Stalled").is_some_and(|(s, _, _)| s == "True")).await;
    let (ready, reason, message) = member_condition::<Feed>(&fake, "crm", "Ready").unwrap();
    assert_eq!((ready.as_str(), reason.as_str()), ("False", "UnmappedAttribute"));
    assert!(message.contains("spec.attributes[6]") && message.contains("attributes.shoeSize"), "{message}");
    assert_eq!(member_condition::<Feed>(&fake, "sms-gateway", "Ready").unwrap().0, "True");
    fake.wait_until(WAIT, |f| pipeline_config(f).is_some_and(|c| c.feeds.len() == 1)).await;
    fake.wait_until(WAIT, |f| platform(f).status.and_then(|s| s.members).is_some_and(|m| m.rejected == 1)).await;
    // One bad Feed does not take the platform down: it rolls out the config without it and is Ready.
    assert_eq!(condition(&fake, "Stalled").unwrap().0, "False");
    fake.wait_until(WAIT, |f| condition(f, "Ready").is_some_and(|(s, _)| s == "True")).await;
    assert!(pipeline_config(&fake).unwrap().feeds.iter().all(|f| f.name == "sms-gateway"));
    task.abort();
}

#[tokio::test]
async fn pause_annotation_stops_changes() {
    let (fake, _client, task) = start().await;
    fake.wait_until(WAIT, |f| pipeline_config(f).is_some()).await;
    fake.modify::<CustomerDataPlatform>(NS, "retail", |p| {
        p.annotations_mut().insert("cdp.dev/paused".to_string(), "true".to_string());
    });
    fake.wait_until(WAIT, |f| condition(f, "Paused").is_some_and(|(s, _)| s == "True")).await;
    let before = fake.get::<ConfigMap>(NS, "retail-pipeline").unwrap().resource_version();

    let patches_of_objects = |f: &FakeApi| {
        f.requests().iter().filter(|r| r.method == Method::PATCH && (r.path.contains("/apis/apps/") || r.path.contains("/configmaps/"))).count()
    };
    let patches_before = patches_of_objects(&fake);
    fake.modify::<Source>(NS, "pos", |s| s.spec.trust_rank = 99);
    // The member status follows the change (it is not a platform object) ...
    fake.wait_until(WAIT, |f| {
        let pos: Source = f.get(NS, "pos").unwrap();
        pos.status.is_some_and(|s| s.common.observed_generation == pos.metadata.generation)
    })
    .await;
    // ... and the platform's status is written after any apply would have been; nothing was sent.
    fake.wait_until(WAIT, |f| platform(f).status.is_some_and(|s| s.common.observed_generation == platform(f).metadata.generation)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(patches_of_objects(&fake), patches_before, "no apply while paused");
    assert_eq!(fake.get::<ConfigMap>(NS, "retail-pipeline").unwrap().resource_version(), before);
    let in_force = pipeline_config(&fake).unwrap().content_hash();
    assert_eq!(platform(&fake).status.unwrap().config_hash, Some(in_force.clone()), "status shows the config in force");

    fake.modify::<CustomerDataPlatform>(NS, "retail", |p| {
        p.annotations_mut().remove("cdp.dev/paused");
    });
    fake.wait_until(WAIT, |f| pipeline_config(f).and_then(|c| c.source("pos").map(|s| s.spec.trust_rank)) == Some(99)).await;
    fake.wait_until(WAIT, |f| condition(f, "Paused").is_some_and(|(s, _)| s == "False")).await;
    assert_ne!(platform(&fake).status.unwrap().config_hash, Some(in_force), "the new config is in force once resumed");
    task.abort();
}

#[tokio::test]
async fn api_errors_and_conflicts_are_retried_not_fatal() {
    let (fake, _client, task) = start().await;
    // The first applies of the ConfigMap fail with 500s, then a status write conflicts.
    fake.fail_next(Method::PATCH, "/configmaps/retail-pipeline", 2);
    fake.conflict_next_update("/customerdataplatforms/retail/status");
    fake.wait_until(WAIT, |f| pipeline_config(f).is_some()).await;
    make_everything_available(&fake).await;
    fake.wait_until(WAIT, |f| condition(f, "Ready").is_some_and(|(s, _)| s == "True")).await;
    let failed_patches = fake
        .requests()
        .iter()
        .filter(|r| r.method == Method::PATCH && r.path.ends_with("/configmaps/retail-pipeline"))
        .count();
    assert!(failed_patches >= 3, "two failures then a success: {failed_patches}");
    let status_writes = fake
        .requests()
        .iter()
        .filter(|r| r.method == Method::PATCH && r.path.ends_with("/customerdataplatforms/retail/status"))
        .count();
    assert!(status_writes >= 2, "the conflicted status write was retried: {status_writes}");
    task.abort();
}

#[tokio::test]
async fn lost_store_password_stalls_instead_of_regenerating() {
    let (fake, client, task) = start().await;
    fake.wait_until(WAIT, |f| f.get::<Secret>(NS, "retail-store").is_some()).await;
    let secret: Secret = fake.get(NS, "retail-store").unwrap();
    assert!(secret.owner_references().is_empty(), "the password outlives the platform, like its data volume");
    // The StatefulSet controller created the data volume; then someone deletes the password.
    fake.put(&serde_json::from_value::<k8s_openapi::api::core::v1::PersistentVolumeClaim>(serde_json::json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data-retail-postgres-0", "namespace": NS},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "20Gi"}}}
    })).unwrap());
    Api::<Secret>::namespaced(client, NS).delete("retail-store", &DeleteParams::default()).await.unwrap();
    fake.wait_until(WAIT, |f| condition(f, "Stalled").is_some_and(|(s, r)| s == "True" && r == "StorePasswordLost")).await;
    assert!(fake.get::<Secret>(NS, "retail-store").is_none(), "no new password was generated");
    task.abort();
}

#[tokio::test]
async fn refused_apply_stalls_with_the_server_message() {
    let (fake, _client, task) = start().await;
    fake.wait_until(WAIT, |f| pipeline_config(f).is_some()).await;
    // An immutable-field change on the StatefulSet is refused with 422 by a real API server.
    fake.fail_next_with(Method::PATCH, "/statefulsets/retail-postgres", 422, "spec: Forbidden: updates to statefulset spec for fields other than 'replicas' ... are forbidden", 1000);
    fake.modify::<CustomerDataPlatform>(NS, "retail", |p| {
        p.spec.store.in_cluster.as_mut().unwrap().storage = "50Gi".into();
    });
    fake.wait_until(WAIT, |f| condition(f, "Stalled").is_some_and(|(s, r)| s == "True" && r == "ApplyRefused")).await;
    let platform = platform(&fake);
    let ready = platform.status.unwrap().common.conditions.into_iter().find(|c| c.type_ == "Ready").unwrap();
    assert!(ready.message.contains("StatefulSet retail-postgres") && ready.message.contains("Forbidden"), "{}", ready.message);
    task.abort();
}

#[tokio::test]
async fn failures_are_counted_by_reason_in_metrics() {
    let (fake, client) = FakeApi::new();
    let manifests = pipeline::load_dir(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/samples")).unwrap();
    manifests.secrets.iter().for_each(|s| {
        fake.put(s);
    });
    fake.put(&manifests.platforms[0]);
    fake.fail_next(Method::PATCH, "/configmaps/retail-pipeline", 1);
    let metrics = Metrics::default();
    let ctx = Arc::new(Context::new(client, metrics.clone()));
    let task = tokio::spawn(async move { run_controllers(ctx, &[NS.to_string()]).await });
    fake.wait_until(WAIT, |f| pipeline_config(f).is_some()).await;
    let text = metrics.encode();
    assert!(text.contains("cdp_operator_reconcile_errors_total{reason=\"KubeApi\"} 1"), "{text}");
    assert!(text.contains("cdp_operator_reconcile_duration_seconds_count"), "{text}");
    task.abort();
}

#[tokio::test]
async fn store_password_is_never_regenerated() {
    let (fake, client, task) = start().await;
    fake.wait_until(WAIT, |f| f.get::<Secret>(NS, "retail-store").is_some()).await;
    let password = fake.get::<Secret>(NS, "retail-store").unwrap().data.unwrap()["password"].clone();
    // Any change triggers a full reconcile; the password Secret must be left as it is.
    Api::<Source>::namespaced(client, NS).delete("pos", &DeleteParams::default()).await.unwrap();
    fake.wait_until(WAIT, |f| pipeline_config(f).is_some_and(|c| c.source("pos").is_none())).await;
    assert_eq!(fake.get::<Secret>(NS, "retail-store").unwrap().data.unwrap()["password"], password);
    task.abort();
}

#[tokio::test]
async fn settled_platform_stops_writing() {
    let (fake, _client, task) = start().await;
    make_everything_available(&fake).await;
    fake.wait_until(WAIT, |f| condition(f, "Ready").is_some_and(|(s, _)| s == "True")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let writes = |f: &FakeApi| f.requests().iter().filter(|r| r.method != Method::GET).count();
    let settled = writes(&fake);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(writes(&fake), settled, "no hot loop: a settled platform makes no further writes");
    task.abort();
}

#[tokio::test]
async fn member_of_a_missing_platform_is_stalled() {
    let (fake, client, task) = start().await;
    let mut stray: Source = fake.get(NS, "pos").unwrap();
    stray.metadata = kube::api::ObjectMeta { name: Some("kiosk".into()), namespace: Some(NS.into()), ..Default::default() };
    stray.spec.platform_ref.name = "wholesale".into();
    stray.status = None;
    fake.put(&stray);
    fake.wait_until(WAIT, |f| member_condition::<Source>(f, "kiosk", "Stalled").is_some_and(|(s, _, _)| s == "True")).await;
    let (_, reason, message) = member_condition::<Source>(&fake, "kiosk", "Ready").unwrap();
    assert_eq!(reason, "PlatformNotFound");
    assert!(message.contains("\"wholesale\" does not exist"), "{message}");

    // Deleting the platform leaves its members Stalled too, not silently Ready.
    fake.wait_until(WAIT, |f| member_condition::<Source>(f, "pos", "Ready").is_some_and(|(s, _, _)| s == "True")).await;
    Api::<CustomerDataPlatform>::namespaced(client, NS).delete("retail", &DeleteParams::default()).await.unwrap();
    fake.wait_until(WAIT, |f| member_condition::<Source>(f, "pos", "Ready").is_some_and(|(_, r, _)| r == "PlatformNotFound")).await;
    task.abort();
}

#[tokio::test]
async fn peak_window_in_force_raises_the_replica_floor() {
    let (fake, _client, task) = start().await;
    fake.wait_until(WAIT, |f| f.get::<Deployment>(NS, "retail-ingest").and_then(|d| d.spec?.replicas) == Some(2)).await;
    let now = jiff::Timestamp::now();
    fake.modify::<cdp_operator::crd::ScalingPolicy>(NS, "retail", |p| {
        let window = &mut p.spec.peak_windows[0];
        window.start = Some((now - jiff::SignedDuration::from_hours(1)).to_string());
        window.end = Some((now + jiff::SignedDuration::from_hours(1)).to_string());
    });
    fake.wait_until(WAIT, |f| f.get::<Deployment>(NS, "retail-ingest").and_then(|d| d.spec?.replicas) == Some(8)).await;
    let matcher: Deployment = fake.get(NS, "retail-matcher").unwrap();
    assert_eq!(matcher.spec.unwrap().replicas, Some(6), "the opening-night floor of the matcher");
    task.abort();
}

#[tokio::test]
async fn an_enricher_joins_the_pipeline_config_and_reports_ready_or_why_not() {
    let (fake, _client, task) = start().await;
    make_everything_available(&fake).await;
    fake.wait_until(WAIT, |f| condition(f, "Ready").is_some_and(|(s, _)| s == "True")).await;
    let before = pipeline_config(&fake).unwrap().content_hash();

    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/enrichment/address-enricher.yaml");
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&std::fs::read_to_string(path).unwrap()).unwrap();
    for mut doc in docs {
        doc["metadata"]["namespace"] = NS.into();
        match doc["kind"].as_str() {
            Some("Secret") => {
                fake.put(&serde_json::from_value::<Secret>(doc).unwrap());
            }
            _ => {
                fake.put(&serde_json::from_value::<Enricher>(doc).unwrap());
            }
        }
    }
    fake.wait_until(WAIT, |f| member_condition::<Enricher>(f, "address", "Ready").is_some_and(|(s, _, _)| s == "True")).await;
    fake.wait_until(WAIT, |f| pipeline_config(f).is_some_and(|c| !c.enrichers.is_empty())).await;
    let config = pipeline_config(&fake).unwrap();
    assert_eq!(config.enrichers.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["address"]);
    assert_ne!(config.content_hash(), before, "the workloads roll onto the enricher");

    // an enricher sending what no Source maps is Stalled, and leaves the config
    fake.modify::<Enricher>(NS, "address", |e| e.spec.attributes.push("attributes.shoeSize".into()));
    fake.wait_until(WAIT, |f| member_condition::<Enricher>(f, "address", "Stalled").is_some_and(|(s, _, _)| s == "True")).await;
    let (_, reason, message) = member_condition::<Enricher>(&fake, "address", "Ready").unwrap();
    assert_eq!(reason, "UnmappedAttribute");
    assert!(message.contains("spec.attributes[3]"), "{message}");
    fake.wait_until(WAIT, |f| pipeline_config(f).is_some_and(|c| c.enrichers.is_empty())).await;
    task.abort();
}
