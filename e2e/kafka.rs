//! Kafka intake in the cluster: a broker pod (tansu, Kafka-compatible), a Source on its topic,
//! records published to three partitions and read by the platform's ingest pods into profiles,
//! with the Source's status showing the consumer.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use cdp_operator::crd::Source;
use k8s_openapi::api::apps::v1::Deployment;
use serde_json::{Value, json};

use crate::cluster::{Apply, Env, PLATFORM, PLATFORM_NAMESPACE, eventually};
use crate::platform::wait_ready;

const BROKER: &str = "e2e-kafka";
const TOPIC: &str = "till-sales";
const SOURCE: &str = "pos-stream";
const PARTITIONS: usize = 3;
const RECORDS: usize = 600;

/// The broker: one pod as the restricted Pod Security Standard admits it, and its Service.
/// It advertises the Service's name, which every pod of the namespace resolves.
fn broker(env: &Env) -> String {
    let labels = json!({"app.kubernetes.io/name": BROKER});
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": BROKER, "namespace": PLATFORM_NAMESPACE},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "broker",
                        "image": env.broker_image,
                        "imagePullPolicy": "IfNotPresent",
                        "args": ["broker", "--listener-url", "tcp://0.0.0.0:9092",
                                 "--advertised-listener-url", format!("tcp://{BROKER}:9092"),
                                 "--storage-engine", "memory://tansu/"],
                        "ports": [{"containerPort": 9092, "name": "kafka"}],
                        "readinessProbe": {"tcpSocket": {"port": 9092}, "periodSeconds": 2},
                        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "512Mi"}},
                        "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}},
                    }],
                },
            },
        },
    });
    let service = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": BROKER, "namespace": PLATFORM_NAMESPACE},
        "spec": {"selector": labels, "ports": [{"name": "kafka", "port": 9092, "targetPort": 9092}]},
    });
    format!("{deployment}\n---\n{service}")
}

/// The Kafka Source, as the README shows one, and the Secret naming the brokers.
fn source() -> String {
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": BROKER, "namespace": PLATFORM_NAMESPACE},
        "stringData": {"bootstrap-servers": format!("{BROKER}:9092")},
    });
    let source = json!({
        "apiVersion": "cdp.dev/v1alpha1", "kind": "Source",
        "metadata": {"name": SOURCE, "namespace": PLATFORM_NAMESPACE},
        "spec": {
            "platformRef": {"name": PLATFORM},
            "delivery": {"kafka": {
                "topic": TOPIC,
                "bootstrapServersSecretRef": {"name": BROKER, "key": "bootstrap-servers"},
                "maxInFlight": 200,
            }},
            "eventIdField": "receipt_id",
            "trustRank": 50,
            "mapping": [
                {"from": "customer.email", "to": "email"},
                {"from": "customer.first", "to": "givenName"},
                {"from": "customer.last", "to": "familyName"},
            ],
        },
    });
    format!("{secret}\n---\n{source}")
}

/// One record a line, as the broker's producer reads them (`{"value": ...}`).
fn records(partition: usize) -> String {
    (0..RECORDS)
        .filter(|n| n % PARTITIONS == partition)
        .map(|n| {
            let value = json!({"receipt_id": format!("k-{n}"), "customer": {"email": format!("till{n}@example.com"), "first": "Kai", "last": format!("Stream{n}")}});
            format!("{}\n", json!({"value": value}))
        })
        .collect()
}

/// The Source's `status.consumer`, once the operator wrote one.
async fn consumer(env: &Env) -> Result<Option<Value>> {
    let source = env.api::<Source>(PLATFORM_NAMESPACE).get(SOURCE).await?;
    let status = serde_json::to_value(&source.status)?;
    Ok(status.get("consumer").filter(|c| !c.is_null()).cloned())
}

/// kubectl's arguments that run tansu with `args` in the broker's pod, its stdin attached.
fn in_broker(args: &[&str]) -> Vec<String> {
    let deployment = format!("deploy/{BROKER}");
    let kubectl = ["-n", PLATFORM_NAMESPACE, "exec", "-i", &deployment, "--", "/usr/local/bin/tansu"];
    kubectl.iter().chain(args).map(|a| a.to_string()).collect()
}

/// A broker in the namespace, a Source on its topic: the ingest pods join the consumer group
/// and hold the partitions, records published to them reach profiles, and the Source's status
/// shows the partitions, who holds them and the lag falling to zero.
pub async fn intake(env: &Env) -> Result<()> {
    env.apply(Apply::Yaml(&broker(env))).await?;
    let deployments = env.api::<Deployment>(PLATFORM_NAMESPACE);
    eventually("the broker ready", Duration::from_secs(120), || async {
        let ready = deployments.get(BROKER).await?.status.and_then(|s| s.ready_replicas).unwrap_or(0);
        Ok((ready >= 1).then_some(()))
    })
    .await?;
    let create = in_broker(&["topic", "create", "--broker", "tcp://localhost:9092", "--partitions", &PARTITIONS.to_string(), TOPIC]);
    env.kubectl(&create.iter().map(String::as_str).collect::<Vec<_>>()).await.context("creating the topic")?;

    let started = Instant::now();
    env.apply(Apply::Yaml(&source())).await?;
    let held = eventually("the ingest pods hold every partition", Duration::from_secs(180), || async {
        let Some(consumer) = consumer(env).await? else { return Ok(None) };
        let held: usize = consumer["assignments"].as_array().into_iter().flatten().map(|a| a["partitions"].as_array().map_or(0, Vec::len)).sum();
        Ok((consumer["partitions"] == PARTITIONS && held == PARTITIONS).then_some(consumer))
    })
    .await?;
    env.figure("Kafka Source applied → ingest pods hold its 3 partitions (status.consumer)", format!("{:.1} s", started.elapsed().as_secs_f64()));
    wait_ready(env, PLATFORM_NAMESPACE, Duration::from_secs(120)).await?;

    let published = Instant::now();
    for partition in 0..PARTITIONS {
        let produce = in_broker(&["cat", "produce", "--broker", "tcp://localhost:9092", "--partition", &partition.to_string(), TOPIC, "-"]);
        env.kubectl_stdin(&produce.iter().map(String::as_str).collect::<Vec<_>>(), &records(partition)).await.context("publishing")?;
    }
    // a source record exists once the matcher resolved it into a profile
    let in_profiles = format!("SELECT count(*) FROM source_records WHERE source = '{SOURCE}'");
    eventually("every published record in a profile", Duration::from_secs(180), || async {
        Ok((env.sql_count(PLATFORM_NAMESPACE, &in_profiles).await? >= RECORDS as i64).then_some(()))
    })
    .await?;
    let seconds = published.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stored = env.sql_count(PLATFORM_NAMESPACE, &in_profiles).await?;
    let quarantined = env.sql_count(PLATFORM_NAMESPACE, &format!("SELECT count(*) FROM quarantine WHERE source = '{SOURCE}'")).await?;
    ensure!(stored == RECORDS as i64 && quarantined == 0, "{stored} records stored and {quarantined} quarantined of {RECORDS} published");
    env.figure(
        "600 records published to 3 partitions → all in profiles (read by the ingest pods)",
        format!("{seconds:.1} s, 0 lost, 0 doubled"),
    );
    let status = eventually("the Source's status shows the lag at zero", Duration::from_secs(60), || async {
        Ok(consumer(env).await?.filter(|c| c["lag"] == 0 && c.get("lastError").is_none()))
    })
    .await?;
    println!("    status.consumer before: {held}\n    after: {status}");

    // leave the namespace as the next steps expect it
    env.kubectl(&["-n", PLATFORM_NAMESPACE, "delete", "source", SOURCE, "--wait=true"]).await?;
    env.kubectl(&["-n", PLATFORM_NAMESPACE, "delete", "deployment,service,secret", BROKER, "--wait=true"]).await?;
    wait_ready(env, PLATFORM_NAMESPACE, Duration::from_secs(180)).await?;
    Ok(())
}
