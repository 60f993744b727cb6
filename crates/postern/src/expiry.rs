//! `--expires-in` / `--expires-at`, shared by every command that creates a token.

use anyhow::{anyhow, Context};
use chrono::{DateTime, Utc};

#[derive(clap::Args, Debug, Clone, Default)]
pub struct ExpiryArgs {
    /// Lifetime of the token from now, such as 30d, 12h, 2w or 1y [default: 365 days, capped by
    /// the account's longest token lifetime]
    #[arg(long, value_name = "DURATION", conflicts_with = "expires_at")]
    pub expires_in: Option<String>,
    /// When the token expires, as an RFC 3339 timestamp such as 2027-01-31T00:00:00Z
    #[arg(long, value_name = "RFC3339")]
    pub expires_at: Option<String>,
}

impl ExpiryArgs {
    /// The requested expiry instant; `None` leaves the default to the portal.
    pub fn resolve(&self, now: DateTime<Utc>) -> anyhow::Result<Option<DateTime<Utc>>> {
        if let Some(duration) = &self.expires_in {
            let duration = postern_domain::rules::parse_duration(duration)
                .map_err(|err| anyhow!("invalid --expires-in '{duration}': {}", err.message))?;
            return Ok(Some(now + duration));
        }
        let Some(at) = &self.expires_at else {
            return Ok(None);
        };
        let at = parse_rfc3339("--expires-at", at)?;
        if at <= now {
            return Err(anyhow!(
                "invalid --expires-at '{}': it is in the past",
                at.to_rfc3339()
            ));
        }
        Ok(Some(at))
    }
}

pub fn parse_rfc3339(flag: &str, value: &str) -> anyhow::Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(value.trim())
        .map(|at| at.with_timezone(&Utc))
        .with_context(|| {
            format!("invalid {flag} '{value}': expected an RFC 3339 timestamp such as 2027-01-31T00:00:00Z")
        })
}
