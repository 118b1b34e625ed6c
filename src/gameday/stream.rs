//! Client side of the agents' `/events` streams: a small Server-Sent Events
//! parser and one reconnecting reader per agent, feeding a shared log.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::daemon::admin::RunEvent;

/// Runs kept per game day, at most (about 60 MB; 10 journeys at 1 s on 5 agents for over an hour).
/// Later runs are counted in the report as dropped.
pub const MAX_RUNS: usize = 200_000;
/// Longest SSE line accepted; the agent's events are far smaller.
const MAX_LINE: usize = 64 * 1024;
/// No byte (not even a keep-alive) for this long means the stream is dead.
const IDLE_LIMIT: Duration = Duration::from_secs(35);

/// A run as seen by the game day: which scenario agent streamed it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Seen {
    pub agent: String,
    #[serde(flatten)]
    pub run: RunEvent,
}

/// Everything the streams saw, shared with the game day loop.
#[derive(Default)]
pub struct Log {
    pub runs: Vec<Seen>,
    /// Per agent: events skipped (slow reader), reconnects, and whether it is connected now.
    pub agents: std::collections::BTreeMap<String, StreamHealth>,
    pub dropped: u64,
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct StreamHealth {
    pub connected: bool,
    pub lagged: u64,
    pub reconnects: u64,
    pub last_error: Option<String>,
}

pub type SharedLog = Arc<Mutex<Log>>;

/// One complete SSE event.
#[derive(Debug, PartialEq, Eq)]
pub struct SseEvent {
    pub event: String,
    pub data: String,
}

/// Incremental SSE parser (the subset agents send: `event`, `data`, `id`, comments).
#[derive(Default)]
pub struct SseParser {
    buf: Vec<u8>,
    event: String,
    data: Vec<String>,
}

impl SseParser {
    /// Feeds bytes; returns the events completed by them.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, String> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if !self.data.is_empty() {
                    let event = if self.event.is_empty() {
                        "message".to_string()
                    } else {
                        std::mem::take(&mut self.event)
                    };
                    out.push(SseEvent {
                        event,
                        data: std::mem::take(&mut self.data).join("\n"),
                    });
                }
                self.event.clear();
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line
                .split_once(':')
                .map(|(f, v)| (f, v.strip_prefix(' ').unwrap_or(v)))
                .unwrap_or((line, ""));
            match field {
                "event" => self.event = value.to_string(),
                "data" => self.data.push(value.to_string()),
                _ => {}
            }
        }
        if self.buf.len() > MAX_LINE {
            return Err(format!("an event line longer than {MAX_LINE} bytes"));
        }
        Ok(out)
    }
}

/// Reads `url/events` until `stop`, reconnecting with backoff; runs go into `log`.
/// `connected` fires once the first connection is up.
pub async fn follow(
    client: reqwest::Client,
    agent: String,
    url: String,
    log: SharedLog,
    stop: CancellationToken,
    connected: tokio::sync::oneshot::Sender<Result<(), String>>,
) {
    let mut connected = Some(connected);
    let mut backoff = Duration::from_millis(250);
    loop {
        let res = tokio::select! {
            _ = stop.cancelled() => return,
            r = tokio::time::timeout(Duration::from_secs(5), client.get(format!("{url}/events")).header("accept", "text/event-stream").send()) => r,
        };
        let resp = match res {
            Ok(Ok(r)) if r.status().is_success() => Ok(r),
            Ok(Ok(r)) => Err(format!("{url}/events answered {}", r.status())),
            Ok(Err(e)) => Err(format!(
                "cannot reach {url}/events: {}",
                crate::gameday::http_error(&e)
            )),
            Err(_) => Err(format!("{url}/events did not answer within 5s")),
        };
        let resp = match resp {
            Ok(r) => r,
            Err(m) => {
                if let Some(c) = connected.take() {
                    let _ = c.send(Err(m));
                    return;
                }
                note(&log, &agent, |h| h.last_error = Some(m));
                tokio::select! { _ = stop.cancelled() => return, _ = tokio::time::sleep(backoff) => {} }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        note(&log, &agent, |h| {
            h.connected = true;
            h.last_error = None;
        });
        if let Some(c) = connected.take() {
            let _ = c.send(Ok(()));
        } else {
            note(&log, &agent, |h| h.reconnects += 1);
        }
        backoff = Duration::from_millis(250);
        let mut body = resp.bytes_stream();
        let mut parser = SseParser::default();
        let why = loop {
            let chunk = tokio::select! {
                _ = stop.cancelled() => return,
                c = tokio::time::timeout(IDLE_LIMIT, body.next()) => c,
            };
            let bytes = match chunk {
                Ok(Some(Ok(b))) => b,
                Ok(Some(Err(e))) => {
                    break format!("stream broke: {}", crate::gameday::http_error(&e))
                }
                Ok(None) => break "the agent closed the stream".to_string(),
                Err(_) => {
                    break format!(
                        "nothing for {}s, not even a keep-alive",
                        IDLE_LIMIT.as_secs()
                    )
                }
            };
            let events = match parser.feed(&bytes) {
                Ok(e) => e,
                Err(m) => break m,
            };
            let mut l = log.lock().expect("event log lock");
            for ev in events {
                match ev.event.as_str() {
                    "run" => match serde_json::from_str::<RunEvent>(&ev.data) {
                        Ok(run) if l.runs.len() < MAX_RUNS => l.runs.push(Seen {
                            agent: agent.clone(),
                            run,
                        }),
                        Ok(_) => l.dropped += 1,
                        Err(e) => tracing::warn!(agent = %agent, "unreadable run event: {e}"),
                    },
                    "lagged" => {
                        let n = serde_json::from_str::<serde_json::Value>(&ev.data)
                            .ok()
                            .and_then(|v| v["skipped"].as_u64())
                            .unwrap_or(0);
                        l.agents.entry(agent.clone()).or_default().lagged += n;
                    }
                    _ => {}
                }
            }
        };
        note(&log, &agent, |h| {
            h.connected = false;
            h.last_error = Some(why);
        });
    }
}

fn note(log: &SharedLog, agent: &str, f: impl FnOnce(&mut StreamHealth)) {
    f(log
        .lock()
        .expect("event log lock")
        .agents
        .entry(agent.to_string())
        .or_default());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_events_split_across_chunks_and_skips_comments() {
        let mut p = SseParser::default();
        assert!(p
            .feed(b": hello\n\nevent: run\nid: 1\nda")
            .unwrap()
            .is_empty());
        let out = p
            .feed(b"ta: {\"a\":1}\r\n\r\n:keep-alive\n\nevent: lagged\ndata: {\"skipped\":3}\n\n")
            .unwrap();
        assert_eq!(
            out,
            vec![
                SseEvent {
                    event: "run".into(),
                    data: "{\"a\":1}".into()
                },
                SseEvent {
                    event: "lagged".into(),
                    data: "{\"skipped\":3}".into()
                },
            ]
        );
    }

    #[test]
    fn multi_line_data_is_joined_and_huge_lines_are_refused() {
        let mut p = SseParser::default();
        assert_eq!(
            p.feed(b"data: a\ndata: b\n\n").unwrap(),
            vec![SseEvent {
                event: "message".into(),
                data: "a\nb".into()
            }]
        );
        assert!(p.feed(&vec![b'x'; MAX_LINE + 1]).is_err());
    }
}
