//! Tokens of service accounts, API clients and sites (gateway tokens).

use chrono::{DateTime, Utc};
use postern_domain::{
    new_id, rules, validate, Acting, ChangeEvent, HolderType, Token, TokenGuardrails,
};
use postern_token::{SecretString, TokenKind};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use crate::audit::{self, snapshot, Entry};
use crate::db::{self, opt_text, opt_time, opt_uuid, text, time, ts, BindValue};
use crate::{Page, Paged, Result, Store, StoreError};

/// Whose tokens: a service account's or API client's, or a site's gateway tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenHolder {
    Actor(Uuid),
    Site(Uuid),
}

#[derive(Debug, Clone, Default)]
pub struct NewTokenRequest {
    pub name: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    /// Service-account tokens only.
    pub guardrails: TokenGuardrails,
    /// The token this one replaces (rotation).
    pub rotated_from: Option<Uuid>,
    /// The trust rule it is exchanged under (workload identity federation).
    pub workload_identity_id: Option<Uuid>,
}

/// Which tokens [`Store::list_account_tokens`] lists: every field narrows the result.
#[derive(Debug, Clone)]
pub struct TokenFilter {
    /// The instant "expired" and "revoked" are judged at.
    pub now: DateTime<Utc>,
    /// Only tokens expiring before this instant (and not exchanged for ID tokens: those are
    /// short-lived by design, their workloads renew them).
    pub expires_before: Option<DateTime<Utc>>,
    pub kind: Option<TokenKind>,
    pub include_revoked: bool,
    pub include_expired: bool,
    /// Also rotated tokens (their end is planned: the successor carries on).
    pub include_rotated: bool,
}

/// A token with its holder.
#[derive(Debug, Clone)]
pub struct HeldToken {
    pub token: Token,
    pub holder_type: HolderType,
    pub holder_name: String,
}

/// What [`Store::update_token`] changes; `None` keeps a field as it is.
#[derive(Debug, Default, Clone)]
pub struct TokenPatch {
    pub name: Option<String>,
    /// `Some(None)` removes the limit.
    pub max_clients: Option<Option<u32>>,
    pub allowed_source_cidrs: Option<Vec<ipnet::IpNet>>,
    pub require_approval: Option<bool>,
    pub ephemeral: Option<bool>,
}

/// A token just created: the only moment its secret exists outside the holder's hands.
#[derive(Debug)]
pub struct CreatedToken {
    pub token: Token,
    pub secret: SecretString,
}

/// A rotation: the rotated token as it is now (expiring at the end of the overlap window) and
/// its successor with the secret.
#[derive(Debug)]
pub struct RotatedToken {
    pub predecessor: Token,
    pub successor: CreatedToken,
}

/// The successor of a rotated token, for the clients still connected with the rotated one.
#[derive(Debug)]
pub struct TokenSuccessor {
    pub token_id: Uuid,
    pub secret: SecretString,
    pub expires_at: DateTime<Utc>,
}

fn successor_aad(predecessor_id: Uuid) -> Vec<u8> {
    let mut aad = b"token successor:".to_vec();
    aad.extend_from_slice(predecessor_id.as_bytes());
    aad
}

pub const DEFAULT_TOKEN_NAME: &str = "default";

impl Store {
    pub async fn create_token(
        &self,
        account_id: Uuid,
        holder: TokenHolder,
        request: NewTokenRequest,
        acting: &Acting,
    ) -> Result<CreatedToken> {
        let kind = match holder {
            TokenHolder::Actor(actor_id) => {
                let actor = self.get_actor(account_id, actor_id).await?;
                rules::check_token_holder(&actor)?
            }
            TokenHolder::Site(site_id) => {
                self.get_site(account_id, site_id).await?;
                TokenKind::Gateway
            }
        };
        let settings = self.get_account(account_id).await?.settings;
        let mut tx = self.begin_write().await?;
        let created = insert_token(
            self, &mut tx.tx, account_id, holder, kind, &request, &settings, acting,
        )
        .await?;
        self.commit_publishing(
            tx,
            vec![ChangeEvent::TokenCreated {
                account_id,
                token_id: created.token.id,
            }],
        )
        .await?;
        Ok(created)
    }

    pub async fn list_tokens(
        &self,
        account_id: Uuid,
        holder: TokenHolder,
        page: Page,
    ) -> Result<Paged<Token>> {
        self.check_holder(account_id, holder).await?;
        let (column, holder_id) = holder_column(holder);
        let sql = format!(
            "SELECT * FROM tokens WHERE account_id = $1 AND {column} = $2 AND id > $3 \
             ORDER BY id LIMIT {}",
            page.limit + 1
        );
        let rows = sqlx::query(&sql)
            .bind(account_id.to_string())
            .bind(holder_id.to_string())
            .bind(page.cursor.map(|c| c.to_string()).unwrap_or_default())
            .fetch_all(self.pool())
            .await?;
        let items = rows
            .iter()
            .map(|row| self.token_from_row(row))
            .collect::<Result<Vec<_>>>()?;
        Ok(db::paginate(items, page.limit, |t| t.id))
    }

    /// Tokens of every holder in the account that match `filter`, in creation order, each with
    /// its holder's kind and name.
    pub async fn list_account_tokens(
        &self,
        account_id: Uuid,
        filter: &TokenFilter,
        page: Page,
    ) -> Result<Paged<HeldToken>> {
        let mut sql = String::from(
            "SELECT t.*, a.name AS actor_name, a.type AS actor_type, s.name AS site_name \
             FROM tokens t LEFT JOIN actors a ON a.id = t.actor_id \
             LEFT JOIN sites s ON s.id = t.site_id WHERE t.account_id = $1 AND t.id > $2",
        );
        let mut binds = vec![
            BindValue::Text(account_id.to_string()),
            BindValue::Text(page.cursor.map(|c| c.to_string()).unwrap_or_default()),
        ];
        let mut push = |clause: &str, value: BindValue| {
            binds.push(value);
            sql.push_str(&format!(" AND {clause} ${}", binds.len()));
        };
        if let Some(before) = filter.expires_before {
            push("t.expires_at <", BindValue::Int(ts(before)));
        }
        if let Some(kind) = filter.kind {
            push("t.kind =", BindValue::Text(kind.as_str().to_string()));
        }
        if !filter.include_expired {
            push("t.expires_at >", BindValue::Int(ts(filter.now)));
        }
        if !filter.include_revoked {
            sql.push_str(" AND t.revoked_at IS NULL");
        }
        if filter.expires_before.is_some() {
            sql.push_str(" AND t.workload_identity_id IS NULL");
        }
        if !filter.include_rotated {
            sql.push_str(" AND t.successor_id IS NULL");
        }
        sql.push_str(&format!(" ORDER BY t.id LIMIT {}", page.limit + 1));
        let rows = db::bind_all(sqlx::query(&sql), binds)
            .fetch_all(self.pool())
            .await?;
        let items = rows
            .iter()
            .map(|row| {
                let token = self.token_from_row(row)?;
                let holder_type = match opt_text(row, "actor_type")? {
                    Some(actor_type) => {
                        serde_json::from_value(serde_json::Value::String(actor_type.clone()))
                            .map_err(|_| {
                                StoreError::Corrupt(format!("unknown actor type '{actor_type}'"))
                            })?
                    }
                    None => HolderType::Site,
                };
                let holder_name = opt_text(row, "actor_name")?
                    .or(opt_text(row, "site_name")?)
                    .unwrap_or_default();
                Ok(HeldToken {
                    token,
                    holder_type,
                    holder_name,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(db::paginate(items, page.limit, |held| held.token.id))
    }

    pub async fn get_token(
        &self,
        account_id: Uuid,
        holder: TokenHolder,
        token_id: Uuid,
    ) -> Result<Token> {
        let (column, holder_id) = holder_column(holder);
        let sql =
            format!("SELECT * FROM tokens WHERE account_id = $1 AND {column} = $2 AND id = $3");
        let row = sqlx::query(&sql)
            .bind(account_id.to_string())
            .bind(holder_id.to_string())
            .bind(token_id.to_string())
            .fetch_optional(self.pool())
            .await?;
        row.as_ref()
            .map(|row| self.token_from_row(row))
            .transpose()?
            .ok_or(StoreError::NotFound("token"))
    }

    /// Renames a token or changes its guardrails. Sessions already open stay unless a change
    /// shuts them out: a narrower `allowed_source_cidrs` ends those from elsewhere, approval
    /// newly required holds the devices not yet approved (see the sessions core); a lower
    /// `max_clients` only refuses new ones.
    pub async fn update_token(
        &self,
        account_id: Uuid,
        holder: TokenHolder,
        token_id: Uuid,
        patch: TokenPatch,
        acting: &Acting,
    ) -> Result<Token> {
        let before = self.get_token(account_id, holder, token_id).await?;
        let mut after = before.clone();
        if let Some(name) = &patch.name {
            after.name = validate::name("name", name)?;
        }
        if let Some(max_clients) = patch.max_clients {
            after.guardrails.max_clients = max_clients;
        }
        if let Some(cidrs) = patch.allowed_source_cidrs {
            after.guardrails.allowed_source_cidrs = cidrs;
        }
        if let Some(require_approval) = patch.require_approval {
            after.guardrails.require_approval = require_approval;
        }
        if let Some(ephemeral) = patch.ephemeral {
            after.guardrails.ephemeral = ephemeral;
        }
        after.guardrails = checked_guardrails(after.kind, after.guardrails)?;
        if after == before {
            return Ok(before);
        }
        let now = Utc::now();
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "UPDATE tokens SET name = $1, max_clients = $2, allowed_source_cidrs = $3, \
             require_approval = $4, ephemeral = $7 WHERE account_id = $5 AND id = $6",
        )
        .bind(after.name.clone())
        .bind(after.guardrails.max_clients.map(i64::from))
        .bind(db::to_json(&after.guardrails.allowed_source_cidrs)?)
        .bind(i64::from(after.guardrails.require_approval))
        .bind(account_id.to_string())
        .bind(token_id.to_string())
        .bind(i64::from(after.guardrails.ephemeral))
        .execute(&mut *tx.tx)
        .await?;
        audit::record(
            &mut tx.tx,
            Entry {
                account_id: Some(account_id),
                acting,
                action: "token.update",
                object_type: "token",
                object_id: Some(token_id),
                before: snapshot(&before),
                after: snapshot(&after),
                now,
            },
        )
        .await?;
        self.commit_publishing(
            tx,
            vec![ChangeEvent::TokenUpdated {
                account_id,
                token_id,
            }],
        )
        .await?;
        Ok(after)
    }

    /// Revokes one token. Revoking a revoked token changes nothing and returns it as it is.
    pub async fn revoke_token(
        &self,
        account_id: Uuid,
        holder: TokenHolder,
        token_id: Uuid,
        acting: &Acting,
    ) -> Result<Token> {
        let before = self.get_token(account_id, holder, token_id).await?;
        if before.revoked_at.is_some() {
            return Ok(before);
        }
        let now = Utc::now();
        let mut after = before.clone();
        after.revoked_at = Some(now);
        after.revoked_by = acting.actor_id;
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "UPDATE tokens SET revoked_at = $1, revoked_by = $2 \
             WHERE account_id = $3 AND id = $4 AND revoked_at IS NULL",
        )
        .bind(ts(now))
        .bind(acting.actor_id.map(|id| id.to_string()))
        .bind(account_id.to_string())
        .bind(token_id.to_string())
        .execute(&mut *tx.tx)
        .await?;
        audit::record(
            &mut tx.tx,
            Entry {
                account_id: Some(account_id),
                acting,
                action: "token.revoke",
                object_type: "token",
                object_id: Some(token_id),
                before: snapshot(&before),
                after: snapshot(&after),
                now,
            },
        )
        .await?;
        self.commit_publishing(
            tx,
            vec![ChangeEvent::TokensRevoked {
                account_id,
                token_ids: vec![token_id],
            }],
        )
        .await?;
        Ok(after)
    }

    /// Rotates a token: creates its successor (the same guardrails, the name with a
    /// `(rotated DATE)` suffix, as long a life as the rotated token had, within the account's
    /// cap) and ends the rotated token at the end of the overlap window (`overlap`, 24 h by
    /// default). Until then every portal node hands the successor to the clients connected with
    /// the rotated token (its secret is kept sealed for that, and cleared when the window ends).
    /// Audited as `token.create` (the successor) and `token.rotate` (the rotated token).
    pub async fn rotate_token(
        &self,
        account_id: Uuid,
        holder: TokenHolder,
        token_id: Uuid,
        overlap: Option<chrono::Duration>,
        acting: &Acting,
    ) -> Result<RotatedToken> {
        let before = self.get_token(account_id, holder, token_id).await?;
        let settings = self.get_account(account_id).await?.settings;
        // What is stored (microseconds) is what is answered.
        let now = chrono::SubsecRound::trunc_subsecs(Utc::now(), 6);
        let plan =
            rules::plan_rotation(&before, overlap, now, &settings).map_err(|err| match err {
                rules::RotationError::Invalid(invalid) => StoreError::Validation(invalid),
                refused => StoreError::Conflict(refused.to_string()),
            })?;
        let request = NewTokenRequest {
            name: Some(plan.successor_name),
            expires_at: Some(plan.successor_expires_at),
            guardrails: before.guardrails.clone(),
            rotated_from: Some(token_id),
            workload_identity_id: None,
        };
        let mut tx = self.begin_write().await?;
        let successor = insert_token(
            self,
            &mut tx.tx,
            account_id,
            holder,
            before.kind,
            &request,
            &settings,
            acting,
        )
        .await?;
        let sealed = self
            .inner
            .sealer
            .seal_text(&successor_aad(token_id), successor.secret.expose())?;
        let updated = sqlx::query(
            "UPDATE tokens SET expires_at = $1, successor_id = $2, successor_secret = $3,              rotated_at = $4 WHERE account_id = $5 AND id = $6 AND revoked_at IS NULL              AND successor_id IS NULL",
        )
        .bind(ts(plan.predecessor_expires_at))
        .bind(successor.token.id.to_string())
        .bind(sealed)
        .bind(ts(now))
        .bind(account_id.to_string())
        .bind(token_id.to_string())
        .execute(&mut *tx.tx)
        .await?;
        if updated.rows_affected() == 0 {
            return Err(StoreError::Conflict(
                "the token was revoked or rotated at the same time; nothing was changed".into(),
            ));
        }
        let mut after = before.clone();
        after.expires_at = plan.predecessor_expires_at;
        after.successor_id = Some(successor.token.id);
        after.rotated_at = Some(now);
        audit::record(
            &mut tx.tx,
            Entry {
                account_id: Some(account_id),
                acting,
                action: "token.rotate",
                object_type: "token",
                object_id: Some(token_id),
                before: snapshot(&before),
                after: snapshot(&after),
                now,
            },
        )
        .await?;
        self.commit_publishing(
            tx,
            vec![
                ChangeEvent::TokenCreated {
                    account_id,
                    token_id: successor.token.id,
                },
                ChangeEvent::TokenRotated {
                    account_id,
                    token_id,
                    successor_id: successor.token.id,
                    expires_at: plan.predecessor_expires_at,
                },
            ],
        )
        .await?;
        Ok(RotatedToken {
            predecessor: after,
            successor,
        })
    }

    /// The successors of those of these tokens that were rotated and are still in their
    /// overlap window (neither token revoked), with their secrets.
    pub async fn token_successors(
        &self,
        account_id: Uuid,
        token_ids: &[Uuid],
    ) -> Result<std::collections::HashMap<Uuid, TokenSuccessor>> {
        let mut successors = std::collections::HashMap::new();
        let now = ts(Utc::now());
        for chunk in token_ids.chunks(crate::authorizations::IDS_PER_QUERY) {
            let sql = format!(
                "SELECT t.id, t.successor_id, t.successor_secret, s.expires_at \
                 FROM tokens t JOIN tokens s ON s.id = t.successor_id \
                 WHERE t.account_id = $1 AND s.account_id = $1 AND t.successor_secret IS NOT NULL \
                 AND t.revoked_at IS NULL AND s.revoked_at IS NULL AND t.expires_at > $2 \
                 AND t.id IN ({})",
                db::placeholders(3, chunk.len())
            );
            let mut query = sqlx::query(&sql).bind(account_id.to_string()).bind(now);
            for id in chunk {
                query = query.bind(id.to_string());
            }
            for row in query.fetch_all(self.pool()).await? {
                let id = db::uuid(&row, "id")?;
                let sealed = text(&row, "successor_secret")?;
                let Some(secret) = self.inner.sealer.open_text(&successor_aad(id), &sealed) else {
                    return Err(StoreError::Corrupt(format!(
                        "the successor of token {id} does not open with this server's secret"
                    )));
                };
                successors.insert(
                    id,
                    TokenSuccessor {
                        token_id: db::uuid(&row, "successor_id")?,
                        secret: SecretString::new(secret),
                        expires_at: time(&row, "expires_at")?,
                    },
                );
            }
        }
        Ok(successors)
    }

    /// Forgets the sealed successors of rotations whose window has ended; returns how many.
    pub async fn clear_ended_rotations(&self, now: DateTime<Utc>) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE tokens SET successor_secret = NULL \
             WHERE successor_secret IS NOT NULL AND expires_at <= $1",
        )
        .bind(ts(now))
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected())
    }

    /// How many client devices connect with this token now (their last session used it):
    /// after a rotation, the devices that moved to the successor. Sightings this node has not
    /// written yet count.
    pub async fn clients_on_token(&self, account_id: Uuid, token_id: Uuid) -> Result<u64> {
        let rows = sqlx::query(
            "SELECT device_id FROM devices WHERE account_id = $1 AND kind = 'client' \
             AND token_id = $2",
        )
        .bind(account_id.to_string())
        .bind(token_id.to_string())
        .fetch_all(self.pool())
        .await?;
        let mut devices = rows
            .iter()
            .map(|row| text(row, "device_id"))
            .collect::<Result<std::collections::HashSet<String>>>()?;
        self.overlay_pending_sightings(account_id, token_id, &mut devices);
        Ok(devices.len() as u64)
    }

    /// Revokes every active token of the holder; returns how many were revoked now.
    pub async fn revoke_all_tokens(
        &self,
        account_id: Uuid,
        holder: TokenHolder,
        acting: &Acting,
    ) -> Result<u64> {
        self.check_holder(account_id, holder).await?;
        let (column, holder_id) = holder_column(holder);
        let mut tx = self.begin_write().await?;
        let ids = revoke_held_tokens(&mut tx.tx, account_id, column, holder_id, acting).await?;
        if ids.is_empty() {
            return Ok(0);
        }
        self.commit_publishing(
            tx,
            vec![ChangeEvent::TokensRevoked {
                account_id,
                token_ids: ids.clone(),
            }],
        )
        .await?;
        Ok(ids.len() as u64)
    }

    async fn check_holder(&self, account_id: Uuid, holder: TokenHolder) -> Result<()> {
        match holder {
            TokenHolder::Actor(id) => self.get_actor(account_id, id).await.map(|_| ()),
            TokenHolder::Site(id) => self.get_site(account_id, id).await.map(|_| ()),
        }
    }

    /// A stored token with any not-yet-flushed use laid over it, so reads are never behind.
    fn token_from_row(&self, row: &AnyRow) -> Result<Token> {
        let mut token = token_from_row(row)?;
        if let Some(pending) = self.inner.tokens.pending_use(&token.id) {
            token.last_used_at = Some(pending.at);
            token.last_used_ip = pending.ip;
            token.last_used_user_agent = pending.user_agent;
        }
        Ok(token)
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn insert_token(
    store: &Store,
    conn: &mut AnyConnection,
    account_id: Uuid,
    holder: TokenHolder,
    kind: TokenKind,
    request: &NewTokenRequest,
    settings: &postern_domain::AccountSettings,
    acting: &Acting,
) -> Result<CreatedToken> {
    let now = Utc::now();
    let name = match &request.name {
        Some(name) => validate::name("name", name)?,
        None => DEFAULT_TOKEN_NAME.to_string(),
    };
    let expires_at = rules::token_expiry(now, request.expires_at, settings)?;
    let guardrails = checked_guardrails(kind, request.guardrails.clone())?;
    let id = new_id();
    let generated = postern_token::generate(kind, id, &store.inner.hash_key);
    let (actor_id, site_id) = match holder {
        TokenHolder::Actor(id) => (Some(id), None),
        TokenHolder::Site(id) => (None, Some(id)),
    };
    let token = Token {
        id,
        account_id,
        kind,
        actor_id,
        site_id,
        name,
        created_at: now,
        created_by: acting.actor_id,
        expires_at,
        last_used_at: None,
        last_used_ip: None,
        last_used_user_agent: None,
        revoked_at: None,
        revoked_by: None,
        guardrails,
        rotated_from: request.rotated_from,
        successor_id: None,
        rotated_at: None,
        workload_identity_id: request.workload_identity_id,
    };
    sqlx::query(
        "INSERT INTO tokens (id, account_id, kind, actor_id, site_id, name, secret_hash, \
         created_at, created_by, expires_at, max_clients, allowed_source_cidrs, \
         require_approval, ephemeral, rotated_from, workload_identity_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
    )
    .bind(id.to_string())
    .bind(account_id.to_string())
    .bind(kind.as_str())
    .bind(actor_id.map(|id| id.to_string()))
    .bind(site_id.map(|id| id.to_string()))
    .bind(token.name.clone())
    .bind(generated.hash.to_hex())
    .bind(ts(now))
    .bind(acting.actor_id.map(|id| id.to_string()))
    .bind(ts(expires_at))
    .bind(token.guardrails.max_clients.map(i64::from))
    .bind(db::to_json(&token.guardrails.allowed_source_cidrs)?)
    .bind(i64::from(token.guardrails.require_approval))
    .bind(i64::from(token.guardrails.ephemeral))
    .bind(request.rotated_from.map(|id| id.to_string()))
    .bind(request.workload_identity_id.map(|id| id.to_string()))
    .execute(&mut *conn)
    .await?;
    audit::record(
        conn,
        Entry {
            account_id: Some(account_id),
            acting,
            action: "token.create",
            object_type: "token",
            object_id: Some(id),
            before: None,
            after: snapshot(&token),
            now,
        },
    )
    .await?;
    Ok(CreatedToken {
        token,
        secret: generated.secret,
    })
}

/// Clears the sealed successors of rotations in which one of these tokens (being revoked) is
/// the rotated token or the successor.
pub(crate) async fn forget_successors(
    tx: &mut crate::db::WriteTx,
    account_id: Uuid,
    token_ids: &[Uuid],
) -> Result<()> {
    for chunk in token_ids.chunks(crate::authorizations::IDS_PER_QUERY) {
        let list = db::placeholders(2, chunk.len());
        let sql = format!(
            "UPDATE tokens SET successor_secret = NULL WHERE account_id = $1 \
             AND successor_secret IS NOT NULL AND (id IN ({list}) OR successor_id IN ({list}))"
        );
        let mut query = sqlx::query(&sql).bind(account_id.to_string());
        for id in chunk {
            query = query.bind(id.to_string());
        }
        query.execute(&mut *tx.tx).await?;
    }
    Ok(())
}

/// Ids of the holder's tokens that still authenticate (not revoked).
pub(crate) async fn active_token_ids(
    conn: &mut AnyConnection,
    account_id: Uuid,
    column: &str,
    holder_id: Uuid,
) -> Result<Vec<Uuid>> {
    let sql = format!(
        "SELECT id FROM tokens WHERE account_id = $1 AND {column} = $2 AND revoked_at IS NULL"
    );
    let rows = sqlx::query(&sql)
        .bind(account_id.to_string())
        .bind(holder_id.to_string())
        .fetch_all(conn)
        .await?;
    rows.iter().map(|row| db::uuid(row, "id")).collect()
}

/// Revokes the tokens whose `column` (`actor_id`, `site_id`, `workload_identity_id`) is
/// `holder_id` and that are not revoked yet, each audited as `token.revoke`, in `conn`'s
/// transaction; returns their ids (the caller publishes `TokensRevoked` with them).
pub(crate) async fn revoke_held_tokens(
    conn: &mut AnyConnection,
    account_id: Uuid,
    column: &str,
    holder_id: Uuid,
    acting: &Acting,
) -> Result<Vec<Uuid>> {
    let now = Utc::now();
    let ids = active_token_ids(conn, account_id, column, holder_id).await?;
    if ids.is_empty() {
        return Ok(ids);
    }
    let sql = format!(
        "UPDATE tokens SET revoked_at = $1, revoked_by = $2 \
         WHERE account_id = $3 AND {column} = $4 AND revoked_at IS NULL"
    );
    sqlx::query(&sql)
        .bind(ts(now))
        .bind(acting.actor_id.map(|id| id.to_string()))
        .bind(account_id.to_string())
        .bind(holder_id.to_string())
        .execute(&mut *conn)
        .await?;
    for token_id in &ids {
        audit::record(
            conn,
            Entry {
                account_id: Some(account_id),
                acting,
                action: "token.revoke",
                object_type: "token",
                object_id: Some(*token_id),
                before: None,
                after: Some(serde_json::json!({ "id": token_id, "revoked_at": now })),
                now,
            },
        )
        .await?;
    }
    Ok(ids)
}

pub(crate) fn holder_column(holder: TokenHolder) -> (&'static str, Uuid) {
    match holder {
        TokenHolder::Actor(id) => ("actor_id", id),
        TokenHolder::Site(id) => ("site_id", id),
    }
}

/// Writes the buffered uses; when that fails they are kept for the next flush.
pub(crate) async fn flush_usage(store: &Store) -> Result<usize> {
    let pending = store.inner.tokens.take_usage();
    if pending.is_empty() {
        return Ok(0);
    }
    match write_usage(store, &pending).await {
        Ok(()) => Ok(pending.len()),
        Err(err) => {
            store.inner.tokens.restore_usage(pending);
            Err(err)
        }
    }
}

async fn write_usage(
    store: &Store,
    pending: &std::collections::HashMap<Uuid, crate::token_cache::PendingUse>,
) -> Result<()> {
    let mut tx = store.begin_write().await?;
    for (token_id, used) in pending {
        sqlx::query(
            "UPDATE tokens SET last_used_at = $1, last_used_ip = $2, last_used_user_agent = $3 \
             WHERE id = $4",
        )
        .bind(ts(used.at))
        .bind(used.ip.clone())
        .bind(used.user_agent.clone())
        .bind(token_id.to_string())
        .execute(&mut *tx.tx)
        .await?;
        if let Some(actor_id) = used.actor_id {
            sqlx::query("UPDATE actors SET last_seen_at = $1 WHERE id = $2")
                .bind(ts(used.at))
                .bind(actor_id.to_string())
                .execute(&mut *tx.tx)
                .await?;
        }
    }
    tx.commit().await
}

pub(crate) fn token_from_row(row: &AnyRow) -> Result<Token> {
    let kind_text = text(row, "kind")?;
    Ok(Token {
        id: db::uuid(row, "id")?,
        account_id: db::uuid(row, "account_id")?,
        kind: TokenKind::parse_str(&kind_text)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown token kind '{kind_text}'")))?,
        actor_id: opt_uuid(row, "actor_id")?,
        site_id: opt_uuid(row, "site_id")?,
        name: text(row, "name")?,
        created_at: time(row, "created_at")?,
        created_by: opt_uuid(row, "created_by")?,
        expires_at: time(row, "expires_at")?,
        last_used_at: opt_time(row, "last_used_at")?,
        last_used_ip: opt_text(row, "last_used_ip")?,
        last_used_user_agent: opt_text(row, "last_used_user_agent")?,
        revoked_at: opt_time(row, "revoked_at")?,
        revoked_by: opt_uuid(row, "revoked_by")?,
        guardrails: guardrails_from_row(row)?,
        rotated_from: opt_uuid(row, "rotated_from")?,
        successor_id: opt_uuid(row, "successor_id")?,
        rotated_at: opt_time(row, "rotated_at")?,
        workload_identity_id: opt_uuid(row, "workload_identity_id")?,
    })
}

/// The guardrail columns of a `tokens` row.
impl Store {
    /// Live tokens (not revoked, not yet expired, not rotated) expiring before `until`,
    /// counted by account slug, for the expiry metrics.
    pub async fn count_tokens_expiring(
        &self,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Vec<(String, u64)>> {
        let rows = sqlx::query(
            "SELECT a.slug AS slug, COUNT(t.id) AS expiring FROM tokens t \
             JOIN accounts a ON a.id = t.account_id \
             WHERE t.revoked_at IS NULL AND t.successor_id IS NULL \
             AND t.workload_identity_id IS NULL AND t.expires_at > $1 \
             AND t.expires_at <= $2 GROUP BY a.slug",
        )
        .bind(ts(now))
        .bind(ts(until))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                let count: i64 = row.try_get("expiring")?;
                Ok((row.try_get("slug")?, u64::try_from(count).unwrap_or(0)))
            })
            .collect()
    }
}

pub(crate) fn guardrails_from_row(row: &AnyRow) -> Result<TokenGuardrails> {
    let max_clients: Option<i64> = row.try_get("max_clients")?;
    let require_approval: i64 = row.try_get("require_approval")?;
    let ephemeral: i64 = row.try_get("ephemeral")?;
    Ok(TokenGuardrails {
        max_clients: max_clients
            .map(|n| {
                u32::try_from(n)
                    .map_err(|_| StoreError::Corrupt(format!("a token's max_clients is {n}")))
            })
            .transpose()?,
        allowed_source_cidrs: db::json(row, "allowed_source_cidrs")?,
        require_approval: require_approval != 0,
        ephemeral: ephemeral != 0,
    })
}

/// Guardrails are for the tokens of service accounts: refused on others, checked otherwise.
fn checked_guardrails(kind: TokenKind, guardrails: TokenGuardrails) -> Result<TokenGuardrails> {
    if guardrails.is_set() && kind != TokenKind::Client {
        return Err(StoreError::Validation(
            postern_domain::ValidationError::new(
                "max_clients",
                "guardrails (max_clients, allowed_source_cidrs, require_approval, ephemeral) apply to \
             service-account tokens only",
            ),
        ));
    }
    Ok(validate::guardrails(guardrails)?)
}
