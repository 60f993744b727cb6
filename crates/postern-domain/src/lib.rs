//! The Postern domain: what an account holds (actors, groups, sites, resources, policies, tokens,
//! audit events), the rules every operation must obey, and the change events operations emit.
//!
//! Everything here is pure: no I/O, no clock reads (the caller passes `now`), no randomness except
//! fresh identifiers. Storage and HTTP are thin shells around these types and functions.

pub mod dns;
pub mod events;
pub mod identity;
pub mod keys;
pub mod model;
pub mod rules;
pub mod validate;
pub mod webhooks;
pub mod workload_identity;

pub use events::ChangeEvent;
pub use keys::{KeyError, PresharedKey, WireGuardKey};
pub use model::*;
pub use validate::ValidationError;
pub use workload_identity::WorkloadIdentity;
