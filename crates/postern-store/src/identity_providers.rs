//! Identity providers and the people who sign in through them. A person is recognized by the
//! provider's subject; the first sign-in creates them (a user, or an admin by group), a later
//! one keeps their type in line with their groups. Service accounts and API clients are never
//! touched: a provider cannot sign in as one, and nothing here changes one.

use chrono::{DateTime, Utc};
use postern_domain::identity::{person_type, IdentityProvider, Person, ValidIdentityProvider};
use postern_domain::{new_id, Acting, Actor, ActorType, ChangeEvent, ValidationError};
use postern_token::SecretString;
use sqlx::any::AnyRow;
use uuid::Uuid;

use crate::actors::{actor_from_row, NewActor, ProviderLink};
use crate::audit::{self, snapshot, Entry};
use crate::db::{self, opt_text, text, time, ts};
use crate::{Result, Store, StoreError};

/// A sign-in waiting for the browser to come back from the provider.
#[derive(Debug)]
pub struct PendingSignIn {
    pub account_id: Uuid,
    pub provider_id: Uuid,
    pub nonce: String,
    pub pkce_verifier: SecretString,
    pub created_at: DateTime<Utc>,
}

fn secret_aad(provider_id: Uuid) -> Vec<u8> {
    let mut aad = b"identity provider secret:".to_vec();
    aad.extend_from_slice(provider_id.as_bytes());
    aad
}

fn verifier_aad(state_hash: &str) -> Vec<u8> {
    let mut aad = b"oidc pkce verifier:".to_vec();
    aad.extend_from_slice(state_hash.as_bytes());
    aad
}

impl Store {
    /// Adds an identity provider. Audited as `identity_provider.create` (without the secret).
    pub async fn create_identity_provider(
        &self,
        account_id: Uuid,
        valid: ValidIdentityProvider,
        acting: &Acting,
    ) -> Result<IdentityProvider> {
        self.get_account(account_id).await?;
        let now = chrono::SubsecRound::trunc_subsecs(Utc::now(), 6);
        let provider = IdentityProvider {
            id: new_id(),
            account_id,
            name: valid.name,
            issuer: valid.issuer,
            client_id: valid.client_id,
            has_client_secret: valid.client_secret.is_some(),
            scopes: valid.scopes,
            email_claim: valid.email_claim,
            groups_claim: valid.groups_claim,
            admin_groups: valid.admin_groups,
            session_lifetime_seconds: u32::try_from(valid.session_lifetime.num_seconds())
                .unwrap_or(u32::MAX),
            sign_out_at_provider: valid.sign_out_at_provider,
            created_at: now,
            updated_at: now,
        };
        let sealed = valid
            .client_secret
            .as_deref()
            .map(|secret| {
                self.inner
                    .sealer
                    .seal_text(&secret_aad(provider.id), secret)
            })
            .transpose()?;
        let mut tx = self.begin_write().await?;
        let count: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM identity_providers WHERE account_id = $1")
                .bind(account_id.to_string())
                .fetch_one(&mut *tx.tx)
                .await?;
        if count as usize >= postern_domain::identity::MAX_PROVIDERS_PER_ACCOUNT {
            return Err(StoreError::Validation(ValidationError::new(
                "issuer",
                format!(
                    "an account has at most {} identity providers",
                    postern_domain::identity::MAX_PROVIDERS_PER_ACCOUNT
                ),
            )));
        }
        sqlx::query(
            "INSERT INTO identity_providers (id, account_id, name, issuer, client_id, \
             client_secret_sealed, scopes, email_claim, groups_claim, admin_groups, \
             session_lifetime_seconds, sign_out_at_provider, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13)",
        )
        .bind(provider.id.to_string())
        .bind(account_id.to_string())
        .bind(provider.name.clone())
        .bind(provider.issuer.clone())
        .bind(provider.client_id.clone())
        .bind(sealed)
        .bind(db::to_json(&provider.scopes)?)
        .bind(provider.email_claim.clone())
        .bind(provider.groups_claim.clone())
        .bind(db::to_json(&provider.admin_groups)?)
        .bind(i64::from(provider.session_lifetime_seconds))
        .bind(i64::from(provider.sign_out_at_provider))
        .bind(ts(now))
        .execute(&mut *tx.tx)
        .await?;
        audit::record(
            &mut tx.tx,
            Entry {
                account_id: Some(account_id),
                acting,
                action: "identity_provider.create",
                object_type: "identity_provider",
                object_id: Some(provider.id),
                before: None,
                after: snapshot(&provider),
                now,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(provider)
    }

    pub async fn list_identity_providers(&self, account_id: Uuid) -> Result<Vec<IdentityProvider>> {
        let rows =
            sqlx::query("SELECT * FROM identity_providers WHERE account_id = $1 ORDER BY id")
                .bind(account_id.to_string())
                .fetch_all(self.pool())
                .await?;
        rows.iter().map(provider_from_row).collect()
    }

    pub async fn get_identity_provider(
        &self,
        account_id: Uuid,
        id: Uuid,
    ) -> Result<IdentityProvider> {
        db::get_in_account(
            self,
            "identity_providers",
            account_id,
            id,
            "identity provider",
            provider_from_row,
        )
        .await
    }

    /// Changes a provider (a new client secret replaces the sealed one; without one it stays).
    /// People and service accounts are not touched; sessions already open keep their end.
    /// Audited as `identity_provider.update` (without the secret).
    pub async fn update_identity_provider(
        &self,
        account_id: Uuid,
        id: Uuid,
        valid: ValidIdentityProvider,
        acting: &Acting,
    ) -> Result<IdentityProvider> {
        let before = self.get_identity_provider(account_id, id).await?;
        let now = chrono::SubsecRound::trunc_subsecs(Utc::now(), 6);
        let mut after = before.clone();
        after.name = valid.name;
        after.client_id = valid.client_id;
        after.scopes = valid.scopes;
        after.email_claim = valid.email_claim;
        after.groups_claim = valid.groups_claim;
        after.admin_groups = valid.admin_groups;
        after.session_lifetime_seconds =
            u32::try_from(valid.session_lifetime.num_seconds()).unwrap_or(u32::MAX);
        after.sign_out_at_provider = valid.sign_out_at_provider;
        after.has_client_secret = before.has_client_secret || valid.client_secret.is_some();
        after.updated_at = now;
        let sealed = valid
            .client_secret
            .as_deref()
            .map(|secret| self.inner.sealer.seal_text(&secret_aad(id), secret))
            .transpose()?;
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "UPDATE identity_providers SET name = $1, client_id = $2, \
             client_secret_sealed = COALESCE($3, client_secret_sealed), scopes = $4, \
             email_claim = $5, groups_claim = $6, admin_groups = $7, \
             session_lifetime_seconds = $8, sign_out_at_provider = $9, updated_at = $10 \
             WHERE account_id = $11 AND id = $12",
        )
        .bind(after.name.clone())
        .bind(after.client_id.clone())
        .bind(sealed)
        .bind(db::to_json(&after.scopes)?)
        .bind(after.email_claim.clone())
        .bind(after.groups_claim.clone())
        .bind(db::to_json(&after.admin_groups)?)
        .bind(i64::from(after.session_lifetime_seconds))
        .bind(i64::from(after.sign_out_at_provider))
        .bind(ts(now))
        .bind(account_id.to_string())
        .bind(id.to_string())
        .execute(&mut *tx.tx)
        .await?;
        audit::record(
            &mut tx.tx,
            Entry {
                account_id: Some(account_id),
                acting,
                action: "identity_provider.update",
                object_type: "identity_provider",
                object_id: Some(id),
                before: snapshot(&before),
                after: snapshot(&after),
                now,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(after)
    }

    /// The provider's client secret, to redeem an authorization code.
    pub async fn identity_provider_secret(
        &self,
        account_id: Uuid,
        id: Uuid,
    ) -> Result<Option<SecretString>> {
        let sealed: Option<Option<String>> = sqlx::query_scalar(
            "SELECT client_secret_sealed FROM identity_providers WHERE account_id = $1 AND id = $2",
        )
        .bind(account_id.to_string())
        .bind(id.to_string())
        .fetch_optional(self.pool())
        .await?;
        let Some(Some(sealed)) = sealed else {
            return Ok(None);
        };
        match self.inner.sealer.open_text(&secret_aad(id), &sealed) {
            Some(secret) => Ok(Some(SecretString::new(secret))),
            None => Err(StoreError::Corrupt(format!(
                "the client secret of identity provider {id} does not open with this server's secret"
            ))),
        }
    }

    /// Deletes an identity provider: nobody signs in through it any more, and the web sessions
    /// of the people it signed in end. People stay (with their groups), and service accounts
    /// are not touched. Audited as `identity_provider.delete`.
    pub async fn delete_identity_provider(
        &self,
        account_id: Uuid,
        id: Uuid,
        acting: &Acting,
    ) -> Result<()> {
        let before = self.get_identity_provider(account_id, id).await?;
        let now = Utc::now();
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "DELETE FROM web_sessions WHERE actor_id IN (SELECT id FROM actors \
             WHERE account_id = $1 AND identity_provider_id = $2)",
        )
        .bind(account_id.to_string())
        .bind(id.to_string())
        .execute(&mut *tx.tx)
        .await?;
        sqlx::query("DELETE FROM identity_providers WHERE account_id = $1 AND id = $2")
            .bind(account_id.to_string())
            .bind(id.to_string())
            .execute(&mut *tx.tx)
            .await?;
        audit::record(
            &mut tx.tx,
            Entry {
                account_id: Some(account_id),
                acting,
                action: "identity_provider.delete",
                object_type: "identity_provider",
                object_id: Some(id),
                before: snapshot(&before),
                after: None,
                now,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Remembers a sign-in that leaves for the provider (`state_hash`: the SHA-256 of its
    /// `state`); sign-ins older than the timeout are forgotten on the way.
    pub async fn begin_sign_in(
        &self,
        account_id: Uuid,
        provider_id: Uuid,
        state_hash: &str,
        nonce: &str,
        pkce_verifier: &SecretString,
    ) -> Result<()> {
        let now = Utc::now();
        let sealed = self
            .inner
            .sealer
            .seal_text(&verifier_aad(state_hash), pkce_verifier.expose())?;
        sqlx::query("DELETE FROM oidc_sign_ins WHERE created_at < $1")
            .bind(ts(now - postern_domain::identity::SIGN_IN_TIMEOUT))
            .execute(self.pool())
            .await?;
        sqlx::query(
            "INSERT INTO oidc_sign_ins (state_hash, account_id, provider_id, nonce, \
             pkce_verifier_sealed, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(state_hash.to_string())
        .bind(account_id.to_string())
        .bind(provider_id.to_string())
        .bind(nonce.to_string())
        .bind(sealed)
        .bind(ts(now))
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Takes the sign-in with this state, once: a second call (a replayed callback) finds
    /// nothing, and so does one after the timeout.
    pub async fn take_sign_in(&self, state_hash: &str) -> Result<Option<PendingSignIn>> {
        let row = sqlx::query(
            "DELETE FROM oidc_sign_ins WHERE state_hash = $1 \
             RETURNING account_id, provider_id, nonce, pkce_verifier_sealed, created_at",
        )
        .bind(state_hash.to_string())
        .fetch_optional(self.pool())
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let created_at = time(&row, "created_at")?;
        if Utc::now() - created_at > postern_domain::identity::SIGN_IN_TIMEOUT {
            return Ok(None);
        }
        let sealed = text(&row, "pkce_verifier_sealed")?;
        let Some(verifier) = self
            .inner
            .sealer
            .open_text(&verifier_aad(state_hash), &sealed)
        else {
            return Err(StoreError::Corrupt(
                "a sign-in's PKCE verifier does not open with this server's secret".into(),
            ));
        };
        Ok(Some(PendingSignIn {
            account_id: db::uuid(&row, "account_id")?,
            provider_id: db::uuid(&row, "provider_id")?,
            nonce: text(&row, "nonce")?,
            pkce_verifier: SecretString::new(verifier),
            created_at,
        }))
    }

    /// The actor a person signing in through `provider` is: the one the provider's subject
    /// names; else the user or admin with their email (linked from now on); else a new one —
    /// an admin when one of their groups is an admin group, a user otherwise (both in
    /// `Everyone`). A linked person's type follows their groups at each sign-in, unless they
    /// also have a password (a local admin is never demoted by a provider, so an account
    /// cannot lock itself out). Refused: a disabled person, and an email that belongs to a
    /// service account or API client.
    pub async fn sign_in_person(
        &self,
        provider: &IdentityProvider,
        person: &Person,
        source_ip: Option<String>,
    ) -> Result<Actor> {
        let account_id = provider.account_id;
        let wanted = person_type(provider, person);
        let acting = Acting {
            actor_id: None,
            token_id: None,
            source_ip,
        };
        let linked = sqlx::query(
            "SELECT * FROM actors WHERE account_id = $1 AND identity_provider_id = $2 \
             AND provider_subject = $3",
        )
        .bind(account_id.to_string())
        .bind(provider.id.to_string())
        .bind(person.subject.clone())
        .fetch_optional(self.pool())
        .await?;
        let actor = match linked {
            Some(row) => actor_from_row(&row)?,
            None => match self.actor_by_email(account_id, &person.email).await? {
                Some((actor, _)) => {
                    if !matches!(actor.actor_type, ActorType::User | ActorType::Admin) {
                        return Err(StoreError::Conflict(format!(
                            "the email {} belongs to a {}, which never signs in",
                            person.email,
                            actor.actor_type.described()
                        )));
                    }
                    self.link_person(&actor, provider, person).await?;
                    actor
                }
                None => {
                    let (actor, _) = self
                        .create_linked_actor(
                            account_id,
                            NewActor {
                                actor_type: wanted,
                                name: person.name.clone(),
                                email: Some(person.email.clone()),
                                password_hash: None,
                                group_ids: Vec::new(),
                                token: None,
                            },
                            Some(ProviderLink {
                                provider_id: provider.id,
                                subject: Some(&person.subject),
                                external_id: None,
                            }),
                            &acting,
                        )
                        .await?;
                    return Ok(actor);
                }
            },
        };
        if actor.is_disabled() {
            return Err(StoreError::Conflict(format!(
                "{} is disabled",
                actor.email.as_deref().unwrap_or(&actor.name)
            )));
        }
        if actor.actor_type == wanted {
            return Ok(actor);
        }
        // Someone who also signs in with a password (a local admin) keeps their role: the
        // provider's groups manage only the people it brought.
        let has_password: Option<String> = sqlx::query_scalar(
            "SELECT password_hash FROM actors WHERE account_id = $1 AND id = $2",
        )
        .bind(account_id.to_string())
        .bind(actor.id.to_string())
        .fetch_one(self.pool())
        .await?;
        if has_password.is_some() {
            return Ok(actor);
        }
        // Their groups changed at the provider: so does what they are here.
        let now = Utc::now();
        let mut after = actor.clone();
        after.actor_type = wanted;
        after.updated_at = now;
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "UPDATE actors SET type = $1, updated_at = $2 WHERE account_id = $3 AND id = $4",
        )
        .bind(wanted.as_str())
        .bind(ts(now))
        .bind(account_id.to_string())
        .bind(actor.id.to_string())
        .execute(&mut *tx.tx)
        .await?;
        audit::record(
            &mut tx.tx,
            Entry {
                account_id: Some(account_id),
                acting: &acting,
                action: "actor.update",
                object_type: "actor",
                object_id: Some(actor.id),
                before: snapshot(&actor),
                after: snapshot(&after),
                now,
            },
        )
        .await?;
        self.commit_publishing(
            tx,
            vec![ChangeEvent::ActorUpdated {
                account_id,
                actor_id: actor.id,
            }],
        )
        .await?;
        Ok(after)
    }

    async fn link_person(
        &self,
        actor: &Actor,
        provider: &IdentityProvider,
        person: &Person,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE actors SET identity_provider_id = $1, provider_subject = $2 \
             WHERE account_id = $3 AND id = $4",
        )
        .bind(provider.id.to_string())
        .bind(person.subject.clone())
        .bind(actor.account_id.to_string())
        .bind(actor.id.to_string())
        .execute(self.pool())
        .await
        .map_err(|err| {
            db::unique_violation(err, || {
                format!(
                    "the provider's subject {} is another person's",
                    person.subject
                )
            })
        })?;
        Ok(())
    }
}

pub(crate) fn provider_from_row(row: &AnyRow) -> Result<IdentityProvider> {
    let lifetime: i64 = sqlx::Row::try_get(row, "session_lifetime_seconds")?;
    let sign_out_at_provider: i64 = sqlx::Row::try_get(row, "sign_out_at_provider")?;
    Ok(IdentityProvider {
        id: db::uuid(row, "id")?,
        account_id: db::uuid(row, "account_id")?,
        name: text(row, "name")?,
        issuer: text(row, "issuer")?,
        client_id: text(row, "client_id")?,
        has_client_secret: opt_text(row, "client_secret_sealed")?.is_some(),
        scopes: db::json(row, "scopes")?,
        email_claim: text(row, "email_claim")?,
        groups_claim: opt_text(row, "groups_claim")?,
        admin_groups: db::json(row, "admin_groups")?,
        session_lifetime_seconds: u32::try_from(lifetime).unwrap_or(u32::MAX),
        sign_out_at_provider: sign_out_at_provider != 0,
        created_at: time(row, "created_at")?,
        updated_at: time(row, "updated_at")?,
    })
}
