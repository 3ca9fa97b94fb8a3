//! A touchpoint's payload → a validated [`CanonicalRecord`], per its Source. Pure.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::crd::source::{InvalidValuePolicy, MAX_VALUE_CHARS, MissingEventId};
use crate::identity::limits::{LengthLimits, MAX_RECORD_ID_CHARS, longer_than};
use crate::identity::normalise::{NormaliseFlags, date_in, normalise_with};
use crate::identity::CanonicalRecord;
use crate::pipeline::NamedSource;
use crate::store::{Arrival, FieldError, MessageOrigin, Payload, fingerprint};

/// The attribute whose slash and dot dates a Source's `dateOrder` reads.
const BIRTH_DATE: &str = "birthDate";

/// Code of a value longer than its limit.
const TOO_LONG: &str = "tooLong";

fn error(field: &str, code: &str, message: impl Into<String>) -> FieldError {
    FieldError { field: field.to_string(), code: code.to_string(), message: message.into() }
}

/// `what` (a payload field, or the record's id) is longer than `max` characters.
fn too_long(field: &str, what: &str, value: &str, max: usize) -> FieldError {
    let length = value.chars().count();
    error(field, TOO_LONG, format!("{what}: {length} characters, longer than the limit of {max} characters"))
}

/// The value at a dotted path (`customer.address.city`), if present and not null.
pub fn at_path<'a>(payload: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(payload, |v, key| v.get(key)).filter(|v| !v.is_null())
}

/// A scalar as text; objects and arrays are not attribute values.
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A payload mapped to a record, with the invalid values the Source keeps anyway.
#[derive(Clone, Debug)]
pub struct Mapped {
    pub record: CanonicalRecord,
    pub warnings: Vec<FieldError>,
}

/// Map and validate one payload. Every failing field is reported, not just the first.
/// How far ahead of its arrival a record's own time may be: clocks drift, but a time in the
/// future would make its statements (a consent, an address) the newest ones for ever.
pub const MAX_OBSERVED_AHEAD_MS: i64 = 24 * 3600 * 1000;
/// The earliest time a record may say it was observed at.
const EARLIEST_OBSERVED: &str = "1900-01-01T00:00:00Z";

/// A record's own time (the Source's `observedAtField`), in Unix milliseconds; or the code and
/// message of why it is refused: not a timestamp, or one the platform cannot take.
fn observed_at(value: &Value, received_at_ms: i64) -> Result<i64, (&'static str, String)> {
    const EXPECTED: &str = "expected an RFC 3339 timestamp such as 2025-03-01T10:15:00Z";
    let text = value.as_str().ok_or(("invalid", EXPECTED.to_string()))?;
    let earliest: jiff::Timestamp = EARLIEST_OBSERVED.parse().expect("a valid timestamp");
    match text.parse::<jiff::Timestamp>() {
        Ok(t) if t < earliest => Err(("outOfRange", format!("{text} is before {EARLIEST_OBSERVED}"))),
        Ok(t) if t.as_millisecond() > received_at_ms + MAX_OBSERVED_AHEAD_MS => {
            let arrived = jiff::Timestamp::from_millisecond(received_at_ms).map(|a| a.to_string()).unwrap_or_default();
            Err(("outOfRange", format!("{text} is more than 24 hours after the record arrived ({arrived})")))
        }
        Ok(t) => Ok(t.as_millisecond()),
        // well formed but beyond what a timestamp can hold (year 9999 and so on)
        Err(_) if rfc3339_shaped(text) => Err(("outOfRange", format!("{text} is outside the times a record may carry"))),
        Err(_) => Err(("invalid", EXPECTED.to_string())),
    }
}

/// `YYYY-MM-DDThh:mm:ss` at the start, whatever the values.
fn rfc3339_shaped(text: &str) -> bool {
    let b = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| b.get(range).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && matches!(b[10], b'T' | b't' | b' ')
        && digits(11..13)
        && b[13] == b':'
}

pub fn map_record(
    source: &NamedSource,
    flags: NormaliseFlags,
    payload: &Value,
    received_at_ms: i64,
) -> Result<Mapped, Vec<FieldError>> {
    map_record_from(source, flags, payload, None, received_at_ms)
}

/// The id a record without its `eventIdField` takes from the Kafka message it came in, when its
/// Source says so (`missingEventId: Coordinates`).
pub fn fallback_event_id(source: &NamedSource, origin: Option<&MessageOrigin>) -> Option<String> {
    let kafka = source.spec.delivery.kafka.as_ref()?;
    (kafka.missing_event_id == MissingEventId::Coordinates).then(|| origin.map(MessageOrigin::event_id)).flatten()
}

/// [`map_record`], with the id a record without its `eventIdField` takes (see
/// [`fallback_event_id`]).
pub fn map_record_from(
    source: &NamedSource,
    flags: NormaliseFlags,
    payload: &Value,
    fallback_id: Option<String>,
    received_at_ms: i64,
) -> Result<Mapped, Vec<FieldError>> {
    let spec = &source.spec;
    if !payload.is_object() {
        return Err(vec![error("$", "notAnObject", "a record must be a JSON object")]);
    }
    let mut errors = Vec::new();
    let id = at_path(payload, &spec.event_id_field).map(scalar).or_else(|| fallback_id.map(Some));
    let source_record_id = match id {
        Some(Some(id)) if longer_than(&id, MAX_RECORD_ID_CHARS) => {
            errors.push(too_long(&spec.event_id_field, "the record's id", &id, MAX_RECORD_ID_CHARS));
            String::new()
        }
        Some(Some(id)) if !id.is_empty() => id,
        Some(Some(_)) | None => {
            errors.push(error(&spec.event_id_field, "required", "the record's id is missing (the Source's eventIdField)"));
            String::new()
        }
        Some(None) => {
            errors.push(error(&spec.event_id_field, "invalid", "the record's id must be a string or a number"));
            String::new()
        }
    };
    let observed_at_ms = match spec.observed_at_field.as_deref().map(|f| (f, at_path(payload, f))) {
        Some((field, Some(v))) => match observed_at(v, received_at_ms) {
            Ok(ms) => ms,
            Err((code, message)) => {
                errors.push(error(field, code, &message));
                received_at_ms
            }
        },
        _ => received_at_ms,
    };
    let region = spec.default_phone_region.as_deref().unwrap_or("");
    let limits = LengthLimits::of(&spec.validation);
    let mut attributes = BTreeMap::new();
    let mut warnings = Vec::new();
    for m in &spec.mapping {
        let Some(v) = at_path(payload, &m.from) else { continue };
        let Some(raw) = scalar(v) else {
            errors.push(error(&m.to, "invalid", format!("{}: expected a string, number or boolean", m.from)));
            continue;
        };
        let max = limits.max_chars(&m.to);
        // the length first: normalising and matching a value cost more the longer it is
        // a declared date order is applied here, once: the record carries the ISO date, which
        // reads the same everywhere after
        let declared_order = spec.date_order.filter(|_| m.to == BIRTH_DATE);
        let issue = if longer_than(&raw, max) {
            too_long(&m.to, &m.from, &raw, max)
        } else {
            let normalised = match declared_order {
                Some(order) => date_in(&raw, Some(order)).map(Some),
                None => normalise_with(&m.to, &raw, region, flags),
            };
            match normalised {
                Ok(Some(iso)) if declared_order.is_some() => {
                    attributes.insert(m.to.clone(), iso);
                    continue;
                }
                Ok(Some(_)) => {
                    attributes.insert(m.to.clone(), raw);
                    continue;
                }
                Ok(None) => continue,
                Err(e) => error(&m.to, "invalid", format!("{}: {e}", m.from)),
            }
        };
        match spec.validation.on_invalid_value {
            InvalidValuePolicy::Reject => errors.push(issue),
            InvalidValuePolicy::Keep if longer_than(&raw, MAX_VALUE_CHARS) => {
                errors.push(too_long(&m.to, &m.from, &raw, MAX_VALUE_CHARS));
            }
            InvalidValuePolicy::Keep => {
                attributes.insert(m.to.clone(), raw);
                warnings.push(issue);
            }
        }
    }
    let failed = |a: &str| errors.iter().any(|e| e.field == a);
    let kept_invalid = |a: &str| warnings.iter().find(|e| e.field == a);
    let usable = |a: &str| attributes.contains_key(a) && kept_invalid(a).is_none();
    let rules = &spec.validation;
    let mut missing = Vec::new();
    for a in &rules.required {
        if let Some(kept) = kept_invalid(a) {
            missing.push(error(a, &kept.code, format!("required by the Source, and its value is not accepted: {}", kept.message)));
        } else if !attributes.contains_key(a) && !failed(a) {
            missing.push(error(a, "required", "required by the Source"));
        }
    }
    if !rules.require_any_of.is_empty() && !rules.require_any_of.iter().any(|a| usable(a)) {
        missing.push(error(
            &rules.require_any_of.join("|"),
            "requireAnyOf",
            format!("at least one of {} is required", rules.require_any_of.join(", ")),
        ));
    }
    errors.extend(missing);
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Mapped { record: CanonicalRecord { source: source.name.clone(), source_record_id, observed_at_ms, attributes }, warnings })
}

/// A payload as it reached intake, with what intake knows of it besides.
#[derive(Clone, Debug, PartialEq)]
pub struct Received {
    pub payload: Value,
    /// The Kafka message it was read from: kept with it in quarantine, and its id when the
    /// Source takes ids from there.
    pub origin: Option<MessageOrigin>,
    /// Why it is no record at all, before any mapping (a Kafka message that is not JSON, or too
    /// large): quarantined as it is.
    pub unreadable: Option<FieldError>,
}

impl From<Value> for Received {
    fn from(payload: Value) -> Received {
        Received { payload, origin: None, unreadable: None }
    }
}

/// Payloads of `source` as the store takes them ([`crate::store::Store::admit`]), each with the
/// identifiers the privacy gate named in it, and per payload what to report on it: the field
/// errors of an invalid one, the kept invalid values of a valid one.
pub fn arrivals(
    source: &NamedSource,
    flags: NormaliseFlags,
    received: &[Received],
    identifiers: Vec<BTreeMap<String, String>>,
    received_at_ms: i64,
) -> (Vec<Arrival>, Vec<Vec<FieldError>>) {
    received
        .iter()
        .zip(identifiers)
        .map(|(Received { payload, origin, unreadable }, identifiers)| {
            let fingerprint = fingerprint(&source.name, payload);
            let mapped = match unreadable {
                Some(error) => Err(vec![error.clone()]),
                None => map_record_from(source, flags, payload, fallback_event_id(source, origin.as_ref()), received_at_ms),
            };
            match mapped {
                Ok(mapped) => (Arrival { identifiers, fingerprint, payload: Payload::Record(mapped.record) }, mapped.warnings),
                Err(errors) => {
                    let (payload, origin) = (payload.clone(), origin.clone());
                    let invalid = Payload::Invalid { source: source.name.clone(), payload, errors: errors.clone(), origin };
                    (Arrival { identifiers, fingerprint, payload: invalid }, errors)
                }
            }
        })
        .unzip()
}

/// A flat row (CSV) as a JSON object; `a.b` column names become nested objects so the
/// Source's dotted mapping paths work on files too. Empty cells are absent.
pub fn row_to_json(headers: &[String], row: &csv::StringRecord) -> Value {
    let mut out = serde_json::Map::new();
    for (h, v) in headers.iter().zip(row.iter()) {
        if v.trim().is_empty() {
            continue;
        }
        let mut obj = &mut out;
        let mut parts = h.split('.').peekable();
        while let Some(part) = parts.next() {
            if parts.peek().is_none() {
                obj.insert(part.to_string(), Value::String(v.to_string()));
            } else {
                let next = obj.entry(part.to_string()).or_insert_with(|| Value::Object(Default::default()));
                if !next.is_object() {
                    *next = Value::Object(Default::default());
                }
                obj = next.as_object_mut().expect("object");
            }
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::source::{DateOrder, Delivery, FieldMapping, SourceSpec, ValidationRules};

    /// When the test records arrive: 2025-03-02T07:20:00Z.
    const RECEIVED: i64 = 1_740_900_000_000;

    fn source() -> NamedSource {
        let map = |from: &str, to: &str| FieldMapping { from: from.into(), to: to.into() };
        NamedSource {
            name: "shop".into(),
            spec: SourceSpec {
                platform_ref: Default::default(),
                delivery: Delivery::default(),
                mapping: vec![
                    map("c.email", "email"),
                    map("c.phone", "phone"),
                    map("c.first", "givenName"),
                    map("c.born", "birthDate"),
                    map("card", "identifiers.loyaltyId"),
                ],
                event_id_field: "id".into(),
                observed_at_field: Some("at".into()),
                validation: ValidationRules {
                    required: vec!["identifiers.loyaltyId".into()],
                    require_any_of: vec!["email".into(), "phone".into()],
                    on_invalid_value: InvalidValuePolicy::Reject,
                    max_length: BTreeMap::new(),
                },
                default_phone_region: Some("FR".into()),
                date_order: None,
                trust_rank: 10,
                privacy: Default::default(),
            },
        }
    }

    #[test]
    fn maps_nested_fields_and_numbers() {
        let payload = serde_json::json!({"id": 42, "at": "2025-03-01T10:00:00Z", "card": 1234,
            "c": {"email": " Ann@Example.com ", "phone": "06 12 34 56 78", "first": "Ann"}});
        let r = map_record(&source(), NormaliseFlags::default(), &payload, RECEIVED).unwrap().record;
        assert_eq!(r.source_record_id, "42");
        assert_eq!(r.observed_at_ms, 1_740_823_200_000);
        assert_eq!(r.attributes["identifiers.loyaltyId"], "1234");
        assert_eq!(r.attributes["email"], "Ann@Example.com");
    }

    #[test]
    fn a_records_own_time_is_a_timestamp_it_may_carry() {
        let at = |value: &str| {
            let payload = serde_json::json!({"id": 1, "at": value, "card": 1, "c": {"email": "ann@example.com"}});
            map_record(&source(), NormaliseFlags::default(), &payload, RECEIVED).map(|m| m.record.observed_at_ms)
        };
        let refused = |value: &str| {
            let errors = at(value).unwrap_err();
            assert_eq!(errors.len(), 1, "{value}: {errors:?}");
            (errors[0].code.clone(), errors[0].message.clone())
        };
        assert_eq!(at("2025-03-01T10:00:00Z").unwrap(), 1_740_823_200_000);
        assert!(at("2025-03-03T07:00:00Z").is_ok(), "a day's clock drift is taken");
        let (code, message) = refused("9999-12-31T23:59:59Z");
        assert_eq!(code, "outOfRange", "a well-formed timestamp is not called malformed: {message}");
        let (code, message) = refused("2025-03-04T10:00:00Z");
        assert_eq!(code, "outOfRange");
        assert!(message.contains("more than 24 hours after the record arrived"), "{message}");
        assert_eq!(refused("1850-06-01T00:00:00Z").0, "outOfRange");
        let (code, message) = refused("yesterday");
        assert_eq!(code, "invalid");
        assert!(message.contains("RFC 3339"), "{message}");
    }

    #[test]
    fn a_source_declares_its_date_order_and_ambiguous_dates_are_never_guessed() {
        let born = |order: Option<DateOrder>, value: &str| {
            let mut source = source();
            source.spec.date_order = order;
            let payload = serde_json::json!({"id": 1, "card": 7, "c": {"email": "ann@example.com", "born": value}});
            map_record(&source, NormaliseFlags::default(), &payload, RECEIVED)
                .map(|m| m.record.attributes[BIRTH_DATE].clone())
                .map_err(|errors| errors.iter().map(|e| format!("{} {}: {}", e.field, e.code, e.message)).collect::<Vec<_>>())
        };
        assert_eq!(born(Some(DateOrder::DayMonthYear), "01/02/1990").unwrap(), "1990-02-01");
        assert_eq!(born(Some(DateOrder::MonthDayYear), "01/02/1990").unwrap(), "1990-01-02");
        assert_eq!(born(Some(DateOrder::MonthDayYear), "12/31/1990").unwrap(), "1990-12-31");
        let refused = born(None, "01/02/1990").unwrap_err();
        assert!(refused[0].starts_with("birthDate invalid") && refused[0].contains("dateOrder"), "{refused:?}");
        // the declared order holds: 12/31 is no day-first date
        assert!(born(Some(DateOrder::DayMonthYear), "12/31/1990").is_err());
        // undeclared, a date with one possible reading is read, as sent
        assert_eq!(born(None, "12/31/1990").unwrap(), "12/31/1990");
    }

    #[test]
    fn reports_every_failing_field() {
        let payload = serde_json::json!({"at": "yesterday", "c": {"email": "nope", "born": "31/02/1990", "first": {"x": 1}}});
        let errors = map_record(&source(), NormaliseFlags::default(), &payload, RECEIVED).unwrap_err();
        let fields: Vec<(&str, &str)> = errors.iter().map(|e| (e.field.as_str(), e.code.as_str())).collect();
        assert_eq!(
            fields,
            vec![
                ("id", "required"),
                ("at", "invalid"),
                ("email", "invalid"),
                ("givenName", "invalid"),
                ("birthDate", "invalid"),
                ("identifiers.loyaltyId", "required"),
                ("email|phone", "requireAnyOf"),
            ]
        );
    }

    #[test]
    fn a_source_may_keep_invalid_values_but_never_for_required_attributes() {
        let mut keeping = source();
        keeping.spec.validation.on_invalid_value = InvalidValuePolicy::Keep;
        let payload = serde_json::json!({"id": 1, "card": 7, "c": {"phone": "06 12 34 56 78", "born": "1990-02-31"}});
        let mapped = map_record(&keeping, NormaliseFlags::default(), &payload, RECEIVED).unwrap();
        assert_eq!(mapped.record.attributes["birthDate"], "1990-02-31", "stored as sent");
        let warned: Vec<&str> = mapped.warnings.iter().map(|w| w.field.as_str()).collect();
        assert_eq!(warned, ["birthDate"]);
        // the only contact value is invalid: requireAnyOf still fails
        let payload = serde_json::json!({"id": 1, "card": 7, "c": {"email": "nope"}});
        let errors = map_record(&keeping, NormaliseFlags::default(), &payload, RECEIVED).unwrap_err();
        assert_eq!(errors.iter().map(|e| e.code.as_str()).collect::<Vec<_>>(), ["requireAnyOf"]);
        keeping.spec.validation.required.push("birthDate".into());
        let payload = serde_json::json!({"id": 1, "card": 7, "c": {"phone": "0612345678", "born": "1990-02-31"}});
        let errors = map_record(&keeping, NormaliseFlags::default(), &payload, RECEIVED).unwrap_err();
        assert_eq!(errors.iter().map(|e| (e.field.as_str(), e.code.as_str())).collect::<Vec<_>>(), [("birthDate", "invalid")]);
    }

    fn fields_and_codes(errors: &[FieldError]) -> Vec<(&str, &str)> {
        errors.iter().map(|e| (e.field.as_str(), e.code.as_str())).collect()
    }

    #[test]
    fn values_and_ids_longer_than_their_limit_are_refused_naming_the_field() {
        let mut shop = source();
        let valid = serde_json::json!({"id": 1, "card": 7, "c": {"email": "ann@example.com"}});
        let with = |path: &str, value: String| {
            let mut payload = valid.clone();
            *path.split('.').fold(&mut payload, |v, key| &mut v[key]) = value.into();
            payload
        };
        // counted in characters: 100 two-byte letters are within the default of 100
        assert!(map_record(&shop, NormaliseFlags::default(), &with("c.first", "é".repeat(100)), RECEIVED).is_ok());
        let errors = map_record(&shop, NormaliseFlags::default(), &with("c.first", "é".repeat(101)), RECEIVED).unwrap_err();
        assert_eq!(fields_and_codes(&errors), [("givenName", "tooLong")]);
        assert_eq!(errors[0].message, "c.first: 101 characters, longer than the limit of 100 characters");
        // the Source's own limit, on any attribute
        shop.spec.validation.max_length = [("givenName".to_string(), 5), ("identifiers.loyaltyId".to_string(), 3)].into();
        let errors = map_record(&shop, NormaliseFlags::default(), &with("c.first", "Annabel".into()), RECEIVED).unwrap_err();
        assert_eq!(fields_and_codes(&errors), [("givenName", "tooLong")]);
        assert!(errors[0].message.ends_with("limit of 5 characters"), "{}", errors[0].message);
        let errors = map_record(&shop, NormaliseFlags::default(), &with("card", "1234".into()), RECEIVED).unwrap_err();
        assert_eq!(fields_and_codes(&errors), [("identifiers.loyaltyId", "tooLong")]);
        let errors = map_record(&shop, NormaliseFlags::default(), &with("id", "x".repeat(10_000)), RECEIVED).unwrap_err();
        assert_eq!(fields_and_codes(&errors), [("id", "tooLong")]);
        assert_eq!(errors[0].message, "the record's id: 10000 characters, longer than the limit of 256 characters");
        assert!(map_record(&shop, NormaliseFlags::default(), &with("id", "x".repeat(256)), RECEIVED).is_ok());
    }

    #[test]
    fn a_source_keeping_invalid_values_keeps_long_ones_up_to_the_hard_maximum() {
        let mut keeping = source();
        keeping.spec.validation.on_invalid_value = InvalidValuePolicy::Keep;
        let long = "Ann".repeat(50);
        let payload = serde_json::json!({"id": 1, "card": 7, "c": {"email": "ann@example.com", "first": long}});
        let mapped = map_record(&keeping, NormaliseFlags::default(), &payload, RECEIVED).unwrap();
        assert_eq!(mapped.record.attributes["givenName"], long, "stored as sent");
        assert_eq!(fields_and_codes(&mapped.warnings), [("givenName", "tooLong")]);
        let payload = serde_json::json!({"id": 1, "card": 7, "c": {"email": "ann@example.com", "first": "a".repeat(MAX_VALUE_CHARS + 1)}});
        let errors = map_record(&keeping, NormaliseFlags::default(), &payload, RECEIVED).unwrap_err();
        assert_eq!(fields_and_codes(&errors), [("givenName", "tooLong")]);
        assert!(errors[0].message.ends_with("limit of 10000 characters"), "{}", errors[0].message);
        // a required attribute must be within its limit
        keeping.spec.validation.max_length = [("identifiers.loyaltyId".to_string(), 3)].into();
        let payload = serde_json::json!({"id": 1, "card": 1234, "c": {"email": "ann@example.com"}});
        let errors = map_record(&keeping, NormaliseFlags::default(), &payload, RECEIVED).unwrap_err();
        assert_eq!(fields_and_codes(&errors), [("identifiers.loyaltyId", "tooLong")]);
    }

    #[test]
    fn a_kafka_source_may_take_a_missing_id_from_the_messages_coordinates() {
        use crate::crd::source::{KafkaDelivery, MissingEventId};
        let mut tills = source();
        tills.spec.delivery.kafka = Some(KafkaDelivery {
            topic: "tills".into(),
            bootstrap_servers_secret_ref: Default::default(),
            consumer_group: None,
            auto_offset_reset: Default::default(),
            max_in_flight: 10,
            missing_event_id: MissingEventId::Coordinates,
            tls: None,
            sasl: None,
            broker_ports: Vec::new(),
        });
        let origin = MessageOrigin { topic: "tills".into(), partition: 1, offset: 7, index: Some(2) };
        let received = |payload: Value| Received { payload, origin: Some(origin.clone()), unreadable: None };
        let id_of = |source: &NamedSource, payload: Value| {
            let (arrivals, _) = arrivals(source, NormaliseFlags::default(), &[received(payload)], vec![BTreeMap::new()], RECEIVED);
            match arrivals.into_iter().next().unwrap().payload {
                Payload::Record(r) => Ok(r.source_record_id),
                Payload::Invalid { errors, origin, .. } => Err((errors[0].code.clone(), origin)),
            }
        };
        let without_id = serde_json::json!({"card": 7, "c": {"email": "ann@example.com"}});
        assert_eq!(id_of(&tills, without_id.clone()), Ok("tills/1/7/2".to_string()));
        let mut with_id = without_id.clone();
        with_id["id"] = "r-9".into();
        assert_eq!(id_of(&tills, with_id), Ok("r-9".to_string()), "the record's own id first");
        tills.spec.delivery.kafka.as_mut().unwrap().missing_event_id = MissingEventId::Quarantine;
        assert_eq!(id_of(&tills, without_id), Err(("required".to_string(), Some(origin.clone()))), "quarantined where it was read");
    }

    #[test]
    fn csv_columns_nest_on_dots() {
        let headers = vec!["id".to_string(), "c.email".to_string(), "c.first".to_string()];
        let row = csv::StringRecord::from(vec!["1", "a@b.fr", ""]);
        assert_eq!(row_to_json(&headers, &row), serde_json::json!({"id": "1", "c": {"email": "a@b.fr"}}));
    }
}
