//! `cdp receive`: a webhook receiver that checks signatures and drops repeated deliveries, for
//! trying feeds locally (and what the reaction benchmark measures against).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::routing::post;
use axum::{Json, Router};
use serde::Serialize;
use tokio::sync::mpsc;

use super::sign::{IDEMPOTENCY_HEADER, SIGNATURE_HEADER, SignatureError, verify};
use crate::runtime::ops::{self, StartError};

#[derive(clap::Args, Clone, Debug)]
pub struct ReceiveArgs {
    #[arg(long, default_value = "127.0.0.1:9999")]
    pub listen: SocketAddr,
    /// A feed's signing secret (the value of its Secret key); repeat it for several feeds. From
    /// the environment (comma-separated), so that a pod takes them from a Secret, not its args.
    #[arg(long = "secret", env = "CDP_RECEIVE_SECRETS", value_delimiter = ',', required = true, hide_env_values = true)]
    pub secrets: Vec<String>,
    /// Accepted distance between the signature's timestamp and now.
    #[arg(long, default_value_t = 300)]
    pub tolerance_seconds: i64,
}

/// One delivery the receiver accepted.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Received {
    /// When the receiver accepted it (RFC 3339), to measure a delivery's age across processes.
    pub received_at: jiff::Timestamp,
    pub path: String,
    pub idempotency_key: String,
    /// The same key arrived before (an at-least-once redelivery): acknowledged, not processed.
    pub duplicate: bool,
    pub message: serde_json::Value,
}

#[derive(Clone)]
struct ReceiverState {
    secrets: Arc<[Vec<u8>]>,
    tolerance_seconds: i64,
    seen: Arc<Mutex<HashSet<String>>>,
    out: mpsc::UnboundedSender<Received>,
}

/// A router accepting deliveries signed with one of `secrets` on any path; each accepted one
/// is sent to `out`. Unsigned, badly signed or stale requests get 401, bodies that are not JSON 400.
pub fn router(secrets: &[String], tolerance_seconds: i64, out: mpsc::UnboundedSender<Received>) -> Router {
    let secrets = secrets.iter().map(|s| s.as_bytes().to_vec()).collect();
    let state = ReceiverState { secrets, tolerance_seconds, seen: Arc::default(), out };
    Router::new().fallback(post(receive)).with_state(state)
}

async fn receive(State(s): State<ReceiverState>, uri: Uri, headers: HeaderMap, body: Bytes) -> (StatusCode, Json<serde_json::Value>) {
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let now = jiff::Timestamp::now().as_second();
    let signature = header(SIGNATURE_HEADER).unwrap_or("");
    // the first secret that verifies; otherwise the last refusal says why
    let mut checked = Err(SignatureError::Malformed);
    for secret in s.secrets.iter() {
        checked = verify(secret, signature, &body, now, s.tolerance_seconds);
        if checked.is_ok() {
            break;
        }
    }
    if let Err(e) = checked {
        return (StatusCode::UNAUTHORIZED, Json(serde_json::json!({"error": e.to_string()})));
    }
    let Ok(message) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return (StatusCode::BAD_REQUEST, Json(serde_json::json!({"error": "body is not JSON"})));
    };
    let key = header(IDEMPOTENCY_HEADER).unwrap_or_default().to_string();
    let duplicate = !s.seen.lock().expect("seen lock").insert(key.clone());
    let _ = s.out.send(Received { received_at: jiff::Timestamp::now(), path: uri.path().to_string(), idempotency_key: key, duplicate, message });
    (StatusCode::OK, Json(serde_json::json!({"received": true, "duplicate": duplicate})))
}

/// `cdp receive`: print each accepted delivery as one JSON line.
pub async fn run(args: ReceiveArgs) -> Result<(), StartError> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let listener = ops::bind(args.listen).await?;
    let (trigger, shutdown) = ops::shutdown_channel();
    ops::on_signal(trigger, std::time::Duration::ZERO);
    eprintln!("receiving signed deliveries on http://{}", args.listen);
    let server = tokio::spawn(ops::serve(listener, router(&args.secrets, args.tolerance_seconds, tx), shutdown));
    while let Some(received) = rx.recv().await {
        println!("{}", serde_json::to_string(&received).expect("serialises"));
    }
    let _ = server.await;
    Ok(())
}
