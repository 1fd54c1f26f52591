//! A model's summary (what `models.list` pages) when two registry replicas list and withdraw
//! versions of the same model at once, against the real store; and the rule that keeps it true
//! whatever order the replicas' writes arrive in: each summary is written as of a revision taken
//! before counting, and never over a later one.

use std::time::Duration;

use futures::future::join_all;
use gantry_contracts::jobs::{JobDriver, JobRecord, ModelQuery, ModelVersion};
use gantry_contracts::Timestamp;
use gantry_registry::models::Models;
use gantry_registry::registry::Registry;
use gantry_registry::store::Store;
use gantry_registry::view::Timing;
use gantry_runtime::mongo::{number, replace_if_newer, Counter};
use gantry_testing::jobs::train_job;
use gantry_testing::TestStack;
use mongodb::bson::{doc, Document};

const LIMIT: Duration = Duration::from_secs(120);

/// A replica's model side: its own store connection, as a registry process has.
async fn replica(stack: &TestStack) -> Models {
    let db = mongodb::Client::with_uri_str(stack.store.uri())
        .await
        .unwrap()
        .database(&format!("{}registry", stack.prefix));
    let timing = Timing {
        interval: 5.0,
        misses: 3,
        retention: 3600.0,
    };
    Models::new(Registry::new(
        stack.client().clone(),
        Store::new(db),
        timing,
    ))
}

fn completion(job: &JobRecord) -> ModelVersion {
    ModelVersion {
        name: job.output_model.clone(),
        version: 0,
        user_id: job.user_id,
        job_id: job.job_id.clone(),
        weights_key: format!("weights/{}", job.job_id),
        card: Default::default(),
        val_accuracy: 0.5,
        created_at: Timestamp::now(),
    }
}

#[tokio::test]
async fn two_replicas_listing_versions_of_one_model_at_once_leave_its_true_summary() {
    TestStack::run(LIMIT, |stack| async move {
        let replicas = [replica(&stack).await, replica(&stack).await];
        let jobs: Vec<JobRecord> = (0..24)
            .map(|i| JobRecord::queued(&train_job(&format!("job-{i}"), 7, JobDriver::Cpu), "/d", 1))
            .collect();
        // Every completion at once, alternating between the replicas.
        let completions: Vec<ModelVersion> = jobs.iter().map(completion).collect();
        let listed = join_all(
            jobs.iter()
                .zip(&completions)
                .enumerate()
                .map(|(i, (job, done))| replicas[i % 2].list_version(job, done)),
        )
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .expect("every version listed");
        let mut numbers: Vec<u32> = listed.iter().map(|v| v.version).collect();
        numbers.sort_unstable();
        assert_eq!(numbers, (1..=24).collect::<Vec<_>>());

        for r in &replicas {
            let page = r.list(ModelQuery::default()).await.unwrap();
            assert_eq!(page.total, 1, "{page:?}");
            assert_eq!(page.models[0].versions, 24, "{page:?}");
            assert_eq!(page.models[0].latest.version, 24, "{page:?}");
        }

        // Every version withdrawn at once: the model leaves the listing, and stays gone.
        join_all(
            listed
                .iter()
                .enumerate()
                .map(|(i, v)| replicas[i % 2].withdraw(v)),
        )
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .expect("every version withdrawn");
        let page = replicas[0].list(ModelQuery::default()).await.unwrap();
        assert_eq!(page.total, 0, "{page:?}");
        assert!(page.models.is_empty(), "{page:?}");

        // A new version brings it back, counted from what is there.
        let job = JobRecord::queued(&train_job("job-again", 7, JobDriver::Cpu), "/d", 1);
        let again = replicas[1]
            .list_version(&job, &completion(&job))
            .await
            .unwrap();
        assert_eq!(again.version, 25);
        let page = replicas[0]
            .list(ModelQuery {
                user_id: Some(7),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!((page.total, page.models[0].versions), (1, 1), "{page:?}");
        assert_eq!(page.models[0].latest.version, 25);
    })
    .await;
}

#[tokio::test]
async fn a_write_of_an_earlier_revision_never_replaces_a_later_one() {
    TestStack::run(LIMIT, |stack| async move {
        let db = mongodb::Client::with_uri_str(stack.store.uri())
            .await
            .unwrap()
            .database(&format!("{}heads", stack.prefix));
        let coll = db.collection::<Document>("heads");
        let read = |id: &'static str| {
            let coll = coll.clone();
            async move { coll.find_one(doc! { "_id": id }).await.unwrap().unwrap() }
        };

        // Later first, then earlier: the later stays. (The store keeps small numbers as 32-bit.)
        assert!(replace_if_newer(&coll, "a", 2, doc! { "v": "two" })
            .await
            .unwrap());
        assert!(!replace_if_newer(&coll, "a", 1, doc! { "v": "one" })
            .await
            .unwrap());
        assert!(!replace_if_newer(&coll, "a", 2, doc! { "v": "two again" })
            .await
            .unwrap());
        assert_eq!(read("a").await.get_str("v").unwrap(), "two");
        assert!(replace_if_newer(&coll, "a", 3, doc! { "v": "three" })
            .await
            .unwrap());
        assert_eq!(number(read("a").await.get("rev")).unwrap(), 3);

        // A document written before revisions were kept counts as older than any.
        coll.insert_one(doc! { "_id": "b", "v": "old" })
            .await
            .unwrap();
        assert!(replace_if_newer(&coll, "b", 1, doc! { "v": "new" })
            .await
            .unwrap());
        assert_eq!(read("b").await.get_str("v").unwrap(), "new");

        // Many writers, each taking its revision from one counter: the last one taken stays,
        // in whatever order the writes arrive.
        let counter = Counter::new(&db, "counters", "c", "n");
        let revs = join_all((0..32).map(|_| counter.next())).await;
        let revs: Vec<i64> = revs.into_iter().map(Result::unwrap).collect();
        let top = *revs.iter().max().unwrap();
        join_all(revs.iter().rev().map(|&rev| {
            let coll = coll.clone();
            async move { replace_if_newer(&coll, "c", rev, doc! { "by": rev }).await }
        }))
        .await;
        assert_eq!(number(read("c").await.get("by")).unwrap(), top);
    })
    .await;
}
