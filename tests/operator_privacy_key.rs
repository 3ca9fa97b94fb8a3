//! The key of a platform's identifier hashes lives in a Secret the operator creates once for a
//! new store; a store that may hold data gets no new key. The real controller, against the fake.

mod support;

use std::sync::Arc;
use std::time::Duration;

use cdp_operator::crd::{CustomerDataPlatform, Source};
use cdp_operator::operator::{Context, Metrics, run_controllers};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, PostParams};
use kube::ResourceExt;
use support::fake_api::FakeApi;

const NS: &str = "default";
const WAIT: Duration = Duration::from_secs(20);
const KEY_SECRET: &str = "retail-privacy-key";

/// Start the controllers on `fake`, which holds the samples (and whatever the test put there).
fn start(fake: &FakeApi, client: kube::Client) -> tokio::task::JoinHandle<()> {
    support::samples::put_samples_out_of_peak(fake);
    let ctx = Arc::new(Context::new(client, Metrics::default()));
    tokio::spawn(async move { run_controllers(ctx, &[NS.to_string()]).await })
}

/// `(status, reason, message)` of the platform's `PrivacyKey` condition.
fn privacy_key_condition(fake: &FakeApi) -> Option<(String, String, String)> {
    let platform: CustomerDataPlatform = fake.get(NS, "retail")?;
    let condition = platform.status?.common.conditions.into_iter().find(|c| c.type_ == "PrivacyKey")?;
    Some((condition.status, condition.reason, condition.message))
}

fn key_of(fake: &FakeApi) -> Option<Vec<u8>> {
    let secret: Secret = fake.get(NS, KEY_SECRET)?;
    Some(secret.data?.get("key")?.0.clone())
}

#[tokio::test]
async fn a_new_platform_gets_a_privacy_key_that_outlives_it_and_is_never_regenerated() {
    let (fake, client) = FakeApi::new();
    let task = start(&fake, client.clone());
    fake.wait_until(WAIT, |f| key_of(f).is_some() && f.list::<Deployment>(Some(NS)).len() == 4).await;
    let secret: Secret = fake.get(NS, KEY_SECRET).unwrap();
    assert!(secret.owner_references().is_empty(), "the key outlives the platform, like the store's data");
    let key = key_of(&fake).unwrap();
    assert_eq!(key.len(), 64, "32 random bytes, hex");
    for deployment in fake.list::<Deployment>(Some(NS)) {
        let container = &deployment.spec.unwrap().template.spec.unwrap().containers[0];
        let env = container.env.iter().flatten().find(|e| e.name == "CDP_PRIVACY_KEY");
        let from = env.and_then(|e| e.value_from.clone()).and_then(|v| v.secret_key_ref);
        assert_eq!(from.map(|r| (r.name, r.key)), Some((KEY_SECRET.to_string(), "key".to_string())), "{}", deployment.metadata.name.unwrap());
    }
    fake.wait_until(WAIT, |f| privacy_key_condition(f).is_some_and(|(s, r, _)| s == "True" && r == "InSecret")).await;

    // any change reconciles the platform again: the key stays as it is
    Api::<Source>::namespaced(client, NS).delete("pos", &DeleteParams::default()).await.unwrap();
    fake.wait_until(WAIT, |f| {
        f.get::<cdp_operator::crd::Source>(NS, "pos").is_none() && privacy_key_condition(f).is_some()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(key_of(&fake).unwrap(), key, "never regenerated");
    task.abort();
}

/// A platform upgraded from a version that kept the key in the store: its data volume exists,
/// its password Secret too, but no privacy-key Secret. A new key would not match the store's
/// hashes: none is made, and the status and an Event say what to do.
#[tokio::test]
async fn a_store_that_may_hold_data_gets_no_new_key_and_the_platform_says_so() {
    let (fake, client) = FakeApi::new();
    fake.put(&serde_json::from_value::<PersistentVolumeClaim>(serde_json::json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data-retail-postgres-0", "namespace": NS},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "20Gi"}}}
    }))
    .unwrap());
    fake.put(&serde_json::from_value::<Secret>(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "retail-store", "namespace": NS},
        "data": {"password": "cHc="}
    }))
    .unwrap());
    let task = start(&fake, client.clone());
    fake.wait_until(WAIT, |f| privacy_key_condition(f).is_some_and(|(s, _, _)| s == "False")).await;
    let (_, reason, message) = privacy_key_condition(&fake).unwrap();
    assert_eq!(reason, "PrivacyKeySecretMissing");
    assert!(message.contains(KEY_SECRET) && message.contains("restore it"), "{message}");
    assert!(fake.get::<Secret>(NS, KEY_SECRET).is_none(), "no new key");
    assert_eq!(fake.list::<Deployment>(Some(NS)).len(), 4, "the platform runs, on the key its store keeps");
    let events: Vec<Event> = fake.list(Some(NS));
    let warned: Vec<&Event> = events.iter().filter(|e| e.reason.as_deref() == Some("PrivacyKeySecretMissing")).collect();
    assert_eq!(warned.len(), 1, "{events:?}");
    assert_eq!(warned[0].type_.as_deref(), Some("Warning"));

    // the platform engineer puts the store's key in the Secret, as the README says
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": KEY_SECRET, "namespace": NS},
        "stringData": {"key": "the-key-the-store-kept"}
    }))
    .unwrap();
    Api::<Secret>::namespaced(client, NS).create(&PostParams::default(), &secret).await.unwrap();
    fake.wait_until(WAIT, |f| privacy_key_condition(f).is_some_and(|(s, _, _)| s == "True")).await;
    assert_eq!(key_of(&fake).unwrap(), b"the-key-the-store-kept", "the operator leaves it as it is");
    task.abort();
}
