//! `cdp`: the operator and every data-plane role in one binary. CLI only: parse, dispatch.

use std::path::PathBuf;

use std::io::Write;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

// The data plane allocates many small, short-lived values per record (normalised strings,
// comparison evidence, JSON); mimalloc serves them with less contention and overhead than
// the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "cdp", version, about = "Customer-data platform and its Kubernetes operator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions of every kind as YAML, or write one file per kind.
    Crd {
        /// Write `<plural>.cdp.dev.yaml` files into this directory instead of printing.
        #[arg(long)]
        output_dir: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "plain")]
        flavour: cdp_operator::operator::CrdFlavour,
    },
    /// Print the objects the operator would apply for the resources in a directory (no cluster needed).
    Render {
        /// Directory of YAML files (CustomerDataPlatform, Source, MatchingPolicy, Feed, ScalingPolicy, Secret).
        #[arg(short = 'f', long = "filename")]
        dir: PathBuf,
        #[command(flatten)]
        images: cdp_operator::operator::ImageArgs,
    },
    /// Run the operator: reconcile platforms in the cluster of the current kubeconfig or service account.
    Operator(cdp_operator::operator::OperatorArgs),
    /// Intake, matcher and API in one process on an embedded SQLite file, from a directory of YAML.
    Local(cdp_operator::local::LocalArgs),
    /// HTTP intake: validate, quarantine, queue.
    Ingest(cdp_operator::ingest::IngestArgs),
    /// Matcher workers: resolve queued records into golden profiles.
    Matcher(cdp_operator::matcher::MatcherArgs),
    /// The profile API.
    Api(cdp_operator::api::ApiArgs),
    /// Outbound feeds: deliver selected events to webhooks and Kafka topics.
    Feeds(cdp_operator::feeds::FeedsArgs),
    /// A webhook receiver that checks feed signatures and prints each delivery.
    Receive(cdp_operator::feeds::receive::ReceiveArgs),
    /// A reference address-standardisation enricher that checks signatures (for trying enrichers).
    EnricherDemo(cdp_operator::enrich::demo::DemoArgs),
    /// Import a CSV or NDJSON file for one source.
    Import(cdp_operator::ingest::import::ImportArgs),
    /// Write every golden profile (and optionally its records and consents) to NDJSON or Parquet.
    Export(cdp_operator::export::ExportArgs),
    /// The kubectl plugin (`kubectl cdp`): status, prescale, pause, explain, erase.
    Kubectl(cdp_operator::kubectl::KubectlArgs),
    /// Estimate m, u and λ by EM from the store's records (or a file) and print a MatchingPolicy.
    Train(cdp_operator::matcher::train::TrainArgs),
    /// Benchmarks: identity accuracy, matcher throughput, intake-to-API latency.
    Bench(cdp_operator::bench::BenchArgs),
    /// Compare this scaler with HPA and KEDA emulations and a hindsight oracle on load traces.
    Simulate {
        /// A trace file (see benches/traces/README.md for the format).
        #[arg(long, required_unless_present = "all", conflicts_with = "all")]
        trace: Option<PathBuf>,
        /// Run every shipped trace.
        #[arg(long)]
        all: bool,
    },
}

fn main() -> Result<()> {
    // kube's client asks rustls for the process-wide crypto provider, and panics at its first
    // HTTPS connection when the dependency tree enables more than one. Installing the one
    // provider of the binary first makes that choice explicit, whatever a dependency enables.
    rustls::crypto::aws_lc_rs::default_provider()
        .install_default()
        .map_err(|_| anyhow::anyhow!("a TLS crypto provider was installed before main"))?;
    // Installed as `kubectl-cdp`, the binary is the kubectl plugin.
    let invoked_as = std::env::args_os().next().map(PathBuf::from);
    if invoked_as.as_deref().and_then(|p| p.file_stem()).is_some_and(|name| name == "kubectl-cdp") {
        let plugin = cdp_operator::kubectl::PluginCli::parse();
        return plugin_command(plugin.args);
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Crd { output_dir: None, .. } => {
            print_out(&cdp_operator::operator::crd_yaml()?)
        }
        Command::Crd { output_dir: Some(dir), flavour } => {
            std::fs::create_dir_all(&dir)?;
            for (file, yaml) in cdp_operator::operator::crd_files(flavour)? {
                std::fs::write(dir.join(&file), yaml).with_context(|| format!("writing {file}"))?;
            }
            Ok(())
        }
        Command::Render { dir, images } => {
            let out = cdp_operator::operator::render_dir(&dir, &images.images()).with_context(|| format!("rendering {}", dir.display()))?;
            for warning in &out.warnings {
                eprintln!("warning: {warning}");
            }
            print_out(&out.yaml)
        }
        Command::Simulate { trace, .. } => {
            let params = cdp_operator::scaling::simulate::SimParams::default();
            let table = match trace {
                Some(path) => {
                    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
                    cdp_operator::scaling::simulate::simulate_text(&text, &params)
                        .with_context(|| format!("trace {}", path.display()))?
                }
                None => cdp_operator::scaling::simulate::simulate_shipped(&params),
            };
            print_out(&table)
        }
        Command::Operator(args) => serve(cdp_operator::operator::run(args)),
        Command::Local(args) => serve(async { Ok(cdp_operator::local::run(args).await?) }),
        Command::Ingest(args) => serve(async { Ok(cdp_operator::ingest::run(args).await?) }),
        Command::Matcher(args) => serve(async { Ok(cdp_operator::matcher::run(args).await?) }),
        Command::Api(args) => serve(async { Ok(cdp_operator::api::run(args).await?) }),
        Command::Feeds(args) => serve(async { Ok(cdp_operator::feeds::run(args).await?) }),
        Command::Receive(args) => serve(async { Ok(cdp_operator::feeds::receive::run(args).await?) }),
        Command::EnricherDemo(args) => serve(async { Ok(cdp_operator::enrich::demo::run(args).await?) }),
        Command::Import(args) => serve(async { Ok(cdp_operator::ingest::import::run(args).await.map(|_| ())?) }),
        Command::Export(args) => serve(async {
            match cdp_operator::export::run(args).await {
                Ok(summary) => Ok(eprintln!("exported {} profiles and {} records", summary.profiles, summary.records)),
                // `cdp export | head`: a reader that stops early is a normal end
                Err(cdp_operator::export::ExportError::Write { source, .. }) if source.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
                Err(e) => Err(e.into()),
            }
        }),
        Command::Kubectl(args) => plugin_command(args),
        Command::Train(args) => serve(async { Ok(cdp_operator::matcher::train::run(args).await?) }),
        Command::Bench(args) => serve(async { Ok(cdp_operator::bench::run(args).await?) }),
    }
}

/// A plugin command: its output on stdout, no log lines (it is a CLI, not a service).
fn plugin_command(args: cdp_operator::kubectl::KubectlArgs) -> Result<()> {
    print_out(&tokio::runtime::Runtime::new()?.block_on(cdp_operator::kubectl::run(args))?)
}

/// Run a long-lived role with logging on a multi-threaded runtime.
fn serve(role: impl std::future::Future<Output = Result<()>>) -> Result<()> {
    cdp_operator::telemetry::init();
    tokio::runtime::Runtime::new()?.block_on(role)
}

/// Write to stdout; a closed pipe (`cdp render | head`) is a normal end, not an error.
fn print_out(text: &str) -> Result<()> {
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}
