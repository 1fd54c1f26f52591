//! The names under which each binary registers as a NATS micro service (`$SRV.PING.<name>`).

/// The HTTP edge. Registers so operators see it in `$SRV.PING`; it serves no endpoints.
pub const API: &str = "gantry-api";
/// Users, sessions, API tokens and credits.
pub const AUTH: &str = "gantry-auth";
/// Cluster tokens, nodes, driver preferences.
pub const REGISTRY: &str = "gantry-registry";
/// One per GPU machine.
pub const TRAINER: &str = "gantry-trainer";

/// All four, in start-up order.
pub const ALL: [&str; 4] = [AUTH, REGISTRY, API, TRAINER];
