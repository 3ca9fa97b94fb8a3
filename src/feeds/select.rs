//! Which events a feed receives and what leaves the platform with them. Pure: a [`Selector`]
//! is compiled once from the Feed and evaluated on an event and its profile's golden record.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use crate::crd::feed::{EventType, FeedSpec};
use crate::identity::consent::ConsentState;
use crate::identity::{GoldenProfile, GoldenValue};
use crate::pipeline::trigger::{Conditions, Subject};
use crate::store::Event;

/// The event every feed receives, whatever it selects (the right to be forgotten travels to
/// every connected system).
pub const ERASED: &str = "profile.erased";

/// Event payload fields that carry ids, names of sources or states, never a person's data.
const PAYLOAD_IDS: &[&str] = &[
    "profileId", "recordId", "source", "sourceRecordId", "survivor", "absorbed", "action", "created", "records",
    "aliases", "erasureId", "purpose", "previous", "current", "statement",
];

/// Event payload fields that map attribute names to values: only allow-listed entries leave.
const PAYLOAD_ATTRIBUTES: &[&str] = &["attributes", "changed"];

/// A Feed whose selection cannot be compiled: its triggers.
pub use crate::pipeline::trigger::TriggerError as SelectorError;

/// Why an event is not sent to a feed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// The feed does not take this event type.
    EventType,
    /// A trigger condition does not hold.
    Trigger,
    /// The profile has not granted the feed's consent purpose.
    Consent,
    /// A profile change that touches none of the allow-listed attributes.
    NothingAllowed,
}

impl Skip {
    pub fn label(self) -> &'static str {
        match self {
            Skip::EventType => "event_type",
            Skip::Trigger => "trigger",
            Skip::Consent => "consent",
            Skip::NothingAllowed => "nothing_allowed",
        }
    }
}

/// A feed's selection, compiled from its spec.
#[derive(Clone, Debug, PartialEq)]
pub struct Selector {
    feed: String,
    events: BTreeSet<&'static str>,
    conditions: Conditions,
    allowed: BTreeSet<String>,
    /// The consent purpose the profile must have granted.
    consent: Option<String>,
}

impl Selector {
    pub fn compile(feed: &str, spec: &FeedSpec) -> Result<Selector, SelectorError> {
        let conditions = Conditions::compile(&spec.triggers)?;
        Ok(Selector {
            feed: feed.to_string(),
            events: spec.events.iter().map(|e| event_name(*e)).collect(),
            conditions,
            allowed: spec.attributes.iter().cloned().collect(),
            consent: spec.required_consent.clone(),
        })
    }

    /// The message to send for `event` (all but its `id`), or why it is not sent. `profile` is the golden record
    /// of the event's profile (of its survivor when it was merged away), when it exists.
    pub fn select(&self, event: &Event, profile: Option<&GoldenProfile>) -> Result<Value, Skip> {
        if event.kind == ERASED {
            // ids only (the profile, its aliases, the erasure), so receivers erase them all
            return Ok(self.message(event, self.minimise_payload(&event.payload), None));
        }
        if !self.events.contains(event.kind.as_str()) {
            return Err(Skip::EventType);
        }
        let subject = Subject { event_source: event.payload.get("source").and_then(Value::as_str), event_type: Some(&event.kind), profile };
        if !self.conditions.hold(subject) {
            return Err(Skip::Trigger);
        }
        if let Some(purpose) = &self.consent
            && !profile.and_then(|p| p.consents.get(purpose)).is_some_and(|s| s.state == ConsentState::Granted)
        {
            // the withdrawal of the feed's own purpose is news the destination must get
            // (ids and states only): else it keeps believing the consent is granted
            if event.kind == "consent.changed" && event.payload.get("purpose").and_then(Value::as_str) == Some(purpose) {
                return Ok(self.message(event, self.minimise_payload(&event.payload), None));
            }
            return Err(Skip::Consent);
        }
        let data = self.minimise_payload(&event.payload);
        if event.kind == "profile.updated" && data.get("changed").and_then(Value::as_object).is_some_and(Map::is_empty) {
            return Err(Skip::NothingAllowed);
        }
        let allowed: Vec<(&String, &GoldenValue)> =
            profile.map(|p| p.attributes.iter().filter(|(name, _)| self.allowed.contains(*name)).collect()).unwrap_or_default();
        let mut message = self.message(event, data, Some(allowed.iter().map(|(n, v)| ((*n).clone(), v.value.clone().into())).collect()));
        // the values as sources sent them, where they differ from the normalised ones: what a
        // greeting uses ("Ada", where matching keeps "ada")
        let display: Map<String, Value> = allowed
            .iter()
            .filter(|(_, v)| !v.display.is_empty() && v.display != v.value)
            .map(|(n, v)| ((*n).clone(), v.display.clone().into()))
            .collect();
        if !display.is_empty() {
            message["display"] = Value::Object(display);
        }
        Ok(message)
    }

    fn minimise_payload(&self, payload: &Value) -> Value {
        let Some(fields) = payload.as_object() else { return Value::Object(Map::new()) };
        let kept = fields.iter().filter_map(|(key, value)| {
            if PAYLOAD_IDS.contains(&key.as_str()) {
                Some((key.clone(), value.clone()))
            } else if PAYLOAD_ATTRIBUTES.contains(&key.as_str()) {
                let allowed = value.as_object()?.iter().filter(|(a, _)| self.allowed.contains(*a));
                Some((key.clone(), Value::Object(allowed.map(|(a, v)| (a.clone(), v.clone())).collect())))
            } else {
                None
            }
        });
        Value::Object(kept.collect())
    }

    fn message(&self, event: &Event, data: Value, profile: Option<Map<String, Value>>) -> Value {
        // its `id`, the idempotency key, is the worker's to add: it depends on the store
        let mut message = json!({
            "type": event.kind,
            "feed": self.feed,
            "createdAtMs": event.created_at_ms,
            "profileId": event.profile_id.map(|p| format!("p{p}")),
            "data": data,
        });
        if let Some(attributes) = profile {
            message["profile"] = Value::Object(attributes);
        }
        message
    }
}

fn event_name(event: EventType) -> &'static str {
    match event {
        EventType::ProfileCreated => "profile.created",
        EventType::ProfileUpdated => "profile.updated",
        EventType::ProfileMerged => "profile.merged",
        EventType::ProfileUnmerged => "profile.unmerged",
        EventType::ProfileErased => ERASED,
        EventType::RecordReceived => "record.received",
        EventType::ConsentChanged => "consent.changed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::feed::TriggerOp;
    use crate::identity::consent::ConsentStatement;
    use crate::identity::record::CONSENT_PREFIX;
    use crate::crd::feed::{Destination, DeliveryPolicy};
    use crate::identity::GoldenValue;

    fn spec(yaml: &str) -> FeedSpec {
        let mut spec: FeedSpec = serde_saphyr::from_str(yaml).unwrap();
        spec.destination = Destination::default();
        spec.delivery = DeliveryPolicy::default();
        spec
    }

    fn sms() -> Selector {
        Selector::compile(
            "sms",
            &spec(
                "platformRef: {name: p}\ndestination: {}\nevents: [record.received]\n\
                 triggers:\n- {field: event.source, op: equals, value: ticketing}\n\
                 - {field: profile.attributes.tier, op: equals, value: patron}\n\
                 attributes: [givenName, phone, attributes.tier]\nrequiredConsent: sms\n",
            ),
        )
        .unwrap()
    }

    /// A golden profile; `consents.<purpose>` entries become consent statements.
    fn golden(values: &[(&str, &str)]) -> GoldenProfile {
        let value = |v: &str| GoldenValue {
            value: v.to_lowercase(),
            display: v.into(),
            source: "s".into(),
            source_record_id: "r".into(),
            observed_at_ms: 0,
            rule: Default::default(),
        };
        let statement = |purpose: &str, v: &str| ConsentStatement {
            purpose: purpose.into(),
            state: ConsentState::parse(v).expect("a consent value"),
            source: "s".into(),
            source_record_id: "r".into(),
            observed_at_ms: 0,
        };
        let (consents, attributes): (Vec<_>, Vec<_>) = values.iter().partition(|(k, _)| k.starts_with(CONSENT_PREFIX));
        GoldenProfile {
            attributes: attributes.iter().map(|(k, v)| (k.to_string(), value(v))).collect(),
            consents: consents.iter().map(|(k, v)| (k[CONSENT_PREFIX.len()..].to_string(), statement(&k[CONSENT_PREFIX.len()..], v))).collect(),
        }
    }

    fn event(kind: &str, payload: Value) -> Event {
        Event { id: 7, profile_id: Some(3), record_id: None, kind: kind.into(), payload, created_at_ms: 1000 }
    }

    fn scan(source: &str) -> Event {
        event("record.received", json!({"recordId": 9, "source": source, "sourceRecordId": "s-1", "profileId": 3}))
    }

    const PATRON: &[(&str, &str)] =
        &[("givenName", "Ada"), ("email", "ada@example.com"), ("phone", "+33612345678"), ("attributes.tier", "patron"), ("consents.sms", "true")];

    #[test]
    fn a_patron_scanned_at_the_gates_is_sent_with_allowed_attributes_only() {
        let message = sms().select(&scan("ticketing"), Some(&golden(PATRON))).unwrap();
        assert_eq!(message["profile"], json!({"givenName": "ada", "phone": "+33612345678", "attributes.tier": "patron"}));
        assert_eq!(message["display"], json!({"givenName": "Ada"}), "values as sent, where they differ");
        assert_eq!(message["data"], json!({"recordId": 9, "source": "ticketing", "sourceRecordId": "s-1", "profileId": 3}));
        assert_eq!(message["profileId"].as_str(), Some("p3"));
    }

    #[test]
    fn triggers_consent_and_event_types_each_hold_events_back() {
        let s = sms();
        assert_eq!(s.select(&scan("pos"), Some(&golden(PATRON))), Err(Skip::Trigger));
        let visitor: Vec<_> = PATRON.iter().map(|&(k, v)| if k == "attributes.tier" { (k, "visitor") } else { (k, v) }).collect();
        assert_eq!(s.select(&scan("ticketing"), Some(&golden(&visitor))), Err(Skip::Trigger));
        assert_eq!(s.select(&scan("ticketing"), None), Err(Skip::Trigger));
        let withdrawn: Vec<_> = PATRON.iter().map(|&(k, v)| if k == "consents.sms" { (k, "false") } else { (k, v) }).collect();
        assert_eq!(s.select(&scan("ticketing"), Some(&golden(&withdrawn))), Err(Skip::Consent));
        let no_consent: Vec<_> = PATRON.iter().copied().filter(|(k, _)| *k != "consents.sms").collect();
        assert_eq!(s.select(&scan("ticketing"), Some(&golden(&no_consent))), Err(Skip::Consent));
        assert_eq!(s.select(&event("profile.created", json!({})), Some(&golden(PATRON))), Err(Skip::EventType));
    }

    #[test]
    fn a_withdrawal_of_the_feeds_consent_is_sent_without_attributes() {
        let mut s = sms();
        s.events.insert("consent.changed");
        s.conditions = Conditions::default();
        let withdrawn: Vec<_> = PATRON.iter().map(|&(k, v)| if k == "consents.sms" { (k, "false") } else { (k, v) }).collect();
        let change = |purpose: &str| {
            event("consent.changed", json!({"profileId": 3, "purpose": purpose, "previous": "granted", "current": "withdrawn"}))
        };
        let message = s.select(&change("sms"), Some(&golden(&withdrawn))).unwrap();
        assert_eq!(message["data"]["current"], "withdrawn");
        assert!(message.get("profile").is_none(), "no attributes without the consent");
        assert_eq!(s.select(&change("email_marketing"), Some(&golden(&withdrawn))), Err(Skip::Consent));
    }

    #[test]
    fn an_erasure_reaches_every_feed_without_attributes() {
        let erased = event(ERASED, json!({"profileId": 3, "aliases": [5], "erasureId": 2, "email": "ada@example.com"}));
        let message = sms().select(&erased, None).unwrap();
        assert_eq!(message["data"], json!({"profileId": 3, "aliases": [5], "erasureId": 2}), "ids only");
        assert!(message.get("profile").is_none());
        assert_eq!(message["type"], "profile.erased");
    }

    #[test]
    fn changed_attributes_are_filtered_and_an_update_of_nothing_allowed_is_skipped() {
        let crm = Selector::compile(
            "crm",
            &spec("platformRef: {name: p}\ndestination: {}\nevents: [profile.updated]\nattributes: [givenName]\n"),
        )
        .unwrap();
        let update = event("profile.updated", json!({"profileId": 3, "changed": {"givenName": "Ada", "email": "x@y.z"}}));
        let message = crm.select(&update, Some(&golden(PATRON))).unwrap();
        assert_eq!(message["data"], json!({"profileId": 3, "changed": {"givenName": "Ada"}}));
        assert_eq!(message["profile"], json!({"givenName": "ada"}));
        let email_only = event("profile.updated", json!({"profileId": 3, "changed": {"email": "x@y.z"}}));
        assert_eq!(crm.select(&email_only, Some(&golden(PATRON))), Err(Skip::NothingAllowed));
    }

    #[test]
    fn a_trigger_without_its_operand_is_rejected_at_compile() {
        let bad = spec("platformRef: {name: p}\ndestination: {}\nevents: [record.received]\nattributes: [givenName]\ntriggers:\n- {field: event.source, op: in}\n");
        assert_eq!(
            Selector::compile("f", &bad),
            Err(SelectorError::Operand { index: 0, op: TriggerOp::In, needs: "values" })
        );
    }
}
