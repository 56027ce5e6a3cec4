//! `flash-sale-api`: serve the API, or `migrate [--seed]` and exit.

use anyhow::Context;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
use clap::Parser;
use flash_sale_api::{
    config::{Cli, Command},
    migrate, run,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    flash_sale_process::load_dotenv()?;
    let cli = Cli::parse();
    let config = cli.config;
    if let Some(Command::Openapi) = cli.command {
        println!("{}", flash_sale_api::server::openapi_json(&config).await?);
        return Ok(());
    }
    let process = flash_sale_process::start(
        "flash-sale-api",
        env!("CARGO_PKG_VERSION"),
        &config.logs.log_dir,
        &config.logs.rust_log,
        &config.redacted(),
    )?;
    match cli.command {
        Some(Command::Migrate { seed }) => {
            let db = migrate(&config.db_config()).await?;
            tracing::info!("migrations applied");
            if seed {
                let added = entity::operations::products::seed_demo_product(&db)
                    .await
                    .context("seeding the demo product")?;
                tracing::info!(added, "demo product (id 1) seeded");
            }
            Ok(())
        }
        Some(Command::Serve) | None => run(config, Some(process.metrics.clone())).await,
        Some(Command::Openapi) => Ok(()),
    }
}
