//! What every data-plane service shares, below the services so that none imports another:
//! configuration, secrets and tokens, the JSON error envelope, health, metrics and load
//! reports, serving until a shutdown signal, signing outbound requests and the backoff of
//! their retries.

pub mod auth;
pub mod load;
pub mod ops;
pub mod outage;
pub mod outbound;
pub mod sign;

/// Delay before attempt `attempts + 1`: exponential from the policy's initial backoff, capped
/// at its maximum, with equal jitter (`jitter` in `[0, 1)`) so failing sends spread out.
pub fn backoff(policy: &crate::crd::feed::DeliveryPolicy, attempts: i64, jitter: f64) -> std::time::Duration {
    let exponent = (attempts.max(1) - 1).min(30) as i32;
    let base = (f64::from(policy.initial_backoff_seconds) * 2f64.powi(exponent)).min(policy.max_backoff_seconds.into());
    std::time::Duration::from_secs_f64(base * (0.5 + 0.5 * jitter.clamp(0.0, 1.0)))
}
