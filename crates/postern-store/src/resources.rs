//! Resources: the CIDR ranges, IP addresses and DNS names that policies grant access to.

use chrono::Utc;
use postern_domain::{
    new_id, validate, Acting, ChangeEvent, Resource, ResourceType, ValidationError,
};
use postern_policy::Filter;
use sqlx::any::AnyRow;
use uuid::Uuid;

use crate::audit::{self, snapshot, Entry};
use crate::db::{self, opt_text, text, time, ts};
use crate::{Page, Paged, Result, Store, StoreError};

#[derive(Debug, Clone)]
pub struct NewResource {
    pub resource_type: ResourceType,
    pub name: String,
    pub address: String,
    pub description: Option<String>,
    pub site_id: Uuid,
    pub filters: Vec<Filter>,
}

/// Fields to change; `description: Some(None)` clears it.
#[derive(Debug, Clone, Default)]
pub struct ResourcePatch {
    pub resource_type: Option<ResourceType>,
    pub name: Option<String>,
    pub address: Option<String>,
    pub description: Option<Option<String>>,
    pub site_id: Option<Uuid>,
    pub filters: Option<Vec<Filter>>,
}

impl Store {
    pub async fn create_resource(
        &self,
        account_id: Uuid,
        new: NewResource,
        acting: &Acting,
    ) -> Result<Resource> {
        let now = Utc::now();
        let resource = Resource {
            id: new_id(),
            account_id,
            site_id: new.site_id,
            resource_type: new.resource_type,
            name: validate::name("name", &new.name)?,
            address: validate::resource_address("address", new.resource_type, &new.address)?,
            description: validate::description("description", new.description.as_deref())?,
            filters: validate_filters(new.filters)?,
            created_at: now,
            updated_at: now,
        };
        self.check_site(account_id, resource.site_id).await?;
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO resources (id, account_id, site_id, type, name, address, description, \
             filters, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(resource.id.to_string())
        .bind(account_id.to_string())
        .bind(resource.site_id.to_string())
        .bind(resource.resource_type.as_str())
        .bind(resource.name.clone())
        .bind(resource.address.clone())
        .bind(resource.description.clone())
        .bind(db::to_json(&resource.filters)?)
        .bind(ts(now))
        .bind(ts(now))
        .execute(&mut *tx.tx)
        .await
        .map_err(one_internet_resource)?;
        audit::record(
            &mut tx.tx,
            Entry {
                account_id: Some(account_id),
                acting,
                action: "resource.create",
                object_type: "resource",
                object_id: Some(resource.id),
                before: None,
                after: snapshot(&resource),
                now,
            },
        )
        .await?;
        self.commit_publishing(
            tx,
            vec![ChangeEvent::ResourceCreated {
                account_id,
                resource_id: resource.id,
            }],
        )
        .await?;
        Ok(resource)
    }

    pub async fn list_resources(&self, account_id: Uuid, page: Page) -> Result<Paged<Resource>> {
        db::list_in_account(
            self,
            "resources",
            account_id,
            page,
            resource_from_row,
            |r| r.id,
        )
        .await
    }

    pub async fn get_resource(&self, account_id: Uuid, resource_id: Uuid) -> Result<Resource> {
        db::get_in_account(
            self,
            "resources",
            account_id,
            resource_id,
            "resource",
            resource_from_row,
        )
        .await
    }

    pub async fn update_resource(
        &self,
        account_id: Uuid,
        resource_id: Uuid,
        patch: ResourcePatch,
        acting: &Acting,
    ) -> Result<Resource> {
        let before = self.get_resource(account_id, resource_id).await?;
        let mut after = before.clone();
        if let Some(resource_type) = patch.resource_type {
            after.resource_type = resource_type;
        }
        if let Some(name) = &patch.name {
            after.name = validate::name("name", name)?;
        }
        // Turned into the Internet resource, it takes that resource's one address.
        let becomes_internet = patch.resource_type == Some(ResourceType::Internet)
            && before.resource_type != ResourceType::Internet;
        let address = match &patch.address {
            Some(address) => address.clone(),
            None if becomes_internet => String::new(),
            None => before.address.clone(),
        };
        after.address = validate::resource_address("address", after.resource_type, &address)?;
        if let Some(description) = &patch.description {
            after.description = validate::description("description", description.as_deref())?;
        }
        if let Some(site_id) = patch.site_id {
            self.check_site(account_id, site_id).await?;
            after.site_id = site_id;
        }
        if let Some(filters) = patch.filters {
            after.filters = validate_filters(filters)?;
        }
        let now = Utc::now();
        after.updated_at = now;
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "UPDATE resources SET site_id = $1, type = $2, name = $3, address = $4, \
             description = $5, filters = $6, updated_at = $7 WHERE account_id = $8 AND id = $9",
        )
        .bind(after.site_id.to_string())
        .bind(after.resource_type.as_str())
        .bind(after.name.clone())
        .bind(after.address.clone())
        .bind(after.description.clone())
        .bind(db::to_json(&after.filters)?)
        .bind(ts(now))
        .bind(account_id.to_string())
        .bind(resource_id.to_string())
        .execute(&mut *tx.tx)
        .await
        .map_err(one_internet_resource)?;
        audit::record(
            &mut tx.tx,
            Entry {
                account_id: Some(account_id),
                acting,
                action: "resource.update",
                object_type: "resource",
                object_id: Some(resource_id),
                before: snapshot(&before),
                after: snapshot(&after),
                now,
            },
        )
        .await?;
        self.commit_publishing(
            tx,
            vec![ChangeEvent::ResourceUpdated {
                account_id,
                resource_id,
                address_or_site_changed: before.address != after.address
                    || before.site_id != after.site_id
                    || before.resource_type != after.resource_type,
            }],
        )
        .await?;
        Ok(after)
    }

    /// Deletes a resource and the policies that grant access to it.
    pub async fn delete_resource(
        &self,
        account_id: Uuid,
        resource_id: Uuid,
        acting: &Acting,
    ) -> Result<()> {
        let before = self.get_resource(account_id, resource_id).await?;
        let now = Utc::now();
        let mut tx = self.begin_write().await?;
        let policy_ids =
            crate::policies::policy_ids_where(&mut tx.tx, account_id, "resource_id", resource_id)
                .await?;
        sqlx::query("DELETE FROM resources WHERE account_id = $1 AND id = $2")
            .bind(account_id.to_string())
            .bind(resource_id.to_string())
            .execute(&mut *tx.tx)
            .await?;
        audit::record(
            &mut tx.tx,
            Entry {
                account_id: Some(account_id),
                acting,
                action: "resource.delete",
                object_type: "resource",
                object_id: Some(resource_id),
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
        events.push(ChangeEvent::ResourceDeleted {
            account_id,
            resource_id,
        });
        self.commit_publishing(tx, events).await?;
        Ok(())
    }

    async fn check_site(&self, account_id: Uuid, site_id: Uuid) -> Result<()> {
        crate::db::referenced(self.get_site(account_id, site_id).await, "site_id", || {
            format!("no site with id {site_id} in this account")
        })
        .map(|_| ())
    }
}

fn validate_filters(filters: Vec<Filter>) -> Result<Vec<Filter>> {
    for (index, filter) in filters.iter().enumerate() {
        filter
            .validate()
            .map_err(|err| ValidationError::new(format!("filters[{index}]"), err.to_string()))?;
    }
    Ok(filters)
}

fn resource_from_row(row: &AnyRow) -> Result<Resource> {
    let type_text = text(row, "type")?;
    Ok(Resource {
        id: db::uuid(row, "id")?,
        account_id: db::uuid(row, "account_id")?,
        site_id: db::uuid(row, "site_id")?,
        resource_type: ResourceType::parse(&type_text)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown resource type '{type_text}'")))?,
        name: text(row, "name")?,
        address: text(row, "address")?,
        description: opt_text(row, "description")?,
        filters: db::json(row, "filters")?,
        created_at: time(row, "created_at")?,
        updated_at: time(row, "updated_at")?,
    })
}

/// The only unique index on resources is the one Internet resource per account.
fn one_internet_resource(err: sqlx::Error) -> StoreError {
    db::unique_violation(err, || {
        "the account has an Internet resource already: a policy grants that one (or delete it first)"
            .to_string()
    })
}
