//! What the trainer tells the cluster about a run, in the contract's terms: `Progress` events
//! from the training library's progress callbacks, the metrics row of a checkpointed epoch, and
//! the model card as stored with a model version.

use gantry_contracts::jobs::{self as contract, JobEventKind, TrainJob};
use gantry_runtime::dataset::SnapshotHash;
use gantry_training::{ModelCard, Progress, ProgressKind};

/// The contract's metrics row from the training library's (no validation split reads as 0).
pub fn epoch_metrics(m: &gantry_training::EpochMetrics) -> contract::EpochMetrics {
    contract::EpochMetrics {
        epoch: m.epoch,
        loss: m.loss,
        train_accuracy: m.train_accuracy,
        val_accuracy: m.val_accuracy.unwrap_or(0.0),
    }
}

/// The `Progress` event worth publishing for a training callback, if any: `Report`s (at most
/// every `report_interval_ms`) and `EpochEnd`s, never the per-step calls. `last_val` is the
/// validation accuracy of the last finished epoch.
pub fn progress_event(p: &Progress, last_val: Option<f64>) -> Option<JobEventKind> {
    if p.kind == ProgressKind::Step {
        return None;
    }
    Some(JobEventKind::Progress {
        epoch: p.epoch,
        epochs: p.epochs,
        step: p.step,
        total_steps: p.total_steps,
        loss: finite(p.loss),
        train_accuracy: finite(p.train_accuracy),
        val_accuracy: p.val_accuracy.or(last_val).map(finite),
        samples_per_sec: finite(p.samples_per_sec),
        eta_seconds: finite(p.eta_seconds),
    })
}

/// JSON has no NaN: a diverging loss reads 0 in the event (the run fails right after).
fn finite(x: f64) -> f64 {
    if x.is_finite() {
        x
    } else {
        0.0
    }
}

/// The model card as stored: the training library's card with the job's description, its
/// dataset snapshot's hash (where the library put the content hash, so the card and the job name
/// the dataset alike), job id and node, in the contract's form (the same fields; its numbers
/// are f64).
pub fn model_card(
    mut card: ModelCard,
    job: &TrainJob,
    snapshot: &SnapshotHash,
    node: &str,
) -> Result<gantry_contracts::jobs::ModelCard, serde_json::Error> {
    card.description = job.description.clone();
    card.dataset_hash = snapshot.to_string();
    card.job_id = job.job_id.clone();
    card.node = node.to_owned();
    serde_json::from_value(serde_json::to_value(card)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use gantry_contracts::jobs::JobDriver;

    fn progress(kind: ProgressKind, val: Option<f64>) -> Progress {
        Progress {
            kind,
            epoch: 2,
            epochs: 3,
            step: 7,
            total_steps: 9,
            step_in_epoch: 1,
            steps_per_epoch: 3,
            loss: 0.5,
            train_accuracy: 0.75,
            val_accuracy: val,
            samples_per_sec: 120.0,
            eta_seconds: f64::NAN,
        }
    }

    #[test]
    fn only_reports_and_epoch_ends_become_events() {
        assert!(progress_event(&progress(ProgressKind::Step, None), None).is_none());
        let Some(JobEventKind::Progress {
            epoch,
            epochs,
            step,
            total_steps,
            loss,
            train_accuracy,
            val_accuracy,
            eta_seconds,
            ..
        }) = progress_event(&progress(ProgressKind::Report, None), Some(0.6))
        else {
            panic!("a report is an event")
        };
        assert_eq!((epoch, epochs, step, total_steps), (2, 3, 7, 9));
        assert_eq!((loss, train_accuracy), (0.5, 0.75));
        assert_eq!(
            val_accuracy,
            Some(0.6),
            "a report carries the last epoch's validation accuracy"
        );
        assert_eq!(eta_seconds, 0.0, "no NaN reaches JSON");
        let Some(JobEventKind::Progress { val_accuracy, .. }) =
            progress_event(&progress(ProgressKind::EpochEnd, Some(0.9)), Some(0.6))
        else {
            panic!("an epoch end is an event")
        };
        assert_eq!(val_accuracy, Some(0.9));
    }

    /// A job of the defaults, on the snapshot `ab..ab`.
    fn job() -> TrainJob {
        TrainJob {
            job_id: "j1".into(),
            user_id: 7,
            output_model: "shapes".into(),
            description: "three shapes".into(),
            driver: JobDriver::Any,
            dataset_hash: "ab".repeat(32),
            classes: vec!["a".into(), "b".into()],
            params: Default::default(),
            submitted_at: Utc::now(),
        }
    }

    #[test]
    fn the_card_names_the_job_its_snapshot_and_the_node() {
        let job = job();
        let card = ModelCard {
            card_version: 1,
            architecture: "arch".into(),
            base_width: 16,
            classes: vec!["a".into(), "b".into()],
            image_size: 32,
            normalization: Default::default(),
            input: "x".into(),
            metrics: vec![],
            training: gantry_training::TrainingSummary {
                epochs: 1,
                batch_size: 8,
                learning_rate: 0.01,
                lr_schedule: "cosine".into(),
                seed: 0,
                augment: false,
                hflip: false,
                bf16: false,
                best_epoch: None,
                train_samples: 8,
                val_samples: 2,
                device: "Cpu".into(),
                resumed_from_epoch: None,
            },
            description: String::new(),
            dataset_hash: "content".into(),
            job_id: String::new(),
            node: String::new(),
        };
        let snapshot = SnapshotHash::parse(&job.dataset_hash).unwrap();
        let v = serde_json::to_value(model_card(card, &job, &snapshot, "node-a").unwrap()).unwrap();
        assert_eq!(v["description"], "three shapes");
        assert_eq!(v["dataset_hash"], job.dataset_hash);
        assert_eq!(v["job_id"], "j1");
        assert_eq!(v["node"], "node-a");
        assert_eq!(v["classes"], serde_json::json!(["a", "b"]));
    }
}
