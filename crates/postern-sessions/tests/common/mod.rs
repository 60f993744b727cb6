//! What the simulations share: their size and seed from the environment.

/// `POSTERN_SIM_CASES` / `POSTERN_SIM_STEPS`, or the default.
pub fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
