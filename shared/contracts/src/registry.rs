//! Messages of the cluster registry (`gantry.registry.v1.*`) and of node traffic
//! (`gantry.node.<id>.*`).
//!
//! Filled in by the cluster issue; the subjects are reserved in [`crate::subjects`].
