//! Disconnecting the nodes of a revoked cluster token, through the server's system account: the
//! connections are found by their user name (`node:<token_id>:<node_id>`, given by the auth
//! callout) on every server, and kicked.

use std::time::Duration;

use async_nats::Client;
use futures::StreamExt;
use gantry_bus::permissions::ACCOUNT;

/// Name of the bus user of a node admitted with token `token_id`: `node:<token_id>:<node_id>`.
pub fn token_user_prefix(token_id: i64) -> String {
    format!("node:{token_id}:")
}

/// Disconnect every connection whose user name starts with `prefix`, on every server that
/// answers within a moment; how many were disconnected.
pub async fn disconnect(system: &Client, prefix: &str) -> anyhow::Result<usize> {
    let inbox = system.new_inbox();
    let mut replies = system.subscribe(inbox.clone()).await?;
    let query = serde_json::json!({ "auth": true, "acc": ACCOUNT, "limit": 100_000 });
    system
        .publish_with_reply(
            "$SYS.REQ.SERVER.PING.CONNZ",
            inbox,
            serde_json::to_vec(&query)?.into(),
        )
        .await?;
    // Every server answers; the first within two seconds, the rest soon after it.
    let mut servers = Vec::new();
    let mut wait = Duration::from_secs(2);
    while let Ok(Some(msg)) = tokio::time::timeout(wait, replies.next()).await {
        servers.push(msg);
        wait = Duration::from_millis(300);
    }
    let mut kicked = 0;
    for msg in servers {
        let v: serde_json::Value = serde_json::from_slice(&msg.payload)?;
        let Some(server) = v["server"]["id"].as_str() else {
            continue;
        };
        let empty = Vec::new();
        let conns = v["data"]["connections"].as_array().unwrap_or(&empty);
        for c in conns {
            let user = c["authorized_user"].as_str().unwrap_or_default();
            let Some(cid) = c["cid"].as_u64().filter(|_| user.starts_with(prefix)) else {
                continue;
            };
            let kick = serde_json::to_vec(&serde_json::json!({ "cid": cid }))?;
            system
                .request(format!("$SYS.REQ.SERVER.{server}.KICK"), kick.into())
                .await?;
            kicked += 1;
        }
    }
    Ok(kicked)
}
