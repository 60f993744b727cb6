//! Sites: the groups of gateways that serve resources.

use chrono::Utc;
use postern_domain::{new_id, validate, Acting, ChangeEvent, Site};
use sqlx::any::AnyRow;
use sqlx::Row;
use uuid::Uuid;

use crate::audit::{self, snapshot, Entry};
use crate::db::{self, text, time, ts};
use crate::tokens;
use crate::{Page, Paged, Result, Store, StoreError};

impl Store {
    pub async fn create_site(&self, account_id: Uuid, name: &str, acting: &Acting) -> Result<Site> {
        let name = validate::name("name", name)?;
        let now = Utc::now();
        let site = Site {
            id: new_id(),
            account_id,
            name,
            created_at: now,
            updated_at: now,
        };
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO sites (id, account_id, name, created_at, updated_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(site.id.to_string())
        .bind(account_id.to_string())
        .bind(site.name.clone())
        .bind(ts(now))
        .bind(ts(now))
        .execute(&mut *tx.tx)
        .await
        .map_err(|err| name_taken(err, &site.name))?;
        audit::record(
            &mut tx.tx,
            Entry {
                account_id: Some(account_id),
                acting,
                action: "site.create",
                object_type: "site",
                object_id: Some(site.id),
                before: None,
                after: snapshot(&site),
                now,
            },
        )
        .await?;
        self.commit_publishing(
            tx,
            vec![ChangeEvent::SiteCreated {
                account_id,
                site_id: site.id,
            }],
        )
        .await?;
        Ok(site)
    }

    pub async fn list_sites(&self, account_id: Uuid, page: Page) -> Result<Paged<Site>> {
        db::list_in_account(self, "sites", account_id, page, site_from_row, |s| s.id).await
    }

    pub async fn get_site(&self, account_id: Uuid, site_id: Uuid) -> Result<Site> {
        db::get_in_account(self, "sites", account_id, site_id, "site", site_from_row).await
    }

    pub async fn rename_site(
        &self,
        account_id: Uuid,
        site_id: Uuid,
        name: &str,
        acting: &Acting,
    ) -> Result<Site> {
        let before = self.get_site(account_id, site_id).await?;
        let mut after = before.clone();
        after.name = validate::name("name", name)?;
        let now = Utc::now();
        after.updated_at = now;
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "UPDATE sites SET name = $1, updated_at = $2 WHERE account_id = $3 AND id = $4",
        )
        .bind(after.name.clone())
        .bind(ts(now))
        .bind(account_id.to_string())
        .bind(site_id.to_string())
        .execute(&mut *tx.tx)
        .await
        .map_err(|err| name_taken(err, &after.name))?;
        audit::record(
            &mut tx.tx,
            Entry {
                account_id: Some(account_id),
                acting,
                action: "site.update",
                object_type: "site",
                object_id: Some(site_id),
                before: snapshot(&before),
                after: snapshot(&after),
                now,
            },
        )
        .await?;
        self.commit_publishing(
            tx,
            vec![ChangeEvent::SiteUpdated {
                account_id,
                site_id,
            }],
        )
        .await?;
        Ok(after)
    }

    /// Deletes a site and its gateway tokens. A site that still serves resources is kept: move or
    /// delete its resources first.
    pub async fn delete_site(
        &self,
        account_id: Uuid,
        site_id: Uuid,
        acting: &Acting,
    ) -> Result<()> {
        let before = self.get_site(account_id, site_id).await?;
        let now = Utc::now();
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM resources WHERE account_id = $1 AND site_id = $2",
        )
        .bind(account_id.to_string())
        .bind(site_id.to_string())
        .fetch_one(&mut *tx.tx)
        .await?;
        let resources: i64 = row.try_get("n")?;
        if resources > 0 {
            return Err(StoreError::Conflict(format!(
                "site '{}' still serves {resources} resource(s): move them to another site or delete them first",
                before.name
            )));
        }
        let token_ids =
            tokens::active_token_ids(&mut tx.tx, account_id, "site_id", site_id).await?;
        sqlx::query("DELETE FROM sites WHERE account_id = $1 AND id = $2")
            .bind(account_id.to_string())
            .bind(site_id.to_string())
            .execute(&mut *tx.tx)
            .await?;
        audit::record(
            &mut tx.tx,
            Entry {
                account_id: Some(account_id),
                acting,
                action: "site.delete",
                object_type: "site",
                object_id: Some(site_id),
                before: snapshot(&before),
                after: None,
                now,
            },
        )
        .await?;
        let mut events = vec![ChangeEvent::SiteDeleted {
            account_id,
            site_id,
        }];
        if !token_ids.is_empty() {
            events.push(ChangeEvent::TokensRevoked {
                account_id,
                token_ids,
            });
        }
        self.commit_publishing(tx, events).await?;
        Ok(())
    }
}

fn name_taken(err: sqlx::Error, name: &str) -> StoreError {
    db::unique_violation(err, || format!("a site named '{name}' exists already"))
}

fn site_from_row(row: &AnyRow) -> Result<Site> {
    Ok(Site {
        id: db::uuid(row, "id")?,
        account_id: db::uuid(row, "account_id")?,
        name: text(row, "name")?,
        created_at: time(row, "created_at")?,
        updated_at: time(row, "updated_at")?,
    })
}
