//! NetworkPolicies: in, only intake and API traffic (and the operator reading load);
//! out, only DNS, the store, Kafka and the feeds' destinations.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::common::{Context, PORT, Workload, selector_labels};
use crate::pipeline::PipelineConfig;

const KAFKA_PORTS: [i32; 2] = [9092, 9093];
const POSTGRES_PORT: i32 = 5432;

pub fn all(ctx: &Context, config: &PipelineConfig) -> Vec<Value> {
    let mut policies: Vec<Value> = Workload::ALL.iter().map(|w| workload(ctx, config, *w)).collect();
    if ctx.platform.spec.store.external.is_none() {
        policies.push(store(ctx));
    }
    policies
}

/// The operator polls every workload's load endpoint.
fn operator_peer() -> Value {
    json!({"namespaceSelector": {}, "podSelector": {"matchLabels": {"app.kubernetes.io/name": "cdp-operator"}}})
}

fn workload(ctx: &Context, config: &PipelineConfig, workload: Workload) -> Value {
    // Scrapers read /metrics on the same port as the load endpoint.
    let scrapers = ctx.platform.spec.monitoring.allowed_from.iter().map(|peer| json!(peer));
    let mut from: Vec<Value> = std::iter::once(operator_peer()).chain(scrapers).collect();
    match workload {
        // Touchpoints deliver from anywhere.
        Workload::Ingest => from = vec![],
        Workload::Api if ctx.platform.spec.api.allowed_namespaces.is_empty() => from = vec![],
        Workload::Api => from.extend(ctx.platform.spec.api.allowed_namespaces.iter().map(|ns| {
            json!({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}})
        })),
        Workload::Matcher | Workload::Feeds => {}
    }
    let mut ingress_rule = json!({"ports": [{"protocol": "TCP", "port": PORT}]});
    if !from.is_empty() {
        ingress_rule["from"] = json!(from);
    }
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": ctx.metadata(&workload.object_name(&ctx.name), workload.name()),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(&ctx.name, workload.name())},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [ingress_rule],
            "egress": egress(ctx, config, workload),
        },
    })
}

fn egress(ctx: &Context, config: &PipelineConfig, workload: Workload) -> Value {
    // 5353 too: on OpenShift the DNS pods listen there, and policies apply after the service NAT.
    let dns = json!({"ports": [
        {"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53},
        {"protocol": "UDP", "port": 5353}, {"protocol": "TCP", "port": 5353},
    ]});
    let store = match ctx.platform.spec.store.external {
        Some(_) => json!({"ports": [{"protocol": "TCP", "port": POSTGRES_PORT}]}),
        None => json!({
            "to": [{"podSelector": {"matchLabels": selector_labels(&ctx.name, "store")}}],
            "ports": [{"protocol": "TCP", "port": POSTGRES_PORT}],
        }),
    };
    let mut rules = vec![dns, store];
    let mut ports = BTreeSet::new();
    match workload {
        Workload::Ingest => {
            for kafka in config.sources.iter().filter_map(|s| s.spec.delivery.kafka.as_ref()) {
                match kafka.broker_ports.as_slice() {
                    [] => ports.extend(KAFKA_PORTS),
                    listed => ports.extend(listed.iter().map(|p| i32::from(*p))),
                }
            }
        }
        Workload::Feeds => {
            for feed in &config.feeds {
                if let Some(webhook) = &feed.spec.destination.webhook {
                    ports.insert(url_port(&webhook.url));
                }
                if feed.spec.destination.kafka.is_some() {
                    ports.extend(KAFKA_PORTS);
                }
            }
            // the enrichers run in the feeds workload
            ports.extend(config.enrichers.iter().map(|e| url_port(&e.spec.endpoint.url)));
        }
        _ => {}
    }
    if !ports.is_empty() {
        let ports: Vec<Value> = ports.into_iter().map(|p| json!({"protocol": "TCP", "port": p})).collect();
        rules.push(json!({"ports": ports}));
    }
    json!(rules)
}

/// Port of an http(s) URL: explicit, or the scheme's default.
fn url_port(url: &str) -> i32 {
    let (scheme, rest) = url.split_once("://").unwrap_or(("https", url));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    // An IPv6 literal without a port ("[::1]") fails to parse as a port and takes the default.
    match host_port.rsplit_once(':').and_then(|(_, port)| port.parse().ok()) {
        Some(port) => port,
        None if scheme == "http" => 80,
        None => 443,
    }
}

fn store(ctx: &Context) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": ctx.metadata(&super::postgres::store_name(&ctx.name), "store"),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(&ctx.name, "store")},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{
                "from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/instance": ctx.name, "app.kubernetes.io/name": "cdp"}}}],
                "ports": [{"protocol": "TCP", "port": POSTGRES_PORT}],
            }],
            "egress": [],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::url_port;

    #[test]
    fn webhook_ports() {
        assert_eq!(url_port("https://crm.example.com/hooks"), 443);
        assert_eq!(url_port("http://receiver.apps.svc/hook"), 80);
        assert_eq!(url_port("https://sms.example.com:8443/send?x=1"), 8443);
        assert_eq!(url_port("https://user:pw@host:9000"), 9000);
    }
}
