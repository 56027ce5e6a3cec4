//! The listener's settings, flattened into [`crate::Config`]. Who a client is, for the limits
//! kept per client, is in [`crate::client_addr`].

use clap::Args;

use crate::client_addr::TrustedProxies;

#[derive(Debug, Clone, Args)]
pub struct ListenerArgs {
    /// Comma-separated addresses or CIDR networks of the reverse proxies in front of the API:
    /// only from them is `X-Forwarded-For` believed.
    #[arg(long, env = "TRUSTED_PROXIES")]
    pub trusted_proxies: Option<TrustedProxies>,
}

impl ListenerArgs {
    /// The settings as printed at start-up.
    pub fn redacted(&self) -> String {
        format!(
            "TRUSTED_PROXIES={}",
            self.trusted_proxies
                .as_ref()
                .map_or_else(|| "(unset)".to_owned(), ToString::to_string),
        )
    }
}
