//! `GET /admin/api/browse`: the directories under the data root.

use gantry_contracts::error::ErrorCode;
use poem::Request;
use poem_openapi::param::Query;
use poem_openapi::payload::Json;
use poem_openapi::types::Example;
use poem_openapi::{Object, OpenApi};

use crate::auth::Credentials;
use crate::data_path::{DataPath, DataRoot};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::tags::ApiTags;

/// One entry of a directory.
#[derive(Debug, Clone, Object)]
pub struct BrowseItem {
    /// File or directory name.
    pub name: String,
    /// Its path relative to the data root, with a leading `/`.
    pub path: String,
    /// Whether it is a directory.
    pub is_dir: bool,
    /// Size in bytes (0 for a directory).
    pub size: u64,
}

/// A page of a directory's entries: directories first, then files, each by name.
#[derive(Debug, Clone, Object)]
#[oai(example)]
pub struct BrowseResponse {
    /// The directory listed, relative to the data root.
    pub current_path: String,
    /// Its entries, this page of them.
    pub items: Vec<BrowseItem>,
    /// How many entries the directory has.
    pub total: u64,
    /// The page size asked for.
    pub limit: u32,
    /// Entries skipped before this page.
    pub offset: u64,
}

impl Example for BrowseResponse {
    fn example() -> Self {
        Self {
            current_path: "/some/path".into(),
            items: vec![BrowseItem {
                name: "file.txt".into(),
                path: "/some/path/file.txt".into(),
                is_dir: false,
                size: 1024,
            }],
            total: 1,
            limit: 1000,
            offset: 0,
        }
    }
}

fn default_limit() -> u32 {
    1000
}

/// The browse endpoint.
pub struct BrowseApi(pub AppState);

#[OpenApi]
impl BrowseApi {
    /// Browse the data directory
    ///
    /// Browse files and directories in the configured server directory for administrative purposes.
    #[oai(
        path = "/admin/api/browse",
        method = "get",
        tag = "ApiTags::Data",
        operation_id = "browse",
        code_sample(lang = "curl", source = "crate::docs::samples::BROWSE")
    )]
    async fn browse(
        &self,
        req: &Request,
        auth: Credentials,
        /// Directory path to browse (default: root directory)
        path: Query<Option<String>>,
        /// Entries per page (default: 1000, at most 10000)
        #[oai(
            default = "default_limit",
            validator(minimum(value = "1"), maximum(value = "10000"))
        )]
        limit: Query<u32>,
        /// Entries to skip (default: 0)
        #[oai(default)]
        offset: Query<u64>,
    ) -> ApiResult<Json<BrowseResponse>> {
        self.0.auth.admin(&auth, req).await?;
        let root = self.0.data_root.clone();
        let raw = path.0.unwrap_or_default();
        let (limit, offset) = (limit.0, offset.0);
        tokio::task::spawn_blocking(move || list(&root, &raw, limit, offset))
            .await
            .map_err(ApiError::internal)?
            .map(Json)
    }
}

/// List one page of a directory. Only the page's entries are `stat`ed, so a directory of
/// 100,000 entries lists without touching the rest (and no file is ever opened).
pub fn list(root: &DataRoot, raw: &str, limit: u32, offset: u64) -> ApiResult<BrowseResponse> {
    let dir: DataPath = root.resolve_dir(raw)?;
    let read = std::fs::read_dir(dir.real()).map_err(|_| {
        ApiError::new(
            ErrorCode::Forbidden,
            format!("cannot read directory: {}", dir.as_str()),
        )
    })?;
    // (is_dir, name, is_symlink)
    let mut entries: Vec<(bool, String, bool)> = Vec::new();
    for entry in read.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let Ok(ft) = entry.file_type() else { continue };
        if ft.is_symlink() {
            // Links are listed only when they stay inside the root.
            if !root.contains(&entry.path()) {
                continue;
            }
            let is_dir = entry.path().is_dir();
            entries.push((is_dir, name, true));
        } else {
            entries.push((ft.is_dir(), name, false));
        }
    }
    entries.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    let total = entries.len() as u64;
    let items = entries
        .into_iter()
        .skip(offset.min(total) as usize)
        .take(limit as usize)
        .map(|(is_dir, name, _)| {
            let size = if is_dir {
                0
            } else {
                std::fs::metadata(dir.real().join(&name))
                    .map(|m| m.len())
                    .unwrap_or(0)
            };
            BrowseItem {
                path: dir.child_display(&name),
                name,
                is_dir,
                size,
            }
        })
        .collect();
    Ok(BrowseResponse {
        current_path: dir.as_str().to_owned(),
        items,
        total,
        limit,
        offset,
    })
}
