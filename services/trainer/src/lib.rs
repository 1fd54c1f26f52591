//! # gantry-trainer
//!
//! One per GPU machine: joins the cluster with a cluster token, heartbeats, pulls jobs and trains
//! them.
//!
//! ## Layout
//! - [`startup`]: inventory, connect, register the micro service, serve health, join, run.
//! - [`inventory`]: CUDA/ROCm devices (tch, NVML, rocm-smi), host memory and CPUs.
//! - [`health`]: live GPU figures (NVML, rocm-smi) and the node's health check.
//! - [`drain`]: `gantry-trainer drain`, a stopping node draining itself and handing its jobs
//!   back (a pod's `preStop` hook).
//! - [`node`]: joining, heartbeats, control messages (driver, drain, leave), re-registering.
//! - [`worker`]: the pull loop and the worker slots; cancels reach a job through its
//!   [`control`] flags.
//! - [`run`]: one job's run, from its message to its final ack: registry check, lease, dataset,
//!   checkpoint, `Started`, training, the end its [`outcome`] calls for.
//! - [`outcome`]: the outcome policy: which end a run came to, which failures are the data's.
//! - [`training`]: the blocking side of a run: load the dataset, train, hand progress over.
//! - [`report`]: events, metrics and the model card in the contract's terms.
//! - [`analysis`]: the analysis workers: classify images with a trained model, answering the
//!   api on this node's `gantry.node.<id>.analyze`; [`models`]: their loaded-model cache.
//! - [`cache`]: the dataset cache: fetch, verify, unpack, least-recently-used eviction.
//! - [`checkpoint`]: a job's checkpoint in the models bucket: read, write, delete.
//!
//! Job events go out through `gantry_runtime::events`.

pub mod analysis;
pub mod cache;
pub mod checkpoint;
pub mod control;
pub mod drain;
pub mod health;
pub mod inventory;
pub mod models;
pub mod node;
pub mod outcome;
pub mod report;
pub mod run;
pub mod startup;
pub mod training;
pub mod worker;
