//! How long a value may be. Every length here counts characters (Unicode scalar values), not
//! bytes: `Zoë` is 3 characters whatever its encoding takes.
//!
//! Each attribute has a default limit, generous for any real value of it; a Source may change
//! it per attribute (`validation.maxLength`), never beyond [`MAX_VALUE_CHARS`].

use std::collections::BTreeMap;

use crate::crd::source::{MAX_VALUE_CHARS, ValidationRules};
use crate::identity::record::{CONSENT_PREFIX, IDENTIFIER_PREFIX};

/// The longest record id (the Source's `eventIdField`) accepted.
pub const MAX_RECORD_ID_CHARS: usize = 256;

/// The default limit of an attribute, in characters.
pub fn default_max_chars(attribute: &str) -> usize {
    match attribute {
        "givenName" | "middleName" | "familyName" | "city" | "country" => 100,
        // given, middle and family names together
        "fullName" => 300,
        "street" => 200,
        // RFC 5321: a path is at most 256 octets, its angle brackets included
        "email" => 254,
        // a formatted international number with an extension
        "phone" => 40,
        "postcode" => 16,
        // a date, or a timestamp with fractional seconds and an offset
        "birthDate" => 40,
        "gender" | "nationalId" => 64,
        a if a.starts_with(CONSENT_PREFIX) => 32,
        a if a.starts_with(IDENTIFIER_PREFIX) => 256,
        // `attributes.*`: free values such as a tier or a note
        _ => 1_000,
    }
}

/// Whether `value` has more than `max` characters. Counts at most `max + 1` of them, so the
/// answer costs no more for a megabyte than for a value just over the limit.
pub fn longer_than(value: &str, max: usize) -> bool {
    value.len() > max && value.chars().nth(max).is_some()
}

/// The limits of one Source: the defaults, overridden by its `validation.maxLength`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LengthLimits {
    overrides: BTreeMap<String, usize>,
}

impl LengthLimits {
    pub fn of(rules: &ValidationRules) -> Self {
        LengthLimits { overrides: rules.max_length.iter().map(|(a, n)| (a.clone(), *n as usize)).collect() }
    }

    /// The longest value of `attribute` this Source sends, in characters.
    pub fn max_chars(&self, attribute: &str) -> usize {
        // the CRD schema and the compile step keep overrides within the hard maximum; a
        // hand-written config must not lift it either
        self.overrides.get(attribute).copied().unwrap_or_else(|| default_max_chars(attribute)).min(MAX_VALUE_CHARS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_counted_in_characters() {
        assert!(!longer_than("Zoë", 3), "3 characters, 4 bytes");
        assert!(longer_than("Zoë!", 3));
        assert!(!longer_than("", 0));
        assert!(longer_than(&"é".repeat(200_000), 100));
    }

    #[test]
    fn a_source_overrides_the_defaults_within_the_hard_maximum() {
        let rules = ValidationRules {
            max_length: [("givenName".to_string(), 20), ("attributes.note".to_string(), 1_000_000)].into(),
            ..Default::default()
        };
        let limits = LengthLimits::of(&rules);
        assert_eq!(limits.max_chars("givenName"), 20);
        assert_eq!(limits.max_chars("attributes.note"), MAX_VALUE_CHARS);
        assert_eq!(limits.max_chars("familyName"), 100);
        assert_eq!(limits.max_chars("email"), 254);
        assert_eq!(limits.max_chars("identifiers.crmId"), 256);
        assert_eq!(limits.max_chars("attributes.tier"), 1_000);
    }

    /// `kubectl explain` shows the defaults: they must be the ones that apply.
    #[test]
    fn the_crd_states_every_default() {
        let schema = serde_json::to_value(schemars::schema_for!(ValidationRules)).unwrap();
        let doc = schema["properties"]["maxLength"]["description"].as_str().unwrap().split_whitespace().collect::<Vec<_>>().join(" ");
        let defaults = doc.split("their default: ").nth(1).unwrap().split(". ").next().unwrap();
        let mut listed = Vec::new();
        for group in defaults.split("; ") {
            let (max, names) = group.split_once(" for ").unwrap();
            for name in names.split(", ").flat_map(|n| n.split(" and ")) {
                assert_eq!(default_max_chars(&name.replace('*', "x")), max.parse::<usize>().unwrap(), "{name}");
                listed.push(name);
            }
        }
        for attribute in crate::identity::record::CANONICAL_ATTRIBUTES {
            assert!(listed.contains(attribute), "{attribute} is not in {doc:?}");
        }
        assert!(doc.contains(&format!("at most {MAX_VALUE_CHARS}.")), "{doc}");
        let fuzzy = crate::identity::engine::MAX_FUZZY_CHARS;
        assert!(doc.contains(&format!("longer than {fuzzy} characters")), "{doc}");
    }
}
