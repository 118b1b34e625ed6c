//! Test PKI (rcgen) and real TLS servers on loopback: a TLS-terminating
//! proxy in front of the Rotel collector (Rotel 0.0.1a15 has no TLS
//! receiver), and an HTTPS file server for probe bundles.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// A CA, a server certificate for `localhost`/127.0.0.1 and a client certificate, all signed by the CA.
pub struct Pki {
    pub ca_file: PathBuf,
    pub client_cert_pem: String,
    pub client_key_pem: String,
    ca_der: CertificateDer<'static>,
    server_der: CertificateDer<'static>,
    server_key: Vec<u8>,
}

impl Pki {
    pub fn new(dir: &Path) -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.distinguished_name
            .push(DnType::CommonName, "Vantage test CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);

        let server_key = KeyPair::generate().unwrap();
        let mut sp =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        sp.distinguished_name.push(DnType::CommonName, "localhost");
        let server = sp.signed_by(&server_key, &issuer).unwrap();

        let client_key = KeyPair::generate().unwrap();
        let mut cp = CertificateParams::new(vec!["vantage-agent".to_string()]).unwrap();
        cp.distinguished_name
            .push(DnType::CommonName, "vantage-agent");
        let client = cp.signed_by(&client_key, &issuer).unwrap();

        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca_cert.pem()).unwrap();
        Pki {
            ca_file,
            client_cert_pem: client.pem(),
            client_key_pem: client_key.serialize_pem(),
            ca_der: ca_cert.der().clone(),
            server_der: server.der().clone(),
            server_key: server_key.serialize_der(),
        }
    }

    /// A server config; with `client_auth`, only clients with a certificate from this CA get in.
    pub fn server_config(&self, client_auth: bool, alpn: &[&[u8]]) -> Arc<ServerConfig> {
        let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
        let b = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key.clone()));
        let mut cfg = if client_auth {
            let mut roots = RootCertStore::empty();
            roots.add(self.ca_der.clone()).unwrap();
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
            b.with_client_cert_verifier(verifier)
                .with_single_cert(vec![self.server_der.clone()], key)
                .unwrap()
        } else {
            b.with_no_client_auth()
                .with_single_cert(vec![self.server_der.clone()], key)
                .unwrap()
        };
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(cfg)
    }
}

/// TLS in front of a plain TCP port. Records the decrypted client→server
/// bytes (first 256 KiB) and how many handshakes presented a client certificate.
pub struct TlsProxy {
    pub port: u16,
    pub seen: Arc<Mutex<Vec<u8>>>,
    pub client_certs: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsProxy {
    pub async fn start(cfg: Arc<ServerConfig>, upstream: u16) -> TlsProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let client_certs = Arc::new(AtomicUsize::new(0));
        let (seen2, certs2) = (seen.clone(), client_certs.clone());
        let acceptor = TlsAcceptor::from(cfg);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, seen, certs) = (acceptor.clone(), seen2.clone(), certs2.clone());
                tokio::spawn(async move {
                    let Ok(Ok(tls)) = tokio::time::timeout(
                        std::time::Duration::from_secs(10),
                        acceptor.accept(tcp),
                    )
                    .await
                    else {
                        return;
                    };
                    if tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .is_some_and(|c| !c.is_empty())
                    {
                        certs.fetch_add(1, Ordering::Relaxed);
                    }
                    let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        return;
                    };
                    let (mut cr, mut cw) = tokio::io::split(tls);
                    let (mut ur, mut uw) = up.into_split();
                    let to_up = async move {
                        let mut buf = vec![0u8; 16384];
                        loop {
                            let n = match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            {
                                let mut s = seen.lock().unwrap();
                                if s.len() < 256 * 1024 {
                                    s.extend_from_slice(&buf[..n]);
                                }
                            }
                            if uw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = uw.shutdown().await;
                    };
                    let to_client = async move {
                        let _ = tokio::io::copy(&mut ur, &mut cw).await;
                        let _ = cw.shutdown().await;
                    };
                    tokio::join!(to_up, to_client);
                });
            }
        });
        TlsProxy {
            port,
            seen,
            client_certs,
            task,
        }
    }

    pub fn seen_text(&self) -> String {
        String::from_utf8_lossy(&self.seen.lock().unwrap()).into_owned()
    }
}

/// Files served over HTTPS with ETags and `If-None-Match` (HTTP/1.1, one request per connection).
pub struct BundleServer {
    pub port: u16,
    files: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    /// While set, connections are dropped without an answer (an outage).
    pub down: Arc<AtomicBool>,
    /// Requests answered 304.
    pub not_modified: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for BundleServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn etag(data: &[u8]) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in data {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("\"{h:016x}\"")
}

impl BundleServer {
    pub async fn start(cfg: Arc<ServerConfig>) -> BundleServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let files: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
        let down = Arc::new(AtomicBool::new(false));
        let not_modified = Arc::new(AtomicUsize::new(0));
        let (f2, d2, nm2) = (files.clone(), down.clone(), not_modified.clone());
        let acceptor = TlsAcceptor::from(cfg);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                if d2.load(Ordering::Relaxed) {
                    drop(tcp);
                    continue;
                }
                let (acceptor, files, nm) = (acceptor.clone(), f2.clone(), nm2.clone());
                tokio::spawn(async move {
                    let Ok(Ok(mut tls)) = tokio::time::timeout(
                        std::time::Duration::from_secs(10),
                        acceptor.accept(tcp),
                    )
                    .await
                    else {
                        return;
                    };
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                    let inm = head.lines().find_map(|l| {
                        l.split_once(':')
                            .filter(|(k, _)| k.trim().eq_ignore_ascii_case("if-none-match"))
                            .map(|(_, v)| v.trim().to_string())
                    });
                    let body = files.lock().unwrap().get(&path).cloned();
                    let resp = match body {
                        None => b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_vec(),
                        Some(b) => {
                            let tag = etag(&b);
                            if inm.as_deref() == Some(tag.as_str()) {
                                nm.fetch_add(1, Ordering::Relaxed);
                                format!("HTTP/1.1 304 Not Modified\r\netag: {tag}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").into_bytes()
                            } else {
                                let mut r = format!("HTTP/1.1 200 OK\r\netag: {tag}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", b.len()).into_bytes();
                                r.extend_from_slice(&b);
                                r
                            }
                        }
                    };
                    let _ = tls.write_all(&resp).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        BundleServer {
            port,
            files,
            down,
            not_modified,
            task,
        }
    }

    /// Replaces several files at once, as one publication (a bundle and its signature).
    pub fn put_all(&self, files: Vec<(&str, Vec<u8>)>) {
        let mut f = self.files.lock().unwrap();
        for (path, data) in files {
            f.insert(path.to_string(), data);
        }
    }

    pub fn put(&self, path: &str, data: Vec<u8>) {
        self.files.lock().unwrap().insert(path.to_string(), data);
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }
}

/// One request as [`GrpcProxy`] decoded it: path and headers (gRPC metadata).
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub path: String,
    pub headers: Vec<(String, String)>,
}

/// TLS-terminating HTTP/2 proxy in front of a plaintext (h2c) gRPC server,
/// recording every request's path and headers after HPACK decoding (which
/// hides them from a byte recorder like [`TlsProxy`]). Requests, responses
/// and trailers are forwarded as they are.
pub struct GrpcProxy {
    pub port: u16,
    pub requests: Arc<Mutex<Vec<SeenRequest>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GrpcProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GrpcProxy {
    pub async fn start(cfg: Arc<ServerConfig>, upstream: u16) -> GrpcProxy {
        use hyper_util::rt::{TokioExecutor, TokioIo};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let acceptor = TlsAcceptor::from(cfg);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, seen) = (acceptor.clone(), seen.clone());
                tokio::spawn(async move {
                    let timeout = std::time::Duration::from_secs(10);
                    let Ok(Ok(tls)) = tokio::time::timeout(timeout, acceptor.accept(tcp)).await
                    else {
                        return;
                    };
                    let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        return;
                    };
                    let Ok((send, conn)) = hyper::client::conn::http2::handshake(
                        TokioExecutor::new(),
                        TokioIo::new(up),
                    )
                    .await
                    else {
                        return;
                    };
                    tokio::spawn(conn);
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            seen.lock().unwrap().push(SeenRequest {
                                path: req.uri().path().to_string(),
                                headers: req
                                    .headers()
                                    .iter()
                                    .map(|(k, v)| {
                                        (
                                            k.to_string(),
                                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                        )
                                    })
                                    .collect(),
                            });
                            let mut send = send.clone();
                            async move { send.send_request(req).await }
                        },
                    );
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        GrpcProxy {
            port,
            requests,
            task,
        }
    }

    /// Every recorded request to a path ending in `suffix`.
    pub fn requests_to(&self, suffix: &str) -> Vec<SeenRequest> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path.ends_with(suffix))
            .cloned()
            .collect()
    }
}
