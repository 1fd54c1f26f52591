//! MongoDB: the connection (each service owns one database, `<GANTRY_DB_PREFIX><service>`),
//! readiness, and [`Counter`], the numbers a service hands out one by one (user ids, token ids,
//! model versions).

use std::time::Duration;

use anyhow::Context as _;
use mongodb::bson::{doc, Bson, Document};
use mongodb::options::{ClientOptions, ReturnDocument};
use mongodb::{Client, Collection, Database};

use crate::Config;

/// Connect lazily (the driver retries server selection) and return the service's database.
/// Fails only on an unparseable URI.
pub async fn connect(config: &Config, service: &str) -> anyhow::Result<Database> {
    let mut options = ClientOptions::parse(&config.mongodb_uri)
        .await
        .context("parsing MONGODB_URI")?;
    options.app_name = Some(format!("gantry-{service}"));
    options.server_selection_timeout = Some(Duration::from_secs(5));
    options.connect_timeout = Some(Duration::from_secs(3));
    let client = Client::with_options(options).context("building the MongoDB client")?;
    Ok(client.database(&config.database_name(service)))
}

/// Wait until the store answers `ping`, logging while it does not; false when `shutdown` fires
/// first.
pub async fn wait_ready(db: &Database, shutdown: &tokio_util::sync::CancellationToken) -> bool {
    crate::retry::until_ready("the store", shutdown, || ping(db))
        .await
        .is_some()
}

/// One `ping` with a short deadline.
pub async fn ping(db: &Database) -> anyhow::Result<()> {
    tokio::time::timeout(Duration::from_secs(2), db.run_command(doc! { "ping": 1 }))
        .await
        .context("store ping timed out")?
        .context("store ping failed")?;
    Ok(())
}

/// A number handed out one by one: the document `{_id: <name>, <field>: <last handed out>}` in a
/// collection of counters, created on first use. Safe from several replicas at once: every step
/// is one atomic update.
#[derive(Clone)]
pub struct Counter {
    counters: Collection<Document>,
    name: String,
    field: &'static str,
}

impl Counter {
    /// The counter `name` in collection `collection` of `db`, keeping its number in `field`
    /// (no I/O).
    pub fn new(
        db: &Database,
        collection: &str,
        name: impl Into<String>,
        field: &'static str,
    ) -> Self {
        Self {
            counters: db.collection(collection),
            name: name.into(),
            field,
        }
    }

    /// The next number: 1 the first time, then one more each call.
    pub async fn next(&self) -> anyhow::Result<i64> {
        let after = self
            .counters
            .find_one_and_update(
                doc! { "_id": &self.name },
                doc! { "$inc": { self.field: 1_i64 } },
            )
            .upsert(true)
            .return_document(ReturnDocument::After)
            .await
            .with_context(|| format!("taking the next number of counter {}", self.name))?
            .with_context(|| format!("counter {} vanished", self.name))?;
        number(after.get(self.field)).with_context(|| format!("reading counter {}", self.name))
    }

    /// Make sure the next number handed out is above `at_least` (after a caller used one of its
    /// own choosing).
    pub async fn raise_to(&self, at_least: i64) -> anyhow::Result<()> {
        self.counters
            .update_one(
                doc! { "_id": &self.name },
                doc! { "$max": { self.field: at_least } },
            )
            .upsert(true)
            .await
            .with_context(|| format!("raising counter {}", self.name))?;
        Ok(())
    }
}

/// How many documents of `coll` match `filter`, by the store's `count` command, which a store
/// answers from its indexes. (The driver's `count_documents` sends an aggregation, `$match` then
/// `$group`, which the MongoDB-wire store on SQLite evaluates by reading every document of the
/// collection: a count of three queued jobs cost a pass over every job ever recorded.)
pub async fn count<T: Send + Sync>(
    coll: &Collection<T>,
    filter: Document,
) -> mongodb::error::Result<u64> {
    let ns = coll.namespace();
    let reply = coll
        .client()
        .database(&ns.db)
        .run_command(doc! { "count": &ns.coll, "query": filter })
        .await?;
    number(reply.get("n"))
        .ok()
        .and_then(|n| u64::try_from(n).ok())
        .ok_or_else(|| {
            mongodb::error::Error::custom(format!(
                "the store's count of {} answered {reply}",
                ns.coll
            ))
        })
}

/// True when a write failed on a unique index, `_id` included (code 11000).
pub fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    match &*e.kind {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == 11000,
        ErrorKind::Command(c) => c.code == 11000,
        ErrorKind::InsertMany(m) => m.write_errors.iter().flatten().any(|w| w.code == 11000),
        _ => false,
    }
}

/// Replace the document `_id` with `doc` as of revision `rev`, unless the stored one has a later
/// revision (or the same): of writers that each read the state they write after taking a revision
/// from a [`Counter`], the last to take one is the one that stays, in whatever order their writes
/// arrive. A document without `rev` counts as older than any. False when a later one was there.
pub async fn replace_if_newer(
    coll: &Collection<Document>,
    id: &str,
    rev: i64,
    mut doc: Document,
) -> mongodb::error::Result<bool> {
    doc.insert("_id", id);
    doc.insert("rev", rev);
    let older = doc! {
        "_id": id,
        "$or": [ { "rev": { "$lt": rev } }, { "rev": { "$exists": false } } ],
    };
    // No older document: none is there (inserted), or a later one is (refused on `_id`).
    match coll.replace_one(older, doc).upsert(true).await {
        Ok(_) => Ok(true),
        Err(e) if is_duplicate_key(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// A stored whole number, whichever numeric type the store kept it as.
pub fn number(value: Option<&Bson>) -> anyhow::Result<i64> {
    match value {
        Some(Bson::Int64(n)) => Ok(*n),
        Some(Bson::Int32(n)) => Ok(i64::from(*n)),
        Some(Bson::Double(n)) => Ok(*n as i64),
        other => Err(anyhow::anyhow!("expected a whole number, found {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_number_is_read_whatever_type_the_store_kept() {
        assert_eq!(number(Some(&Bson::Int64(7))).unwrap(), 7);
        assert_eq!(number(Some(&Bson::Int32(7))).unwrap(), 7);
        assert_eq!(number(Some(&Bson::Double(7.0))).unwrap(), 7);
        assert!(number(Some(&Bson::String("7".into()))).is_err());
        assert!(number(None).is_err());
    }
}
