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

/// The samples with no peak window in force, whatever the day the tests run: the sample's
/// dated windows move a month ahead (keeping their length) and its weekly rush is left out.
pub fn put_samples_out_of_peak(fake: &FakeApi) {
    put_samples(fake);
    let ahead = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * 30);
    fake.modify::<cdp_operator::crd::ScalingPolicy>("default", "retail", |p| {
        p.spec.peak_windows.retain(|w| w.schedule.is_none());
        for w in &mut p.spec.peak_windows {
            let (start, end): (jiff::Timestamp, jiff::Timestamp) =
                (w.start.as_deref().unwrap().parse().unwrap(), w.end.as_deref().unwrap().parse().unwrap());
            w.start = Some(ahead.to_string());
            w.end = Some((ahead + start.duration_until(end)).to_string());
        }
    });
}
