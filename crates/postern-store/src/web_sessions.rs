//! Sessions of administrators signed in to the web portal. The caller hashes the random session
//! id; only that hash is stored, with the session's CSRF token and expiry.

use chrono::{DateTime, Utc};
use postern_domain::{Acting, Token};
use postern_token::SecretString;
use sqlx::any::AnyRow;
use uuid::Uuid;

use crate::audit::{self, Entry};
use crate::db::{self, opt_text, text, time, ts};
use crate::{Result, Store};

#[derive(Clone, PartialEq, Eq)]
pub struct WebSession {
    /// Hex SHA-256 of the session id held in the cookie.
    pub id_hash: String,
    pub account_id: Uuid,
    pub actor_id: Uuid,
    pub csrf_token: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub source_ip: Option<String>,
    pub user_agent: Option<String>,
    /// The identity provider the person signed in through, if any.
    pub identity_provider_id: Option<Uuid>,
}

/// What signing a person out at their identity provider needs of the session that ended.
pub struct ProviderSession {
    pub provider_id: Uuid,
    /// The ID token the session was opened with (`id_token_hint`); `None` if it no longer opens.
    pub id_token: Option<SecretString>,
}

impl std::fmt::Debug for WebSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSession")
            .field("id_hash", &self.id_hash)
            .field("account_id", &self.account_id)
            .field("actor_id", &self.actor_id)
            .field("csrf_token", &"(..)")
            .field("created_at", &self.created_at)
            .field("expires_at", &self.expires_at)
            .field("source_ip", &self.source_ip)
            .field("user_agent", &self.user_agent)
            .field("identity_provider_id", &self.identity_provider_id)
            .finish()
    }
}

impl Store {
    /// Stores a new session and records the sign-in in the audit log. A session opened through
    /// an identity provider keeps the ID token it was opened with, sealed, for signing out there.
    pub async fn create_web_session(
        &self,
        session: &WebSession,
        id_token: Option<&SecretString>,
    ) -> Result<()> {
        let id_token_sealed = id_token
            .map(|token| {
                self.inner
                    .sealer
                    .seal_text(session.id_hash.as_bytes(), token.expose())
            })
            .transpose()?;
        let acting = Acting {
            actor_id: Some(session.actor_id),
            token_id: None,
            source_ip: session.source_ip.clone(),
        };
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO web_sessions (id_hash, account_id, actor_id, csrf_token, created_at, \
             expires_at, source_ip, user_agent, identity_provider_id, id_token_sealed) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(session.id_hash.clone())
        .bind(session.account_id.to_string())
        .bind(session.actor_id.to_string())
        .bind(session.csrf_token.clone())
        .bind(ts(session.created_at))
        .bind(ts(session.expires_at))
        .bind(session.source_ip.clone())
        .bind(session.user_agent.clone())
        .bind(session.identity_provider_id.map(|id| id.to_string()))
        .bind(id_token_sealed)
        .execute(&mut *tx.tx)
        .await?;
        audit::record(
            &mut tx.tx,
            Entry {
                account_id: Some(session.account_id),
                acting: &acting,
                action: "web.sign_in",
                object_type: "actor",
                object_id: Some(session.actor_id),
                before: None,
                after: Some(serde_json::json!({
                    "expires_at": session.expires_at,
                    "user_agent": session.user_agent,
                })),
                now: session.created_at,
            },
        )
        .await?;
        tx.commit().await
    }

    /// The unexpired session with this id hash.
    pub async fn web_session(
        &self,
        id_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<WebSession>> {
        let row = sqlx::query("SELECT * FROM web_sessions WHERE id_hash = $1 AND expires_at > $2")
            .bind(id_hash.to_string())
            .bind(ts(now))
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(session_from_row).transpose()
    }

    /// Ends a session (sign-out) and records it in the audit log; for a session opened through
    /// an identity provider, what signing out there needs. Ending an unknown session changes
    /// nothing.
    pub async fn delete_web_session(
        &self,
        id_hash: &str,
        acting: &Acting,
    ) -> Result<Option<ProviderSession>> {
        let row = sqlx::query("SELECT * FROM web_sessions WHERE id_hash = $1")
            .bind(id_hash.to_string())
            .fetch_optional(self.pool())
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let session = session_from_row(&row)?;
        let id_token = opt_text(&row, "id_token_sealed")?
            .and_then(|sealed| self.inner.sealer.open_text(id_hash.as_bytes(), &sealed))
            .map(SecretString::from);
        let provider_session = session
            .identity_provider_id
            .map(|provider_id| ProviderSession {
                provider_id,
                id_token,
            });
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM web_sessions WHERE id_hash = $1")
            .bind(id_hash.to_string())
            .execute(&mut *tx.tx)
            .await?;
        audit::record(
            &mut tx.tx,
            Entry {
                account_id: Some(session.account_id),
                acting,
                action: "web.sign_out",
                object_type: "actor",
                object_id: Some(session.actor_id),
                before: None,
                after: None,
                now: Utc::now(),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(provider_session)
    }

    /// Deletes sessions that expired before `now`; returns how many.
    pub async fn delete_expired_web_sessions(&self, now: DateTime<Utc>) -> Result<u64> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query("DELETE FROM web_sessions WHERE expires_at <= $1")
            .bind(ts(now))
            .execute(&mut *tx.tx)
            .await?;
        sqlx::query("DELETE FROM web_shown_secrets WHERE expires_at <= $1")
            .bind(ts(now))
            .execute(&mut *tx.tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    /// Keeps a sealed secret for the session `id_hash` to show once on the page of `holder_id`
    /// (the caller seals it with a key the database never sees).
    pub async fn put_shown_secret(
        &self,
        id_hash: &str,
        holder_id: Uuid,
        token: &Token,
        sealed: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO web_shown_secrets (session_hash, holder_id, token, sealed, expires_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (session_hash, holder_id) DO UPDATE SET \
             token = excluded.token, sealed = excluded.sealed, expires_at = excluded.expires_at",
        )
        .bind(id_hash.to_string())
        .bind(holder_id.to_string())
        .bind(db::to_json(token)?)
        .bind(sealed.to_string())
        .bind(ts(expires_at))
        .execute(&mut *tx.tx)
        .await?;
        tx.commit().await
    }

    /// The sealed secret waiting for this session and holder, deleted as it is read (once,
    /// whatever node reads it).
    pub async fn take_shown_secret(
        &self,
        id_hash: &str,
        holder_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Option<(Token, String)>> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(
            "DELETE FROM web_shown_secrets WHERE session_hash = $1 AND holder_id = $2 \
             RETURNING token, sealed, expires_at",
        )
        .bind(id_hash.to_string())
        .bind(holder_id.to_string())
        .fetch_optional(&mut *tx.tx)
        .await?;
        tx.commit().await?;
        let Some(row) = row else { return Ok(None) };
        if time(&row, "expires_at")? <= now {
            return Ok(None);
        }
        Ok(Some((db::json(&row, "token")?, text(&row, "sealed")?)))
    }

    /// How many sign-in attempts not known to have succeeded each key has had since `since`:
    /// the highest count.
    pub async fn sign_in_attempts(&self, keys: &[String], since: DateTime<Utc>) -> Result<u64> {
        let mut most = 0;
        for key in keys {
            let count: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM web_sign_in_failures WHERE key = $1 AND at > $2",
            )
            .bind(key.clone())
            .bind(ts(since))
            .fetch_one(self.pool())
            .await?;
            most = most.max(u64::try_from(count).unwrap_or(0));
        }
        Ok(most)
    }

    /// Records a sign-in attempt under each key (before its password is checked), and forgets
    /// those older than `forget_before`.
    pub async fn record_sign_in_attempt(
        &self,
        keys: &[String],
        now: DateTime<Utc>,
        forget_before: DateTime<Utc>,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        for key in keys {
            sqlx::query("INSERT INTO web_sign_in_failures (key, at) VALUES ($1, $2)")
                .bind(key.clone())
                .bind(ts(now))
                .execute(&mut *tx.tx)
                .await?;
        }
        sqlx::query("DELETE FROM web_sign_in_failures WHERE at <= $1")
            .bind(ts(forget_before))
            .execute(&mut *tx.tx)
            .await?;
        tx.commit().await
    }

    /// Forgets the attempt recorded at `at` under these keys: it succeeded.
    pub async fn forget_sign_in_attempt(&self, keys: &[String], at: DateTime<Utc>) -> Result<()> {
        let mut tx = self.begin_write().await?;
        for key in keys {
            sqlx::query("DELETE FROM web_sign_in_failures WHERE key = $1 AND at = $2")
                .bind(key.clone())
                .bind(ts(at))
                .execute(&mut *tx.tx)
                .await?;
        }
        tx.commit().await
    }
}

fn session_from_row(row: &AnyRow) -> Result<WebSession> {
    Ok(WebSession {
        id_hash: text(row, "id_hash")?,
        account_id: db::uuid(row, "account_id")?,
        actor_id: db::uuid(row, "actor_id")?,
        csrf_token: text(row, "csrf_token")?,
        created_at: time(row, "created_at")?,
        expires_at: time(row, "expires_at")?,
        source_ip: opt_text(row, "source_ip")?,
        user_agent: opt_text(row, "user_agent")?,
        identity_provider_id: db::opt_uuid(row, "identity_provider_id")?,
    })
}
