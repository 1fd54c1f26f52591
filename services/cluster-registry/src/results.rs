//! An analysis job's results: stored by image index as its node's `results` events arrive,
//! checked whole when it reports `analyzed`, and paged by `jobs.results`.
//!
//! Collection `analysis_results` of `<prefix>registry`: one document per image, `_id` =
//! `<job_id>/<index>`. A redelivered job's node writes the same indexes again (the input is the
//! same snapshot, in the same order), so a run of results is replaced whole: delete the run, then
//! insert it. An event applied twice leaves the same documents.

use futures::TryStreamExt;
use gantry_contracts::analysis::{
    ImageResult, ResultsPage, ResultsQuery, MAX_BATCH_IMAGES, MAX_NAME, MAX_RESULTS_PAGE,
};
use gantry_contracts::jobs::{JobEventKind, JobKind, JobRecord, JobStatus};
use gantry_runtime::mongo;
use mongodb::bson::doc;
use mongodb::{Collection, IndexModel};
use serde::{Deserialize, Serialize};

use crate::error::RegistryError;
use crate::jobs::Jobs;
use crate::lifecycle::{self, Transition};

/// One image's result as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ResultDoc {
    #[serde(rename = "_id")]
    id: String,
    job_id: String,
    index: i64,
    #[serde(flatten)]
    result: ImageResult,
}

/// Whether `results` (starting at image `first`) fit an analysis job of `images` images and
/// `top_k` labels each: at most a batch, inside the job's images, each result bounded.
pub fn check_run(
    first: u64,
    results: &[ImageResult],
    images: u64,
    top_k: u32,
) -> Result<(), String> {
    if results.is_empty() || results.len() > MAX_BATCH_IMAGES {
        return Err(format!(
            "a results event holds 1 to {MAX_BATCH_IMAGES} results, not {}",
            results.len()
        ));
    }
    match first.checked_add(results.len() as u64) {
        Some(end) if end <= images => {}
        _ => {
            return Err(format!(
                "results from {first} run past the job's {images} images"
            ))
        }
    }
    for r in results {
        if r.path.is_empty() || r.path.len() > MAX_NAME || r.node.len() > MAX_NAME {
            return Err("a result's path or node is empty or too long".into());
        }
        if r.top_k.is_empty() || r.top_k.len() > top_k as usize {
            return Err(format!(
                "a result lists {} labels; the job asks for {top_k}",
                r.top_k.len()
            ));
        }
        if r.top_k
            .iter()
            .any(|p| p.label.len() > MAX_NAME || !(0.0..=1.0).contains(&p.probability))
        {
            return Err("a label is too long or its probability is not in [0, 1]".into());
        }
    }
    Ok(())
}

impl Jobs {
    fn results_collection(&self) -> Collection<ResultDoc> {
        self.registry()
            .store()
            .database()
            .collection("analysis_results")
    }

    pub(crate) async fn ensure_result_indexes(&self) -> anyhow::Result<()> {
        self.results_collection()
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "job_id": 1, "index": 1 })
                    .build(),
            )
            .await?;
        Ok(())
    }

    /// Store a `results` event of `delivery` for `job`: only an analysis job's, only from the
    /// delivery that holds it, only inside its bounds; anything else is dropped with a warning
    /// (nothing to retry).
    pub(crate) async fn store_results(
        &self,
        job: &JobRecord,
        delivery: u64,
        first: u64,
        results: Vec<ImageResult>,
    ) -> Result<(), RegistryError> {
        let Some(spec) = job
            .analysis
            .as_ref()
            .filter(|_| job.kind == JobKind::Analyze)
        else {
            tracing::warn!(job_id = job.job_id, "results for a job that is no analysis");
            return Ok(());
        };
        let guard = Transition::Progress {
            delivery,
            progress: None,
        };
        if let Err(refused) = lifecycle::check(job, &guard) {
            tracing::info!(
                job_id = job.job_id,
                delivery,
                ?refused,
                "results change nothing"
            );
            return Ok(());
        }
        if let Err(why) = check_run(first, &results, spec.images, spec.top_k) {
            tracing::warn!(
                job_id = job.job_id,
                delivery,
                reason = why,
                "refused results"
            );
            return Ok(());
        }
        let end = first + results.len() as u64;
        let coll = self.results_collection();
        coll.delete_many(doc! {
            "job_id": &job.job_id,
            "index": { "$gte": first as i64, "$lt": end as i64 },
        })
        .await?;
        let docs: Vec<ResultDoc> = results
            .into_iter()
            .enumerate()
            .map(|(i, result)| {
                let index = first as i64 + i as i64;
                ResultDoc {
                    id: format!("{}/{index}", job.job_id),
                    job_id: job.job_id.clone(),
                    index,
                    result,
                }
            })
            .collect();
        coll.insert_many(docs).await?;
        Ok(())
    }

    /// Whether an analysis job's node may call it done with `images` classified: its count is
    /// the job's, and a result is stored for each.
    pub(crate) async fn check_analyzed(
        &self,
        job: &JobRecord,
        images: u64,
    ) -> Result<Result<(), String>, RegistryError> {
        let Some(spec) = job.analysis.as_ref() else {
            return Ok(Err("the job is no analysis".into()));
        };
        if images != spec.images {
            return Ok(Err(format!(
                "it reported {images} images of {}",
                spec.images
            )));
        }
        let results = self.results_collection();
        let count = || mongo::count(&results, doc! { "job_id": &job.job_id });
        let mut stored = count().await?;
        if stored < spec.images {
            // Replicas apply a job's events concurrently: results published before the end may
            // not be applied yet. Store them from the event stream, then count again.
            self.replay_results(job).await?;
            stored = count().await?;
        }
        if stored < spec.images {
            return Ok(Err(format!("{stored} of {} results arrived", spec.images)));
        }
        Ok(Ok(()))
    }

    /// Store every `results` event the job's current delivery published (from the event
    /// stream), as [`Self::store_results`] does on each: repeatable.
    async fn replay_results(&self, job: &JobRecord) -> Result<(), RegistryError> {
        for (_, event) in self.holder_events(job, u64::MAX).await? {
            if let JobEventKind::Results { first, results } = event.kind {
                self.store_results(job, event.delivery, first, results)
                    .await?;
            }
        }
        Ok(())
    }

    /// `jobs.results`: a page of an analysis job's results by index.
    pub async fn results(&self, q: ResultsQuery) -> Result<ResultsPage, RegistryError> {
        if q.limit == 0 || q.limit > MAX_RESULTS_PAGE {
            return Err(RegistryError::BadRequest(format!(
                "limit must be between 1 and {MAX_RESULTS_PAGE}"
            )));
        }
        let not_found = || RegistryError::NotFound(format!("no analysis job {}", q.job_id));
        let job = self
            .load(&q.job_id)
            .await?
            .filter(|j| q.user_id.is_none_or(|u| u == j.user_id))
            .ok_or_else(not_found)?;
        let spec = job
            .analysis
            .clone()
            .filter(|_| job.kind == JobKind::Analyze)
            .ok_or_else(not_found)?;
        let start = q.offset.min(i64::MAX as u64) as i64;
        let end = start.saturating_add(q.limit as i64);
        let docs: Vec<ResultDoc> = self
            .results_collection()
            .find(doc! { "job_id": &job.job_id, "index": { "$gte": start, "$lt": end } })
            .sort(doc! { "index": 1 })
            .await?
            .try_collect()
            .await?;
        // How many are in: all of them once it completed; else as far as its last progress.
        let available = match job.status {
            JobStatus::Completed => spec.images,
            _ => job.progress.as_ref().map_or(0, |p| p.step.min(spec.images)),
        };
        Ok(ResultsPage {
            job_id: job.job_id,
            model: spec.model,
            status: job.status,
            total: spec.images,
            available,
            offset: q.offset,
            limit: q.limit,
            results: docs.into_iter().map(|d| d.result).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_contracts::analysis::Prediction;

    fn result(p: f64) -> ImageResult {
        ImageResult {
            path: "/a.png".into(),
            top_k: vec![Prediction {
                label: "cat".into(),
                probability: p,
            }],
            node: "n".into(),
        }
    }

    #[test]
    fn a_run_must_lie_inside_the_job_and_each_result_be_bounded() {
        assert!(check_run(0, &[result(0.5)], 1, 1).is_ok());
        assert!(check_run(1, &[result(0.5)], 1, 1).is_err(), "past the end");
        assert!(check_run(0, &[], 1, 1).is_err(), "empty");
        assert!(check_run(0, &[result(1.5)], 1, 1).is_err(), "probability");
        assert!(check_run(0, &[result(f64::NAN)], 1, 1).is_err(), "NaN");
        let mut two = result(0.5);
        two.top_k.push(two.top_k[0].clone());
        assert!(
            check_run(0, &[two], 1, 1).is_err(),
            "more labels than top_k"
        );
        let many = vec![result(0.5); MAX_BATCH_IMAGES + 1];
        assert!(check_run(0, &many, u64::MAX, 1).is_err(), "over a batch");
        assert!(
            check_run(u64::MAX, &[result(0.5)], u64::MAX, 1).is_err(),
            "overflow"
        );
    }
}
