//! Human output (aligned tables, short dates, statuses) and `--json` output.

use std::io::Write;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;

/// An aligned plain-text table, printed to stdout.
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&'static str]) -> Self {
        Self {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn print(&self) -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        out.write_all(self.render().as_bytes())?;
        out.flush()?;
        Ok(())
    }

    fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (index, cell) in row.iter().enumerate() {
                if let Some(width) = widths.get_mut(index) {
                    *width = (*width).max(cell.chars().count());
                }
            }
        }
        let mut text = String::new();
        let headers: Vec<String> = self.headers.iter().map(|h| h.to_string()).collect();
        push_line(&mut text, &headers, &widths);
        for row in &self.rows {
            push_line(&mut text, row, &widths);
        }
        text
    }
}

/// Prints `value` as pretty JSON on stdout.
pub fn print_json(value: &Value) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

/// Prints `label: value` lines for one object, aligned.
pub fn print_fields(fields: &[(&str, String)]) -> anyhow::Result<()> {
    let width = fields
        .iter()
        .map(|(label, _)| label.len())
        .max()
        .unwrap_or(0);
    let mut out = std::io::stdout().lock();
    for (label, value) in fields {
        writeln!(
            out,
            "{:<width$}  {value}",
            format!("{label}:"),
            width = width + 1
        )?;
    }
    Ok(())
}

/// A string field, or `-` when it is missing or null.
pub fn text(value: &Value, key: &str) -> String {
    match value.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".to_string(),
        Some(other) => other.to_string(),
    }
}

/// A timestamp field as RFC 3339 UTC to the minute, or `placeholder` when null.
pub fn date(value: &Value, key: &str, placeholder: &str) -> String {
    let Some(raw) = value.get(key).and_then(Value::as_str) else {
        return placeholder.to_string();
    };
    match DateTime::parse_from_rfc3339(raw) {
        Ok(at) => short_date(at.with_timezone(&Utc)),
        Err(_) => raw.to_string(),
    }
}

pub fn short_date(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%MZ").to_string()
}

pub fn full_date(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// `revoked`, `expired` or `active`.
pub fn token_status(token: &Value, now: DateTime<Utc>) -> &'static str {
    if token.get("revoked_at").is_some_and(|v| !v.is_null()) {
        return "revoked";
    }
    let expired = token
        .get("expires_at")
        .and_then(Value::as_str)
        .and_then(|raw| DateTime::parse_from_rfc3339(raw).ok())
        .is_some_and(|at| at.with_timezone(&Utc) <= now);
    if expired {
        "expired"
    } else {
        "active"
    }
}

/// A live rotated token's status says so, with how many clients moved to its successor.
fn rotation_status(token: &Value, status: &str) -> String {
    match (status, token["successor_id"].as_str()) {
        ("active", Some(_)) => format!(
            "rotated, {} moved",
            token["clients_moved"].as_u64().unwrap_or(0)
        ),
        _ => status.to_string(),
    }
}

/// Prints a table of tokens (of an actor or a site).
pub fn print_tokens(tokens: &[Value]) -> anyhow::Result<()> {
    let now = Utc::now();
    let mut table = Table::new(&[
        "ID",
        "NAME",
        "STATUS",
        "EXPIRES",
        "LAST USED",
        "FROM",
        "ONLINE",
        "GUARDRAILS",
        "CREATED",
    ]);
    for token in tokens {
        table.row(vec![
            text(token, "id"),
            text(token, "name"),
            rotation_status(token, token_status(token, now)),
            date(token, "expires_at", "-"),
            date(token, "last_used_at", "never"),
            token["last_used_ip"].as_str().unwrap_or("-").to_string(),
            token["online_sessions"].as_u64().unwrap_or(0).to_string(),
            guardrails(token),
            date(token, "created_at", "-"),
        ]);
    }
    table.print()
}

/// Prints a table of the account's tokens with their holders, for `tokens expiring`.
pub fn print_expiring_tokens(tokens: &[Value]) -> anyhow::Result<()> {
    let mut table = Table::new(&[
        "EXPIRES IN",
        "EXPIRES",
        "ID",
        "NAME",
        "KIND",
        "HOLDER",
        "ONLINE",
        "LAST USED",
    ]);
    for token in tokens {
        let days = token["expires_in_days"].as_i64().unwrap_or(0);
        let expires_in = match days {
            0 => "today".to_string(),
            1 => "1 day".to_string(),
            n => format!("{n} days"),
        };
        table.row(vec![
            expires_in,
            date(token, "expires_at", "-"),
            text(token, "id"),
            text(token, "name"),
            text(token, "kind"),
            format!(
                "{} ({})",
                text(token, "holder_name"),
                text(token, "holder_type").replace('_', " ")
            ),
            token["online_sessions"].as_u64().unwrap_or(0).to_string(),
            date(token, "last_used_at", "never"),
        ]);
    }
    table.print()
}

/// A token's guardrails in a few words: `max 20, from 10.0.0.0/8, approval`, or `-`.
pub fn guardrails(token: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(max) = token["max_clients"].as_u64() {
        parts.push(format!("max {max}"));
    }
    let networks: Vec<&str> = token["allowed_source_cidrs"]
        .as_array()
        .map(|list| list.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if !networks.is_empty() {
        parts.push(format!("from {}", networks.join(" ")));
    }
    if token["require_approval"] == Value::Bool(true) {
        parts.push("approval".to_string());
    }
    if token["ephemeral"] == Value::Bool(true) {
        parts.push("ephemeral".to_string());
    }
    if parts.is_empty() {
        return "-".to_string();
    }
    parts.join(", ")
}

/// Prints a freshly created token's secret: the warning to stderr, the secret alone as the last
/// line of stdout so that `| tail -1` captures it.
pub fn print_secret(secret: &str) -> anyhow::Result<()> {
    eprintln!();
    eprintln!("Copy this token now: it is shown once and cannot be read again.");
    let mut out = std::io::stdout().lock();
    writeln!(out, "{secret}")?;
    out.flush()?;
    Ok(())
}

fn push_line(text: &mut String, cells: &[String], widths: &[usize]) {
    let mut line = String::new();
    for (index, cell) in cells.iter().enumerate() {
        let width = widths.get(index).copied().unwrap_or(0);
        if index + 1 == cells.len() {
            line.push_str(cell);
        } else {
            line.push_str(&format!("{cell:<width$}  "));
        }
    }
    text.push_str(line.trim_end());
    text.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_are_aligned() {
        let mut table = Table::new(&["ID", "NAME"]);
        table.row(vec!["1".into(), "short".into()]);
        table.row(vec!["12345".into(), "x".into()]);
        assert_eq!(table.render(), "ID     NAME\n1      short\n12345  x\n");
    }

    #[test]
    fn dates_and_statuses() {
        let token = json!({"expires_at": "2000-01-01T10:11:12.345Z", "revoked_at": null, "last_used_at": null});
        assert_eq!(date(&token, "expires_at", "-"), "2000-01-01T10:11Z");
        assert_eq!(date(&token, "last_used_at", "never"), "never");
        assert_eq!(token_status(&token, Utc::now()), "expired");
        let revoked =
            json!({"expires_at": "2999-01-01T00:00:00Z", "revoked_at": "2000-01-01T00:00:00Z"});
        assert_eq!(token_status(&revoked, Utc::now()), "revoked");
        let active = json!({"expires_at": "2999-01-01T00:00:00Z", "revoked_at": null});
        assert_eq!(token_status(&active, Utc::now()), "active");
    }
}
