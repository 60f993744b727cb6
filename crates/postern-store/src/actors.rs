//! Actors: users, admins, service accounts and API clients.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use postern_domain::{
    new_id, rules, validate, Acting, Actor, ActorType, ChangeEvent, ValidationError,
};
use sqlx::any::AnyRow;
use sqlx::Row;
use uuid::Uuid;

use crate::audit::{self, snapshot, Entry};
use crate::db::{self, opt_text, opt_time, text, time, ts};
use crate::groups;
use crate::tokens::{self, CreatedToken, NewTokenRequest, TokenHolder};
use crate::{Page, Paged, Result, Store, StoreError};

#[derive(Debug, Clone)]
pub struct NewActor {
    pub actor_type: ActorType,
    pub name: String,
    pub email: Option<String>,
    /// An argon2id PHC string, for admins who sign in to the web UI.
    pub password_hash: Option<String>,
    pub group_ids: Vec<Uuid>,
    /// The initial token of a service account or API client (created unless `None`).
    pub token: Option<NewTokenRequest>,
}

/// The identity provider a person comes from: the provider, and its subject (`sub`) once the
/// person has signed in through it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProviderLink<'a> {
    pub provider_id: Uuid,
    pub subject: Option<&'a str>,
    /// The provider's directory's id for the person (SCIM `externalId`).
    pub external_id: Option<&'a str>,
}

#[derive(Debug, Clone, Default)]
pub struct ActorFilter {
    pub actor_type: Option<ActorType>,
    /// Case-insensitive substring of the name.
    pub name_contains: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct ActorPatch {
    pub name: Option<String>,
    pub disabled: Option<bool>,
    /// A person's new email (a directory changes it); machines have none.
    pub email: Option<String>,
}

impl Store {
    /// Creates an actor, its group memberships and (for machines) its initial token, all in one
    /// transaction.
    pub async fn create_actor(
        &self,
        account_id: Uuid,
        new: NewActor,
        acting: &Acting,
    ) -> Result<(Actor, Option<CreatedToken>)> {
        self.create_linked_actor(account_id, new, None, acting)
            .await
    }

    /// `create_actor` for a person an identity provider brings (`link`): the link is written
    /// with the actor, in one transaction, so no person exists that their provider cannot find.
    pub(crate) async fn create_linked_actor(
        &self,
        account_id: Uuid,
        new: NewActor,
        link: Option<ProviderLink<'_>>,
        acting: &Acting,
    ) -> Result<(Actor, Option<CreatedToken>)> {
        let name = validate::name("name", &new.name)?;
        let email = new
            .email
            .as_deref()
            .map(|e| validate::email("email", e))
            .transpose()?;
        rules::check_creatable(new.actor_type, email.as_deref())?;
        let settings = self.get_account(account_id).await?.settings;
        let everyone = groups::everyone_group_id(self, account_id).await?;
        let mut group_ids = rules::automatic_groups(new.actor_type, everyone);
        for group_id in &new.group_ids {
            let group = crate::db::referenced(
                self.get_group(account_id, *group_id).await,
                "group_ids",
                || format!("no group with id {group_id} in this account"),
            )?;
            rules::check_membership_change(group.kind)?;
            if !group_ids.contains(group_id) {
                group_ids.push(*group_id);
            }
        }
        let now = Utc::now();
        let actor = Actor {
            id: new_id(),
            account_id,
            actor_type: new.actor_type,
            name,
            email,
            disabled_at: None,
            last_seen_at: None,
            created_at: now,
            updated_at: now,
        };
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO actors (id, account_id, type, name, email, password_hash, created_at, \
             updated_at, identity_provider_id, provider_subject, scim_external_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(actor.id.to_string())
        .bind(account_id.to_string())
        .bind(actor.actor_type.as_str())
        .bind(actor.name.clone())
        .bind(actor.email.clone())
        .bind(new.password_hash)
        .bind(ts(now))
        .bind(ts(now))
        .bind(link.map(|link| link.provider_id.to_string()))
        .bind(link.and_then(|link| link.subject.map(str::to_string)))
        .bind(link.and_then(|link| link.external_id.map(str::to_string)))
        .execute(&mut *tx.tx)
        .await
        .map_err(|err| {
            db::unique_violation(err, || match link.and_then(|link| link.subject) {
                Some(subject) => {
                    format!("an actor with this email, or the provider's subject {subject}, exists already")
                }
                None => "an actor with this email exists already".to_string(),
            })
        })?;
        for group_id in &group_ids {
            groups::insert_membership(&mut tx.tx, account_id, *group_id, actor.id, now).await?;
        }
        audit::record(
            &mut tx.tx,
            Entry {
                account_id: Some(account_id),
                acting,
                action: "actor.create",
                object_type: "actor",
                object_id: Some(actor.id),
                before: None,
                after: snapshot(&serde_json::json!({ "actor": &actor, "group_ids": &group_ids })),
                now,
            },
        )
        .await?;
        let token = match (actor.actor_type.token_kind(), new.token) {
            (Some(kind), Some(request)) => Some(
                tokens::insert_token(
                    self,
                    &mut tx.tx,
                    account_id,
                    TokenHolder::Actor(actor.id),
                    kind,
                    &request,
                    &settings,
                    acting,
                )
                .await?,
            ),
            _ => None,
        };
        let mut events = vec![ChangeEvent::ActorCreated {
            account_id,
            actor_id: actor.id,
        }];
        for group_id in group_ids {
            events.push(ChangeEvent::MembershipChanged {
                account_id,
                group_id,
                added: vec![actor.id],
                removed: vec![],
            });
        }
        if let Some(created) = &token {
            events.push(ChangeEvent::TokenCreated {
                account_id,
                token_id: created.token.id,
            });
        }
        self.commit_publishing(tx, events).await?;
        Ok((actor, token))
    }

    pub async fn list_actors(
        &self,
        account_id: Uuid,
        filter: &ActorFilter,
        page: Page,
    ) -> Result<Paged<Actor>> {
        let mut sql = String::from("SELECT * FROM actors WHERE account_id = $1 AND id > $2");
        let mut binds = vec![
            account_id.to_string(),
            page.cursor.map(|c| c.to_string()).unwrap_or_default(),
        ];
        if let Some(actor_type) = filter.actor_type {
            binds.push(actor_type.as_str().to_string());
            sql.push_str(&format!(" AND type = ${}", binds.len()));
        }
        if let Some(needle) = filter.name_contains.as_deref().filter(|n| !n.is_empty()) {
            binds.push(format!("%{}%", db::escape_like(&needle.to_lowercase())));
            sql.push_str(&format!(
                " AND LOWER(name) LIKE ${} ESCAPE '\\'",
                binds.len()
            ));
        }
        sql.push_str(&format!(" ORDER BY id LIMIT {}", page.limit + 1));
        let mut query = sqlx::query(&sql);
        for bind in binds {
            query = query.bind(bind);
        }
        let rows = query.fetch_all(self.pool()).await?;
        let seen = self.inner.tokens.pending_seen();
        let items = rows
            .iter()
            .map(|row| actor_from_row(row).map(|actor| with_pending_seen(actor, &seen)))
            .collect::<Result<Vec<_>>>()?;
        Ok(db::paginate(items, page.limit, |a| a.id))
    }

    pub async fn get_actor(&self, account_id: Uuid, actor_id: Uuid) -> Result<Actor> {
        let actor = db::get_in_account(
            self,
            "actors",
            account_id,
            actor_id,
            "actor",
            actor_from_row,
        )
        .await?;
        Ok(with_pending_seen(actor, &self.inner.tokens.pending_seen()))
    }

    /// The actor with this email and its password hash, for sign-in.
    pub async fn actor_by_email(
        &self,
        account_id: Uuid,
        email: &str,
    ) -> Result<Option<(Actor, Option<String>)>> {
        let row = sqlx::query("SELECT * FROM actors WHERE account_id = $1 AND email = $2")
            .bind(account_id.to_string())
            .bind(email.trim().to_ascii_lowercase())
            .fetch_optional(self.pool())
            .await?;
        let Some(row) = row else { return Ok(None) };
        let hash: Option<String> = row.try_get("password_hash")?;
        Ok(Some((actor_from_row(&row)?, hash)))
    }

    pub async fn update_actor(
        &self,
        account_id: Uuid,
        actor_id: Uuid,
        patch: ActorPatch,
        acting: &Acting,
    ) -> Result<Actor> {
        let before = self.get_actor(account_id, actor_id).await?;
        let now = Utc::now();
        let mut after = before.clone();
        if let Some(name) = &patch.name {
            after.name = validate::name("name", name)?;
        }
        if let Some(email) = &patch.email {
            if !matches!(before.actor_type, ActorType::User | ActorType::Admin) {
                return Err(StoreError::Validation(ValidationError::new(
                    "email",
                    format!("{} has no email", before.actor_type.described()),
                )));
            }
            after.email = Some(validate::email("email", email)?);
        }
        match patch.disabled {
            Some(true) if before.disabled_at.is_none() => after.disabled_at = Some(now),
            Some(false) => after.disabled_at = None,
            _ => {}
        }
        if after == before {
            return Ok(before);
        }
        after.updated_at = now;
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "UPDATE actors SET name = $1, disabled_at = $2, email = $3, updated_at = $4 \
             WHERE account_id = $5 AND id = $6",
        )
        .bind(after.name.clone())
        .bind(db::opt_ts(after.disabled_at))
        .bind(after.email.clone())
        .bind(ts(now))
        .bind(account_id.to_string())
        .bind(actor_id.to_string())
        .execute(&mut *tx.tx)
        .await
        .map_err(|err| {
            db::unique_violation(err, || {
                "an actor with this email exists already".to_string()
            })
        })?;
        let action = match (before.disabled_at, after.disabled_at) {
            (None, Some(_)) => "actor.disable",
            (Some(_), None) => "actor.enable",
            _ => "actor.update",
        };
        audit::record(
            &mut tx.tx,
            Entry {
                account_id: Some(account_id),
                acting,
                action,
                object_type: "actor",
                object_id: Some(actor_id),
                before: snapshot(&before),
                after: snapshot(&after),
                now,
            },
        )
        .await?;
        self.commit_publishing(
            tx,
            vec![match action {
                "actor.disable" => ChangeEvent::ActorDisabled {
                    account_id,
                    actor_id,
                },
                "actor.enable" => ChangeEvent::ActorEnabled {
                    account_id,
                    actor_id,
                },
                _ => ChangeEvent::ActorUpdated {
                    account_id,
                    actor_id,
                },
            }],
        )
        .await?;
        Ok(after)
    }

    /// Deletes the actor with its tokens and memberships; the audit log keeps the record.
    pub async fn delete_actor(
        &self,
        account_id: Uuid,
        actor_id: Uuid,
        acting: &Acting,
    ) -> Result<()> {
        let before = self.get_actor(account_id, actor_id).await?;
        let now = Utc::now();
        let mut tx = self.begin_write().await?;
        let token_ids =
            tokens::active_token_ids(&mut tx.tx, account_id, "actor_id", actor_id).await?;
        let group_ids = groups::groups_of_actor(&mut tx.tx, account_id, actor_id).await?;
        sqlx::query("DELETE FROM actors WHERE account_id = $1 AND id = $2")
            .bind(account_id.to_string())
            .bind(actor_id.to_string())
            .execute(&mut *tx.tx)
            .await?;
        audit::record(
            &mut tx.tx,
            Entry {
                account_id: Some(account_id),
                acting,
                action: "actor.delete",
                object_type: "actor",
                object_id: Some(actor_id),
                before: snapshot(&before),
                after: None,
                now,
            },
        )
        .await?;
        let mut events = vec![ChangeEvent::ActorDeleted {
            account_id,
            actor_id,
        }];
        if !token_ids.is_empty() {
            events.push(ChangeEvent::TokensRevoked {
                account_id,
                token_ids,
            });
        }
        for group_id in group_ids {
            events.push(ChangeEvent::MembershipChanged {
                account_id,
                group_id,
                added: vec![],
                removed: vec![actor_id],
            });
        }
        self.commit_publishing(tx, events).await?;
        Ok(())
    }
}

/// Lays a not-yet-flushed token use over the stored `last_seen_at`, so reads are never behind.
fn with_pending_seen(mut actor: Actor, seen: &HashMap<Uuid, DateTime<Utc>>) -> Actor {
    if let Some(at) = seen.get(&actor.id) {
        actor.last_seen_at = Some(actor.last_seen_at.map_or(*at, |stored| stored.max(*at)));
    }
    actor
}

pub(crate) fn actor_from_row(row: &AnyRow) -> Result<Actor> {
    let type_text = text(row, "type")?;
    Ok(Actor {
        id: db::uuid(row, "id")?,
        account_id: db::uuid(row, "account_id")?,
        actor_type: ActorType::parse(&type_text)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown actor type '{type_text}'")))?,
        name: text(row, "name")?,
        email: opt_text(row, "email")?,
        disabled_at: opt_time(row, "disabled_at")?,
        last_seen_at: opt_time(row, "last_seen_at")?,
        created_at: time(row, "created_at")?,
        updated_at: time(row, "updated_at")?,
    })
}
