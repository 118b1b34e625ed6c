//! Reading a response body: content decoding (gzip, deflate, br, zstd) with
//! `max_body` bounding the *decoded* size, so a decompression bomb costs at
//! most `max_body` of memory; and the body's failures named in plain words.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_compression::tokio::bufread::{BrotliDecoder, GzipDecoder, ZlibDecoder, ZstdDecoder};
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use tokio::io::{AsyncRead, AsyncReadExt, BufReader};
use tokio_util::io::StreamReader;

use super::client::{closed_early, hyper_cause};
use crate::steps::net::describe_io;
use crate::vocab::{fmt_dur, ErrorType, StepError};

pub(super) struct ReadBody {
    pub body: Bytes,
    pub truncated: bool,
    /// The codings decoded (`gzip`, `br, gzip`…), if any.
    pub decoded: Option<String>,
}

/// Why a body could not be read; [`BodyFailure::in_words`] makes the step error.
pub(super) struct BodyFailure {
    /// Bytes received off the wire before the failure.
    received: u64,
    declared: Option<u64>,
    kind: FailureKind,
}

enum FailureKind {
    Transport(hyper::Error),
    Corrupt { coding: String, why: String },
    Io(std::io::Error),
}

impl BodyFailure {
    pub fn in_words(self, after: Duration) -> StepError {
        let n = self.received;
        let what = match self.kind {
            FailureKind::Corrupt { coding, why } => return StepError::new(ErrorType::Protocol, format!("the body is declared `Content-Encoding: {coding}` but does not decode as {coding} ({why})")),
            FailureKind::Transport(e) if closed_early(&e) => match self.declared {
                Some(d) => format!("the server declared {d} bytes and closed after {n}"),
                None => format!("the server closed the connection after {n} bytes, before the end of the body"),
            },
            FailureKind::Transport(e) => format!("{} after {n} bytes", hyper_cause(&e)),
            FailureKind::Io(e) => format!("{} after {n} bytes", describe_io(&e)),
        };
        StepError::new(ErrorType::Protocol, format!("the response body broke off after {}: {what}", fmt_dur(after)))
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Coding {
    Gzip,
    Deflate,
    Br,
    Zstd,
}

impl Coding {
    fn parse(s: &str) -> Option<Option<Coding>> {
        Some(Some(match s.trim().to_ascii_lowercase().as_str() {
            "gzip" | "x-gzip" => Coding::Gzip,
            "deflate" => Coding::Deflate,
            "br" => Coding::Br,
            "zstd" => Coding::Zstd,
            "identity" | "" => return Some(None),
            _ => return None,
        }))
    }
}

/// The codings to undo, in the order they were applied; `None` when one is unknown (the body is then kept as sent).
fn codings(resp: &http::Response<Incoming>) -> Option<Vec<Coding>> {
    let mut out = Vec::new();
    for v in resp.headers().get_all(http::header::CONTENT_ENCODING) {
        for part in v.to_str().ok()?.split(',') {
            if let Some(c) = Coding::parse(part)? {
                out.push(c);
            }
        }
    }
    Some(out)
}

pub(super) async fn read_body(resp: http::Response<Incoming>, max_body: u64, raw: bool) -> Result<ReadBody, BodyFailure> {
    let declared = resp.headers().get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    let codings = if raw { Vec::new() } else { codings(&resp).unwrap_or_default() };
    let body = resp.into_body();
    let empty = body.is_end_stream();
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let stream = body.into_data_stream().map(move |r| match r {
        Ok(b) => {
            counter.fetch_add(b.len() as u64, Ordering::Relaxed);
            Ok(b)
        }
        Err(e) => Err(std::io::Error::other(e)),
    });
    let mut reader: Pin<Box<dyn AsyncRead + Send>> = Box::pin(StreamReader::new(stream));
    let decoding = !empty && !codings.is_empty();
    if decoding {
        for c in codings.iter().rev() {
            let inner = BufReader::new(reader);
            reader = match c {
                Coding::Gzip => Box::pin(GzipDecoder::new(inner)),
                Coding::Deflate => Box::pin(ZlibDecoder::new(inner)),
                Coding::Br => Box::pin(BrotliDecoder::new(inner)),
                Coding::Zstd => Box::pin(ZstdDecoder::new(inner)),
            };
        }
    }
    // One byte more than allowed tells "exactly max_body" from "larger".
    let mut buf = Vec::with_capacity(declared.unwrap_or(8 * 1024).min(max_body).min(64 * 1024) as usize);
    let res = reader.take(max_body.saturating_add(1)).read_to_end(&mut buf).await;
    let received = received.load(Ordering::Relaxed);
    if let Err(e) = res {
        let kind = match e.into_inner().map(|inner| inner.downcast::<hyper::Error>()) {
            Some(Ok(h)) => FailureKind::Transport(*h),
            Some(Err(other)) if decoding => FailureKind::Corrupt { coding: names(&codings), why: other.to_string() },
            Some(Err(other)) => FailureKind::Io(std::io::Error::other(other.to_string())),
            None if decoding => FailureKind::Corrupt { coding: names(&codings), why: "it ends early".into() },
            None => FailureKind::Io(std::io::ErrorKind::UnexpectedEof.into()),
        };
        return Err(BodyFailure { received, declared, kind });
    }
    let truncated = buf.len() as u64 > max_body;
    buf.truncate(max_body as usize);
    Ok(ReadBody { body: Bytes::from(buf), truncated, decoded: decoding.then(|| names(&codings)) })
}

fn names(codings: &[Coding]) -> String {
    codings
        .iter()
        .map(|c| match c {
            Coding::Gzip => "gzip",
            Coding::Deflate => "deflate",
            Coding::Br => "br",
            Coding::Zstd => "zstd",
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::Coding;

    #[test]
    fn content_codings_parse_and_unknown_ones_are_kept_raw() {
        assert_eq!(Coding::parse(" GZIP"), Some(Some(Coding::Gzip)));
        assert_eq!(Coding::parse("x-gzip"), Some(Some(Coding::Gzip)));
        assert_eq!(Coding::parse("identity"), Some(None));
        assert_eq!(Coding::parse("zstd"), Some(Some(Coding::Zstd)));
        assert_eq!(Coding::parse("compress"), None);
    }
}
