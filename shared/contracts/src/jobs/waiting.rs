//! [`WaitingReason`]: why a queued job waits, as users read it and as code decides on it.

use serde::{Deserialize, Serialize};

use super::JobDriver;

/// Why a queued job waits. Travels as the sentence its `Display` writes (`no node for driver
/// cuda: none connected trains on it`, `all worker slots busy`), which is what users read; the
/// sentence is parsed back only here, so code decides on the variant, never on the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum WaitingReason {
    /// No connected, undrained node trains on the job's driver: nothing can take it now.
    NoNode {
        /// The job's driver.
        driver: JobDriver,
    },
    /// The connected nodes for the driver all fail their health check (a GPU's, or the
    /// operator's); each says why in its processes. They may recover, so the job waits.
    Unhealthy {
        /// The job's driver.
        driver: JobDriver,
    },
    /// The connected nodes for the driver are all drained by an admin: they finish what they
    /// run and take nothing new until undrained, so the job waits.
    Drained {
        /// The job's driver.
        driver: JobDriver,
    },
    /// Nodes for the driver exist, and every worker slot of theirs is busy.
    SlotsBusy,
    /// The registry started moments ago and has not yet heard every node's heartbeat, so it
    /// cannot tell whether a node serves the driver: never a reason to give up on the job.
    Settling,
}

const NO_NODE_PREFIX: &str = "no node for driver ";
const NO_NODE_SUFFIX: &str = ": none connected trains on it";
const UNHEALTHY_SUFFIX: &str =
    ": the nodes that train on it fail their health check (their processes say why)";
const DRAINED_SUFFIX: &str = ": the nodes that train on it are drained (undrain one to run it)";
const SLOTS_BUSY: &str = "all worker slots busy";
const SETTLING: &str = "the registry is still hearing from the nodes";

impl std::fmt::Display for WaitingReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WaitingReason::NoNode { driver } => {
                write!(f, "{NO_NODE_PREFIX}{}{NO_NODE_SUFFIX}", driver.as_str())
            }
            WaitingReason::Unhealthy { driver } => {
                write!(f, "{NO_NODE_PREFIX}{}{UNHEALTHY_SUFFIX}", driver.as_str())
            }
            WaitingReason::Drained { driver } => {
                write!(f, "{NO_NODE_PREFIX}{}{DRAINED_SUFFIX}", driver.as_str())
            }
            WaitingReason::SlotsBusy => f.write_str(SLOTS_BUSY),
            WaitingReason::Settling => f.write_str(SETTLING),
        }
    }
}

impl From<WaitingReason> for String {
    fn from(r: WaitingReason) -> Self {
        r.to_string()
    }
}

impl TryFrom<String> for WaitingReason {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        match s.as_str() {
            SLOTS_BUSY => return Ok(WaitingReason::SlotsBusy),
            SETTLING => return Ok(WaitingReason::Settling),
            _ => {}
        }
        let rest = s.strip_prefix(NO_NODE_PREFIX);
        let driver = |suffix: &str| {
            rest.and_then(|r| r.strip_suffix(suffix))
                .and_then(JobDriver::parse)
        };
        if let Some(driver) = driver(NO_NODE_SUFFIX) {
            return Ok(WaitingReason::NoNode { driver });
        }
        if let Some(driver) = driver(UNHEALTHY_SUFFIX) {
            return Ok(WaitingReason::Unhealthy { driver });
        }
        if let Some(driver) = driver(DRAINED_SUFFIX) {
            return Ok(WaitingReason::Drained { driver });
        }
        Err(format!("unknown waiting reason {s:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_reasons_travel_as_their_sentence_and_come_back() {
        for r in [
            WaitingReason::NoNode {
                driver: JobDriver::Rocm,
            },
            WaitingReason::Unhealthy {
                driver: JobDriver::Cuda,
            },
            WaitingReason::Drained {
                driver: JobDriver::Any,
            },
            WaitingReason::SlotsBusy,
            WaitingReason::Settling,
        ] {
            let v = serde_json::to_value(r).unwrap();
            assert_eq!(v, serde_json::Value::String(r.to_string()));
            assert_eq!(serde_json::from_value::<WaitingReason>(v).unwrap(), r);
        }
        assert_eq!(
            WaitingReason::NoNode {
                driver: JobDriver::Cuda
            }
            .to_string(),
            "no node for driver cuda: none connected trains on it"
        );
        assert!(serde_json::from_str::<WaitingReason>("\"soon\"").is_err());
    }
}
