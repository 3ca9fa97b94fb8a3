//! A Kafka Source's consumer settings, from its spec and its Secrets.

use rdkafka::ClientConfig;

use crate::runtime::ops::{Secrets, StartError};
use crate::crd::source::{AutoOffsetReset, KafkaDelivery};

/// How often librdkafka reports its statistics (the partitions' high watermarks and committed
/// offsets, from which lag is read).
pub const STATISTICS_INTERVAL_MS: u32 = 1000;

/// The consumer group of a Source: its own `consumerGroup`, else `<platform>-<source>`.
pub fn group_id(platform: &str, source: &str, kafka: &KafkaDelivery) -> String {
    kafka.consumer_group.clone().unwrap_or_else(|| format!("{platform}-{source}"))
}

/// `security.protocol` for the Source's TLS and SASL settings.
fn security_protocol(kafka: &KafkaDelivery) -> &'static str {
    match (kafka.tls.is_some(), kafka.sasl.is_some()) {
        (false, false) => "plaintext",
        (true, false) => "ssl",
        (false, true) => "sasl_plaintext",
        (true, true) => "sasl_ssl",
    }
}

/// The consumer's librdkafka settings. Offsets are committed by intake itself, once what
/// precedes them is stored, never automatically.
pub fn consumer_config(group: &str, kafka: &KafkaDelivery, secrets: &Secrets) -> Result<ClientConfig, StartError> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", secrets.get(&kafka.bootstrap_servers_secret_ref)?.trim())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set(
            "auto.offset.reset",
            match kafka.auto_offset_reset {
                AutoOffsetReset::Earliest => "earliest",
                AutoOffsetReset::Latest => "latest",
            },
        )
        .set("statistics.interval.ms", STATISTICS_INTERVAL_MS.to_string())
        // a fetch the broker holds for want of new messages returns within this: it bounds the
        // wait of a message published meanwhile on a broker that does not answer at once
        .set("fetch.wait.max.ms", "100")
        // a replica that died gives up its partitions after this (librdkafka's default is 45 s)
        .set("session.timeout.ms", "10000")
        .set("security.protocol", security_protocol(kafka));
    if let Some(tls) = &kafka.tls {
        for (setting, secret) in [
            ("ssl.ca.pem", &tls.ca_secret_ref),
            ("ssl.certificate.pem", &tls.cert_secret_ref),
            ("ssl.key.pem", &tls.key_secret_ref),
        ] {
            if let Some(secret) = secret {
                config.set(setting, secrets.get(secret)?);
            }
        }
    }
    if let Some(sasl) = &kafka.sasl {
        config
            .set("sasl.mechanism", sasl.mechanism.name())
            .set("sasl.username", secrets.get(&sasl.username_secret_ref)?.trim())
            .set("sasl.password", secrets.get(&sasl.password_secret_ref)?.trim_end_matches(['\n', '\r']));
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::SecretKeyRef;
    use crate::crd::source::{KafkaSasl, KafkaTls, MissingEventId, SaslMechanism};

    fn secret(key: &str) -> SecretKeyRef {
        SecretKeyRef { name: "kafka".into(), key: key.into() }
    }

    fn kafka() -> KafkaDelivery {
        KafkaDelivery {
            topic: "tills".into(),
            bootstrap_servers_secret_ref: secret("servers"),
            consumer_group: None,
            auto_offset_reset: AutoOffsetReset::Earliest,
            max_in_flight: 10,
            missing_event_id: MissingEventId::Quarantine,
            tls: None,
            sasl: None,
            broker_ports: Vec::new(),
        }
    }

    fn secrets() -> Secrets {
        let values = [("servers", "b1:9093,b2:9093\n"), ("ca", "CA PEM"), ("user", "intake\n"), ("password", " s3cret \n")];
        Secrets::Values(values.into_iter().map(|(k, v)| (secret(k), v.to_string())).collect())
    }

    #[test]
    fn the_group_is_the_platforms_and_sources_unless_named() {
        let mut k = kafka();
        assert_eq!(group_id("retail", "pos", &k), "retail-pos");
        k.consumer_group = Some("legacy-pos".into());
        assert_eq!(group_id("retail", "pos", &k), "legacy-pos");
    }

    #[test]
    fn plain_settings_commit_by_hand_and_start_where_the_source_says() {
        let mut k = kafka();
        let config = consumer_config("g", &k, &secrets()).unwrap();
        assert_eq!(config.get("bootstrap.servers"), Some("b1:9093,b2:9093"));
        assert_eq!(config.get("enable.auto.commit"), Some("false"));
        assert_eq!(config.get("auto.offset.reset"), Some("earliest"));
        assert_eq!(config.get("security.protocol"), Some("plaintext"));
        k.auto_offset_reset = AutoOffsetReset::Latest;
        assert_eq!(consumer_config("g", &k, &secrets()).unwrap().get("auto.offset.reset"), Some("latest"));
    }

    #[test]
    fn tls_and_sasl_come_from_their_secrets() {
        let mut k = kafka();
        k.tls = Some(KafkaTls { ca_secret_ref: Some(secret("ca")), ..KafkaTls::default() });
        let config = consumer_config("g", &k, &secrets()).unwrap();
        assert_eq!((config.get("security.protocol"), config.get("ssl.ca.pem")), (Some("ssl"), Some("CA PEM")));
        assert_eq!(config.get("ssl.certificate.pem"), None);
        k.sasl = Some(KafkaSasl {
            mechanism: SaslMechanism::ScramSha512,
            username_secret_ref: secret("user"),
            password_secret_ref: secret("password"),
        });
        let config = consumer_config("g", &k, &secrets()).unwrap();
        assert_eq!(config.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(config.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(config.get("sasl.username"), Some("intake"));
        assert_eq!(config.get("sasl.password"), Some(" s3cret "), "a password keeps its spaces, not a final newline");
        k.tls = None;
        assert_eq!(consumer_config("g", &k, &secrets()).unwrap().get("security.protocol"), Some("sasl_plaintext"));
        k.sasl.as_mut().unwrap().password_secret_ref = secret("missing");
        assert!(consumer_config("g", &k, &secrets()).is_err(), "a missing Secret key is an error, not an empty password");
    }
}
