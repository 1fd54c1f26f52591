//! Bad input to `set_driver` and `drain` over the registry's NATS endpoints: each gets its code
//! and a message naming what is wrong.

use std::time::Duration;

use gantry_contracts::error::ErrorCode;
use gantry_contracts::registry::{Drain, SetDriver, SetDriverResult, DRIVER_CHOICES};
use gantry_contracts::subjects::registry as ep;
use gantry_testing::{TestStack, READY};

const LIMIT: Duration = Duration::from_secs(180);

#[tokio::test]
async fn every_bad_set_driver_or_drain_input_gets_its_code() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.short_heartbeats();
        stack.start_services(&["gantry-registry"]).await;
        let token = stack.create_token("t").await;
        let trainer = stack.trainer("node-s", &token.token, 1, &[]);
        trainer.wait_ready(READY).await;
        stack
            .wait_node("node-s", Duration::from_secs(30), "connected", |n| {
                n.connected
            })
            .await;
        let listed = format!("{}...", &token.token[..8]);
        let full = |driver: &str| SetDriver {
            hostname: Some("node-s".into()),
            token: Some(listed.clone()),
            driver: Some(driver.into()),
        };

        let cases: Vec<(SetDriver, ErrorCode, &str)> = vec![
            (full("opencl"), ErrorCode::BadRequest, DRIVER_CHOICES),
            (
                SetDriver {
                    hostname: None,
                    ..full("cuda")
                },
                ErrorCode::BadRequest,
                "hostname is required",
            ),
            (
                SetDriver {
                    token: None,
                    ..full("cuda")
                },
                ErrorCode::BadRequest,
                "token is required",
            ),
            (
                SetDriver {
                    driver: None,
                    ..full("cuda")
                },
                ErrorCode::BadRequest,
                "driver is required",
            ),
            (
                SetDriver {
                    hostname: Some("".into()),
                    ..full("cuda")
                },
                ErrorCode::BadRequest,
                "hostname is required",
            ),
            (
                SetDriver {
                    hostname: Some("elsewhere".into()),
                    ..full("cuda")
                },
                ErrorCode::NotFound,
                "elsewhere",
            ),
            (
                SetDriver {
                    token: Some("ffffffff...".into()),
                    ..full("cuda")
                },
                ErrorCode::NotFound,
                "node-s",
            ),
            (
                SetDriver {
                    token: Some("f".repeat(64)),
                    ..full("cuda")
                },
                ErrorCode::NotFound,
                "node-s",
            ),
            (
                SetDriver {
                    token: Some("not-a-token".into()),
                    ..full("cuda")
                },
                ErrorCode::NotFound,
                "node-s",
            ),
        ];
        for (req, code, says) in cases {
            let e = stack
                .registry_call::<_, SetDriverResult>(ep::SET_DRIVER, &req)
                .await
                .unwrap_err();
            assert_eq!(e.code, code, "{req:?} → {e}");
            assert!(
                e.message.contains(says),
                "{req:?} → {e} (should say {says:?})"
            );
        }

        let drain = Drain {
            hostname: Some("node-s".into()),
            token: Some(listed.clone()),
            drain: Some(true),
        };
        let e = stack
            .registry_call::<_, SetDriverResult>(
                ep::DRAIN,
                &Drain {
                    drain: None,
                    ..drain.clone()
                },
            )
            .await
            .unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (ErrorCode::BadRequest, "drain is required")
        );
        let e = stack
            .registry_call::<_, SetDriverResult>(
                ep::DRAIN,
                &Drain {
                    hostname: None,
                    ..drain.clone()
                },
            )
            .await
            .unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (ErrorCode::BadRequest, "hostname is required")
        );
        let e = stack
            .registry_call::<_, SetDriverResult>(
                ep::DRAIN,
                &Drain {
                    hostname: Some("nope".into()),
                    ..drain
                },
            )
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::NotFound);

        // Nothing was half-written: the node still has no preference and is not drained.
        let node = stack
            .nodes()
            .await
            .nodes
            .into_iter()
            .find(|n| n.hostname == "node-s")
            .unwrap();
        assert_eq!(node.driver_preference, None);
        assert!(!node.draining);
        // A driver value is read case-insensitively.
        let ok: SetDriverResult = stack
            .registry_call(ep::SET_DRIVER, &full("CPU"))
            .await
            .unwrap();
        assert_eq!(
            ok,
            SetDriverResult {
                success: true,
                warning: None
            }
        );
    })
    .await;
}
