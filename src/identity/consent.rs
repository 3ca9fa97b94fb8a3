//! Consents: per purpose, granted or withdrawn. Every record carrying `consents.<purpose>` is
//! a statement (what its source observed, and when); the newest statement of a profile wins.
//! Because statements live in the profile's own records, merges and unmerges move them with
//! the records, and the current state is always recomputed from what the profile holds.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::identity::engine::PreparedRecord;
use crate::identity::record::CONSENT_PREFIX;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum ConsentState {
    // `Withdrawn` orders first: of two statements made at the same instant, it wins
    Withdrawn,
    Granted,
}

impl ConsentState {
    /// `granted` or `withdrawn`, as the state reads in JSON.
    pub fn label(self) -> &'static str {
        match self {
            ConsentState::Granted => "granted",
            ConsentState::Withdrawn => "withdrawn",
        }
    }

    /// Read a touchpoint's value: `true/false`, `granted/withdrawn`, `yes/no`, `1/0` (any case),
    /// plus the usual variants `y/n`, `on/off`, `optin/optout`, `opt-in/opt-out`.
    pub fn parse(raw: &str) -> Option<ConsentState> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "granted" | "yes" | "y" | "1" | "on" | "optin" | "opt-in" | "opted-in" => Some(ConsentState::Granted),
            "false" | "withdrawn" | "no" | "n" | "0" | "off" | "optout" | "opt-out" | "opted-out" => {
                Some(ConsentState::Withdrawn)
            }
            _ => None,
        }
    }

    /// The normalised value stored with a record.
    pub fn as_str(self) -> &'static str {
        match self {
            ConsentState::Granted => "granted",
            ConsentState::Withdrawn => "withdrawn",
        }
    }
}

/// One statement: a record's `consents.<purpose>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConsentStatement {
    pub purpose: String,
    pub state: ConsentState,
    pub source: String,
    pub source_record_id: String,
    /// When the touchpoint observed it (what decides which statement is newest).
    pub observed_at_ms: i64,
}

/// The statements held in `records`, oldest first (ties in a fixed order).
pub fn statements<'a>(records: impl IntoIterator<Item = &'a PreparedRecord>) -> Vec<ConsentStatement> {
    in_order(
        records
            .into_iter()
            .flat_map(|r| record_statements(&r.source, &r.source_record_id, r.observed_at_ms, &r.values))
            .collect(),
    )
}

/// The statements of one record, from its normalised values.
pub fn record_statements(
    source: &str,
    source_record_id: &str,
    observed_at_ms: i64,
    values: &BTreeMap<String, String>,
) -> Vec<ConsentStatement> {
    values
        .iter()
        .filter_map(|(attribute, value)| {
            Some(ConsentStatement {
                purpose: attribute.strip_prefix(CONSENT_PREFIX)?.to_string(),
                state: ConsentState::parse(value)?,
                source: source.to_string(),
                source_record_id: source_record_id.to_string(),
                observed_at_ms,
            })
        })
        .collect()
}

/// Statements oldest first, statements of one instant in precedence order.
pub fn in_order(mut statements: Vec<ConsentStatement>) -> Vec<ConsentStatement> {
    statements.sort_by(|a, b| precedence(a).cmp(&precedence(b)));
    statements
}

/// Ascending precedence: later observation wins; at the same instant a withdrawal wins; then
/// provenance, so the result never depends on the order records were read in.
fn precedence(s: &ConsentStatement) -> (i64, std::cmp::Reverse<ConsentState>, &str, &str) {
    (s.observed_at_ms, std::cmp::Reverse(s.state), &s.source, &s.source_record_id)
}

/// The current state per purpose: the statement with the highest precedence.
pub fn current(statements: &[ConsentStatement]) -> BTreeMap<String, ConsentStatement> {
    let mut out: BTreeMap<String, ConsentStatement> = BTreeMap::new();
    for s in statements {
        match out.get(&s.purpose) {
            Some(kept) if precedence(kept) >= precedence(s) => {}
            _ => {
                out.insert(s.purpose.clone(), s.clone());
            }
        }
    }
    out
}

/// A purpose whose current state changed between two versions of a profile.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsentChange<'a> {
    pub purpose: &'a str,
    /// `None`: the profile had no statement for the purpose (new profile, or all removed).
    pub previous: Option<ConsentState>,
    pub current: Option<ConsentState>,
    /// The statement now in force (`None` when none is left).
    pub statement: Option<&'a ConsentStatement>,
}

/// Purposes whose state differs between `before` and `after`, in purpose order. A newer
/// statement repeating the same state is not a change.
pub fn changes<'a>(
    before: &'a BTreeMap<String, ConsentStatement>,
    after: &'a BTreeMap<String, ConsentStatement>,
) -> Vec<ConsentChange<'a>> {
    let purposes: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    purposes
        .into_iter()
        .filter_map(|p| {
            let (previous, current) = (before.get(p).map(|s| s.state), after.get(p).map(|s| s.state));
            (previous != current).then(|| ConsentChange { purpose: p, previous, current, statement: after.get(p) })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(source: &str, id: &str, at: i64, consents: &[(&str, &str)]) -> PreparedRecord {
        PreparedRecord {
            source: source.into(),
            source_record_id: id.into(),
            observed_at_ms: at,
            values: consents.iter().map(|(p, v)| (format!("{CONSENT_PREFIX}{p}"), v.to_string())).collect(),
            invalid: Vec::new(),
            display: Default::default(),
            features: Vec::new(),
        }
    }

    #[test]
    fn parses_clear_spellings_only() {
        for granted in ["true", "Granted", "YES", "1", "opt-in"] {
            assert_eq!(ConsentState::parse(granted), Some(ConsentState::Granted), "{granted}");
        }
        for withdrawn in ["false", "withdrawn", "No", "0", "optout"] {
            assert_eq!(ConsentState::parse(withdrawn), Some(ConsentState::Withdrawn), "{withdrawn}");
        }
        for unclear in ["maybe", "2", "", "truee", "granted!"] {
            assert_eq!(ConsentState::parse(unclear), None, "{unclear}");
        }
    }

    #[test]
    fn newest_statement_wins_whatever_the_order() {
        let records = [
            record("crm", "b", 300, &[("sms", "withdrawn")]),
            record("shop", "a", 100, &[("sms", "granted"), ("email_marketing", "granted")]),
            record("pos", "c", 200, &[("sms", "granted")]),
        ];
        let all = statements(&records);
        assert_eq!(all.iter().map(|s| s.observed_at_ms).collect::<Vec<_>>(), vec![100, 100, 200, 300]);
        let now = current(&all);
        assert_eq!(now["sms"].state, ConsentState::Withdrawn);
        assert_eq!(now["sms"].source, "crm");
        assert_eq!(now["email_marketing"].state, ConsentState::Granted);
        let reversed: Vec<ConsentStatement> = all.iter().rev().cloned().collect();
        assert_eq!(current(&reversed), now);
    }

    #[test]
    fn a_withdrawal_wins_a_tie() {
        let records = [record("a", "1", 100, &[("sms", "granted")]), record("b", "2", 100, &[("sms", "withdrawn")])];
        assert_eq!(current(&statements(&records))["sms"].state, ConsentState::Withdrawn);
    }

    #[test]
    fn changes_ignore_repeated_states() {
        let before = current(&statements(&[record("a", "1", 100, &[("sms", "granted"), ("profiling", "granted")])]));
        let after = current(&statements(&[
            record("a", "1", 100, &[("sms", "granted"), ("profiling", "granted")]),
            record("b", "2", 200, &[("sms", "granted"), ("email_marketing", "withdrawn")]),
            record("c", "3", 300, &[("profiling", "withdrawn")]),
        ]));
        let got: Vec<(&str, Option<ConsentState>, Option<ConsentState>)> =
            changes(&before, &after).iter().map(|c| (c.purpose, c.previous, c.current)).collect();
        assert_eq!(
            got,
            vec![
                ("email_marketing", None, Some(ConsentState::Withdrawn)),
                ("profiling", Some(ConsentState::Granted), Some(ConsentState::Withdrawn)),
            ]
        );
        assert_eq!(changes(&after, &BTreeMap::new()).len(), 3);
    }
}
