//! Debian's Chromium, headless and cut off from every host but this machine, for the tests that
//! load a page the way a frontend's users would (Swagger UI, an `EventSource`).

use std::path::Path;

/// A `chromium` command, headless, with its own profile in `profile` and every outside host
/// unreachable; the caller adds what to load and how to read the result.
pub fn headless_chromium(profile: &Path) -> tokio::process::Command {
    let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("chromium is not installed: tests/run.sh installs Debian's chromium");
    let mut command = tokio::process::Command::new(chromium);
    command.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        &format!("--user-data-dir={}", profile.display()),
    ]);
    command
}
