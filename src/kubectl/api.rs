//! `kubectl cdp explain` and `erase`: calls to the platform's profile API, with a token read
//! from the platform's tokens Secret (`spec.api.tokensSecretRef`). The API is reached at
//! `--api URL` (a port-forward, an ingress), or else at its Service: the load balancer's
//! address when it has one, otherwise the Service's cluster DNS name (inside the cluster).

use k8s_openapi::api::core::v1::{Secret, Service};
use kube::{Api, Client};
use serde_json::Value;

use crate::crd::CustomerDataPlatform;
use crate::operator::render::Workload;
use crate::runtime::auth::{Scope, parse_lines};

use super::PluginError;

/// The token of the first line of the Secret with `scope` (or the line named `name`).
pub fn pick_token(secret_text: &str, scope: Scope, name: Option<&str>) -> Result<String, PluginError> {
    let lines = parse_lines(secret_text).map_err(|e| PluginError::Invalid(format!("the platform's tokens Secret: {e}")))?;
    let line = match name {
        Some(name) => lines.iter().find(|l| l.name == name).ok_or_else(|| PluginError::Invalid(format!("no token named {name:?}")))?,
        None => lines.iter().find(|l| l.scopes.contains(&scope)).ok_or_else(|| {
            PluginError::Invalid(format!("no token in the platform's tokens Secret has the {} scope", scope.name()))
        })?,
    };
    if !line.scopes.contains(&scope) {
        return Err(PluginError::Invalid(format!("token {:?} lacks the {} scope", line.name, scope.name())));
    }
    Ok(line.token.clone())
}

/// The platform's API token with `scope`, from its tokens Secret.
pub async fn token(client: &Client, platform: &CustomerDataPlatform, scope: Scope, name: Option<&str>) -> Result<String, PluginError> {
    let namespace = platform.metadata.namespace.as_deref().unwrap_or("default");
    let reference = platform.spec.api.tokens_secret_ref.as_ref().ok_or_else(|| {
        PluginError::Invalid("the platform declares no spec.api.tokensSecretRef: its API takes no token".into())
    })?;
    let secret = Api::<Secret>::namespaced(client.clone(), namespace).get(&reference.name).await?;
    let bytes = secret
        .data
        .and_then(|mut d| d.remove(&reference.key))
        .ok_or_else(|| PluginError::Invalid(format!("Secret {}/{} has no key {}", namespace, reference.name, reference.key)))?;
    pick_token(&String::from_utf8_lossy(&bytes.0), scope, name)
}

/// Where the platform's API answers: `explicit`, or its Service's address.
pub async fn base_url(client: &Client, platform: &CustomerDataPlatform, explicit: Option<&str>) -> Result<String, PluginError> {
    if let Some(url) = explicit {
        return Ok(url.trim_end_matches('/').to_string());
    }
    let namespace = platform.metadata.namespace.as_deref().unwrap_or("default");
    let name = Workload::Api.object_name(platform.metadata.name.as_deref().unwrap_or_default());
    let service = Api::<Service>::namespaced(client.clone(), namespace).get(&name).await?;
    let ingress = service.status.and_then(|s| s.load_balancer?.ingress?.into_iter().next());
    Ok(match ingress.and_then(|i| i.ip.or(i.hostname)) {
        // the Service listens on the HTTP port, 80
        Some(host) => format!("http://{host}"),
        None => format!("http://{name}.{namespace}.svc"),
    })
}

/// Send a request to the API; the JSON answer, or the API's error envelope as an error.
pub async fn call(request: reqwest::RequestBuilder, token: &str) -> Result<Value, PluginError> {
    let response = request.bearer_auth(token).send().await.map_err(|e| {
        PluginError::Api(format!("{e} (outside the cluster, give --api URL, e.g. http://127.0.0.1:8080 after kubectl port-forward svc/PLATFORM-api 8080:80)"))
    })?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        let message = body["error"]["message"].as_str().unwrap_or("no message");
        let code = body["error"]["code"].as_str().unwrap_or("error");
        return Err(PluginError::Api(format!("{status} {code}: {message}")));
    }
    Ok(body)
}

/// An explanation as lines: each record of the profile and why it is there.
pub fn render_explanation(explanation: &Value) -> String {
    let links = explanation["links"].as_array().cloned().unwrap_or_default();
    let mut out = format!("{}: {} records\n", explanation["profile"].as_str().unwrap_or("?"), links.len());
    for link in &links {
        let evidence = &link["evidence"];
        let why = match evidence["decision"].as_str().unwrap_or("?") {
            "new" => {
                let candidates = evidence["candidates"].as_array().map_or(0, Vec::len);
                format!("started the profile ({candidates} candidates compared, none close enough)")
            }
            "linked" => {
                let pairs: Vec<String> = evidence["links"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|l| match (&l["pair"]["rule"], l["pair"]["probability"].as_f64()) {
                        (Value::String(rule), _) => format!("rule {rule}"),
                        (_, Some(p)) => format!("probability {p:.4}"),
                        _ => "matched".into(),
                    })
                    .collect();
                format!("linked: {}", pairs.join("; "))
            }
            "review" => format!(
                "approved by {} (review item {}, probability {:.4})",
                evidence["approvedBy"].as_str().unwrap_or("?"),
                evidence["reviewId"],
                evidence["probability"].as_f64().unwrap_or(0.0)
            ),
            other => other.to_string(),
        };
        out.push_str(&format!(
            "  {}/{} (record {}): {why}\n",
            link["source"].as_str().unwrap_or("?"),
            link["sourceRecordId"].as_str().unwrap_or("?"),
            link["recordId"]
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &str = "# the platform's tokens\nreader read r-123\nsteward read,write w-456\ndpo read,erase e-789\n";

    #[test]
    fn the_token_is_the_first_with_the_scope_or_the_one_named() {
        assert_eq!(pick_token(SECRET, Scope::Read, None).unwrap(), "r-123");
        assert_eq!(pick_token(SECRET, Scope::Erase, None).unwrap(), "e-789");
        assert_eq!(pick_token(SECRET, Scope::Read, Some("dpo")).unwrap(), "e-789");
        assert!(pick_token(SECRET, Scope::Erase, Some("reader")).unwrap_err().to_string().contains("lacks the erase scope"));
        assert!(pick_token("a read x\n", Scope::Erase, None).unwrap_err().to_string().contains("has the erase scope"));
        assert!(pick_token("broken\n", Scope::Read, None).unwrap_err().to_string().contains("NAME SCOPES TOKEN"));
    }

    #[test]
    fn an_explanation_reads_one_line_per_record() {
        let explanation = json!({"profile": "p7", "links": [
            {"recordId": 1, "source": "webshop", "sourceRecordId": "w1", "evidence": {"decision": "new", "candidates": []}},
            {"recordId": 2, "source": "pos", "sourceRecordId": "p1", "evidence": {"decision": "linked", "links": [{"pair": {"probability": 0.99731}}]}},
            {"recordId": 3, "source": "pos", "sourceRecordId": "p2", "evidence": {"decision": "linked", "links": [{"pair": {"rule": "email-given-name"}}]}},
            {"recordId": 4, "source": "crm", "sourceRecordId": "c9", "evidence": {"decision": "review", "approvedBy": "steward", "reviewId": 12, "probability": 0.61}},
        ]});
        assert_eq!(
            render_explanation(&explanation),
            "p7: 4 records\n\
             \x20 webshop/w1 (record 1): started the profile (0 candidates compared, none close enough)\n\
             \x20 pos/p1 (record 2): linked: probability 0.9973\n\
             \x20 pos/p2 (record 3): linked: rule email-given-name\n\
             \x20 crm/c9 (record 4): approved by steward (review item 12, probability 0.6100)\n"
        );
    }
}
