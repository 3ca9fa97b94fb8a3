//! KEDA ScaledObjects for the scaled workloads, rendered instead of using the built-in scaler
//! when the platform's ScalingPolicy says `mode: keda` (see [`crate::scaling::keda`] for how
//! peak windows and the intake lag become triggers).

use kube::api::ApiResource;
use serde_json::{Value, json};

use super::common::{Context, Workload};
use super::postgres;
use crate::crd::SecretKeyRef;
use crate::crd::scaling::ScalingMode;
use crate::crd::source::{AutoOffsetReset, KafkaDelivery, SaslMechanism};
use crate::ingest::kafka::group_id;
use crate::pipeline::{NamedSource, PipelineConfig};
use crate::scaling::Workload as Scaled;
use crate::scaling::keda::{INTAKE_LAG_QUERY, KAFKA_LAG_PER_REPLICA, LAG_PER_REPLICA, cron_trigger};
use crate::scaling::policy::{self, PlatformDefaults};

/// KEDA's ScaledObject kind.
pub fn api_resource() -> ApiResource {
    keda_kind("ScaledObject", "scaledobjects")
}

/// KEDA's TriggerAuthentication kind: the credentials its Kafka scaler reads a topic with.
pub fn trigger_authentication_resource() -> ApiResource {
    keda_kind("TriggerAuthentication", "triggerauthentications")
}

fn keda_kind(kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: "keda.sh".into(),
        version: "v1alpha1".into(),
        api_version: "keda.sh/v1alpha1".into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// The variable of the ingest container holding a Kafka Source's bootstrap servers, from its
/// Secret: KEDA reads the servers there (`bootstrapServersFromEnv`), never in a ScaledObject.
pub fn bootstrap_servers_env(source: &str) -> String {
    format!("CDP_KAFKA_BOOTSTRAP_{}", source.to_ascii_uppercase().replace(['-', '.'], "_"))
}

/// Whether the platform's ScalingPolicies put it in KEDA mode.
pub fn keda_mode(ctx: &Context, config: &PipelineConfig) -> bool {
    effective(ctx, config).is_some_and(|e| e.mode == ScalingMode::Keda)
}

fn effective(ctx: &Context, config: &PipelineConfig) -> Option<policy::EffectivePolicy> {
    let policies: Vec<_> = config.scaling.iter().map(|p| (p.name.as_str(), &p.spec)).collect();
    policy::combine(&policies, &PlatformDefaults::of(&ctx.platform.spec)).ok()
}

/// The Kafka Sources of the platform.
fn kafka_sources(config: &PipelineConfig) -> impl Iterator<Item = (&NamedSource, &KafkaDelivery)> {
    config.sources.iter().filter_map(|s| Some((s, s.spec.delivery.kafka.as_ref()?)))
}

fn trigger_authentication_name(ctx: &Context, source: &str) -> String {
    format!("{}-kafka-{source}", ctx.name)
}

/// The Secret keys KEDA's Kafka scaler needs for a Source, by its parameter names; empty when
/// the brokers take anyone over plain text.
fn kafka_credentials(kafka: &KafkaDelivery) -> Vec<(&'static str, &SecretKeyRef)> {
    let sasl = kafka.sasl.iter().flat_map(|s| [("username", &s.username_secret_ref), ("password", &s.password_secret_ref)]);
    let tls = kafka.tls.iter().flat_map(|t| {
        [("ca", t.ca_secret_ref.as_ref()), ("cert", t.cert_secret_ref.as_ref()), ("key", t.key_secret_ref.as_ref())]
            .into_iter()
            .filter_map(|(parameter, secret)| Some((parameter, secret?)))
    });
    sasl.chain(tls).collect()
}

/// The `kafka` trigger of a Source: its consumer group's lag on its topic, read as the intake
/// replicas read it. KEDA keeps the replicas at or below the topic's partitions.
fn kafka_trigger(ctx: &Context, source: &NamedSource, kafka: &KafkaDelivery) -> Value {
    let mut metadata = json!({
        "bootstrapServersFromEnv": bootstrap_servers_env(&source.name),
        "consumerGroup": group_id(&ctx.name, &source.name, kafka),
        "topic": kafka.topic,
        "lagThreshold": KAFKA_LAG_PER_REPLICA.to_string(),
        "offsetResetPolicy": match kafka.auto_offset_reset {
            AutoOffsetReset::Earliest => "earliest",
            AutoOffsetReset::Latest => "latest",
        },
    });
    if let Some(sasl) = &kafka.sasl {
        metadata["sasl"] = json!(match sasl.mechanism {
            SaslMechanism::Plain => "plaintext",
            SaslMechanism::ScramSha256 => "scram_sha256",
            SaslMechanism::ScramSha512 => "scram_sha512",
        });
    }
    if kafka.tls.is_some() {
        metadata["tls"] = json!("enable");
    }
    let mut trigger = json!({"type": "kafka", "name": format!("kafka-{}", source.name), "metadata": metadata});
    if !kafka_credentials(kafka).is_empty() {
        trigger["authenticationRef"] = json!({"name": trigger_authentication_name(ctx, &source.name)});
    }
    trigger
}

/// One TriggerAuthentication per Kafka Source with credentials, in KEDA mode; none otherwise.
pub fn trigger_authentications(ctx: &Context, config: &PipelineConfig) -> Vec<Value> {
    if !keda_mode(ctx, config) {
        return Vec::new();
    }
    kafka_sources(config)
        .filter_map(|(source, kafka)| {
            let credentials = kafka_credentials(kafka);
            (!credentials.is_empty()).then(|| {
                let refs: Vec<Value> = credentials
                    .into_iter()
                    .map(|(parameter, secret)| json!({"parameter": parameter, "name": secret.name, "key": secret.key}))
                    .collect();
                json!({
                    "apiVersion": "keda.sh/v1alpha1",
                    "kind": "TriggerAuthentication",
                    "metadata": ctx.metadata(&trigger_authentication_name(ctx, &source.name), Workload::Ingest.name()),
                    "spec": {"secretTargetRef": refs},
                })
            })
        })
        .collect()
}

/// Seconds between KEDA's checks of the triggers.
const POLLING_SECONDS: u32 = 15;
/// The upper bound KEDA (the HPA) accepts for a stabilisation window.
const MAX_STABILIZATION_SECONDS: u32 = 3600;

const SCALED: [(Workload, Scaled); 3] =
    [(Workload::Ingest, Scaled::Ingest), (Workload::Matcher, Scaled::Matcher), (Workload::Feeds, Scaled::Feeds)];

/// One ScaledObject per scaled workload in KEDA mode; none otherwise (or when the policies
/// contradict, which their own status reports).
pub fn scaled_objects(ctx: &Context, config: &PipelineConfig) -> Vec<Value> {
    let Some(effective) = effective(ctx, config).filter(|e| e.mode == ScalingMode::Keda) else { return Vec::new() };
    let windows: Vec<_> = config.scaling.iter().flat_map(|p| &p.spec.peak_windows).collect();
    SCALED
        .iter()
        .map(|(workload, scaled)| {
            let bounds = effective.workload(*scaled);
            let mut triggers: Vec<Value> = windows
                .iter()
                // Compile refuses KEDA mode for a window KEDA cannot express.
                .filter_map(|w| cron_trigger(w, *scaled).ok().flatten())
                .map(|t| {
                    json!({
                        "type": "cron",
                        "name": format!("peak-{}", t.window),
                        "metadata": {"timezone": t.timezone, "start": t.start, "end": t.end, "desiredReplicas": t.desired_replicas.to_string()},
                    })
                })
                .collect();
            if *scaled == Scaled::Ingest {
                triggers.extend(kafka_sources(config).map(|(source, kafka)| kafka_trigger(ctx, source, kafka)));
            }
            triggers.push(match scaled {
                Scaled::Matcher => json!({
                    "type": "postgresql",
                    "name": "intake-lag",
                    "metadata": lag_metadata(ctx),
                }),
                // Intake and delivery have no queue of their own in the store: CPU, at the
                // policy's target utilisation.
                Scaled::Ingest | Scaled::Feeds => json!({
                    "type": "cpu",
                    "name": "cpu",
                    "metricType": "Utilization",
                    "metadata": {"value": format!("{:.0}", bounds.target_utilization * 100.0)},
                }),
            });
            let name = workload.object_name(&ctx.name);
            let stabilization = bounds.scale_down_stabilization_seconds.min(MAX_STABILIZATION_SECONDS);
            json!({
                "apiVersion": "keda.sh/v1alpha1",
                "kind": "ScaledObject",
                "metadata": ctx.metadata(&name, workload.name()),
                "spec": {
                    "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                    "minReplicaCount": bounds.min_replicas,
                    "maxReplicaCount": bounds.max_replicas,
                    "pollingInterval": POLLING_SECONDS,
                    "cooldownPeriod": stabilization,
                    "advanced": {"horizontalPodAutoscalerConfig": {"behavior": {
                        "scaleDown": {"stabilizationWindowSeconds": stabilization},
                    }}},
                    "triggers": triggers,
                },
            })
        })
        .collect()
}

fn lag_metadata(ctx: &Context) -> Value {
    let mut metadata = match ctx.platform.spec.store.external {
        Some(_) => json!({"connectionFromEnv": "CDP_STORE_URL"}),
        None => postgres::keda_connection(ctx),
    };
    metadata["query"] = json!(INTAKE_LAG_QUERY);
    metadata["targetQueryValue"] = json!(LAG_PER_REPLICA.to_string());
    metadata
}
