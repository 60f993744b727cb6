//! Directory sync (SCIM 2.0) of people: a provider's directory creates, changes, deactivates
//! and deletes the people it brought — never anyone else, never a service account.

use chrono::Utc;
use postern_domain::identity::IdentityProvider;
use postern_domain::{validate, Acting, Actor, ActorType, Group, Membership, ValidationError};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::actors::{actor_from_row, ActorPatch, NewActor, ProviderLink};
use crate::audit::{self, Entry};
use crate::db::{opt_text, ts};
use crate::groups::{MembershipChange, SyncedFrom};
use crate::{Page, Result, Store, StoreError};

/// The prefix of a SCIM token; the provider's id follows, then the secret.
pub const SCIM_TOKEN_PREFIX: &str = "postern_scim_";

/// A person as a directory describes them.
#[derive(Debug, Clone, Default)]
pub struct DirectoryPerson {
    pub email: String,
    pub name: Option<String>,
    pub active: bool,
    /// The directory's own id for them (SCIM `externalId`).
    pub external_id: Option<String>,
}

/// What a directory changes; `None` keeps a field.
#[derive(Debug, Clone, Default)]
pub struct DirectoryChange {
    pub email: Option<String>,
    pub name: Option<String>,
    pub active: Option<bool>,
    pub external_id: Option<String>,
}

/// A person the provider brought, with the directory's id for them.
#[derive(Debug, Clone)]
pub struct DirectoryUser {
    pub actor: Actor,
    pub external_id: Option<String>,
}

/// Which of the provider's people a directory looks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PersonFilter {
    /// `userName eq` (their email).
    UserName(String),
    /// `externalId eq`.
    ExternalId(String),
}

fn user_from_row(row: &sqlx::any::AnyRow) -> Result<DirectoryUser> {
    Ok(DirectoryUser {
        actor: actor_from_row(row)?,
        external_id: opt_text(row, "scim_external_id")?,
    })
}

/// A directory's `externalId`: up to 255 characters, none of them control characters.
fn external_id(value: &str) -> Result<String> {
    if value.is_empty() || value.len() > 255 || value.chars().any(char::is_control) {
        return Err(StoreError::Validation(ValidationError::new(
            "externalId",
            "must be 1 to 255 characters, without control characters",
        )));
    }
    Ok(value.to_string())
}

fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl Store {
    /// Gives the provider a new SCIM token (the previous one stops working); returns it — the
    /// only time it is seen. Audited as `identity_provider.scim_token`.
    pub async fn create_scim_token(
        &self,
        account_id: Uuid,
        provider_id: Uuid,
        acting: &Acting,
    ) -> Result<String> {
        let provider = self.get_identity_provider(account_id, provider_id).await?;
        let mut secret = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut secret);
        let token = format!(
            "{SCIM_TOKEN_PREFIX}{}_{}",
            provider.id.simple(),
            hex::encode(secret)
        );
        let now = Utc::now();
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "UPDATE identity_providers SET scim_token_hash = $1, updated_at = $2 \
             WHERE account_id = $3 AND id = $4",
        )
        .bind(token_hash(&token))
        .bind(ts(now))
        .bind(account_id.to_string())
        .bind(provider_id.to_string())
        .execute(&mut *tx.tx)
        .await?;
        audit::record(
            &mut tx.tx,
            Entry {
                account_id: Some(account_id),
                acting,
                action: "identity_provider.scim_token",
                object_type: "identity_provider",
                object_id: Some(provider_id),
                before: None,
                after: Some(serde_json::json!({ "scim_token": "created" })),
                now,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(token)
    }

    /// The provider a SCIM token belongs to, if it is that provider's current token (compared
    /// as SHA-256 digests in constant time).
    pub async fn provider_of_scim_token(&self, token: &str) -> Result<Option<IdentityProvider>> {
        let Some(rest) = token.strip_prefix(SCIM_TOKEN_PREFIX) else {
            return Ok(None);
        };
        let Some((id, _)) = rest.split_once('_') else {
            return Ok(None);
        };
        let Ok(provider_id) = Uuid::parse_str(id) else {
            return Ok(None);
        };
        let row = sqlx::query("SELECT * FROM identity_providers WHERE id = $1")
            .bind(provider_id.to_string())
            .fetch_optional(self.pool())
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let Some(stored) = opt_text(&row, "scim_token_hash")? else {
            return Ok(None);
        };
        let presented = token_hash(token);
        let same: bool =
            subtle::ConstantTimeEq::ct_eq(presented.as_bytes(), stored.as_bytes()).into();
        if !same {
            return Ok(None);
        }
        Ok(Some(crate::identity_providers::provider_from_row(&row)?))
    }

    /// The people the provider brought, by id, optionally only those `filter` names; a page
    /// of them and how many there are.
    pub async fn directory_people(
        &self,
        provider: &IdentityProvider,
        filter: Option<&PersonFilter>,
        offset: i64,
        limit: i64,
    ) -> Result<(i64, Vec<DirectoryUser>)> {
        let (filter, value) = match filter {
            None => ("", None),
            Some(PersonFilter::UserName(email)) => {
                (" AND email = $3", Some(email.trim().to_ascii_lowercase()))
            }
            Some(PersonFilter::ExternalId(id)) => {
                (" AND scim_external_id = $3", Some(id.to_string()))
            }
        };
        let count_sql = format!(
            "SELECT COUNT(*) FROM actors WHERE account_id = $1 AND identity_provider_id = $2{filter}"
        );
        let mut count = sqlx::query_scalar::<_, i64>(&count_sql)
            .bind(provider.account_id.to_string())
            .bind(provider.id.to_string());
        if let Some(value) = &value {
            count = count.bind(value.clone());
        }
        let total = count.fetch_one(self.pool()).await?;
        let page_sql = format!(
            "SELECT * FROM actors WHERE account_id = $1 AND identity_provider_id = $2{filter} \
             ORDER BY id LIMIT {} OFFSET {}",
            limit.clamp(0, 1000),
            offset.max(0)
        );
        let mut page = sqlx::query(&page_sql)
            .bind(provider.account_id.to_string())
            .bind(provider.id.to_string());
        if let Some(value) = &value {
            page = page.bind(value.clone());
        }
        let rows = page.fetch_all(self.pool()).await?;
        let people = rows.iter().map(user_from_row).collect::<Result<_>>()?;
        Ok((total, people))
    }

    /// One person the provider brought.
    pub async fn directory_person(
        &self,
        provider: &IdentityProvider,
        id: Uuid,
    ) -> Result<DirectoryUser> {
        let row = sqlx::query(
            "SELECT * FROM actors WHERE account_id = $1 AND identity_provider_id = $2 AND id = $3",
        )
        .bind(provider.account_id.to_string())
        .bind(provider.id.to_string())
        .bind(id.to_string())
        .fetch_optional(self.pool())
        .await?;
        row.as_ref()
            .map(user_from_row)
            .transpose()?
            .ok_or(StoreError::NotFound("user"))
    }

    /// A directory provisions a person: a user brought by this provider (they sign in through
    /// it later, linked by email). An email already taken is a conflict.
    pub async fn provision_person(
        &self,
        provider: &IdentityProvider,
        person: DirectoryPerson,
        acting: &Acting,
    ) -> Result<DirectoryUser> {
        let email = validate::email("userName", &person.email)?;
        let external_id = person.external_id.as_deref().map(external_id).transpose()?;
        if self
            .actor_by_email(provider.account_id, &email)
            .await?
            .is_some()
        {
            return Err(StoreError::Conflict(format!("{email} exists already")));
        }
        let (actor, _) = self
            .create_linked_actor(
                provider.account_id,
                NewActor {
                    actor_type: ActorType::User,
                    name: person.name.unwrap_or_else(|| email.clone()),
                    email: Some(email),
                    password_hash: None,
                    group_ids: Vec::new(),
                    token: None,
                },
                Some(ProviderLink {
                    provider_id: provider.id,
                    subject: None,
                    external_id: external_id.as_deref(),
                }),
                acting,
            )
            .await?;
        if person.active {
            return Ok(DirectoryUser { actor, external_id });
        }
        self.change_person(
            provider,
            actor.id,
            DirectoryChange {
                active: Some(false),
                ..DirectoryChange::default()
            },
            acting,
        )
        .await
    }

    /// A directory changes a person: their name, email, whether they are active (a
    /// deactivated person is disabled: their sessions end at once), or its id for them.
    pub async fn change_person(
        &self,
        provider: &IdentityProvider,
        id: Uuid,
        change: DirectoryChange,
        acting: &Acting,
    ) -> Result<DirectoryUser> {
        let before = self.directory_person(provider, id).await?;
        let new_external_id = change
            .external_id
            .as_deref()
            .map(external_id)
            .transpose()?
            .filter(|new| before.external_id.as_ref() != Some(new));
        let patch = ActorPatch {
            name: change.name,
            disabled: change.active.map(|active| !active),
            email: change.email,
        };
        let actor = self
            .update_actor(provider.account_id, id, patch, acting)
            .await?;
        let Some(external_id) = new_external_id else {
            return Ok(DirectoryUser {
                actor,
                external_id: before.external_id,
            });
        };
        // The directory's own bookkeeping, not the person's: kept, not audited.
        sqlx::query("UPDATE actors SET scim_external_id = $1 WHERE account_id = $2 AND id = $3")
            .bind(external_id.clone())
            .bind(provider.account_id.to_string())
            .bind(id.to_string())
            .execute(self.pool())
            .await?;
        Ok(DirectoryUser {
            actor,
            external_id: Some(external_id),
        })
    }

    /// A directory deletes a person (their sessions end).
    pub async fn delete_person(
        &self,
        provider: &IdentityProvider,
        id: Uuid,
        acting: &Acting,
    ) -> Result<()> {
        self.directory_person(provider, id).await?;
        self.delete_actor(provider.account_id, id, acting).await
    }
}

/// What a directory changes of a group; `None` keeps it.
#[derive(Debug, Clone, Default)]
pub struct DirectoryGroupChange {
    pub name: Option<String>,
    pub add: Vec<Uuid>,
    pub remove: Vec<Uuid>,
    /// The whole member list (a `PUT`, or a `replace` of `members`).
    pub members: Option<Vec<Uuid>>,
    /// The directory's id for the group (SCIM `externalId`).
    pub external_id: Option<String>,
}

/// A group the provider's directory synced: its members (empty in lists) and the directory's
/// id for it.
#[derive(Debug, Clone)]
pub struct DirectoryGroup {
    pub group: Group,
    pub members: Vec<Membership>,
    pub external_id: Option<String>,
}

impl Store {
    /// The groups the provider's directory synced, optionally only the one with this name; a
    /// page of them and how many there are.
    pub async fn directory_groups(
        &self,
        provider: &IdentityProvider,
        name: Option<&str>,
        offset: i64,
        limit: i64,
    ) -> Result<(i64, Vec<DirectoryGroup>)> {
        let filter = if name.is_some() {
            " AND g.name = $3"
        } else {
            ""
        };
        let count_sql = format!(
            "SELECT COUNT(*) FROM actor_groups g WHERE g.account_id = $1 \
             AND g.identity_provider_id = $2{filter}"
        );
        let mut count = sqlx::query_scalar::<_, i64>(&count_sql)
            .bind(provider.account_id.to_string())
            .bind(provider.id.to_string());
        if let Some(name) = name {
            count = count.bind(name.to_string());
        }
        let total = count.fetch_one(self.pool()).await?;
        let page_sql = format!(
            "SELECT g.*, (SELECT COUNT(*) FROM memberships m WHERE m.group_id = g.id) \
             AS member_count FROM actor_groups g WHERE g.account_id = $1 \
             AND g.identity_provider_id = $2{filter} ORDER BY g.id LIMIT {} OFFSET {}",
            limit.clamp(0, 1000),
            offset.max(0)
        );
        let mut page = sqlx::query(&page_sql)
            .bind(provider.account_id.to_string())
            .bind(provider.id.to_string());
        if let Some(name) = name {
            page = page.bind(name.to_string());
        }
        let rows = page.fetch_all(self.pool()).await?;
        let groups = rows
            .iter()
            .map(|row| {
                Ok(DirectoryGroup {
                    group: crate::groups::group_from_row(row)?,
                    members: Vec::new(),
                    external_id: opt_text(row, "scim_external_id")?,
                })
            })
            .collect::<Result<_>>()?;
        Ok((total, groups))
    }

    /// One group the provider's directory synced, with its members.
    pub async fn directory_group(
        &self,
        provider: &IdentityProvider,
        id: Uuid,
    ) -> Result<DirectoryGroup> {
        let row = sqlx::query(
            "SELECT identity_provider_id, scim_external_id FROM actor_groups \
             WHERE account_id = $1 AND id = $2",
        )
        .bind(provider.account_id.to_string())
        .bind(id.to_string())
        .fetch_optional(self.pool())
        .await?
        .ok_or(StoreError::NotFound("group"))?;
        if opt_text(&row, "identity_provider_id")?.as_deref()
            != Some(provider.id.to_string().as_str())
        {
            return Err(StoreError::NotFound("group"));
        }
        let synced = DirectoryGroup {
            group: self.get_group(provider.account_id, id).await?,
            members: Vec::new(),
            external_id: opt_text(&row, "scim_external_id")?,
        };
        self.with_directory_members(synced).await
    }

    /// A synced group (as `directory_groups` lists it) with its members read.
    pub async fn with_directory_members(
        &self,
        mut synced: DirectoryGroup,
    ) -> Result<DirectoryGroup> {
        synced.members = self
            .list_memberships(
                synced.group.account_id,
                synced.group.id,
                Page {
                    limit: 10_000,
                    cursor: None,
                },
            )
            .await?
            .items;
        Ok(synced)
    }

    /// Every member must be a person of this directory.
    async fn check_directory_members(
        &self,
        provider: &IdentityProvider,
        ids: &[Uuid],
    ) -> Result<()> {
        for id in ids {
            if self.directory_person(provider, *id).await.is_err() {
                return Err(StoreError::Validation(ValidationError::new(
                    "members",
                    format!("{id} is not a person of this directory"),
                )));
            }
        }
        Ok(())
    }

    /// A directory syncs a group: kind `directory`, its members people of that directory.
    pub async fn provision_group(
        &self,
        provider: &IdentityProvider,
        name: &str,
        external_id: Option<&str>,
        members: Vec<Uuid>,
        acting: &Acting,
    ) -> Result<DirectoryGroup> {
        self.check_directory_members(provider, &members).await?;
        let external_id = external_id.map(self::external_id).transpose()?;
        let synced = SyncedFrom {
            provider_id: provider.id,
            external_id: external_id.as_deref(),
        };
        let group = self
            .insert_group(provider.account_id, name, Some(synced), acting)
            .await?;
        if !members.is_empty() {
            self.write_memberships(
                provider.account_id,
                group.id,
                MembershipChange {
                    add: members,
                    remove: Vec::new(),
                },
                acting,
            )
            .await?;
        }
        self.directory_group(provider, group.id).await
    }

    /// A directory renames a group or changes its members.
    pub async fn change_directory_group(
        &self,
        provider: &IdentityProvider,
        id: Uuid,
        change: DirectoryGroupChange,
        acting: &Acting,
    ) -> Result<DirectoryGroup> {
        let DirectoryGroup {
            group,
            members: current,
            external_id: current_external_id,
        } = self.directory_group(provider, id).await?;
        let new_external_id = change
            .external_id
            .as_deref()
            .map(external_id)
            .transpose()?
            .filter(|new| current_external_id.as_ref() != Some(new));
        let mut add = change.add;
        let mut remove = change.remove;
        if let Some(members) = change.members {
            remove.extend(
                current
                    .iter()
                    .map(|membership| membership.actor_id)
                    .filter(|actor| !members.contains(actor)),
            );
            add.extend(members);
        }
        self.check_directory_members(provider, &add).await?;
        if let Some(name) = change.name.filter(|name| *name != group.name) {
            self.write_group_name(group, &name, acting).await?;
        }
        if !add.is_empty() || !remove.is_empty() {
            self.write_memberships(
                provider.account_id,
                id,
                MembershipChange { add, remove },
                acting,
            )
            .await?;
        }
        if let Some(external_id) = new_external_id {
            // The directory's own bookkeeping, as for people: kept, not audited.
            sqlx::query(
                "UPDATE actor_groups SET scim_external_id = $1 WHERE account_id = $2 AND id = $3",
            )
            .bind(external_id)
            .bind(provider.account_id.to_string())
            .bind(id.to_string())
            .execute(self.pool())
            .await?;
        }
        self.directory_group(provider, id).await
    }

    /// A directory deletes a group (with the policies that grant it access).
    pub async fn delete_directory_group(
        &self,
        provider: &IdentityProvider,
        id: Uuid,
        acting: &Acting,
    ) -> Result<()> {
        let synced = self.directory_group(provider, id).await?;
        self.remove_group(synced.group, acting).await
    }
}
