//! The job lifecycle, as one type with pure transitions.
//!
//! A job is submitted (queued), taken by a trainer (started, on a numbered delivery of its queue
//! message), reports progress and checkpoints, and ends exactly one way: completed, failed,
//! cancelled, withdrawn (the api could not queue it, or no node could take it) or exhausted (its
//! message ran out of deliveries). [`apply`] decides one [`Transition`] on a job record: it
//! either changes the record and returns the [`Effects`] to carry out after the write wins, or
//! refuses with the reason ([`Refused`]) and leaves the record untouched. What follows from a job
//! being over (the model version to list, the refund due) is [`settlement`].
//!
//! Nothing here does I/O: the registry's handlers, its settling steps and its event consumer read
//! the record, call this, write conditionally and carry out the effects.

use gantry_contracts::jobs::{
    self, FailureKind, JobEvent, JobEventKind, JobKind, JobProgress, JobRecord, JobStatus,
    ModelVersion, MAX_DELIVER,
};

/// Longest job id accepted.
pub const MAX_JOB_ID: usize = 64;

/// Something that happens to a job.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    /// A trainer took it (again) on `delivery`.
    Started {
        /// The delivery of the job message.
        delivery: u64,
        /// The node's name.
        node: String,
        /// The node's id.
        node_id: String,
    },
    /// Training progress, kept as the job's last.
    Progress {
        /// The delivery it comes from.
        delivery: u64,
        /// What the progress event reports.
        progress: Option<JobProgress>,
    },
    /// An epoch's checkpoint is stored.
    Checkpoint {
        /// The delivery it comes from.
        delivery: u64,
        /// The epoch.
        epoch: u32,
    },
    /// The weights are stored and listed as `model` (numbered already).
    Completed {
        /// The delivery it comes from.
        delivery: u64,
        /// The version the completion is listed as.
        model: Box<ModelVersion>,
    },
    /// An analysis job's node classified every image (its results are stored).
    Analyzed {
        /// The delivery it comes from.
        delivery: u64,
    },
    /// The trainer could not finish it.
    Failed {
        /// The delivery it comes from.
        delivery: u64,
        /// Why, for the user.
        error: String,
        /// The kind of failure.
        kind: FailureKind,
    },
    /// The trainer stopped it on a cancel.
    Cancelled {
        /// The delivery it comes from.
        delivery: u64,
    },
    /// Its owner or an admin cancels it; `user_id` set limits it to that owner.
    CancelRequested {
        /// Only this owner's job.
        user_id: Option<i64>,
    },
    /// The api withdraws it: it could not be queued (`System`), or no node could take it
    /// (`NoNode`, refused once a node took it).
    Withdrawn {
        /// Why, for the user.
        error: String,
        /// The kind of failure.
        kind: FailureKind,
    },
    /// Its queue message ran out of deliveries.
    Exhausted {
        /// How many deliveries it had.
        deliveries: i64,
    },
    /// The charge went back.
    Refunded,
}

impl Transition {
    /// The transition a trainer's (or the registry's own) event stands for. A completion needs
    /// its listed version: pass it as `listed` (the event's own `model` is used otherwise).
    pub fn from_event(event: &JobEvent, listed: Option<ModelVersion>) -> Self {
        let delivery = event.delivery;
        match &event.kind {
            JobEventKind::Started { node, node_id, .. } => Transition::Started {
                delivery,
                node: node.clone(),
                node_id: node_id.clone(),
            },
            JobEventKind::Progress { .. } => Transition::Progress {
                delivery,
                progress: JobProgress::of(event),
            },
            JobEventKind::Checkpoint { epoch, .. } => Transition::Checkpoint {
                delivery,
                epoch: *epoch,
            },
            JobEventKind::Completed { model } => Transition::Completed {
                delivery,
                model: Box::new(listed.unwrap_or_else(|| (**model).clone())),
            },
            JobEventKind::Failed { error, kind } => Transition::Failed {
                delivery,
                error: error.clone(),
                kind: *kind,
            },
            JobEventKind::Cancelled => Transition::Cancelled { delivery },
            JobEventKind::Analyzed { .. } => Transition::Analyzed { delivery },
            // Results change no record (they are stored beside it): as progress, they take the
            // guards of one.
            JobEventKind::Results { .. } => Transition::Progress {
                delivery,
                progress: None,
            },
        }
    }

    /// The delivery a trainer's transition comes from; `None` for the registry's and api's own.
    fn delivery(&self) -> Option<u64> {
        match self {
            Transition::Started { delivery, .. }
            | Transition::Progress { delivery, .. }
            | Transition::Checkpoint { delivery, .. }
            | Transition::Completed { delivery, .. }
            | Transition::Analyzed { delivery }
            | Transition::Failed { delivery, .. }
            | Transition::Cancelled { delivery } => Some(*delivery),
            _ => None,
        }
    }
}

/// Why a transition leaves the job as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// It comes from a delivery older than the job's current one (a node that lost its lease).
    Stale {
        /// The transition's delivery.
        delivery: u64,
        /// The job's.
        current: u64,
    },
    /// The job is over already.
    Final(JobStatus),
    /// A node took the job, so it is not withdrawn for want of one.
    Taken,
    /// The job is not the caller's.
    NotOwner,
    /// The charge was given back already.
    AlreadyRefunded,
    /// A trainer's event names a delivery the job's queue never made (0, or past the last one).
    UnknownDelivery(u64),
    /// A completion points at weights other than the ones its delivery uploads.
    ForeignWeights,
    /// A training completion for an analysis job, or the other way round.
    WrongKind,
    /// Not yet: the event needs its delivery's start, which is not applied yet (replicas apply
    /// a job's events concurrently, so its start may still be on its way). It comes back.
    NotStarted(u64),
}

/// Whether `delivery` is one the job queue makes (1 up to [`MAX_DELIVER`]).
pub fn issued_delivery(delivery: u64) -> bool {
    (1..=MAX_DELIVER as u64).contains(&delivery)
}

/// The weights a trainer's event of `delivery` may have uploaded for `job_id`, derived here and
/// never taken from the event: `None` for a delivery the queue never made.
pub fn delivery_weights(job_id: &str, delivery: u64) -> Option<String> {
    issued_delivery(delivery).then(|| jobs::weights_key(job_id, delivery))
}

/// Whether `sender` (from the event's subject) may send `event` about `job`: the registry only
/// its own events (delivery 0); a node only events of a delivery the queue made, and, once a node
/// has started the job, only that node, except with a `Started` of a later delivery (the queue
/// gave the job to it). A `Started` must name its sender.
pub fn check_sender(job: &JobRecord, event: &JobEvent, sender: &str) -> Result<(), Refused> {
    if sender == jobs::REGISTRY_SENDER {
        return if event.delivery == 0 {
            Ok(())
        } else {
            Err(Refused::NotOwner)
        };
    }
    if !issued_delivery(event.delivery) {
        return Err(Refused::UnknownDelivery(event.delivery));
    }
    let holder = job.node_id.as_deref();
    match &event.kind {
        JobEventKind::Started { node_id, .. } if node_id != sender => Err(Refused::NotOwner),
        JobEventKind::Started { .. } if event.delivery > job.delivery => Ok(()),
        // A later delivery's event from another node than the holder: the queue may have given
        // the job to it, and its start not be applied yet.
        _ if holder.is_some_and(|h| h != sender)
            && event.delivery > job.delivery
            && !job.status.is_final() =>
        {
            Err(Refused::NotStarted(event.delivery))
        }
        _ if holder.is_some_and(|h| h != sender) => Err(Refused::NotOwner),
        _ => Ok(()),
    }
}

/// What to carry out once the write of a changed record wins.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Effects {
    /// The job is over with this write: count its end, then settle it ([`settlement`]).
    pub ended: bool,
    /// Tell every trainer to stop it (the cancel subject).
    pub stop_trainers: bool,
    /// Publish this on the job's event subject, for its followers (trainers publish their own).
    pub publish: Option<JobEventKind>,
    /// A node started the job for the first time: how long it waited is measured from here.
    pub first_start: bool,
    /// The job was over already and is settled again (its node is known only now).
    pub settle_again: bool,
}

/// Whether `t` would change `job`, without changing it: the guard [`apply`] starts with.
pub fn check(job: &JobRecord, t: &Transition) -> Result<(), Refused> {
    if let Some(delivery) = t.delivery() {
        // 0 is an event the registry or api published itself: never stale.
        if delivery != 0 && delivery < job.delivery {
            return Err(Refused::Stale {
                delivery,
                current: job.delivery,
            });
        }
    }
    match t {
        // Only trainers report these, always on a delivery the queue made.
        Transition::Started { delivery, .. }
        | Transition::Progress { delivery, .. }
        | Transition::Checkpoint { delivery, .. }
        | Transition::Completed { delivery, .. }
        | Transition::Analyzed { delivery }
            if !issued_delivery(*delivery) =>
        {
            return Err(Refused::UnknownDelivery(*delivery))
        }
        Transition::Failed { delivery, .. } | Transition::Cancelled { delivery }
            if *delivery > MAX_DELIVER as u64 =>
        {
            return Err(Refused::UnknownDelivery(*delivery))
        }
        Transition::Completed { .. } if job.kind != JobKind::Train => {
            return Err(Refused::WrongKind)
        }
        Transition::Analyzed { .. } if job.kind != JobKind::Analyze => {
            return Err(Refused::WrongKind)
        }
        Transition::Completed { delivery, model }
            if delivery_weights(&job.job_id, *delivery).as_deref()
                != Some(model.weights_key.as_str()) =>
        {
            return Err(Refused::ForeignWeights)
        }
        Transition::CancelRequested { user_id } if user_id.is_some_and(|u| u != job.user_id) => {
            return Err(Refused::NotOwner)
        }
        Transition::Refunded if job.refunded => return Err(Refused::AlreadyRefunded),
        // Marking the refund is the one change a job that is over still takes.
        Transition::Refunded => return Ok(()),
        _ => {}
    }
    // A start applied after its job's end (replicas apply a job's events concurrently) still
    // names the node that ran it, so the node is credited.
    if let Transition::Started { delivery, .. } = t {
        if job.status.is_final() && job.node_id.is_none() && *delivery == job.delivery {
            return Ok(());
        }
    }
    if job.status.is_final() {
        return Err(Refused::Final(job.status));
    }
    if let Transition::Withdrawn {
        kind: FailureKind::NoNode,
        ..
    } = t
    {
        if job.status != JobStatus::Queued {
            return Err(Refused::Taken);
        }
    }
    Ok(())
}

/// Apply `t` to `job`: on `Ok` the record is changed and the effects are what to carry out once
/// it is written; on `Err` the record is untouched. `updated_at` is the writer's.
pub fn apply(job: &mut JobRecord, t: &Transition) -> Result<Effects, Refused> {
    check(job, t)?;
    if let Some(delivery) = t.delivery() {
        job.delivery = job.delivery.max(delivery);
    }
    let was_final = job.status.is_final();
    let mut effects = Effects::default();
    match t {
        // The job is over already: only who ran it is new, and settling again credits them.
        Transition::Started { node, node_id, .. } if was_final => {
            job.node = Some(node.clone());
            job.node_id = Some(node_id.clone());
            effects.settle_again = true;
        }
        Transition::Started { node, node_id, .. } => {
            effects.first_start = job.node_id.is_none();
            job.status = JobStatus::Running;
            job.node = Some(node.clone());
            job.node_id = Some(node_id.clone());
        }
        Transition::Progress { progress, .. } => {
            job.status = JobStatus::Running;
            job.progress = progress.clone();
        }
        Transition::Checkpoint { epoch, .. } => {
            job.checkpoint_epoch = job.checkpoint_epoch.max(*epoch);
        }
        Transition::Completed { model, .. } => {
            job.status = JobStatus::Completed;
            job.model = Some((**model).clone());
        }
        Transition::Analyzed { .. } => job.status = JobStatus::Completed,
        Transition::Failed { error, kind, .. } => {
            fail(job, error.clone(), *kind);
        }
        Transition::Cancelled { .. } => job.status = JobStatus::Cancelled,
        Transition::CancelRequested { .. } => {
            // A job no node took yet gets its charge back; one that trained keeps it.
            let was_queued = job.status == JobStatus::Queued;
            job.status = JobStatus::Cancelled;
            job.error = Some("cancelled".into());
            job.refund_due = was_queued;
            effects.stop_trainers = true;
            // A running job's trainer announces its own stop.
            effects.publish = was_queued.then_some(JobEventKind::Cancelled);
        }
        Transition::Withdrawn { error, kind } => {
            fail(job, error.clone(), *kind);
            effects.publish = Some(failed_event(error, *kind));
        }
        Transition::Exhausted { deliveries } => {
            let error =
                format!("the job failed on {deliveries} deliveries; no trainer could finish it");
            fail(job, error.clone(), FailureKind::Crash);
            effects.publish = Some(failed_event(&error, FailureKind::Crash));
        }
        Transition::Refunded => job.refunded = true,
    }
    effects.ended = !was_final && job.status.is_final();
    Ok(effects)
}

fn fail(job: &mut JobRecord, error: String, kind: FailureKind) {
    job.status = JobStatus::Failed;
    job.error = Some(error);
    job.failure_kind = Some(kind);
    job.refund_due = true;
}

fn failed_event(error: &str, kind: FailureKind) -> JobEventKind {
    JobEventKind::Failed {
        error: error.to_owned(),
        kind,
    }
}

/// What follows from a job being over, each step repeatable: the model version to list (and
/// its node to credit), and whether the charge is to be given back.
#[derive(Debug, Clone, PartialEq)]
pub struct Settlement {
    /// A completed job's version.
    pub list: Option<ModelVersion>,
    /// The charge is due back and not given back yet.
    pub refund: bool,
}

/// How `job` is settled; `None` while it is not over.
pub fn settlement(job: &JobRecord) -> Option<Settlement> {
    if !job.status.is_final() {
        return None;
    }
    Some(Settlement {
        list: job
            .model
            .clone()
            .filter(|_| job.status == JobStatus::Completed),
        refund: job.refund_due && !job.refunded && job.tokens_charged > 0,
    })
}

/// A completion listed its version before the job was written, and the write was refused: the
/// job ended another way meanwhile (a cancel won), so the version is withdrawn.
pub fn completion_lost(job: &JobRecord) -> bool {
    job.status != JobStatus::Completed
}

/// Why a refund is given, for the ledger.
pub fn refund_reason(job: &JobRecord) -> String {
    let why = if job.status == JobStatus::Cancelled {
        "cancelled before training started"
    } else {
        "job failed"
    };
    format!("job {}: {why}", job.job_id)
}

/// Whether `job_id` is an id the registry records: 1-64 letters, digits or '-'.
pub fn valid_job_id(job_id: &str) -> bool {
    !job_id.is_empty()
        && job_id.len() <= MAX_JOB_ID
        && job_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
}

#[cfg(test)]
mod tests;
