//! Accounts (tenants) and their settings.

use chrono::Utc;
use postern_domain::{
    new_id, rules, validate, Account, AccountSettings, Acting, ChangeEvent, GroupKind,
    EVERYONE_GROUP_NAME,
};
use sqlx::any::AnyRow;
use sqlx::AnyConnection;
use uuid::Uuid;

use crate::audit::{self, snapshot, Entry};
use crate::db::{self, text, time, ts};
use crate::{Result, Store, StoreError};

pub const DEFAULT_ACCOUNT_SLUG: &str = "default";

impl Store {
    /// The default account, created (with its `Everyone` group) on first start. The flag tells
    /// whether it was created just now.
    pub async fn ensure_default_account(&self) -> Result<(Account, bool)> {
        if let Some(account) = self.find_account_by_slug(DEFAULT_ACCOUNT_SLUG).await? {
            return Ok((account, false));
        }
        match self
            .create_account(DEFAULT_ACCOUNT_SLUG, "Default", &Acting::local_cli())
            .await
        {
            Ok(account) => Ok((account, true)),
            // Another portal node created it first.
            Err(StoreError::Conflict(_)) => {
                Ok((self.account_by_slug(DEFAULT_ACCOUNT_SLUG).await?, false))
            }
            Err(err) => Err(err),
        }
    }

    pub async fn create_account(&self, slug: &str, name: &str, acting: &Acting) -> Result<Account> {
        let slug = validate::slug("slug", slug)?;
        let name = validate::name("name", name)?;
        let now = Utc::now();
        let account = Account {
            id: new_id(),
            slug,
            name,
            settings: AccountSettings::default(),
            created_at: now,
            updated_at: now,
        };
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO accounts (id, slug, name, settings, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(account.id.to_string())
        .bind(account.slug.clone())
        .bind(account.name.clone())
        .bind(db::to_json(&account.settings)?)
        .bind(ts(now))
        .bind(ts(now))
        .execute(&mut *tx.tx)
        .await
        .map_err(|err| {
            db::unique_violation(err, || {
                format!("an account with slug '{}' exists already", account.slug)
            })
        })?;
        insert_everyone_group(&mut tx.tx, account.id).await?;
        audit::record(
            &mut tx.tx,
            Entry {
                account_id: Some(account.id),
                acting,
                action: "account.create",
                object_type: "account",
                object_id: Some(account.id),
                before: None,
                after: snapshot(&account),
                now,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(account)
    }

    pub async fn account_by_slug(&self, slug: &str) -> Result<Account> {
        self.find_account_by_slug(slug)
            .await?
            .ok_or(StoreError::NotFound("account"))
    }

    pub async fn get_account(&self, account_id: Uuid) -> Result<Account> {
        let row = sqlx::query("SELECT * FROM accounts WHERE id = $1")
            .bind(account_id.to_string())
            .fetch_optional(self.pool())
            .await?;
        row.as_ref()
            .map(account_from_row)
            .transpose()?
            .ok_or(StoreError::NotFound("account"))
    }

    pub async fn list_accounts(&self) -> Result<Vec<Account>> {
        let rows = sqlx::query("SELECT * FROM accounts ORDER BY id")
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(account_from_row).collect()
    }

    pub async fn update_account(
        &self,
        account_id: Uuid,
        name: Option<&str>,
        settings: Option<AccountSettings>,
        acting: &Acting,
    ) -> Result<Account> {
        let before = self.get_account(account_id).await?;
        let mut after = before.clone();
        if let Some(name) = name {
            after.name = validate::name("name", name)?;
        }
        if let Some(settings) = settings {
            rules::validate_settings(&settings)?;
            after.settings = settings;
        }
        let now = Utc::now();
        after.updated_at = now;
        let mut tx = self.begin_write().await?;
        sqlx::query("UPDATE accounts SET name = $1, settings = $2, updated_at = $3 WHERE id = $4")
            .bind(after.name.clone())
            .bind(db::to_json(&after.settings)?)
            .bind(ts(now))
            .bind(account_id.to_string())
            .execute(&mut *tx.tx)
            .await?;
        audit::record(
            &mut tx.tx,
            Entry {
                account_id: Some(account_id),
                acting,
                action: "account.update",
                object_type: "account",
                object_id: Some(account_id),
                before: snapshot(&before),
                after: snapshot(&after),
                now,
            },
        )
        .await?;
        self.commit_publishing(tx, vec![ChangeEvent::AccountUpdated { account_id }])
            .await?;
        Ok(after)
    }

    async fn find_account_by_slug(&self, slug: &str) -> Result<Option<Account>> {
        let row = sqlx::query("SELECT * FROM accounts WHERE slug = $1")
            .bind(slug.to_string())
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(account_from_row).transpose()
    }
}

async fn insert_everyone_group(conn: &mut AnyConnection, account_id: Uuid) -> Result<()> {
    let now = ts(Utc::now());
    sqlx::query(
        "INSERT INTO actor_groups (id, account_id, name, kind, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(new_id().to_string())
    .bind(account_id.to_string())
    .bind(EVERYONE_GROUP_NAME)
    .bind(GroupKind::Everyone.as_str())
    .bind(now)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

fn account_from_row(row: &AnyRow) -> Result<Account> {
    Ok(Account {
        id: db::uuid(row, "id")?,
        slug: text(row, "slug")?,
        name: text(row, "name")?,
        settings: db::json(row, "settings")?,
        created_at: time(row, "created_at")?,
        updated_at: time(row, "updated_at")?,
    })
}
