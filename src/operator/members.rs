//! Status of member resources (Source, MatchingPolicy, Feed, ScalingPolicy).
//!
//! The platform reconcile writes each member's verdict. A member naming a platform that does not
//! exist has no platform reconcile to speak for it: a small controller per kind marks it Stalled.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::apply;
use super::controller::{Context, scoped};
use super::status::{self, Phase};
use crate::crd::common::CommonStatus;
use crate::crd::{CustomerDataPlatform, Enricher, Feed, MatchingPolicy, ScalingPolicy, Source};
use crate::pipeline::{Compiled, Members};

/// A resource that belongs to a platform through `spec.platformRef`.
pub trait Member:
    Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Serialize + DeserializeOwned + Clone + Debug + Send + Sync + 'static
{
    const KIND: &'static str;
    fn platform(&self) -> &str;
}

macro_rules! member {
    ($type:ty, $kind:literal) => {
        impl Member for $type {
            const KIND: &'static str = $kind;
            fn platform(&self) -> &str {
                &self.spec.platform_ref.name
            }
        }
    };
}
member!(Source, "Source");
member!(MatchingPolicy, "MatchingPolicy");
member!(Feed, "Feed");
member!(ScalingPolicy, "ScalingPolicy");
member!(Enricher, "Enricher");

/// Each member's Ready/Stalled from its verdict in the compiled config.
pub async fn update_statuses(ctx: &Context, members: &Members, compiled: &Compiled) -> Result<(), kube::Error> {
    for source in &members.sources {
        write(ctx, source, verdict_phase(source, compiled)).await?;
    }
    for policy in &members.matching_policies {
        write(ctx, policy, verdict_phase(policy, compiled)).await?;
    }
    for feed in &members.feeds {
        write(ctx, feed, verdict_phase(feed, compiled)).await?;
    }
    for policy in &members.scaling_policies {
        write(ctx, policy, verdict_phase(policy, compiled)).await?;
    }
    for enricher in &members.enrichers {
        write(ctx, enricher, verdict_phase(enricher, compiled)).await?;
    }
    Ok(())
}

fn verdict_phase<K: Member>(member: &K, compiled: &Compiled) -> Phase {
    match compiled.verdict(K::KIND, &member.name_any()) {
        Some(verdict) if !verdict.accepted() => {
            let messages: Vec<String> = verdict.errors.iter().map(ToString::to_string).collect();
            Phase::Stalled { reason: verdict.errors[0].reason().to_string(), message: messages.join("; ") }
        }
        _ => Phase::Ready { message: format!("in the pipeline config {}", compiled.hash) },
    }
}

/// Write `phase` as the member's conditions, only when something changed.
async fn write<K: Member>(ctx: &Context, member: &K, phase: Phase) -> Result<(), kube::Error> {
    let previous = previous_status(member);
    let generation = member.meta().generation;
    let now = Time(jiff::Timestamp::now());
    let status = CommonStatus { conditions: status::conditions(&previous.conditions, generation, &phase, &now), observed_generation: generation };
    if status::same_status(&previous, &status) {
        return Ok(());
    }
    if let Phase::Stalled { reason, message } = &phase {
        ctx.event(member, EventType::Warning, reason, message.clone()).await;
    }
    apply::apply_status(&ctx.client, member, &status).await
}

fn previous_status<K: Serialize>(obj: &K) -> CommonStatus {
    serde_json::to_value(obj)
        .ok()
        .and_then(|v| v.get("status").cloned())
        .and_then(|s| serde_json::from_value(s).ok())
        .unwrap_or_default()
}

/// Marks members of `K` whose platform is missing (or being deleted) as Stalled.
pub async fn orphan_controller<K: Member>(ctx: Arc<Context>, scope: Option<&str>) {
    let config = watcher::Config::default().any_semantic();
    let controller = Controller::new(scoped::<K>(&ctx.client, scope), config.clone());
    let members = controller.store();
    controller
        .watches(scoped::<CustomerDataPlatform>(&ctx.client, scope), config, move |platform| {
            let (name, namespace) = (platform.name_any(), platform.namespace());
            members
                .state()
                .iter()
                .filter(|m| m.platform() == name && m.namespace() == namespace)
                .map(|m| ObjectRef::from_obj(m.as_ref()))
                .collect::<Vec<_>>()
        })
        .shutdown_on_signal()
        .run(reconcile_orphan::<K>, |_, _: &kube::Error, _| Action::requeue(Duration::from_secs(10)), ctx)
        .for_each(|_| async {})
        .await;
}

async fn reconcile_orphan<K: Member>(member: Arc<K>, ctx: Arc<Context>) -> Result<Action, kube::Error> {
    let namespace = member.namespace().unwrap_or_default();
    let platforms: Api<CustomerDataPlatform> = Api::namespaced(ctx.client.clone(), &namespace);
    let live = platforms.get_opt(member.platform()).await?.is_some_and(|p| p.metadata.deletion_timestamp.is_none());
    if !live {
        let message = format!(
            "CustomerDataPlatform {:?} does not exist in namespace {namespace:?}; create it or fix spec.platformRef",
            member.platform()
        );
        write(&ctx, member.as_ref(), Phase::Stalled { reason: "PlatformNotFound".to_string(), message }).await?;
    }
    Ok(Action::await_change())
}
