//! Idempotency keys. Consumers remember the keys they have processed and drop repeats, so a key
//! must name one message of one feed of one store, and stay the same on every redelivery, also
//! after a restart. Outbox ids alone repeat across stores (every platform starts at 1), so the
//! key is derived from the store's secret, made once per store, as well: a version-8 UUID from
//! HMAC-SHA256(store key, feed, event id). Nothing needs storing, and the key reveals neither
//! the secret nor how many events the store holds.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// What separates these keys from other uses of the store's secret.
const PURPOSE: &[u8] = b"cdp feed idempotency keys";

/// Makes the idempotency keys of one store.
#[derive(Clone)]
pub struct EventKeys(Hmac<Sha256>);

impl EventKeys {
    /// `store_secret`: the random secret made once per store.
    pub fn new(store_secret: &[u8]) -> EventKeys {
        let derived = mac(store_secret).chain_update(PURPOSE).finalize().into_bytes();
        EventKeys(mac(&derived))
    }

    /// The key of `event_id` as sent by `feed`.
    pub fn key(&self, feed: &str, event_id: i64) -> String {
        let digest =
            self.0.clone().chain_update(feed.as_bytes()).chain_update([0]).chain_update(event_id.to_be_bytes()).finalize().into_bytes();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        bytes[6] = (bytes[6] & 0x0f) | 0x80; // version 8: custom
        bytes[8] = (bytes[8] & 0x3f) | 0x80; // RFC 9562 variant
        let hex = hex::encode(bytes);
        format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
    }
}

fn mac(key: &[u8]) -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_key_per_store_feed_and_event_always_the_same() {
        let store = EventKeys::new(b"secret of one store");
        let key = store.key("crm", 1);
        assert_eq!(key, EventKeys::new(b"secret of one store").key("crm", 1), "the same after a restart");
        assert_ne!(key, EventKeys::new(b"secret of another store").key("crm", 1));
        assert_ne!(key, store.key("crm", 2));
        assert_ne!(key, store.key("sms-gateway", 1));
        // a UUID, version 8, RFC 9562 variant
        let parts: Vec<&str> = key.split('-').collect();
        assert_eq!(parts.iter().map(|p| p.len()).collect::<Vec<_>>(), [8, 4, 4, 4, 12], "{key}");
        assert!(parts[2].starts_with('8') && matches!(&parts[3][..1], "8" | "9" | "a" | "b"), "{key}");
    }
}
