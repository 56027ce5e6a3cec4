//! The databases the sections run on: dropped and created anew on a server, for the API to
//! migrate when it starts.

use anyhow::{Context, Result};
use sea_orm::sqlx::{self, Connection, Executor};

/// Drops and recreates a database, migrates it through the API binary, returns its URL.
pub(crate) async fn fresh_database(base: &str, name: &str) -> Result<String> {
    let mut conn = sqlx::MySqlConnection::connect(base)
        .await
        .context("MariaDB")?;
    conn.execute(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS `{name}`"
    )))
    .await?;
    conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE `{name}`")))
        .await?;
    Ok(format!("{base}/{name}"))
}
