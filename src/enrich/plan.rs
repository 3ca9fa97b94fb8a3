//! What an enricher sends and what it writes back: pure functions of its spec.

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::crd::enricher::EnricherSpec;
use crate::identity::consent::ConsentState;
use crate::identity::record::CONSENT_PREFIX;

/// The allow-listed attributes among `values`: all that leaves the platform. `None` when the
/// record or profile holds none of them (nothing to ask about).
pub fn request_values(spec: &EnricherSpec, values: &BTreeMap<String, String>) -> Option<BTreeMap<String, String>> {
    let sent: BTreeMap<String, String> = spec
        .attributes
        .iter()
        .filter_map(|a| values.get(a).filter(|v| !v.trim().is_empty()).map(|v| (a.clone(), v.clone())))
        .collect();
    (!sent.is_empty()).then_some(sent)
}

/// Whether the person allows the call: always when the spec requires no consent, otherwise
/// only when the purpose's current state is granted (unknown is not granted).
pub fn consent_allows(spec: &EnricherSpec, state: impl Fn(&str) -> Option<ConsentState>) -> bool {
    spec.required_consent.as_deref().is_none_or(|purpose| state(purpose) == Some(ConsentState::Granted))
}

/// A record's own statement of `purpose` (`consents.<purpose>`), for a record not matched yet.
pub fn record_consent(attributes: &BTreeMap<String, String>, purpose: &str) -> Option<ConsentState> {
    attributes.get(&format!("{CONSENT_PREFIX}{purpose}")).and_then(|v| ConsentState::parse(v))
}

/// The cache key of a request: a keyed digest of the enricher and the values sent, so the
/// cache holds no value in the clear and one address is looked up once.
pub fn digest(key: &[u8], enricher: &str, sent: &BTreeMap<String, String>) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(enricher.as_bytes());
    mac.update(b"\0");
    mac.update(serde_json::to_string(sent).expect("strings serialise").as_bytes());
    hex::encode(&mac.finalize().into_bytes()[..16])
}

/// The values to write back from an answer: each `write` entry whose `from` path holds a
/// string, number or boolean. An answer with none of them writes nothing.
pub fn write_back(spec: &EnricherSpec, answer: &Value) -> BTreeMap<String, String> {
    spec.write
        .iter()
        .filter_map(|w| {
            let found = w.from.split('.').try_fold(answer, |at, step| at.get(step))?;
            let text = match found {
                Value::String(s) => s.trim().to_string(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => return None,
            };
            (!text.is_empty()).then(|| (w.to.clone(), text))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec() -> EnricherSpec {
        serde_json::from_value(json!({
            "platformRef": {"name": "retail"},
            "stage": "ProfileChange",
            "attributes": ["street", "postcode", "city"],
            "endpoint": {"url": "https://address.example.com/v1/standardise", "signingSecretRef": {"name": "s", "key": "k"}},
            "write": [
                {"from": "address.street", "to": "street"},
                {"from": "address.postcode", "to": "postcode"},
                {"from": "quality", "to": "attributes.addressQuality"},
            ],
            "requiredConsent": "profiling",
        }))
        .unwrap()
    }

    fn values(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(a, v)| (a.to_string(), v.to_string())).collect()
    }

    #[test]
    fn only_allow_listed_values_leave() {
        let held = values(&[("email", "ada@example.com"), ("street", "12 r. de la Paix"), ("city", " "), ("postcode", "75002")]);
        assert_eq!(request_values(&spec(), &held), Some(values(&[("postcode", "75002"), ("street", "12 r. de la Paix")])));
        assert_eq!(request_values(&spec(), &values(&[("email", "ada@example.com")])), None);
    }

    #[test]
    fn a_required_consent_must_be_granted() {
        let s = spec();
        assert!(consent_allows(&s, |_| Some(ConsentState::Granted)));
        assert!(!consent_allows(&s, |_| Some(ConsentState::Withdrawn)));
        assert!(!consent_allows(&s, |_| None), "never stated is not granted");
        let open = EnricherSpec { required_consent: None, ..s };
        assert!(consent_allows(&open, |_| None));
        let record = values(&[("consents.profiling", "yes")]);
        assert_eq!(record_consent(&record, "profiling"), Some(ConsentState::Granted));
    }

    #[test]
    fn the_digest_depends_on_the_enricher_the_values_and_the_key() {
        let sent = values(&[("street", "12 r. de la Paix")]);
        let d = digest(b"k", "address", &sent);
        assert_eq!(d, digest(b"k", "address", &sent.clone()));
        assert_ne!(d, digest(b"other", "address", &sent));
        assert_ne!(d, digest(b"k", "geo", &sent));
        assert_ne!(d, digest(b"k", "address", &values(&[("street", "12 rue de la Paix")])));
        assert!(!d.contains("Paix") && d.len() == 32);
    }

    #[test]
    fn write_back_follows_the_paths_and_skips_what_is_missing() {
        let answer = json!({"address": {"street": "12 rue de la Paix", "postcode": 75002}, "quality": null});
        assert_eq!(write_back(&spec(), &answer), values(&[("postcode", "75002"), ("street", "12 rue de la Paix")]));
        assert!(write_back(&spec(), &json!({"unexpected": true})).is_empty());
    }
}
