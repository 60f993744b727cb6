//! Token authentication: parse, checksum, cached lookup, keyed hash, constant-time compare.

use chrono::{DateTime, Utc};
use postern_token::{TokenError, TokenKind};
use sqlx::Row;
use std::time::Instant;
use uuid::Uuid;

use crate::db::{self, from_ts};
use crate::token_cache::{CachedToken, PendingUse};
use crate::{Store, StoreError};

/// Who a valid token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub account_id: Uuid,
    pub token_id: Uuid,
    pub kind: TokenKind,
    pub actor_id: Option<Uuid>,
    pub site_id: Option<Uuid>,
    /// The name of the holder (service account or site) when the token was checked.
    pub holder_name: String,
    pub expires_at: DateTime<Utc>,
    /// The token's limits for a fleet sharing it.
    pub guardrails: postern_domain::TokenGuardrails,
    /// The token this one replaced by rotation: a client moving to it keeps its grants.
    pub rotated_from: Option<Uuid>,
    /// The token was rotated: its successor is handed to the client, which moves to it.
    pub rotated: bool,
    /// The store's revocation generation before the token was checked: when a revocation has
    /// been applied since, the check may predate it and must be repeated (`recheck_token`).
    pub generation: u64,
}

/// Where a token was used from, for its "last used" record.
#[derive(Debug, Clone, Default)]
pub struct TokenUse {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

/// Why a token was refused. Never carries any part of the token's secret.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{0}")]
    Malformed(TokenError),
    #[error("this is a {actual} token; a {expected} token is needed here")]
    WrongKind {
        expected: &'static str,
        actual: &'static str,
    },
    #[error("the token is not valid")]
    Invalid { token_id: Option<Uuid> },
    #[error("the token has been revoked")]
    Revoked { account_id: Uuid, token_id: Uuid },
    #[error("the token has expired")]
    Expired { account_id: Uuid, token_id: Uuid },
    #[error("the token's holder is disabled")]
    Disabled { account_id: Uuid, token_id: Uuid },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl AuthError {
    /// The account and token the failure can be attributed to, when the secret was valid or
    /// the token id matched a stored token.
    pub fn attribution(&self) -> (Option<Uuid>, Option<Uuid>) {
        match self {
            AuthError::Revoked {
                account_id,
                token_id,
            }
            | AuthError::Expired {
                account_id,
                token_id,
            }
            | AuthError::Disabled {
                account_id,
                token_id,
            } => (Some(*account_id), Some(*token_id)),
            AuthError::Invalid { token_id } => (None, *token_id),
            _ => (None, None),
        }
    }

    /// A short machine-readable reason, for logs and audit events.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Malformed(_) => "malformed",
            AuthError::WrongKind { .. } => "wrong_kind",
            AuthError::Invalid { .. } => "invalid",
            AuthError::Revoked { .. } => "revoked",
            AuthError::Expired { .. } => "expired",
            AuthError::Disabled { .. } => "disabled",
            AuthError::Store(_) => "store_error",
        }
    }
}

impl Store {
    /// Checks a presented token of the `expected` kind and records its use (buffered).
    pub async fn authenticate(
        &self,
        token: &str,
        expected: TokenKind,
        usage: TokenUse,
    ) -> Result<Principal, AuthError> {
        let principal = self.verify_token(token, expected, Utc::now()).await?;
        self.inner.tokens.record_use(
            principal.token_id,
            PendingUse {
                at: Utc::now(),
                ip: usage.ip,
                user_agent: usage.user_agent,
                actor_id: principal.actor_id,
            },
        );
        Ok(principal)
    }

    /// Checks a presented token without recording its use.
    pub async fn verify_token(
        &self,
        token: &str,
        expected: TokenKind,
        now: DateTime<Utc>,
    ) -> Result<Principal, AuthError> {
        let parsed = postern_token::parse(token).map_err(AuthError::Malformed)?;
        if parsed.kind != expected {
            return Err(AuthError::WrongKind {
                expected: expected.as_str(),
                actual: parsed.kind.as_str(),
            });
        }
        let (record, generation) = self.matching_record(&parsed).await?;
        let record = record.ok_or(AuthError::Invalid {
            token_id: Some(parsed.id),
        })?;
        principal_of(parsed.id, record, generation, now)
    }

    /// The stored record of the token `parsed` names, if it is of that kind and the secret
    /// matches (constant time) — the one check every path that takes a presented token makes —
    /// and the revocation generation read before it.
    pub(crate) async fn matching_record(
        &self,
        parsed: &postern_token::ParsedToken,
    ) -> Result<(Option<CachedToken>, u64), StoreError> {
        let (record, generation) = self.token_record(parsed.id).await?;
        let record = record.filter(|record| {
            record.kind == parsed.kind && parsed.verify(&self.inner.hash_key, &record.hash())
        });
        Ok((record, generation))
    }

    /// Checks again, by id, a token whose secret was verified before (a session being admitted
    /// while a revocation was applied): revoked, expired, holder disabled, deleted.
    pub async fn recheck_token(
        &self,
        token_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Principal, AuthError> {
        let (record, generation) = self.token_record(token_id).await?;
        let record = record.ok_or(AuthError::Invalid {
            token_id: Some(token_id),
        })?;
        principal_of(token_id, record, generation, now)
    }

    /// The store's revocation generation now (see [`Principal::generation`]).
    pub fn revocation_generation(&self) -> u64 {
        self.inner.tokens.generation()
    }

    /// A token's record from the cache or the database, and the revocation generation read
    /// before it. A record read from the database is cached only if no invalidation happened
    /// meanwhile, so the cache never holds a record older than a revocation.
    async fn token_record(&self, token_id: Uuid) -> Result<(Option<CachedToken>, u64), StoreError> {
        let (cached, generation) = self.inner.tokens.get(&token_id);
        if let Some(record) = cached {
            return Ok((Some(record), generation));
        }
        let Some(record) = self.load_token_record(token_id).await? else {
            return Ok((None, generation));
        };
        self.inner
            .tokens
            .insert(token_id, record.clone(), generation);
        Ok((Some(record), generation))
    }

    async fn load_token_record(&self, token_id: Uuid) -> Result<Option<CachedToken>, StoreError> {
        let row = sqlx::query(
            "SELECT t.kind, t.account_id, t.actor_id, t.site_id, t.secret_hash, t.expires_at, \
             t.revoked_at, t.max_clients, t.allowed_source_cidrs, t.require_approval, t.ephemeral, t.rotated_from, t.successor_id, a.disabled_at AS actor_disabled_at, a.name AS actor_name, \
             s.name AS site_name \
             FROM tokens t LEFT JOIN actors a ON a.id = t.actor_id \
             LEFT JOIN sites s ON s.id = t.site_id WHERE t.id = $1",
        )
        .bind(token_id.to_string())
        .fetch_optional(self.pool())
        .await?;
        let Some(row) = row else { return Ok(None) };
        let kind_text: String = row.try_get("kind")?;
        let kind = TokenKind::parse_str(&kind_text)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown token kind '{kind_text}'")))?;
        let hash_hex: String = row.try_get("secret_hash")?;
        let hash = postern_token::TokenHash::from_hex(&hash_hex)
            .map_err(|_| StoreError::Corrupt("a stored token hash is not valid".to_string()))?;
        let revoked_at: Option<i64> = row.try_get("revoked_at")?;
        let actor_disabled_at: Option<i64> = row.try_get("actor_disabled_at")?;
        let actor_name: Option<String> = row.try_get("actor_name")?;
        let site_name: Option<String> = row.try_get("site_name")?;
        Ok(Some(CachedToken {
            kind,
            account_id: db::uuid(&row, "account_id")?,
            actor_id: db::opt_uuid(&row, "actor_id")?,
            site_id: db::opt_uuid(&row, "site_id")?,
            hash: *hash.as_bytes(),
            holder_name: actor_name.or(site_name).unwrap_or_default(),
            expires_at: from_ts(row.try_get("expires_at")?)?,
            revoked: revoked_at.is_some(),
            holder_disabled: actor_disabled_at.is_some(),
            guardrails: crate::tokens::guardrails_from_row(&row)?,
            rotated_from: db::opt_uuid(&row, "rotated_from")?,
            rotated: db::opt_uuid(&row, "successor_id")?.is_some(),
            loaded_at: Instant::now(),
        }))
    }
}

/// The principal of a token record whose secret matched, or why the token no longer works.
fn principal_of(
    token_id: Uuid,
    record: CachedToken,
    generation: u64,
    now: DateTime<Utc>,
) -> Result<Principal, AuthError> {
    let account_id = record.account_id;
    if record.revoked {
        return Err(AuthError::Revoked {
            account_id,
            token_id,
        });
    }
    if record.expires_at <= now {
        return Err(AuthError::Expired {
            account_id,
            token_id,
        });
    }
    if record.holder_disabled {
        return Err(AuthError::Disabled {
            account_id,
            token_id,
        });
    }
    Ok(Principal {
        account_id,
        token_id,
        kind: record.kind,
        actor_id: record.actor_id,
        site_id: record.site_id,
        holder_name: record.holder_name,
        expires_at: record.expires_at,
        guardrails: record.guardrails,
        rotated_from: record.rotated_from,
        rotated: record.rotated,
        generation,
    })
}
