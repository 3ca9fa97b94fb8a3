//! Deleting a platform, and the Helm chart's namespace-scoped mode.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use cdp_operator::crd::CustomerDataPlatform;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret};
use serde_json::json;

use crate::cluster::{Apply, Env, OPERATOR_NAMESPACE, PLATFORM, PLATFORM_NAMESPACE, eventually};
use crate::install;
use crate::platform::{apply_samples, restricted_namespace, wait_ready};

/// What the operator creates for a platform, by kind (kubectl names).
const OWNED: &str = "deployments,statefulsets,services,configmaps,serviceaccounts,poddisruptionbudgets,networkpolicies,\
horizontalpodautoscalers,replicasets,pods";

async fn owned_objects(env: &Env, namespace: &str) -> Result<Vec<String>> {
    let selector = format!("app.kubernetes.io/instance={PLATFORM}");
    let out = env.kubectl(&["-n", namespace, "get", OWNED, "-l", &selector, "-o", "name"]).await?;
    Ok(out.lines().map(str::to_string).collect())
}

/// Deleting the platform: Kubernetes' garbage collector removes what it owned; the data
/// volume and the generated password Secret are kept, so re-creating the platform finds its data.
pub async fn delete_platform(env: &Env) -> Result<()> {
    ensure!(!owned_objects(env, PLATFORM_NAMESPACE).await?.is_empty(), "nothing to delete");
    let started = Instant::now();
    env.kubectl(&["-n", PLATFORM_NAMESPACE, "delete", "customerdataplatform", PLATFORM, "--wait=false"]).await?;
    eventually("the platform's objects garbage-collected", Duration::from_secs(180), || async {
        Ok(owned_objects(env, PLATFORM_NAMESPACE).await?.is_empty().then_some(()))
    })
    .await?;
    env.figure("platform deleted → everything it owned garbage-collected", format!("{:.1} s", started.elapsed().as_secs_f64()));
    let claim = format!("data-{PLATFORM}-postgres-0");
    ensure!(env.api::<PersistentVolumeClaim>(PLATFORM_NAMESPACE).get_opt(&claim).await?.is_some(), "the data volume {claim} was deleted");
    let password = format!("{PLATFORM}-store");
    ensure!(env.api::<Secret>(PLATFORM_NAMESPACE).get_opt(&password).await?.is_some(), "the password Secret {password} was deleted");
    Ok(())
}

/// The chart with `watchNamespaces`: one Role per watched namespace instead of a ClusterRole.
/// A platform in a watched namespace comes up; one elsewhere is never touched.
pub async fn namespace_scoped_helm(env: &Env) -> Result<()> {
    const WATCHED: &str = "cdp-e2e-scoped";
    const OTHER: &str = "cdp-e2e-other";
    install::uninstall_kustomize(env).await?;
    let (repository, tag) = env.image.rsplit_once(':').unwrap_or((env.image.as_str(), "latest"));
    let values = json!({
        "image": {"repository": repository, "tag": tag},
        "postgres": {"image": env.postgres_image},
        "replicaCount": 1,
        "watchNamespaces": [WATCHED],
    });
    restricted_namespace(env, WATCHED).await?;
    restricted_namespace(env, OTHER).await?;
    install::helm(env, values).await?;
    install::wait_available(env, 1).await?;
    let rbac = env.kubectl(&["get", "clusterrolebinding", "-l", "app.kubernetes.io/instance=cdp-operator", "-o", "name"]).await?;
    ensure!(rbac.trim().is_empty(), "a ClusterRoleBinding in namespace-scoped mode: {rbac}");

    let started = Instant::now();
    apply_samples(env, WATCHED).await?;
    let other = json!({"apiVersion": "cdp.dev/v1alpha1", "kind": "CustomerDataPlatform", "metadata": {"name": PLATFORM, "namespace": OTHER}, "spec": {}});
    env.apply(Apply::Yaml(&other.to_string())).await?;
    wait_ready(env, WATCHED, Duration::from_secs(300)).await?;
    env.figure("Helm chart, watchNamespaces: samples applied → platform Ready", format!("{:.1} s", started.elapsed().as_secs_f64()));

    let untouched = env.api::<CustomerDataPlatform>(OTHER).get(PLATFORM).await?;
    ensure!(untouched.status.is_none(), "a platform outside the watched namespaces got a status: {:?}", untouched.status);
    ensure!(owned_objects(env, OTHER).await?.is_empty(), "objects rendered outside the watched namespaces");
    let logs = env.kubectl(&["-n", OPERATOR_NAMESPACE, "logs", "deploy/cdp-operator", "--tail=-1"]).await?;
    let refused: Vec<&str> = logs.lines().filter(|l| l.contains("forbidden")).collect();
    ensure!(refused.is_empty(), "the operator was refused by RBAC: {refused:?}");
    Ok(())
}

/// Leave the cluster as the suite found it: the operator (either install), the CRDs, and
/// every namespace the suite made.
pub async fn clean_up(env: &Env) -> Result<()> {
    for installed in [install::helm_rendered(env), env.work.join("install")] {
        if installed.exists() {
            let flag = if installed.is_dir() { "-k" } else { "-f" };
            env.kubectl(&["delete", "--ignore-not-found", "--wait=false", flag, &installed.to_string_lossy()]).await?;
        }
    }
    for namespace in [PLATFORM_NAMESPACE, "cdp-e2e-scoped", "cdp-e2e-other", OPERATOR_NAMESPACE] {
        env.kubectl(&["delete", "namespace", namespace, "--ignore-not-found", "--wait=false"]).await?;
    }
    Ok(())
}
