//! Every transition of the job lifecycle, and every refusal.

use super::*;
use chrono::Utc;
use gantry_contracts::jobs::{JobDriver, TrainJob, TrainParams};

fn queued(tokens: i64) -> JobRecord {
    let job = TrainJob {
        job_id: "job-1".into(),
        user_id: 7,
        output_model: "M".into(),
        description: String::new(),
        driver: JobDriver::Any,
        dataset_hash: "h".into(),
        classes: vec!["a".into(), "b".into()],
        params: TrainParams::default(),
        submitted_at: Utc::now(),
    };
    JobRecord::queued(&job, "/d", tokens)
}

fn started(delivery: u64) -> Transition {
    Transition::Started {
        delivery,
        node: "n".into(),
        node_id: "id".into(),
    }
}

fn progress(delivery: u64) -> Transition {
    let event = JobEvent {
        job_id: "job-1".into(),
        delivery,
        at: Utc::now(),
        kind: JobEventKind::Progress {
            epoch: 1,
            epochs: 2,
            step: 3,
            total_steps: 6,
            loss: 0.5,
            train_accuracy: 0.7,
            val_accuracy: None,
            samples_per_sec: 100.0,
            eta_seconds: 1.0,
        },
    };
    Transition::from_event(&event, None)
}

fn model() -> ModelVersion {
    ModelVersion {
        name: "M".into(),
        version: 3,
        user_id: 7,
        job_id: "job-1".into(),
        weights_key: "jobs/job-1/1/model.safetensors".into(),
        card: Default::default(),
        val_accuracy: 0.9,
        created_at: Utc::now().into(),
    }
}

fn running(delivery: u64) -> JobRecord {
    let mut job = queued(100);
    apply(&mut job, &started(delivery)).unwrap();
    job
}

#[test]
fn a_start_runs_the_job_on_the_node_and_delivery() {
    let job = running(2);
    assert_eq!(job.status, JobStatus::Running);
    assert_eq!(job.node.as_deref(), Some("n"));
    assert_eq!(job.node_id.as_deref(), Some("id"));
    assert_eq!(job.delivery, 2);
}

#[test]
fn progress_is_kept_and_runs_a_job_whose_start_was_missed() {
    let mut job = queued(0);
    let e = apply(&mut job, &progress(1)).unwrap();
    assert_eq!(job.status, JobStatus::Running);
    assert_eq!(job.progress.as_ref().map(|p| p.epoch), Some(1));
    assert_eq!(e, Effects::default());
}

#[test]
fn checkpoints_only_move_forward() {
    let mut job = running(1);
    for epoch in [2, 1] {
        apply(&mut job, &Transition::Checkpoint { delivery: 1, epoch }).unwrap();
    }
    assert_eq!(job.checkpoint_epoch, 2);
}

#[test]
fn a_completion_ends_the_job_with_its_listed_version() {
    let mut job = running(1);
    let e = apply(
        &mut job,
        &Transition::Completed {
            delivery: 1,
            model: Box::new(model()),
        },
    )
    .unwrap();
    assert_eq!(job.status, JobStatus::Completed);
    assert_eq!(job.model.as_ref().map(|m| m.version), Some(3));
    assert!(e.ended && !e.stop_trainers && e.publish.is_none());
    let s = settlement(&job).unwrap();
    assert_eq!(s.list.map(|m| m.version), Some(3));
    assert!(!s.refund);
}

#[test]
fn a_failure_from_the_trainer_is_refunded() {
    let mut job = running(1);
    let e = apply(
        &mut job,
        &Transition::Failed {
            delivery: 1,
            error: "bad data".into(),
            kind: FailureKind::Data,
        },
    )
    .unwrap();
    assert!(e.ended && e.publish.is_none());
    assert_eq!(job.status, JobStatus::Failed);
    assert_eq!(job.failure_kind, Some(FailureKind::Data));
    assert!(job.refund_due);
    assert!(settlement(&job).unwrap().refund);
}

#[test]
fn a_trainers_cancel_ends_the_job_without_a_refund_of_its_own() {
    let mut job = running(1);
    let e = apply(&mut job, &Transition::Cancelled { delivery: 1 }).unwrap();
    assert!(e.ended);
    assert_eq!(job.status, JobStatus::Cancelled);
    assert!(!settlement(&job).unwrap().refund);
}

#[test]
fn cancelling_a_queued_job_refunds_it_and_announces_the_end() {
    let mut job = queued(100);
    let e = apply(&mut job, &Transition::CancelRequested { user_id: Some(7) }).unwrap();
    assert_eq!(job.status, JobStatus::Cancelled);
    assert_eq!(job.error.as_deref(), Some("cancelled"));
    assert!(e.ended && e.stop_trainers);
    assert_eq!(e.publish, Some(JobEventKind::Cancelled));
    assert!(settlement(&job).unwrap().refund);
    assert!(refund_reason(&job).contains("before training started"));
}

#[test]
fn cancelling_a_running_job_keeps_the_charge_and_lets_the_trainer_announce() {
    let mut job = running(1);
    let e = apply(&mut job, &Transition::CancelRequested { user_id: None }).unwrap();
    assert!(e.ended && e.stop_trainers && e.publish.is_none());
    assert!(!job.refund_due);
}

#[test]
fn someone_elses_cancel_is_refused() {
    let mut job = queued(100);
    let before = job.clone();
    let r = apply(&mut job, &Transition::CancelRequested { user_id: Some(8) });
    assert_eq!(r, Err(Refused::NotOwner));
    assert_eq!(job, before);
}

#[test]
fn a_cancel_that_loses_the_race_with_completion_is_refused() {
    let mut job = running(1);
    apply(
        &mut job,
        &Transition::Completed {
            delivery: 1,
            model: Box::new(model()),
        },
    )
    .unwrap();
    let r = apply(&mut job, &Transition::CancelRequested { user_id: None });
    assert_eq!(r, Err(Refused::Final(JobStatus::Completed)));
    assert_eq!(job.status, JobStatus::Completed);
}

#[test]
fn a_completion_that_loses_the_race_with_a_cancel_is_refused_and_withdrawn() {
    let mut job = running(1);
    apply(&mut job, &Transition::CancelRequested { user_id: None }).unwrap();
    let r = apply(
        &mut job,
        &Transition::Completed {
            delivery: 1,
            model: Box::new(model()),
        },
    );
    assert_eq!(r, Err(Refused::Final(JobStatus::Cancelled)));
    assert!(job.model.is_none());
    assert!(completion_lost(&job));
}

#[test]
fn a_stale_delivery_changes_nothing() {
    let mut job = running(2);
    let before = job.clone();
    for t in [
        started(1),
        Transition::Failed {
            delivery: 1,
            error: "x".into(),
            kind: FailureKind::Crash,
        },
        Transition::Completed {
            delivery: 1,
            model: Box::new(model()),
        },
    ] {
        assert_eq!(
            apply(&mut job, &t),
            Err(Refused::Stale {
                delivery: 1,
                current: 2
            })
        );
    }
    assert_eq!(job, before);
}

#[test]
fn a_newer_delivery_takes_the_job_over() {
    let mut job = running(1);
    apply(&mut job, &started(2)).unwrap();
    assert_eq!(job.delivery, 2);
}

#[test]
fn an_event_the_registry_published_itself_is_never_stale() {
    let job = running(3);
    assert_eq!(check(&job, &Transition::Cancelled { delivery: 0 }), Ok(()));
}

#[test]
fn every_event_after_a_final_state_is_refused() {
    let mut job = running(1);
    apply(&mut job, &Transition::Cancelled { delivery: 1 }).unwrap();
    let before = job.clone();
    for t in [
        started(1),
        progress(1),
        Transition::Checkpoint {
            delivery: 1,
            epoch: 1,
        },
        Transition::Cancelled { delivery: 1 },
        Transition::Exhausted { deliveries: 3 },
        Transition::Withdrawn {
            error: "x".into(),
            kind: FailureKind::System,
        },
    ] {
        assert_eq!(
            apply(&mut job, &t),
            Err(Refused::Final(JobStatus::Cancelled))
        );
    }
    assert_eq!(job, before);
}

#[test]
fn a_withdrawal_fails_refunds_and_announces() {
    let mut job = queued(100);
    let e = apply(
        &mut job,
        &Transition::Withdrawn {
            error: "could not queue".into(),
            kind: FailureKind::System,
        },
    )
    .unwrap();
    assert!(e.ended && !e.stop_trainers);
    assert!(matches!(
        e.publish,
        Some(JobEventKind::Failed {
            kind: FailureKind::System,
            ..
        })
    ));
    assert!(settlement(&job).unwrap().refund);
}

#[test]
fn a_no_node_withdrawal_is_refused_once_a_node_took_the_job() {
    let mut job = running(1);
    let t = Transition::Withdrawn {
        error: "no node".into(),
        kind: FailureKind::NoNode,
    };
    assert_eq!(apply(&mut job, &t), Err(Refused::Taken));
    let mut job = queued(0);
    assert!(apply(&mut job, &t).is_ok());
    assert_eq!(job.failure_kind, Some(FailureKind::NoNode));
}

#[test]
fn an_exhausted_job_fails_as_a_crash_naming_its_deliveries() {
    let mut job = running(3);
    let e = apply(&mut job, &Transition::Exhausted { deliveries: 3 }).unwrap();
    assert!(e.ended);
    assert_eq!(job.failure_kind, Some(FailureKind::Crash));
    assert!(job.error.as_deref().unwrap().contains("3 deliveries"));
}

#[test]
fn a_refund_is_marked_once_even_on_a_finished_job() {
    let mut job = queued(100);
    apply(&mut job, &Transition::CancelRequested { user_id: None }).unwrap();
    let e = apply(&mut job, &Transition::Refunded).unwrap();
    assert!(!e.ended, "marking the refund is not a second end");
    assert!(job.refunded);
    assert!(!settlement(&job).unwrap().refund);
    assert_eq!(
        apply(&mut job, &Transition::Refunded),
        Err(Refused::AlreadyRefunded)
    );
}

#[test]
fn a_free_job_is_never_refunded() {
    let mut job = queued(0);
    apply(&mut job, &Transition::CancelRequested { user_id: None }).unwrap();
    assert!(job.refund_due);
    assert!(!settlement(&job).unwrap().refund);
}

#[test]
fn a_job_that_is_not_over_has_nothing_to_settle() {
    assert_eq!(settlement(&queued(100)), None);
    assert_eq!(settlement(&running(1)), None);
}

#[test]
fn events_map_to_their_transitions() {
    let event = JobEvent {
        job_id: "job-1".into(),
        delivery: 2,
        at: Utc::now(),
        kind: JobEventKind::Completed {
            model: Box::new(model()),
        },
    };
    let mut listed = model();
    listed.version = 9;
    assert_eq!(
        Transition::from_event(&event, Some(listed.clone())),
        Transition::Completed {
            delivery: 2,
            model: Box::new(listed)
        }
    );
    let event = JobEvent {
        kind: JobEventKind::Cancelled,
        ..event
    };
    assert_eq!(
        Transition::from_event(&event, None),
        Transition::Cancelled { delivery: 2 }
    );
}

#[test]
fn a_delivery_the_queue_never_made_is_refused() {
    let mut job = queued(100);
    for delivery in [0, MAX_DELIVER as u64 + 1, u64::MAX] {
        assert_eq!(
            apply(&mut job, &started(delivery)),
            Err(Refused::UnknownDelivery(delivery))
        );
    }
    let failed = Transition::Failed {
        delivery: u64::MAX,
        error: "x".into(),
        kind: FailureKind::Crash,
    };
    assert_eq!(
        apply(&mut job, &failed),
        Err(Refused::UnknownDelivery(u64::MAX))
    );
    assert_eq!(job.status, JobStatus::Queued);
    assert_eq!(job.delivery, 0);
}

#[test]
fn a_completion_pointing_at_other_weights_is_refused() {
    let mut job = running(1);
    let mut foreign = model();
    foreign.weights_key = "jobs/someone-elses/1/model.safetensors".into();
    let t = Transition::Completed {
        delivery: 1,
        model: Box::new(foreign),
    };
    assert_eq!(apply(&mut job, &t), Err(Refused::ForeignWeights));
    assert_eq!(job.status, JobStatus::Running);
    assert_eq!(
        delivery_weights("job-1", 2).as_deref(),
        Some("jobs/job-1/2/model.safetensors")
    );
    assert_eq!(delivery_weights("job-1", 0), None);
}

#[test]
fn job_ids_are_bounded_and_plain() {
    assert!(valid_job_id("0b7e-aa"));
    assert!(!valid_job_id(""));
    assert!(!valid_job_id("a.b"));
    assert!(!valid_job_id(&"a".repeat(MAX_JOB_ID + 1)));
}

fn event(delivery: u64, kind: JobEventKind) -> JobEvent {
    JobEvent {
        job_id: "job-1".into(),
        delivery,
        at: Utc::now(),
        kind,
    }
}

fn started_by(node_id: &str, delivery: u64) -> JobEvent {
    event(
        delivery,
        JobEventKind::Started {
            node: "n".into(),
            node_id: node_id.into(),
            driver: "cpu".into(),
            resumed_from_epoch: 0,
        },
    )
}

fn running_on(node_id: &str, delivery: u64) -> JobRecord {
    let mut job = queued(10);
    job.status = JobStatus::Running;
    job.node_id = Some(node_id.into());
    job.delivery = delivery;
    job
}

#[test]
fn only_the_node_holding_a_job_sends_its_events() {
    let job = running_on("node-a", 1);
    let cancelled = event(1, JobEventKind::Cancelled);
    assert_eq!(check_sender(&job, &cancelled, "node-a"), Ok(()));
    assert_eq!(
        check_sender(&job, &cancelled, "node-b"),
        Err(Refused::NotOwner)
    );
    let failed = event(
        1,
        JobEventKind::Failed {
            error: "x".into(),
            kind: FailureKind::Crash,
        },
    );
    assert_eq!(
        check_sender(&job, &failed, "node-b"),
        Err(Refused::NotOwner)
    );
}

#[test]
fn a_started_names_its_sender_and_takes_the_job_only_on_a_later_delivery() {
    let job = running_on("node-a", 1);
    // Another node claiming the same delivery.
    assert_eq!(
        check_sender(&job, &started_by("node-b", 1), "node-b"),
        Err(Refused::NotOwner)
    );
    // The queue redelivered it to node-b.
    assert_eq!(
        check_sender(&job, &started_by("node-b", 2), "node-b"),
        Ok(())
    );
    // A Started naming a node other than its sender.
    assert_eq!(
        check_sender(&job, &started_by("node-a", 2), "node-b"),
        Err(Refused::NotOwner)
    );
    // A queued job is anyone's to start.
    assert_eq!(
        check_sender(&queued(1), &started_by("node-c", 1), "node-c"),
        Ok(())
    );
}

#[test]
fn nodes_cannot_send_the_registrys_deliveries_nor_made_up_ones() {
    let job = running_on("node-a", 1);
    assert_eq!(
        check_sender(&job, &event(0, JobEventKind::Cancelled), "node-a"),
        Err(Refused::UnknownDelivery(0))
    );
    assert_eq!(
        check_sender(&job, &event(u64::MAX, JobEventKind::Cancelled), "node-a"),
        Err(Refused::UnknownDelivery(u64::MAX))
    );
    assert_eq!(
        check_sender(
            &job,
            &event(0, JobEventKind::Cancelled),
            jobs::REGISTRY_SENDER
        ),
        Ok(())
    );
    assert_eq!(
        check_sender(
            &job,
            &event(1, JobEventKind::Cancelled),
            jobs::REGISTRY_SENDER
        ),
        Err(Refused::NotOwner)
    );
}

#[test]
fn a_start_applied_after_its_jobs_end_names_the_node_and_settles_again() {
    let mut job = queued(10);
    let completed = Transition::Completed {
        delivery: 1,
        model: Box::new(model()),
    };
    assert!(apply(&mut job, &completed).unwrap().ended);
    let e = apply(&mut job, &started(1)).unwrap();
    assert_eq!(job.status, JobStatus::Completed);
    assert_eq!(job.node_id.as_deref(), Some("id"));
    assert!(e.settle_again && !e.ended && !e.first_start);
    // Once named, a node is never renamed by another start of the same delivery.
    assert_eq!(
        apply(&mut job, &started(1)),
        Err(Refused::Final(JobStatus::Completed))
    );
}

#[test]
fn a_later_deliverys_event_from_another_node_waits_for_its_start() {
    let job = running_on("node-a", 1);
    let p = event(2, JobEventKind::Cancelled);
    assert_eq!(
        check_sender(&job, &p, "node-b"),
        Err(Refused::NotStarted(2))
    );
    // Once node-b's start is applied, node-b holds the job.
    assert_eq!(check_sender(&running_on("node-b", 2), &p, "node-b"), Ok(()));
    // The job is over: nothing to wait for.
    let mut over = running_on("node-a", 1);
    over.status = JobStatus::Completed;
    assert_eq!(check_sender(&over, &p, "node-b"), Err(Refused::NotOwner));
}

fn running_analysis(delivery: u64) -> JobRecord {
    let mut job = running(delivery);
    job.kind = gantry_contracts::jobs::JobKind::Analyze;
    job
}

#[test]
fn an_analysis_completes_with_analyzed_and_lists_no_model() {
    let mut job = running_analysis(1);
    let effects = apply(&mut job, &Transition::Analyzed { delivery: 1 }).unwrap();
    assert!(effects.ended);
    assert_eq!(job.status, JobStatus::Completed);
    assert!(job.model.is_none());
    let settled = settlement(&job).unwrap();
    assert_eq!(settled.list, None, "no version to list");
    assert!(!settled.refund, "a completed analysis keeps its charge");
}

#[test]
fn completions_of_the_other_kind_are_refused() {
    let mut analysis = running_analysis(1);
    let completed = Transition::Completed {
        delivery: 1,
        model: Box::new(model()),
    };
    assert_eq!(apply(&mut analysis, &completed), Err(Refused::WrongKind));
    assert_eq!(analysis.status, JobStatus::Running);
    let mut training = running(1);
    assert_eq!(
        apply(&mut training, &Transition::Analyzed { delivery: 1 }),
        Err(Refused::WrongKind)
    );
    assert_eq!(training.status, JobStatus::Running);
}

#[test]
fn an_analysis_end_from_a_stale_or_unissued_delivery_changes_nothing() {
    let mut job = running_analysis(2);
    assert!(matches!(
        apply(&mut job, &Transition::Analyzed { delivery: 1 }),
        Err(Refused::Stale { .. })
    ));
    assert_eq!(
        apply(&mut job, &Transition::Analyzed { delivery: 0 }),
        Err(Refused::UnknownDelivery(0))
    );
    assert_eq!(job.status, JobStatus::Running);
}
