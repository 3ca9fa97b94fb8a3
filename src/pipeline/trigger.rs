//! Trigger conditions (the Feeds' and the Enrichers' `triggers`), compiled once and evaluated
//! on an event and its profile's golden record. Pure.

use std::collections::BTreeSet;

use crate::crd::feed::{Trigger, TriggerOp};
use crate::identity::GoldenProfile;
use crate::identity::record::CONSENT_PREFIX;

/// Triggers that cannot be compiled.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TriggerError {
    #[error("spec.triggers[{index}].field: {field:?} is not event.source, event.type nor profile.<attribute>")]
    Field { index: usize, field: String },
    #[error("spec.triggers[{index}]: {op:?} needs {needs}")]
    Operand { index: usize, op: TriggerOp, needs: &'static str },
}

impl TriggerError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Field { .. } => "TriggerField",
            Self::Operand { .. } => "TriggerOperand",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Field {
    EventSource,
    EventType,
    /// A canonical attribute of the golden profile (`attributes.tier`, `email`), or a consent
    /// purpose's state (`consents.sms`: `granted` or `withdrawn`).
    Profile(String),
}

#[derive(Clone, Debug, PartialEq)]
enum Test {
    Equals(String),
    NotEquals(String),
    In(BTreeSet<String>),
    NotIn(BTreeSet<String>),
    Contains(String),
    Exists,
    NotExists,
}

impl Test {
    fn holds(&self, value: Option<&str>) -> bool {
        match (self, value) {
            (Test::Equals(want), Some(v)) => v == want,
            (Test::NotEquals(want), v) => v != Some(want.as_str()),
            (Test::In(set), Some(v)) => set.contains(v),
            (Test::NotIn(set), v) => v.is_none_or(|v| !set.contains(v)),
            (Test::Contains(part), Some(v)) => v.contains(part.as_str()),
            (Test::Exists, v) => v.is_some(),
            (Test::NotExists, v) => v.is_none(),
            (Test::Equals(_) | Test::In(_) | Test::Contains(_), None) => false,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
struct Condition {
    field: Field,
    test: Test,
}

/// What a trigger looks at: the event's source and type, the profile's golden record.
#[derive(Clone, Copy, Debug, Default)]
pub struct Subject<'a> {
    pub event_source: Option<&'a str>,
    pub event_type: Option<&'a str>,
    pub profile: Option<&'a GoldenProfile>,
}

/// Compiled triggers: all must hold.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Conditions(Vec<Condition>);

impl Conditions {
    pub fn compile(triggers: &[Trigger]) -> Result<Conditions, TriggerError> {
        triggers.iter().enumerate().map(|(i, t)| condition(i, t)).collect::<Result<_, _>>().map(Conditions)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn hold(&self, subject: Subject<'_>) -> bool {
        let value_of = |field: &Field| match field {
            Field::EventSource => subject.event_source,
            Field::EventType => subject.event_type,
            Field::Profile(attribute) => subject.profile.and_then(|p| match attribute.strip_prefix(CONSENT_PREFIX) {
                Some(purpose) => p.consents.get(purpose).map(|s| s.state.label()),
                None => p.get(attribute),
            }),
        };
        self.0.iter().all(|c| c.test.holds(value_of(&c.field)))
    }
}

fn condition(index: usize, trigger: &Trigger) -> Result<Condition, TriggerError> {
    let field = match trigger.field.as_str() {
        "event.source" => Field::EventSource,
        "event.type" => Field::EventType,
        f => match f.strip_prefix("profile.") {
            Some(attribute) if !attribute.is_empty() => Field::Profile(attribute.to_string()),
            _ => return Err(TriggerError::Field { index, field: f.to_string() }),
        },
    };
    let op = trigger.op;
    let value = || trigger.value.clone().ok_or(TriggerError::Operand { index, op, needs: "value" });
    let values = || {
        trigger.values.as_ref().map(|v| v.iter().cloned().collect()).ok_or(TriggerError::Operand { index, op, needs: "values" })
    };
    let test = match op {
        TriggerOp::Equals => Test::Equals(value()?),
        TriggerOp::NotEquals => Test::NotEquals(value()?),
        TriggerOp::Contains => Test::Contains(value()?),
        TriggerOp::In => Test::In(values()?),
        TriggerOp::NotIn => Test::NotIn(values()?),
        TriggerOp::Exists => Test::Exists,
        TriggerOp::NotExists => Test::NotExists,
    };
    Ok(Condition { field, test })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operator_on_present_and_missing_values() {
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        let cases = [
            (Test::Equals("a".into()), [true, false, false]),
            (Test::NotEquals("a".into()), [false, true, true]),
            (Test::In(set(&["a", "c"])), [true, false, false]),
            (Test::NotIn(set(&["a", "c"])), [false, true, true]),
            (Test::Contains("b".into()), [false, true, false]),
            (Test::Exists, [true, true, false]),
            (Test::NotExists, [false, false, true]),
        ];
        for (test, expected) in cases {
            assert_eq!([test.holds(Some("a")), test.holds(Some("abc")), test.holds(None)], expected, "{test:?}");
        }
    }
}
