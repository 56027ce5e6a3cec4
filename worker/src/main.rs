//! `flash-sale-worker`: release expired holds on a schedule (or once, with `--once`).

use clap::Parser;
use flash_sale_worker::{Config, run};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    flash_sale_process::load_dotenv()?;
    let config = Config::parse();
    let process = flash_sale_process::start(
        "flash-sale-worker",
        env!("CARGO_PKG_VERSION"),
        &config.logs.log_dir,
        &config.logs.rust_log,
        &config.redacted(),
    )?;
    run(config, Some(process.metrics.clone())).await
}
