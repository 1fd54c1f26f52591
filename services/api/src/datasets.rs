//! `GET /api/datasets`: the datasets users may train on, the sub-folders of
//! `GANTRY_DATASETS_PATH` under the data root that hold class folders.

use poem::Request;
use poem_openapi::param::Query;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

use crate::auth::Credentials;
use crate::data_path::{DataPath, DataRoot};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::tags::ApiTags;

/// Image files counted per dataset, at most (a folder holding more says so).
const MAX_COUNTED: u64 = 100_000;

/// A dataset: one folder per class, images inside.
#[derive(Debug, Clone, Object)]
pub struct DatasetOut {
    /// Folder name.
    pub name: String,
    /// The path to train on (`train_path`).
    pub path: String,
    /// Its class folders, by name.
    pub classes: Vec<String>,
    /// PNG and JPEG images in its class folders (counted up to 100,000).
    pub images: u64,
}

/// A page of datasets, by name.
#[derive(Debug, Clone, Object)]
pub struct DatasetList {
    /// This page.
    pub datasets: Vec<DatasetOut>,
    /// Datasets in all.
    pub total: u64,
    /// Page size.
    pub limit: u32,
    /// Skipped.
    pub offset: u64,
}

fn is_image(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    [".png", ".jpg", ".jpeg"]
        .iter()
        .any(|ext| lower.ends_with(ext))
}

/// The visible sub-folders of `dir` that stay inside the root, by name.
fn folders(root: &DataRoot, dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir() && root.contains(&e.path()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    names
}

/// One page of the datasets under `raw`.
pub fn list(root: &DataRoot, raw: &str, limit: u32, offset: u64) -> ApiResult<DatasetList> {
    let dir: DataPath = root.resolve_dir(raw)?;
    let candidates: Vec<(String, Vec<String>)> = folders(root, dir.real())
        .into_iter()
        .filter_map(|name| {
            let classes = folders(root, &dir.real().join(&name));
            (!classes.is_empty()).then_some((name, classes))
        })
        .collect();
    let total = candidates.len() as u64;
    let datasets = candidates
        .into_iter()
        .skip(offset.min(total) as usize)
        .take(limit as usize)
        .map(|(name, classes)| {
            let base = dir.real().join(&name);
            let mut images = 0;
            for class in &classes {
                let files = std::fs::read_dir(base.join(class)).into_iter().flatten();
                for entry in files.flatten() {
                    if images >= MAX_COUNTED {
                        break;
                    }
                    if entry.file_name().to_str().is_some_and(is_image) {
                        images += 1;
                    }
                }
            }
            DatasetOut {
                path: dir.child_display(&name),
                name,
                classes,
                images,
            }
        })
        .collect();
    Ok(DatasetList {
        datasets,
        total,
        limit,
        offset,
    })
}

fn default_limit() -> u32 {
    100
}

/// The datasets endpoint.
pub struct DatasetsApi(pub AppState);

#[OpenApi]
impl DatasetsApi {
    /// List datasets
    ///
    /// The datasets you may train on: the folders under the configured datasets folder
    /// (`GANTRY_DATASETS_PATH`) that hold class folders, with their classes and image counts.
    #[oai(
        path = "/api/datasets",
        method = "get",
        tag = "ApiTags::Data",
        operation_id = "list_datasets"
    )]
    async fn list_datasets(
        &self,
        req: &Request,
        auth: Credentials,
        /// Page size (default: 100, at most 1000)
        #[oai(
            default = "default_limit",
            validator(minimum(value = "1"), maximum(value = "1000"))
        )]
        limit: Query<u32>,
        /// Datasets to skip (default: 0)
        #[oai(default)]
        offset: Query<u64>,
    ) -> ApiResult<Json<DatasetList>> {
        self.0.auth.principal(&auth, req).await?;
        let root = self.0.data_root.clone();
        let raw = self.0.datasets_path.clone();
        let (limit, offset) = (limit.0, offset.0);
        tokio::task::spawn_blocking(move || list(&root, &raw, limit, offset))
            .await
            .map_err(ApiError::internal)?
            .map(Json)
    }
}
