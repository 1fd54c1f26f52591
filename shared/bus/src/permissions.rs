//! What each role may do on the bus: the one table the server configuration (for the service
//! roles) and the registry's auth callout (for nodes) are both built from.
//!
//! The rules, as the server enforces them:
//! - only auth subscribes to `gantry.auth.v1.*` requests, only the registry to
//!   `gantry.registry.v1.*` requests and node heartbeats; the api answers nothing;
//! - only the registry publishes job and node control;
//! - every role has its own reply inbox prefix and may read only that, so no role can read
//!   another's replies (a login's session, a verify's principal);
//! - a node may publish only on its own subjects (`gantry.node.<id>.heartbeat`,
//!   `gantry.node.<id>.drain`, `gantry.events.node.<id>.job.*`) and reads only its own control
//!   control, heartbeat and analysis subjects and its inbox; it writes the uploads bucket, never
//!   the models bucket, which it only reads (its analysis workers load listed weights);
//! - only the api sends analysis requests (`gantry.node.<id>.analyze`).

use gantry_contracts::{auth, jobs, subjects};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// Where the server asks the registry to admit a client (the auth callout, in [`ACCOUNT`]).
pub const CALLOUT_SUBJECT: &str = "$SYS.REQ.USER.AUTH";

/// The account every Gantry connection lives in.
pub const ACCOUNT: &str = "GANTRY";
/// The server's system account (the registry kicks revoked nodes through it).
pub const SYSTEM_ACCOUNT: &str = "SYS";

/// A service role with its own credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// `gantry-auth`.
    Auth,
    /// `gantry-registry` (also its command line, `gantry-registry create-token`).
    Registry,
    /// `gantry-api`.
    Api,
    /// An operator's monitoring: `$SRV.PING`, `$SRV.INFO`, `$SRV.STATS` and nothing else.
    Monitor,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 4] = [Role::Auth, Role::Registry, Role::Api, Role::Monitor];

    /// Short name: file names and inbox prefixes.
    pub fn name(self) -> &'static str {
        match self {
            Role::Auth => "auth",
            Role::Registry => "registry",
            Role::Api => "api",
            Role::Monitor => "monitor",
        }
    }

    /// The role a service binary connects as.
    pub fn of_service(service: &str) -> Option<Role> {
        match service {
            "gantry-auth" => Some(Role::Auth),
            "gantry-registry" => Some(Role::Registry),
            "gantry-api" => Some(Role::Api),
            _ => None,
        }
    }
}

/// Publish and subscribe permissions of one connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Permissions {
    /// Subjects it may publish to.
    pub publish: Vec<String>,
    /// Subjects under `publish` it still may not publish to.
    pub publish_deny: Vec<String>,
    /// Subjects it may subscribe to.
    pub subscribe: Vec<String>,
    /// Whether it may answer requests it received (publish once to their reply subject).
    pub responses: bool,
}

/// The reply inbox prefix of a service role.
pub fn inbox_prefix(role: Role) -> String {
    format!("_INBOX_{}", role.name())
}

/// The reply inbox prefix of a node joining with `token` as `hostname`. Derived from the token,
/// so only its holder knows it and the registry's callout can grant it without asking.
pub fn node_inbox(token: &str, hostname: &str) -> String {
    let digest = Sha256::digest(format!("gantry-node-inbox\0{token}\0{hostname}").as_bytes());
    format!("_INBOX_N{}", &hex::encode(digest)[..24])
}

/// `$SRV` discovery subjects of the micro service `service`.
fn micro(service: &str) -> Vec<String> {
    vec![
        "$SRV.*".into(),
        format!("$SRV.*.{service}"),
        format!("$SRV.*.{service}.*"),
    ]
}

fn own(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// What a service role may do.
pub fn role(role: Role) -> Permissions {
    let inbox = format!("{}.>", inbox_prefix(role));
    let auth_requests = format!("{}.>", subjects::AUTH_V1);
    let registry_requests = format!("{}.>", subjects::REGISTRY_V1);
    match role {
        Role::Auth => Permissions {
            publish: own(&[auth::REVOCATIONS]),
            publish_deny: vec![],
            subscribe: [vec![auth_requests, inbox], micro("gantry-auth")].concat(),
            responses: true,
        },
        Role::Registry => Permissions {
            publish: own(&[
                // Its own endpoints, for `gantry-registry create-token`.
                &registry_requests,
                &subjects::auth(subjects::auth::CREDITS_REFUND),
                &subjects::auth(subjects::auth::CREDITS_UNSETTLED),
                subjects::REGISTRY_EVENTS,
                "gantry.node.*.control",
                jobs::CANCEL_SUBJECTS,
                jobs::SETTLED_SUBJECTS,
                "gantry.jobs.>",
                "gantry.dead.>",
                // Its own job events (delivery 0), for their followers.
                &format!("gantry.events.node.{}.job.*", jobs::REGISTRY_SENDER),
                // It owns JetStream: streams, consumers, the object stores, its lease bucket.
                "$JS.>",
                "$KV.>",
                "$O.>",
            ]),
            publish_deny: vec![],
            subscribe: [
                vec![
                    registry_requests,
                    subjects::NODE_HEARTBEATS.into(),
                    subjects::NODE_DRAINS.into(),
                    subjects::REGISTRY_EVENTS.into(),
                    jobs::SETTLED_SUBJECTS.into(),
                    jobs::MAX_DELIVERIES_ADVISORY.into(),
                    CALLOUT_SUBJECT.into(),
                    inbox,
                ],
                micro("gantry-registry"),
            ]
            .concat(),
            responses: true,
        },
        Role::Api => Permissions {
            publish: own(&[
                &auth_requests,
                &registry_requests,
                "gantry.jobs.train.*",
                "gantry.jobs.analyze.*",
                // That a job was queued, for the trainers' free slots.
                jobs::QUEUED_SUBJECTS,
                // Analysis requests to the node it picked (answered to its inbox).
                subjects::NODE_ANALYZE_ALL,
                // Datasets in, models out, job events for its streams.
                "$JS.API.>",
                "$JS.FC.>",
                &format!("$O.{}.>", jobs::DATASETS_BUCKET),
            ]),
            // Requests only: announcements are auth's and the registry's.
            publish_deny: own(&[
                &format!("{}.events.>", subjects::AUTH_V1),
                &format!("{}.events.>", subjects::REGISTRY_V1),
            ]),
            subscribe: [
                vec![
                    auth::REVOCATIONS.into(),
                    jobs::SETTLED_SUBJECTS.into(),
                    inbox,
                ],
                micro("gantry-api"),
            ]
            .concat(),
            responses: true,
        },
        Role::Monitor => Permissions {
            publish: own(&["$SRV.>"]),
            publish_deny: vec![],
            subscribe: vec![inbox],
            responses: false,
        },
    }
}

/// JetStream API subjects that read the object store `bucket`.
fn read_objects(bucket: &str) -> Vec<String> {
    let stream = format!("OBJ_{bucket}");
    vec![
        format!("$JS.API.STREAM.INFO.{stream}"),
        format!("$JS.API.STREAM.MSG.GET.{stream}"),
        format!("$JS.API.DIRECT.GET.{stream}.>"),
        format!("$JS.API.CONSUMER.CREATE.{stream}"),
        format!("$JS.API.CONSUMER.CREATE.{stream}.>"),
        format!("$JS.API.CONSUMER.DELETE.{stream}.>"),
        format!("$JS.API.CONSUMER.INFO.{stream}.>"),
        format!("$JS.FC.{stream}.>"),
    ]
}

/// What the node `node_id` may do, given the inbox prefix it connects with.
pub fn node(node_id: &str, inbox: &str) -> Permissions {
    let jobs_stream = jobs::JOBS_STREAM;
    let mut publish = vec![
        subjects::node_heartbeat(node_id),
        // Draining itself when it stops (`gantry-trainer drain`, a pod's preStop): itself only.
        subjects::node_drain(node_id),
        subjects::registry(subjects::registry::REGISTER),
        subjects::registry(jobs::subjects::JOBS_GET),
        jobs::node_events(node_id),
        format!("$JS.API.STREAM.INFO.{jobs_stream}"),
        format!("$JS.API.CONSUMER.INFO.{jobs_stream}.*"),
        format!("$JS.API.CONSUMER.MSG.NEXT.{jobs_stream}.*"),
        format!("$JS.ACK.{jobs_stream}.>"),
        // Its weights and checkpoints go to the uploads bucket (replacing an object purges its
        // old chunks); the registry copies checked weights into the models bucket, which no
        // node can write.
        format!("$O.{}.C.>", jobs::UPLOADS_BUCKET),
        format!("$O.{}.M.>", jobs::UPLOADS_BUCKET),
        format!("$JS.API.STREAM.PURGE.OBJ_{}", jobs::UPLOADS_BUCKET),
    ];
    publish.extend(read_objects(jobs::DATASETS_BUCKET));
    publish.extend(read_objects(jobs::UPLOADS_BUCKET));
    // Its analysis workers load listed models' weights (reading, never writing).
    publish.extend(read_objects(jobs::MODELS_BUCKET));
    Permissions {
        publish,
        publish_deny: vec![],
        subscribe: [
            vec![
                subjects::node_control(node_id),
                // Analysis requests the api sends this node, and only this node.
                subjects::node_analyze(node_id),
                // `gantry-trainer drain` waits on its own node's heartbeats for the hand-back.
                subjects::node_heartbeat(node_id),
                jobs::CANCEL_SUBJECTS.into(),
                // That a job was queued (no payload): a free slot asks for it at once.
                jobs::QUEUED_SUBJECTS.into(),
                format!("{inbox}.>"),
            ],
            micro("gantry-trainer"),
        ]
        .concat(),
        responses: true,
    }
}

/// Whether `subject` is matched by the NATS pattern `pattern` (`*` one token, `>` the rest).
pub fn matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

impl Permissions {
    /// Whether these permissions let a connection publish to `subject` (not counting replies).
    pub fn may_publish(&self, subject: &str) -> bool {
        self.publish.iter().any(|p| matches(p, subject))
            && !self.publish_deny.iter().any(|p| matches(p, subject))
    }

    /// Whether these permissions let a connection subscribe to `subject`.
    pub fn may_subscribe(&self, subject: &str) -> bool {
        self.subscribe.iter().any(|p| matches(p, subject))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn only_auth_reads_auth_requests_and_only_the_registry_reads_registry_requests() {
        for r in Role::ALL {
            let p = role(r);
            assert_eq!(
                p.may_subscribe("gantry.auth.v1.verify"),
                r == Role::Auth,
                "{r:?}"
            );
            assert_eq!(
                p.may_subscribe("gantry.auth.v1.login"),
                r == Role::Auth,
                "{r:?}"
            );
            assert_eq!(
                p.may_subscribe("gantry.registry.v1.nodes.register"),
                r == Role::Registry,
                "{r:?}"
            );
            assert_eq!(
                p.may_subscribe("gantry.node.x.heartbeat"),
                r == Role::Registry,
                "{r:?}"
            );
            assert_eq!(
                p.may_subscribe(CALLOUT_SUBJECT),
                r == Role::Registry,
                "{r:?}"
            );
        }
        let node = node(NODE, "_INBOX_Nabc");
        for s in [
            "gantry.auth.v1.verify",
            "gantry.auth.v1.login",
            "gantry.registry.v1.nodes.register",
            "gantry.node.other.heartbeat",
            "gantry.node.other.control",
            CALLOUT_SUBJECT,
            "_INBOX_api.x",
            "_INBOX.x",
        ] {
            assert!(!node.may_subscribe(s), "a node may subscribe to {s}");
        }
    }

    #[test]
    fn only_the_registry_publishes_control_and_nodes_only_their_own_subjects() {
        for s in [
            "gantry.node.x.control",
            "gantry.control.job.j.cancel",
            "gantry.status.job.j",
        ] {
            for r in Role::ALL {
                assert_eq!(role(r).may_publish(s), r == Role::Registry, "{r:?} {s}");
            }
            assert!(!node(NODE, "_INBOX_Nabc").may_publish(s), "node {s}");
        }
        let n = node(NODE, "_INBOX_Nabc");
        assert!(n.may_publish(&subjects::node_heartbeat(NODE)));
        assert!(n.may_publish(&jobs::event_subject(NODE, "job1")));
        assert!(!n.may_publish(&subjects::node_heartbeat("other")));
        assert!(!n.may_publish(&jobs::event_subject("other", "job1")));
        assert!(!n.may_publish("gantry.auth.v1.tokens.create"));
        assert!(!n.may_publish("gantry.registry.v1.cluster_tokens.revoke"));
        assert!(!n.may_publish("$JS.API.STREAM.DELETE.GANTRY_JOBS"));
        assert!(!n.may_publish("$JS.API.STREAM.PURGE.GANTRY_JOBS"));
        assert!(!n.may_publish("gantry.jobs.train.cuda"));
        // Listed models are the registry's alone to write; analysis workers only read them.
        assert!(!n.may_publish("$O.gantry-models.M.x"));
        assert!(!n.may_publish("$O.gantry-models.C.x"));
        assert!(!n.may_publish("$JS.API.STREAM.PURGE.OBJ_gantry-models"));
        assert!(!n.may_publish("$JS.API.STREAM.DELETE.OBJ_gantry-models"));
        assert!(n.may_publish("$JS.API.DIRECT.GET.OBJ_gantry-models.x"));
        assert!(n.may_publish("$O.gantry-uploads.C.x"));
    }

    #[test]
    fn only_the_api_announces_queued_jobs_and_nodes_hear_them() {
        let subject = jobs::queued_subject(jobs::JobDriver::Cpu);
        for r in Role::ALL {
            assert_eq!(role(r).may_publish(&subject), r == Role::Api, "{r:?}");
        }
        let n = node(NODE, "_INBOX_Nabc");
        assert!(n.may_subscribe(jobs::QUEUED_SUBJECTS));
        assert!(!n.may_publish(&subject));
        // The announcement, not the job: the queue's subjects stay closed to nodes.
        assert!(!n.may_subscribe("gantry.jobs.train.cpu"));
    }

    #[test]
    fn only_the_api_sends_analysis_requests_and_a_node_hears_only_its_own() {
        let subject = subjects::node_analyze(NODE);
        for r in Role::ALL {
            assert_eq!(role(r).may_publish(&subject), r == Role::Api, "{r:?}");
            assert!(!role(r).may_subscribe(&subject), "{r:?}");
        }
        let n = node(NODE, "_INBOX_Nabc");
        assert!(n.may_subscribe(&subject));
        assert!(!n.may_subscribe(&subjects::node_analyze("other")));
        assert!(!n.may_publish(&subjects::node_analyze("other")));
        assert!(!n.may_publish(&subject));
    }

    #[test]
    fn a_node_drains_only_itself_and_only_the_registry_serves_drains() {
        let n = node(NODE, "_INBOX_Nabc");
        assert!(n.may_publish(&subjects::node_drain(NODE)));
        assert!(!n.may_publish(&subjects::node_drain("other")));
        assert!(!n.may_publish(subjects::NODE_DRAINS));
        assert!(!n.may_subscribe(&subjects::node_drain(NODE)));
        // It follows its own heartbeats (the hand-back), nobody else's.
        assert!(n.may_subscribe(&subjects::node_heartbeat(NODE)));
        assert!(!n.may_subscribe(&subjects::node_heartbeat("other")));
        assert!(!n.may_subscribe(subjects::NODE_HEARTBEATS));
        for r in Role::ALL {
            assert_eq!(
                role(r).may_subscribe(&subjects::node_drain(NODE)),
                r == Role::Registry,
                "{r:?}"
            );
            // Drains come from the node itself; admins drain through `nodes.drain`.
            assert!(!role(r).may_publish(&subjects::node_drain(NODE)), "{r:?}");
        }
    }

    #[test]
    fn the_api_requests_but_announces_nothing() {
        let api = role(Role::Api);
        assert!(api.may_publish("gantry.auth.v1.verify"));
        assert!(api.may_publish("gantry.registry.v1.jobs.create"));
        assert!(!api.may_publish(auth::REVOCATIONS));
        assert!(!api.may_publish(subjects::REGISTRY_EVENTS));
        assert!(api.may_subscribe(auth::REVOCATIONS));
    }

    #[test]
    fn node_inboxes_differ_by_token_and_host() {
        let a = node_inbox("tok-a", "host");
        assert_eq!(a, node_inbox("tok-a", "host"));
        assert_ne!(a, node_inbox("tok-b", "host"));
        assert_ne!(a, node_inbox("tok-a", "other"));
        assert!(a.starts_with("_INBOX_N") && !a.contains('.'));
    }

    #[test]
    fn subject_patterns_match_like_the_server() {
        assert!(matches("a.*.c", "a.b.c"));
        assert!(!matches("a.*.c", "a.b.d"));
        assert!(matches("a.>", "a.b.c"));
        assert!(!matches("a.>", "a"));
        assert!(!matches("a.b", "a.b.c"));
    }
}
