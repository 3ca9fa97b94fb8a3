//! Records into the platform from inside the cluster, through the ingest Service: a pod of the
//! project's image running `cdp bench intake` with the platform's own config and a Source's
//! key, mounted as the workloads mount them. It retries every record until intake answers for
//! good, so its count of accepted records is what the store must hold.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Pod;
use serde::Deserialize;
use serde_json::json;

use crate::cluster::{Apply, Env, PLATFORM, eventually};

/// One run of the load pod.
pub struct Load<'a> {
    pub run_id: &'a str,
    pub source: &'a str,
    pub records: usize,
    /// Records per second; 0: as fast as `concurrency` allows.
    pub rate: u32,
    pub concurrency: usize,
    pub batch: usize,
}

/// What `cdp bench intake` reported (the fields the suite checks).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub records: usize,
    pub accepted: usize,
    pub duplicates: usize,
    pub rejected: std::collections::BTreeMap<String, usize>,
    pub failed: usize,
    pub retries: std::collections::BTreeMap<String, usize>,
    pub records_per_second: f64,
    pub p99_ms: f64,
}

impl Report {
    pub fn retried(&self) -> usize {
        self.retries.values().sum()
    }
}

impl Load<'_> {
    fn pod_name(&self) -> String {
        format!("e2e-load-{}", self.run_id)
    }

    /// Start the pod in `namespace`; [`Load::report`] waits for its end.
    pub async fn start(&self, env: &Env, namespace: &str) -> Result<()> {
        let secret = format!("{}-intake", self.source);
        let pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": self.pod_name(), "namespace": namespace, "labels": {"app.kubernetes.io/name": "e2e-load"}},
            "spec": {
                "restartPolicy": "Never",
                "automountServiceAccountToken": false,
                "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [{
                    "name": "load",
                    "image": env.image,
                    "imagePullPolicy": "IfNotPresent",
                    "args": [
                        "bench", "intake", "--url", format!("http://{PLATFORM}-ingest"),
                        "--config", "/etc/cdp/pipeline.json", "--source", self.source,
                        "--records", self.records.to_string(), "--rate", self.rate.to_string(),
                        "--concurrency", self.concurrency.to_string(), "--batch", self.batch.to_string(),
                        "--run-id", self.run_id, "--give-up-seconds", "240",
                    ],
                    "env": [{"name": "CDP_SECRETS_DIR", "value": "/var/run/cdp/secrets"}, {"name": "RUST_LOG", "value": "warn"}],
                    "volumeMounts": [
                        {"name": "config", "mountPath": "/etc/cdp", "readOnly": true},
                        {"name": "secrets", "mountPath": "/var/run/cdp/secrets", "readOnly": true},
                    ],
                    "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "512Mi"}},
                    "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}},
                }],
                "volumes": [
                    {"name": "config", "configMap": {"name": format!("{PLATFORM}-pipeline")}},
                    {"name": "secrets", "secret": {"secretName": secret, "items": [{"key": "token", "path": format!("{secret}/token")}]}},
                ],
            },
        });
        env.apply(Apply::Yaml(&serde_json::to_string(&pod)?)).await.context("starting the load pod")
    }

    /// Wait for the pod to finish and read its report.
    pub async fn report(&self, env: &Env, namespace: &str, timeout: Duration) -> Result<Report> {
        let pods = env.api::<Pod>(namespace);
        let name = self.pod_name();
        let phase = eventually(&format!("load pod {name} finished"), timeout, || async {
            let pod = pods.get(&name).await?;
            let phase = pod.status.and_then(|s| s.phase).unwrap_or_default();
            Ok(matches!(phase.as_str(), "Succeeded" | "Failed").then_some(phase))
        })
        .await?;
        let logs = env.logs(namespace, &format!("pod/{name}")).await?;
        if phase != "Succeeded" {
            bail!("load pod {name} {phase}:\n{logs}");
        }
        // the report is the pretty-printed JSON object at the end of the output
        let start = logs.rfind("\n{\n").map(|i| i + 1).or_else(|| logs.starts_with("{\n").then_some(0));
        let report: Report = start
            .and_then(|i| serde_json::from_str(&logs[i..]).ok())
            .with_context(|| format!("no report in the output of {name}:\n{logs}"))?;
        pods.delete(&name, &Default::default()).await?;
        Ok(report)
    }
}
