//! The API's documentation, all from one source: the operations' own definitions.
//!
//! - [`Aliased`] serves every admin operation under both `/admin/api/...` and `/api/admin/...`
//!   and documents it once, under the path it is defined with (the admin page's own), its
//!   summary naming the other; each operation lists only the error statuses it can answer
//!   ([`error_statuses`]).
//! - `/admin/api/openapi.json` and `.yaml`: the OpenAPI 3 spec.
//! - `/admin/api/docs`: Swagger UI, its script and styles served by Gantry itself.
//! - `/admin/api`: the admin API page, rendered from the spec: each endpoint with its parameters,
//!   a curl example using the request's own host, and its response example.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use poem::http::Method;
use poem::web::Html;
use poem::{handler, EndpointExt, Request};
use poem_openapi::registry::{MetaApi, Registry};
use poem_openapi::OpenApi;
use serde_json::Value;

const ADMIN_API: &str = "/admin/api/";
const API_ADMIN: &str = "/api/admin/";

/// The other spelling of an admin path, if it is one.
pub fn alias_of(path: &str) -> Option<String> {
    if let Some(rest) = path.strip_prefix(ADMIN_API) {
        Some(format!("{API_ADMIN}{rest}"))
    } else {
        path.strip_prefix(API_ADMIN)
            .map(|rest| format!("{ADMIN_API}{rest}"))
    }
}

/// `text` with a line added, made `'static` once per distinct result (the docs are built once).
fn leak_once(text: String) -> &'static str {
    static TEXTS: OnceLock<Mutex<HashMap<String, &'static str>>> = OnceLock::new();
    let mut texts = TEXTS.get_or_init(Default::default).lock().unwrap();
    if let Some(t) = texts.get(&text) {
        return t;
    }
    let leaked: &'static str = Box::leak(text.clone().into_boxed_str());
    texts.insert(text, leaked);
    leaked
}

/// Serves every admin operation of `T` under both prefixes; documents each once, under the path
/// it is defined with, its summary naming the other.
pub struct Aliased<T>(pub T);

impl<T: OpenApi> OpenApi for Aliased<T> {
    fn meta() -> Vec<MetaApi> {
        let mut apis = T::meta();
        for api in &mut apis {
            for path in &mut api.paths {
                let alias = alias_of(&path.path);
                for op in &mut path.operations {
                    // In the summary: the page's descriptions stay word for word.
                    if let Some(alias) = &alias {
                        let note = format!("also at {}", openapi_path(alias));
                        op.summary = Some(leak_once(match op.summary {
                            Some(d) => format!("{d} ({note})"),
                            None => note,
                        }));
                    }
                    if let Some(statuses) = op.operation_id.and_then(error_statuses) {
                        op.responses
                            .responses
                            .retain(|r| r.status.is_none_or(|s| s < 400 || statuses.contains(&s)));
                    }
                }
            }
        }
        apis
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }

    fn add_routes(
        self,
        table: &mut HashMap<String, HashMap<Method, poem::endpoint::BoxEndpoint<'static>>>,
    ) {
        let mut inner = HashMap::new();
        self.0.add_routes(&mut inner);
        for (path, methods) in inner {
            let alias = alias_of(&path);
            for (method, ep) in methods {
                let ep = std::sync::Arc::new(ep);
                if let Some(alias) = &alias {
                    table
                        .entry(alias.clone())
                        .or_default()
                        .insert(method.clone(), ep.clone().boxed());
                }
                table
                    .entry(path.clone())
                    .or_default()
                    .insert(method, ep.boxed());
            }
        }
    }
}

/// A poem path (`/users/:id`) as OpenAPI writes it (`/users/{id}`).
fn openapi_path(path: &str) -> String {
    path.split('/')
        .map(|seg| match seg.strip_prefix(':') {
            Some(name) => format!("{{{name}}}"),
            None => seg.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The error statuses each operation can answer, by operation id; the docs list only these.
///
/// What decides them: 400 for any parameter or body; 401 for every authenticated operation;
/// 403 for admin operations (a user's token) and for writes (a cookie from another origin);
/// 404 where an id, name or path is looked up; 409 where a state or a name can conflict;
/// 413 and 415 for operations with a body; 402, 422 and 429 where a charge, an unusable
/// request or a rate limit apply; 500 and 503 everywhere (a service behind the api can fail).
pub fn error_statuses(operation_id: &str) -> Option<&'static [u16]> {
    const READ: &[u16] = &[400, 401, 403, 500, 503];
    const READ_ONE: &[u16] = &[400, 401, 403, 404, 500, 503];
    const MY_READ: &[u16] = &[400, 401, 500, 503];
    const MY_READ_ONE: &[u16] = &[400, 401, 404, 500, 503];
    const WRITE_ONE: &[u16] = &[400, 401, 403, 404, 409, 500, 503];
    const NODE_OP: &[u16] = &[400, 401, 403, 404, 409, 413, 415, 500, 503];
    Some(match operation_id {
        "browse" => READ_ONE,
        "train" => &[400, 401, 403, 404, 409, 413, 415, 422, 429, 500, 503],
        "train_user" => &[400, 401, 402, 403, 404, 409, 413, 415, 422, 429, 500, 503],
        "list_users"
        | "list_cluster_tokens"
        | "cluster_nodes"
        | "list_cluster_clients"
        | "list_jobs" => READ,
        "create_user" | "create_cluster_token" => &[400, 401, 403, 409, 413, 415, 500, 503],
        "update_user" => NODE_OP,
        "get_user" | "get_job" | "job_events" | "user_ledger" | "revoke_cluster_token" => READ_ONE,
        "delete_user" | "cancel_job" | "cancel_my_job" => WRITE_ONE,
        "revoke_token" => &[400, 401, 403, 404, 500, 503],
        "set_driver" | "drain_node" | "undrain_node" => NODE_OP,
        "list_models" => &[400, 401, 403, 500, 503],
        "get_model" | "download_model" => &[400, 401, 403, 404, 409, 500, 503],
        "list_my_jobs" | "list_my_models" | "list_tokens" | "list_datasets" => MY_READ,
        "get_my_job" | "my_job_events" | "get_my_model" | "download_my_model"
        | "my_job_results" => MY_READ_ONE,
        "job_results" => READ_ONE,
        "analyze" => &[400, 401, 403, 404, 409, 413, 415, 500, 503],
        "analyze_mine" => &[400, 401, 402, 403, 404, 409, 413, 415, 500, 503],
        "login" => &[400, 401, 403, 413, 415, 429, 500, 503],
        "logout" => &[401, 403, 500, 503],
        "me" => &[401, 500, 503],
        "create_token" => &[400, 401, 403, 409, 413, 415, 500, 503],
        _ => return None,
    })
}

/// The admin page's endpoints, in the page's order (by operation id).
pub const PAGE_OPERATIONS: [&str; 7] = [
    "browse",
    "train",
    "list_users",
    "list_cluster_tokens",
    "list_cluster_clients",
    "cluster_nodes",
    "set_driver",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn resolve<'a>(spec: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => r
            .strip_prefix("#/components/schemas/")
            .and_then(|name| {
                spec.pointer(&format!("/components/schemas/{}", name.replace('/', "~1")))
            })
            .unwrap_or(schema),
        None => schema,
    }
}

fn type_name(spec: &Value, schema: &Value) -> String {
    let s = resolve(spec, schema);
    if let Some(t) = s.get("type").and_then(Value::as_str) {
        return t.to_owned();
    }
    if let Some(all) = s.get("allOf").and_then(Value::as_array) {
        if let Some(first) = all.first() {
            return type_name(spec, first);
        }
    }
    if s.get("enum").is_some() {
        return "string".into();
    }
    "object".into()
}

struct Param {
    name: String,
    ty: String,
    required: bool,
    description: String,
}

fn params(spec: &Value, op: &Value) -> Vec<Param> {
    let mut out = Vec::new();
    for p in op
        .get("parameters")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let mut description = p
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if let Some(d) = p.pointer("/schema/default") {
            if !description.contains("default") {
                description.push_str(&format!(" (default: {d})"));
            }
        }
        out.push(Param {
            name: p["name"].as_str().unwrap_or_default().into(),
            ty: type_name(spec, &p["schema"]),
            required: p["required"].as_bool().unwrap_or(false),
            description,
        });
    }
    // Every content type of a body carries the same fields; take the first.
    let body = op
        .pointer("/requestBody/content")
        .and_then(Value::as_object)
        .and_then(|c| c.values().find_map(|m| m.get("schema")));
    if let Some(schema) = body {
        let schema = resolve(spec, schema);
        let required: Vec<&str> = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            for (name, prop) in props {
                // A field that is also a parameter (`wait`) is listed once, as the parameter.
                if let Some(p) = out.iter_mut().find(|p| p.name == *name) {
                    p.description.push_str(" (also accepted as a body field)");
                    continue;
                }
                let resolved = resolve(spec, prop);
                let description = prop
                    .get("description")
                    .or_else(|| resolved.get("description"))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                out.push(Param {
                    name: name.clone(),
                    ty: type_name(spec, prop),
                    required: required.contains(&name.as_str()),
                    description,
                });
            }
        }
    }
    out
}

fn response_example(spec: &Value, op: &Value) -> Option<String> {
    let responses = op.get("responses")?.as_object()?;
    for status in ["200", "201", "202"] {
        if let Some(r) = responses.get(status) {
            let schema = r
                .pointer("/content/application~1json; charset=utf-8/schema")
                .or_else(|| {
                    r.get("content")?
                        .as_object()?
                        .values()
                        .next()?
                        .get("schema")
                })?;
            let schema = resolve(spec, schema);
            if let Some(example) = schema.get("example") {
                return Some(serde_json::to_string_pretty(example).unwrap_or_default());
            }
        }
    }
    None
}

/// Render the admin page from the spec, with curl examples pointing at `host_url`.
pub fn render_page(spec: &Value, host_url: &str) -> String {
    let mut ops: Vec<(String, String, &Value)> = Vec::new();
    if let Some(paths) = spec.get("paths").and_then(Value::as_object) {
        for (path, item) in paths {
            for (method, op) in item.as_object().into_iter().flatten() {
                ops.push((method.to_uppercase(), path.clone(), op));
            }
        }
    }
    let id = |op: &Value| {
        op.get("operationId")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let mut page_ops: Vec<&(String, String, &Value)> = ops
        .iter()
        .filter(|(_, _, op)| PAGE_OPERATIONS.contains(&id(op).as_str()))
        .collect();
    page_ops.sort_by_key(|(_, _, op)| PAGE_OPERATIONS.iter().position(|p| *p == id(op)));
    let mut other_ops: Vec<&(String, String, &Value)> = ops
        .iter()
        .filter(|(_, _, op)| !PAGE_OPERATIONS.contains(&id(op).as_str()))
        .collect();
    other_ops.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(&b.0)));

    let mut html = String::from(PAGE_HEAD);
    html.push_str("<h1>Admin API Documentation</h1>\n<p class=\"lead\">Administrative API endpoints for system management</p>\n");
    html.push_str(
        "<div class=\"note\"><h3>Admin Authentication Required</h3><p>All endpoints require admin authentication via \
         login session or admin API token (Bearer token in Authorization header).</p></div>\n",
    );
    html.push_str("<p class=\"links\"><a href=\"/admin/api/docs\">Swagger UI</a> · <a href=\"/admin/api/openapi.json\">openapi.json</a> · <a href=\"/admin/api/openapi.yaml\">openapi.yaml</a></p>\n");
    for (method, path, op) in page_ops.iter().copied().chain(other_ops.iter().copied()) {
        let i = id(op);
        html.push_str(&format!(
            "<section class=\"endpoint\" id=\"{}\">\n",
            esc(&i)
        ));
        html.push_str(&format!(
            "<div class=\"head\"><span class=\"method {m}\">{m}</span> <code class=\"path\">{p}</code></div>\n",
            m = esc(method),
            p = esc(path)
        ));
        if let Some(alias) = alias_of(path) {
            html.push_str(&format!(
                "<p class=\"alias\">Also answers at <code>{}</code>.</p>\n",
                esc(&alias)
            ));
        }
        let text = op
            .get("description")
            .or_else(|| op.get("summary"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        html.push_str(&format!("<p>{}</p>\n", esc(text)));
        let ps = params(spec, op);
        if !ps.is_empty() {
            html.push_str("<h4>Parameters</h4>\n<dl class=\"params\">\n");
            for p in ps {
                html.push_str(&format!(
                    "<dt><code>{}</code> <span class=\"type\">{}</span> <span class=\"req\">({})</span></dt><dd>{}</dd>\n",
                    esc(&p.name),
                    esc(&p.ty),
                    if p.required { "required" } else { "optional" },
                    esc(&p.description)
                ));
            }
            html.push_str("</dl>\n");
        }
        if let Some(sample) = op
            .pointer("/x-code-samples/0/source")
            .and_then(Value::as_str)
        {
            html.push_str("<h4>Curl Example</h4>\n");
            html.push_str(&format!(
                "<pre class=\"curl\">{}</pre>\n",
                esc(&sample.replace("{{ request.host_url }}", host_url))
            ));
        }
        if let Some(example) = response_example(spec, op) {
            html.push_str("<h4>Response</h4>\n");
            html.push_str(&format!(
                "<pre class=\"response\">{}</pre>\n",
                esc(&example)
            ));
        }
        html.push_str("</section>\n");
    }
    html.push_str("</main></body></html>\n");
    html
}

const PAGE_HEAD: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Admin API Documentation</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font-family:system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
main{max-width:60rem;margin:0 auto;padding:2rem}
.note{background:#fff7e0;border-left:4px solid #e0a800;padding:.5rem 1rem;margin:1rem 0}
.endpoint{background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:1rem 1.25rem;margin:1.25rem 0}
.method{font-weight:700;padding:.15rem .5rem;border-radius:4px;color:#fff;background:#2f6fde}
.method.POST{background:#1f9d55}.method.PATCH{background:#b7791f}.method.DELETE{background:#c53030}
pre{background:#1d2330;color:#e6e9ef;padding:.75rem;border-radius:4px;overflow-x:auto;white-space:pre-wrap}
dt{margin-top:.5rem}.type{color:#6b7280}.alias{color:#6b7280;font-size:.9em}
</style></head><body><main>
"#;

/// The spec as served, built once.
#[derive(Clone)]
pub struct Docs {
    /// OpenAPI JSON.
    pub json: String,
    /// OpenAPI YAML.
    pub yaml: String,
    /// Swagger UI page (script and styles inline).
    pub swagger: String,
    /// The spec, parsed, for the page.
    pub spec: std::sync::Arc<Value>,
    /// `GANTRY_PUBLIC_URL`, for curl examples.
    pub public_url: Option<String>,
}

#[handler]
fn page(req: &Request, docs: poem::web::Data<&Docs>) -> Html<String> {
    let host_url = match &docs.public_url {
        Some(u) => format!("{u}/"),
        None => {
            let host = req
                .headers()
                .get("host")
                .and_then(|h| h.to_str().ok())
                .unwrap_or("localhost");
            format!("http://{host}/")
        }
    };
    Html(render_page(&docs.spec, &host_url))
}

#[handler]
fn openapi_json(docs: poem::web::Data<&Docs>) -> poem::Response {
    poem::Response::builder()
        .content_type("application/json")
        .body(docs.json.clone())
}

#[handler]
fn openapi_yaml(docs: poem::web::Data<&Docs>) -> poem::Response {
    poem::Response::builder()
        .content_type("application/yaml")
        .body(docs.yaml.clone())
}

#[handler]
fn swagger(docs: poem::web::Data<&Docs>) -> Html<String> {
    Html(docs.swagger.clone())
}

/// The paths [`add_routes`] serves.
pub const PATHS: [&str; 4] = [
    "/admin/api",
    "/admin/api/openapi.json",
    "/admin/api/openapi.yaml",
    "/admin/api/docs",
];

/// Add the documentation routes, readable without logging in (they hold no data).
pub fn add_routes(route: poem::Route, docs: Docs) -> poem::Route {
    route
        .at("/admin/api", poem::get(page).data(docs.clone()))
        .at("/admin/api/", poem::get(page).data(docs.clone()))
        .at(
            "/admin/api/openapi.json",
            poem::get(openapi_json).data(docs.clone()),
        )
        .at(
            "/admin/api/openapi.yaml",
            poem::get(openapi_yaml).data(docs.clone()),
        )
        .at("/admin/api/docs", poem::get(swagger).data(docs.clone()))
        .at("/admin/api/docs/", poem::get(swagger).data(docs))
}

/// Curl examples of the operations; `{{ request.host_url }}` becomes the server's URL on the
/// rendered page.
pub mod samples {
    /// Curl example.
    pub const BROWSE: &str = "curl -H \"Authorization: Bearer YOUR_ADMIN_API_TOKEN\" \\\n  \"{{ request.host_url }}admin/api/browse?path=/some/path\"";
    /// Curl example.
    pub const LIST_USERS: &str = "curl -H \"Authorization: Bearer YOUR_ADMIN_API_TOKEN\" \\\n  {{ request.host_url }}admin/api/users";
    /// Curl example.
    pub const CREATE_USER: &str = "curl -X POST -H \"Authorization: Bearer YOUR_ADMIN_API_TOKEN\" -H \"Content-Type: application/json\" \\\n  -d '{\"username\": \"user1\", \"email\": \"user1@example.com\", \"password\": \"a long password\", \"tokens\": 1000}' \\\n  {{ request.host_url }}admin/api/users";
    /// Curl example.
    pub const UPDATE_USER: &str = "curl -X PATCH -H \"Authorization: Bearer YOUR_ADMIN_API_TOKEN\" -H \"Content-Type: application/json\" \\\n  -d '{\"tokens_delta\": 500, \"reason\": \"monthly allowance\"}' \\\n  {{ request.host_url }}admin/api/users/2";
    /// Curl example.
    pub const LIST_CLUSTER_TOKENS: &str = "curl -H \"Authorization: Bearer YOUR_ADMIN_API_TOKEN\" \\\n  {{ request.host_url }}admin/api/cluster_tokens";
    /// Curl example.
    pub const CREATE_CLUSTER_TOKEN: &str = "curl -X POST -H \"Authorization: Bearer YOUR_ADMIN_API_TOKEN\" -H \"Content-Type: application/json\" \\\n  -d '{\"name\": \"Worker Token\"}' {{ request.host_url }}admin/api/cluster_tokens";
    /// Curl example.
    pub const LIST_CLUSTER_CLIENTS: &str = "curl -H \"Authorization: Bearer YOUR_ADMIN_API_TOKEN\" \\\n  {{ request.host_url }}admin/api/cluster_clients";
    /// Curl example.
    pub const CLUSTER_NODES: &str = "curl -H \"Authorization: Bearer YOUR_ADMIN_API_TOKEN\" \\\n  {{ request.host_url }}api/admin/cluster_nodes";
    /// Curl example.
    pub const SET_DRIVER: &str = "curl -X POST -H \"Authorization: Bearer YOUR_ADMIN_API_TOKEN\" \\\n  -F \"hostname=worker1.example.com\" \\\n  -F \"token=abc123...\" \\\n  -F \"driver=cuda\" \\\n  {{ request.host_url }}api/admin/cluster_nodes/set_driver";
    /// Curl example.
    pub const TRAIN: &str = "curl -X POST -H \"Authorization: Bearer YOUR_ADMIN_API_TOKEN\" \\\n  -H \"Content-Type: application/json\" \\\n  -d '{\n    \"output_model\": \"MyModel\",\n    \"description\": \"Custom trained model\",\n    \"train_path\": \"/path/to/training/data\"\n  }' \\\n  {{ request.host_url }}admin/api/train";
}
