//! Tests of the model summaries built from versions (pure: no store).

use super::*;

fn version(owner: i64, name: &str, version: u32) -> ModelVersion {
    ModelVersion {
        name: name.into(),
        version,
        user_id: owner,
        job_id: format!("job-{name}-{version}"),
        weights_key: String::new(),
        card: Default::default(),
        val_accuracy: 0.5,
        created_at: Utc::now().into(),
    }
}

#[test]
fn a_summary_per_model_counts_its_versions_and_names_the_newest_whatever_the_order() {
    let listed = heads([
        version(1, "a", 2),
        version(2, "a", 1),
        version(1, "b", 1),
        version(1, "a", 3),
        version(1, "a", 1),
    ]);
    let got: Vec<(String, i64, u32, u32)> = listed
        .iter()
        .map(|h| {
            (
                h.id.clone(),
                h.summary.owner_id,
                h.summary.versions,
                h.summary.latest.version,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("m:1:a".to_owned(), 1, 3, 3),
            ("m:1:b".to_owned(), 1, 1, 1),
            ("m:2:a".to_owned(), 2, 1, 1),
        ]
    );
    assert!(listed.iter().all(|h| h.nkey == name_key(&h.summary.name)));
}
