//! In-process fake Kubernetes API server for controller integration tests.
//!
//! [`FakeApi::new`] returns a handle and a [`kube::Client`] whose transport is a
//! `tower::service_fn` serving an in-memory store, so the real `kube::Api`, `watcher` and
//! `Controller` run unmodified against it.
//!
//! Modelled, because controllers misbehave without it:
//! - `GET /version`, the first request of a client that logs the server's version;
//! - any `/api/v1/...` or `/apis/{group}/{version}/...` path, namespaced or cluster-wide; objects
//!   are JSON keyed by (group, plural, namespace, name), the version is not part of the key;
//! - one global resourceVersion; a write that changes nothing keeps it and emits no event;
//!   `metadata.generation` starts at 1 and is bumped when anything outside `metadata` and
//!   `status` changes (the CRD rule; for built-in kinds that is `spec`), or when deletion starts;
//! - optimistic concurrency: a body whose `metadata.resourceVersion` is stale gets 409 Conflict;
//! - every kind has a `/status` subresource: writes to `/status` change only `.status`, other
//!   writes (and creates) leave `.status` alone;
//! - JSON patch (a `test` for `null` passes when the path is absent, as on the real server),
//!   merge patch, and server-side apply (see below);
//! - deletion with finalizers (deletionTimestamp first, removal once the last finalizer goes)
//!   and delete preconditions;
//! - list and watch with equality label selectors and dotted-path field selectors; watch replays
//!   the event log after a resourceVersion, or starts from the current state for `0`/absent, and
//!   objects moving in or out of a selector appear as ADDED/DELETED, as on the real server;
//!   `sendInitialEvents=true` (streaming lists) ends the initial events with the bookmark kube
//!   waits for.
//!
//! Not modelled (cover these elsewhere, e.g. by validating rendered objects against the CRD
//! schema and testing CEL rules):
//! - server-side apply field ownership: apply deep-merges the applied object into the stored
//!   one (maps recursively; lists of objects whose items all carry `name`, or else `type`, merge
//!   by that key; other lists are replaced; `null` removes a field). So a field that a manager
//!   stops applying is NOT removed, conflicts between managers are never reported (`force` is
//!   accepted and ignored), and set-lists such as `finalizers` are replaced, not merged.
//!   `managedFields` holds one simplified `Apply` entry per (manager, subresource) listing the
//!   fields of its last applied object; other writes do not touch it;
//! - strategic merge patch is treated as a JSON merge patch (lists are replaced, not merged);
//! - schema validation, defaulting, pruning, admission, CEL, `dryRun`, pagination (`limit` is
//!   ignored and the full list returned), set-based label selectors (rejected with 400);
//! - garbage collection: owned objects survive their owner until a test calls
//!   [`FakeApi::collect_garbage`]; no other controller runs either (see
//!   [`FakeApi::mark_deployment_available`]);
//! - the event log is never compacted, so a watch never gets 410 Gone; periodic bookmarks are
//!   not sent (`allowWatchBookmarks` is ignored).
#![allow(dead_code)] // each integration-test binary uses a different subset of these helpers

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    convert::Infallible,
    fmt,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use bytes::Bytes;
use futures::StreamExt;
use http::{Method, Request, Response, StatusCode, header::CONTENT_TYPE};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus};
use kube::Resource;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Map, Value as Json, json};
use tokio::sync::{broadcast, watch};

type ResponseBody = UnsyncBoxBody<Bytes, Infallible>;
type Query = HashMap<String, String>;

/// Handle on the fake server's store; cheap to clone.
#[derive(Clone)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
}

/// One request as the client sent it, for assertions on what a controller did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedRequest {
    pub method: Method,
    /// Path without the query string, e.g. `/apis/apps/v1/namespaces/ns/deployments/web`.
    pub path: String,
    pub query: String,
    pub content_type: Option<String>,
}

impl FakeApi {
    /// Starts an empty fake server and returns a handle on it plus a client talking to it.
    pub fn new() -> (FakeApi, kube::Client) {
        let api = FakeApi {
            state: Arc::new(Mutex::new(State::new())),
        };
        let server = api.clone();
        let service = tower::service_fn(move |req: Request<kube::client::Body>| {
            let server = server.clone();
            async move { Ok::<_, Infallible>(server.serve(req).await) }
        });
        (api, kube::Client::new(service, "default"))
    }

    /// Reads an object straight from the store; `namespace` is `""` for cluster-scoped kinds.
    pub fn get<K: Resource<DynamicType = ()> + DeserializeOwned>(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<K> {
        let state = self.lock();
        state
            .objects
            .get(&key_of::<K>(namespace, name))
            .map(from_json)
    }

    /// Lists objects of a kind straight from the store, in one namespace or in all of them.
    pub fn list<K: Resource<DynamicType = ()> + DeserializeOwned>(
        &self,
        namespace: Option<&str>,
    ) -> Vec<K> {
        let resource = GroupResource::of::<K>();
        let state = self.lock();
        state
            .objects
            .iter()
            .filter(|(key, _)| {
                key.resource == resource && namespace.is_none_or(|ns| key.namespace == ns)
            })
            .map(|(_, obj)| from_json(obj))
            .collect()
    }

    /// Creates or unconditionally replaces an object, status included, as another controller
    /// would; server-owned metadata (uid, resourceVersion, generation, ...) is still enforced.
    pub fn put<K: Resource<DynamicType = ()> + Serialize + DeserializeOwned>(&self, obj: &K) -> K {
        let meta = obj.meta();
        let key = key_of::<K>(
            meta.namespace.as_deref().unwrap_or(""),
            meta.name.as_deref().expect("object needs a name"),
        );
        let mut state = self.lock();
        let new = serde_json::to_value(obj).expect("object serializes");
        let stored = match state.objects.get(&key).cloned() {
            Some(old) => state.update(&key, &old, new),
            None => state
                .create(&key, new)
                .expect("the key was just checked to be free"),
        };
        from_json(&stored)
    }

    /// Changes a stored object in place (status included, bypassing subresource rules) and
    /// returns the stored result. Panics if the object does not exist.
    pub fn modify<K>(&self, namespace: &str, name: &str, change: impl FnOnce(&mut K)) -> K
    where
        K: Resource<DynamicType = ()> + Serialize + DeserializeOwned,
    {
        let key = key_of::<K>(namespace, name);
        let mut state = self.lock();
        let old = state
            .objects
            .get(&key)
            .cloned()
            .unwrap_or_else(|| panic!("{key} does not exist"));
        let mut obj: K = from_json(&old);
        change(&mut obj);
        let stored = state.update(
            &key,
            &old,
            serde_json::to_value(&obj).expect("object serializes"),
        );
        from_json(&stored)
    }

    /// Plays the deployment controller and kubelet, which do not run here: reports every
    /// replica of the Deployment's current generation as updated, ready and available.
    pub fn mark_deployment_available(&self, namespace: &str, name: &str) -> Deployment {
        self.modify::<Deployment>(namespace, name, |deployment| {
            let replicas = deployment
                .spec
                .as_ref()
                .and_then(|spec| spec.replicas)
                .unwrap_or(1);
            let condition = |type_: &str, reason: &str| DeploymentCondition {
                type_: type_.into(),
                status: "True".into(),
                reason: Some(reason.into()),
                ..Default::default()
            };
            deployment.status = Some(DeploymentStatus {
                observed_generation: deployment.metadata.generation,
                replicas: Some(replicas),
                updated_replicas: Some(replicas),
                ready_replicas: Some(replicas),
                available_replicas: Some(replicas),
                conditions: Some(vec![
                    condition("Available", "MinimumReplicasAvailable"),
                    condition("Progressing", "NewReplicaSetAvailable"),
                ]),
                ..Default::default()
            });
        })
    }

    /// Plays the garbage collector, which does not run here: deletes (honouring finalizers)
    /// every object none of whose owners exist any more, repeating so that chains cascade.
    /// Returns how many deletions it started.
    pub fn collect_garbage(&self) -> usize {
        let mut state = self.lock();
        let mut started = 0;
        loop {
            let live: HashSet<&str> = state
                .objects
                .values()
                .filter_map(|obj| obj["metadata"]["uid"].as_str())
                .collect();
            let orphans: Vec<ObjKey> = state
                .objects
                .iter()
                .filter(|(_, obj)| {
                    let owners = obj["metadata"]["ownerReferences"]
                        .as_array()
                        .map(Vec::as_slice)
                        .unwrap_or_default();
                    !owners.is_empty()
                        && obj["metadata"].get("deletionTimestamp").is_none()
                        && owners.iter().all(|owner| {
                            !owner["uid"].as_str().is_some_and(|uid| live.contains(uid))
                        })
                })
                .map(|(key, _)| key.clone())
                .collect();
            if orphans.is_empty() {
                return started;
            }
            for key in orphans {
                let obj = state.objects[&key].clone();
                state.delete(&key, obj);
                started += 1;
            }
        }
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().requests.clone()
    }

    /// Makes the next `times` requests with this method and a path containing `path_contains`
    /// fail with 500 InternalError.
    pub fn fail_next(&self, method: Method, path_contains: &str, times: usize) {
        self.fail_next_with(method, path_contains, 500, "Internal error occurred: injected by the test", times);
    }

    /// Like [`FakeApi::fail_next`] with a chosen status code and message, e.g. the 422 a real
    /// server returns for an immutable field (the fake does no validation of its own).
    pub fn fail_next_with(&self, method: Method, path_contains: &str, code: u16, message: &str, times: usize) {
        if times == 0 {
            return;
        }
        let reason = match code {
            400 => "BadRequest",
            403 => "Forbidden",
            404 => "NotFound",
            409 => "Conflict",
            422 => "Invalid",
            _ => "InternalError",
        };
        let error = ApiError::new(code, reason, message.into());
        self.lock().faults.push(Fault {
            methods: vec![method],
            path_contains: path_contains.into(),
            remaining: times,
            error,
        });
    }

    /// Makes the next PUT or PATCH of a path containing `path_contains` fail with 409 Conflict,
    /// as if another writer had got there first.
    pub fn conflict_next_update(&self, path_contains: &str) {
        let error = ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {path_contains}: the object has been modified; please apply your changes to the latest version and try again"
            ),
        );
        let methods = vec![Method::PUT, Method::PATCH];
        self.lock().faults.push(Fault {
            methods,
            path_contains: path_contains.into(),
            remaining: 1,
            error,
        });
    }

    /// Waits until `condition` holds, re-checking after every write; panics after `timeout`.
    pub async fn wait_until(&self, timeout: Duration, mut condition: impl FnMut(&FakeApi) -> bool) {
        // Subscribing before the first check means no write can slip in unnoticed.
        let mut writes = self.lock().writes.subscribe();
        let wait = async {
            while !condition(self) {
                writes
                    .changed()
                    .await
                    .expect("the sender lives as long as the store");
            }
        };
        if tokio::time::timeout(timeout, wait).await.is_err() {
            panic!("condition not met within {timeout:?}");
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock leaves the store consistent enough to read.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Answers a request that arrived over a socket (the TLS server of [`super::tls`]).
    pub async fn answer(&self, req: Request<hyper::body::Incoming>) -> Response<ResponseBody> {
        let (parts, body) = req.into_parts();
        let body = match body.collect().await {
            Ok(body) => body.to_bytes(),
            Err(err) => return ApiError::bad_request(err.to_string()).into_response(),
        };
        self.serve(Request::from_parts(parts, kube::client::Body::from(body))).await
    }

    async fn serve(&self, req: Request<kube::client::Body>) -> Response<ResponseBody> {
        let (parts, body) = req.into_parts();
        let body = match body.collect_bytes().await {
            Ok(body) => body,
            Err(err) => return ApiError::bad_request(err.to_string()).into_response(),
        };
        let content_type = parts
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let request = RecordedRequest {
            method: parts.method,
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().unwrap_or_default().to_owned(),
            content_type,
        };
        self.lock()
            .handle(request, &body)
            .unwrap_or_else(ApiError::into_response)
    }
}

/// An API group ("" for core) and a resource plural, e.g. `apps` + `deployments`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct GroupResource {
    group: String,
    plural: String,
}

impl GroupResource {
    fn of<K: Resource<DynamicType = ()>>() -> Self {
        GroupResource {
            group: K::group(&()).into(),
            plural: K::plural(&()).into(),
        }
    }
}

impl fmt::Display for GroupResource {
    // The form the real server uses in messages: `configmaps`, `deployments.apps`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.group.as_str() {
            "" => write!(f, "{}", self.plural),
            group => write!(f, "{}.{group}", self.plural),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct ObjKey {
    resource: GroupResource,
    /// `""` for cluster-scoped objects.
    namespace: String,
    name: String,
}

impl fmt::Display for ObjKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} \"{}\"", self.resource, self.name)
    }
}

fn key_of<K: Resource<DynamicType = ()>>(namespace: &str, name: &str) -> ObjKey {
    ObjKey {
        resource: GroupResource::of::<K>(),
        namespace: namespace.into(),
        name: name.into(),
    }
}

/// A write as seen by watchers: `before` is absent for creations, `after` for deletions.
struct Event {
    resource_version: u64,
    key: ObjKey,
    before: Option<Json>,
    after: Option<Json>,
}

struct Fault {
    methods: Vec<Method>,
    path_contains: String,
    remaining: usize,
    error: ApiError,
}

struct State {
    resource_version: u64,
    objects: BTreeMap<ObjKey, Json>,
    /// Kinds seen per resource, to name list responses (`ConfigMapList`).
    kinds: HashMap<GroupResource, String>,
    history: Vec<Arc<Event>>,
    events: broadcast::Sender<Arc<Event>>,
    /// Carries the resourceVersion after every write, to wake `wait_until`.
    writes: watch::Sender<u64>,
    faults: Vec<Fault>,
    requests: Vec<RecordedRequest>,
}

/// The parsed URL path of a request.
struct Route {
    resource: GroupResource,
    api_version: String,
    /// `None` for cluster-scoped objects and all-namespaces lists and watches.
    namespace: Option<String>,
    name: Option<String>,
    scope: Scope,
}

impl Route {
    fn parse(path: &str) -> Option<Route> {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (group, version, rest) = match segments.as_slice() {
            ["api", version, rest @ ..] => ("", *version, rest),
            ["apis", group, version, rest @ ..] => (*group, *version, rest),
            _ => return None,
        };
        // `/namespaces/{ns}` and `/namespaces/{ns}/status` address Namespace objects themselves.
        let (namespace, rest) = match rest {
            ["namespaces", namespace, rest @ ..] if !rest.is_empty() && rest != ["status"] => {
                (Some(*namespace), rest)
            }
            _ => (None, rest),
        };
        let (plural, name, scope) = match rest {
            [plural] => (plural, None, Scope::Main),
            [plural, name] => (plural, Some(*name), Scope::Main),
            [plural, name, "status"] => (plural, Some(*name), Scope::Status),
            _ => return None,
        };
        Some(Route {
            resource: GroupResource {
                group: group.into(),
                plural: (*plural).into(),
            },
            api_version: if group.is_empty() {
                version.into()
            } else {
                format!("{group}/{version}")
            },
            namespace: namespace.map(str::to_owned),
            name: name.map(str::to_owned),
            scope,
        })
    }

    fn key(&self, name: &str) -> ObjKey {
        ObjKey {
            resource: self.resource.clone(),
            namespace: self.namespace.clone().unwrap_or_default(),
            name: name.into(),
        }
    }
}

/// Which part of an object a write may change.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// The main resource: everything but `.status`.
    Main,
    /// The `/status` subresource: only `.status`.
    Status,
}

impl Scope {
    /// Keeps from `new` only what this scope may change, the rest from `old`.
    fn restrict(self, old: &Json, new: Json) -> Json {
        let (mut target, source) = match self {
            Scope::Main => (new, old),
            Scope::Status => (old.clone(), &new),
        };
        set_or_remove(&mut target, "status", source.get("status"));
        target
    }

    /// The part of an applied object this scope takes ownership of.
    fn owned_fields(self, applied: &Json) -> Json {
        let mut fields = applied.clone();
        let fields_map = fields
            .as_object_mut()
            .expect("applied objects are JSON objects");
        match self {
            Scope::Main => fields_map
                .retain(|field, _| !matches!(field.as_str(), "apiVersion" | "kind" | "status")),
            Scope::Status => fields_map.retain(|field, _| field == "status"),
        }
        fields
    }
}

/// Metadata only the server sets; client writes to it are ignored.
const SERVER_METADATA: [&str; 8] = [
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
];

impl State {
    fn new() -> Self {
        State {
            resource_version: 0,
            objects: BTreeMap::new(),
            kinds: HashMap::new(),
            history: Vec::new(),
            events: broadcast::channel(1024).0,
            writes: watch::channel(0).0,
            faults: Vec::new(),
            requests: Vec::new(),
        }
    }

    fn handle(
        &mut self,
        request: RecordedRequest,
        body: &[u8],
    ) -> Result<Response<ResponseBody>, ApiError> {
        self.requests.push(request.clone());
        if let Some(error) = self.take_fault(&request) {
            return Err(error);
        }
        if request.method == Method::GET && request.path == "/version" {
            // What a client asks first (`cdp operator` logs the server's version).
            let version = json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-fake", "platform": "linux/amd64"});
            return Ok(json_response(StatusCode::OK, &version));
        }
        let route = Route::parse(&request.path).ok_or_else(|| {
            ApiError::new(
                404,
                "NotFound",
                "the server could not find the requested resource".into(),
            )
        })?;
        let query: Query = form_urlencoded::parse(request.query.as_bytes())
            .into_owned()
            .collect();
        let content_type = request.content_type.as_deref().unwrap_or_default();
        match (&request.method, route.name.as_deref()) {
            (&Method::GET, None) if query.get("watch").is_some_and(|w| w == "true" || w == "1") => {
                self.watch(&route, &query)
            }
            (&Method::GET, None) => self.list(&route, &query),
            (&Method::GET, Some(name)) => Ok(json_response(
                StatusCode::OK,
                &self.existing(&route.key(name))?,
            )),
            (&Method::POST, None) => self.handle_create(&route, body),
            (&Method::PUT, Some(name)) => self.handle_replace(&route.key(name), route.scope, body),
            (&Method::PATCH, Some(name)) => {
                self.handle_patch(&route, &route.key(name), content_type, &query, body)
            }
            (&Method::DELETE, Some(name)) => self.handle_delete(&route.key(name), body),
            (method, _) => Err(ApiError::new(
                405,
                "MethodNotAllowed",
                format!("{method} is not supported on {}", request.path),
            )),
        }
    }

    fn take_fault(&mut self, request: &RecordedRequest) -> Option<ApiError> {
        let index = self.faults.iter().position(|fault| {
            fault.methods.contains(&request.method) && request.path.contains(&fault.path_contains)
        })?;
        let fault = &mut self.faults[index];
        fault.remaining -= 1;
        let error = fault.error.clone();
        if fault.remaining == 0 {
            self.faults.remove(index);
        }
        Some(error)
    }

    fn existing(&self, key: &ObjKey) -> Result<Json, ApiError> {
        self.objects
            .get(key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(key))
    }

    fn list(&self, route: &Route, query: &Query) -> Result<Response<ResponseBody>, ApiError> {
        let filter = Filter::new(route, query)?;
        let items: Vec<Json> = self
            .objects
            .iter()
            .filter(|(key, obj)| filter.matches(key, obj))
            .map(|(_, obj)| obj.clone())
            .collect();
        let kind = self
            .kinds
            .get(&route.resource)
            .map_or("List".into(), |kind| format!("{kind}List"));
        let list = json!({
            "kind": kind,
            "apiVersion": route.api_version,
            "metadata": { "resourceVersion": self.resource_version.to_string() },
            "items": items,
        });
        Ok(json_response(StatusCode::OK, &list))
    }

    /// Streams newline-delimited watch events: the log after `resourceVersion`, or the current
    /// state as ADDED events when it is `0` or absent, then live events until `timeoutSeconds`.
    fn watch(&self, route: &Route, query: &Query) -> Result<Response<ResponseBody>, ApiError> {
        let filter = Filter::new(route, query)?;
        let since =
            match query.get("resourceVersion").map(String::as_str) {
                None | Some("" | "0") => None,
                Some(rv) => Some(rv.parse::<u64>().map_err(|_| {
                    ApiError::bad_request(format!("invalid resourceVersion {rv:?}"))
                })?),
            };
        let initial_events = query.get("sendInitialEvents").is_some_and(|v| v == "true");
        let mut backlog: Vec<Bytes> = match since.filter(|_| !initial_events) {
            None => self
                .objects
                .iter()
                .filter(|(key, obj)| filter.matches(key, obj))
                .map(|(_, obj)| watch_line("ADDED", obj))
                .collect(),
            Some(since) => self
                .history
                .iter()
                .skip_while(|event| event.resource_version <= since)
                .filter_map(|event| filter.view(event))
                .collect(),
        };
        // A streaming list (kube's `Config::streaming_lists`) waits for this bookmark to end
        // the initial events.
        if initial_events {
            let kind = self.kinds.get(&route.resource).map_or("", String::as_str);
            let end = json!({
                "apiVersion": route.api_version,
                "kind": kind,
                "metadata": {
                    "resourceVersion": self.resource_version.to_string(),
                    "annotations": { "k8s.io/initial-events-end": "true" },
                },
            });
            backlog.push(watch_line("BOOKMARK", &end));
        }
        // Subscribed under the same lock as the backlog was read, so no event is lost or doubled.
        let live = futures::stream::unfold(
            (self.events.subscribe(), filter),
            |(mut events, filter)| async move {
                loop {
                    match events.recv().await {
                        Ok(event) => {
                            if let Some(line) = filter.view(&event) {
                                return Some((line, (events, filter)));
                            }
                        }
                        // A watcher that fell behind is cut off; it re-watches from its last event.
                        Err(
                            broadcast::error::RecvError::Lagged(_)
                            | broadcast::error::RecvError::Closed,
                        ) => return None,
                    }
                }
            },
        );
        let timeout = match query.get("timeoutSeconds") {
            Some(seconds) => Duration::from_secs(
                seconds
                    .parse()
                    .map_err(|_| ApiError::bad_request("invalid timeoutSeconds".into()))?,
            ),
            None => Duration::MAX,
        };
        let stream = futures::stream::iter(backlog)
            .chain(live)
            .take_until(tokio::time::sleep(timeout))
            .map(|line| Ok(Frame::data(line)));
        let body = StreamBody::new(stream).boxed_unsync();
        Ok(Response::builder()
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .expect("valid response"))
    }

    fn handle_create(
        &mut self,
        route: &Route,
        body: &[u8],
    ) -> Result<Response<ResponseBody>, ApiError> {
        let mut obj = parse_object(body)?;
        let namespace = route.namespace.as_deref().unwrap_or_default();
        let meta = metadata_mut(&mut obj);
        if let Some(sent) = meta.get("namespace").and_then(Json::as_str)
            && sent != namespace
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request".into(),
            ));
        }
        let name = match (
            meta.get("name").and_then(Json::as_str),
            meta.get("generateName").and_then(Json::as_str),
        ) {
            (Some(name), _) if !name.is_empty() => name.to_owned(),
            // The next resourceVersion makes a unique suffix.
            (_, Some(prefix)) => format!("{prefix}{:05x}", self.resource_version + 1),
            _ => {
                return Err(ApiError::invalid(
                    "metadata.name: Required value: name or generateName is required".into(),
                ));
            }
        };
        // Status belongs to the /status subresource and is dropped on create.
        set_or_remove(&mut obj, "status", None);
        let created = self.create(&route.key(&name), obj)?;
        Ok(json_response(StatusCode::CREATED, &created))
    }

    fn handle_replace(
        &mut self,
        key: &ObjKey,
        scope: Scope,
        body: &[u8],
    ) -> Result<Response<ResponseBody>, ApiError> {
        let new = parse_object(body)?;
        if let Some(sent) = new["metadata"]["name"].as_str()
            && sent != key.name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({sent}) does not match the name on the URL ({})",
                key.name
            )));
        }
        let old = self.existing(key)?;
        let stored = self.write(key, &old, new, scope)?;
        Ok(json_response(StatusCode::OK, &stored))
    }

    fn handle_patch(
        &mut self,
        route: &Route,
        key: &ObjKey,
        content_type: &str,
        query: &Query,
        body: &[u8],
    ) -> Result<Response<ResponseBody>, ApiError> {
        let media_type = content_type.split(';').next().unwrap_or_default().trim();
        if media_type == "application/apply-patch+yaml" {
            return self.apply(route, key, query, body);
        }
        let old = self.existing(key)?;
        let mut patched = old.clone();
        match media_type {
            "application/json-patch+json" => apply_json_patch(&mut patched, body)?,
            "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                json_patch::merge(&mut patched, &parse_json(body)?)
            }
            other => {
                return Err(ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    format!("unsupported patch content type {other:?}"),
                ));
            }
        }
        let stored = self.write(key, &old, patched, route.scope)?;
        Ok(json_response(StatusCode::OK, &stored))
    }

    /// Server-side apply, simplified as described at the top of this file. kube sends the
    /// applied object as JSON, which is valid YAML; YAML-only syntax is not accepted.
    fn apply(
        &mut self,
        route: &Route,
        key: &ObjKey,
        query: &Query,
        body: &[u8],
    ) -> Result<Response<ResponseBody>, ApiError> {
        let manager = query.get("fieldManager").ok_or_else(|| {
            ApiError::bad_request("fieldManager is required for apply requests".into())
        })?;
        let applied = parse_object(body)?;
        let (Some(api_version), Some(_)) =
            (applied["apiVersion"].as_str(), applied["kind"].as_str())
        else {
            return Err(ApiError::bad_request(
                "apply patches must set apiVersion and kind".into(),
            ));
        };
        let entry = managed_fields_entry(
            manager,
            api_version,
            route.scope,
            &route.scope.owned_fields(&applied),
        );
        let Some(old) = self.objects.get(key).cloned() else {
            if route.scope == Scope::Status {
                return Err(ApiError::not_found(key));
            }
            let mut obj = applied;
            set_or_remove(&mut obj, "status", None);
            set_managed_fields_entry(&mut obj, entry);
            return Ok(json_response(StatusCode::CREATED, &self.create(key, obj)?));
        };
        let mut merged = old.clone();
        apply_merge(&mut merged, &applied);
        check_resource_version(key, &old, &merged)?;
        let mut new = route.scope.restrict(&old, merged);
        set_managed_fields_entry(&mut new, entry);
        Ok(json_response(StatusCode::OK, &self.update(key, &old, new)))
    }

    fn handle_delete(
        &mut self,
        key: &ObjKey,
        body: &[u8],
    ) -> Result<Response<ResponseBody>, ApiError> {
        let obj = self.existing(key)?;
        let options = if body.is_empty() {
            json!({})
        } else {
            parse_json(body)?
        };
        let preconditions = &options["preconditions"];
        for field in ["uid", "resourceVersion"] {
            if let Some(expected) = preconditions[field].as_str()
                && obj["metadata"][field].as_str() != Some(expected)
            {
                return Err(ApiError::conflict(
                    key,
                    &format!("Precondition failed: {field} in precondition: {expected}"),
                ));
            }
        }
        let response = match self.delete(key, obj) {
            Some(pending) => pending,
            None => json!({
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": { "name": key.name, "group": key.resource.group, "kind": key.resource.plural },
            }),
        };
        Ok(json_response(StatusCode::OK, &response))
    }

    fn create(&mut self, key: &ObjKey, mut obj: Json) -> Result<Json, ApiError> {
        if self.objects.contains_key(key) {
            return Err(ApiError::already_exists(key));
        }
        self.resource_version += 1;
        let rv = self.resource_version;
        let meta = metadata_mut(&mut obj);
        meta.insert("name".into(), key.name.clone().into());
        if key.namespace.is_empty() {
            meta.remove("namespace");
        } else {
            meta.insert("namespace".into(), key.namespace.clone().into());
        }
        // Unique because resourceVersions are.
        meta.insert(
            "uid".into(),
            format!("00000000-0000-4000-8000-{rv:012x}").into(),
        );
        meta.insert("creationTimestamp".into(), now());
        meta.insert("generation".into(), 1.into());
        meta.insert("resourceVersion".into(), rv.to_string().into());
        meta.remove("deletionTimestamp");
        meta.remove("deletionGracePeriodSeconds");
        fold_string_data(&mut obj);
        self.objects.insert(key.clone(), obj.clone());
        self.record(key, None, Some(obj.clone()));
        Ok(obj)
    }

    /// A client write: rejects a stale resourceVersion, then stores what `scope` may change.
    fn write(
        &mut self,
        key: &ObjKey,
        old: &Json,
        new: Json,
        scope: Scope,
    ) -> Result<Json, ApiError> {
        check_resource_version(key, old, &new)?;
        Ok(self.update(key, old, scope.restrict(old, new)))
    }

    /// Stores `new` over `old`, keeping server-owned metadata from `old`.
    fn update(&mut self, key: &ObjKey, old: &Json, mut new: Json) -> Json {
        let meta = metadata_mut(&mut new);
        for field in SERVER_METADATA {
            match old["metadata"].get(field) {
                Some(value) => meta.insert(field.into(), value.clone()),
                None => meta.remove(field),
            };
        }
        self.store(key, old, new)
    }

    /// Stores `new` over `old` unless they are equal; bumps generation when anything outside
    /// metadata and status changed; removes the object once deleting and out of finalizers.
    fn store(&mut self, key: &ObjKey, old: &Json, mut new: Json) -> Json {
        fold_string_data(&mut new);
        if new == *old {
            return new;
        }
        if differs_outside_metadata_and_status(old, &new) {
            let generation = old["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
            metadata_mut(&mut new).insert("generation".into(), generation.into());
        }
        let finalizers_done = new["metadata"]["finalizers"]
            .as_array()
            .is_none_or(Vec::is_empty);
        if new["metadata"].get("deletionTimestamp").is_some() && finalizers_done {
            return self.remove(key, new);
        }
        self.resource_version += 1;
        metadata_mut(&mut new).insert(
            "resourceVersion".into(),
            self.resource_version.to_string().into(),
        );
        self.objects.insert(key.clone(), new.clone());
        self.record(key, Some(old.clone()), Some(new.clone()));
        new
    }

    /// Deletes at once, or, while finalizers remain, marks the object as deleting and returns it.
    fn delete(&mut self, key: &ObjKey, obj: Json) -> Option<Json> {
        if obj["metadata"]["finalizers"]
            .as_array()
            .is_none_or(Vec::is_empty)
        {
            self.remove(key, obj);
            return None;
        }
        if obj["metadata"].get("deletionTimestamp").is_some() {
            return Some(obj);
        }
        let mut deleting = obj.clone();
        let meta = metadata_mut(&mut deleting);
        meta.insert("deletionTimestamp".into(), now());
        meta.insert("deletionGracePeriodSeconds".into(), 0.into());
        // The real server bumps generation when deletion starts, so generation-filtered
        // controllers still see it.
        if let Some(generation) = meta.get("generation").and_then(Json::as_i64) {
            meta.insert("generation".into(), (generation + 1).into());
        }
        Some(self.store(key, &obj, deleting))
    }

    fn remove(&mut self, key: &ObjKey, mut last: Json) -> Json {
        self.resource_version += 1;
        metadata_mut(&mut last).insert(
            "resourceVersion".into(),
            self.resource_version.to_string().into(),
        );
        self.objects.remove(key);
        self.record(key, Some(last.clone()), None);
        last
    }

    fn record(&mut self, key: &ObjKey, before: Option<Json>, after: Option<Json>) {
        if let Some(kind) = after.as_ref().and_then(|obj| obj["kind"].as_str()) {
            self.kinds.insert(key.resource.clone(), kind.into());
        }
        let event = Arc::new(Event {
            resource_version: self.resource_version,
            key: key.clone(),
            before,
            after,
        });
        self.history.push(event.clone());
        // No subscribers just means no watch is open.
        let _ = self.events.send(event);
        self.writes.send_replace(self.resource_version);
    }
}

/// Which objects a list or watch selects.
#[derive(Clone)]
struct Filter {
    resource: GroupResource,
    namespace: Option<String>,
    labels: Selector,
    fields: Selector,
}

impl Filter {
    fn new(route: &Route, query: &Query) -> Result<Self, ApiError> {
        Ok(Filter {
            resource: route.resource.clone(),
            namespace: route.namespace.clone(),
            labels: Selector::parse(query.get("labelSelector"))?,
            fields: Selector::parse(query.get("fieldSelector"))?,
        })
    }

    fn matches(&self, key: &ObjKey, obj: &Json) -> bool {
        key.resource == self.resource
            && self
                .namespace
                .as_ref()
                .is_none_or(|ns| *ns == key.namespace)
            && self
                .labels
                .matches(|label| obj["metadata"]["labels"][label].as_str())
            && self.fields.matches(|path| {
                path.split('.')
                    .try_fold(obj, |value, field| value.get(field))?
                    .as_str()
            })
    }

    /// The watch line this filter's watcher sees for `event`, if any: objects that move into or
    /// out of the selection appear as ADDED or DELETED, as with the real server.
    fn view(&self, event: &Event) -> Option<Bytes> {
        let selected = |obj: &Option<Json>| {
            obj.as_ref()
                .is_some_and(|obj| self.matches(&event.key, obj))
        };
        let kind = match (selected(&event.before), selected(&event.after)) {
            (false, true) => "ADDED",
            (true, true) => "MODIFIED",
            (true, false) => "DELETED",
            (false, false) => return None,
        };
        Some(watch_line(
            kind,
            event.after.as_ref().or(event.before.as_ref())?,
        ))
    }
}

/// An equality-based selector (`a=b,c==d,e!=f,g,!h`), for labels or dotted field paths.
#[derive(Clone, Default)]
struct Selector(Vec<Requirement>);

#[derive(Clone)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    NotExists(String),
}

impl Selector {
    fn parse(expression: Option<&String>) -> Result<Self, ApiError> {
        let Some(expression) = expression else {
            return Ok(Selector::default());
        };
        expression
            .split(',')
            .map(str::trim)
            .filter(|term| !term.is_empty())
            .map(|term| {
                if term.contains('(') {
                    return Err(ApiError::bad_request(format!(
                        "set-based selector {term:?} is not supported by the fake API"
                    )));
                }
                let owned =
                    |(key, value): (&str, &str)| (key.trim().to_owned(), value.trim().to_owned());
                Ok(if let Some(pair) = term.split_once("!=") {
                    let (key, value) = owned(pair);
                    Requirement::NotEquals(key, value)
                } else if let Some(pair) = term.split_once("==").or_else(|| term.split_once('=')) {
                    let (key, value) = owned(pair);
                    Requirement::Equals(key, value)
                } else if let Some(key) = term.strip_prefix('!') {
                    Requirement::NotExists(key.trim().into())
                } else {
                    Requirement::Exists(term.into())
                })
            })
            .collect::<Result<_, _>>()
            .map(Selector)
    }

    fn matches<'a>(&self, value_of: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.0.iter().all(|requirement| match requirement {
            Requirement::Equals(key, value) => value_of(key) == Some(value.as_str()),
            Requirement::NotEquals(key, value) => value_of(key) != Some(value.as_str()),
            Requirement::Exists(key) => value_of(key).is_some(),
            Requirement::NotExists(key) => value_of(key).is_none(),
        })
    }
}

/// A Kubernetes `Status` error response.
#[derive(Clone, Debug)]
struct ApiError {
    code: u16,
    reason: &'static str,
    message: String,
    details: Option<Json>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: String) -> Self {
        ApiError {
            code,
            reason,
            message,
            details: None,
        }
    }

    fn about(key: &ObjKey, code: u16, reason: &'static str, message: String) -> Self {
        let details =
            json!({ "name": key.name, "group": key.resource.group, "kind": key.resource.plural });
        ApiError {
            code,
            reason,
            message,
            details: Some(details),
        }
    }

    fn not_found(key: &ObjKey) -> Self {
        Self::about(key, 404, "NotFound", format!("{key} not found"))
    }

    fn already_exists(key: &ObjKey) -> Self {
        Self::about(key, 409, "AlreadyExists", format!("{key} already exists"))
    }

    fn conflict(key: &ObjKey, why: &str) -> Self {
        Self::about(
            key,
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {key}: {why}"),
        )
    }

    fn invalid(message: String) -> Self {
        Self::new(422, "Invalid", message)
    }

    fn bad_request(message: String) -> Self {
        Self::new(400, "BadRequest", message)
    }

    fn into_response(self) -> Response<ResponseBody> {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = self.details {
            status["details"] = details;
        }
        json_response(
            StatusCode::from_u16(self.code).expect("valid status code"),
            &status,
        )
    }
}

fn check_resource_version(key: &ObjKey, current: &Json, new: &Json) -> Result<(), ApiError> {
    match new["metadata"]["resourceVersion"].as_str() {
        Some(sent)
            if !sent.is_empty()
                && Some(sent) != current["metadata"]["resourceVersion"].as_str() =>
        {
            Err(ApiError::conflict(
                key,
                "the object has been modified; please apply your changes to the latest version and try again",
            ))
        }
        _ => Ok(()),
    }
}

fn apply_json_patch(doc: &mut Json, body: &[u8]) -> Result<(), ApiError> {
    let patch: json_patch::Patch =
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    for operation in &patch.0 {
        // As on the real server, testing for null passes when the path is absent; kube's
        // finalizer helper relies on this to add the first finalizer.
        if let json_patch::PatchOperation::Test(test) = operation
            && test.value.is_null()
            && doc.pointer(test.path.as_str()).is_none()
        {
            continue;
        }
        json_patch::patch(doc, std::slice::from_ref(operation))
            .map_err(|e| ApiError::invalid(e.to_string()))?;
    }
    Ok(())
}

/// Merges an applied object into a stored one: maps recursively, keyed lists by key, anything
/// else replaced, `null` removing the field.
fn apply_merge(target: &mut Json, applied: &Json) {
    match (target, applied) {
        (Json::Object(target), Json::Object(applied)) => {
            for (field, value) in applied {
                if value.is_null() {
                    target.remove(field);
                } else {
                    apply_merge(target.entry(field.as_str()).or_insert(Json::Null), value);
                }
            }
        }
        (Json::Array(target), Json::Array(applied)) => match list_merge_key(target, applied) {
            Some(key) => {
                for item in applied {
                    match target
                        .iter_mut()
                        .find(|existing| existing[key] == item[key])
                    {
                        Some(existing) => apply_merge(existing, item),
                        None => target.push(item.clone()),
                    }
                }
            }
            None => *target = applied.clone(),
        },
        (target, applied) => *target = applied.clone(),
    }
}

/// `name` (containers, env, ports, volumes) or `type` (conditions) when every item has it.
fn list_merge_key(a: &[Json], b: &[Json]) -> Option<&'static str> {
    ["name", "type"]
        .into_iter()
        .find(|key| a.iter().chain(b).all(|item| item[key].is_string()))
}

fn managed_fields_entry(manager: &str, api_version: &str, scope: Scope, owned: &Json) -> Json {
    // fieldsV1 form (`{"f:spec": {"f:replicas": {}}}`), descending into maps only.
    fn field_set(value: &Json) -> Json {
        match value {
            Json::Object(map) => Json::Object(
                map.iter()
                    .map(|(k, v)| (format!("f:{k}"), field_set(v)))
                    .collect(),
            ),
            _ => json!({}),
        }
    }
    let mut entry = json!({
        "manager": manager,
        "operation": "Apply",
        "apiVersion": api_version,
        "fieldsType": "FieldsV1",
        "fieldsV1": field_set(owned),
    });
    if scope == Scope::Status {
        entry["subresource"] = "status".into();
    }
    entry
}

/// Replaces the manager's entry in place (keeping the list order, so a repeated identical
/// apply stays a no-op) or appends it.
fn set_managed_fields_entry(obj: &mut Json, entry: Json) {
    let fields = metadata_mut(obj)
        .entry("managedFields")
        .or_insert_with(|| json!([]));
    if !fields.is_array() {
        *fields = json!([]);
    }
    let fields = fields.as_array_mut().expect("made an array above");
    let same_owner = |existing: &Json| {
        ["manager", "operation", "subresource"]
            .iter()
            .all(|field| existing.get(field) == entry.get(field))
    };
    match fields.iter_mut().find(|existing| same_owner(existing)) {
        Some(existing) => *existing = entry,
        None => fields.push(entry),
    }
}

fn differs_outside_metadata_and_status(a: &Json, b: &Json) -> bool {
    fn fields(obj: &Json) -> Vec<(&String, &Json)> {
        obj.as_object()
            .map(|map| {
                map.iter()
                    .filter(|(k, _)| !matches!(k.as_str(), "metadata" | "status"))
                    .collect()
            })
            .unwrap_or_default()
    }
    fields(a) != fields(b)
}

fn set_or_remove(obj: &mut Json, field: &str, value: Option<&Json>) {
    let map = obj.as_object_mut().expect("objects are JSON objects");
    match value {
        Some(value) => map.insert(field.into(), value.clone()),
        None => map.remove(field),
    };
}

fn metadata_mut(obj: &mut Json) -> &mut Map<String, Json> {
    let meta = obj
        .as_object_mut()
        .expect("objects are JSON objects")
        .entry("metadata")
        .or_insert_with(|| json!({}));
    if !meta.is_object() {
        *meta = json!({});
    }
    meta.as_object_mut().expect("made an object above")
}

fn parse_json(body: &[u8]) -> Result<Json, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

fn parse_object(body: &[u8]) -> Result<Json, ApiError> {
    let value = parse_json(body)?;
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "the body must be a JSON object".into(),
        ));
    }
    Ok(value)
}

fn from_json<K: DeserializeOwned>(obj: &Json) -> K {
    serde_json::from_value(obj.clone()).expect("stored object deserializes as the requested kind")
}

fn watch_line(kind: &str, obj: &Json) -> Bytes {
    let mut line =
        serde_json::to_vec(&json!({ "type": kind, "object": obj })).expect("JSON serializes");
    line.push(b'\n');
    line.into()
}

fn json_response(status: StatusCode, body: &Json) -> Response<ResponseBody> {
    let bytes = Bytes::from(serde_json::to_vec(body).expect("JSON serializes"));
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(bytes).boxed_unsync())
        .expect("valid response")
}

fn now() -> Json {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
        .into()
}

/// A Secret's write-only `stringData` is folded into base64 `data`, as the real server does.
fn fold_string_data(obj: &mut Json) {
    if obj["kind"] != "Secret" {
        return;
    }
    let Some(Json::Object(strings)) = obj.as_object_mut().and_then(|o| o.remove("stringData")) else {
        return;
    };
    if !obj["data"].is_object() {
        obj["data"] = serde_json::json!({});
    }
    for (key, value) in strings {
        let bytes = k8s_openapi::ByteString(value.as_str().unwrap_or_default().as_bytes().to_vec());
        obj["data"][key] = serde_json::to_value(bytes).expect("ByteString serialises");
    }
}
