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
        datasets_path: "/".into(),
        secure_cookies: false,
        trusted_proxies: Vec::new(),
        slots: Default::default(),
        listings: Default::default(),
        snapshots: Default::default(),
        stored: Default::default(),
        limits: gantry_api::state::Limits {
            packing: 2,
            held: 4,
            streams: 8,
            dataset_bytes: 1 << 30,
            dataset_retention: std::time::Duration::from_secs(3600),
            record_deadline: std::time::Duration::from_secs(150),
            analyze_price: 0,
            analyze_max_images: 256,
            analyze_job_max_images: 100_000,
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

/// Each endpoint is documented once (an admin path's other prefix named in its summary, not
/// repeated), each operation lists only the error statuses [`error_statuses`] gives it, and each
/// resource sits under one tag.
#[tokio::test]
async fn every_endpoint_is_documented_once_with_the_statuses_it_can_answer() {
    use gantry_api::docs::{alias_of, error_statuses};
    let spec = spec().await;
    let paths = spec["paths"].as_object().unwrap();
    let mut ids = BTreeSet::new();
    let mut tags_of_resource: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, item) in paths {
        if let Some(alias) = alias_of(path) {
            assert!(!paths.contains_key(&alias), "{path} is documented twice");
        }
        for (method, op) in item.as_object().unwrap() {
            let id = op["operationId"].as_str().unwrap();
            assert!(ids.insert(id.to_owned()), "{id} appears twice");
            let statuses = error_statuses(id)
                .unwrap_or_else(|| panic!("{method} {path} ({id}) has no entry in error_statuses"));
            let documented: BTreeSet<u16> = op["responses"]
                .as_object()
                .unwrap()
                .keys()
                .filter_map(|s| s.parse::<u16>().ok())
                .filter(|s| *s >= 400)
                .collect();
            let expected: BTreeSet<u16> = statuses.iter().copied().collect();
            assert_eq!(documented, expected, "{method} {path}");
            if let Some(alias) = alias_of(path) {
                let alias = alias.replace(":", "");
                let summary = op["summary"].as_str().unwrap_or_default();
                assert!(
                    summary.ends_with(&format!("(also at {alias})")),
                    "{path}: {summary}"
                );
            }
            let tags: Vec<&str> = op["tags"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Value::as_str)
                .collect();
            assert_eq!(tags.len(), 1, "{method} {path}: {tags:?}");
            // The resource: the path's first segment after the prefix (`users`, `jobs`, ...).
            let resource = path
                .trim_start_matches("/admin/api/")
                .trim_start_matches("/api/admin/")
                .trim_start_matches("/api/")
                .split('/')
                .next()
                .unwrap()
                .to_owned();
            tags_of_resource
                .entry(resource)
                .or_default()
                .insert(tags[0].to_owned());
        }
    }
    for (resource, tags) in &tags_of_resource {
        assert_eq!(tags.len(), 1, "{resource} is split over {tags:?}");
    }
    assert!(ids.len() >= 30, "{ids:?}");
}
