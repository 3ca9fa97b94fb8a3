//! What every step needs from the cluster: the API (kube), kubectl for what users type
//! (apply -k, port-forward, exec, logs), polling with a deadline, and the figures the suite
//! records.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::NamespaceResourceScope;
use kube::{Api, Client, Resource};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The namespace of the operator, as config/default and the chart install it.
pub const OPERATOR_NAMESPACE: &str = "cdp-system";
/// The namespace of the samples' platform.
pub const PLATFORM_NAMESPACE: &str = "cdp-e2e";
/// The samples' platform.
pub const PLATFORM: &str = "retail";

pub struct Env {
    pub client: Client,
    /// The repository (kustomize paths are relative to it).
    pub root: PathBuf,
    /// Generated kustomizations and the figures, under target/.
    pub work: PathBuf,
    /// The `cdp` image the operator and the data plane run.
    pub image: String,
    /// The PostgreSQL image of in-cluster stores.
    pub postgres_image: String,
    /// A Kafka-compatible broker's image, its entrypoint tansu's binary.
    pub broker_image: String,
    figures: Mutex<Vec<(String, String)>>,
}

impl Env {
    pub async fn from_env() -> Result<Env> {
        let client = Client::try_default().await.context("no cluster: set KUBECONFIG")?;
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let work = root.join("target/e2e/run");
        std::fs::create_dir_all(&work)?;
        let version = env!("CARGO_PKG_VERSION");
        Ok(Env {
            client,
            image: std::env::var("E2E_IMAGE").unwrap_or_else(|_| format!("ghcr.io/cdp-operator/cdp:{version}")),
            postgres_image: std::env::var("E2E_POSTGRES_IMAGE").unwrap_or_else(|_| "postgres:17-bookworm".to_string()),
            broker_image: std::env::var("E2E_BROKER_IMAGE").unwrap_or_else(|_| "localhost/cdp-e2e-broker:tansu".to_string()),
            root,
            work,
            figures: Mutex::default(),
        })
    }

    pub fn api<K>(&self, namespace: &str) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// Run kubectl (the cluster of KUBECONFIG); its stdout, or an error with its stderr.
    pub async fn kubectl(&self, args: &[&str]) -> Result<String> {
        self.kubectl_with_input(args, None).await.map(|(stdout, _)| stdout)
    }

    /// Run kubectl with `input` on its stdin; its stdout.
    pub async fn kubectl_stdin(&self, args: &[&str], input: &str) -> Result<String> {
        self.kubectl_with_input(args, Some(input)).await.map(|(stdout, _)| stdout)
    }

    /// Run kubectl with `input` on its stdin; its stdout and stderr.
    async fn kubectl_with_input(&self, args: &[&str], input: Option<&str>) -> Result<(String, String)> {
        use tokio::io::AsyncWriteExt;
        let mut child = Command::new("kubectl")
            .args(args)
            .current_dir(&self.root)
            .stdin(if input.is_some() { std::process::Stdio::piped() } else { std::process::Stdio::null() })
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("kubectl is not on PATH")?;
        if let Some(input) = input {
            let mut stdin = child.stdin.take().expect("piped");
            stdin.write_all(input.as_bytes()).await?;
        }
        let output = child.wait_with_output().await?;
        if !output.status.success() {
            bail!("kubectl {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
        }
        Ok((String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned()))
    }

    /// `kubectl apply --server-side` of a manifest text, or (`-k DIR`) of a kustomization.
    /// The API server's warnings (an unknown schema format, a pod that the namespace's Pod
    /// Security level would refuse) fail the step: users would see them too.
    pub async fn apply(&self, source: Apply<'_>) -> Result<()> {
        let (args, input): (Vec<&str>, _) = match source {
            Apply::Yaml(yaml) => (vec!["apply", "--server-side", "--force-conflicts", "-f", "-"], Some(yaml)),
            Apply::Kustomization(dir) => (vec!["apply", "--server-side", "--force-conflicts", "-k", dir], None),
        };
        let (_, stderr) = self.kubectl_with_input(&args, input).await?;
        if stderr.contains("Warning:") {
            bail!("kubectl {} warned: {}", args.join(" "), stderr.trim());
        }
        Ok(())
    }

    /// A kustomization under the work directory, named `name`, that builds on the
    /// repository's `base` with `extra` (YAML lines: images, patches, ...).
    pub fn kustomization(&self, name: &str, base: &str, extra: &str) -> Result<PathBuf> {
        let dir = self.work.join(name);
        std::fs::create_dir_all(&dir)?;
        let relative = relative_path(&dir, &self.root.join(base));
        let text = format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - {}\n{extra}",
            relative.display()
        );
        std::fs::write(dir.join("kustomization.yaml"), text)?;
        Ok(dir)
    }

    /// `images:` lines that point the repository's manifests at the images under test.
    pub fn images_override(&self) -> String {
        let (cdp_name, cdp_tag) = split_image(&self.image);
        let (pg_name, pg_tag) = split_image(&self.postgres_image);
        format!(
            "images:\n  - name: ghcr.io/cdp-operator/cdp\n    newName: {cdp_name}\n    newTag: \"{cdp_tag}\"\n  \
             - name: postgres\n    newName: {pg_name}\n    newTag: \"{pg_tag}\"\n"
        )
    }

    /// The logs of a pod (all containers' stdout and stderr, as kubectl shows them).
    pub async fn logs(&self, namespace: &str, target: &str) -> Result<String> {
        self.kubectl(&["-n", namespace, "logs", target, "--tail=-1"]).await
    }

    /// One value from the platform's PostgreSQL, through psql in its pod.
    pub async fn sql(&self, namespace: &str, query: &str) -> Result<String> {
        let pod = format!("{PLATFORM}-postgres-0");
        let out = self.kubectl(&["-n", namespace, "exec", &pod, "-c", "postgres", "--", "psql", "-U", "cdp", "-d", "cdp", "-tAc", query]).await?;
        Ok(out.trim().to_string())
    }

    pub async fn sql_count(&self, namespace: &str, query: &str) -> Result<i64> {
        let out = self.sql(namespace, query).await?;
        out.parse().with_context(|| format!("{query} gave {out:?}"))
    }

    /// Record a figure for the summary (and e2e/README.md).
    pub fn figure(&self, name: &str, value: impl std::fmt::Display) {
        let value = value.to_string();
        println!("    figure: {name}: {value}");
        self.figures.lock().expect("figures lock").push((name.to_string(), value));
    }

    pub fn figures(&self) -> Vec<(String, String)> {
        self.figures.lock().expect("figures lock").clone()
    }

    /// What a failed run needs to be understood: pods, events, the operator's log, statuses.
    pub async fn diagnostics(&self) {
        let run = |args: &'static [&'static str]| async move {
            println!("---- kubectl {}", args.join(" "));
            match self.kubectl(args).await {
                Ok(out) => println!("{out}"),
                Err(error) => println!("{error:#}"),
            }
        };
        run(&["get", "pods", "-A", "-o", "wide"]).await;
        run(&["get", "cdp,cdpsrc,cdpmatch,cdpfeed,cdpscale", "-A", "-o", "yaml"]).await;
        run(&["get", "events", "-A", "--sort-by=.lastTimestamp"]).await;
        run(&["-n", "cdp-system", "logs", "-l", "app.kubernetes.io/name=cdp-operator", "--tail=80", "--prefix"]).await;
    }
}

fn split_image(image: &str) -> (&str, &str) {
    // the tag follows the last ':' after the last '/' (a registry may carry a port)
    match image.rfind(':').filter(|&i| i > image.rfind('/').unwrap_or(0)) {
        Some(i) => (&image[..i], &image[i + 1..]),
        None => (image, "latest"),
    }
}

fn relative_path(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<_> = from.components().collect();
    let to: Vec<_> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut path = PathBuf::new();
    for _ in common..from.len() {
        path.push("..");
    }
    for part in &to[common..] {
        path.push(part);
    }
    path
}

pub enum Apply<'a> {
    Yaml(&'a str),
    Kustomization(&'a str),
}

/// Poll `check` every half second until it gives a value, for at most `timeout`. The error
/// says what was awaited and the last thing `check` reported.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last = String::from("nothing observed");
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(error) => last = format!("{error:#}"),
        }
        if Instant::now() > deadline {
            return Err(anyhow!("{what}: not within {timeout:?} (last: {last})"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A Service reached from this machine through `kubectl port-forward` (the way any cluster
/// lets a client outside it in); the process ends with the value.
pub struct PortForward {
    pub base_url: String,
    child: Child,
}

impl PortForward {
    pub async fn service(namespace: &str, service: &str, port: u16) -> Result<PortForward> {
        let mut child = Command::new("kubectl")
            .args(["-n", namespace, "port-forward", &format!("svc/{service}"), &format!(":{port}")])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("kubectl port-forward")?;
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .context("port-forward did not start within 30 s")??
            .ok_or_else(|| anyhow!("port-forward to {service} ended"))?;
        // "Forwarding from 127.0.0.1:43121 -> 8080"
        let local = line
            .split_whitespace()
            .nth(2)
            .filter(|a| a.starts_with("127.0.0.1:"))
            .ok_or_else(|| anyhow!("unexpected port-forward output {line:?}"))?;
        // keep draining its output so it never blocks on a full pipe
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(PortForward { base_url: format!("http://{local}"), child })
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
