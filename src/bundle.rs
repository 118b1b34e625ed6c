//! Probe bundles: one signed source of journeys for a fleet.
//!
//! A `probes` entry may be an `https://` URL of a bundle: a `.tar.gz`/`.tar`
//! of `*.yaml` files, or a single YAML file. Its detached minisign signature
//! lives next to it (`URL.minisig`, as `minisign -S` writes it) and must
//! verify against one of `bundles.trusted_keys`. The agent fetches bundles on
//! an interval with `If-None-Match`; a new, verified bundle is validated like
//! a reload and applied whole, then kept in the state directory so a restart
//! without network runs the last good journeys. Anything wrong (unreachable
//! server, bad signature, broken archive, invalid journeys) keeps what runs.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::BundleConfig;

/// A bundle larger than this is refused (a probe bundle is text).
pub const MAX_BUNDLE_BYTES: u64 = 16 * 1024 * 1024;
const MAX_FILES: usize = 1000;
const FETCH_TIMEOUT: Duration = Duration::from_secs(20);

/// Why a fetch did not produce new journeys; the `result` of `synthetics.agent.config.fetches`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchResult {
    Updated,
    NotModified,
    Unreachable,
    BadSignature,
    Invalid,
}

impl FetchResult {
    pub const ALL: [FetchResult; 5] = [
        Self::Updated,
        Self::NotModified,
        Self::Unreachable,
        Self::BadSignature,
        Self::Invalid,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Updated => "updated",
            Self::NotModified => "not_modified",
            Self::Unreachable => "unreachable",
            Self::BadSignature => "bad_signature",
            Self::Invalid => "invalid",
        }
    }
}

/// A failed fetch: what kind, and a message for the log.
#[derive(Debug, Clone)]
pub struct FetchError {
    pub result: FetchResult,
    pub message: String,
    /// The ETag of a bundle that was fetched but refused (so it is not fetched again unchanged).
    pub etag: Option<String>,
}

fn fail(result: FetchResult, message: String) -> FetchError {
    FetchError {
        result,
        message,
        etag: None,
    }
}

// Also checked by agent-config validation, which sits below the bundle fetcher.
pub use crate::config::checks::parse_public_key;

/// Verifies `data` against a minisign signature file's text and any of `keys`.
pub fn verify(
    data: &[u8],
    signature: &str,
    keys: &[minisign_verify::PublicKey],
) -> Result<(), String> {
    let sig = minisign_verify::Signature::decode(signature)
        .map_err(|e| format!("the signature file is not a minisign signature ({e})"))?;
    if keys.is_empty() {
        return Err("no trusted keys configured (bundles.trusted_keys)".into());
    }
    let mut last = String::new();
    for k in keys {
        match k.verify(data, &sig, false) {
            Ok(()) => return Ok(()),
            Err(e) => last = e.to_string(),
        }
    }
    Err(format!(
        "the signature matches none of the {} trusted key(s) ({last})",
        keys.len()
    ))
}

/// The probe files in a bundle: `(display path, text)`, sorted by name.
/// `origin` prefixes the paths so diagnostics say where a journey came from.
pub fn unpack(origin: &str, data: &[u8]) -> Result<Vec<(PathBuf, String)>, String> {
    let gz = data.starts_with(&[0x1f, 0x8b]);
    let tar = data.len() > 262 && &data[257..262] == b"ustar";
    if !gz && !tar {
        let text = std::str::from_utf8(data)
            .map_err(|_| "the bundle is neither a tar archive nor UTF-8 YAML".to_string())?;
        return Ok(vec![(PathBuf::from(origin), text.to_string())]);
    }
    let mut raw = Vec::new();
    if gz {
        flate2::read::GzDecoder::new(data)
            .take(MAX_BUNDLE_BYTES * 4)
            .read_to_end(&mut raw)
            .map_err(|e| format!("the bundle is not a valid gzip stream ({e})"))?;
    } else {
        raw = data.to_vec();
    }
    let mut out = Vec::new();
    let mut archive = tar::Archive::new(raw.as_slice());
    for entry in archive
        .entries()
        .map_err(|e| format!("the bundle is not a valid tar archive ({e})"))?
    {
        let mut entry =
            entry.map_err(|e| format!("the bundle is not a valid tar archive ({e})"))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry
            .path()
            .map_err(|e| format!("a bundle entry has an unusable name ({e})"))?
            .into_owned();
        if !matches!(
            path.extension().and_then(|x| x.to_str()),
            Some("yaml" | "yml")
        ) {
            continue;
        }
        let mut text = String::new();
        entry
            .read_to_string(&mut text)
            .map_err(|_| format!("{}: not UTF-8 text", path.display()))?;
        out.push((PathBuf::from(format!("{origin}#{}", path.display())), text));
        if out.len() > MAX_FILES {
            return Err(format!("the bundle has more than {MAX_FILES} YAML files"));
        }
    }
    if out.is_empty() {
        return Err("the archive holds no *.yaml or *.yml file".into());
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// A verified bundle: its bytes, signature and ETag, and the files in it.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub url: String,
    pub data: Vec<u8>,
    pub signature: String,
    pub etag: Option<String>,
    pub files: Vec<(PathBuf, String)>,
}

/// Fetches, verifies and caches the bundles of one agent config.
pub struct Fetcher {
    client: reqwest::Client,
    keys: Vec<minisign_verify::PublicKey>,
    state_dir: Option<PathBuf>,
}

impl Fetcher {
    pub fn new(cfg: &BundleConfig, state_dir: Option<PathBuf>) -> anyhow::Result<Fetcher> {
        let keys = cfg
            .trusted_keys
            .iter()
            .map(|k| parse_public_key(k).map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut b = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(Duration::from_secs(10))
            .user_agent(crate::user_agent());
        if let Some(ca) = &cfg.ca_file {
            let pem = std::fs::read(ca).map_err(|e| {
                anyhow::anyhow!("bundles.ca_file: cannot read {}: {e}", ca.display())
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                anyhow::anyhow!(
                    "bundles.ca_file: {}: not PEM certificates ({e})",
                    ca.display()
                )
            })?;
            b = b.tls_certs_merge(certs);
        }
        Ok(Fetcher {
            client: b.build()?,
            keys,
            state_dir,
        })
    }

    /// Fetches `url` (and `url.minisig`); `Ok(None)` when the server says it has not changed.
    pub async fn fetch(&self, url: &str, etag: Option<&str>) -> Result<Option<Bundle>, FetchError> {
        let unreachable = |e: String| fail(FetchResult::Unreachable, e);
        let mut req = self.client.get(url);
        if let Some(t) = etag {
            req = req.header("if-none-match", t);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| unreachable(format!("GET {url}: {}", error_chain(&e))))?;
        if resp.status() == reqwest::StatusCode::NOT_MODIFIED {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(unreachable(format!(
                "GET {url}: answered {}",
                resp.status()
            )));
        }
        let new_etag = resp
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let data = read_limited(resp)
            .await
            .map_err(|e| unreachable(format!("GET {url}: {e}")))?;
        let sig_url = format!("{url}.minisig");
        let sig = self
            .client
            .get(&sig_url)
            .send()
            .await
            .map_err(|e| unreachable(format!("GET {sig_url}: {}", error_chain(&e))))?;
        if !sig.status().is_success() {
            return Err(fail(
                FetchResult::BadSignature,
                format!(
                    "GET {sig_url}: answered {}: a bundle without its signature is not used",
                    sig.status()
                ),
            ));
        }
        let signature = sig
            .text()
            .await
            .map_err(|e| unreachable(format!("GET {sig_url}: {e}")))?;
        self.accept(url, data, signature, new_etag.clone())
            .map(Some)
            .map_err(|e| FetchError {
                etag: new_etag,
                ..e
            })
    }

    /// Verifies and unpacks bytes from the network or the cache.
    pub fn accept(
        &self,
        url: &str,
        data: Vec<u8>,
        signature: String,
        etag: Option<String>,
    ) -> Result<Bundle, FetchError> {
        verify(&data, &signature, &self.keys)
            .map_err(|m| fail(FetchResult::BadSignature, format!("{url}: {m}")))?;
        let files =
            unpack(url, &data).map_err(|m| fail(FetchResult::Invalid, format!("{url}: {m}")))?;
        Ok(Bundle {
            url: url.to_string(),
            data,
            signature,
            etag,
            files,
        })
    }

    fn cache_dir(&self, url: &str) -> Option<PathBuf> {
        let h = crate::scheduler::stable_hash(&[url]);
        Some(
            self.state_dir
                .as_ref()?
                .join("bundles")
                .join(format!("{h:016x}")),
        )
    }

    /// The last good bundle of `url` kept in the state directory, verified again.
    pub fn cached(&self, url: &str) -> Option<Result<Bundle, FetchError>> {
        let dir = self.cache_dir(url)?;
        let data = std::fs::read(dir.join("bundle")).ok()?;
        let signature = std::fs::read_to_string(dir.join("bundle.minisig")).ok()?;
        let etag = std::fs::read_to_string(dir.join("etag"))
            .ok()
            .filter(|e| !e.is_empty());
        Some(self.accept(url, data, signature, etag))
    }

    /// Keeps `b` as the last good bundle: written aside, then renamed into place.
    pub fn store(&self, b: &Bundle) -> std::io::Result<()> {
        let Some(dir) = self.cache_dir(&b.url) else {
            return Ok(());
        };
        let parent = dir.parent().expect("cache dir has a parent");
        std::fs::create_dir_all(parent)?;
        let tmp = parent.join(format!(".new-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        std::fs::write(tmp.join("bundle"), &b.data)?;
        std::fs::write(tmp.join("bundle.minisig"), &b.signature)?;
        std::fs::write(tmp.join("etag"), b.etag.as_deref().unwrap_or(""))?;
        std::fs::write(tmp.join("url"), &b.url)?;
        let old = parent.join(format!(".old-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&old);
        if dir.exists() {
            std::fs::rename(&dir, &old)?;
        }
        std::fs::rename(&tmp, &dir)?;
        let _ = std::fs::remove_dir_all(&old);
        Ok(())
    }
}

async fn read_limited(mut resp: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        out.extend_from_slice(&chunk);
        if out.len() as u64 > MAX_BUNDLE_BYTES {
            return Err(format!(
                "the bundle is larger than {} MiB",
                MAX_BUNDLE_BYTES / 1024 / 1024
            ));
        }
    }
    Ok(out)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// `vantage bundle sign`: writes `FILE.minisig` with an unencrypted minisign secret key.
pub fn sign_file(
    file: &Path,
    secret_key: &Path,
    trusted_comment: Option<&str>,
) -> anyhow::Result<PathBuf> {
    let sk_text = std::fs::read_to_string(secret_key)
        .map_err(|e| anyhow::anyhow!("cannot read the secret key {}: {e}", secret_key.display()))?;
    let sk_box = minisign::SecretKeyBox::from_string(&sk_text).map_err(|e| {
        anyhow::anyhow!("{}: not a minisign secret key ({e})", secret_key.display())
    })?;
    let sk = sk_box
        .into_unencrypted_secret_key()
        .or_else(|_| minisign::SecretKeyBox::from_string(&sk_text).and_then(|b| b.into_secret_key(std::env::var("MINISIGN_PASSWORD").ok())))
        .map_err(|e| anyhow::anyhow!("{}: cannot open the secret key ({e}); for a password-protected key set MINISIGN_PASSWORD", secret_key.display()))?;
    let data = std::fs::File::open(file)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
    let sig = minisign::sign(
        None,
        &sk,
        data,
        trusted_comment,
        Some("signature from vantage bundle sign"),
    )
    .map_err(|e| anyhow::anyhow!("signing {} failed: {e}", file.display()))?;
    let out = PathBuf::from(format!("{}.minisig", file.display()));
    std::fs::write(&out, sig.into_string())?;
    Ok(out)
}

/// `vantage bundle keygen`: an unencrypted key pair for automation (`NAME.key`, `NAME.pub`).
pub fn keygen(base: &Path) -> anyhow::Result<(PathBuf, PathBuf, String)> {
    let kp = minisign::KeyPair::generate_unencrypted_keypair()
        .map_err(|e| anyhow::anyhow!("key generation failed: {e}"))?;
    let sk = kp
        .sk
        .to_box(None)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .into_string();
    let pk_b64 = kp.pk.to_base64();
    let pk = kp
        .pk
        .to_box()
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .into_string();
    let (skp, pkp) = (base.with_extension("key"), base.with_extension("pub"));
    for p in [&skp, &pkp] {
        if p.exists() {
            anyhow::bail!("{} exists already: not overwriting a key", p.display());
        }
    }
    write_private(&skp, sk.as_bytes())?;
    std::fs::write(&pkp, pk)?;
    Ok((skp, pkp, pk_b64))
}

fn write_private(p: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(p)?
        .write_all(data)
}

/// `vantage bundle verify`: checks the signature and that the bundle holds valid journeys.
pub fn verify_file(file: &Path, keys: &[String]) -> anyhow::Result<Vec<(PathBuf, String)>> {
    let keys = keys
        .iter()
        .map(|k| parse_public_key(k).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let data =
        std::fs::read(file).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
    let sig_path = PathBuf::from(format!("{}.minisig", file.display()));
    let sig = std::fs::read_to_string(&sig_path)
        .map_err(|e| anyhow::anyhow!("cannot read the signature {}: {e}", sig_path.display()))?;
    verify(&data, &sig, &keys).map_err(|m| anyhow::anyhow!("{}: {m}", file.display()))?;
    unpack(&file.display().to_string(), &data)
        .map_err(|m| anyhow::anyhow!("{}: {m}", file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tarball(files: &[(&str, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, text) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(text.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, text.as_bytes()).unwrap();
        }
        let raw = b.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, &raw).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn signatures_verify_only_with_a_trusted_key_and_unchanged_data() {
        let kp = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
        let other = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
        let data = b"journeys: []\n".to_vec();
        let sig = minisign::sign(None, &kp.sk, data.as_slice(), None, None)
            .unwrap()
            .into_string();
        let key = parse_public_key(&kp.pk.to_base64()).unwrap();
        let wrong = parse_public_key(&other.pk.to_box().unwrap().into_string()).unwrap();
        assert!(verify(&data, &sig, &[wrong.clone(), key.clone()]).is_ok());
        assert!(verify(&data, &sig, &[wrong])
            .unwrap_err()
            .contains("none of the 1 trusted"));
        assert!(verify(b"journeys: [x]\n", &sig, std::slice::from_ref(&key)).is_err());
        assert!(verify(&data, "garbage", &[key])
            .unwrap_err()
            .contains("not a minisign signature"));
        assert!(parse_public_key("not a key").is_err());
    }

    #[test]
    fn bundles_unpack_from_tarballs_and_single_files() {
        let t = tarball(&[
            ("b.yaml", "journeys: []\n"),
            ("README", "x"),
            ("dir/a.yml", "journeys: []\n"),
        ]);
        let files = unpack("https://h/p.tgz", &t).unwrap();
        let names: Vec<String> = files.iter().map(|(p, _)| p.display().to_string()).collect();
        assert_eq!(
            names,
            ["https://h/p.tgz#b.yaml", "https://h/p.tgz#dir/a.yml"]
        );
        assert_eq!(
            unpack("https://h/one.yaml", b"journeys: []\n")
                .unwrap()
                .len(),
            1
        );
        assert!(unpack("x", &t[..t.len() / 2]).is_err());
        assert!(unpack("x", &tarball(&[("README", "x")]))
            .unwrap_err()
            .contains("no *.yaml"));
    }
}
