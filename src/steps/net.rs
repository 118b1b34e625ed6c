//! Timed DNS resolution, TCP connect and TLS handshake, shared by the
//! `http`, `tcp` and `tls` steps so their phases mean the same thing.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::ClientConfig;

use crate::steps::context::RunContext;
use crate::vocab::{ErrorType, Phase, StepError};

/// Splits `host:port` (or `[v6]:port`) into its parts.
pub fn split_host_port(addr: &str) -> Result<(String, u16), StepError> {
    let bad = || StepError::new(ErrorType::Config, format!("expected `host:port`, got `{addr}`"));
    if let Ok(sa) = addr.parse::<SocketAddr>() {
        return Ok((sa.ip().to_string(), sa.port()));
    }
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let port = port.parse().map_err(|_| bad())?;
    Ok((host.trim_start_matches('[').trim_end_matches(']').to_string(), port))
}

/// Resolves `host` with the agent's resolver and connects to the first address
/// that answers. Records `dns` and `connect` phases.
pub async fn connect_tcp(ctx: &mut RunContext, host: &str, port: u16, phases: &mut Vec<Phase>) -> Result<(TcpStream, SocketAddr), StepError> {
    let addrs: Vec<IpAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => {
            ctx.waiting_for = "the DNS answer";
            let t = Instant::now();
            let lookup = ctx.env.resolver.lookup_ip(host).await.map_err(|e| {
                let why = if e.is_nx_domain() { "no such domain (NXDOMAIN)".to_string() } else { e.to_string() };
                StepError::new(ErrorType::Dns, format!("could not resolve `{host}`: {why}"))
            })?;
            phases.push(Phase { name: "dns", duration: t.elapsed() });
            lookup.iter().collect()
        }
    };
    if addrs.is_empty() {
        return Err(StepError::new(ErrorType::Dns, format!("`{host}` resolved to no addresses")));
    }
    ctx.waiting_for = "the TCP connection";
    let t = Instant::now();
    let mut last_err = None;
    for ip in &addrs {
        let sa = SocketAddr::new(*ip, port);
        match TcpStream::connect(sa).await {
            Ok(s) => {
                phases.push(Phase { name: "connect", duration: t.elapsed() });
                let _ = s.set_nodelay(true);
                return Ok((s, sa));
            }
            Err(e) => last_err = Some((sa, e)),
        }
    }
    let (sa, e) = last_err.expect("at least one address was tried");
    Err(StepError::new(ErrorType::Connect, format!("could not connect to {host}:{port} ({sa}): {}", io_cause(&e))))
}

/// An I/O failure in plain words ("connection refused"), without the OS error number.
pub fn io_cause(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => "connection refused".into(),
        K::ConnectionReset => "connection reset by peer".into(),
        K::ConnectionAborted => "connection aborted".into(),
        K::BrokenPipe => "the peer closed the connection while we were sending".into(),
        K::UnexpectedEof => "the peer closed the connection".into(),
        K::TimedOut => "timed out".into(),
        K::HostUnreachable => "host unreachable".into(),
        K::NetworkUnreachable => "network unreachable".into(),
        K::AddrNotAvailable => "address not available".into(),
        _ => {
            let text = e.to_string();
            match text.find(" (os error") {
                Some(i) => text[..i].to_string(),
                None => text,
            }
        }
    }
}

/// What the TLS handshake established.
pub struct TlsFacts {
    pub version: String,
    pub cipher: String,
    /// Earliest `not_after` in the presented chain.
    pub not_after: Option<SystemTime>,
    pub subject: String,
    pub issuer: String,
}

/// TLS over `io`: a TCP stream, or a tunnel through a proxy (`http` steps).
pub async fn handshake<IO>(ctx: &mut RunContext, tcp: IO, server_name: &str, config: Arc<ClientConfig>, phases: &mut Vec<Phase>) -> Result<(TlsStream<IO>, TlsFacts), StepError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let name = ServerName::try_from(server_name.to_string()).map_err(|e| StepError::new(ErrorType::Config, format!("`{server_name}` is not a valid TLS server name: {e}")))?;
    ctx.waiting_for = "the TLS handshake";
    let t = Instant::now();
    let stream = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.map_err(|e| StepError::new(ErrorType::Tls, format!("TLS handshake with `{server_name}` failed: {e}")))?;
    phases.push(Phase { name: "tls", duration: t.elapsed() });
    let (_, conn) = stream.get_ref();
    let mut facts = TlsFacts {
        version: conn.protocol_version().map(|v| format!("{v:?}")).unwrap_or_default(),
        cipher: conn.negotiated_cipher_suite().map(|c| format!("{:?}", c.suite())).unwrap_or_default(),
        not_after: None,
        subject: String::new(),
        issuer: String::new(),
    };
    for (i, der) in conn.peer_certificates().unwrap_or_default().iter().enumerate() {
        if let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) {
            let ts = cert.validity().not_after.timestamp();
            let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(ts.max(0) as u64);
            facts.not_after = Some(facts.not_after.map_or(at, |cur| cur.min(at)));
            if i == 0 {
                facts.subject = cert.subject().to_string();
                facts.issuer = cert.issuer().to_string();
            }
        }
    }
    Ok((stream, facts))
}

#[cfg(test)]
mod tests {
    use super::{connect_tcp, split_host_port};
    use crate::steps::context::RunContext;
    use crate::vocab::ErrorType;

    #[test]
    fn host_port_pairs_split_including_ipv6() {
        assert_eq!(split_host_port("example.test:443").unwrap(), ("example.test".to_string(), 443));
        assert_eq!(split_host_port("[::1]:8080").unwrap(), ("::1".to_string(), 8080));
        assert_eq!(split_host_port("no-port").unwrap_err().error_type, ErrorType::Config);
    }

    #[tokio::test]
    async fn connecting_to_an_ip_records_only_the_connect_phase() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let mut phases = Vec::new();
        let (_s, peer) = connect_tcp(&mut RunContext::new_test(), "127.0.0.1", port, &mut phases).await.expect("listening");
        assert_eq!(peer.port(), port);
        let names: Vec<&str> = phases.iter().map(|p| p.name).collect();
        assert_eq!(names, ["connect"]);
    }

    #[tokio::test]
    async fn a_refused_connection_is_named_in_plain_words() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let e = connect_tcp(&mut RunContext::new_test(), "127.0.0.1", port, &mut Vec::new()).await.expect_err("nothing listens");
        assert_eq!(e.error_type, ErrorType::Connect);
        assert!(e.message.ends_with(": connection refused"), "{}", e.message);
    }
}
