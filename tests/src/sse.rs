//! A Server-Sent Events reader over a reqwest response, for the stock stream tests and the
//! benchmark: it splits the body into events and comment lines as the SSE format says (blocks
//! separated by a blank line; `:` starts a comment; `event:` and `data:` fields).

use std::time::Duration;

use serde_json::Value;

/// One block of the stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// An event: its `event:` type and its `data:` (lines joined by `\n`).
    Event { event: String, data: String },
    /// A comment line (keep-alive), without its `:`.
    Comment(String),
}

impl Item {
    /// The data as JSON, for an event of type `event`.
    pub fn json_of(&self, event: &str) -> Option<Value> {
        match self {
            Item::Event { event: e, data } if e == event => serde_json::from_str(data).ok(),
            _ => None,
        }
    }
}

/// How a stream stopped.
#[derive(Debug, PartialEq)]
pub enum End {
    /// The body ended cleanly.
    Closed,
    /// Reading failed (the connection was reset, or the body was cut short).
    Failed(String),
    /// Nothing arrived in time.
    TimedOut,
}

pub struct Reader {
    response: reqwest::Response,
    buffer: String,
}

impl Reader {
    pub fn new(response: reqwest::Response) -> Self {
        Self {
            response,
            buffer: String::new(),
        }
    }

    /// The next event or comment within `timeout`, or how the stream stopped.
    pub async fn next(&mut self, timeout: Duration) -> Result<Item, End> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(item) = self.take_block() {
                return Ok(item);
            }
            match tokio::time::timeout_at(deadline, self.response.chunk()).await {
                Err(_) => return Err(End::TimedOut),
                Ok(Err(e)) => return Err(End::Failed(format!("{e:?}"))),
                Ok(Ok(None)) => return Err(End::Closed),
                Ok(Ok(Some(bytes))) => self.buffer.push_str(&String::from_utf8_lossy(&bytes)),
            }
        }
    }

    /// The next `stock` event's data within `timeout` (comments skipped).
    pub async fn next_event(&mut self, event: &str, timeout: Duration) -> Result<Value, End> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if let Some(v) = self.next(left).await?.json_of(event) {
                return Ok(v);
            }
        }
    }

    fn take_block(&mut self) -> Option<Item> {
        let end = self.buffer.find("\n\n")?;
        let block: String = self.buffer.drain(..end + 2).collect();
        let mut event = String::from("message");
        let mut data: Vec<&str> = Vec::new();
        let mut comment = None;
        for line in block.lines() {
            if let Some(c) = line.strip_prefix(':') {
                comment = Some(c.trim_start().to_owned());
            } else if let Some(v) = line.strip_prefix("event:") {
                event = v.trim_start().to_owned();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push(v.strip_prefix(' ').unwrap_or(v));
            }
        }
        if data.is_empty() {
            return Some(Item::Comment(comment.unwrap_or_default()));
        }
        Some(Item::Event {
            event,
            data: data.join("\n"),
        })
    }

    pub fn response(&self) -> &reqwest::Response {
        &self.response
    }
}

/// An HTTP client for long-lived streams: no overall timeout (the usual client's 30 s would cut
/// every stream), a connect timeout only.
pub fn stream_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()
        .expect("http client")
}
