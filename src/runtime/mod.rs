//! What every data-plane service shares, below the services so that none imports another:
//! configuration, secrets and tokens, the JSON error envelope, health, metrics and load
//! reports, serving until a shutdown signal.

pub mod auth;
pub mod load;
pub mod ops;
