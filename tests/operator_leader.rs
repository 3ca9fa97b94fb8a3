//! Leader election on a Lease: one holder at a time, takeover only after expiry.

mod support;

use std::time::Duration;

use cdp_operator::operator::leader::{LeaderConfig, release, try_acquire};
use k8s_openapi::api::coordination::v1::Lease;
use support::fake_api::FakeApi;

fn candidate(identity: &str) -> LeaderConfig {
    LeaderConfig {
        namespace: "cdp-system".into(),
        lease_name: "cdp-operator-leader".into(),
        identity: identity.into(),
        lease_duration: Duration::from_secs(15),
        renew_every: Duration::from_secs(2),
    }
}

fn at(second: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_second(1_800_000_000 + second).unwrap()
}

#[tokio::test]
async fn one_leader_at_a_time_and_takeover_after_expiry() {
    let (fake, client) = FakeApi::new();
    let (a, b) = (candidate("a"), candidate("b"));
    assert!(try_acquire(&client, &a, at(0)).await.unwrap(), "first candidate creates the lease");
    assert!(!try_acquire(&client, &b, at(1)).await.unwrap(), "a live lease is not taken");
    assert!(try_acquire(&client, &a, at(10)).await.unwrap(), "the holder renews");
    assert!(!try_acquire(&client, &b, at(24)).await.unwrap(), "renewed at 10, valid until 25");
    assert!(try_acquire(&client, &b, at(26)).await.unwrap(), "expired: b takes over");
    let lease: Lease = fake.get("cdp-system", "cdp-operator-leader").unwrap();
    let spec = lease.spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("b"));
    assert_eq!(spec.lease_transitions, Some(1));
    assert!(!try_acquire(&client, &a, at(27)).await.unwrap(), "the old leader sees it lost");
}

#[tokio::test]
async fn racing_candidates_do_not_both_win() {
    let (fake, client) = FakeApi::new();
    assert!(try_acquire(&client, &candidate("a"), at(0)).await.unwrap());
    // b read the expired lease, but a renewed in between: b's compare-and-swap must fail.
    fake.conflict_next_update("/leases/cdp-operator-leader");
    assert!(!try_acquire(&client, &candidate("b"), at(100)).await.unwrap());
    let lease: Lease = fake.get("cdp-system", "cdp-operator-leader").unwrap();
    assert_eq!(lease.spec.unwrap().holder_identity.as_deref(), Some("a"));
}

#[tokio::test]
async fn released_lease_is_taken_at_once() {
    let (_fake, client) = FakeApi::new();
    assert!(try_acquire(&client, &candidate("a"), at(0)).await.unwrap());
    release(&client, &candidate("b")).await.unwrap();
    assert!(!try_acquire(&client, &candidate("b"), at(1)).await.unwrap(), "only the holder can release");
    release(&client, &candidate("a")).await.unwrap();
    assert!(try_acquire(&client, &candidate("b"), at(2)).await.unwrap(), "no need to wait for expiry");
}
