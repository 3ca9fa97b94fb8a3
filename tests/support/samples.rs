//! The sample platform (`config/samples`) loaded into the API fake.
#![allow(dead_code)] // each integration-test binary uses a different subset of these helpers

use std::path::Path;

use super::fake_api::FakeApi;

/// Put every sample resource into `fake`, the platform last (members exist when it reconciles).
pub fn put_samples(fake: &FakeApi) {
    let manifests = cdp_operator::pipeline::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config/samples")).unwrap();
    manifests.secrets.iter().for_each(|s| {
        fake.put(s);
    });
    manifests.sources.iter().for_each(|s| {
        fake.put(s);
    });
    manifests.matching_policies.iter().for_each(|p| {
        fake.put(p);
    });
    manifests.feeds.iter().for_each(|f| {
        fake.put(f);
    });
    manifests.scaling_policies.iter().for_each(|p| {
        fake.put(p);
    });
    fake.put(&manifests.platforms[0]);
}
