//! Migrations that rewrite stored data, run on a real SQLite file holding rows written before
//! them.

use sqlx::migrate::Migrator;
use sqlx::Row;

static ALL: Migrator = sqlx::migrate!("./migrations");

/// A database migrated up to (not including) `version`, on one connection without foreign
/// keys (the rows stand alone).
async fn database_before(version: i64, url: &str) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    let pool = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .expect("opens");
    sqlx::query("PRAGMA foreign_keys = OFF")
        .execute(&pool)
        .await
        .expect("pragma");
    let earlier = Migrator {
        migrations: ALL
            .migrations
            .iter()
            .filter(|m| m.version < version)
            .cloned()
            .collect::<Vec<_>>()
            .into(),
        ..Migrator::DEFAULT
    };
    earlier.run(&pool).await.expect("earlier migrations");
    pool
}

#[tokio::test]
async fn dns_patterns_keep_their_meaning_when_star_becomes_one_label() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("postern.db").display()
    );
    let pool = database_before(20261202000002, &url).await;
    let stored = [
        ("any-depth", "dns", "*.corp.example"),
        ("one-label", "dns", "?.corp.example"),
        ("exact", "dns", "git.corp.example"),
        ("network", "cidr", "10.0.0.0/24"),
    ];
    for (id, kind, address) in stored {
        sqlx::query(
            "INSERT INTO resources (id, account_id, site_id, type, name, address, filters, \
             created_at, updated_at) VALUES ($1, 'account', 'site', $2, $1, $3, '[]', 0, 0)",
        )
        .bind(id)
        .bind(kind)
        .bind(address)
        .execute(&pool)
        .await
        .expect("an old row");
    }
    ALL.run(&pool).await.expect("the remaining migrations");
    let rows = sqlx::query("SELECT id, address FROM resources ORDER BY id")
        .fetch_all(&pool)
        .await
        .expect("rows");
    let addresses: Vec<(String, String)> = rows
        .iter()
        .map(|row| (row.get("id"), row.get("address")))
        .collect();
    let expected = [
        ("any-depth", "**.corp.example"),
        ("exact", "git.corp.example"),
        ("network", "10.0.0.0/24"),
        ("one-label", "*.corp.example"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(id, address)| (id.to_string(), address.to_string()))
        .collect();
    assert_eq!(addresses, expected);
}
