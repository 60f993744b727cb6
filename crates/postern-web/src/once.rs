//! Secrets shown once. A created token's secret is kept in memory for a few minutes, for the
//! session that created it, until the page that shows it is read once: a reload, the back
//! button or another browser shows nothing. It never reaches the database.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use postern_domain::Token;
use postern_token::SecretString;
use uuid::Uuid;

const KEEP_FOR: Duration = Duration::from_secs(300);

pub struct Shown {
    pub token: Token,
    pub secret: SecretString,
}

#[derive(Default)]
pub struct ShownOnce {
    /// By (session id hash, token holder id).
    pending: Mutex<HashMap<(String, Uuid), (Instant, Shown)>>,
}

impl ShownOnce {
    pub fn put(&self, session: &str, holder: Uuid, shown: Shown) {
        self.pending
            .lock()
            .insert((session.to_string(), holder), (Instant::now(), shown));
    }

    /// The secret waiting for this session and holder, removed as it is read.
    pub fn take(&self, session: &str, holder: Uuid) -> Option<Shown> {
        let (at, shown) = self.pending.lock().remove(&(session.to_string(), holder))?;
        (at.elapsed() < KEEP_FOR).then_some(shown)
    }

    pub fn sweep(&self) {
        self.pending
            .lock()
            .retain(|_, (at, _)| at.elapsed() < KEEP_FOR);
    }
}
