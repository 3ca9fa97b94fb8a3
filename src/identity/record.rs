//! The canonical record: what a touchpoint said, after its Source's field mapping.
//!
//! Ingest builds it; the identity core normalises and resolves it. Attribute names are the
//! canonical vocabulary below, or a prefixed name (`identifiers.loyaltyId`,
//! `attributes.tier`, `consents.sms`).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Canonical person attributes every Source may map to.
pub const CANONICAL_ATTRIBUTES: &[&str] = &[
    "givenName",
    "middleName",
    "familyName",
    "fullName",
    "email",
    "phone",
    "birthDate",
    "gender",
    "nationalId",
    "street",
    "postcode",
    "city",
    "country",
];

/// Prefixes for open-ended attribute families.
pub const IDENTIFIER_PREFIX: &str = "identifiers.";
pub const FREE_ATTRIBUTE_PREFIX: &str = "attributes.";
pub const CONSENT_PREFIX: &str = "consents.";

/// Whether `name` is a canonical attribute or a well-formed prefixed one.
pub fn is_known_attribute(name: &str) -> bool {
    if CANONICAL_ATTRIBUTES.contains(&name) {
        return true;
    }
    [IDENTIFIER_PREFIX, FREE_ATTRIBUTE_PREFIX, CONSENT_PREFIX]
        .iter()
        .filter_map(|prefix| name.strip_prefix(prefix))
        .any(|rest| {
            let mut chars = rest.chars();
            chars.next().is_some_and(|c| c.is_ascii_alphabetic())
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        })
}

/// Attributes indexed for lookup and search (as keyed hashes, never as plain values), besides
/// every `identifiers.*` attribute.
const LOOKUP_ATTRIBUTES: &[&str] = &["email", "phone", "nationalId", "familyName", "givenName", "postcode"];

/// The index key of a normalised identifier value, shared by the matcher (write), the API
/// (lookup) and the blocking keys that block on that identifier alone.
pub fn lookup_key(attribute: &str, normalised: &str) -> String {
    format!("={attribute}:{normalised}")
}

pub fn is_lookup_attribute(attribute: &str) -> bool {
    LOOKUP_ATTRIBUTES.contains(&attribute) || attribute.starts_with(IDENTIFIER_PREFIX)
}

/// One record from one source, in canonical attribute names, values as the source sent them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CanonicalRecord {
    /// Source name (the `Source` resource's name).
    pub source: String,
    /// The source's own id for this record or event; with `source` it makes redeliveries idempotent.
    pub source_record_id: String,
    /// When the source observed it, milliseconds since the Unix epoch.
    pub observed_at_ms: i64,
    /// Canonical attribute → raw value. Empty values are absent, not empty strings.
    pub attributes: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_attributes() {
        assert!(is_known_attribute("email"));
        assert!(is_known_attribute("identifiers.loyaltyId"));
        assert!(is_known_attribute("attributes.tier"));
        assert!(is_known_attribute("consents.sms"));
        assert!(!is_known_attribute("identifiers."));
        assert!(!is_known_attribute("mail"));
        assert!(!is_known_attribute("attributes.9lives"));
        assert!(!is_known_attribute("identifiers.a b"));
    }
}
