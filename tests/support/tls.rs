//! The fake API server over HTTPS, as every real cluster serves its API: a throw-away CA, a
//! serving certificate it signs for 127.0.0.1, and a kubeconfig that trusts the CA.
#![allow(dead_code)] // each integration-test binary uses a different subset of these helpers

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::fake_api::FakeApi;

/// A certificate authority and the serving certificate it issued for 127.0.0.1 (rustls refuses
/// a server certificate that is its own CA, so the two are distinct, as in a cluster).
pub struct TestPki {
    pub ca_pem: String,
    server_cert: CertificateDer<'static>,
    server_key: PrivatePkcs8KeyDer<'static>,
}

impl TestPki {
    pub fn new() -> TestPki {
        let ca_key = KeyPair::generate().expect("a CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(rcgen::DnType::CommonName, "test-cluster-ca");
        let ca_cert = ca.self_signed(&ca_key).expect("a self-signed CA");
        let issuer = Issuer::new(ca, ca_key);
        let server_key = KeyPair::generate().expect("a serving key");
        let mut server = CertificateParams::new(vec!["localhost".to_string()]).expect("serving parameters");
        server.subject_alt_names.push(SanType::IpAddress([127, 0, 0, 1].into()));
        let server_cert = server.signed_by(&server_key, &issuer).expect("a serving certificate");
        TestPki {
            ca_pem: ca_cert.pem(),
            server_cert: server_cert.der().clone(),
            server_key: PrivatePkcs8KeyDer::from(server_key.serialize_der()),
        }
    }

    fn server_config(&self) -> ServerConfig {
        let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
        ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("default protocol versions")
            .with_no_client_auth()
            .with_single_cert(vec![self.server_cert.clone()], PrivateKeyDer::Pkcs8(self.server_key.clone_key()))
            .expect("the serving certificate matches its key")
    }

    /// Write a kubeconfig for `server` into `dir` that trusts this CA and presents a bearer token.
    pub fn write_kubeconfig(&self, dir: &Path, server: SocketAddr) -> PathBuf {
        let ca = dir.join("ca.crt");
        std::fs::write(&ca, &self.ca_pem).expect("CA written");
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: https://{server}\n    \
             certificate-authority: {}\nusers:\n- name: test\n  user:\n    token: test-token\n\
             contexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n    namespace: default\n\
             current-context: test\n",
            ca.display()
        );
        let path = dir.join("kubeconfig");
        std::fs::write(&path, kubeconfig).expect("kubeconfig written");
        path
    }
}

/// Serve `api` over HTTPS on 127.0.0.1 with `pki`'s serving certificate, until the test ends.
pub async fn serve(api: FakeApi, pki: &TestPki) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a local port");
    let addr = listener.local_addr().expect("bound");
    let acceptor = TlsAcceptor::from(Arc::new(pki.server_config()));
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else { return };
            let (acceptor, api) = (acceptor.clone(), api.clone());
            tokio::spawn(async move {
                // A client that refuses the certificate ends its handshake here; nothing to serve.
                let Ok(stream) = acceptor.accept(socket).await else { return };
                let service = hyper::service::service_fn(move |req| {
                    let api = api.clone();
                    async move { Ok::<_, std::convert::Infallible>(api.answer(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}
