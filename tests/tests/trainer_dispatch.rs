//! How jobs reach a trainer, over the real binaries: a node with one worker slot, sent jobs on
//! both of its consumers (its backend's and `any`) at once, runs one at a time and completes
//! every job exactly once on its first delivery (it never takes a job it cannot start, so none is
//! handed back); a dataset folder submitted again after a file in it changed trains on the new
//! content, though the api remembers the folder's hash.

use std::path::Path;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use gantry_testing::{kinds, TestStack};
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(300);

fn time(job: &Value, field: &str) -> DateTime<Utc> {
    job[field]
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("{field} of {job:#}"))
}

#[tokio::test]
async fn one_slot_runs_jobs_from_both_consumers_one_at_a_time_each_once() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.start_core().await;
        stack.shapes("shapes", 4, 3);
        // Queued before the node joins: both consumers hold jobs when it first looks.
        let mut ids = Vec::new();
        for i in 0..6 {
            let driver = if i % 2 == 0 { "cpu" } else { "any" };
            ids.push(
                stack
                    .submit(json!({"output_model": format!("one-{i}"), "train_path": "/shapes", "epochs": 1, "image_size": 16, "batch_size": 4, "driver": driver}))
                    .await,
            );
        }
        let trainer = stack.join_trainer("solo").await;
        // And more while it works through them.
        for i in 6..10 {
            let driver = if i % 2 == 0 { "cpu" } else { "any" };
            ids.push(
                stack
                    .submit(json!({"output_model": format!("one-{i}"), "train_path": "/shapes", "epochs": 1, "image_size": 16, "batch_size": 4, "driver": driver}))
                    .await,
            );
        }
        let mut jobs = Vec::new();
        for id in &ids {
            let job = stack.wait_final(id, Duration::from_secs(120)).await;
            assert_eq!(job["status"], "completed", "{job:#}\n{}", trainer.output());
            assert_eq!(job["node"], "solo");
            // Taken once and never handed back: no delivery spent.
            assert_eq!(job["delivery"], 1, "{job:#}");
            let events = stack.events(id).await;
            let k = kinds(&events);
            assert_eq!(
                k.iter().filter(|k| **k == "started").count(),
                1,
                "one start: {k:?}"
            );
            assert_eq!(
                k.iter().filter(|k| **k == "completed").count(),
                1,
                "one completion: {k:?}"
            );
            jobs.push(job);
        }
        // The registry applies the node's events in the order it sent them: with one slot, each
        // job ends before the next starts.
        jobs.sort_by_key(|j| time(j, "started_at"));
        for pair in jobs.windows(2) {
            assert!(
                time(&pair[0], "ended_at") <= time(&pair[1], "started_at"),
                "two jobs ran at once on one slot: {:#} and {:#}",
                pair[0],
                pair[1]
            );
        }
        assert_eq!(stack.queued_messages().await, 0);
    })
    .await;
}

/// Date every file under `dir` an hour back, as a folder copied in long ago would be.
fn settle(dir: &Path) {
    let past = SystemTime::now() - Duration::from_secs(3600);
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            settle(&path);
        } else {
            std::fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(past)
                .unwrap();
        }
    }
}

#[tokio::test]
async fn a_folder_submitted_again_after_a_file_changed_trains_on_the_new_content() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.start_core().await;
        stack.shapes("shapes", 4, 5);
        let folder = stack.data_root.path().join("shapes");
        settle(&folder);
        let trainer = stack.join_trainer("trainer-a").await;
        let body = json!({"output_model": "again", "train_path": "/shapes", "epochs": 1, "image_size": 16, "batch_size": 4});
        let (s, body, trainer) = (&stack, &body, &trainer);
        let run = move || async move {
            let id = s.submit(body.clone()).await;
            let job = s.wait_final(&id, Duration::from_secs(120)).await;
            assert_eq!(job["status"], "completed", "{job:#}\n{}", trainer.output());
            job["dataset_hash"].as_str().expect("a dataset hash").to_owned()
        };
        let first = run().await;
        assert_eq!(run().await, first, "the same folder, the same snapshot");

        // One image replaced by another (a file of the other seed's dataset), its modified time
        // put back: only its content, length and changed time say so.
        stack.shapes("other", 4, 6);
        let changed = std::fs::read_dir(folder.join("circle"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .min()
            .expect("an image");
        let modified = std::fs::metadata(&changed).unwrap().modified().unwrap();
        let name = changed.file_name().unwrap();
        let replacement = stack.data_root.path().join("other/circle").join(name);
        std::fs::copy(&replacement, &changed).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&changed)
            .unwrap()
            .set_modified(modified)
            .unwrap();
        let second = run().await;
        assert_ne!(second, first, "the changed folder is a new snapshot");
        let mut cached: Vec<String> = std::fs::read_dir(stack.cache_dir("trainer-a").join("datasets"))
            .unwrap()
            .flatten()
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .collect();
        cached.sort();
        let mut want = vec![first.clone(), second.clone()];
        want.sort();
        assert_eq!(cached, want, "the node trained on both snapshots");
    })
    .await;
}
