//! Timed DNS resolution, TCP connect and TLS handshake, shared by the
//! `http`, `tcp` and `tls` steps so their phases mean the same thing.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
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
            let lookup = ctx.env.resolver()?.lookup_ip(host).await.map_err(|e| {
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
    Err(StepError::new(
        ErrorType::Connect,
        format!(
            "could not connect to {host}:{port} ({sa}): {}",
            describe_io(&e)
        ),
    ))
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

/// A stream TLS can run over, and the peer to ask again for the certificate
/// chain when verification fails (none through a proxy tunnel).
pub trait TlsTransport: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin {
    fn direct_peer(&self) -> Option<SocketAddr> {
        None
    }
}

impl TlsTransport for TcpStream {
    fn direct_peer(&self) -> Option<SocketAddr> {
        self.peer_addr().ok()
    }
}

impl TlsTransport for hyper_util::rt::TokioIo<hyper::upgrade::Upgraded> {}

/// TLS over `io`: a TCP stream, or a tunnel through a proxy (`http` steps).
pub async fn handshake<IO>(ctx: &mut RunContext, tcp: IO, server_name: &str, config: Arc<ClientConfig>, phases: &mut Vec<Phase>) -> Result<(TlsStream<IO>, TlsFacts), StepError>
where
    IO: TlsTransport,
{
    let name = ServerName::try_from(server_name.to_string()).map_err(|e| StepError::new(ErrorType::Config, format!("`{server_name}` is not a valid TLS server name: {e}")))?;
    ctx.waiting_for = "the TLS handshake";
    let t = Instant::now();
    let peer = tcp.direct_peer();
    let offered = config.alpn_protocols.clone();
    let stream = match tokio_rustls::TlsConnector::from(config)
        .connect(name.clone(), tcp)
        .await
    {
        Ok(s) => s,
        Err(e) => {
            let chain = match (tls_error(&e), peer) {
                (Some(tokio_rustls::rustls::Error::InvalidCertificate(_)), Some(peer)) => {
                    presented_chain(ctx, peer, name).await
                }
                _ => Vec::new(),
            };
            return Err(StepError::new(
                ErrorType::Tls,
                describe_handshake_failure(&e, server_name, &chain, &offered),
            ));
        }
    };
    phases.push(Phase {
        name: "tls",
        duration: t.elapsed(),
    });
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
            let at = unix_time(cert.validity().not_after.timestamp());
            facts.not_after = Some(facts.not_after.map_or(at, |cur| cur.min(at)));
            if i == 0 {
                facts.subject = cert.subject().to_string();
                facts.issuer = cert.issuer().to_string();
            }
        }
    }
    Ok((stream, facts))
}

fn unix_time(secs: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH
        .checked_add(Duration::from_secs(secs.max(0) as u64))
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

fn date(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The rustls error inside an I/O error from a handshake, if that is what it is.
fn tls_error(e: &io::Error) -> Option<&tokio_rustls::rustls::Error> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<tokio_rustls::rustls::Error>())
}

/// The chain a server presents, fetched again without verification after a
/// certificate failure, so the message can name its issuer, names and dates.
async fn presented_chain(
    ctx: &RunContext,
    peer: SocketAddr,
    name: ServerName<'static>,
) -> Vec<CertificateDer<'static>> {
    let fetch = async {
        let tcp = TcpStream::connect(peer).await.ok()?;
        let s = tokio_rustls::TlsConnector::from(ctx.env.tls().ok()?.insecure.clone())
            .connect(name, tcp)
            .await
            .ok()?;
        Some(
            s.get_ref()
                .1
                .peer_certificates()?
                .iter()
                .map(|c| c.clone().into_owned())
                .collect(),
        )
    };
    tokio::time::timeout(Duration::from_secs(2), fetch)
        .await
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// `NoApplicationProtocol` → `no application protocol`: an enum's name in words.
fn words(debug: String) -> String {
    let mut out = String::new();
    for (i, ch) in debug.chars().enumerate() {
        if ch.is_ascii_uppercase() && i > 0 {
            out.push(' ');
        }
        out.push(ch.to_ascii_lowercase());
    }
    out
}

/// An I/O error in words, with what had happened before it.
pub fn describe_io(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".into(),
        io::ErrorKind::ConnectionReset => "connection reset by peer".into(),
        io::ErrorKind::ConnectionAborted => "connection aborted".into(),
        io::ErrorKind::BrokenPipe => "the peer closed the connection (broken pipe)".into(),
        io::ErrorKind::UnexpectedEof => "the peer closed the connection".into(),
        io::ErrorKind::TimedOut => "timed out".into(),
        io::ErrorKind::HostUnreachable => "host unreachable".into(),
        io::ErrorKind::NetworkUnreachable => "network unreachable".into(),
        io::ErrorKind::AddrNotAvailable => "address not available".into(),
        // Operators need the cause, not the OS error number.
        _ => {
            let text = e.to_string();
            match text.find(" (os error") {
                Some(i) => text[..i].to_string(),
                None => text,
            }
        }
    }
}

/// The first certificate of the chain signed with a weak algorithm (MD5, SHA-1):
/// which one (`the server's certificate` or the intermediate's subject) and the algorithm.
fn weak_signature(chain: &[CertificateDer<'_>]) -> Option<(String, &'static str)> {
    const WEAK: [(&str, &str); 5] = [
        ("1.2.840.113549.1.1.5", "SHA-1 (sha1WithRSAEncryption)"),
        ("1.2.840.113549.1.1.4", "MD5 (md5WithRSAEncryption)"),
        ("1.2.840.113549.1.1.2", "MD2 (md2WithRSAEncryption)"),
        ("1.2.840.10045.4.1", "SHA-1 (ecdsa-with-SHA1)"),
        ("1.2.840.10040.4.3", "SHA-1 (dsa-with-sha1)"),
    ];
    chain.iter().enumerate().find_map(|(i, der)| {
        let (_, c) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
        let oid = c.signature_algorithm.algorithm.to_id_string();
        let alg = WEAK.iter().find(|(o, _)| *o == oid)?.1;
        let who = if i == 0 { "the server's certificate".to_string() } else { format!("the intermediate `{}`", c.subject()) };
        Some((who, alg))
    })
}

/// The leaf's issuer (when the server presents it) with an RSA key under 2048 bits, and its size.
fn weak_issuer_key(chain: &[CertificateDer<'_>]) -> Option<(String, usize)> {
    let (_, leaf) = x509_parser::parse_x509_certificate(chain.first()?.as_ref()).ok()?;
    chain.iter().skip(1).find_map(|der| {
        let (_, c) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
        if c.subject() != leaf.issuer() {
            return None;
        }
        match c.public_key().parsed().ok()? {
            x509_parser::public_key::PublicKey::RSA(rsa) if rsa.key_size() < 2048 => Some((c.subject().to_string(), rsa.key_size())),
            _ => None,
        }
    })
}

/// A failed TLS handshake in an operator's words: which certificate problem
/// (with the dates, issuer or names involved), or what the server did.
pub fn describe_handshake_failure(
    e: &io::Error,
    server_name: &str,
    chain: &[CertificateDer<'_>],
    offered_alpn: &[Vec<u8>],
) -> String {
    use tokio_rustls::rustls::{AlertDescription, CertificateError, Error as TlsError};
    let leaf = chain.first().and_then(|der| {
        x509_parser::parse_x509_certificate(der.as_ref())
            .ok()
            .map(|(_, c)| c)
    });
    let subject = leaf
        .as_ref()
        .map(|c| c.subject().to_string())
        .unwrap_or_default();
    let issuer = leaf
        .as_ref()
        .map(|c| c.issuer().to_string())
        .unwrap_or_default();
    let names = || -> Vec<String> {
        let Some(c) = &leaf else { return Vec::new() };
        let mut v: Vec<String> = c
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .map(|n| match n {
                        x509_parser::extensions::GeneralName::DNSName(d) => d.to_string(),
                        x509_parser::extensions::GeneralName::IPAddress(b) => match b.len() {
                            4 => std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string(),
                            16 => <[u8; 16]>::try_from(*b)
                                .map(|a| std::net::Ipv6Addr::from(a).to_string())
                                .unwrap_or_default(),
                            _ => String::new(),
                        },
                        _ => String::new(),
                    })
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        if v.is_empty() && !subject.is_empty() {
            v.push(subject.clone());
        }
        v
    };
    let cert = format!("the certificate of `{server_name}`");
    let Some(tls) = tls_error(e) else {
        return match e.kind() {
            io::ErrorKind::UnexpectedEof => format!("TLS handshake with `{server_name}` failed: the server closed the connection during the handshake (is it speaking TLS on this port?)"),
            _ => format!("TLS handshake with `{server_name}` failed: {}", describe_io(e)),
        };
    };
    let why = match tls {
        TlsError::InvalidCertificate(ce) => match ce {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                let at = match ce {
                    CertificateError::ExpiredContext { not_after, .. } => Some(unix_time(not_after.as_secs() as i64)),
                    _ => leaf.as_ref().map(|c| unix_time(c.validity().not_after.timestamp())),
                };
                match at {
                    Some(t) => format!("{cert} expired on {}", date(t)),
                    None => format!("{cert} has expired"),
                }
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                let at = match ce {
                    CertificateError::NotValidYetContext { not_before, .. } => Some(unix_time(not_before.as_secs() as i64)),
                    _ => leaf.as_ref().map(|c| unix_time(c.validity().not_before.timestamp())),
                };
                match at {
                    Some(t) => format!("{cert} is not valid yet: it becomes valid on {} (is a clock wrong?)", date(t)),
                    None => format!("{cert} is not valid yet"),
                }
            }
            CertificateError::UnknownIssuer if !subject.is_empty() && subject == issuer => {
                format!("{cert} is self-signed (`{subject}`) and not trusted: add it to `ca_file`, or set `tls_verify: false` (`verify: false` on a `tls` step) to check only the connection")
            }
            CertificateError::UnknownIssuer if !issuer.is_empty() => format!("{cert} is issued by `{issuer}`, an unknown issuer (not in the trusted roots): add that CA to `ca_file` if it is a private CA"),
            CertificateError::UnknownIssuer => format!("{cert} is issued by an unknown issuer (not in the trusted roots)"),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                let mut held = names();
                if held.is_empty() {
                    // The library's list is debug text (`DnsName("a.test")`): keep only the names.
                    if let CertificateError::NotValidForNameContext { presented, .. } = ce {
                        held = presented.iter().map(|p| p.split_once('(').map_or(p.as_str(), |(_, r)| r.trim_end_matches(')').trim_matches('"')).to_string()).collect();
                    }
                }
                let held = if held.is_empty() { "no names".to_string() } else { held.join(", ") };
                format!("hostname mismatch: the certificate presented for `{server_name}` is valid only for {held}")
            }
            CertificateError::Revoked => {
                let serial = leaf.as_ref().map(|c| format!(" (serial {})", c.raw_serial_as_string())).unwrap_or_default();
                format!("{cert}{serial} has been revoked by its issuer: it is on the certificate revocation list (`crl_file`)")
            }
            CertificateError::UnknownRevocationStatus => format!("{cert}: its revocation status is unknown (no CRL from its issuer)"),
            #[allow(deprecated)] // rustls still maps webpki's context-free error to it
            CertificateError::UnsupportedSignatureAlgorithm
            | CertificateError::UnsupportedSignatureAlgorithmContext { .. }
            | CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => match weak_signature(chain) {
                Some((who, alg)) => format!("{cert} is not trusted: {who} is signed with {alg}, a weak signature algorithm that is no longer accepted (reissue it with SHA-256 or better)"),
                None => format!("{cert} is signed with an unsupported signature algorithm"),
            },
            CertificateError::BadSignature => match weak_issuer_key(chain) {
                Some((issuer, bits)) => format!("{cert} is not trusted: its issuer `{issuer}` signs with a {bits}-bit RSA key, too weak to be accepted (at least 2048 bits)"),
                None => format!("{cert} has a signature that does not verify (a weak key of its issuer, or a corrupted certificate)"),
            },
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => format!("{cert} is not valid for TLS server authentication (extended key usage)"),
            CertificateError::BadEncoding => format!("{cert} is malformed"),
            // e.g. a CA certificate served as the server's own (what `openssl req -x509` makes).
            _ if !subject.is_empty() && subject == issuer => format!("{cert} is self-signed (`{subject}`) and was rejected: it cannot serve as a server certificate"),
            _ if !issuer.is_empty() => format!("{cert} (`{subject}`, issued by `{issuer}`) was rejected by verification"),
            _ => format!("{cert} was rejected by verification"),
        },
        TlsError::AlertReceived(AlertDescription::NoApplicationProtocol) => {
            let offered: Vec<String> = offered_alpn.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect();
            format!("the server supports none of the offered application protocols (ALPN: {}); set the step's `alpn` to what the server speaks, or leave it out", offered.join(", "))
        }
        TlsError::AlertReceived(a) => format!("the server aborted the handshake (TLS alert: {})", words(format!("{a:?}"))),
        TlsError::PeerIncompatible(_) => "the server and the agent have no TLS version or cipher suite in common".to_string(),
        TlsError::InvalidMessage(_) | TlsError::PeerMisbehaved(_) => "the server broke the TLS protocol".to_string(),
        TlsError::NoApplicationProtocol => "the server chose an application protocol that was not offered (ALPN)".to_string(),
        TlsError::NoCertificatesPresented => "the server presented no certificate".to_string(),
        _ => "the handshake was rejected".to_string(),
    };
    format!("TLS handshake with `{server_name}` failed: {why}")
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
