//! `kubectl cdp`: the operator's kubectl plugin, the same binary installed as `kubectl-cdp`
//! (or run as `cdp kubectl ...`). Status on one screen, prescaling before an event, pausing,
//! and the profile API's explain and erase. The logic is pure (the patch, the screens) in
//! [`prescale`], [`status`] and [`api`]; this module makes the calls.

pub mod api;
pub mod prescale;
pub mod status;

use clap::{Args, Parser, Subcommand};
use jiff::{SignedDuration, Timestamp};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};

use crate::crd::scaling::PeakFloors;
use crate::crd::{CustomerDataPlatform, ScalingPolicy};
use crate::operator::{PAUSED_ANNOTATION, SCALING_PAUSED_ANNOTATION, platform_members};
use crate::runtime::auth::Scope;

/// The field manager of what the plugin applies (prescale windows), so that the operator, a
/// GitOps tool and the plugin each own their own fields.
pub const FIELD_MANAGER: &str = "kubectl-cdp";

/// `kubectl-cdp`, as kubectl runs it.
#[derive(Parser, Debug)]
#[command(name = "kubectl-cdp", bin_name = "kubectl cdp", version, about = "Operate cdp platforms: status, prescale, pause, explain, erase")]
pub struct PluginCli {
    #[command(flatten)]
    pub args: KubectlArgs,
}

#[derive(Args, Debug)]
pub struct KubectlArgs {
    /// Namespace of the platform (default: the kubeconfig context's).
    #[arg(short, long, global = true)]
    pub namespace: Option<String>,
    #[command(subcommand)]
    pub command: PluginCommand,
}

#[derive(Subcommand, Debug)]
pub enum PluginCommand {
    /// Conditions, members, workloads (desired/ready), the scaler's last decisions, feed lag.
    Status {
        /// The platform; without it, one line per platform of the namespace.
        platform: Option<String>,
    },
    /// Raise replica floors for a coming event: a one-off peak window in the platform's ScalingPolicy.
    Prescale(PrescaleArgs),
    /// Stop the operator changing the platform (or, with --scaling-only, its replica counts).
    Pause(PauseArgs),
    /// Let the operator change the platform again.
    Resume(PauseArgs),
    /// Why each record of a profile is in it (the profile API's explanation).
    Explain {
        platform: String,
        /// Profile id, e.g. p42.
        profile: String,
        #[command(flatten)]
        api: ApiAccess,
        /// Print the API's JSON instead of the summary.
        #[arg(long)]
        json: bool,
    },
    /// Erase a person (GDPR): every record, profile and feed message, and refuse their identifiers.
    Erase(EraseArgs),
    /// Print a shell completion script.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Args, Debug)]
pub struct PrescaleArgs {
    pub platform: String,
    /// How long the window lasts, e.g. 2h, 90m.
    #[arg(long = "for", value_parser = prescale::parse_duration)]
    pub length: SignedDuration,
    /// When the window opens (RFC 3339); default now.
    #[arg(long, value_parser = prescale::parse_time)]
    pub at: Option<Timestamp>,
    /// Raise the floors this long before the window opens (default 5m; none when it opens now).
    #[arg(long, value_parser = prescale::parse_duration)]
    pub lead: Option<SignedDuration>,
    /// Intake replicas to keep at least during the window.
    #[arg(long)]
    pub ingest: Option<u16>,
    /// Matcher replicas to keep at least during the window.
    #[arg(long)]
    pub matcher: Option<u16>,
    /// Feed replicas to keep at least during the window.
    #[arg(long)]
    pub feeds: Option<u16>,
    /// The ScalingPolicy to write into, when the platform has several.
    #[arg(long)]
    pub policy: Option<String>,
    /// Print what would happen, change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Args, Debug)]
pub struct PauseArgs {
    pub platform: String,
    /// Only replica counts (cdp.dev/scaling-paused); the operator still applies changes.
    #[arg(long)]
    pub scaling_only: bool,
}

#[derive(Args, Debug)]
pub struct ApiAccess {
    /// The profile API's address (default: its Service's); e.g. http://127.0.0.1:8080 after
    /// `kubectl port-forward svc/PLATFORM-api 8080:80`.
    #[arg(long)]
    pub api: Option<String>,
    /// Name of the token line in the platform's tokens Secret (default: the first with the scope needed).
    #[arg(long)]
    pub token_name: Option<String>,
}

#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("subject").required(true).args(["profile", "email", "phone", "identifier"]))]
pub struct EraseArgs {
    pub platform: String,
    /// The person's profile id (an alias erases its survivor).
    #[arg(long)]
    pub profile: Option<String>,
    #[arg(long)]
    pub email: Option<String>,
    #[arg(long)]
    pub phone: Option<String>,
    /// `name:value` of a source identifier, e.g. loyaltyId:C-000123.
    #[arg(long)]
    pub identifier: Option<String>,
    /// Why, as a short code kept in the audit (e.g. subject-request, art17:ticket-123).
    #[arg(long)]
    pub reason: String,
    /// Erasure cannot be undone: confirm it.
    #[arg(long)]
    pub yes: bool,
    #[command(flatten)]
    pub api: ApiAccess,
}

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("{0}")]
    Invalid(String),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("profile API: {0}")]
    Api(String),
}

/// The body of `POST /v1/erasures` for the subject given on the command line.
pub fn erasure_request(args: &EraseArgs) -> Result<Value, PluginError> {
    let mut body = match (&args.profile, &args.email, &args.phone, &args.identifier) {
        (Some(profile), ..) => json!({"profileId": profile}),
        (_, Some(email), ..) => json!({"attribute": "email", "value": email}),
        (_, _, Some(phone), _) => json!({"attribute": "phone", "value": phone}),
        (_, _, _, Some(identifier)) => match identifier.split_once(':') {
            Some((name, value)) => json!({"attribute": format!("identifiers.{name}"), "value": value}),
            None => return Err(PluginError::Invalid("--identifier must be name:value".into())),
        },
        (None, None, None, None) => return Err(PluginError::Invalid("name the person: --profile, --email, --phone or --identifier".into())),
    };
    body["reason"] = json!(args.reason);
    Ok(body)
}

/// The merge patch that sets (pause) or removes (resume) the pause annotation.
pub fn pause_patch(pause: bool, scaling_only: bool) -> Value {
    let annotation = if scaling_only { SCALING_PAUSED_ANNOTATION } else { PAUSED_ANNOTATION };
    json!({"metadata": {"annotations": {annotation: if pause { json!("true") } else { Value::Null }}}})
}

/// Run one plugin command with `client`; what it prints.
pub async fn execute(client: Client, args: KubectlArgs) -> Result<String, PluginError> {
    let namespace = args.namespace.clone().unwrap_or_else(|| client.default_namespace().to_string());
    let platforms: Api<CustomerDataPlatform> = Api::namespaced(client.clone(), &namespace);
    match args.command {
        PluginCommand::Status { platform: None } => Ok(status::render_list(&platforms.list(&ListParams::default()).await?.items)),
        PluginCommand::Status { platform: Some(name) } => {
            let platform = platforms.get(&name).await?;
            Ok(status::render(&platform, &platform_members(&client, &namespace, &name).await?, Timestamp::now()))
        }
        PluginCommand::Prescale(p) => {
            let platform = platforms.get(&p.platform).await?;
            let policies: Api<ScalingPolicy> = Api::namespaced(client.clone(), &namespace);
            let now = Timestamp::now();
            let start = p.at.unwrap_or(now);
            let request = prescale::Request {
                start,
                length: p.length,
                lead: p.lead.unwrap_or(if start <= now { SignedDuration::ZERO } else { SignedDuration::from_mins(5) }),
                floors: PeakFloors {
                    ingest: p.ingest.map(i32::from),
                    matcher: p.matcher.map(i32::from),
                    feeds: p.feeds.map(i32::from),
                },
                policy: p.policy,
            };
            let plan = prescale::plan(&platform, &policies.list(&ListParams::default()).await?.items, &request, now)?;
            if p.dry_run {
                return Ok(format!("(dry run) {}", plan.summary));
            }
            policies.patch(&plan.policy, &PatchParams::apply(FIELD_MANAGER), &Patch::Apply(&plan.patch)).await?;
            Ok(plan.summary)
        }
        PluginCommand::Pause(p) => pause(&platforms, &p, true).await,
        PluginCommand::Resume(p) => pause(&platforms, &p, false).await,
        PluginCommand::Explain { platform, profile, api, json } => {
            let platform = platforms.get(&platform).await?;
            let token = api::token(&client, &platform, Scope::Read, api.token_name.as_deref()).await?;
            let base = api::base_url(&client, &platform, api.api.as_deref()).await?;
            let url = format!("{base}/v1/profiles/{profile}/explanation");
            let explanation = api::call(http_client().get(url), &token).await?;
            Ok(if json { format!("{explanation:#}\n") } else { api::render_explanation(&explanation) })
        }
        PluginCommand::Erase(e) => {
            let body = erasure_request(&e)?;
            if !e.yes {
                return Err(PluginError::Invalid("an erasure cannot be undone: add --yes to confirm".into()));
            }
            let platform = platforms.get(&e.platform).await?;
            let token = api::token(&client, &platform, Scope::Erase, e.api.token_name.as_deref()).await?;
            let base = api::base_url(&client, &platform, e.api.api.as_deref()).await?;
            let report = api::call(http_client().post(format!("{base}/v1/erasures")).json(&body), &token).await?;
            Ok(format!("{report:#}\n"))
        }
        PluginCommand::Completion { shell } => Ok(completion(shell)),
    }
}

async fn pause(platforms: &Api<CustomerDataPlatform>, args: &PauseArgs, pause: bool) -> Result<String, PluginError> {
    platforms.patch(&args.platform, &PatchParams::default(), &Patch::Merge(pause_patch(pause, args.scaling_only))).await?;
    let what = if args.scaling_only { "scaling of" } else { "every change to" };
    Ok(format!("{} {what} platform {}\n", if pause { "paused" } else { "resumed" }, args.platform))
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder().timeout(std::time::Duration::from_secs(30)).build().expect("an HTTP client builds")
}

/// The completion script of `kubectl-cdp` for `shell`.
pub fn completion(shell: clap_complete::Shell) -> String {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut <PluginCli as clap::CommandFactory>::command(), "kubectl-cdp", &mut out);
    String::from_utf8(out).expect("completion scripts are text")
}

/// `kubectl-cdp ...` (or `cdp kubectl ...`): connect with the kubeconfig, run the command, and
/// return what it prints.
pub async fn run(args: KubectlArgs) -> Result<String, PluginError> {
    match args.command {
        // needs no cluster
        PluginCommand::Completion { shell } => Ok(completion(shell)),
        _ => execute(Client::try_default().await?, args).await,
    }
}
