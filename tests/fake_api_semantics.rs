//! Exercises the fake API server through the real kube clients, watcher and Controller.


mod support;

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use support::fake_api::FakeApi;
use futures::{StreamExt, TryStreamExt};
use http::Method;
use k8s_openapi::api::{
    apps::v1::{Deployment, DeploymentSpec, DeploymentStatus},
    core::v1::{ConfigMap, Container, PodSpec, PodTemplateSpec},
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::{
    Api, Client, CustomResource, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams},
    runtime::{
        Controller, WatchStreamExt,
        controller::Action,
        finalizer::{self, Event as Finalizer, finalizer},
        watcher,
    },
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

fn config_map(name: &str, labels: &[(&str, &str)], data: &[(&str, &str)]) -> ConfigMap {
    let map = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>()
    };
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(map(labels)),
            ..Default::default()
        },
        data: Some(map(data)),
        ..Default::default()
    }
}

fn deployment(name: &str, replicas: i32) -> Deployment {
    let labels = BTreeMap::from([("app".to_string(), name.to_string())]);
    Deployment {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(labels.clone()),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "app".into(),
                        image: Some("app:1".into()),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The (code, reason) of an API error.
fn api_error<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> (u16, String) {
    match result {
        Err(kube::Error::Api(status)) => (status.code, status.reason),
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn names<K: ResourceExt>(objects: impl IntoIterator<Item = K>) -> Vec<String> {
    objects.into_iter().map(|o| o.name_any()).collect()
}

#[tokio::test]
async fn create_get_list_and_errors() {
    let (fake, client) = FakeApi::new();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "ns");
    let pp = PostParams::default();

    let a = cms
        .create(&pp, &config_map("a", &[("app", "web")], &[("k", "v")]))
        .await
        .unwrap();
    assert!(
        a.uid().is_some() && a.creation_timestamp().is_some() && a.resource_version().is_some()
    );
    assert_eq!(a.meta().generation, Some(1));
    assert_eq!(a.namespace().as_deref(), Some("ns"));
    cms.create(&pp, &config_map("b", &[("app", "db")], &[]))
        .await
        .unwrap();
    let other: Api<ConfigMap> = Api::namespaced(client.clone(), "other");
    other
        .create(&pp, &config_map("c", &[("app", "web")], &[]))
        .await
        .unwrap();

    assert_eq!(cms.get("a").await.unwrap().data, a.data);
    let web = cms
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap();
    assert_eq!(names(web.items), ["a"]);
    assert!(web.metadata.resource_version.is_some());
    assert_eq!(
        names(
            cms.list(&ListParams::default().labels("app!=web"))
                .await
                .unwrap()
        ),
        ["b"]
    );
    assert_eq!(
        names(
            cms.list(&ListParams::default().fields("metadata.name=b"))
                .await
                .unwrap()
        ),
        ["b"]
    );
    let everywhere: Api<ConfigMap> = Api::all(client);
    assert_eq!(
        names(
            everywhere
                .list(&ListParams::default().labels("app=web"))
                .await
                .unwrap()
        ),
        ["a", "c"]
    );

    assert_eq!(
        api_error(cms.create(&pp, &config_map("a", &[], &[])).await),
        (409, "AlreadyExists".into())
    );
    assert_eq!(
        api_error(cms.get("missing").await),
        (404, "NotFound".into())
    );
    assert_eq!(
        api_error(
            cms.list(&ListParams::default().labels("app in (web)"))
                .await
        ),
        (400, "BadRequest".into())
    );

    assert_eq!(
        fake.get::<ConfigMap>("other", "c").unwrap().uid(),
        other.get("c").await.unwrap().uid()
    );
    assert_eq!(fake.list::<ConfigMap>(None).len(), 3);
    assert_eq!(names(fake.list::<ConfigMap>(Some("ns"))), ["a", "b"]);
}

#[tokio::test]
async fn stale_resource_version_conflicts_and_noop_keeps_it() {
    let (_fake, client) = FakeApi::new();
    let cms: Api<ConfigMap> = Api::namespaced(client, "ns");
    let pp = PostParams::default();
    let created = cms
        .create(&pp, &config_map("a", &[], &[("k", "v1")]))
        .await
        .unwrap();

    let mut changed = created.clone();
    changed.data = Some(BTreeMap::from([("k".into(), "v2".into())]));
    let replaced = cms.replace("a", &pp, &changed).await.unwrap();
    assert_ne!(replaced.resource_version(), created.resource_version());

    // `changed` still carries the first resourceVersion.
    assert_eq!(
        api_error(cms.replace("a", &pp, &changed).await),
        (409, "Conflict".into())
    );
    let stale_patch = json!({ "metadata": { "resourceVersion": created.resource_version() }, "data": { "k": "v3" } });
    assert_eq!(
        api_error(
            cms.patch("a", &PatchParams::default(), &Patch::Merge(&stale_patch))
                .await
        ),
        (409, "Conflict".into())
    );

    let same = cms.replace("a", &pp, &replaced).await.unwrap();
    assert_eq!(same.resource_version(), replaced.resource_version());
    let same = cms
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({ "data": { "k": "v2" } })),
        )
        .await
        .unwrap();
    assert_eq!(same.resource_version(), replaced.resource_version());
}

#[tokio::test]
async fn generation_and_status_subresource() {
    let (fake, client) = FakeApi::new();
    let deployments: Api<Deployment> = Api::namespaced(client, "ns");
    let patch = |body: serde_json::Value| Patch::Merge(body);
    let pp = PatchParams::default();

    let mut web = deployment("web", 1);
    web.status = Some(DeploymentStatus {
        replicas: Some(5),
        ..Default::default()
    });
    let created = deployments
        .create(&PostParams::default(), &web)
        .await
        .unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    assert!(created.status.is_none(), "status is dropped on create");

    let labeled = deployments
        .patch(
            "web",
            &pp,
            &patch(json!({ "metadata": { "labels": { "x": "y" } } })),
        )
        .await
        .unwrap();
    assert_eq!(labeled.metadata.generation, Some(1));
    assert_ne!(labeled.resource_version(), created.resource_version());

    let scaled = deployments
        .patch("web", &pp, &patch(json!({ "spec": { "replicas": 3 } })))
        .await
        .unwrap();
    assert_eq!(scaled.metadata.generation, Some(2));

    // Status written through the main resource is ignored, so nothing changes at all.
    let ignored = deployments
        .patch("web", &pp, &patch(json!({ "status": { "replicas": 9 } })))
        .await
        .unwrap();
    assert!(ignored.status.is_none());
    assert_eq!(ignored.resource_version(), scaled.resource_version());

    // Spec written through /status is ignored; status changes leave generation alone.
    let status = json!({ "spec": { "replicas": 7 }, "status": { "replicas": 3 } });
    let with_status = deployments
        .patch_status("web", &pp, &patch(status))
        .await
        .unwrap();
    assert_eq!(with_status.spec.as_ref().unwrap().replicas, Some(3));
    assert_eq!(with_status.status.as_ref().unwrap().replicas, Some(3));
    assert_eq!(with_status.metadata.generation, Some(2));

    // A full replace changes the spec but keeps the stored status.
    let mut replacement = with_status.clone();
    replacement.spec.as_mut().unwrap().replicas = Some(4);
    replacement.status.as_mut().unwrap().replicas = Some(1);
    let replaced = deployments
        .replace("web", &PostParams::default(), &replacement)
        .await
        .unwrap();
    assert_eq!(replaced.status.as_ref().unwrap().replicas, Some(3));
    assert_eq!(replaced.metadata.generation, Some(3));

    let available = fake.mark_deployment_available("ns", "web");
    let status = available.status.unwrap();
    assert_eq!(
        (
            status.available_replicas,
            status.ready_replicas,
            status.observed_generation
        ),
        (Some(4), Some(4), Some(3))
    );
    let fetched = deployments.get_status("web").await.unwrap().status.unwrap();
    assert!(
        fetched
            .conditions
            .unwrap()
            .iter()
            .any(|c| c.type_ == "Available" && c.status == "True")
    );
}

#[tokio::test]
async fn direct_put_and_modify() {
    let (fake, client) = FakeApi::new();
    let mut web = deployment("web", 2);
    web.metadata.namespace = Some("ns".into());
    web.status = Some(DeploymentStatus {
        replicas: Some(2),
        ..Default::default()
    });
    let stored = fake.put(&web);
    assert_eq!(
        stored.status.as_ref().unwrap().replicas,
        Some(2),
        "direct writes keep status"
    );
    assert_eq!(stored.metadata.generation, Some(1));

    let scaled =
        fake.modify::<Deployment>("ns", "web", |d| d.spec.as_mut().unwrap().replicas = Some(5));
    assert_eq!(scaled.metadata.generation, Some(2));
    assert_eq!(scaled.uid(), stored.uid());
    let fetched = Api::<Deployment>::namespaced(client, "ns")
        .get("web")
        .await
        .unwrap();
    assert_eq!(fetched.resource_version(), scaled.resource_version());
}

#[tokio::test]
async fn server_side_apply_creates_and_merges() {
    let (_fake, client) = FakeApi::new();
    let deployments: Api<Deployment> = Api::namespaced(client, "ns");
    let operator = PatchParams::apply("operator").force();

    let first = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": "web", "labels": { "app": "web" } },
        "spec": {
            "replicas": 1,
            "selector": { "matchLabels": { "app": "web" } },
            "template": {
                "metadata": { "labels": { "app": "web" } },
                "spec": { "containers": [{ "name": "app", "image": "app:1", "env": [{ "name": "A", "value": "1" }] }] }
            }
        },
        "status": { "replicas": 9 }
    });
    let created = deployments
        .patch("web", &operator, &Patch::Apply(&first))
        .await
        .unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    assert!(created.status.is_none());
    let managers = |d: &Deployment| {
        d.managed_fields()
            .iter()
            .map(|m| m.manager.clone().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(managers(&created), ["operator"]);

    let second = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": "web", "labels": { "team": "data" } },
        "spec": { "template": { "spec": { "containers": [
            { "name": "app", "env": [{ "name": "B", "value": "2" }] },
            { "name": "sidecar", "image": "side:1" }
        ] } } }
    });
    let merged = deployments
        .patch("web", &PatchParams::apply("other"), &Patch::Apply(&second))
        .await
        .unwrap();
    let pod = merged
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap();
    assert_eq!(
        pod.containers
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        ["app", "sidecar"]
    );
    assert_eq!(pod.containers[0].image.as_deref(), Some("app:1"));
    let env: Vec<_> = pod.containers[0]
        .env
        .as_ref()
        .unwrap()
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(env, ["A", "B"]);
    assert_eq!(merged.labels().keys().collect::<Vec<_>>(), ["app", "team"]);
    assert_eq!(merged.metadata.generation, Some(2));
    assert_eq!(managers(&merged), ["operator", "other"]);

    let again = deployments
        .patch("web", &operator, &Patch::Apply(&first))
        .await
        .unwrap();
    assert_eq!(
        again.resource_version(),
        merged.resource_version(),
        "re-applying the same object is a no-op"
    );

    let status = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "status": { "replicas": 1, "conditions": [{ "type": "Available", "status": "True" }] }
    });
    let with_status = deployments
        .patch_status("web", &operator, &Patch::Apply(&status))
        .await
        .unwrap();
    assert_eq!(with_status.status.unwrap().replicas, Some(1));
    assert_eq!(with_status.metadata.generation, Some(2));
    let status_entry = with_status
        .metadata
        .managed_fields
        .unwrap()
        .into_iter()
        .find(|m| m.subresource.is_some())
        .unwrap();
    assert_eq!(
        (
            status_entry.manager.as_deref(),
            status_entry.subresource.as_deref()
        ),
        (Some("operator"), Some("status"))
    );

    let untyped = json!({ "metadata": { "name": "web" } });
    assert_eq!(
        api_error(
            deployments
                .patch("web", &operator, &Patch::Apply(&untyped))
                .await
        ),
        (400, "BadRequest".into())
    );
}

#[tokio::test]
async fn json_patch_test_null_and_finalizer_deletion() {
    let (_fake, client) = FakeApi::new();
    let cms: Api<ConfigMap> = Api::namespaced(client, "ns");
    cms.create(&PostParams::default(), &config_map("a", &[], &[]))
        .await
        .unwrap();

    let add_first_finalizer: json_patch::Patch = serde_json::from_value(json!([
        { "op": "test", "path": "/metadata/finalizers", "value": null },
        { "op": "add", "path": "/metadata/finalizers", "value": ["example.com/f"] }
    ]))
    .unwrap();
    let with_finalizer = cms
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Json::<()>(add_first_finalizer.clone()),
        )
        .await
        .unwrap();
    assert_eq!(with_finalizer.finalizers(), ["example.com/f"]);
    // Now the path exists, so the null test fails.
    let again = cms
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Json::<()>(add_first_finalizer),
        )
        .await;
    assert_eq!(api_error(again), (422, "Invalid".into()));

    let deleting = cms
        .delete("a", &DeleteParams::default())
        .await
        .unwrap()
        .left()
        .expect("still present");
    assert!(deleting.metadata.deletion_timestamp.is_some());
    let still_there = cms.get("a").await.unwrap();
    assert_eq!(still_there.resource_version(), deleting.resource_version());
    let deleted_again = cms
        .delete("a", &DeleteParams::default())
        .await
        .unwrap()
        .left()
        .unwrap();
    assert_eq!(
        deleted_again.resource_version(),
        deleting.resource_version(),
        "a second delete changes nothing"
    );

    let remove: json_patch::Patch =
        serde_json::from_value(json!([{ "op": "remove", "path": "/metadata/finalizers/0" }]))
            .unwrap();
    cms.patch("a", &PatchParams::default(), &Patch::Json::<()>(remove))
        .await
        .unwrap();
    assert_eq!(api_error(cms.get("a").await), (404, "NotFound".into()));

    cms.create(&PostParams::default(), &config_map("b", &[], &[]))
        .await
        .unwrap();
    let precondition = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: Some("wrong".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(
        api_error(cms.delete("b", &precondition).await),
        (409, "Conflict".into())
    );
    let status = cms
        .delete("b", &DeleteParams::default())
        .await
        .unwrap()
        .right()
        .expect("deleted at once");
    assert_eq!(
        status.status,
        Some(kube::core::response::StatusSummary::Success)
    );
}

#[tokio::test]
async fn watch_replays_from_resource_version_with_selectors() {
    let (_fake, client) = FakeApi::new();
    let cms: Api<ConfigMap> = Api::namespaced(client, "ns");
    let pp = PostParams::default();
    let a = cms
        .create(&pp, &config_map("a", &[("app", "web")], &[("k", "1")]))
        .await
        .unwrap();
    let start = a.resource_version().unwrap();

    cms.replace("a", &pp, &a).await.unwrap(); // no-op: no event
    cms.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({ "data": { "k": "2" } })),
    )
    .await
    .unwrap();
    cms.create(&pp, &config_map("b", &[("app", "db")], &[]))
        .await
        .unwrap(); // not selected
    let relabel = |app: &str| Patch::Merge(json!({ "metadata": { "labels": { "app": app } } }));
    cms.patch("b", &PatchParams::default(), &relabel("web"))
        .await
        .unwrap(); // enters the selection
    cms.patch("a", &PatchParams::default(), &relabel("other"))
        .await
        .unwrap(); // leaves it
    cms.delete("b", &DeleteParams::default()).await.unwrap();

    let params = WatchParams::default().labels("app=web").timeout(1);
    let events: Vec<WatchEvent<ConfigMap>> = cms
        .watch(&params, &start)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let seen: Vec<(String, String)> = events
        .into_iter()
        .map(|event| match event {
            WatchEvent::Added(o) => ("ADDED".into(), o.name_any()),
            WatchEvent::Modified(o) => ("MODIFIED".into(), o.name_any()),
            WatchEvent::Deleted(o) => ("DELETED".into(), o.name_any()),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    let expected = [
        ("MODIFIED", "a"),
        ("ADDED", "b"),
        ("DELETED", "a"),
        ("DELETED", "b"),
    ];
    assert_eq!(seen, expected.map(|(t, n)| (t.to_string(), n.to_string())));
}

#[tokio::test]
async fn runtime_watcher_sees_existing_and_new_objects() {
    let (_fake, client) = FakeApi::new();
    let cms: Api<ConfigMap> = Api::namespaced(client, "ns");
    cms.create(&PostParams::default(), &config_map("existing", &[], &[]))
        .await
        .unwrap();

    for config in [
        watcher::Config::default(),
        watcher::Config::default().any_semantic(),
        watcher::Config::default().streaming_lists(),
    ] {
        let mut touched = watcher(cms.clone(), config)
            .touched_objects()
            .map_ok(|cm| cm.name_any())
            .boxed();
        let mut next = async || {
            tokio::time::timeout(WAIT, touched.try_next())
                .await
                .unwrap()
                .unwrap()
                .unwrap()
        };
        assert_eq!(next().await, "existing");
        let name = format!(
            "new-{}",
            cms.list(&ListParams::default()).await.unwrap().items.len()
        );
        cms.create(&PostParams::default(), &config_map(&name, &[], &[]))
            .await
            .unwrap();
        assert_eq!(next().await, name);
        cms.delete(&name, &DeleteParams::default()).await.unwrap();
        assert_eq!(next().await, name);
    }
}

#[tokio::test]
async fn injected_faults_and_request_log() {
    let (fake, client) = FakeApi::new();
    let cms: Api<ConfigMap> = Api::namespaced(client, "ns");
    cms.create(&PostParams::default(), &config_map("a", &[], &[]))
        .await
        .unwrap();

    fake.fail_next(Method::GET, "/configmaps/a", 2);
    assert_eq!(api_error(cms.get("a").await), (500, "InternalError".into()));
    assert_eq!(api_error(cms.get("a").await), (500, "InternalError".into()));
    cms.get("a").await.unwrap();

    fake.conflict_next_update("/configmaps/a");
    let patch = Patch::Merge(json!({ "data": { "k": "v" } }));
    assert_eq!(
        api_error(cms.patch("a", &PatchParams::default(), &patch).await),
        (409, "Conflict".into())
    );
    cms.patch("a", &PatchParams::default(), &patch)
        .await
        .unwrap();

    let patches: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.method == Method::PATCH)
        .collect();
    assert_eq!(patches.len(), 2);
    assert_eq!(patches[1].path, "/api/v1/namespaces/ns/configmaps/a");
    assert_eq!(
        patches[1].content_type.as_deref(),
        Some("application/merge-patch+json")
    );
}

#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, JsonSchema)]
#[kube(
    group = "example.com",
    version = "v1",
    kind = "Widget",
    namespaced,
    status = "WidgetStatus"
)]
struct WidgetSpec {
    size: i32,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct WidgetStatus {
    observed_generation: Option<i64>,
    size: i32,
}

struct Context {
    client: Client,
    reconciles: AtomicUsize,
    cleanups: AtomicUsize,
}

const MANAGER: &str = "widget-controller";

/// Keeps a ConfigMap `{name}-config` holding the widget's size and reports it in status.
async fn reconcile(
    widget: Arc<Widget>,
    ctx: Arc<Context>,
) -> Result<Action, finalizer::Error<kube::Error>> {
    ctx.reconciles.fetch_add(1, Ordering::SeqCst);
    let namespace = widget.namespace().unwrap();
    let widgets: Api<Widget> = Api::namespaced(ctx.client.clone(), &namespace);
    finalizer(&widgets, "example.com/cleanup", widget, |event| async {
        match event {
            Finalizer::Apply(widget) => {
                let name = widget.name_any();
                let mut child = config_map(&format!("{name}-config"), &[], &[("size", &widget.spec.size.to_string())]);
                child.metadata.owner_references = Some(vec![widget.controller_owner_ref(&()).unwrap()]);
                let apply = PatchParams::apply(MANAGER).force();
                Api::<ConfigMap>::namespaced(ctx.client.clone(), &namespace)
                    .patch(&child.name_any(), &apply, &Patch::Apply(&child))
                    .await?;
                let status = json!({
                    "apiVersion": Widget::api_version(&()), "kind": Widget::kind(&()),
                    "status": { "observedGeneration": widget.metadata.generation, "size": widget.spec.size }
                });
                widgets.patch_status(&name, &apply, &Patch::Apply(&status)).await?;
                Ok(Action::await_change())
            }
            Finalizer::Cleanup(_) => {
                ctx.cleanups.fetch_add(1, Ordering::SeqCst);
                Ok(Action::await_change())
            }
        }
    })
    .await
}

#[tokio::test]
async fn controller_reconciles_custom_resource() {
    let (fake, client) = FakeApi::new();
    let widgets: Api<Widget> = Api::namespaced(client.clone(), "ns");
    let ctx = Arc::new(Context {
        client: client.clone(),
        reconciles: AtomicUsize::new(0),
        cleanups: AtomicUsize::new(0),
    });
    let controller = Controller::new(widgets.clone(), watcher::Config::default().any_semantic())
        .owns(
            Api::<ConfigMap>::all(client.clone()),
            watcher::Config::default(),
        )
        .run(
            reconcile,
            |_, _, _| Action::requeue(Duration::from_millis(50)),
            ctx.clone(),
        )
        .for_each(|_| async {});
    let controller = tokio::spawn(controller);

    // The first status write fails; the controller must retry through its error policy.
    fake.fail_next(Method::PATCH, "/widgets/w1/status", 1);
    widgets
        .create(
            &PostParams::default(),
            &Widget::new("w1", WidgetSpec { size: 3 }),
        )
        .await
        .unwrap();
    let reconciled = |size: i32, generation: i64| {
        move |fake: &FakeApi| {
            let status = fake.get::<Widget>("ns", "w1").and_then(|w| w.status);
            let child = fake
                .get::<ConfigMap>("ns", "w1-config")
                .and_then(|c| c.data);
            status.is_some_and(|s| s.size == size && s.observed_generation == Some(generation))
                && child.is_some_and(|d| d["size"] == size.to_string())
        }
    };
    fake.wait_until(WAIT, reconciled(3, 1)).await;
    assert_eq!(
        fake.get::<Widget>("ns", "w1").unwrap().finalizers(),
        ["example.com/cleanup"]
    );

    // Once settled, no-op writes must not trigger further reconciles.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let settled = ctx.reconciles.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        ctx.reconciles.load(Ordering::SeqCst),
        settled,
        "the controller keeps reconciling"
    );

    widgets
        .patch(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "size": 5 } })),
        )
        .await
        .unwrap();
    fake.wait_until(WAIT, reconciled(5, 2)).await;

    widgets
        .delete("w1", &DeleteParams::default())
        .await
        .unwrap();
    fake.wait_until(WAIT, |fake| fake.get::<Widget>("ns", "w1").is_none())
        .await;
    assert_eq!(ctx.cleanups.load(Ordering::SeqCst), 1);
    assert!(
        fake.get::<ConfigMap>("ns", "w1-config").is_some(),
        "no garbage collector runs by itself"
    );
    assert_eq!(fake.collect_garbage(), 1);
    assert!(fake.get::<ConfigMap>("ns", "w1-config").is_none());

    let status_writes = fake
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/widgets/w1/status"))
        .count();
    assert!(
        status_writes >= 3,
        "initial failure, retry and the spec change: {status_writes}"
    );
    controller.abort();
}
