//! A tiny authoritative UDP DNS responder for the `vantage.test` zone, built
//! on hickory-proto's `Message` types (no hand-rolled wire format).
//!
//! - `demo.vantage.test`      A 127.0.0.1, AAAA ::1, TXT "v=vantage-demo"
//! - `www.demo.vantage.test`  CNAME demo.vantage.test
//! - `vantage.test`           SOA (apex)
//! - anything else in the zone: NXDOMAIN (authoritative); outside: REFUSED.
//!
//! Malformed packets are dropped silently.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use hickory_resolver::proto::op::{
    Edns, Message, MessageType, Metadata, OpCode, Query, ResponseCode,
};
use hickory_resolver::proto::rr::rdata::{A, AAAA, CNAME, SOA, TXT};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;
use tokio::sync::watch;

use super::state::stopped;

const TTL: u32 = 60;
const MAX_UDP_PAYLOAD: u16 = 1232;

struct Zone {
    apex: Name,
    demo: Name,
    www: Name,
}

impl Zone {
    fn new() -> Option<Zone> {
        Some(Zone {
            apex: Name::from_str("vantage.test.").ok()?,
            demo: Name::from_str("demo.vantage.test.").ok()?,
            www: Name::from_str("www.demo.vantage.test.").ok()?,
        })
    }

    fn soa(&self) -> Option<Record> {
        let mname = Name::from_str("ns.vantage.test.").ok()?;
        let rname = Name::from_str("hostmaster.vantage.test.").ok()?;
        let soa = SOA::new(mname, rname, 1, 3600, 600, 86400, TTL);
        Some(Record::from_rdata(self.apex.clone(), TTL, RData::SOA(soa)))
    }

    /// Records at `demo.vantage.test` of type `rtype`.
    fn demo_records(&self, rtype: RecordType) -> Vec<Record> {
        let rdata = match rtype {
            RecordType::A => RData::A(A(Ipv4Addr::LOCALHOST)),
            RecordType::AAAA => RData::AAAA(AAAA(Ipv6Addr::LOCALHOST)),
            RecordType::TXT => RData::TXT(TXT::new(vec!["v=vantage-demo".to_string()])),
            _ => return Vec::new(),
        };
        vec![Record::from_rdata(self.demo.clone(), TTL, rdata)]
    }

    /// Fill `resp` for one question.
    fn answer(&self, query: &Query, resp: &mut Message) {
        let name = query.name();
        if !self.apex.zone_of(name) {
            resp.metadata.response_code = ResponseCode::Refused;
            return;
        }
        resp.metadata.authoritative = true;
        let rtype = query.query_type();
        let mut answers = Vec::new();
        if name.eq_ignore_root(&self.demo) {
            answers = self.demo_records(rtype);
        } else if name.eq_ignore_root(&self.www) {
            let cname = Record::from_rdata(
                self.www.clone(),
                TTL,
                RData::CNAME(CNAME(self.demo.clone())),
            );
            answers.push(cname);
            if rtype != RecordType::CNAME {
                answers.extend(self.demo_records(rtype));
            }
        } else if name.eq_ignore_root(&self.apex) {
            if rtype == RecordType::SOA {
                answers.extend(self.soa());
            }
        } else {
            resp.metadata.response_code = ResponseCode::NXDomain;
        }
        if answers.is_empty() {
            // NXDOMAIN or NODATA: the SOA lets resolvers cache the negative answer.
            resp.authorities.extend(self.soa());
        }
        resp.answers = answers;
    }
}

/// Build the response bytes for one datagram; `None` means "stay silent".
fn respond(zone: &Zone, packet: &[u8]) -> Option<Vec<u8>> {
    let request = Message::from_vec(packet).ok()?;
    if request.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut resp = Message::new(
        request.metadata.id,
        MessageType::Response,
        request.metadata.op_code,
    );
    resp.metadata = Metadata::response_from_request(&request.metadata);
    if request.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(MAX_UDP_PAYLOAD);
        resp.edns = Some(edns);
    }
    match (request.metadata.op_code, request.queries.as_slice()) {
        (OpCode::Query, [query]) => {
            resp.queries.push(query.clone());
            zone.answer(query, &mut resp);
        }
        (OpCode::Query, _) => resp.metadata.response_code = ResponseCode::FormErr,
        _ => resp.metadata.response_code = ResponseCode::NotImp,
    }
    resp.to_vec().ok()
}

/// Serve DNS on `socket` until shutdown.
pub async fn serve(socket: UdpSocket, mut shutdown: watch::Receiver<bool>) {
    let Some(zone) = Zone::new() else {
        tracing::error!("dns zone names failed to parse");
        return;
    };
    let mut buf = vec![0u8; 4096];
    loop {
        let (len, peer) = tokio::select! {
            _ = stopped(&mut shutdown) => return,
            received = socket.recv_from(&mut buf) => match received {
                Ok(r) => r,
                Err(e) => {
                    // e.g. ICMP port unreachable surfacing on Linux; keep serving.
                    tracing::debug!(error = %e, "dns recv failed");
                    continue;
                }
            },
        };
        let Some(reply) = respond(&zone, &buf[..len]) else {
            tracing::debug!(%peer, "ignored malformed dns packet");
            continue;
        };
        // UDP send does not block meaningfully, but stay bounded anyway.
        let sent = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            socket.send_to(&reply, peer),
        )
        .await;
        if !matches!(sent, Ok(Ok(_))) {
            tracing::debug!(%peer, "dns reply not sent");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_ignored() {
        let zone = Zone::new().expect("zone");
        for packet in [&b""[..], &b"\x00"[..], &[0xff; 12][..], &[0xab; 600][..]] {
            let _ = respond(&zone, packet); // must not panic
        }
    }
}
