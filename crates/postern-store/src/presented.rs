//! Tokens revoked by whoever presents them: their holder (holding one is already the
//! compromise), or a secret scanner that found one in public. No other credential is needed,
//! so nothing here reveals more than whether the presented text is a token of this portal.

use chrono::{DateTime, Utc};
use postern_domain::{Acting, ChangeEvent};
use postern_token::TokenKind;
use uuid::Uuid;

use crate::audit::{self, Entry};
use crate::db::ts;
use crate::{Result, Store};

/// Why a presented token is revoked.
#[derive(Debug, Clone, Copy)]
pub enum RevocationCause<'a> {
    /// Someone holding it asked (`POST /v1/tokens/revoke-presented`).
    Presented,
    /// A secret scanner reported it found in public.
    Leaked {
        /// Who reported it, such as `github_secret_scanning`.
        reporter: &'a str,
        /// Where it was found.
        url: &'a str,
        /// What kind of place (`content`, `commit`, …), as the reporter says.
        source: &'a str,
    },
}

/// What presenting a text did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresentedToken {
    /// A token of this portal, revoked now or (`newly_revoked: false`) before.
    Revoked {
        account_id: Uuid,
        token_id: Uuid,
        kind: TokenKind,
        newly_revoked: bool,
    },
    /// Not a token of this portal: malformed, an unknown id, or a secret that does not match.
    Unknown,
}

impl Store {
    /// Revokes the token `text` is, if it is one of this portal's (any kind), audited with the
    /// cause: `token.revoke` for a holder's request, `token.leaked` for a scanner's report
    /// (recorded even when the token was revoked before: the leak is news either way).
    pub async fn revoke_presented(
        &self,
        text: &str,
        cause: RevocationCause<'_>,
        source_ip: Option<String>,
    ) -> Result<PresentedToken> {
        let Ok(parsed) = postern_token::parse(text) else {
            return Ok(PresentedToken::Unknown);
        };
        let (Some(record), _) = self.matching_record(&parsed).await? else {
            return Ok(PresentedToken::Unknown);
        };
        let (account_id, token_id) = (record.account_id, parsed.id);
        let now = Utc::now();
        let mut tx = self.begin_write().await?;
        let newly_revoked = sqlx::query(
            "UPDATE tokens SET revoked_at = $1, revoked_by = NULL \
             WHERE account_id = $2 AND id = $3 AND revoked_at IS NULL",
        )
        .bind(ts(now))
        .bind(account_id.to_string())
        .bind(token_id.to_string())
        .execute(&mut *tx.tx)
        .await?
        .rows_affected()
            > 0;
        let acting = Acting {
            actor_id: None,
            token_id: Some(token_id),
            source_ip,
        };
        let revoked_at: Option<DateTime<Utc>> = newly_revoked.then_some(now);
        let (action, after) = match cause {
            RevocationCause::Presented => (
                "token.revoke",
                serde_json::json!({
                    "id": token_id,
                    "revoked_at": revoked_at,
                    "revoked_because": "presented",
                }),
            ),
            RevocationCause::Leaked {
                reporter,
                url,
                source,
            } => (
                "token.leaked",
                serde_json::json!({
                    "id": token_id,
                    "reporter": reporter,
                    "url": url,
                    "source": source,
                    "revoked_at": revoked_at,
                    "already_revoked": !newly_revoked,
                }),
            ),
        };
        if newly_revoked || matches!(cause, RevocationCause::Leaked { .. }) {
            audit::record(
                &mut tx.tx,
                Entry {
                    account_id: Some(account_id),
                    acting: &acting,
                    action,
                    object_type: "token",
                    object_id: Some(token_id),
                    before: None,
                    after: Some(after),
                    now,
                },
            )
            .await?;
        }
        let events = if newly_revoked {
            vec![ChangeEvent::TokensRevoked {
                account_id,
                token_ids: vec![token_id],
            }]
        } else {
            Vec::new()
        };
        self.commit_publishing(tx, events).await?;
        Ok(PresentedToken::Revoked {
            account_id,
            token_id,
            kind: parsed.kind,
            newly_revoked,
        })
    }
}
