//! The `cdp operator` binary against an API server that speaks HTTPS, as every real cluster
//! does, reached through a kubeconfig as on a workstation. Before one crypto provider was
//! installed at start, the binary panicked at its first HTTPS connection; the in-process
//! fake of the other tests talks plain HTTP and could not see it.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use support::fake_api::FakeApi;
use support::tls::{self, TestPki};

fn operator(kubeconfig: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_cdp"))
        .args(["operator", "--listen", "127.0.0.1:0"])
        .env("KUBECONFIG", kubeconfig)
        .env("POD_NAME", "operator-0")
        .env("POD_NAMESPACE", "cdp-system")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the cdp binary starts")
}

fn stderr_of(mut child: Child) -> String {
    let _ = child.kill();
    let output = child.wait_with_output().expect("the operator's output");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn the_operator_connects_over_tls_and_takes_the_lease() {
    let (fake, _) = FakeApi::new();
    let pki = TestPki::new();
    let server = tls::serve(fake.clone(), &pki).await;
    let dir = tempfile::tempdir().unwrap();
    let mut child = operator(&pki.write_kubeconfig(dir.path(), server));

    // Through TLS, the version request and leader election: the Lease names this replica.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let holder = fake
            .get::<Lease>("cdp-system", "cdp-operator-leader")
            .and_then(|lease| lease.spec)
            .and_then(|spec| spec.holder_identity);
        if holder.as_deref() == Some("operator-0") {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the operator exited ({status}) before taking the lease:\n{}", stderr_of(child));
        }
        assert!(Instant::now() < deadline, "no lease after 30 s:\n{}", stderr_of(child));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // It then watches the custom resources over the same connection.
    fake.wait_until(Duration::from_secs(30), |api| {
        api.requests().iter().any(|r| r.path.ends_with("/customerdataplatforms") && r.query.contains("watch"))
    })
    .await;
    let log = stderr_of(child);
    assert!(!log.contains("panicked"), "{log}");
}

#[tokio::test]
async fn the_operator_refuses_a_server_its_kubeconfig_does_not_trust() {
    let (fake, _) = FakeApi::new();
    let server = tls::serve(fake.clone(), &TestPki::new()).await;
    let dir = tempfile::tempdir().unwrap();
    // A kubeconfig trusting another CA: the serving certificate must not be accepted.
    let mut child = operator(&TestPki::new().write_kubeconfig(dir.path(), server));
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "still running after 30 s:\n{}", stderr_of(child));
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let log = stderr_of(child);
    assert!(!status.success(), "{log}");
    assert!(log.contains("certificate") || log.contains("Certificate"), "the error names the certificate: {log}");
    assert!(!log.contains("panicked"), "{log}");
    assert!(fake.requests().is_empty(), "nothing reached the untrusted server: {:?}", fake.requests());
}
