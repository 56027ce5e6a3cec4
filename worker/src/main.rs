//! `flash-sale-worker`: release expired holds on a schedule (or once, with `--once`).

use anyhow::Context;
use clap::Parser;
use flash_sale_worker::{Config, run};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if let Err(e) = dotenvy::dotenv()
        && !e.not_found()
    {
        return Err(e).context(".env: cannot be read");
    }
    let config = Config::parse();
    let _guards =
        entity::telemetry::init_logging("flash-sale-worker", &config.log_dir, &config.rust_log)?;
    let metrics = entity::telemetry::init_metrics()?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %config.redacted(),
        "flash-sale-worker starting"
    );
    run(config, Some(metrics)).await
}
