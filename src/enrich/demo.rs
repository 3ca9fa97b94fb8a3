//! `cdp enricher-demo`: a reference address-standardisation service speaking the enrichers'
//! protocol, for trying enrichment locally (and what the tests and the benchmark call).
//!
//! It checks each request's signature, answers `{"address": {street, postcode, city},
//! "quality": ...}` with the address written one way (abbreviations spelt out, punctuation and
//! spaces tidied, the city in capitals), and can be told to answer slowly or to fail.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::runtime::ops::{self, StartError};
use crate::runtime::sign::{SIGNATURE_HEADER, verify};

#[derive(clap::Args, Clone, Debug)]
pub struct DemoArgs {
    #[arg(long, default_value = "127.0.0.1:9998")]
    pub listen: SocketAddr,
    /// The enricher's signing secret (the value of its Secret key). From the environment, so
    /// that a pod takes it from a Secret, not its args.
    #[arg(long, env = "CDP_ENRICHER_DEMO_SECRET", hide_env_values = true)]
    pub secret: String,
    /// Wait this long before each answer (a slow service).
    #[arg(long, default_value_t = 0)]
    pub delay_ms: u64,
    /// Answer every request with this HTTP status instead (a failing service, e.g. 503).
    #[arg(long)]
    pub fail_status: Option<u16>,
}

/// How the demo behaves.
#[derive(Clone, Debug, Default)]
pub struct Behaviour {
    pub delay: Duration,
    pub fail_status: Option<u16>,
}

/// One request the service answered (or refused on purpose).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    pub id: String,
    pub enricher: String,
    pub values: BTreeMap<String, String>,
    pub authorization: Option<String>,
}

#[derive(Clone)]
struct DemoState {
    secret: Arc<[u8]>,
    behaviour: Behaviour,
    out: mpsc::UnboundedSender<Request>,
}

/// A router answering signed requests on any path; each well-signed request is sent to `out`.
pub fn router(secret: &str, behaviour: Behaviour, out: mpsc::UnboundedSender<Request>) -> Router {
    let state = DemoState { secret: secret.as_bytes().into(), behaviour, out };
    Router::new().fallback(post(answer)).with_state(state)
}

async fn answer(State(s): State<DemoState>, headers: HeaderMap, body: Bytes) -> (StatusCode, Json<Value>) {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let signature = header(SIGNATURE_HEADER).unwrap_or_default();
    if let Err(e) = verify(&s.secret, &signature, &body, jiff::Timestamp::now().as_second(), 300) {
        return (StatusCode::UNAUTHORIZED, Json(json!({"error": e.to_string()})));
    }
    let Ok(mut request) = serde_json::from_slice::<Request>(&body) else {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": "expected {id, enricher, values}"})));
    };
    request.authorization = header("authorization");
    let values = request.values.clone();
    let _ = s.out.send(request);
    tokio::time::sleep(s.behaviour.delay).await;
    if let Some(status) = s.behaviour.fail_status {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        return (status, Json(json!({"error": "failing on purpose"})));
    }
    (StatusCode::OK, Json(standardise(&values)))
}

/// Words of street names written in full.
const ABBREVIATIONS: &[(&str, &str)] = &[
    ("r", "rue"),
    ("av", "avenue"),
    ("ave", "avenue"),
    ("bd", "boulevard"),
    ("bld", "boulevard"),
    ("blvd", "boulevard"),
    ("pl", "place"),
    ("imp", "impasse"),
    ("ch", "chemin"),
    ("rte", "route"),
    ("fg", "faubourg"),
    ("sq", "square"),
];

/// Words kept in lower case inside a street name.
const PARTICLES: &[&str] = &["de", "du", "des", "la", "le", "les", "d'", "l'", "et", "aux", "au", "en", "sur"];

/// The standard form of an address: what the service answers.
pub fn standardise(values: &BTreeMap<String, String>) -> Value {
    let street = values.get("street").map(|s| standard_street(s));
    let postcode = values.get("postcode").map(|p| p.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_uppercase());
    let city = values.get("city").map(|c| c.split_whitespace().collect::<Vec<_>>().join(" ").to_uppercase());
    let quality = if street.is_some() && postcode.is_some() && city.is_some() { "complete" } else { "partial" };
    json!({"address": {"street": street, "postcode": postcode, "city": city}, "quality": quality})
}

fn standard_street(street: &str) -> String {
    let cleaned: String = street.chars().map(|c| if c == ',' || c == '.' { ' ' } else { c }).collect();
    cleaned
        .split_whitespace()
        .enumerate()
        .map(|(i, word)| {
            let lower = word.to_lowercase();
            let full = ABBREVIATIONS.iter().find(|(short, _)| *short == lower).map_or(lower.as_str(), |(_, long)| long).to_string();
            if i > 1 && PARTICLES.contains(&full.as_str()) { full } else { capitalised(&full) }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Each part of a word capitalised (`saint-michel` → `Saint-Michel`).
fn capitalised(word: &str) -> String {
    let part = |p: &str| {
        let mut chars = p.chars();
        chars.next().map_or_else(String::new, |first| first.to_uppercase().chain(chars).collect::<String>())
    };
    word.split('-').map(part).collect::<Vec<_>>().join("-")
}

/// `cdp enricher-demo`: serve until stopped, printing each request as one JSON line.
pub async fn run(args: DemoArgs) -> Result<(), StartError> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let listener = ops::bind(args.listen).await?;
    let (trigger, shutdown) = ops::shutdown_channel();
    ops::on_signal(trigger, Duration::ZERO);
    eprintln!("address standardisation on http://{}", args.listen);
    let behaviour = Behaviour { delay: Duration::from_millis(args.delay_ms), fail_status: args.fail_status };
    let server = tokio::spawn(ops::serve(listener, router(&args.secret, behaviour, tx), shutdown));
    while let Some(request) = rx.recv().await {
        // ids and attribute names only: the values are personal data
        println!("{}", json!({"id": request.id, "enricher": request.enricher, "attributes": request.values.keys().collect::<Vec<_>>()}));
    }
    let _ = server.await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(street: &str, postcode: &str, city: &str) -> BTreeMap<String, String> {
        [("street", street), ("postcode", postcode), ("city", city)].iter().map(|(a, v)| (a.to_string(), v.to_string())).collect()
    }

    #[test]
    fn two_writings_of_one_address_become_one() {
        let a = standardise(&address("12 r. de la Paix", "75 002", "Paris"));
        let b = standardise(&address("12, RUE DE LA PAIX", "75002", " paris "));
        assert_eq!(a, b);
        assert_eq!(a["address"]["street"], "12 Rue de la Paix");
        assert_eq!(a["address"]["city"], "PARIS");
        assert_eq!(standardise(&address("3 bd Saint-Michel", "75005", "Paris"))["address"]["street"], "3 Boulevard Saint-Michel");
    }
}
