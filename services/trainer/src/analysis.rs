//! The analysis workers of this node (`GANTRY_ANALYSIS_WORKERS`): they answer the api's
//! [`AnalyzeBatch`] requests on this node's own `gantry.node.<node_id>.analyze`, each taking a
//! worker while it classifies. The model comes from the [`ModelCache`] (loaded once, on the
//! node's device); the images are preprocessed exactly as the card says and classified in
//! batches on a blocking thread. Each worker shows in `processes` as `analysis_<backend>` with
//! the model it has loaded. They also take queued analysis jobs, one at a time ([`queue`]).

use std::sync::{Arc, Mutex};

use async_nats::service::Service;
use async_nats::{jetstream, Client};
use gantry_contracts::analysis::{AnalyzeBatch, AnalyzeBatchResult, ImageResult, Prediction};
use gantry_contracts::error::{ErrorCode, ServiceFailure};
use gantry_contracts::registry::AnalysisSlot;
use gantry_runtime::metrics::TRAINER_ANALYZED_IMAGES;
use gantry_training::DatasetLimits;
use tokio::sync::{watch, Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::models::ModelCache;
use crate::node::WorkerPlan;

mod queue;

/// What the analysis workers need to know about this node.
pub struct AnalysisConfig {
    /// The node's name, named in every result.
    pub node_name: String,
    /// The node's id: its subject.
    pub node_id: String,
    /// The memory budget of loaded models, bytes.
    pub cache_bytes: u64,
}

/// The analysis workers.
#[derive(Clone)]
pub struct Analysis {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    node_name: String,
    js: jetstream::Context,
    cache: ModelCache,
    slots: Arc<Mutex<Vec<AnalysisSlot>>>,
    changed: Arc<Notify>,
    free: Semaphore,
    plan: watch::Receiver<WorkerPlan>,
}

fn failure(code: ErrorCode, message: impl Into<String>) -> ServiceFailure {
    ServiceFailure::new(code, message.into())
}

/// Marks a worker busy while a request holds it, and free again when it ends however it ends.
struct Held<'a> {
    slots: &'a Mutex<Vec<AnalysisSlot>>,
    index: usize,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = slots.get_mut(self.index) {
            s.busy = false;
        }
    }
}

impl Analysis {
    /// Workers sharing `slots` with the node's heartbeats; `changed` is notified when the model
    /// a worker holds changes, so the listing follows at once.
    pub fn new(
        client: Client,
        config: &AnalysisConfig,
        slots: Arc<Mutex<Vec<AnalysisSlot>>>,
        changed: Arc<Notify>,
        plan: watch::Receiver<WorkerPlan>,
    ) -> Self {
        let workers = slots.lock().map(|s| s.len()).unwrap_or(0);
        Self {
            inner: Arc::new(Inner {
                node_name: config.node_name.clone(),
                js: jetstream::new(client.clone()),
                client,
                cache: ModelCache::new(config.cache_bytes),
                slots,
                changed,
                free: Semaphore::new(workers),
                plan,
            }),
        }
    }

    /// Serve this node's analysis subject under `service` until `shutdown` fires.
    pub async fn serve(
        self,
        service: &Service,
        node_id: &str,
        shutdown: &CancellationToken,
        tracker: &TaskTracker,
    ) -> anyhow::Result<()> {
        let group = service.group(format!("gantry.node.{node_id}"));
        gantry_runtime::endpoint::endpoint(
            &group,
            "analyze",
            &self,
            shutdown,
            tracker,
            |this: Analysis, batch: AnalyzeBatch| async move {
                let n = batch.images.len() as u64;
                let result = this.analyze(batch).await;
                let outcome = result.as_ref().map_or_else(|f| f.code.as_str(), |_| "ok");
                TRAINER_ANALYZED_IMAGES
                    .with_label_values(&[outcome])
                    .inc_by(n);
                result
            },
        )
        .await
    }

    /// Take a free worker, preferring one that served `model` last (so the listing stays put).
    fn take_worker(&self, model: &str) -> Option<Held<'_>> {
        let mut slots = self.inner.slots.lock().unwrap_or_else(|p| p.into_inner());
        let index = slots
            .iter()
            .position(|s| !s.busy && s.model.as_deref() == Some(model))
            .or_else(|| slots.iter().position(|s| !s.busy))?;
        slots[index].busy = true;
        Some(Held {
            slots: &self.inner.slots,
            index,
        })
    }

    /// Name `model` as what worker `index` holds, and forget the `evicted` ones; heartbeat at
    /// once when that changed the listing.
    fn holds(&self, index: usize, model: &str, evicted: &[String]) {
        let mut changed = false;
        {
            let mut slots = self.inner.slots.lock().unwrap_or_else(|p| p.into_inner());
            for s in slots.iter_mut() {
                if s.model.as_ref().is_some_and(|m| evicted.contains(m)) {
                    s.model = None;
                    changed = true;
                }
            }
            if let Some(s) = slots.get_mut(index) {
                if s.model.as_deref() != Some(model) {
                    s.model = Some(model.to_owned());
                    changed = true;
                }
            }
        }
        if changed {
            self.inner.changed.notify_one();
        }
    }

    async fn analyze(&self, batch: AnalyzeBatch) -> Result<AnalyzeBatchResult, ServiceFailure> {
        batch
            .check()
            .map_err(|e| failure(ErrorCode::BadRequest, e))?;
        let closed = || {
            failure(
                ErrorCode::Unavailable,
                "this node takes no work now (drained, failing its health check, or its backend is missing)",
            )
        };
        if !self.inner.plan.borrow().accepting {
            return Err(closed());
        }
        let _permit = self
            .inner
            .free
            .acquire()
            .await
            .map_err(|_| failure(ErrorCode::Unavailable, "this node is stopping"))?;
        let held = self
            .take_worker(&batch.model)
            .ok_or_else(|| failure(ErrorCode::Unavailable, "no analysis worker is free"))?;
        let driver = self.inner.plan.borrow().driver;
        let device = gantry_training::pick_device(driver.as_str())
            .map_err(|e| failure(ErrorCode::Unavailable, e.to_string()))?;
        let got = self
            .inner
            .cache
            .get(
                &self.inner.js,
                &batch.weights_key,
                &batch.model,
                &batch.card,
                device,
            )
            .await?;
        self.holds(held.index, &batch.model, &got.evicted);

        let AnalyzeBatch { images, top_k, .. } = batch;
        let model = got.model;
        let classified = tokio::task::spawn_blocking(move || {
            let bytes: Vec<&[u8]> = images.iter().map(|i| i.data.as_slice()).collect();
            let card = model.lock().unwrap_or_else(|p| p.into_inner()).card.clone();
            // Decoding needs no model: other requests use it meanwhile.
            let tensor = gantry_training::preprocess_for(&card, &bytes, &DatasetLimits::default())
                .map_err(|(i, e)| {
                    failure(
                        ErrorCode::BadRequest,
                        format!("{} is not an image the model can read: {e}", images[i].path),
                    )
                })?;
            let model = model.lock().unwrap_or_else(|p| p.into_inner());
            let top = gantry_training::top_k(&model, &tensor, top_k as usize)
                .map_err(|e| failure(ErrorCode::Internal, format!("classifying: {e}")))?;
            let classes = card.classes;
            let paths: Vec<String> = images.into_iter().map(|i| i.path).collect();
            Ok::<_, ServiceFailure>((paths, top, classes))
        })
        .await
        .map_err(|e| failure(ErrorCode::Internal, format!("classifying: {e}")))??;
        drop(held);
        let (paths, top, classes) = classified;
        let results = paths
            .into_iter()
            .zip(top)
            .map(|(path, top)| ImageResult {
                path,
                top_k: top
                    .into_iter()
                    .map(|(class, probability)| Prediction {
                        label: classes.get(class).cloned().unwrap_or_default(),
                        probability,
                    })
                    .collect(),
                node: self.inner.node_name.clone(),
            })
            .collect();
        Ok(AnalyzeBatchResult { results })
    }
}
