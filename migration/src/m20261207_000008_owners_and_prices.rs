//! Owners and prices fixed at hold time.
//!
//! - `holds.secret_hash`, `orders.secret_hash`: SHA-256 (hex) of the `client_secret` an
//!   anonymous buyer was given for the hold (an order inherits its hold's); rows made before
//!   have none and answer no anonymous caller.
//! - `holds.unit_price_cents`: the product's price when the hold was made, which its order is
//!   charged; null for older holds, whose orders take the product's price as before.
//! - Idempotency keys are stored as SHA-256 (hex) of their owner and the client's key (see
//!   `entity::idempotency::KeyedRequest::new`): the keys already stored, all of anonymous
//!   owners, are rewritten so that their retries still find them.

use sea_orm_migration::{
    prelude::*,
    sea_orm::{ConnectionTrait, DbBackend, Statement},
};
use sha2::{Digest, Sha256};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Holds {
    Table,
    SecretHash,
    UnitPriceCents,
}

#[derive(DeriveIden)]
enum Orders {
    Table,
    SecretHash,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();
        let hash_column = |name: DynIden| {
            let mut column = ColumnDef::new(name);
            match backend {
                DbBackend::Sqlite => column.string_len(64),
                // Compared byte for byte, and the same in every server's default character set.
                _ => column.custom(Alias::new("CHAR(64) CHARACTER SET ascii COLLATE ascii_bin")),
            };
            column.null().to_owned()
        };
        // SQLite adds one column per ALTER TABLE.
        for (table, column) in [
            (
                Holds::Table.into_iden(),
                hash_column(Holds::SecretHash.into_iden()),
            ),
            (
                Holds::Table.into_iden(),
                ColumnDef::new(Holds::UnitPriceCents)
                    .big_integer()
                    .null()
                    .to_owned(),
            ),
            (
                Orders::Table.into_iden(),
                hash_column(Orders::SecretHash.into_iden()),
            ),
        ] {
            let mut column = column;
            manager
                .alter_table(
                    Table::alter()
                        .table(table)
                        .add_column(&mut column)
                        .to_owned(),
                )
                .await?;
        }
        rewrite_keys(manager.get_connection(), backend).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (table, column) in [
            (Holds::Table.into_iden(), Holds::SecretHash.into_iden()),
            (Holds::Table.into_iden(), Holds::UnitPriceCents.into_iden()),
            (Orders::Table.into_iden(), Orders::SecretHash.into_iden()),
        ] {
            manager
                .alter_table(Table::alter().table(table).drop_column(column).to_owned())
                .await?;
        }
        // Stored keys stay digests: a digest cannot be turned back into its key.
        Ok(())
    }
}

/// Rewrites every stored key `k` as the hex SHA-256 of a byte 0 (no owner) and `k`.
async fn rewrite_keys<C: ConnectionTrait>(conn: &C, backend: DbBackend) -> Result<(), DbErr> {
    if backend != DbBackend::Sqlite {
        for table in ["idempotency_keys", "holds"] {
            conn.execute_unprepared(&format!(
                "UPDATE {table} SET idem_key = SHA2(CONCAT(X'00', idem_key), 256) \
                 WHERE idem_key IS NOT NULL"
            ))
            .await?;
        }
        return Ok(());
    }
    // SQLite has no SHA-256: row by row (a laptop's database, and keys live 24 hours).
    for table in ["idempotency_keys", "holds"] {
        let rows = conn
            .query_all_raw(Statement::from_string(
                backend,
                format!("SELECT id, idem_key FROM {table} WHERE idem_key IS NOT NULL"),
            ))
            .await?;
        for row in rows {
            let id: i64 = row.try_get("", "id")?;
            let key: String = row.try_get("", "idem_key")?;
            conn.execute_raw(Statement::from_sql_and_values(
                backend,
                format!("UPDATE {table} SET idem_key = ? WHERE id = ?"),
                [digest(&key).into(), id.into()],
            ))
            .await?;
        }
    }
    Ok(())
}

fn digest(key: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update([0]);
    hasher.update(key.as_bytes());
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    /// The same digest as `entity::idempotency::KeyedRequest::new` with no owner.
    #[test]
    fn digests_are_sha256_of_a_zero_byte_and_the_key() {
        // printf '\0k-1' | sha256sum
        assert_eq!(
            super::digest("k-1"),
            "87f271b944dd193511c623d5aa5280099d7550f4375d7a8ee7a4cdcf14403469"
        );
    }
}
