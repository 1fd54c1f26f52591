//! The loaded-model cache of the analysis workers: each model version's weights are fetched from
//! the models bucket once, checked against their card, loaded onto the node's device and kept
//! while they fit the memory budget (`GANTRY_ANALYSIS_CACHE_MB`); beyond it the least recently
//! used models are dropped. Loads are one at a time, so two requests for a model not yet loaded
//! fetch it once.

use std::sync::{Arc, Mutex};

use async_nats::jetstream;
use gantry_contracts::error::{ErrorCode, ServiceFailure};
use gantry_contracts::jobs::MODELS_BUCKET;
use gantry_contracts::models::ModelCard as ContractCard;
use gantry_training::tch::Device;
use gantry_training::{LoadedModel, ModelCard, TrainError};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

/// A model shared by the requests that use it; one forward pass at a time.
pub type SharedModel = Arc<Mutex<LoadedModel>>;

struct Entry {
    key: String,
    label: String,
    device: Device,
    model: SharedModel,
    bytes: u64,
    used: u64,
}

/// What [`ModelCache::get`] found or did.
pub struct Got {
    /// The model, ready to classify.
    pub model: SharedModel,
    /// True when it was fetched and loaded for this request (not cached).
    pub loaded: bool,
    /// The `name@version` of models dropped to make room.
    pub evicted: Vec<String>,
}

/// Loaded models, least recently used dropped beyond the budget.
pub struct ModelCache {
    budget: u64,
    entries: Mutex<(Vec<Entry>, u64)>,
    loading: tokio::sync::Mutex<()>,
}

fn failure(code: ErrorCode, message: impl Into<String>) -> ServiceFailure {
    ServiceFailure::new(code, message.into())
}

impl ModelCache {
    /// An empty cache holding at most `budget` bytes of weights.
    pub fn new(budget: u64) -> Self {
        Self {
            budget,
            entries: Mutex::new((Vec::new(), 0)),
            loading: tokio::sync::Mutex::new(()),
        }
    }

    fn lookup(&self, key: &str, device: Device) -> Option<SharedModel> {
        let mut guard = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (entries, tick) = &mut *guard;
        *tick += 1;
        let now = *tick;
        let e = entries
            .iter_mut()
            .find(|e| e.key == key && e.device == device)?;
        e.used = now;
        Some(e.model.clone())
    }

    /// The `name@version` of every model held now.
    pub fn held(&self) -> Vec<String> {
        let guard = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        guard.0.iter().map(|e| e.label.clone()).collect()
    }

    /// The model stored under `key` (`label` is its `name@version`, `card` its card) on
    /// `device`: from the cache, or fetched from the models bucket and loaded.
    pub async fn get(
        &self,
        js: &jetstream::Context,
        key: &str,
        label: &str,
        card: &ContractCard,
        device: Device,
    ) -> Result<Got, ServiceFailure> {
        if let Some(model) = self.lookup(key, device) {
            return Ok(Got {
                model,
                loaded: false,
                evicted: Vec::new(),
            });
        }
        let _one_at_a_time = self.loading.lock().await;
        if let Some(model) = self.lookup(key, device) {
            return Ok(Got {
                model,
                loaded: false,
                evicted: Vec::new(),
            });
        }
        let weights = self.fetch(js, key, label, card).await?;
        let bytes = weights.len() as u64;
        let training_card: ModelCard = serde_json::to_value(card)
            .and_then(serde_json::from_value)
            .map_err(|e| {
                failure(
                    ErrorCode::Conflict,
                    format!("the card of {label} cannot be read: {e}"),
                )
            })?;
        let loaded = tokio::task::spawn_blocking(move || {
            gantry_training::load_model(&training_card, &weights, device)
        })
        .await
        .map_err(|e| failure(ErrorCode::Internal, format!("loading {label}: {e}")))?;
        let model = match loaded {
            Ok(m) => m,
            Err(TrainError::BadWeights(why)) => {
                gantry_runtime::metrics::TRAINER_MODEL_LOADS
                    .with_label_values(&["refused"])
                    .inc();
                return Err(failure(
                    ErrorCode::Conflict,
                    format!("the card of {label} does not match its weights: {why}"),
                ));
            }
            Err(e) => {
                return Err(failure(
                    ErrorCode::Internal,
                    format!("loading {label}: {e}"),
                ))
            }
        };
        gantry_runtime::metrics::TRAINER_MODEL_LOADS
            .with_label_values(&["loaded"])
            .inc();
        tracing::info!(model = label, bytes, ?device, "model loaded");
        let model = Arc::new(Mutex::new(model));
        let evicted = self.insert(Entry {
            key: key.to_owned(),
            label: label.to_owned(),
            device,
            model: model.clone(),
            bytes,
            used: 0,
        });
        Ok(Got {
            model,
            loaded: true,
            evicted,
        })
    }

    /// Insert `entry` as the most recently used and drop the least recently used others until
    /// the budget holds (the newest always stays). Returns the labels dropped.
    fn insert(&self, mut entry: Entry) -> Vec<String> {
        let mut guard = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (entries, tick) = &mut *guard;
        *tick += 1;
        entry.used = *tick;
        // The same weights on another device (the driver changed): replaced.
        let mut evicted: Vec<String> = Vec::new();
        entries.retain(|e| {
            let same = e.key == entry.key;
            if same {
                evicted.push(e.label.clone());
            }
            !same
        });
        let held: Vec<(u64, u64)> = entries.iter().map(|e| (e.bytes, e.used)).collect();
        let mut victims = lru_victims(&held, entry.bytes, self.budget);
        // Removed from the back, so the indices still to remove stay valid.
        victims.sort_unstable_by(|a, b| b.cmp(a));
        for i in victims {
            let e = entries.remove(i);
            tracing::info!(model = %e.label, bytes = e.bytes, "model dropped from the cache");
            evicted.push(e.label);
        }
        entries.push(entry);
        evicted
    }

    /// The weights under `key`, at most the budget, matching the card's size and digest.
    async fn fetch(
        &self,
        js: &jetstream::Context,
        key: &str,
        label: &str,
        card: &ContractCard,
    ) -> Result<Vec<u8>, ServiceFailure> {
        let unavailable = |e: &dyn std::fmt::Display| {
            tracing::warn!(error = %e, model = label, "model store unavailable");
            failure(
                ErrorCode::Unavailable,
                "the model store is unreachable; try again shortly",
            )
        };
        if card.weights_bytes > self.budget {
            return Err(failure(
                ErrorCode::Unavailable,
                format!(
                    "{label} needs {} bytes, more than this node's model memory (GANTRY_ANALYSIS_CACHE_MB)",
                    card.weights_bytes
                ),
            ));
        }
        let store = js
            .get_object_store(MODELS_BUCKET)
            .await
            .map_err(|e| unavailable(&e))?;
        let object = store.get(key).await.map_err(|e| match e.kind() {
            jetstream::object_store::GetErrorKind::NotFound => failure(
                ErrorCode::NotFound,
                format!("the weights of {label} are missing"),
            ),
            _ => unavailable(&e),
        })?;
        let mut weights = Vec::new();
        object
            .take(self.budget + 1)
            .read_to_end(&mut weights)
            .await
            .map_err(|e| unavailable(&e))?;
        if weights.len() as u64 > self.budget {
            return Err(failure(
                ErrorCode::Unavailable,
                format!(
                    "{label} is larger than this node's model memory (GANTRY_ANALYSIS_CACHE_MB)"
                ),
            ));
        }
        let mismatch = |what: &str| {
            gantry_runtime::metrics::TRAINER_MODEL_LOADS
                .with_label_values(&["refused"])
                .inc();
            failure(
                ErrorCode::Conflict,
                format!("the card of {label} does not match its weights: {what}"),
            )
        };
        if card.weights_bytes != 0 && card.weights_bytes != weights.len() as u64 {
            return Err(mismatch(&format!(
                "the card says {} bytes, the store holds {}",
                card.weights_bytes,
                weights.len()
            )));
        }
        if !card.weights_sha256.is_empty()
            && hex::encode(Sha256::digest(&weights)) != card.weights_sha256
        {
            return Err(mismatch("their SHA-256 differs"));
        }
        Ok(weights)
    }
}

/// Which of the models held (`(bytes, last used)` each) to drop, least recently used first, so
/// that `incoming` bytes more stay within `budget`. The incoming model itself always stays.
fn lru_victims(held: &[(u64, u64)], incoming: u64, budget: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..held.len()).collect();
    order.sort_by_key(|i| held[*i].1);
    let mut total: u64 = held.iter().map(|h| h.0).sum::<u64>() + incoming;
    let mut victims = Vec::new();
    for i in order {
        if total <= budget {
            break;
        }
        total -= held[i].0;
        victims.push(i);
    }
    victims
}

#[cfg(test)]
mod tests {
    use super::lru_victims;

    #[test]
    fn the_least_recently_used_models_go_until_the_new_one_fits() {
        // Three models of 40 bytes, used at ticks 5, 2 and 9, in a budget of 100.
        let held = [(40, 5), (40, 2), (40, 9)];
        assert_eq!(lru_victims(&held, 0, 120), Vec::<usize>::new());
        assert_eq!(lru_victims(&held, 10, 120), vec![1]);
        assert_eq!(lru_victims(&held, 50, 100), vec![1, 0]);
    }

    #[test]
    fn a_model_larger_than_the_budget_empties_the_cache_but_stays() {
        let held = [(40, 1), (40, 2)];
        assert_eq!(lru_victims(&held, 500, 100), vec![0, 1]);
        assert_eq!(lru_victims(&[], 500, 100), Vec::<usize>::new());
    }
}
