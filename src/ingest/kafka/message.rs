//! A Kafka message → the payloads intake takes, and which offsets may be committed. Pure.

use std::collections::BTreeMap;

use serde_json::Value;

use super::super::mapping::Received;
use crate::store::{FieldError, MessageOrigin};

/// The largest message taken, as the HTTP intake's largest request: a larger one is quarantined
/// unread.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Where a message sits in its topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Coordinates {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

impl Coordinates {
    fn origin(&self, index: Option<usize>) -> MessageOrigin {
        MessageOrigin { topic: self.topic.clone(), partition: self.partition, offset: self.offset, index }
    }
}

/// An unreadable message, quarantined as `payload` (what can be shown of it) with `error`.
fn poison(at: &Coordinates, payload: Value, code: &str, message: String) -> Vec<Received> {
    let error = FieldError { field: "$".into(), code: code.into(), message };
    vec![Received { payload, origin: Some(at.origin(None)), unreadable: Some(error) }]
}

/// The payloads of one message: one record for a JSON object (or any other JSON value, which
/// mapping then refuses), one per element for an array. A message that is empty, too large,
/// not UTF-8 or not JSON is one unreadable payload, quarantined with its coordinates, so that
/// it never holds up its partition. An empty array is no payload at all.
pub fn payloads(body: Option<&[u8]>, at: &Coordinates) -> Vec<Received> {
    let body = match body {
        None | Some([]) => return poison(at, Value::Null, "emptyMessage", "the message has no value".into()),
        Some(body) if body.len() > MAX_MESSAGE_BYTES => {
            let message = format!("{} bytes, over the limit of {MAX_MESSAGE_BYTES} bytes; not kept", body.len());
            return poison(at, Value::Null, "tooLarge", message);
        }
        Some(body) => body,
    };
    let text = match std::str::from_utf8(body) {
        Ok(text) => text,
        Err(e) => {
            let shown = String::from_utf8_lossy(body).into_owned();
            return poison(at, Value::String(shown), "notUtf8", format!("not UTF-8 text: {e}"));
        }
    };
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Array(records)) => records
            .into_iter()
            .enumerate()
            .map(|(index, payload)| Received { payload, origin: Some(at.origin(Some(index))), unreadable: None })
            .collect(),
        Ok(payload) => vec![Received { payload, origin: Some(at.origin(None)), unreadable: None }],
        Err(e) => poison(at, Value::String(text.to_string()), "invalidJson", format!("not JSON: {e}")),
    }
}

/// The offsets a consumer commits, per partition: the offset after the last message whose
/// records, and every record before them, are stored. Never moves back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommitPoints {
    next: BTreeMap<i32, i64>,
}

impl CommitPoints {
    /// `stored` (a batch whose every record is stored, all batches before it too) moves the
    /// commit points past its messages; returns the partitions whose point moved, and where to.
    pub fn stored<'a>(&mut self, stored: impl IntoIterator<Item = &'a Coordinates>) -> BTreeMap<i32, i64> {
        let mut moved = BTreeMap::new();
        for at in stored {
            let next = self.next.entry(at.partition).or_insert(0);
            if at.offset + 1 > *next {
                *next = at.offset + 1;
                moved.insert(at.partition, *next);
            }
        }
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(partition: i32, offset: i64) -> Coordinates {
        Coordinates { topic: "tills".into(), partition, offset }
    }

    #[test]
    fn an_object_is_one_record_and_an_array_one_per_element() {
        let one = payloads(Some(br#"{"id": "a"}"#), &at(2, 40));
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].payload, serde_json::json!({"id": "a"}));
        assert_eq!(one[0].origin.as_ref().unwrap().event_id(), "tills/2/40");
        assert!(one[0].unreadable.is_none());
        let many = payloads(Some(br#"[{"id": "a"}, {"id": "b"}]"#), &at(0, 7));
        let ids: Vec<String> = many.iter().map(|r| r.origin.as_ref().unwrap().event_id()).collect();
        assert_eq!(ids, ["tills/0/7/0", "tills/0/7/1"]);
        assert!(payloads(Some(b"[]"), &at(0, 8)).is_empty(), "an empty array holds no record");
    }

    #[test]
    fn unreadable_messages_are_one_quarantined_payload_with_their_coordinates() {
        let code = |body: Option<&[u8]>| {
            let got = payloads(body, &at(1, 9));
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].origin, Some(MessageOrigin { topic: "tills".into(), partition: 1, offset: 9, index: None }));
            let error = got[0].unreadable.clone().expect("unreadable");
            (error.code, got[0].payload.clone())
        };
        assert_eq!(code(None), ("emptyMessage".to_string(), Value::Null));
        assert_eq!(code(Some(b"")), ("emptyMessage".to_string(), Value::Null));
        assert_eq!(code(Some(b"{not json")), ("invalidJson".to_string(), Value::String("{not json".into())));
        assert_eq!(code(Some(b"\xff\xfe{}")).0, "notUtf8");
        let huge = vec![b' '; MAX_MESSAGE_BYTES + 1];
        assert_eq!(code(Some(&huge)), ("tooLarge".to_string(), Value::Null), "not kept: only its size is told");
        // a scalar is JSON: mapping refuses it (not an object), with the same coordinates
        let scalar = payloads(Some(b"42"), &at(1, 9));
        assert!(scalar[0].unreadable.is_none());
    }

    #[test]
    fn commit_points_follow_stored_messages_and_never_move_back() {
        let mut points = CommitPoints::default();
        let batch = [at(0, 3), at(1, 10), at(0, 4)];
        assert_eq!(points.stored(&batch), BTreeMap::from([(0, 5), (1, 11)]), "nothing from partition 2: not committed");
        // a partition read again from an earlier offset (after a rebalance) does not move back
        assert_eq!(points.stored(&[at(0, 2), at(1, 11)]), BTreeMap::from([(1, 12)]));
        assert_eq!(points.stored(&[at(0, 4)]), BTreeMap::new());
        assert_eq!(points.stored(&[at(0, 5)]), BTreeMap::from([(0, 6)]));
    }
}
