//! The HTTP app: every API group, the docs, health, one error envelope, a body limit and a
//! traced span per request.

use poem::http::StatusCode;
use poem::{Body, Endpoint, EndpointExt, IntoResponse, Request, Response, Route};
use poem_openapi::OpenApiService;
use tracing::Instrument;

use crate::analyze::AnalyzeApi;
use crate::browse::BrowseApi;
use crate::cluster::ClusterApi;
use crate::datasets::DatasetsApi;
use crate::docs::{self, Aliased, Docs};
use crate::error::envelope;
use crate::jobs::JobsApi;
use crate::results::ResultsApi;
use crate::session::SessionApi;
use crate::state::AppState;
use crate::tokens::TokensApi;
use crate::train::TrainApi;
use crate::users::UsersApi;

/// Largest request body accepted (413 beyond).
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// Oversized bodies up to this size are read and dropped before the 413 goes out.
const DRAIN_LIMIT_BYTES: usize = 8 << 20;

/// Every API group, admin paths under both prefixes.
pub type Apis = Aliased<(
    BrowseApi,
    TrainApi,
    UsersApi,
    ClusterApi,
    JobsApi,
    SessionApi,
    TokensApi,
    DatasetsApi,
    AnalyzeApi,
    ResultsApi,
)>;

/// The OpenAPI service of every group.
pub fn api_service(state: AppState, hold: std::time::Duration) -> OpenApiService<Apis, ()> {
    OpenApiService::new(
        Aliased((
            BrowseApi(state.clone()),
            TrainApi {
                state: state.clone(),
                hold,
            },
            UsersApi(state.clone()),
            ClusterApi(state.clone()),
            JobsApi(state.clone()),
            SessionApi(state.clone()),
            TokensApi(state.clone()),
            DatasetsApi(state.clone()),
            AnalyzeApi {
                state: state.clone(),
            },
            ResultsApi(state),
        )),
        "Gantry API",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "The control plane of a GPU training cluster. Admin endpoints need an admin's API token \
         (`Authorization: Bearer <token>`) or the session cookie from `POST /api/auth/login`. \
         Errors are `{\"error\": {\"code\", \"message\"}}`.",
    )
}

/// The whole app.
pub fn build(
    state: AppState,
    readiness: gantry_runtime::health::Readiness,
    public_url: Option<String>,
    hold: std::time::Duration,
) -> impl Endpoint<Output = Response> {
    let service = api_service(state, hold);
    let json = service.spec();
    let docs = Docs {
        yaml: service.spec_yaml(),
        swagger: service.swagger_ui_html(),
        spec: std::sync::Arc::new(serde_json::from_str(&json).expect("the spec is JSON")),
        json,
        public_url,
    };
    // Route labels keep the static segments of every route and fold the rest (ids, names).
    // Each admin path is documented once; its alias answers too.
    let templates: Vec<String> = docs.spec["paths"]
        .as_object()
        .map(|p| {
            p.keys()
                .flat_map(|path| std::iter::once(path.clone()).chain(docs::alias_of(path)))
                .collect()
        })
        .unwrap_or_default();
    let known = std::sync::Arc::new(gantry_runtime::metrics::static_segments(
        templates
            .iter()
            .map(String::as_str)
            .chain(docs::PATHS)
            .chain(gantry_runtime::health::PATHS),
    ));
    let mut allowed = allowed_methods(&docs.spec);
    // The documentation and health routes are outside the spec; they answer GET.
    for path in docs::PATHS
        .iter()
        .chain(gantry_runtime::health::PATHS.iter())
    {
        allowed.push((
            path.split('/').map(str::to_owned).collect(),
            vec!["GET".to_owned()],
        ));
    }
    let allowed = std::sync::Arc::new(allowed);
    let operations = std::sync::Arc::new(crate::teach::Operations::new(docs.spec.clone()));
    let route = docs::add_routes(Route::new(), docs);
    gantry_runtime::health::add_routes(route, readiness)
        .nest("/", service)
        .around(move |ep, mut req| {
            let known = known.clone();
            let allowed = allowed.clone();
            let operations = operations.clone();
            async move {
                let started = std::time::Instant::now();
                let method = req.method().to_string();
                let path = req.uri().path().to_owned();
                let query = req.uri().query().unwrap_or_default().to_owned();
                let content_type = req
                    .headers()
                    .get(poem::http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_ascii_lowercase();
                let route = gantry_runtime::metrics::route_label(req.uri().path(), &known);
                // HTTP server span, named and described as the semantic conventions ask.
                let span = tracing::info_span!(
                    "http.request",
                    otel.name = format!("{method} {route}"),
                    otel.kind = "server",
                    http.request.method = %method,
                    http.route = %route,
                    url.path = %req.uri().path(),
                    url.scheme = "http",
                    http.response.status_code = tracing::field::Empty,
                    otel.status_code = tracing::field::Empty,
                );
                gantry_runtime::telemetry::set_parent_from_http(&span, req.headers());
                let mut body = None;
                let resp = async {
                    limit_body(&mut req).await?;
                    body = keep_body(&mut req, &content_type).await?;
                    ep.call(req).await.map(IntoResponse::into_response)
                }
                .instrument(span.clone())
                .await;
                let mut resp = match resp {
                    Ok(r) => r,
                    Err(err) if err.is_from_response() => err.into_response(),
                    Err(err) => match operations.explain(
                        &err,
                        &method,
                        &path,
                        &query,
                        &content_type,
                        body.as_deref(),
                    ) {
                        Some(message) => {
                            crate::error::ApiError::bad_request(message).into_response()
                        }
                        None => envelope(err),
                    },
                };
                if resp.status() == StatusCode::METHOD_NOT_ALLOWED {
                    resp = method_not_allowed(&allowed, &path);
                }
                span.record("http.response.status_code", resp.status().as_u16());
                if resp.status().is_server_error() {
                    span.record("otel.status_code", "ERROR");
                }
                let status = resp.status().as_u16().to_string();
                gantry_runtime::metrics::HTTP_REQUESTS
                    .with_label_values(&[method.as_str(), route.as_str(), status.as_str()])
                    .inc();
                gantry_runtime::metrics::HTTP_REQUEST_SECONDS
                    .with_label_values(&[method.as_str(), route.as_str()])
                    .observe(started.elapsed().as_secs_f64());
                Ok(resp)
            }
        })
}

/// Each documented path template, as segments (`{id}` matching any one), with its methods.
type AllowedMethods = Vec<(Vec<String>, Vec<String>)>;

fn allowed_methods(spec: &serde_json::Value) -> AllowedMethods {
    spec["paths"]
        .as_object()
        .map(|paths| {
            paths
                .iter()
                .flat_map(|(template, item)| {
                    let methods: Vec<String> = item
                        .as_object()
                        .map(|ops| ops.keys().map(|m| m.to_uppercase()).collect())
                        .unwrap_or_default();
                    std::iter::once(template.clone())
                        .chain(docs::alias_of(template))
                        .map(move |t| (t.split('/').map(str::to_owned).collect(), methods.clone()))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// 405 in the envelope, with `Allow` listing the methods the path has.
fn method_not_allowed(allowed: &AllowedMethods, path: &str) -> Response {
    let segments: Vec<&str> = path.split('/').collect();
    let mut methods: Vec<String> = allowed
        .iter()
        .filter(|(template, _)| {
            template.len() == segments.len()
                && template
                    .iter()
                    .zip(&segments)
                    .all(|(t, s)| t == s || (t.starts_with('{') && t.ends_with('}')))
        })
        .flat_map(|(_, m)| m.iter().cloned())
        .collect();
    methods.sort();
    methods.dedup();
    let list = methods.join(", ");
    let mut resp = poem::web::Json(serde_json::json!({ "error": {
        "code": "method_not_allowed",
        "message": format!("method not allowed on this endpoint; it allows {list}"),
    }}))
    .with_status(StatusCode::METHOD_NOT_ALLOWED)
    .into_response();
    if let Ok(value) = list.parse() {
        resp.headers_mut().insert(poem::http::header::ALLOW, value);
    }
    resp
}

/// A JSON or form body, read (within [`MAX_BODY_BYTES`]) and put back, so a refusal of it can
/// be explained.
async fn keep_body(req: &mut Request, content_type: &str) -> poem::Result<Option<bytes::Bytes>> {
    if !(content_type.starts_with("application/json")
        || content_type.starts_with("application/x-www-form-urlencoded"))
    {
        return Ok(None);
    }
    let bytes = req
        .take_body()
        .into_bytes_limit(MAX_BODY_BYTES)
        .await
        .map_err(|_| poem::Error::from_status(StatusCode::PAYLOAD_TOO_LARGE))?;
    req.set_body(Body::from(bytes.clone()));
    Ok(Some(bytes))
}

/// Refuse a body over [`MAX_BODY_BYTES`] with 413: by its `Content-Length` when it has one, else
/// by reading at most that much of it.
async fn limit_body(req: &mut Request) -> poem::Result<()> {
    let too_large = || poem::Error::from_status(StatusCode::PAYLOAD_TOO_LARGE);
    let declared = req
        .headers()
        .get(poem::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        // Read (and drop) a moderately oversized body before answering, so the client finishes
        // sending and sees the 413 instead of a broken connection; beyond that, just refuse.
        Some(n) if n > MAX_BODY_BYTES as u64 => {
            if n <= DRAIN_LIMIT_BYTES as u64 {
                let _ = req.take_body().into_bytes_limit(DRAIN_LIMIT_BYTES).await;
            }
            Err(too_large())
        }
        Some(_) => Ok(()),
        None if req
            .headers()
            .contains_key(poem::http::header::TRANSFER_ENCODING) =>
        {
            let bytes = req
                .take_body()
                .into_bytes_limit(MAX_BODY_BYTES)
                .await
                .map_err(|_| too_large())?;
            req.set_body(Body::from(bytes));
            Ok(())
        }
        None => Ok(()),
    }
}
