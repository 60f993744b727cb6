//! Plumbing shared by the entity modules: write transactions, column codecs, the hash key.

use chrono::{DateTime, TimeZone, Utc};
use postern_token::HashKey;
use serde::de::DeserializeOwned;
use sqlx::any::AnyRow;
use sqlx::{Any, AnyPool, Row, Transaction};
use uuid::Uuid;

use crate::{Result, Store, StoreError};

/// A write transaction. On SQLite it holds the store's one-writer lock until it is committed
/// or, when dropped uncommitted (an error, a cancelled request), until its rollback has run:
/// sqlx would otherwise roll back lazily, after the lock went to the next writer, which then
/// finds the database locked.
pub(crate) struct WriteTx {
    pub tx: OpenTx,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

/// The transaction's connection; it is there from `begin_write` until `commit` or drop.
pub(crate) struct OpenTx(Option<Transaction<'static, Any>>);

impl std::ops::Deref for OpenTx {
    type Target = sqlx::AnyConnection;

    fn deref(&self) -> &sqlx::AnyConnection {
        self.0.as_deref().expect("open until committed or dropped")
    }
}

impl std::ops::DerefMut for OpenTx {
    fn deref_mut(&mut self) -> &mut sqlx::AnyConnection {
        self.0
            .as_deref_mut()
            .expect("open until committed or dropped")
    }
}

impl WriteTx {
    pub async fn commit(mut self) -> Result<()> {
        if let Some(tx) = self.tx.0.take() {
            tx.commit().await?;
        }
        Ok(())
    }
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        let Some(tx) = self.tx.0.take() else { return };
        let guard = self.guard.take();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if let Err(err) = tx.rollback().await {
                        tracing::warn!(error = %err, "could not roll back an abandoned write");
                    }
                    drop(guard);
                });
            }
            Err(_) => drop(tx),
        }
    }
}

impl Store {
    pub(crate) async fn begin_write(&self) -> Result<WriteTx> {
        let guard = match &self.inner.write_lock {
            Some(lock) => Some(lock.clone().lock_owned().await),
            None => None,
        };
        let tx = self.pool().begin().await?;
        Ok(WriteTx {
            tx: OpenTx(Some(tx)),
            guard,
        })
    }
}

/// A value bound to a query built at run time (filters that are there or not).
pub(crate) enum BindValue {
    Text(String),
    Int(i64),
}

/// Binds `values` in order.
pub(crate) fn bind_all<'q>(
    mut query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    values: Vec<BindValue>,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    for value in values {
        query = match value {
            BindValue::Text(text) => query.bind(text),
            BindValue::Int(int) => query.bind(int),
        };
    }
    query
}

/// `$first, $first+1, …` for `count` bind parameters (an `IN (…)` list).
pub(crate) fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Escapes `\`, `%` and `_` for a `LIKE ... ESCAPE '\'` pattern.
pub(crate) fn escape_like(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

pub(crate) fn ts(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub(crate) fn opt_ts(t: Option<DateTime<Utc>>) -> Option<i64> {
    t.map(ts)
}

pub(crate) fn from_ts(micros: i64) -> Result<DateTime<Utc>> {
    Utc.timestamp_micros(micros)
        .single()
        .ok_or_else(|| StoreError::Corrupt(format!("timestamp {micros} is out of range")))
}

pub(crate) fn uuid(row: &AnyRow, column: &str) -> Result<Uuid> {
    let text: String = row.try_get(column)?;
    Uuid::parse_str(&text)
        .map_err(|_| StoreError::Corrupt(format!("column {column} holds a bad id")))
}

pub(crate) fn opt_uuid(row: &AnyRow, column: &str) -> Result<Option<Uuid>> {
    let text: Option<String> = row.try_get(column)?;
    text.map(|t| {
        Uuid::parse_str(&t)
            .map_err(|_| StoreError::Corrupt(format!("column {column} holds a bad id")))
    })
    .transpose()
}

pub(crate) fn time(row: &AnyRow, column: &str) -> Result<DateTime<Utc>> {
    from_ts(row.try_get(column)?)
}

pub(crate) fn opt_time(row: &AnyRow, column: &str) -> Result<Option<DateTime<Utc>>> {
    let micros: Option<i64> = row.try_get(column)?;
    micros.map(from_ts).transpose()
}

pub(crate) fn text(row: &AnyRow, column: &str) -> Result<String> {
    Ok(row.try_get(column)?)
}

pub(crate) fn opt_text(row: &AnyRow, column: &str) -> Result<Option<String>> {
    Ok(row.try_get(column)?)
}

pub(crate) fn json<T: DeserializeOwned>(row: &AnyRow, column: &str) -> Result<T> {
    let text: String = row.try_get(column)?;
    serde_json::from_str(&text)
        .map_err(|err| StoreError::Corrupt(format!("column {column} holds bad JSON: {err}")))
}

pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value)
        .map_err(|err| StoreError::Corrupt(format!("cannot encode JSON: {err}")))
}

/// Fetches `limit + 1` rows to learn whether another page follows, and returns the page.
pub(crate) fn paginate<T>(
    mut items: Vec<T>,
    limit: u32,
    id_of: impl Fn(&T) -> Uuid,
) -> crate::Paged<T> {
    let limit = limit as usize;
    let next_cursor = if items.len() > limit {
        items.truncate(limit);
        items.last().map(&id_of)
    } else {
        None
    };
    crate::Paged { items, next_cursor }
}

/// The HMAC key for token hashes: created once, shared by every portal node on the database.
pub(crate) async fn load_or_create_hash_key(pool: &AnyPool) -> Result<HashKey> {
    let fresh = HashKey::generate();
    sqlx::query(
        "INSERT INTO server_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
    )
    .bind("token_hash_key")
    .bind(fresh.to_hex())
    .execute(pool)
    .await?;
    let row = sqlx::query("SELECT value FROM server_secrets WHERE name = $1")
        .bind("token_hash_key")
        .fetch_one(pool)
        .await?;
    let hex: String = row.try_get("value")?;
    HashKey::from_hex(&hex)
        .map_err(|_| StoreError::Corrupt("the stored token hash key is not valid".to_string()))
}

/// The outcome of reading an object that a write refers to by id: not found in the account is
/// a validation error naming `field`; any other failure (the database) stops the write too.
pub(crate) fn referenced<T>(
    read: Result<T>,
    field: &'static str,
    message: impl FnOnce() -> String,
) -> Result<T> {
    match read {
        Err(StoreError::NotFound(_)) => Err(StoreError::Validation(
            postern_domain::validate::ValidationError::new(field, message()),
        )),
        other => other,
    }
}

/// Maps a unique-constraint violation to a conflict that names what is taken.
pub(crate) fn unique_violation(err: sqlx::Error, what: impl FnOnce() -> String) -> StoreError {
    if let sqlx::Error::Database(db) = &err {
        if db.is_unique_violation() {
            return StoreError::Conflict(what());
        }
    }
    StoreError::Database(err)
}

/// One page of an account's rows of `table`, in id (creation) order.
pub(crate) async fn list_in_account<T>(
    store: &Store,
    table: &str,
    account_id: Uuid,
    page: crate::Page,
    from_row: fn(&AnyRow) -> Result<T>,
    id_of: fn(&T) -> Uuid,
) -> Result<crate::Paged<T>> {
    let sql = format!(
        "SELECT * FROM {table} WHERE account_id = $1 AND id > $2 ORDER BY id LIMIT {}",
        page.limit + 1
    );
    let rows = sqlx::query(&sql)
        .bind(account_id.to_string())
        .bind(page.cursor.map(|c| c.to_string()).unwrap_or_default())
        .fetch_all(store.pool())
        .await?;
    let items = rows.iter().map(from_row).collect::<Result<Vec<_>>>()?;
    Ok(paginate(items, page.limit, id_of))
}

/// The account's row of `table` with this id; `NotFound(what)` when there is none in the account.
pub(crate) async fn get_in_account<T>(
    store: &Store,
    table: &str,
    account_id: Uuid,
    id: Uuid,
    what: &'static str,
    from_row: fn(&AnyRow) -> Result<T>,
) -> Result<T> {
    let sql = format!("SELECT * FROM {table} WHERE account_id = $1 AND id = $2");
    let row = sqlx::query(&sql)
        .bind(account_id.to_string())
        .bind(id.to_string())
        .fetch_optional(store.pool())
        .await?;
    row.as_ref()
        .map(from_row)
        .transpose()?
        .ok_or(StoreError::NotFound(what))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reference_check_that_cannot_read_stops_the_write() {
        let unavailable: Result<()> = Err(StoreError::Database(sqlx::Error::PoolTimedOut));
        assert!(matches!(
            referenced(unavailable, "site_id", || "no site".into()),
            Err(StoreError::Database(_))
        ));
        let missing: Result<()> = Err(StoreError::NotFound("site"));
        match referenced(missing, "site_id", || "no site with id x".into()) {
            Err(StoreError::Validation(err)) => assert_eq!(err.field, "site_id"),
            other => panic!("{other:?}"),
        }
        assert!(referenced(Ok(7), "site_id", String::new).is_ok_and(|v| v == 7));
    }
}
