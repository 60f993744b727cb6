//! Groups and memberships. The `Everyone` group is managed here, never by hand.

use chrono::{DateTime, Utc};
use postern_domain::{
    new_id, rules, validate, Acting, ActorType, ChangeEvent, Group, GroupKind, Membership,
    ValidationError,
};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use crate::audit::{self, snapshot, Entry};
use crate::db::{self, text, time, ts};
use crate::{Page, Paged, Result, Store, StoreError};

#[derive(Debug, Clone, Default)]
pub struct MembershipChange {
    pub add: Vec<Uuid>,
    pub remove: Vec<Uuid>,
}

/// The directory a synced group comes from, and its id for the group (SCIM `externalId`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SyncedFrom<'a> {
    pub provider_id: Uuid,
    pub external_id: Option<&'a str>,
}

const GROUP_COLUMNS: &str =
    "g.*, (SELECT COUNT(*) FROM memberships m WHERE m.group_id = g.id) AS member_count";

impl Store {
    pub async fn create_group(
        &self,
        account_id: Uuid,
        name: &str,
        acting: &Acting,
    ) -> Result<Group> {
        self.insert_group(account_id, name, None, acting).await
    }

    /// A group made here, or (`directory`: an identity provider's id) synced from a directory.
    pub(crate) async fn insert_group(
        &self,
        account_id: Uuid,
        name: &str,
        directory: Option<SyncedFrom<'_>>,
        acting: &Acting,
    ) -> Result<Group> {
        let name = validate::name("name", name)?;
        let now = Utc::now();
        let group = Group {
            id: new_id(),
            account_id,
            name,
            kind: if directory.is_some() {
                GroupKind::Directory
            } else {
                GroupKind::Static
            },
            member_count: 0,
            created_at: now,
            updated_at: now,
        };
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO actor_groups (id, account_id, name, kind, identity_provider_id, \
             scim_external_id, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(group.id.to_string())
        .bind(account_id.to_string())
        .bind(group.name.clone())
        .bind(group.kind.as_str())
        .bind(directory.map(|synced| synced.provider_id.to_string()))
        .bind(directory.and_then(|synced| synced.external_id.map(str::to_string)))
        .bind(ts(now))
        .bind(ts(now))
        .execute(&mut *tx.tx)
        .await
        .map_err(|err| name_taken(err, &group.name))?;
        audit::record(
            &mut tx.tx,
            Entry {
                account_id: Some(account_id),
                acting,
                action: "group.create",
                object_type: "group",
                object_id: Some(group.id),
                before: None,
                after: snapshot(&group),
                now,
            },
        )
        .await?;
        self.commit_publishing(
            tx,
            vec![ChangeEvent::GroupCreated {
                account_id,
                group_id: group.id,
            }],
        )
        .await?;
        Ok(group)
    }

    pub async fn list_groups(&self, account_id: Uuid, page: Page) -> Result<Paged<Group>> {
        let sql = format!(
            "SELECT {GROUP_COLUMNS} FROM actor_groups g WHERE g.account_id = $1 AND g.id > $2 \
             ORDER BY g.id LIMIT {}",
            page.limit + 1
        );
        let rows = sqlx::query(&sql)
            .bind(account_id.to_string())
            .bind(page.cursor.map(|c| c.to_string()).unwrap_or_default())
            .fetch_all(self.pool())
            .await?;
        let items = rows
            .iter()
            .map(group_from_row)
            .collect::<Result<Vec<_>>>()?;
        Ok(db::paginate(items, page.limit, |g| g.id))
    }

    pub async fn get_group(&self, account_id: Uuid, group_id: Uuid) -> Result<Group> {
        let sql = format!(
            "SELECT {GROUP_COLUMNS} FROM actor_groups g WHERE g.account_id = $1 AND g.id = $2"
        );
        let row = sqlx::query(&sql)
            .bind(account_id.to_string())
            .bind(group_id.to_string())
            .fetch_optional(self.pool())
            .await?;
        row.as_ref()
            .map(group_from_row)
            .transpose()?
            .ok_or(StoreError::NotFound("group"))
    }

    pub async fn rename_group(
        &self,
        account_id: Uuid,
        group_id: Uuid,
        name: &str,
        acting: &Acting,
    ) -> Result<Group> {
        let before = self.get_group(account_id, group_id).await?;
        match before.kind {
            GroupKind::Everyone => {
                Err(ValidationError::new("name", "the Everyone group cannot be renamed").into())
            }
            GroupKind::Directory => Err(StoreError::Conflict(
                "the group is synced from a directory: rename it there".into(),
            )),
            GroupKind::Static => self.write_group_name(before, name, acting).await,
        }
    }

    pub(crate) async fn write_group_name(
        &self,
        before: Group,
        name: &str,
        acting: &Acting,
    ) -> Result<Group> {
        let (account_id, group_id) = (before.account_id, before.id);
        let mut after = before.clone();
        after.name = validate::name("name", name)?;
        let now = Utc::now();
        after.updated_at = now;
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "UPDATE actor_groups SET name = $1, updated_at = $2 WHERE account_id = $3 AND id = $4",
        )
        .bind(after.name.clone())
        .bind(ts(now))
        .bind(account_id.to_string())
        .bind(group_id.to_string())
        .execute(&mut *tx.tx)
        .await
        .map_err(|err| name_taken(err, &after.name))?;
        audit::record(
            &mut tx.tx,
            Entry {
                account_id: Some(account_id),
                acting,
                action: "group.update",
                object_type: "group",
                object_id: Some(group_id),
                before: snapshot(&before),
                after: snapshot(&after),
                now,
            },
        )
        .await?;
        self.commit_publishing(
            tx,
            vec![ChangeEvent::GroupUpdated {
                account_id,
                group_id,
            }],
        )
        .await?;
        Ok(after)
    }

    /// Deletes a group with its memberships and the policies that grant it access.
    pub async fn delete_group(
        &self,
        account_id: Uuid,
        group_id: Uuid,
        acting: &Acting,
    ) -> Result<()> {
        let before = self.get_group(account_id, group_id).await?;
        match before.kind {
            GroupKind::Everyone => Err(StoreError::Conflict(
                "the Everyone group is managed by the portal and cannot be deleted".to_string(),
            )),
            GroupKind::Directory => Err(StoreError::Conflict(
                "the group is synced from a directory: delete it there".into(),
            )),
            GroupKind::Static => self.remove_group(before, acting).await,
        }
    }

    /// Deletes a group with its memberships and the policies that grant it access.
    pub(crate) async fn remove_group(&self, before: Group, acting: &Acting) -> Result<()> {
        let (account_id, group_id) = (before.account_id, before.id);
        let now = Utc::now();
        let mut tx = self.begin_write().await?;
        let policy_ids =
            crate::policies::policy_ids_where(&mut tx.tx, account_id, "group_id", group_id).await?;
        sqlx::query("DELETE FROM actor_groups WHERE account_id = $1 AND id = $2")
            .bind(account_id.to_string())
            .bind(group_id.to_string())
            .execute(&mut *tx.tx)
            .await?;
        audit::record(
            &mut tx.tx,
            Entry {
                account_id: Some(account_id),
                acting,
                action: "group.delete",
                object_type: "group",
                object_id: Some(group_id),
                before: snapshot(&before),
                after: None,
                now,
            },
        )
        .await?;
        let mut events: Vec<ChangeEvent> = policy_ids
            .into_iter()
            .map(|policy_id| ChangeEvent::PolicyDeleted {
                account_id,
                policy_id,
            })
            .collect();
        events.push(ChangeEvent::GroupDeleted {
            account_id,
            group_id,
        });
        self.commit_publishing(tx, events).await?;
        Ok(())
    }

    pub async fn list_memberships(
        &self,
        account_id: Uuid,
        group_id: Uuid,
        page: Page,
    ) -> Result<Paged<Membership>> {
        self.get_group(account_id, group_id).await?;
        let sql = format!(
            "SELECT m.group_id, m.actor_id, m.created_at, a.name AS actor_name, a.type AS actor_type \
             FROM memberships m JOIN actors a ON a.id = m.actor_id \
             WHERE m.account_id = $1 AND m.group_id = $2 AND m.actor_id > $3 \
             ORDER BY m.actor_id LIMIT {}",
            page.limit + 1
        );
        let rows = sqlx::query(&sql)
            .bind(account_id.to_string())
            .bind(group_id.to_string())
            .bind(page.cursor.map(|c| c.to_string()).unwrap_or_default())
            .fetch_all(self.pool())
            .await?;
        let items = rows
            .iter()
            .map(membership_from_row)
            .collect::<Result<Vec<_>>>()?;
        Ok(db::paginate(items, page.limit, |m| m.actor_id))
    }

    /// Ids of the groups the actor belongs to.
    pub async fn actor_group_ids(&self, account_id: Uuid, actor_id: Uuid) -> Result<Vec<Uuid>> {
        let mut conn = self.pool().acquire().await?;
        groups_of_actor(&mut conn, account_id, actor_id).await
    }

    /// Adds and removes members; adding a member twice or removing a non-member changes nothing.
    pub async fn change_memberships(
        &self,
        account_id: Uuid,
        group_id: Uuid,
        change: MembershipChange,
        acting: &Acting,
    ) -> Result<Vec<Membership>> {
        let group = self.get_group(account_id, group_id).await?;
        rules::check_membership_change(group.kind)?;
        self.write_memberships(account_id, group_id, change, acting)
            .await
    }

    /// Adds and removes members (the caller checked who may).
    pub(crate) async fn write_memberships(
        &self,
        account_id: Uuid,
        group_id: Uuid,
        change: MembershipChange,
        acting: &Acting,
    ) -> Result<Vec<Membership>> {
        for (field, ids) in [("add", &change.add), ("remove", &change.remove)] {
            for actor_id in ids {
                crate::db::referenced(self.get_actor(account_id, *actor_id).await, field, || {
                    format!("no actor with id {actor_id} in this account")
                })?;
            }
        }
        let now = Utc::now();
        let mut tx = self.begin_write().await?;
        let current = members_of(&mut tx.tx, group_id).await?;
        let added: Vec<Uuid> = dedup(change.add.iter().filter(|id| !current.contains(id)));
        let removed: Vec<Uuid> = dedup(
            change
                .remove
                .iter()
                .filter(|id| current.contains(id) && !change.add.contains(id)),
        );
        for actor_id in &added {
            insert_membership(&mut tx.tx, account_id, group_id, *actor_id, now).await?;
        }
        for actor_id in &removed {
            sqlx::query("DELETE FROM memberships WHERE group_id = $1 AND actor_id = $2")
                .bind(group_id.to_string())
                .bind(actor_id.to_string())
                .execute(&mut *tx.tx)
                .await?;
        }
        if !added.is_empty() || !removed.is_empty() {
            audit::record(
                &mut tx.tx,
                Entry {
                    account_id: Some(account_id),
                    acting,
                    action: "group.memberships",
                    object_type: "group",
                    object_id: Some(group_id),
                    before: Some(serde_json::json!({ "members": current })),
                    after: Some(serde_json::json!({ "added": added, "removed": removed })),
                    now,
                },
            )
            .await?;
        }
        let mut events = Vec::new();
        if !added.is_empty() || !removed.is_empty() {
            events.push(ChangeEvent::MembershipChanged {
                account_id,
                group_id,
                added,
                removed,
            });
        }
        self.commit_publishing(tx, events).await?;
        Ok(self
            .list_memberships(
                account_id,
                group_id,
                Page {
                    limit: 500,
                    cursor: None,
                },
            )
            .await?
            .items)
    }
}

pub(crate) async fn everyone_group_id(store: &Store, account_id: Uuid) -> Result<Uuid> {
    let row = sqlx::query("SELECT id FROM actor_groups WHERE account_id = $1 AND kind = $2")
        .bind(account_id.to_string())
        .bind(GroupKind::Everyone.as_str())
        .fetch_optional(store.pool())
        .await?;
    let row = row.ok_or(StoreError::NotFound("account"))?;
    db::uuid(&row, "id")
}

pub(crate) async fn insert_membership(
    conn: &mut AnyConnection,
    account_id: Uuid,
    group_id: Uuid,
    actor_id: Uuid,
    now: DateTime<Utc>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO memberships (account_id, group_id, actor_id, created_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (group_id, actor_id) DO NOTHING",
    )
    .bind(account_id.to_string())
    .bind(group_id.to_string())
    .bind(actor_id.to_string())
    .bind(ts(now))
    .execute(conn)
    .await?;
    Ok(())
}

pub(crate) async fn groups_of_actor(
    conn: &mut AnyConnection,
    account_id: Uuid,
    actor_id: Uuid,
) -> Result<Vec<Uuid>> {
    let rows =
        sqlx::query("SELECT group_id FROM memberships WHERE account_id = $1 AND actor_id = $2")
            .bind(account_id.to_string())
            .bind(actor_id.to_string())
            .fetch_all(conn)
            .await?;
    rows.iter().map(|row| db::uuid(row, "group_id")).collect()
}

async fn members_of(conn: &mut AnyConnection, group_id: Uuid) -> Result<Vec<Uuid>> {
    let rows = sqlx::query("SELECT actor_id FROM memberships WHERE group_id = $1")
        .bind(group_id.to_string())
        .fetch_all(conn)
        .await?;
    rows.iter().map(|row| db::uuid(row, "actor_id")).collect()
}

fn dedup<'a>(ids: impl Iterator<Item = &'a Uuid>) -> Vec<Uuid> {
    let mut out: Vec<Uuid> = Vec::new();
    for id in ids {
        if !out.contains(id) {
            out.push(*id);
        }
    }
    out
}

fn name_taken(err: sqlx::Error, name: &str) -> StoreError {
    db::unique_violation(err, || format!("a group named '{name}' exists already"))
}

pub(crate) fn group_from_row(row: &AnyRow) -> Result<Group> {
    let kind_text = text(row, "kind")?;
    Ok(Group {
        id: db::uuid(row, "id")?,
        account_id: db::uuid(row, "account_id")?,
        name: text(row, "name")?,
        kind: GroupKind::parse(&kind_text)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown group kind '{kind_text}'")))?,
        member_count: row.try_get("member_count")?,
        created_at: time(row, "created_at")?,
        updated_at: time(row, "updated_at")?,
    })
}

fn membership_from_row(row: &AnyRow) -> Result<Membership> {
    let type_text = text(row, "actor_type")?;
    Ok(Membership {
        group_id: db::uuid(row, "group_id")?,
        actor_id: db::uuid(row, "actor_id")?,
        actor_name: text(row, "actor_name")?,
        actor_type: ActorType::parse(&type_text)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown actor type '{type_text}'")))?,
        created_at: time(row, "created_at")?,
    })
}
