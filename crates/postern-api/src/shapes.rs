//! Response envelopes shared by every endpoint.

use postern_domain::Token;
use postern_store::{CreatedToken, Paged};
use serde::Serialize;
use utoipa::ToSchema;

/// A single object.
#[derive(Debug, Serialize, ToSchema)]
pub struct Data<T> {
    pub data: T,
}

impl<T> Data<T> {
    pub fn new(data: T) -> axum::Json<Self> {
        axum::Json(Self { data })
    }
}

/// A page of a list.
#[derive(Debug, Serialize, ToSchema)]
pub struct List<T> {
    pub data: Vec<T>,
    pub metadata: ListMetadata,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ListMetadata {
    pub limit: u32,
    /// Pass as `?cursor=` to get the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

impl<T> List<T> {
    /// One page of a short list read whole (ordered by id): the items after the cursor.
    pub fn page_of(
        items: Vec<T>,
        page: postern_store::Page,
        id: impl Fn(&T) -> uuid::Uuid,
    ) -> axum::Json<Self> {
        let limit = page.limit as usize;
        let mut items: Vec<T> = items
            .into_iter()
            .filter(|item| page.cursor.is_none_or(|cursor| id(item) > cursor))
            .take(limit + 1)
            .collect();
        let next_cursor = (items.len() > limit).then(|| {
            items.truncate(limit);
            items.last().map(&id)
        });
        Self::from_page(
            Paged {
                items,
                next_cursor: next_cursor.flatten(),
            },
            page.limit,
        )
    }

    pub fn from_page(page: Paged<T>, limit: u32) -> axum::Json<Self> {
        axum::Json(Self {
            data: page.items,
            metadata: ListMetadata {
                limit,
                next_cursor: page.next_cursor.map(|c| c.to_string()),
            },
        })
    }
}

/// A token in the one response that carries its secret: the response that created it.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenWithSecret {
    #[serde(flatten)]
    pub token: Token,
    /// The full token. Shown once: it cannot be read again.
    pub secret: String,
}

impl From<CreatedToken> for TokenWithSecret {
    fn from(created: CreatedToken) -> Self {
        Self {
            secret: created.secret.expose().to_string(),
            token: created.token,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RevokedCount {
    pub revoked: u64,
}

/// Tells a field left out (`None`) from a field set to `null` (`Some(None)`) in a PATCH body.
pub fn double_option<'de, T, D>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    T: serde::Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    serde::Deserialize::deserialize(deserializer).map(Some)
}
