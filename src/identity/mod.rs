//! Identity resolution: a pure, storage-agnostic core.
//!
//! Values in, decisions out: bound their lengths ([`limits`]), normalise ([`normalise`]),
//! compile a [`MatchingModel`] into an [`Engine`], prepare records, block, compare and score
//! pairs (Fellegi–Sunter, with deterministic rules and never-merge constraints), resolve a
//! record against candidate profiles, re-cluster after an unmerge, compute golden records by
//! survivorship, explain every link, and train m/u/λ by EM. No I/O, no async, no storage.
//!
//! [`MatchingModel`]: crate::crd::matching::MatchingModel

pub mod consent;
pub mod defaults;
pub mod engine;
pub mod eval;
pub mod golden;
pub mod limits;
pub mod normalise;
pub mod record;
pub mod resolve;
pub mod stream;
pub mod train;

pub use defaults::default_model;
pub use engine::{
    ComparisonEvidence, Engine, ModelError, PairDecision, PairEvidence, PairScore, PreparedRecord,
};
pub use golden::{GoldenProfile, GoldenValue, SourcedRecord, golden};
pub use limits::LengthLimits;
pub use normalise::{NormaliseError, NormaliseFlags, normalise, normalise_with};
pub use record::CanonicalRecord;
pub use resolve::{
    CandidateProfile, Outcome, ProfileLink, ProfileScore, Resolution, ReviewItem, ReviewReason,
    Shortfall, Unlinked, select_candidates,
};
pub use stream::{StreamMatcher, StreamStats};
pub use train::{TrainOptions, TrainReport, TrainedModel, train, train_with};

#[cfg(test)]
mod tests;
