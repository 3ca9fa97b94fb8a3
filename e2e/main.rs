//! The platform on a real Kubernetes cluster, end to end (see e2e/README.md). `e2e/run.sh`
//! builds the project's images and runs this against the cluster of `KUBECONFIG`; run alone:
//! `cargo test --test e2e` with the images already in the cluster (`E2E_IMAGE`,
//! `E2E_POSTGRES_IMAGE`).
//!
//! The steps run in order, each building on the one before; the first failure stops the run
//! and prints what the cluster shows (pods, statuses, events, the operator's log).

mod cluster;
mod day_two;
mod install;
mod kafka;
mod load;
mod platform;
mod scaling;
mod teardown;

use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;

use cluster::Env;

type Step = for<'a> fn(&'a Env) -> Pin<Box<dyn Future<Output = Result<()>> + 'a>>;

macro_rules! step {
    ($name:expr, $f:path) => {
        ($name, (|env| Box::pin($f(env))) as Step)
    };
}

const STEPS: [(&str, Step); 13] = [
    step!("install: CRDs and config/default server-side, two operator replicas", install::kustomize),
    step!("the samples' platform comes up through its pods' own probes", platform::up),
    step!("data path: intake → one golden profile → signed webhook → erasure", platform::data_path),
    step!("a burst scales the matcher up and back down; a matcher pod force-deleted mid-batch", scaling::burst),
    step!("a peak window prescales the matcher", scaling::peak_window),
    step!("a quiet minute: the operator writes nothing", day_two::no_churn),
    step!("a Source change rolls every workload while records arrive", day_two::source_change_rolls),
    step!("the PostgreSQL pod restarted while records arrive", day_two::postgres_restart),
    step!("the leading operator replica deleted", day_two::leader_failover),
    step!("a Kafka Source: a broker's partitions read by the ingest pods into profiles", kafka::intake),
    step!("deleting the platform", teardown::delete_platform),
    step!("the Helm chart in namespace-scoped mode", teardown::namespace_scoped_helm),
    step!("clean up", teardown::clean_up),
];

fn main() -> ExitCode {
    // As `cdp` does: the one TLS provider of the process, before any client exists.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    runtime.block_on(run())
}

async fn run() -> ExitCode {
    let started = Instant::now();
    let env = match Env::from_env().await {
        Ok(env) => env,
        Err(error) => {
            eprintln!("e2e: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    println!("e2e: images {} and {}", env.image, env.postgres_image);
    let keep = std::env::var_os("E2E_KEEP").is_some();
    let only = match chosen_steps() {
        Ok(only) => only,
        Err(error) => {
            eprintln!("e2e: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    for (number, (name, step)) in (1..).zip(STEPS) {
        if (keep && name == "clean up") || only.as_ref().is_some_and(|o| !o.contains(&number)) {
            continue;
        }
        println!("== {name}");
        let step_started = Instant::now();
        match step(&env).await {
            Ok(()) => println!("   ok ({:.1} s)", step_started.elapsed().as_secs_f64()),
            Err(error) => {
                println!("   FAILED after {:.1} s: {error:#}", step_started.elapsed().as_secs_f64());
                env.diagnostics().await;
                return ExitCode::FAILURE;
            }
        }
    }
    let summary = summary(&env, started.elapsed().as_secs_f64());
    println!("{summary}");
    let _ = std::fs::write(env.work.join("figures.md"), summary);
    ExitCode::SUCCESS
}

/// The steps `E2E_STEPS` chooses by number (`1,2,10,13`: install, the platform, one step to
/// work on, clean up), or all of them. The steps build on each other: a developer choosing
/// some chooses what they need.
fn chosen_steps() -> Result<Option<Vec<usize>>> {
    let Ok(list) = std::env::var("E2E_STEPS") else { return Ok(None) };
    let numbers = list.split(',').map(|n| n.trim().parse::<usize>().ok().filter(|n| (1..=STEPS.len()).contains(n)));
    let numbers: Option<Vec<usize>> = numbers.collect();
    numbers.map(Some).ok_or_else(|| anyhow::anyhow!("E2E_STEPS: comma-separated step numbers from 1 to {}, not {list:?}", STEPS.len()))
}

fn summary(env: &Env, seconds: f64) -> String {
    let mut out = format!("\n| figure | value |\n|---|---|\n");
    for (name, value) in env.figures() {
        out.push_str(&format!("| {name} | {value} |\n"));
    }
    out.push_str(&format!("| the suite, every step | {seconds:.0} s |\n"));
    out
}
