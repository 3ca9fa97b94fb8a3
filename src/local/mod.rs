//! `cdp local -f DIR`: intake, matcher workers and the API in one process, on an embedded
//! SQLite file, from the same YAML (and the same compile step) the operator uses.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kube::ResourceExt;
use serde_json::Value;

use crate::runtime::auth::{Scope, TokenLine, Tokens, parse_lines};
use crate::runtime::load;
use crate::runtime::ops::{self, Metrics, Secrets, StartError};
use crate::ingest::IngestState;
use crate::ingest::import::{Format, import_file, progress_bar};
use crate::matcher::{Resolver, WorkerOptions, spawn_queue_gauge, worker_spawner};
use crate::pipeline::{self, NamedSource, PipelineConfig};
use crate::scaling::Workload;
use crate::store::Store;

pub mod pool;

/// Where a platform's config comes from: a directory of manifests, or a compiled config.
#[derive(clap::Args, Clone, Debug)]
pub struct PlatformArgs {
    /// Directory of YAML manifests (CustomerDataPlatform, Source, MatchingPolicy, Feed, Secret, ...).
    #[arg(short = 'f', long = "filename", required_unless_present = "config")]
    pub dir: Option<PathBuf>,
    /// The platform to run when the directory declares several.
    #[arg(long)]
    pub platform: Option<String>,
    /// A compiled PipelineConfig (JSON) instead of a directory; secrets then come from $CDP_SECRETS_DIR.
    #[arg(long, conflicts_with = "dir")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    #[error(transparent)]
    Load(#[from] pipeline::LoadError),
    #[error("no CustomerDataPlatform named {0:?} in the directory")]
    NoSuchPlatform(String),
    #[error("the directory declares several platforms ({0}); choose one with --platform")]
    SeveralPlatforms(String),
    #[error("platform {platform}: {errors}")]
    Invalid { platform: String, errors: String },
}

impl PlatformError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Load(_) => "Load",
            Self::NoSuchPlatform(_) | Self::SeveralPlatforms(_) => "Platform",
            Self::Invalid { .. } => "InvalidSpec",
        }
    }
}

/// A platform ready to run: its config, where its secrets are, and what compile left out.
pub struct LoadedPlatform {
    pub config: PipelineConfig,
    pub secrets: Secrets,
    /// Members compile rejected, one line each (they are not part of the config).
    pub warnings: Vec<String>,
}

impl PlatformArgs {
    pub fn load(&self) -> Result<LoadedPlatform, StartError> {
        match (&self.dir, &self.config) {
            (_, Some(path)) => {
                Ok(LoadedPlatform { config: ops::load_config(path)?, secrets: Secrets::from_env(), warnings: Vec::new() })
            }
            (Some(dir), None) => Ok(load_platform(dir, self.platform.as_deref())?),
            (None, None) => Err(PlatformError::NoSuchPlatform(String::new()).into()),
        }
    }
}

/// Load a directory and compile one platform with the identity core's default model.
pub fn load_platform(dir: &Path, name: Option<&str>) -> Result<LoadedPlatform, PlatformError> {
    let manifests = pipeline::load_dir(dir)?;
    let platform = match name {
        Some(name) => manifests
            .platforms
            .iter()
            .find(|p| p.name_any() == name)
            .ok_or_else(|| PlatformError::NoSuchPlatform(name.into()))?,
        None if manifests.platforms.len() == 1 => &manifests.platforms[0],
        None => {
            let names: Vec<String> = manifests.platforms.iter().map(|p| p.name_any()).collect();
            return Err(PlatformError::SeveralPlatforms(names.join(", ")));
        }
    };
    let compiled = pipeline::compile(platform, &manifests.members_of(platform), crate::identity::default_model());
    let namespace = compiled.config.namespace.clone();
    if let Some(tokens) = &compiled.config.api_tokens
        && manifests.secret_value(&namespace, tokens).is_none()
    {
        return Err(PlatformError::Invalid {
            platform: compiled.config.platform.clone(),
            errors: format!("Secret {}/{} (spec.api.tokensSecretRef) is not in the directory", tokens.name, tokens.key),
        });
    }
    let warnings = compiled
        .verdicts
        .iter()
        .filter(|v| !v.accepted())
        .map(|v| {
            let errors: Vec<String> = v.errors.iter().map(ToString::to_string).collect();
            format!("{} {} left out: {}", v.kind, v.name, errors.join("; "))
        })
        .collect();
    let ns_secrets = manifests.secrets.iter().filter(|s| s.namespace().as_deref() == Some(namespace.as_str()));
    let values = pipeline::secret_keys(ns_secrets)
        .into_iter()
        .filter_map(|key| manifests.secret_value(&namespace, &key).map(|v| (key, v)))
        .collect();
    Ok(LoadedPlatform { config: compiled.config, secrets: Secrets::Values(values), warnings })
}

/// The API token of a platform that declares none: derived from the data file's own secret,
/// so the same file keeps the same token across restarts (scripts and bookmarks keep working)
/// and another file gets another.
async fn local_token(store: &Store) -> Result<TokenLine, StartError> {
    let secret = store.privacy_secret().await?;
    let derived = crate::privacy::hmac_sha256(secret.as_bytes(), b"cdp local API token");
    Ok(TokenLine {
        name: "local".into(),
        scopes: vec![Scope::Read, Scope::Write, Scope::Erase],
        token: format!("local-{}", hex::encode(&derived[..16])),
    })
}

/// The store a command works on: `cdp local`'s SQLite file by default, or any store by URL.
/// `cdp import` and `cdp train` name it this way; `cdp local` takes the same `--data`.
#[derive(clap::Args, Clone, Debug)]
pub struct StoreArgs {
    /// SQLite file of `cdp local` (created when missing).
    #[arg(long, default_value = DEFAULT_DATA)]
    pub data: PathBuf,
    /// A store URL instead of the file (`postgres://...` or `sqlite:PATH`); the password may
    /// come from CDP_STORE_PASSWORD, as in a cluster.
    #[arg(long, env = "CDP_STORE_URL")]
    pub store: Option<String>,
}

/// Where `cdp local` keeps its store unless told otherwise.
pub const DEFAULT_DATA: &str = "cdp-local.db";

impl StoreArgs {
    pub fn url(&self) -> Result<String, StartError> {
        match &self.store {
            Some(url) => ops::with_password(url, std::env::var("CDP_STORE_PASSWORD").ok().filter(|p| !p.is_empty()).as_deref()),
            None => Ok(sqlite_url(&self.data)),
        }
    }
}

/// The store URL of a SQLite file.
pub fn sqlite_url(path: &Path) -> String {
    format!("sqlite:{}", path.display())
}

#[derive(clap::Args, Clone, Debug)]
pub struct LocalArgs {
    #[command(flatten)]
    pub platform: PlatformArgs,
    /// SQLite file holding the store (created when missing).
    #[arg(long, default_value = DEFAULT_DATA)]
    pub data: PathBuf,
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen_ingest: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub listen_api: SocketAddr,
    /// Matcher workers at start; the pool then grows and shrinks with the load, within the
    /// matcher bounds of the platform's ScalingPolicy.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Send every webhook feed to this base URL instead (path kept), e.g. a `cdp receive`.
    #[arg(long)]
    pub feeds_to: Option<url::Url>,
    /// Import a file at start, as `SOURCE=FILE` (CSV or NDJSON); repeatable.
    #[arg(long = "import", value_parser = parse_import)]
    pub imports: Vec<(String, PathBuf)>,
}

fn parse_import(s: &str) -> Result<(String, PathBuf), String> {
    let (source, file) = s.split_once('=').ok_or("expected SOURCE=FILE")?;
    Ok((source.to_string(), PathBuf::from(file)))
}

/// An example payload a Source accepts: its mapping filled with plausible values.
pub fn sample_payload(source: &NamedSource) -> Value {
    let mut payload = Value::Object(Default::default());
    let mut put = |path: &str, value: Value| {
        let mut at = &mut payload;
        let mut parts = path.split('.').peekable();
        while let Some(part) = parts.next() {
            let obj = at.as_object_mut().expect("object");
            if parts.peek().is_none() {
                obj.insert(part.into(), value.clone());
                return;
            }
            at = obj.entry(part).or_insert_with(|| Value::Object(Default::default()));
        }
    };
    put(&source.spec.event_id_field, "evt-0001".into());
    if let Some(field) = &source.spec.observed_at_field {
        put(field, "2025-03-01T10:15:00Z".into());
    }
    for m in &source.spec.mapping {
        let value = match m.to.as_str() {
            "givenName" => "Ada",
            "familyName" => "Lovelace",
            "fullName" => "Ada Lovelace",
            "email" => "ada.lovelace@example.com",
            "phone" => "+33 6 12 34 56 78",
            "birthDate" => "1990-12-10",
            "street" => "12 rue de la Paix",
            "postcode" => "75002",
            "city" => "Paris",
            "country" => "FR",
            "gender" => "f",
            a if a.starts_with("consents.") => "true",
            a if a.starts_with("identifiers.") => "C-000123",
            _ => "example",
        };
        put(&m.from, value.into());
    }
    payload
}

/// `cdp local`.
pub async fn run(args: LocalArgs) -> Result<(), StartError> {
    run_with(args, |options| options).await
}

/// `cdp local`, with the matcher pool's options (from the platform) adjusted by `tune`.
pub async fn run_with(args: LocalArgs, tune: impl FnOnce(pool::PoolOptions) -> pool::PoolOptions) -> Result<(), StartError> {
    let LoadedPlatform { config, secrets, warnings } = args.platform.load()?;
    for w in &warnings {
        tracing::warn!("{w}");
    }
    let store = Store::open(&sqlite_url(&args.data)).await?;
    let metrics = Metrics::new();
    let resolver = Arc::new(Resolver::new(&config)?);
    let ingest = IngestState::new(&config, &secrets, store.clone(), metrics.clone())?;
    let token_lines = match &config.api_tokens {
        Some(secret) => parse_lines(&secrets.get(secret)?).map_err(StartError::Tokens)?,
        None => vec![local_token(&store).await?],
    };
    let tokens = Tokens::from_lines(&token_lines);
    let api = crate::api::ApiState::new(&config, store.clone(), metrics.clone(), resolver.clone(), tokens);
    let (trigger, shutdown) = ops::shutdown_channel();
    ops::on_signal(trigger, std::time::Duration::ZERO);
    let ingest_listener = ops::bind(args.listen_ingest).await?;
    let api_listener = ops::bind(args.listen_api).await?;
    crate::privacy::retention::spawn(&store, &config, resolver.clone(), shutdown.clone());
    let matchers = pool::ScaledPool {
        workload: crate::scaling::Workload::Matcher,
        store: store.clone(),
        meter: metrics.meters.matcher.clone(),
        spawn: Box::new(worker_spawner(&store, resolver, metrics.clone(), WorkerOptions::default())),
        options: tune(pool::PoolOptions::for_platform(&config, crate::scaling::Workload::Matcher)),
    }
    .start(args.workers as u32, shutdown.clone());
    spawn_queue_gauge(store.clone(), metrics.clone(), shutdown.clone());
    let feeds = crate::feeds::FeedsContext::new(store.with_own_pool().await?, &metrics, crate::feeds::WorkerOptions::default());
    let (mut feed_tasks, _load) = feeds.spawn(feeds.workers(&config, &secrets, args.feeds_to.as_ref())?, &shutdown);
    let enrich = crate::enrich::EnrichContext::new(feeds.store.clone(), &metrics, crate::enrich::WorkerOptions::default());
    feed_tasks.extend(enrich.spawn(enrich.workers(&config, &secrets)?, &shutdown));
    let consumers = crate::ingest::kafka::spawn_all(&config, &secrets, &ingest.admitter, &metrics, &shutdown)?;

    println!("{}", banner(&config, &secrets, &args, &token_lines));

    let servers = [
        // each listener reports the load of a workload, as its pods do in a cluster: intake's,
        // and the matcher pool's next to the API
        tokio::spawn(ops::serve_with_ops(
            ingest_listener,
            crate::ingest::router(ingest).merge(load::router(store.clone(), &metrics, Workload::Ingest)),
            store.clone(),
            metrics.clone(),
            shutdown.clone(),
        )),
        tokio::spawn(ops::serve_with_ops(
            api_listener,
            crate::api::router(api).merge(load::router(store.clone(), &metrics, Workload::Matcher)),
            store.clone(),
            metrics,
            shutdown.clone(),
        )),
    ];
    for (source, file) in &args.imports {
        let label = format!("{source} <- {}", file.display());
        let summary = import_file(&store, &config, source, file, Format::of(file), progress_bar(label, "records")).await?;
        println!("import {source} {}:\n{summary}", file.display());
    }
    for task in servers.into_iter().chain([matchers]).chain(feed_tasks).chain(consumers) {
        let _ = task.await;
    }
    store.close().await;
    println!("stopped; the data stays in {}", args.data.display());
    Ok(())
}

fn banner(config: &PipelineConfig, secrets: &Secrets, args: &LocalArgs, tokens: &[TokenLine]) -> String {
    let mut out = format!(
        "cdp local: platform {}/{} with {} source(s), store {}\n",
        config.namespace,
        config.platform,
        config.sources.len(),
        args.data.display()
    );
    let ingest = format!("http://{}", args.listen_ingest);
    let api = format!("http://{}", args.listen_api);
    out.push_str(&format!("\nIntake: {ingest}/v1/sources/<source>/records\n"));
    let mut keys = BTreeMap::new();
    for s in &config.sources {
        if let Some(http) = &s.spec.delivery.http
            && let Ok(key) = secrets.get(&http.auth_secret_ref)
        {
            keys.insert(s.name.clone(), key);
        }
    }
    // the example goes to a source that maps an email, so the lookup below finds it
    let maps_email = |s: &&NamedSource| s.spec.mapping.iter().any(|m| m.to == "email");
    let example = config.sources.iter().filter(|s| keys.contains_key(&s.name)).max_by_key(|s| (maps_email(s), s.spec.mapping.len()));
    if let Some(source) = example {
        out.push_str(&format!(
            "  curl -X POST {ingest}/v1/sources/{}/records \\\n    -H 'Authorization: Bearer {}' -H 'Content-Type: application/json' \\\n    -d '{}'\n",
            source.name,
            keys[&source.name],
            sample_payload(source)
        ));
    }
    for (name, key) in &keys {
        out.push_str(&format!("  source {name}: key {key}\n"));
    }
    if !config.feeds.is_empty() {
        out.push_str("\nFeeds (signed webhooks; `cdp receive --secret ...` checks and prints them):\n");
    }
    for f in &config.feeds {
        let to = match (&f.spec.destination.webhook, &f.spec.destination.kafka, &args.feeds_to) {
            (Some(w), _, Some(base)) => crate::feeds::deliver::redirected(&w.url, base),
            (Some(w), _, None) => w.url.clone(),
            (None, Some(k), _) => format!("kafka topic {}", k.topic),
            (None, None, _) => String::new(),
        };
        out.push_str(&format!("  feed {} -> {to}\n", f.name));
    }
    out.push_str(&format!("\nProfile API: {api} (OpenAPI document at {api}/openapi.json)\n"));
    for t in tokens {
        let scopes: Vec<&str> = t.scopes.iter().map(|s| s.name()).collect();
        out.push_str(&format!("  token {} ({}): {}\n", t.name, scopes.join(","), t.token));
    }
    if let Some(t) = tokens.first() {
        out.push_str(&format!(
            "  curl -H 'Authorization: Bearer {}' '{api}/v1/profiles/lookup?email=ada.lovelace@example.com'\n",
            t.token
        ));
    }
    out.push_str(&format!(
        "\nLoad, as the operator's scaler reads it: {ingest}/v1/load (intake), {api}/v1/load (the matcher pool); \
         /metrics and /readyz on both.\n"
    ));
    out.push_str("\nCtrl-C stops everything; the data stays in the SQLite file.");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_data_file_keeps_its_generated_token() {
        let dir = tempfile::tempdir().unwrap();
        let token = |name: &str| {
            let url = sqlite_url(&dir.path().join(name));
            async move { local_token(&Store::open(&url).await.unwrap()).await.unwrap() }
        };
        let first = token("a.db").await;
        let again = token("a.db").await;
        let other = token("b.db").await;
        assert_eq!(first.token, again.token, "the same file, the same token after a restart");
        assert_ne!(first.token, other.token, "another file, another token");
        assert!(first.token.len() > 30);
    }
}
