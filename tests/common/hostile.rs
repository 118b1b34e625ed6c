//! Loopback servers that behave like the worst real ones, for the HTTP client
//! suite: a raw HTTP/1.1 server whose paths misbehave on purpose (optionally
//! over TLS), an HTTP/2-only server (TLS ALPN `h2` only, or cleartext prior
//! knowledge), a small forward proxy (absolute-form and CONNECT) and a
//! WebSocket echo server (optionally over TLS). Every
//! server is a task aborted when its handle drops.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::rustls;

/// A running server; stops when dropped.
pub struct Server {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
    /// Requests seen (request line and headers), in order.
    pub seen: Arc<Mutex<Vec<String>>>,
    /// Connections accepted.
    pub accepted: Arc<Mutex<u32>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// A self-signed certificate for `localhost` and 127.0.0.1, and its PEM written to a file.
pub struct TestCert {
    pub config_chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    pub key: rustls::pki_types::PrivateKeyDer<'static>,
    pub pem_path: std::path::PathBuf,
}

impl Drop for TestCert {
    fn drop(&mut self) {
        if let Some(dir) = self.pem_path.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

pub fn test_cert() -> TestCert {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let dir = super::tempdir();
    let pem_path = dir.join("cert.pem");
    std::fs::write(&pem_path, cert.pem()).unwrap();
    TestCert { config_chain: vec![cert.der().clone()], key: rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der())), pem_path }
}

fn tls_acceptor(cert: &TestCert, alpn: &[&[u8]]) -> tokio_rustls::TlsAcceptor {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(cert.config_chain.clone(), cert.key.clone_key())
        .unwrap();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The misbehaving HTTP/1.1 server (see [`respond`] for its paths); with
/// `tls`, over TLS offering `http/1.1` only.
pub async fn hostile(tls: Option<&TestCert>) -> Server {
    hostile_on("127.0.0.1", tls).await
}

/// [`hostile`] on another loopback address (127.0.0.2: another host for cookies).
pub async fn hostile_on(ip: &str, tls: Option<&TestCert>) -> Server {
    let l = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let accepted = Arc::new(Mutex::new(0));
    let acceptor = tls.map(|c| tls_acceptor(c, &[b"http/1.1"]));
    let (s2, a2) = (seen.clone(), accepted.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else { return };
            *a2.lock().unwrap() += 1;
            let (seen, acceptor) = (s2.clone(), acceptor.clone());
            tokio::spawn(async move {
                let tcp2 = tcp.try_clone_std();
                let io: Box<dyn Io> = match acceptor {
                    Some(a) => match a.accept(tcp).await {
                        Ok(t) => Box::new(t),
                        Err(_) => return,
                    },
                    None => Box::new(tcp),
                };
                serve_conn(io, tcp2, addr, seen).await;
            });
        }
    });
    Server { addr, task, seen, accepted }
}

trait TryCloneStd {
    fn try_clone_std(&self) -> Option<std::net::TcpStream>;
}
impl TryCloneStd for TcpStream {
    /// A second handle on the socket, to reset it (SO_LINGER 0) under a TLS layer.
    fn try_clone_std(&self) -> Option<std::net::TcpStream> {
        use std::os::fd::{AsRawFd, FromRawFd};
        // SAFETY: dup() gives an independent descriptor for the same socket.
        let fd = unsafe { libc_dup(self.as_raw_fd()) };
        (fd >= 0).then(|| unsafe { std::net::TcpStream::from_raw_fd(fd) })
    }
}

extern "C" {
    #[link_name = "dup"]
    fn libc_dup(fd: i32) -> i32;
}

async fn read_request(io: &mut Box<dyn Io>) -> Option<(String, Vec<u8>)> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if io.read(&mut b).await.ok()? == 0 {
            return None;
        }
        head.push(b[0]);
        if head.len() > 64 * 1024 {
            return None;
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let len = text.lines().find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap_or(0))).unwrap_or(0);
    let mut body = vec![0u8; len];
    io.read_exact(&mut body).await.ok()?;
    Some((text, body))
}

/// Serves one connection. The first request line's path decides; paths under
/// `/silent/` close a kept-alive connection silently after one response (when
/// the next request arrives), like a load balancer's idle timeout.
async fn serve_conn(mut io: Box<dyn Io>, raw: Option<std::net::TcpStream>, addr: SocketAddr, seen: Arc<Mutex<Vec<String>>>) {
    let mut served = 0;
    while let Some((head, body)) = read_request(&mut io).await {
        seen.lock().unwrap().push(head.clone());
        let target = head.split_whitespace().nth(1).unwrap_or("/").to_string();
        if target.starts_with("/silent/") && served >= 1 {
            // Read the request, then close without a byte of response and without `Connection: close` before.
            return;
        }
        served += 1;
        if !respond(&mut io, raw.as_ref(), addr, &target, &head, &body).await || head.to_ascii_lowercase().contains("\r\nconnection: close") {
            return;
        }
    }
}

fn ok(body: &[u8], extra: &str) -> Vec<u8> {
    let mut v = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n{extra}\r\n", body.len()).into_bytes();
    v.extend_from_slice(body);
    v
}

fn redirect(status: u16, to: &str) -> Vec<u8> {
    format!("HTTP/1.1 {status} Redirect\r\nLocation: {to}\r\nContent-Length: 0\r\n\r\n").into_bytes()
}

/// Compresses `data` with `coding` (gzip, deflate, br, zstd).
pub async fn compress(coding: &str, data: &[u8]) -> Vec<u8> {
    use async_compression::tokio::write::{BrotliEncoder, GzipEncoder, ZlibEncoder, ZstdEncoder};
    let mut out = Vec::new();
    match coding {
        "gzip" => {
            let mut e = GzipEncoder::new(&mut out);
            e.write_all(data).await.unwrap();
            e.shutdown().await.unwrap();
        }
        "deflate" => {
            let mut e = ZlibEncoder::new(&mut out);
            e.write_all(data).await.unwrap();
            e.shutdown().await.unwrap();
        }
        "br" => {
            let mut e = BrotliEncoder::new(&mut out);
            e.write_all(data).await.unwrap();
            e.shutdown().await.unwrap();
        }
        "zstd" => {
            let mut e = ZstdEncoder::new(&mut out);
            e.write_all(data).await.unwrap();
            e.shutdown().await.unwrap();
        }
        other => panic!("unknown coding {other}"),
    }
    out
}

/// A gzip bomb: 16 MiB of zeros, about 16 KiB on the wire. Built once
/// (slow in a debug build: call it before timing anything).
pub async fn bomb() -> Vec<u8> {
    static BOMB: tokio::sync::OnceCell<Vec<u8>> = tokio::sync::OnceCell::const_new();
    BOMB.get_or_init(|| async {
        use async_compression::tokio::write::GzipEncoder;
        let mut out = Vec::new();
        let mut e = GzipEncoder::new(&mut out);
        let zeros = vec![0u8; 1024 * 1024];
        for _ in 0..16 {
            e.write_all(&zeros).await.unwrap();
        }
        e.shutdown().await.unwrap();
        out
    })
    .await
    .clone()
}

/// A gzip bomb of 1 GiB of zeros, about 1 MiB on the wire, built in well
/// under a second: one MiB of zeros deflated with a full flush (independent,
/// byte-aligned blocks) repeated 1024 times, and a CRC combined, not computed
/// over the whole. A valid gzip member; built once.
pub fn gib_bomb() -> &'static [u8] {
    static BOMB: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BOMB.get_or_init(|| {
        use flate2::{Compress, Compression, Crc, FlushCompress};
        const MIB: usize = 1 << 20;
        let zeros = vec![0u8; MIB];
        let mut c = Compress::new(Compression::best(), false);
        let mut chunk = Vec::with_capacity(64 * 1024);
        while c.total_in() < MIB as u64 {
            let from = c.total_in() as usize;
            c.compress_vec(&zeros[from..], &mut chunk, FlushCompress::Full).unwrap();
        }
        let mut last = Vec::with_capacity(64);
        c.compress_vec(&[], &mut last, FlushCompress::Finish).unwrap();
        let mut one = Crc::new();
        one.update(&zeros);
        let mut crc = Crc::new();
        for _ in 0..1024 {
            crc.combine(&one);
        }
        assert_eq!(crc.amount(), 1 << 30);
        let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
        for _ in 0..1024 {
            out.extend_from_slice(&chunk);
        }
        out.extend_from_slice(&last);
        out.extend_from_slice(&crc.sum().to_le_bytes());
        out.extend_from_slice(&crc.amount().to_le_bytes());
        out
    })
}

/// Writes the response for `target`; false ends the connection.
async fn respond(io: &mut Box<dyn Io>, raw: Option<&std::net::TcpStream>, addr: SocketAddr, target: &str, head: &str, body: &[u8]) -> bool {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let path = path.strip_prefix("/silent").unwrap_or(path);
    let out: Vec<u8> = match path {
        "/ok" => ok(b"hello", ""),
        // /chain/N: N redirects, then 200 "arrived".
        p if p.starts_with("/chain/") => {
            let n: u32 = p["/chain/".len()..].parse().unwrap_or(0);
            let prefix = if target.starts_with("/silent/") { "/silent" } else { "" };
            if n == 0 {
                ok(b"arrived", "")
            } else {
                redirect(302, &format!("{prefix}/chain/{}", n - 1))
            }
        }
        "/loop" => redirect(302, "/loop"),
        // /to?STATUS&URL: redirect with STATUS to URL.
        "/to" => {
            let (status, to) = query.split_once('&').unwrap();
            redirect(status.parse().unwrap(), &urlencoding_decode(to))
        }
        // The request as received (method, headers, body), as the body.
        p if p.ends_with("/echo") => {
            let mut b = head.as_bytes().to_vec();
            b.extend_from_slice(body);
            ok(&b, "")
        }
        "/set-cookie" => ok(b"set", "Set-Cookie: sid=abc; Path=/app\r\nSet-Cookie: other=1; Path=/elsewhere\r\n"),
        // Content-Length: 5000, then 5 bytes and a clean close.
        "/lie-length" => {
            io.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\nhello").await.ok();
            io.flush().await.ok();
            let _ = io.shutdown().await;
            return false;
        }
        // Content-Length: 100, 3 bytes, a pause so they arrive, then a TCP reset.
        "/reset-mid-body" => {
            io.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc").await.ok();
            io.flush().await.ok();
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Some(raw) = raw {
                let _ = socket2_linger_zero(raw);
            }
            return false;
        }
        "/header-flood" => {
            let mut v = b"HTTP/1.1 200 OK\r\n".to_vec();
            for i in 0..5000 {
                write!(v, "X-Flood-{i}: {}\r\n", "x".repeat(40)).unwrap();
            }
            v.extend_from_slice(b"Content-Length: 2\r\n\r\nok");
            v
        }
        "/bomb-gib" => ok(gib_bomb(), "Content-Encoding: gzip\r\n"),
        "/bomb" => {
            let b = bomb().await;
            ok(&b, "Content-Encoding: gzip\r\n")
        }
        // /encoded/CODING: "hello CODING" compressed with CODING.
        p if p.starts_with("/encoded/") => {
            let coding = &p["/encoded/".len()..];
            let b = compress(coding, format!("hello {coding} decoded").as_bytes()).await;
            ok(&b, &format!("Content-Encoding: {coding}\r\n"))
        }
        "/corrupt-gzip" => ok(b"this is not gzip at all", "Content-Encoding: gzip\r\n"),
        "/stall" => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            return false;
        }
        _ => format!("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nX-Server: {addr}\r\n\r\n").into_bytes(),
    };
    io.write_all(&out).await.is_ok() && io.flush().await.is_ok()
}

fn urlencoding_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes()).next().map(|(_, v)| v.into_owned()).unwrap_or_default()
}

/// SO_LINGER 0: when the connection's last descriptor closes, the kernel sends RST instead of FIN.
fn socket2_linger_zero(raw: &std::net::TcpStream) -> std::io::Result<()> {
    let s = raw.try_clone()?;
    s.set_nonblocking(true)?;
    // A zero linger does not block on drop: it resets at once.
    #[allow(deprecated)]
    TcpStream::from_std(s)?.set_linger(Some(Duration::ZERO))
}

/// An HTTP/2-only server: over TLS offering ALPN `h2` only, or cleartext with
/// prior knowledge. Answers every request 200 with "h2 only" and `x-path`.
pub async fn h2_only(tls: Option<&TestCert>) -> Server {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let accepted = Arc::new(Mutex::new(0));
    let acceptor = tls.map(|c| tls_acceptor(c, &[b"h2"]));
    let (s2, a2) = (seen.clone(), accepted.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else { return };
            *a2.lock().unwrap() += 1;
            let (seen, acceptor) = (s2.clone(), acceptor.clone());
            tokio::spawn(async move {
                let io: Box<dyn Io> = match acceptor {
                    Some(a) => match a.accept(tcp).await {
                        Ok(t) => Box::new(t),
                        Err(_) => return,
                    },
                    None => Box::new(tcp),
                };
                let Ok(mut conn) = h2::server::handshake(io).await else { return };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    seen.lock().unwrap().push(format!("{} {} {:?}", req.method(), req.uri(), req.version()));
                    let resp = http::Response::builder().status(200).header("x-path", req.uri().path()).body(()).unwrap();
                    if let Ok(mut send) = respond.send_response(resp, false) {
                        let _ = send.send_data(bytes::Bytes::from_static(b"h2 only"), true);
                    }
                }
            });
        }
    });
    Server { addr, task, seen, accepted }
}

/// A loopback listener handing every accepted connection to `conn` (a task
/// each) with the server's `seen` list; counts connections in `accepted`.
async fn serve<F, Fut>(conn: F) -> Server
where
    F: Fn(Box<dyn Io>, Arc<Mutex<Vec<String>>>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let accepted = Arc::new(Mutex::new(0));
    let (s2, a2) = (seen.clone(), accepted.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else { return };
            *a2.lock().unwrap() += 1;
            tokio::spawn(conn(Box::new(tcp), s2.clone()));
        }
    });
    Server { addr, task, seen, accepted }
}

/// A proxy's view of the one request of a connection, recorded in `seen`.
struct ProxyRequest {
    head: String,
    method: String,
    target: String,
    body: Vec<u8>,
}

async fn proxy_request(io: &mut Box<dyn Io>, seen: &Mutex<Vec<String>>) -> Option<ProxyRequest> {
    let (head, body) = read_request(io).await?;
    seen.lock().unwrap().push(head.clone());
    let mut parts = head.lines().next().unwrap_or_default().split_whitespace();
    let (method, target) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
    Some(ProxyRequest { head, method, target, body })
}

/// A forward proxy: absolute-form requests are relayed to their origin
/// (HTTP/1.1, one request per connection), CONNECT opens a tunnel. `seen`
/// holds each request's head.
pub async fn forward_proxy() -> Server {
    serve(|mut io, seen| async move {
        let Some(ProxyRequest { head, method, target, body }) = proxy_request(&mut io, &seen).await else { return };
        if method == "CONNECT" {
            let Ok(mut up) = TcpStream::connect(&target).await else {
                let _ = io.write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n").await;
                return;
            };
            if io.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await.is_err() {
                return;
            }
            let _ = tokio::io::copy_bidirectional(&mut io, &mut up).await;
            return;
        }
        let Ok(u) = url::Url::parse(&target) else {
            let _ = io.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n").await;
            return;
        };
        let Ok(mut up) = TcpStream::connect((u.host_str().unwrap_or(""), u.port_or_known_default().unwrap_or(80))).await else { return };
        let path = match u.query() {
            Some(q) => format!("{}?{q}", u.path()),
            None => u.path().to_string(),
        };
        let rest = head.split_once("\r\n").map(|(_, r)| r).unwrap_or("");
        let rest: String = rest.split("\r\n").filter(|h| !h.to_ascii_lowercase().starts_with("proxy-")).collect::<Vec<_>>().join("\r\n");
        let fwd = format!("{method} {path} HTTP/1.1\r\n{rest}");
        let fwd = fwd.replacen("\r\n\r\n", "\r\nConnection: close\r\nVia: 1.1 test-proxy\r\n\r\n", 1);
        if up.write_all(fwd.as_bytes()).await.is_err() || up.write_all(&body).await.is_err() {
            return;
        }
        let mut resp = Vec::new();
        let _ = up.read_to_end(&mut resp).await;
        let _ = io.write_all(&resp).await;
        let _ = io.shutdown().await;
    })
    .await
}

/// Answers 503 to the first `fails` requests, then 200 "recovered" (one
/// request per connection): a target that recovers, for retries.
pub async fn flaky(fails: u32) -> Server {
    serve(move |mut io, seen| async move {
        let Some((head, _)) = read_request(&mut io).await else { return };
        let n = {
            let mut s = seen.lock().unwrap();
            s.push(head);
            s.len() as u32
        };
        let resp = if n <= fails {
            format!("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 12\r\nConnection: close\r\n\r\nnot yet {n:>4}")
        } else {
            "HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\nrecovered".to_string()
        };
        let _ = io.write_all(resp.as_bytes()).await;
        let _ = io.shutdown().await;
    })
    .await
}

/// A proxy that refuses everyone with 407 and, like some proxies' error
/// pages, echoes the request it got (credentials included) in the body.
pub async fn refusing_proxy() -> Server {
    serve(|mut io, seen| async move {
        let Some(ProxyRequest { head, .. }) = proxy_request(&mut io, &seen).await else { return };
        let resp = format!(
            "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"test\"\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{head}",
            head.len()
        );
        let _ = io.write_all(resp.as_bytes()).await;
        let _ = io.shutdown().await;
    })
    .await
}

/// A WebSocket server echoing text messages, over TLS (ALPN `http/1.1`)
/// with `tls`. `seen` holds each handshake request's head.
// The handshake callback's error type is tungstenite's, not ours.
#[allow(clippy::result_large_err)]
pub async fn ws_echo(tls: Option<&TestCert>) -> Server {
    let acceptor = tls.map(|c| tls_acceptor(c, &[b"http/1.1"]));
    serve(move |io, seen| {
        let acceptor = acceptor.clone();
        async move {
            let io: Box<dyn Io> = match acceptor {
                Some(a) => match a.accept(io).await {
                    Ok(t) => Box::new(t),
                    Err(_) => return,
                },
                None => io,
            };
            let record = |req: &tokio_tungstenite::tungstenite::handshake::server::Request, resp| {
                let mut head = format!("{} {}\r\n", req.method(), req.uri());
                for (k, v) in req.headers() {
                    head.push_str(&format!("{k}: {}\r\n", String::from_utf8_lossy(v.as_bytes())));
                }
                seen.lock().unwrap().push(head);
                Ok(resp)
            };
            let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(io, record).await else { return };
            use futures_util::{SinkExt, StreamExt};
            while let Some(Ok(m)) = ws.next().await {
                if m.is_text() && ws.send(m).await.is_err() {
                    break;
                }
            }
        }
    })
    .await
}

/// Runs the `openssl` command line in `dir` (for certificates rcgen cannot
/// make: SHA-1 signatures, 1024-bit RSA keys). Installed by
/// `.ci/install-test-deps` (install_openssl).
pub fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `openssl` ({e}): install the openssl package (.ci/install-test-deps does)"));
    assert!(out.status.success(), "openssl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// A certificate for `localhost`/127.0.0.1 made with openssl: a CA with an
/// RSA key of `ca_bits`, and an ECDSA leaf it signs with `digest` (`sha1`,
/// `sha256`). The server presents leaf and CA; `pem_path` is the CA.
pub fn openssl_cert(ca_bits: u32, digest: &str) -> TestCert {
    use rustls::pki_types::pem::PemObject;
    let dir = super::tempdir();
    let newkey = format!("rsa:{ca_bits}");
    openssl(&dir, &["req", "-x509", "-newkey", &newkey, "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=Vantage weak test CA", "-days", "30", "-sha256"]);
    openssl(&dir, &["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=localhost"]);
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n").unwrap();
    let digest = format!("-{digest}");
    openssl(&dir, &["x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "leaf.pem", "-days", "30", &digest, "-extfile", "ext.cnf"]);
    let leaf = rustls::pki_types::CertificateDer::from_pem_file(dir.join("leaf.pem")).unwrap();
    let ca = rustls::pki_types::CertificateDer::from_pem_file(dir.join("ca.pem")).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(dir.join("leaf.key")).unwrap();
    TestCert { config_chain: vec![leaf, ca], key, pem_path: dir.join("ca.pem") }
}

/// A CA (`pem_path`), two leaves for `localhost`/127.0.0.1 it signed
/// (serials 0x2a and 0x2b) and a CRL of that CA revoking 0x2a.
pub struct RevocationPki {
    pub revoked: TestCert,
    pub good: TestCert,
    pub ca_pem: std::path::PathBuf,
    pub crl_pem: std::path::PathBuf,
}

pub fn revocation_pki() -> RevocationPki {
    use rcgen::{BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason, RevokedCertParams, SerialNumber};
    let dir = super::tempdir();
    let now = time::OffsetDateTime::now_utc();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name.push(DnType::CommonName, "Vantage revocation test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let leaf = |serial: u8| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, format!("revocation test leaf {serial:x}"));
        p.serial_number = Some(SerialNumber::from(vec![serial]));
        let cert = p.signed_by(&key, &issuer).unwrap();
        TestCert { config_chain: vec![cert.der().clone()], key: rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der())), pem_path: dir.join("ca.pem") }
    };
    let crl = CertificateRevocationListParams {
        this_update: now - time::Duration::hours(1),
        next_update: now + time::Duration::days(7),
        crl_number: SerialNumber::from(vec![1]),
        issuing_distribution_point: None,
        revoked_certs: vec![RevokedCertParams { serial_number: SerialNumber::from(vec![0x2a]), revocation_time: now - time::Duration::minutes(30), reason_code: Some(RevocationReason::KeyCompromise), invalidity_date: None }],
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(&issuer)
    .unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("crl.pem"), crl.pem().unwrap()).unwrap();
    RevocationPki { revoked: leaf(0x2a), good: leaf(0x2b), ca_pem: dir.join("ca.pem"), crl_pem: dir.join("crl.pem") }
}
