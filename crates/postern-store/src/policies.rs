//! Policies: a group's access to a resource, under conditions.

use chrono::Utc;
use postern_domain::{new_id, validate, Acting, ChangeEvent, Policy, ValidationError};
use postern_policy::Condition;
use sqlx::any::AnyRow;
use sqlx::AnyConnection;
use uuid::Uuid;

use crate::audit::{self, snapshot, Entry};
use crate::db::{self, opt_text, opt_time, time, ts};
use crate::{Page, Paged, Result, Store};

#[derive(Debug, Clone)]
pub struct NewPolicy {
    pub group_id: Uuid,
    pub resource_id: Uuid,
    pub description: Option<String>,
    pub conditions: Vec<Condition>,
    pub disabled: bool,
}

#[derive(Debug, Clone, Default)]
pub struct PolicyPatch {
    pub group_id: Option<Uuid>,
    pub resource_id: Option<Uuid>,
    pub description: Option<Option<String>>,
    pub conditions: Option<Vec<Condition>>,
    pub disabled: Option<bool>,
}

impl Store {
    pub async fn create_policy(
        &self,
        account_id: Uuid,
        new: NewPolicy,
        acting: &Acting,
    ) -> Result<Policy> {
        self.check_policy_refs(account_id, new.group_id, new.resource_id)
            .await?;
        let now = Utc::now();
        let disabled_at = new.disabled.then_some(now);
        let policy = Policy {
            id: new_id(),
            account_id,
            group_id: new.group_id,
            resource_id: new.resource_id,
            description: validate::description("description", new.description.as_deref())?,
            conditions: validate_conditions(new.conditions)?,
            disabled: disabled_at.is_some(),
            disabled_at,
            created_at: now,
            updated_at: now,
        };
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO policies (id, account_id, group_id, resource_id, description, conditions, \
             disabled_at, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(policy.id.to_string())
        .bind(account_id.to_string())
        .bind(policy.group_id.to_string())
        .bind(policy.resource_id.to_string())
        .bind(policy.description.clone())
        .bind(db::to_json(&policy.conditions)?)
        .bind(db::opt_ts(policy.disabled_at))
        .bind(ts(now))
        .bind(ts(now))
        .execute(&mut *tx.tx)
        .await?;
        audit::record(
            &mut tx.tx,
            Entry {
                account_id: Some(account_id),
                acting,
                action: "policy.create",
                object_type: "policy",
                object_id: Some(policy.id),
                before: None,
                after: snapshot(&policy),
                now,
            },
        )
        .await?;
        self.commit_publishing(
            tx,
            vec![ChangeEvent::PolicyCreated {
                account_id,
                policy_id: policy.id,
            }],
        )
        .await?;
        Ok(policy)
    }

    pub async fn list_policies(&self, account_id: Uuid, page: Page) -> Result<Paged<Policy>> {
        db::list_in_account(self, "policies", account_id, page, policy_from_row, |p| {
            p.id
        })
        .await
    }

    pub async fn get_policy(&self, account_id: Uuid, policy_id: Uuid) -> Result<Policy> {
        db::get_in_account(
            self,
            "policies",
            account_id,
            policy_id,
            "policy",
            policy_from_row,
        )
        .await
    }

    pub async fn update_policy(
        &self,
        account_id: Uuid,
        policy_id: Uuid,
        patch: PolicyPatch,
        acting: &Acting,
    ) -> Result<Policy> {
        let before = self.get_policy(account_id, policy_id).await?;
        let mut after = before.clone();
        after.group_id = patch.group_id.unwrap_or(before.group_id);
        after.resource_id = patch.resource_id.unwrap_or(before.resource_id);
        self.check_policy_refs(account_id, after.group_id, after.resource_id)
            .await?;
        if let Some(description) = &patch.description {
            after.description = validate::description("description", description.as_deref())?;
        }
        if let Some(conditions) = patch.conditions {
            after.conditions = validate_conditions(conditions)?;
        }
        let now = Utc::now();
        match patch.disabled {
            Some(true) if before.disabled_at.is_none() => after.disabled_at = Some(now),
            Some(false) => after.disabled_at = None,
            _ => {}
        }
        after.disabled = after.disabled_at.is_some();
        after.updated_at = now;
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "UPDATE policies SET group_id = $1, resource_id = $2, description = $3, conditions = $4, \
             disabled_at = $5, updated_at = $6 WHERE account_id = $7 AND id = $8",
        )
        .bind(after.group_id.to_string())
        .bind(after.resource_id.to_string())
        .bind(after.description.clone())
        .bind(db::to_json(&after.conditions)?)
        .bind(db::opt_ts(after.disabled_at))
        .bind(ts(now))
        .bind(account_id.to_string())
        .bind(policy_id.to_string())
        .execute(&mut *tx.tx)
        .await?;
        let action = match (before.disabled, after.disabled) {
            (false, true) => "policy.disable",
            (true, false) => "policy.enable",
            _ => "policy.update",
        };
        audit::record(
            &mut tx.tx,
            Entry {
                account_id: Some(account_id),
                acting,
                action,
                object_type: "policy",
                object_id: Some(policy_id),
                before: snapshot(&before),
                after: snapshot(&after),
                now,
            },
        )
        .await?;
        self.commit_publishing(
            tx,
            vec![ChangeEvent::PolicyUpdated {
                account_id,
                policy_id,
            }],
        )
        .await?;
        Ok(after)
    }

    pub async fn delete_policy(
        &self,
        account_id: Uuid,
        policy_id: Uuid,
        acting: &Acting,
    ) -> Result<()> {
        let before = self.get_policy(account_id, policy_id).await?;
        let now = Utc::now();
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM policies WHERE account_id = $1 AND id = $2")
            .bind(account_id.to_string())
            .bind(policy_id.to_string())
            .execute(&mut *tx.tx)
            .await?;
        audit::record(
            &mut tx.tx,
            Entry {
                account_id: Some(account_id),
                acting,
                action: "policy.delete",
                object_type: "policy",
                object_id: Some(policy_id),
                before: snapshot(&before),
                after: None,
                now,
            },
        )
        .await?;
        self.commit_publishing(
            tx,
            vec![ChangeEvent::PolicyDeleted {
                account_id,
                policy_id,
            }],
        )
        .await?;
        Ok(())
    }

    async fn check_policy_refs(
        &self,
        account_id: Uuid,
        group_id: Uuid,
        resource_id: Uuid,
    ) -> Result<()> {
        crate::db::referenced(
            self.get_group(account_id, group_id).await,
            "group_id",
            || format!("no group with id {group_id} in this account"),
        )?;
        crate::db::referenced(
            self.get_resource(account_id, resource_id).await,
            "resource_id",
            || format!("no resource with id {resource_id} in this account"),
        )?;
        Ok(())
    }
}

pub(crate) async fn policy_ids_where(
    conn: &mut AnyConnection,
    account_id: Uuid,
    column: &str,
    value: Uuid,
) -> Result<Vec<Uuid>> {
    let sql = format!("SELECT id FROM policies WHERE account_id = $1 AND {column} = $2");
    let rows = sqlx::query(&sql)
        .bind(account_id.to_string())
        .bind(value.to_string())
        .fetch_all(conn)
        .await?;
    rows.iter().map(|row| db::uuid(row, "id")).collect()
}

fn validate_conditions(conditions: Vec<Condition>) -> Result<Vec<Condition>> {
    for (index, condition) in conditions.iter().enumerate() {
        condition
            .validate()
            .map_err(|err| ValidationError::new(format!("conditions[{index}]"), err.to_string()))?;
    }
    Ok(conditions)
}

fn policy_from_row(row: &AnyRow) -> Result<Policy> {
    let disabled_at = opt_time(row, "disabled_at")?;
    Ok(Policy {
        id: db::uuid(row, "id")?,
        account_id: db::uuid(row, "account_id")?,
        group_id: db::uuid(row, "group_id")?,
        resource_id: db::uuid(row, "resource_id")?,
        description: opt_text(row, "description")?,
        conditions: db::json(row, "conditions")?,
        disabled: disabled_at.is_some(),
        disabled_at,
        created_at: time(row, "created_at")?,
        updated_at: time(row, "updated_at")?,
    })
}
