//! `tls` step: handshake, chain verification and certificate expiry.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use opentelemetry::KeyValue;
use tokio_rustls::rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use tokio_rustls::rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

use crate::config::template::Template;
use crate::steps::compile::{Checker, StepCx};
use crate::steps::context::RunContext;
use crate::steps::net::{connect_tcp, handshake, split_host_port};
use crate::steps::{KindInfo, Needs, StepKind};
use crate::vocab::{remaining_secs, ErrorType, Observation, StepError};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[derive(schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsSpec {
    /// `host:port`
    pub address: String,
    /// SNI and the name to verify; default: the host part of `address`.
    pub server_name: Option<String>,
    #[serde(default = "crate::config::model::default_true")]
    pub verify: bool,
    /// Extra PEM file of trusted CAs (private PKI, self-signed targets).
    pub ca_file: Option<String>,
    /// Certificate revocation lists (PEM or DER): a certificate they list fails as revoked.
    pub crl_file: Option<String>,
    pub min_days_remaining: Option<f64>,
    /// Application protocols to offer (ALPN), e.g. `[h2]`. Default: none, so
    /// servers that speak only one protocol (gRPC, for one) are not refused.
    #[serde(default)]
    pub alpn: Vec<String>,
}

/// A CA file and a CRL file, by path.
type TrustFiles = (Option<String>, Option<String>);

/// Client TLS configurations, built once: verifying (system roots), and not.
pub struct TlsConfigs {
    provider: Arc<CryptoProvider>,
    pub verified: Arc<ClientConfig>,
    pub insecure: Arc<ClientConfig>,
    /// Verifying configs with an extra CA file and/or a CRL file, by paths.
    with_ca: Mutex<HashMap<TrustFiles, Arc<ClientConfig>>>,
}

impl TlsConfigs {
    pub fn new() -> Result<TlsConfigs, String> {
        let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
        let verified = Self::verifying(&provider, Vec::new())?;
        let insecure = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider.clone())))
            .with_no_client_auth();
        Ok(TlsConfigs { provider, verified, insecure: with_alpn(insecure), with_ca: Mutex::new(HashMap::new()) })
    }

    fn verifying(provider: &Arc<CryptoProvider>, extra: Vec<CertificateDer<'static>>) -> Result<Arc<ClientConfig>, String> {
        let verifier = rustls_platform_verifier::Verifier::new_with_extra_roots(extra, provider.clone()).map_err(|e| e.to_string())?;
        let cfg = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        Ok(with_alpn(cfg))
    }

    /// The config for a step: verifying or not, with an optional extra CA file.
    pub fn pick(&self, verify: bool, ca_file: Option<&str>) -> Result<Arc<ClientConfig>, StepError> {
        self.pick_with_crl(verify, ca_file, None)
    }

    /// [`Self::pick`], also checking revocation against a CRL file.
    pub fn pick_with_crl(&self, verify: bool, ca_file: Option<&str>, crl_file: Option<&str>) -> Result<Arc<ClientConfig>, StepError> {
        if !verify {
            return Ok(self.insecure.clone());
        }
        if ca_file.is_none() && crl_file.is_none() {
            return Ok(self.verified.clone());
        }
        let key = (ca_file.map(str::to_string), crl_file.map(str::to_string));
        let mut cache = self.with_ca.lock().expect("tls cache lock");
        if let Some(c) = cache.get(&key) {
            return Ok(c.clone());
        }
        let certs: Vec<CertificateDer<'static>> = match ca_file {
            Some(path) => CertificateDer::pem_file_iter(path).and_then(|it| it.collect::<Result<_, _>>()).map_err(|e| StepError::new(ErrorType::Config, format!("cannot read CA file `{path}`: {e}")))?,
            None => Vec::new(),
        };
        let cfg = match crl_file {
            None => Self::verifying(&self.provider, certs).map_err(|e| StepError::new(ErrorType::Config, format!("CA file `{}`: {e}", ca_file.unwrap_or_default())))?,
            Some(crl) => self.verifying_with_crls(certs, crl)?,
        };
        if cache.len() > 64 {
            cache.clear();
        }
        cache.insert(key, cfg.clone());
        Ok(cfg)
    }

    /// The platform verifier knows no CRLs: webpki's own verifier, with the
    /// same roots (the system's and the extra CAs) and the CRLs. Certificates
    /// whose issuer has no CRL in the file pass (the file need not cover every CA).
    fn verifying_with_crls(&self, extra: Vec<CertificateDer<'static>>, crl_file: &str) -> Result<Arc<ClientConfig>, StepError> {
        use tokio_rustls::rustls::pki_types::CertificateRevocationListDer;
        let bad = |why: String| StepError::new(ErrorType::Config, format!("CRL file `{crl_file}`: {why}"));
        let raw = std::fs::read(crl_file).map_err(|e| StepError::new(ErrorType::Config, format!("cannot read CRL file `{crl_file}`: {e}")))?;
        let crls: Vec<CertificateRevocationListDer<'static>> = if raw.starts_with(b"-----BEGIN") {
            CertificateRevocationListDer::pem_slice_iter(&raw).collect::<Result<_, _>>().map_err(|e| bad(format!("not valid PEM: {e}")))?
        } else {
            vec![CertificateRevocationListDer::from(raw)]
        };
        if crls.is_empty() {
            return Err(bad("expected at least one `-----BEGIN X509 CRL-----` block".into()));
        }
        let mut roots = tokio_rustls::rustls::RootCertStore::empty();
        for c in extra {
            roots.add(c).map_err(|e| bad(format!("a CA certificate is not usable: {e}")))?;
        }
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        let verifier = tokio_rustls::rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .with_crls(crls)
            .allow_unknown_revocation_status()
            .build()
            .map_err(|e| bad(format!("not a usable certificate revocation list ({e})")))?;
        let cfg = ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(e.to_string()))?
            .with_webpki_verifier(verifier)
            .with_no_client_auth();
        Ok(with_alpn(cfg))
    }
}

fn with_alpn(mut cfg: ClientConfig) -> Arc<ClientConfig> {
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// Accepts any certificate but still checks handshake signatures (for `tls_verify: false`).
#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(&self, _: &CertificateDer<'_>, _: &[CertificateDer<'_>], _: &ServerName<'_>, _: &[u8], _: UnixTime) -> Result<ServerCertVerified, tokio_rustls::rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(&self, m: &[u8], c: &CertificateDer<'_>, d: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(&self, m: &[u8], c: &CertificateDer<'_>, d: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// What `tls` declares to the runner, telemetry and daemon.
pub const INFO: KindInfo = KindInfo { name: "tls", span_kind: opentelemetry::trace::SpanKind::Internal, needs: Needs::NETWORK, phases: crate::vocab::PhaseRecording::None, default_status: None };

/// Builds a `tls` step from its config (the registry calls this).
pub fn compile(spec: &TlsSpec, step: &StepCx, c: &mut Checker) -> Option<Box<dyn StepKind>> {
    let _ = step;
    TlsStep::compile(spec, c).map(|k| Box::new(k) as _)
}

#[derive(Debug)]
pub struct TlsStep {
    address: Template,
    server_name: Option<Template>,
    verify: bool,
    ca_file: Option<Template>,
    crl_file: Option<Template>,
    min_days_remaining: Option<f64>,
    alpn: Vec<Vec<u8>>,
}

impl TlsStep {
    pub fn compile(spec: &TlsSpec, c: &mut Checker) -> Option<TlsStep> {
        if let Some(d) = spec.min_days_remaining {
            if d.is_nan() || d < 0.0 {
                c.error("tls.min_days_remaining", "expected a number of days >= 0");
            }
        }
        if spec.crl_file.is_some() && !spec.verify {
            c.error("tls.crl_file", crate::steps::http::CRL_WITHOUT_VERIFY);
        }
        if spec.alpn.iter().any(|p| p.is_empty() || p.len() > 255) {
            c.error("tls.alpn", "expected protocol names of 1 to 255 bytes, e.g. [h2, http/1.1]");
        }
        Some(TlsStep {
            address: c.template("tls.address", &spec.address),
            server_name: spec.server_name.as_deref().map(|s| c.template("tls.server_name", s)),
            verify: spec.verify,
            ca_file: spec.ca_file.as_deref().map(|s| c.template("tls.ca_file", s)),
            crl_file: spec.crl_file.as_deref().map(|s| c.template("tls.crl_file", s)),
            min_days_remaining: spec.min_days_remaining,
            alpn: spec.alpn.iter().map(|p| p.as_bytes().to_vec()).collect(),
        })
    }

    async fn run(&self, ctx: &mut RunContext) -> Result<Observation, StepError> {
        let address = ctx.render(&self.address)?;
        let (host, port) = split_host_port(&address)?;
        let server_name = match &self.server_name {
            Some(t) => ctx.render(t)?,
            None => host.clone(),
        };
        let ca = match &self.ca_file {
            Some(t) => Some(ctx.render(t)?),
            None => None,
        };
        let crl = match &self.crl_file {
            Some(t) => Some(ctx.render(t)?),
            None => None,
        };
        // The shared configs offer `http/1.1` for HTTP and WebSocket; this step offers only what it says.
        let mut config = (*ctx.env.tls()?.pick_with_crl(self.verify, ca.as_deref(), crl.as_deref())?).clone();
        config.alpn_protocols = self.alpn.clone();
        let config = Arc::new(config);
        let mut obs = Observation::default();
        let (tcp, peer) = connect_tcp(ctx, &host, port, &mut obs.phases).await?;
        let (_stream, facts) = handshake(ctx, tcp, &server_name, config, &mut obs.phases).await.map_err(|e| e.with_observation(&obs))?;
        obs.cert_not_after = facts.not_after;
        obs.attributes = vec![
            KeyValue::new("server.address", host.clone()),
            KeyValue::new("server.port", port as i64),
            KeyValue::new("network.peer.address", peer.ip().to_string()),
            KeyValue::new("tls.protocol.version", facts.version),
            KeyValue::new("tls.cipher", facts.cipher),
            KeyValue::new("tls.server.subject", facts.subject.clone()),
            KeyValue::new("tls.server.issuer", facts.issuer),
        ];
        obs.body = bytes::Bytes::from(facts.subject);
        if let (Some(min), Some(na)) = (self.min_days_remaining, facts.not_after) {
            let days = remaining_secs(na) / 86_400.0;
            if days < min {
                return Err(StepError::new(
                    ErrorType::Tls,
                    format!(
                        "expected the certificate chain of `{server_name}` to be valid for at least {min} more days, the earliest expiry is in {days:.1} days ({})",
                        humantime::format_rfc3339_seconds(na)
                    ),
                )
                .with_observation(&obs));
            }
        }
        Ok(obs)
    }
}

impl StepKind for TlsStep {
    fn info(&self) -> &'static KindInfo {
        &INFO
    }
    fn execute<'a>(&'a self, ctx: &'a mut RunContext) -> BoxFuture<'a, Result<Observation, StepError>> {
        self.run(ctx).boxed()
    }
    fn error_types(&self) -> &'static [ErrorType] {
        &[ErrorType::Dns, ErrorType::Connect, ErrorType::Tls, ErrorType::Timeout, ErrorType::Config]
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use tokio_rustls::rustls::ServerConfig;

    use crate::steps::attempt;
    use crate::steps::compile::test_step;
    use crate::steps::context::RunContext;
    use crate::vocab::ErrorType;

    /// A loopback TLS listener with a fresh self-signed certificate for `localhost`
    /// (valid 10 days), completing `count` handshakes. Returns its port and the PEM.
    async fn tls_server(count: usize) -> (u16, String) {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + time::Duration::days(10);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())))
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            for _ in 0..count {
                let (s, _) = l.accept().await.unwrap();
                let _ = acceptor.accept(s).await;
            }
        });
        (port, cert.pem())
    }

    /// A loopback TLS listener presenting `cert` (signed by `issuer`, or
    /// self-signed), offering `alpn`; completes `count` handshakes.
    async fn listener(params: rcgen::CertificateParams, issuer: Option<&rcgen::Issuer<'_, rcgen::KeyPair>>, alpn: &[&str], count: usize) -> (u16, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = match issuer {
            Some(i) => params.signed_by(&key, i).unwrap(),
            None => params.self_signed(&key).unwrap(),
        };
        let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())))
            .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            for _ in 0..count {
                let Ok((s, _)) = l.accept().await else { return };
                let _ = acceptor.accept(s).await;
            }
        });
        (port, cert.pem())
    }

    fn params(names: &[&str], from_days: i64, to_days: i64) -> rcgen::CertificateParams {
        let mut p = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now + time::Duration::days(from_days);
        p.not_after = now + time::Duration::days(to_days);
        p.distinguished_name = rcgen::DistinguishedName::new();
        // Not the bare name: a machine's trust store may hold some `CN=localhost` of its own.
        p.distinguished_name.push(rcgen::DnType::CommonName, format!("{} (vantage test)", names[0]));
        p
    }

    fn write_ca(pem: &str, tag: &str) -> String {
        let path = std::env::temp_dir().join(format!("vantage-tls-{tag}-{}.pem", std::process::id()));
        std::fs::write(&path, pem).unwrap();
        path.display().to_string()
    }

    /// Runs a `tls` step against `port` trusting `ca` (if any); returns the failure.
    async fn fails(port: u16, ca: Option<&str>, extra: &str) -> crate::vocab::StepError {
        let ca = ca.map(|c| format!(", ca_file: \"{c}\"")).unwrap_or_default();
        let step = test_step(&format!("name: t\ntls: {{address: \"127.0.0.1:{port}\", server_name: localhost{ca}{extra}}}\n"));
        let e = attempt(&mut RunContext::new_test(), &step).await.expect_err("must fail");
        assert_eq!(e.error_type, ErrorType::Tls, "{}", e.message);
        assert!(!e.message.contains("Context") && !e.message.contains("InvalidCertificate") && !e.message.contains('{'), "library debug output: {}", e.message);
        e
    }

    #[tokio::test]
    async fn certificate_failures_are_described_in_words() {
        // Expired (trusted through the CA file, so expiry is the only problem).
        let (port, pem) = listener(params(&["localhost"], -30, -2), None, &[], 2).await;
        let ca = write_ca(&pem, "expired");
        let e = fails(port, Some(&ca), "").await;
        let day = (time::OffsetDateTime::now_utc() - time::Duration::days(2)).date().to_string();
        assert!(e.message.contains("the certificate of `localhost` expired on ") && e.message.contains(&day), "{}", e.message);
        let _ = std::fs::remove_file(&ca);

        // Not yet valid.
        let (port, pem) = listener(params(&["localhost"], 3, 30), None, &[], 2).await;
        let ca = write_ca(&pem, "future");
        let e = fails(port, Some(&ca), "").await;
        let day = (time::OffsetDateTime::now_utc() + time::Duration::days(3)).date().to_string();
        assert!(e.message.contains("is not valid yet: it becomes valid on ") && e.message.contains(&day), "{}", e.message);
        let _ = std::fs::remove_file(&ca);

        // Self-signed, not trusted.
        let (port, _) = listener(params(&["localhost"], -1, 30), None, &[], 2).await;
        let e = fails(port, None, "").await;
        assert!(e.message.contains("is self-signed (`CN=localhost (vantage test)`) and not trusted"), "{}", e.message);

        // Signed by a CA nobody trusts: names the issuer.
        let mut ca_params = params(&["Vantage Test CA"], -1, 30);
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let issuer = rcgen::Issuer::new(ca_params, rcgen::KeyPair::generate().unwrap());
        let (port, _) = listener(params(&["localhost"], -1, 30), Some(&issuer), &[], 2).await;
        let e = fails(port, None, "").await;
        assert!(e.message.contains("is issued by `CN=Vantage Test CA (vantage test)`, an unknown issuer"), "{}", e.message);

        // Wrong host: names what the certificate holds.
        let (port, pem) = listener(params(&["shop.example.test", "www.example.test"], -1, 30), None, &[], 2).await;
        let ca = write_ca(&pem, "wronghost");
        let e = fails(port, Some(&ca), "").await;
        assert!(e.message.contains("hostname mismatch: the certificate presented for `localhost` is valid only for shop.example.test, www.example.test"), "{}", e.message);
        let _ = std::fs::remove_file(&ca);
    }

    #[tokio::test]
    async fn no_alpn_is_offered_unless_asked() {
        // An h2-only server (like gRPC) refuses clients that offer only http/1.1.
        let (port, pem) = listener(params(&["localhost"], -1, 30), None, &["h2"], 3).await;
        let ca = write_ca(&pem, "alpn");
        let ok = test_step(&format!("name: t\ntls: {{address: \"127.0.0.1:{port}\", server_name: localhost, ca_file: \"{ca}\"}}\n"));
        attempt(&mut RunContext::new_test(), &ok).await.expect("no ALPN offered: the server accepts");
        let h2 = test_step(&format!("name: t\ntls: {{address: \"127.0.0.1:{port}\", server_name: localhost, ca_file: \"{ca}\", alpn: [h2]}}\n"));
        attempt(&mut RunContext::new_test(), &h2).await.expect("h2 offered: the server accepts");
        let e = fails(port, Some(&ca), ", alpn: [http/1.1]").await;
        assert!(e.message.contains("the server supports none of the offered application protocols (ALPN: http/1.1)"), "{}", e.message);
        let _ = std::fs::remove_file(&ca);
    }

    #[tokio::test]
    async fn a_refused_or_reset_connection_is_named() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let step = test_step(&format!("name: t\ntls: {{address: \"127.0.0.1:{port}\"}}\n"));
        let e = attempt(&mut RunContext::new_test(), &step).await.expect_err("nothing listens");
        assert_eq!(e.error_type, ErrorType::Connect, "{}", e.message);
        assert!(e.message.ends_with("connection refused"), "{}", e.message);
        // A server that reads the ClientHello, then closes without answering.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 5];
            let _ = tokio::io::AsyncReadExt::read_exact(&mut s, &mut buf).await;
        });
        let step = test_step(&format!("name: t\ntls: {{address: \"127.0.0.1:{port}\"}}\n"));
        let e = attempt(&mut RunContext::new_test(), &step).await.expect_err("no handshake");
        assert_eq!(e.error_type, ErrorType::Tls, "{}", e.message);
        assert!(e.message.contains("the server closed the connection during the handshake") || e.message.contains("connection reset by peer"), "{}", e.message);
    }

    #[tokio::test]
    async fn checks_the_chain_against_the_ca_file_and_the_days_left() {
        let (port, pem) = tls_server(3).await;
        let ca = std::env::temp_dir().join(format!("vantage-tls-unit-{}.pem", std::process::id()));
        std::fs::write(&ca, pem).unwrap();
        let ca = ca.display().to_string();
        let mut ctx = RunContext::new_test();
        let ok = test_step(&format!("name: t\ntls: {{address: \"127.0.0.1:{port}\", server_name: localhost, ca_file: \"{ca}\", min_days_remaining: 5}}\n"));
        let (obs, _) = attempt(&mut ctx, &ok).await.expect("trusted through the CA file");
        assert!(obs.cert_not_after.is_some());
        let soon = test_step(&format!("name: t\ntls: {{address: \"127.0.0.1:{port}\", server_name: localhost, ca_file: \"{ca}\", min_days_remaining: 30}}\n"));
        let e = attempt(&mut ctx, &soon).await.expect_err("expires in 10 days");
        assert_eq!(e.error_type, ErrorType::Tls, "{}", e.message);
        let untrusted = test_step(&format!("name: t\ntls: {{address: \"127.0.0.1:{port}\", server_name: localhost}}\n"));
        let e = attempt(&mut ctx, &untrusted).await.expect_err("self-signed, no CA file");
        assert_eq!(e.error_type, ErrorType::Tls, "{}", e.message);
        let _ = std::fs::remove_file(&ca);
    }

    #[test]
    fn a_crl_file_with_verification_off_is_a_check_error() {
        let errs = crate::steps::compile::test_step_errors("name: c\ntls: {address: \"a.test:443\", verify: false, crl_file: crl.pem}\n");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].contains("`tls.crl_file`: a CRL cannot be checked when certificate verification is off"), "{errs:?}");
        assert!(crate::steps::compile::test_step_errors("name: c\ntls: {address: \"a.test:443\", crl_file: crl.pem}\n").is_empty());
    }
}
