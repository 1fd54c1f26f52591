//! Checkpoint I/O: a job's last checkpoint lives in the uploads bucket under
//! [`checkpoint_key`], so whichever node runs the job next resumes from it. Read before training,
//! written after every epoch, deleted once the job is over.

use anyhow::Context as _;
use async_nats::jetstream::{self, object_store::GetErrorKind, object_store::ObjectStore};
use gantry_contracts::jobs::{checkpoint_key, UPLOADS_BUCKET};
use gantry_training::Checkpoint;
use tokio::io::AsyncReadExt;

/// The checkpoints of this node's jobs; cheap to clone.
#[derive(Clone)]
pub struct Checkpoints {
    js: jetstream::Context,
}

impl Checkpoints {
    /// Checkpoints in the models bucket of `js`.
    pub fn new(js: jetstream::Context) -> Self {
        Self { js }
    }

    async fn store(&self) -> anyhow::Result<ObjectStore> {
        gantry_runtime::jetstream::bucket_store(&self.js, UPLOADS_BUCKET).await
    }

    /// The job's last checkpoint; `None` when it has none, or one this build cannot read (the
    /// job then trains from the start).
    pub async fn read(&self, job_id: &str) -> anyhow::Result<Option<Checkpoint>> {
        let store = self.store().await?;
        let mut object = match store.get(checkpoint_key(job_id)).await {
            Ok(o) => o,
            Err(e) if e.kind() == GetErrorKind::NotFound => return Ok(None),
            Err(e) => anyhow::bail!("opening the checkpoint: {e}"),
        };
        let mut bytes = Vec::new();
        object
            .read_to_end(&mut bytes)
            .await
            .context("downloading the checkpoint")?;
        match Checkpoint::from_bytes(&bytes) {
            Ok(c) => Ok(Some(c)),
            Err(e) => {
                tracing::warn!(error = %e, "ignoring an unreadable checkpoint; training from the start");
                Ok(None)
            }
        }
    }

    /// Store `bytes` (a serialised [`Checkpoint`]) as the job's checkpoint.
    pub async fn write(&self, job_id: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let key = checkpoint_key(job_id);
        gantry_runtime::jetstream::put_object(&self.js, UPLOADS_BUCKET, &key, &mut &bytes[..]).await
    }

    /// Remove the job's checkpoint, if any; a failure leaves it (it is only wasted space).
    pub async fn delete(&self, job_id: &str) {
        if let Ok(store) = self.store().await {
            let _ = store.delete(checkpoint_key(job_id)).await;
        }
    }
}
