//! The admin page's seven endpoints are a published contract: their operations in the OpenAPI
//! document, and every schema they reference, must stay as recorded in
//! `tests/openapi_page.json`. Set `GANTRY_DUMP_OPENAPI=<file>` to write the whole document there.

use std::collections::{BTreeMap, BTreeSet};

use gantry_api::app::api_service;
use gantry_api::auth::Authenticator;
use gantry_api::data_path::DataRoot;
use gantry_api::docs::PAGE_OPERATIONS;
use gantry_api::state::AppState;
use serde_json::Value;

/// The whole spec as the api serves it, built without any service behind it.
async fn spec() -> Value {
    let nats = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect("127.0.0.1:1")
        .await
        .expect("a client that connects later");
    let state = AppState {
        auth: Authenticator::new(nats.clone(), None)
            .await
            .expect("an authenticator"),
        nats,
        data_root: DataRoot::new("/data"),
        secure_cookies: false,
        trusted_proxies: Vec::new(),
        slots: Default::default(),
        limits: gantry_api::state::Limits {
            packing: 2,
            held: 4,
            streams: 8,
            dataset_bytes: 1 << 30,
            dataset_retention: std::time::Duration::from_secs(3600),
            record_deadline: std::time::Duration::from_secs(150),
            analyze_price: 0,
            analyze_max_images: 256,
        },
    };
    let text = api_service(state, std::time::Duration::from_secs(1)).spec();
    if let Ok(path) = std::env::var("GANTRY_DUMP_OPENAPI") {
        std::fs::write(path, &text).expect("dump the spec");
    }
    serde_json::from_str(&text).expect("the spec is JSON")
}

fn refs(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            if let Some(r) = m.get("$ref").and_then(Value::as_str) {
                if let Some(name) = r.strip_prefix("#/components/schemas/") {
                    out.insert(name.to_owned());
                }
            }
            m.values().for_each(|v| refs(v, out));
        }
        Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

/// The page's operations (by path and method) and the schemas they reach.
fn page_part(spec: &Value) -> Value {
    let mut ops = BTreeMap::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let id = op["operationId"].as_str().unwrap_or_default();
            if PAGE_OPERATIONS.contains(&id) {
                ops.insert(format!("{method} {path}"), op.clone());
            }
        }
    }
    let mut names = BTreeSet::new();
    ops.values().for_each(|op| refs(op, &mut names));
    let mut schemas = BTreeMap::new();
    while let Some(name) = names.iter().find(|n| !schemas.contains_key(*n)).cloned() {
        let schema = spec["components"]["schemas"][&name].clone();
        refs(&schema, &mut names);
        schemas.insert(name, schema);
    }
    serde_json::json!({ "operations": ops, "schemas": schemas })
}

#[tokio::test]
async fn the_admin_pages_endpoints_are_documented_exactly_as_recorded() {
    let part = page_part(&spec().await);
    let recorded = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openapi_page.json");
    if std::env::var_os("GANTRY_RECORD_OPENAPI").is_some() {
        let text = serde_json::to_string_pretty(&part).unwrap() + "\n";
        std::fs::write(recorded, text).unwrap();
    }
    let want: Value = serde_json::from_str(&std::fs::read_to_string(recorded).unwrap()).unwrap();
    assert!(
        part == want,
        "the admin page's endpoints changed in the OpenAPI document; got:\n{}",
        serde_json::to_string_pretty(&part).unwrap()
    );
}
