//! `dns` step: one query, its answers and response code, with hickory.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Instant;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::RecordType;
use hickory_resolver::TokioResolver;
use opentelemetry::KeyValue;

use crate::config::template::Template;
use crate::steps::compile::{Checker, StepCx};
use crate::steps::context::RunContext;
use crate::steps::{KindInfo, Needs, StepKind};
use crate::vocab::{ErrorType, Observation, Phase, StepError};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[derive(schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DnsSpec {
    pub name: String,
    #[serde(default = "default_record_type")]
    pub record_type: String,
    /// `ip:port` of the resolver; default: the system's (/etc/resolv.conf).
    pub resolver: Option<String>,
    /// Every listed answer must be present (order-free).
    #[serde(default)]
    pub expect_answers: Vec<String>,
    /// Expected response code, e.g. NOERROR or NXDOMAIN. Default NOERROR.
    pub expect_rcode: Option<String>,
}

fn default_record_type() -> String {
    "A".into()
}

/// What `dns` declares to the runner, telemetry and daemon.
pub const INFO: KindInfo = KindInfo { name: "dns", span_kind: opentelemetry::trace::SpanKind::Internal, needs: Needs::RESOLVER, phases: crate::vocab::PhaseRecording::None, default_status: None };

/// Builds a `dns` step from its config (the registry calls this).
pub fn compile(spec: &DnsSpec, step: &StepCx, c: &mut Checker) -> Option<Box<dyn StepKind>> {
    let _ = step;
    DnsStep::compile(spec, c).map(|k| Box::new(k) as _)
}

#[derive(Debug)]
pub struct DnsStep {
    name: Template,
    record_type: RecordType,
    server: Option<Template>,
    /// Resolvers built for `server`, by address (a handful at most).
    resolvers: Mutex<HashMap<SocketAddr, TokioResolver>>,
    expect_answers: Vec<Template>,
    expect_rcode: ResponseCode,
}

/// A resolver without cache: a probe must measure the real lookup every time.
pub fn uncached_resolver(server: Option<SocketAddr>) -> Result<TokioResolver, String> {
    let mut builder = match server {
        None => TokioResolver::builder_tokio().map_err(|e| format!("cannot read the system resolver configuration: {e}"))?,
        Some(sa) => {
            let mut udp = ConnectionConfig::udp();
            udp.port = sa.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = sa.port();
            let ns = NameServerConfig::new(sa.ip(), true, vec![udp, tcp]);
            TokioResolver::builder_with_config(ResolverConfig::from_name_servers(vec![ns]), TokioRuntimeProvider::default()).with_options(ResolverOpts::default())
        }
    };
    let opts = builder.options_mut();
    opts.cache_size = 0;
    opts.attempts = 1;
    opts.timeout = std::time::Duration::from_secs(5);
    builder.build().map_err(|e| e.to_string())
}

/// Resolves only if `server` refuses UDP (ICMP port unreachable), which the
/// resolver's unconnected socket never learns: it would wait out its timeout.
/// Sends the same question once on a connected socket, which the kernel does
/// tell; any answer (or other error) leaves the resolver's lookup to decide.
/// Sent only after 100 ms without an answer, so a healthy resolver sees one query.
async fn refused(server: SocketAddr, name: &str, qtype: u16) -> std::io::Error {
    // Most resolvers answer well within this: only a slow (or refusing) one gets the second query.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let probe = async {
        let local: SocketAddr = if server.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { (std::net::Ipv6Addr::UNSPECIFIED, 0).into() };
        let sock = tokio::net::UdpSocket::bind(local).await.ok()?;
        sock.connect(server).await.ok()?;
        sock.send(&dns_query(name, qtype)).await.ok()?;
        let mut buf = [0u8; 512];
        match sock.recv(&mut buf).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Some(e),
            _ => None,
        }
    };
    match probe.await {
        Some(e) => e,
        None => std::future::pending().await,
    }
}

/// A minimal DNS query (RFC 1035 §4.1): header with RD, one question, class IN.
fn dns_query(name: &str, qtype: u16) -> Vec<u8> {
    let id = (uuid::Uuid::new_v4().as_u128() & 0xffff) as u16;
    let mut q = Vec::with_capacity(name.len() + 18);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.').filter(|l| !l.is_empty()) {
        let l = &label.as_bytes()[..label.len().min(63)];
        q.push(l.len() as u8);
        q.extend_from_slice(l);
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&[0, 1]);
    q
}

fn parse_server(s: &str) -> Option<SocketAddr> {
    s.parse::<SocketAddr>().ok().or_else(|| s.parse::<std::net::IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53)))
}

fn rcode_name(r: ResponseCode) -> String {
    format!("{r:?}").to_ascii_uppercase()
}

impl DnsStep {
    pub fn compile(spec: &DnsSpec, c: &mut Checker) -> Option<DnsStep> {
        let record_type = RecordType::from_str(&spec.record_type.to_ascii_uppercase())
            .map_err(|_| c.error("dns.record_type", &format!("expected a record type like A, AAAA, CNAME, MX, TXT, NS; got `{}`", spec.record_type)))
            .ok()?;
        let server = spec.resolver.as_deref().map(|s| c.template("dns.resolver", s));
        if let Some(t) = &server {
            if t.is_literal() {
                let s = spec.resolver.as_deref().unwrap_or_default();
                if parse_server(s).is_none() {
                    c.error("dns.resolver", &format!("expected `ip` or `ip:port`, got `{s}`"));
                }
            }
        }
        let expect_rcode = match &spec.expect_rcode {
            None => ResponseCode::NoError,
            Some(r) => match r.to_ascii_uppercase().as_str() {
                "NOERROR" => ResponseCode::NoError,
                "NXDOMAIN" => ResponseCode::NXDomain,
                "SERVFAIL" => ResponseCode::ServFail,
                "REFUSED" => ResponseCode::Refused,
                _ => {
                    c.error("dns.expect_rcode", &format!("expected NOERROR, NXDOMAIN, SERVFAIL or REFUSED, got `{r}`"));
                    return None;
                }
            },
        };
        Some(DnsStep {
            name: c.template("dns.name", &spec.name),
            record_type,
            server,
            resolvers: Mutex::new(HashMap::new()),
            expect_answers: spec.expect_answers.iter().map(|a| c.template("dns.expect_answers", a)).collect(),
            expect_rcode,
        })
    }

    async fn run(&self, ctx: &mut RunContext) -> Result<Observation, StepError> {
        let name = ctx.render(&self.name)?;
        let mut server = None;
        let resolver = match &self.server {
            None => ctx.env.resolver()?.clone(),
            Some(t) => {
                let text = ctx.render(t)?;
                let sa = parse_server(&text).ok_or_else(|| StepError::new(ErrorType::Config, format!("`resolver`: expected `ip` or `ip:port`, got `{text}`")))?;
                server = Some(sa);
                let mut cache = self.resolvers.lock().expect("resolver cache lock");
                match cache.get(&sa) {
                    Some(r) => r.clone(),
                    None => {
                        let r = uncached_resolver(Some(sa)).map_err(|e| StepError::new(ErrorType::Config, e))?;
                        if cache.len() >= 8 {
                            cache.clear();
                        }
                        cache.insert(sa, r.clone());
                        r
                    }
                }
            }
        };
        ctx.waiting_for = "the DNS answer";
        let t = Instant::now();
        let lookup = resolver.lookup(name.as_str(), self.record_type);
        let res = match server {
            None => lookup.await,
            Some(sa) => tokio::select! {
                r = lookup => r,
                e = refused(sa, &name, u16::from(self.record_type)) => {
                    let mut obs = Observation::default();
                    obs.phases.push(Phase { name: "dns", duration: t.elapsed() });
                    return Err(StepError::new(ErrorType::Dns, format!("query {} {name} failed: the resolver {sa} refused it ({}: nothing answers DNS on that address and port)", self.record_type, crate::steps::net::describe_io(&e))).with_observation(&obs));
                }
            },
        };
        let mut obs = Observation::default();
        obs.phases.push(Phase { name: "dns", duration: t.elapsed() });
        let (rcode, answers): (ResponseCode, Vec<String>) = match res {
            Ok(lookup) => (ResponseCode::NoError, lookup.answers().iter().map(|r| crate::vocab::clean_text(&r.data.to_string())).collect()),
            Err(NetError::Dns(DnsError::NoRecordsFound(nr))) => (nr.response_code, Vec::new()),
            Err(NetError::Dns(DnsError::ResponseCode(rc))) => (rc, Vec::new()),
            Err(e) => return Err(StepError::new(ErrorType::Dns, format!("query {} {name} failed: {e}", self.record_type)).with_observation(&obs)),
        };
        obs.attributes = vec![
            KeyValue::new("dns.question.name", name.clone()),
            KeyValue::new("dns.question.type", self.record_type.to_string()),
            KeyValue::new("dns.response_code", rcode_name(rcode)),
            KeyValue::new("dns.answers", answers.join(", ")),
        ];
        obs.body = bytes::Bytes::from(answers.join("\n"));
        if rcode != self.expect_rcode {
            let detail = if answers.is_empty() { String::new() } else { format!(" with answers [{}]", answers.join(", ")) };
            return Err(StepError::new(ErrorType::Dns, format!("expected {} for {} {name}, got {}{detail}", rcode_name(self.expect_rcode), self.record_type, rcode_name(rcode))).with_observation(&obs));
        }
        if rcode == ResponseCode::NoError && answers.is_empty() && self.expect_answers.is_empty() {
            return Err(StepError::new(ErrorType::Dns, format!("expected at least one {} record for {name}, got none", self.record_type)).with_observation(&obs));
        }
        for t in &self.expect_answers {
            let want = ctx.render(t)?;
            let norm = |s: &str| s.trim_end_matches('.').trim_matches('"').to_ascii_lowercase();
            if !answers.iter().any(|a| norm(a) == norm(&want)) {
                return Err(StepError::new(ErrorType::Assertion, format!("expected {} {name} to answer `{want}`, got [{}]", self.record_type, answers.join(", "))).with_observation(&obs));
            }
        }
        Ok(obs)
    }
}

impl StepKind for DnsStep {
    fn info(&self) -> &'static KindInfo {
        &INFO
    }
    fn execute<'a>(&'a self, ctx: &'a mut RunContext) -> BoxFuture<'a, Result<Observation, StepError>> {
        self.run(ctx).boxed()
    }
    fn error_types(&self) -> &'static [ErrorType] {
        &[ErrorType::Dns, ErrorType::Timeout, ErrorType::Assertion, ErrorType::Config]
    }
}

#[cfg(test)]
mod tests {
    use crate::steps::attempt;
    use crate::steps::compile::test_step;
    use crate::steps::context::RunContext;

    /// Answers every A query with 192.0.2.7, once per query, `count` queries.
    async fn responder(count: usize) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            for _ in 0..count {
                let (n, peer) = sock.recv_from(&mut buf).await.unwrap();
                let q = &buf[..n];
                // Header: same id, QR + RD + RA, NOERROR; one question, one answer.
                let mut r = vec![q[0], q[1], 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
                let qend = 12 + q[12..].iter().position(|&b| b == 0).unwrap() + 1 + 4;
                r.extend_from_slice(&q[12..qend]);
                r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 7]);
                sock.send_to(&r, peer).await.unwrap();
            }
        });
        (addr, task)
    }

    /// A resolver address nothing listens on: the kernel answers ICMP port unreachable.
    /// Timing-dependent (the refusal must win against the 5 s resolver timeout):
    /// looped 50 times here.
    #[tokio::test]
    async fn a_refusing_resolver_fails_at_once_naming_it() {
        let addr = {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.local_addr().unwrap()
        };
        let step = test_step(&format!("name: a\ndns: {{name: www.example.test, resolver: \"{addr}\"}}\n"));
        let mut ctx = RunContext::new_test();
        for _ in 0..50 {
            let t = std::time::Instant::now();
            let e = attempt(&mut ctx, &step).await.expect_err("nothing listens");
            assert!(t.elapsed() < std::time::Duration::from_secs(2), "took {:?}: {}", t.elapsed(), e.message);
            assert_eq!(e.error_type, crate::vocab::ErrorType::Dns, "{}", e.message);
            assert!(e.message.contains(&format!("the resolver {addr} refused it")) && e.message.contains("connection refused"), "{}", e.message);
        }
    }

    #[test]
    fn queries_are_well_formed() {
        let q = super::dns_query("www.example.test.", 1);
        assert_eq!(&q[2..12], &[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&q[12..], b"\x03www\x07example\x04test\x00\x00\x01\x00\x01");
    }

    #[tokio::test]
    async fn resolves_against_the_configured_resolver_and_checks_answers() {
        let (addr, _task) = responder(2).await;
        let step = test_step(&format!("name: a\ndns: {{name: www.example.test, resolver: \"{addr}\", expect_answers: [192.0.2.7]}}\n"));
        let mut ctx = RunContext::new_test();
        let (obs, _) = attempt(&mut ctx, &step).await.expect("answer matches");
        assert!(obs.body_text().contains("192.0.2.7"), "{}", obs.body_text());
        let wrong = test_step(&format!("name: b\ndns: {{name: www.example.test, resolver: \"{addr}\", expect_answers: [192.0.2.8]}}\n"));
        let e = attempt(&mut ctx, &wrong).await.expect_err("answer differs");
        assert!(e.message.contains("192.0.2.8"), "{}", e.message);
    }
}
