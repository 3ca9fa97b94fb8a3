//! What every outbound HTTP client shares (the feeds' webhooks, the enrichers' endpoints):
//! host lookups that cannot hold a shutdown up, and errors that name their causes.

use std::net::ToSocketAddrs;
use std::time::Duration;

/// A client for one outbound endpoint: `timeout_seconds` per request, https only unless
/// `allow_insecure_http`.
pub fn client(url: &str, timeout_seconds: u32, allow_insecure_http: bool) -> Result<reqwest::Client, reqwest::Error> {
    let mut builder = reqwest::Client::builder()
        .timeout(Duration::from_secs(timeout_seconds.into()))
        .https_only(!allow_insecure_http)
        .dns_resolver(DetachedLookup);
    if url.starts_with("http://") {
        // No TLS to verify: the system's CA bundle is not needed (nor required to exist).
        builder = builder.tls_certs_only([]);
    }
    builder.build()
}

/// Looks host names up on a thread of its own each time rather than on the runtime's blocking
/// pool (reqwest's default). The runtime waits for that pool's threads when the process exits,
/// so a lookup stuck on an unreachable DNS server would hold a shutdown up for as long as the
/// system resolver keeps retrying, well after the send itself was dropped.
pub struct DetachedLookup;

impl reqwest::dns::Resolve for DetachedLookup {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        let (answer, answered) = tokio::sync::oneshot::channel();
        let lookup = std::thread::Builder::new().name("dns-lookup".into()).spawn(move || {
            let _ = answer.send((host.as_str(), 0).to_socket_addrs().map(Iterator::collect::<Vec<_>>));
        });
        Box::pin(async move {
            lookup?;
            let addresses = answered.await??;
            Ok(Box::new(addresses.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// An error with its causes (reqwest's own message hides them).
pub fn error_chain(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
