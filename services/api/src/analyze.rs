//! `POST /admin/api/analyze` (and `POST /api/analyze` for users): classify the images under an
//! input path with a trained model version, on the nodes' analysis workers.
//!
//! The model resolves through the registry's `models.get` (a user's own; an admin's named
//! `owner`, or the one owner of that name); the input through the browse rules ([`DataRoot`]),
//! an image or a folder of them. Users pay `GANTRY_ANALYZE_PRICE` credit tokens per image
//! through the ledger (admins nothing), refunded when no node could classify them. The images go
//! to one node (see [`pick_node`]) in batches that fit a NATS message; the answer lists one
//! result per image.
//!
//! A request over `GANTRY_ANALYZE_MAX_IMAGES` images (up to `GANTRY_ANALYZE_JOB_MAX_IMAGES`)
//! becomes an analysis job instead ([`queued`]): answered 202 at once, classified by whichever
//! node pulls it from `gantry.jobs.analyze.<driver>`, its results paged from
//! `GET /admin/api/jobs/{id}/results` ([`crate::results`]).

use std::io::{Read as _, Seek as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use gantry_contracts::analysis::{
    model_label, AnalyzeBatch, AnalyzeBatchResult, AnalyzeImage, AnalyzeResult, ModelSpec,
    MAX_BATCH_BYTES, MAX_BATCH_IMAGES, MAX_TOP_K,
};
use gantry_contracts::auth::{CreditChange, CreditResult, Principal, Role};
use gantry_contracts::error::{ErrorCode, ServiceFailure};
use gantry_contracts::jobs::{self, ModelDetail, ModelRef, ModelVersion};
use gantry_contracts::registry::{ClusterClient, ClusterClients, ListQuery};
use gantry_contracts::subjects;
use gantry_runtime::nats;
use gantry_training::dataset::{check_open_file, DatasetLimits, IMAGE_EXTENSIONS};
use poem::Request;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};

use crate::auth::Credentials;
use crate::data_path::DataRoot;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::tags::ApiTags;

mod queued;

/// How long one batch may take on a node, its model's first load included.
const BATCH_TIMEOUT: Duration = Duration::from_secs(120);
/// Deepest folder an input is searched to.
const MAX_DEPTH: usize = 16;
/// Most image bytes one request reads into memory.
const MAX_REQUEST_BYTES: usize = 64 << 20;

fn default_top_k() -> u32 {
    5
}

/// An analysis request.
#[derive(Debug, Clone, Object)]
pub struct AnalyzeBody {
    /// The model: "name" (its latest version) or "name@version"
    #[oai(validator(min_length = 1, max_length = 120))]
    pub model: String,
    /// An image, or a folder of images (searched in sub-folders too), under the data root
    #[oai(validator(min_length = 1, max_length = 1024))]
    pub input_path: String,
    /// Labels per image, most probable first (default: 5, 1 to 100; at most the model's classes)
    #[oai(
        default = "default_top_k",
        validator(minimum(value = "1"), maximum(value = "100"))
    )]
    pub top_k: u32,
    /// Admins: the user id owning the model, when several users have a model of that name
    pub owner: Option<i64>,
    /// A queued analysis's backend: `cuda`, `rocm`, `cpu` or `any` (default)
    #[oai(validator(max_length = 10))]
    pub driver: Option<String>,
}

/// `POST /admin/api/analyze` answers.
#[derive(ApiResponse)]
pub enum AnalyzeResponse {
    /// The images classified.
    #[oai(status = 200)]
    Done(Json<AnalyzeResult>),
    /// More images than are answered at once (`GANTRY_ANALYZE_MAX_IMAGES`): queued as an
    /// analysis job; follow it at `status_url` and page its results from `results_url`.
    #[oai(status = 202)]
    Queued(Json<AnalyzeQueued>),
}

/// A queued analysis job.
#[derive(Debug, Clone, Object)]
pub struct AnalyzeQueued {
    /// The job's id.
    pub job_id: String,
    /// `queued`.
    pub status: gantry_contracts::jobs::JobStatus,
    /// The model version, `name@version`.
    pub model: String,
    /// Images it classifies.
    pub images: u64,
    /// Credit tokens charged (`GANTRY_ANALYZE_PRICE` per image; refunded if it fails).
    pub tokens_used: i64,
    /// The job: status and progress.
    pub status_url: String,
    /// Its results, paged by image (`offset`, `limit`).
    pub results_url: String,
}

/// Analysis for admins and users.
pub struct AnalyzeApi {
    /// Shared state.
    pub state: AppState,
}

/// One image read from the data root.
struct Input {
    path: String,
    data: Vec<u8>,
}

/// The node to send a model's images to: among connected nodes with an analysis worker that
/// serves (`active` or `busy`), those already holding `label` when there are any; then drawn in
/// proportion to their serving workers' weights, `draw` in `[0, 1)` choosing.
pub fn pick_node<'a>(
    clients: &'a [ClusterClient],
    label: &str,
    draw: f64,
) -> Option<&'a ClusterClient> {
    let weight = |c: &ClusterClient| -> u64 {
        c.processes
            .iter()
            .filter(|p| p.serves_analysis())
            .map(|p| u64::from(p.weight.max(1)))
            .sum()
    };
    let serving: Vec<&ClusterClient> = clients
        .iter()
        .filter(|c| c.connected && weight(c) > 0)
        .collect();
    let holding: Vec<&ClusterClient> = serving
        .iter()
        .copied()
        .filter(|c| {
            c.processes
                .iter()
                .any(|p| p.serves_analysis() && p.model.as_deref() == Some(label))
        })
        .collect();
    let pool = if holding.is_empty() { serving } else { holding };
    let total: u64 = pool.iter().map(|c| weight(c)).sum();
    if total == 0 {
        return None;
    }
    let mut point = (draw.clamp(0.0, 1.0) * total as f64) as u64;
    for c in &pool {
        let w = weight(c);
        if point < w {
            return Some(c);
        }
        point -= w;
    }
    pool.last().copied()
}

/// Split `inputs` into batches of at most [`MAX_BATCH_IMAGES`] images and [`MAX_BATCH_BYTES`]
/// bytes (an image is never split; each fits alone, as [`read_inputs`] checks).
fn batches(inputs: Vec<Input>) -> Vec<Vec<AnalyzeImage>> {
    let mut out: Vec<Vec<AnalyzeImage>> = Vec::new();
    let mut bytes = 0;
    for i in inputs {
        let start_new = match out.last() {
            None => true,
            Some(b) => b.len() >= MAX_BATCH_IMAGES || bytes + i.data.len() > MAX_BATCH_BYTES,
        };
        if start_new {
            out.push(Vec::new());
            bytes = 0;
        }
        bytes += i.data.len();
        if let Some(b) = out.last_mut() {
            b.push(AnalyzeImage {
                path: i.path,
                data: i.data,
            });
        }
    }
    out
}

fn has_image_extension(name: &str) -> bool {
    name.rsplit_once('.')
        .is_some_and(|(_, ext)| IMAGE_EXTENSIONS.iter().any(|e| ext.eq_ignore_ascii_case(e)))
}

/// The images `input_path` names, by path (sorted): the file itself, or every PNG/JPEG file
/// under the folder, at most `max_images` of them (more answer 413).
fn list_inputs(
    root: &DataRoot,
    input_path: &str,
    max_images: u32,
) -> ApiResult<Vec<(String, PathBuf)>> {
    let start = root.resolve(input_path)?;
    let mut found: Vec<(String, PathBuf)> = Vec::new();
    if start.real().is_dir() {
        walk(
            root,
            start.real(),
            start.as_str(),
            0,
            max_images,
            &mut found,
        )?;
        if found.is_empty() {
            return Err(ApiError::bad_request(format!(
                "{} holds no PNG or JPEG image",
                start.as_str()
            )));
        }
    } else {
        found.push((start.as_str().to_owned(), start.real().to_path_buf()));
    }
    found.sort();
    Ok(found)
}

/// Read the images `found` lists, each as a plain file (no link followed) with its header checked
/// by the training rules, at most [`MAX_REQUEST_BYTES`] in all.
fn read_inputs(found: Vec<(String, PathBuf)>) -> ApiResult<Vec<Input>> {
    let limits = DatasetLimits::default();
    let mut total = 0;
    let mut inputs = Vec::with_capacity(found.len());
    for (path, real) in found {
        let input = read_one(&path, &real, &limits)?;
        total += input.data.len();
        if total > MAX_REQUEST_BYTES {
            return Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "the input's images add up to more than {} MiB, the most one request analyses; analyse it in parts",
                    MAX_REQUEST_BYTES >> 20
                ),
            ));
        }
        inputs.push(input);
    }
    Ok(inputs)
}

fn too_many(max_images: u32) -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!(
            "the input holds more than {max_images} images, the most one analysis takes \
             (GANTRY_ANALYZE_JOB_MAX_IMAGES); analyse it in parts"
        ),
    )
}

fn walk(
    root: &DataRoot,
    dir: &Path,
    display: &str,
    depth: usize,
    max_images: u32,
    found: &mut Vec<(String, PathBuf)>,
) -> ApiResult<()> {
    if depth > MAX_DEPTH {
        return Err(ApiError::bad_request(format!(
            "{display} is nested deeper than {MAX_DEPTH} folders"
        )));
    }
    let entries = std::fs::read_dir(dir)
        .map_err(|_| ApiError::bad_request(format!("{display} cannot be read")))?;
    for entry in entries {
        let entry =
            entry.map_err(|_| ApiError::bad_request(format!("{display} cannot be read")))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let child = if display == "/" {
            format!("/{name}")
        } else {
            format!("{display}/{name}")
        };
        let kind = entry
            .file_type()
            .map_err(|_| ApiError::bad_request(format!("{child} cannot be read")))?;
        if kind.is_dir() {
            walk(root, &entry.path(), &child, depth + 1, max_images, found)?;
        } else if has_image_extension(&name) {
            if kind.is_symlink() && !root.contains(&entry.path()) {
                return Err(ApiError::forbidden(format!(
                    "{child} resolves outside the data root"
                )));
            }
            if found.len() >= max_images as usize {
                return Err(too_many(max_images));
            }
            found.push((child, entry.path()));
        }
    }
    Ok(())
}

fn read_one(path: &str, real: &Path, limits: &DatasetLimits) -> ApiResult<Input> {
    let not_image = |why: String| ApiError::bad_request(format!("{path} is not an image: {why}"));
    let (mut file, _) = gantry_runtime::dataset::open_plain(real)
        .map_err(|e| not_image(format!("not a readable plain file ({e})")))?;
    check_open_file(&mut file, path, limits).map_err(|e| not_image(e.to_string()))?;
    // The header check read from this handle: the whole file, from its start.
    file.seek(std::io::SeekFrom::Start(0))
        .map_err(|e| not_image(e.to_string()))?;
    let mut data = Vec::new();
    file.take(MAX_BATCH_BYTES as u64 + 1)
        .read_to_end(&mut data)
        .map_err(|e| not_image(e.to_string()))?;
    if data.len() > MAX_BATCH_BYTES {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "{path} is larger than {} KiB, the largest image analysed",
                MAX_BATCH_BYTES / 1024
            ),
        ));
    }
    Ok(Input {
        path: path.to_owned(),
        data,
    })
}

impl AnalyzeApi {
    /// The model version `spec` names, owned by `owner` (`None`: the one owner of that name).
    async fn version(&self, spec: &ModelSpec, owner: Option<i64>) -> ApiResult<ModelVersion> {
        let detail: ModelDetail = self
            .state
            .registry(
                jobs::subjects::MODELS_GET,
                &ModelRef {
                    name: spec.name.clone(),
                    user_id: owner,
                },
            )
            .await?;
        let found = match spec.version {
            Some(v) => detail.versions.into_iter().find(|m| m.version == v),
            None => detail.versions.into_iter().max_by_key(|m| m.version),
        };
        found.ok_or_else(|| match spec.version {
            Some(v) => ApiError::not_found(format!("model {} has no version {v}", spec.name)),
            None => ApiError::not_found(format!("model {} has no version", spec.name)),
        })
    }

    /// Every connected node, every page.
    async fn clients(&self) -> ApiResult<Vec<ClusterClient>> {
        let mut all = Vec::new();
        let mut offset = 0;
        loop {
            let page: ClusterClients = self
                .state
                .registry(
                    subjects::registry::CLIENTS,
                    &ListQuery {
                        offset,
                        limit: None,
                    },
                )
                .await?;
            all.extend(page.clients);
            match page.next_offset {
                Some(next) if next > offset => offset = next,
                _ => return Ok(all),
            }
        }
    }

    async fn charge(&self, user_id: i64, amount: i64, key: &str, n: usize) -> ApiResult<()> {
        let _: CreditResult = nats::request(
            &self.state.nats,
            subjects::auth(subjects::auth::CREDITS_CHARGE),
            &CreditChange {
                user_id,
                amount,
                key: key.to_owned(),
                reason: format!("analysis of {n} images ({key})"),
            },
        )
        .await?;
        Ok(())
    }

    async fn refund(&self, user_id: i64, amount: i64, key: &str) {
        let r: Result<CreditResult, _> = nats::request(
            &self.state.nats,
            subjects::auth(subjects::auth::CREDITS_REFUND),
            &CreditChange {
                user_id,
                amount,
                key: key.to_owned(),
                reason: format!("analysis {key} could not be served"),
            },
        )
        .await;
        if let Err(e) = r {
            tracing::error!(key, error = %e, "refund failed; the ledger key lets a retry complete it");
        }
    }

    async fn analyze(
        &self,
        p: Principal,
        body: AnalyzeBody,
        admin: bool,
    ) -> ApiResult<AnalyzeResponse> {
        let spec = ModelSpec::parse(&body.model).map_err(ApiError::bad_request)?;
        if body.top_k == 0 || body.top_k > MAX_TOP_K {
            return Err(ApiError::bad_request(format!(
                "top_k must be between 1 and {MAX_TOP_K}"
            )));
        }
        // Users analyse with their own models; admins name the owner, or leave it to the
        // registry to find the one owner of that name.
        let owner = if admin { body.owner } else { Some(p.user.id) };
        let version = self.version(&spec, owner).await?;
        let label = model_label(&version.name, version.version);

        let root = self.state.data_root.clone();
        let input_path = body.input_path.clone();
        let at_once = self.state.limits.analyze_max_images;
        let max_images = self.state.limits.analyze_job_max_images.max(at_once);
        let found =
            tokio::task::spawn_blocking(move || list_inputs(&root, &input_path, max_images))
                .await
                .map_err(ApiError::internal)??;
        if found.len() > at_once as usize {
            return self.queue(p, body, admin, version, label, found).await;
        }
        let inputs = tokio::task::spawn_blocking(move || read_inputs(found))
            .await
            .map_err(ApiError::internal)??;
        let n = inputs.len();

        let clients = self.clients().await?;
        let node = pick_node(&clients, &label, rand::random::<f64>())
            .map(|c| c.client_id.clone())
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::Unavailable,
                    "no node can serve analyses now (none connected with an analysis worker that is ready); try again shortly",
                )
            })?;

        let price = if p.user.role == Role::Admin {
            0
        } else {
            self.state.limits.analyze_price.saturating_mul(n as i64)
        };
        let key = format!(
            "{}{}",
            gantry_contracts::analysis::ANSWERED_CHARGE_PREFIX,
            uuid::Uuid::new_v4().simple()
        );
        if price > 0 {
            self.charge(p.user.id, price, &key, n).await?;
        }
        let served = self
            .classify(&node, &version, &label, body.top_k, inputs)
            .await;
        match served {
            Ok(results) => Ok(AnalyzeResponse::Done(Json(AnalyzeResult {
                model: label,
                results,
            }))),
            Err(f) => {
                if price > 0 {
                    self.refund(p.user.id, price, &key).await;
                }
                Err(f.into())
            }
        }
    }

    async fn classify(
        &self,
        node: &str,
        version: &ModelVersion,
        label: &str,
        top_k: u32,
        inputs: Vec<Input>,
    ) -> Result<Vec<gantry_contracts::analysis::ImageResult>, ServiceFailure> {
        let mut results = Vec::with_capacity(inputs.len());
        for images in batches(inputs) {
            let batch = AnalyzeBatch {
                model: label.to_owned(),
                weights_key: version.weights_key.clone(),
                card: version.card.clone(),
                top_k,
                images,
            };
            let expected = batch.images.len();
            let answer: AnalyzeBatchResult = nats::request_within(
                &self.state.nats,
                subjects::node_analyze(node),
                &batch,
                BATCH_TIMEOUT,
            )
            .await?;
            if answer.results.len() != expected {
                return Err(ServiceFailure::new(
                    ErrorCode::Internal,
                    format!(
                        "node {node} answered {} results for {expected} images",
                        answer.results.len()
                    ),
                ));
            }
            results.extend(answer.results);
        }
        Ok(results)
    }
}

#[OpenApi]
impl AnalyzeApi {
    /// Analyze images
    ///
    /// Classifies an image, or every PNG/JPEG image under a folder, with a trained model
    /// version on the cluster's analysis workers: each result lists the `top_k` most probable
    /// labels with their probabilities and the node that classified it. Requests go to a node
    /// that already holds the model when there is one. More images than
    /// `GANTRY_ANALYZE_MAX_IMAGES` answer 202 with a queued analysis job instead (`driver` picks
    /// its backend): follow it at `status_url`, page its results from `results_url`. Unknown
    /// model or version: 404; an input that is not an image: 400 naming it; a model card that
    /// does not match its weights: 409; more images than `GANTRY_ANALYZE_JOB_MAX_IMAGES`: 413;
    /// no node able to serve: 503 with `Retry-After`.
    #[oai(
        path = "/admin/api/analyze",
        method = "post",
        tag = "ApiTags::Analysis",
        operation_id = "analyze"
    )]
    async fn admin_analyze(
        &self,
        req: &Request,
        auth: Credentials,
        body: Json<AnalyzeBody>,
    ) -> ApiResult<AnalyzeResponse> {
        let p = self.state.auth.admin(&auth, req).await?;
        self.analyze(p, body.0, true).await
    }

    /// Analyze images with your model
    ///
    /// As `POST /admin/api/analyze`, with your own models; costs `GANTRY_ANALYZE_PRICE` credit
    /// tokens per image (402 when short), refunded when no node could classify them.
    #[oai(
        path = "/api/analyze",
        method = "post",
        tag = "ApiTags::Analysis",
        operation_id = "analyze_mine"
    )]
    async fn user_analyze(
        &self,
        req: &Request,
        auth: Credentials,
        body: Json<AnalyzeBody>,
    ) -> ApiResult<AnalyzeResponse> {
        let p = self.state.auth.principal(&auth, req).await?;
        self.analyze(p, body.0, false).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_contracts::registry::{GpuInfo, Process, ProcessStatus};

    fn client(id: &str, procs: &[(&str, ProcessStatus, u32, Option<&str>)]) -> ClusterClient {
        ClusterClient {
            client_id: id.into(),
            connected_at: 0.0,
            last_seen: 0.0,
            gpu_info: GpuInfo::default(),
            processes: procs
                .iter()
                .map(|(name, status, weight, model)| Process {
                    name: (*name).into(),
                    status: *status,
                    weight: *weight,
                    model: model.map(str::to_owned),
                    reason: None,
                })
                .collect(),
            hostname: id.into(),
            connected: true,
        }
    }

    #[test]
    fn a_node_already_holding_the_model_is_preferred_whatever_the_draw() {
        let clients = [
            client("a", &[("analysis_cpu", ProcessStatus::Active, 10, None)]),
            client(
                "b",
                &[("analysis_cuda", ProcessStatus::Busy, 10, Some("M@2"))],
            ),
        ];
        for draw in [0.0, 0.3, 0.99] {
            assert_eq!(pick_node(&clients, "M@2", draw).unwrap().client_id, "b");
        }
    }

    #[test]
    fn without_a_holder_nodes_are_drawn_by_weight_and_training_slots_do_not_count() {
        let clients = [
            client(
                "light",
                &[
                    ("train_cpu", ProcessStatus::Active, 1000, None),
                    ("analysis_cpu", ProcessStatus::Active, 10, None),
                ],
            ),
            client(
                "heavy",
                &[("analysis_cuda", ProcessStatus::Active, 30, None)],
            ),
        ];
        assert_eq!(pick_node(&clients, "M@1", 0.1).unwrap().client_id, "light");
        assert_eq!(pick_node(&clients, "M@1", 0.3).unwrap().client_id, "heavy");
        assert_eq!(pick_node(&clients, "M@1", 0.9).unwrap().client_id, "heavy");
    }

    #[test]
    fn unavailable_or_draining_workers_and_training_only_nodes_serve_nothing() {
        let clients = [
            client("t", &[("train_cpu", ProcessStatus::Active, 10, None)]),
            client(
                "u",
                &[("analysis_cpu", ProcessStatus::Unavailable, 10, Some("M@1"))],
            ),
            client("d", &[("analysis_cpu", ProcessStatus::Draining, 10, None)]),
        ];
        assert!(pick_node(&clients, "M@1", 0.5).is_none());
    }

    #[test]
    fn batches_stay_within_the_image_and_byte_bounds() {
        let input = |n: usize| Input {
            path: format!("/{n}"),
            data: vec![0; n],
        };
        let b = batches(vec![input(MAX_BATCH_BYTES - 10), input(20), input(5)]);
        assert_eq!(b.iter().map(Vec::len).collect::<Vec<_>>(), [1, 2]);
        let many = (0..MAX_BATCH_IMAGES + 1).map(|_| input(1)).collect();
        assert_eq!(
            batches(many).iter().map(Vec::len).collect::<Vec<_>>(),
            [MAX_BATCH_IMAGES, 1]
        );
    }

    #[test]
    fn folders_are_searched_for_images_and_other_files_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("val/cat")).unwrap();
        let png = {
            let mut out = std::io::Cursor::new(Vec::new());
            image::RgbImage::new(4, 4)
                .write_to(&mut out, image::ImageFormat::Png)
                .unwrap();
            out.into_inner()
        };
        std::fs::write(dir.path().join("val/cat/a.png"), &png).unwrap();
        std::fs::write(dir.path().join("val/b.png"), &png).unwrap();
        std::fs::write(dir.path().join("val/notes.txt"), "x").unwrap();
        std::fs::write(dir.path().join("val/fake.png"), "not a png").unwrap();
        let root = DataRoot::new(dir.path());
        let read = |path: &str, max: u32| list_inputs(&root, path, max).and_then(read_inputs);
        let err = read("/val", 10).err().unwrap();
        let ApiError::BadRequest(body) = err else {
            panic!("{err:?}")
        };
        assert!(
            body.0.error.message.contains("/val/fake.png"),
            "{}",
            body.0.error.message
        );
        std::fs::remove_file(dir.path().join("val/fake.png")).unwrap();
        let found = read("/val", 10).unwrap();
        let paths: Vec<&str> = found.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(paths, ["/val/b.png", "/val/cat/a.png"]);
        assert!(
            found.iter().all(|i| i.data == png),
            "every image read whole"
        );
        assert!(matches!(read("/val", 1), Err(ApiError::PayloadTooLarge(_))));
        assert!(matches!(
            read("/val/notes.txt", 10),
            Err(ApiError::BadRequest(_))
        ));
    }
}
