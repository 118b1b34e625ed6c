//! Who may use the admin endpoint. Reading is open to whoever reaches the
//! listener; every state-changing request (any method but GET/HEAD, so routes
//! added later are covered too) needs the bearer token from the credentials
//! directory when the listener is not loopback-only. On loopback a `Host`
//! check stops DNS rebinding, and an `Origin` check stops cross-site posts
//! from a browser on the same machine.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// The credential file holding the admin bearer token.
pub const TOKEN_CREDENTIAL: &str = "vantage-admin-token";

/// The admin bearer token in `credentials_dir`, if it holds a non-empty one
/// (a trailing newline is not part of it). The agent checks requests against
/// it; `vantage reload` sends it.
pub fn read_token(credentials_dir: &Path) -> Option<String> {
    let token = std::fs::read_to_string(credentials_dir.join(TOKEN_CREDENTIAL)).ok()?;
    let token = token.trim_end_matches(['\n', '\r']);
    (!token.is_empty()).then(|| token.to_string())
}

pub struct Access {
    loopback_only: bool,
    port: u16,
    token: Option<String>,
}

impl Access {
    /// For a listener on `addr`; the token is read from `credentials_dir/vantage-admin-token` if that file exists.
    pub fn new(addr: SocketAddr, credentials_dir: Option<&Path>) -> Access {
        let token = credentials_dir.and_then(read_token);
        Access {
            loopback_only: addr.ip().is_loopback(),
            port: addr.port(),
            token,
        }
    }

    /// Whether state-changing requests can be made at all (false: not loopback and no token).
    pub fn writable(&self) -> bool {
        self.loopback_only || self.token.is_some()
    }

    fn check(
        &self,
        method: &Method,
        headers: &HeaderMap,
    ) -> Result<(), (StatusCode, &'static str)> {
        let reads = matches!(*method, Method::GET | Method::HEAD);
        if self.loopback_only {
            let host = headers
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !is_local_authority(host, self.port) {
                return Err((StatusCode::MISDIRECTED_REQUEST, "the admin endpoint answers only to localhost, 127.0.0.1 or [::1] with its port in Host\n"));
            }
            if !reads {
                if let Some(origin) = headers.get(header::ORIGIN) {
                    let local = origin
                        .to_str()
                        .ok()
                        .and_then(|o| o.strip_prefix("http://"))
                        .is_some_and(|a| is_local_authority(a, self.port));
                    if !local {
                        return Err((
                            StatusCode::FORBIDDEN,
                            "cross-origin requests cannot change the agent\n",
                        ));
                    }
                }
            }
        }
        if reads || (self.loopback_only && self.token.is_none()) {
            return Ok(());
        }
        let Some(want) = &self.token else {
            return Err((StatusCode::FORBIDDEN, "state-changing admin requests are off: the listener is not loopback-only and no `vantage-admin-token` credential is set\n"));
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if aws_lc_rs::constant_time::verify_slices_are_equal(given.as_bytes(), want.as_bytes())
            .is_err()
        {
            return Err((StatusCode::UNAUTHORIZED, "state-changing admin requests need `Authorization: Bearer <the vantage-admin-token credential>`\n"));
        }
        Ok(())
    }
}

/// `localhost`, `127.x.y.z` or `[::1]`, with `port` (a missing port means 80).
fn is_local_authority(authority: &str, port: u16) -> bool {
    let (host, p) = match authority.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') => (h, p.parse::<u16>().ok()),
        _ => (authority, Some(80)),
    };
    if p != Some(port) {
        return false;
    }
    let host = host.to_ascii_lowercase();
    host == "localhost"
        || host == "[::1]"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Middleware: rejects what [`Access`] does not allow.
pub async fn guard(State(access): State<Arc<Access>>, req: Request, next: Next) -> Response {
    match access.check(req.method(), req.headers()) {
        Ok(()) => next.run(req).await,
        Err((code, msg)) => (code, msg).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    fn access(addr: &str, token: Option<&str>) -> Access {
        let addr: SocketAddr = addr.parse().unwrap();
        Access {
            loopback_only: addr.ip().is_loopback(),
            port: addr.port(),
            token: token.map(String::from),
        }
    }

    #[test]
    fn loopback_accepts_local_hosts_with_the_port_only() {
        let a = access("127.0.0.1:9464", None);
        for ok in [
            "127.0.0.1:9464",
            "localhost:9464",
            "LOCALHOST:9464",
            "[::1]:9464",
            "127.1.2.3:9464",
        ] {
            assert!(
                a.check(&Method::GET, &headers(&[("host", ok)])).is_ok(),
                "{ok}"
            );
        }
        for bad in [
            "evil.example:9464",
            "127.0.0.1:80",
            "127.0.0.1",
            "localhost.evil.example:9464",
            "",
            "10.0.0.1:9464",
            "[::2]:9464",
        ] {
            assert_eq!(
                a.check(&Method::GET, &headers(&[("host", bad)]))
                    .unwrap_err()
                    .0,
                StatusCode::MISDIRECTED_REQUEST,
                "{bad}"
            );
        }
    }

    #[test]
    fn loopback_posts_from_another_origin_are_refused() {
        let a = access("127.0.0.1:9464", None);
        let h = headers(&[
            ("host", "127.0.0.1:9464"),
            ("origin", "http://evil.example"),
        ]);
        assert_eq!(
            a.check(&Method::POST, &h).unwrap_err().0,
            StatusCode::FORBIDDEN
        );
        let h = headers(&[
            ("host", "127.0.0.1:9464"),
            ("origin", "http://localhost:9464"),
        ]);
        assert!(a.check(&Method::POST, &h).is_ok());
        assert!(a
            .check(&Method::POST, &headers(&[("host", "127.0.0.1:9464")]))
            .is_ok());
    }

    #[test]
    fn off_loopback_writes_need_the_token_and_reads_do_not() {
        let a = access("0.0.0.0:9464", Some("t0ken"));
        let any_host = headers(&[("host", "agent.example:9464")]);
        assert!(a.check(&Method::GET, &any_host).is_ok());
        assert_eq!(
            a.check(&Method::POST, &any_host).unwrap_err().0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            a.check(
                &Method::DELETE,
                &headers(&[("authorization", "Bearer wrong")])
            )
            .unwrap_err()
            .0,
            StatusCode::UNAUTHORIZED
        );
        assert!(a
            .check(&Method::PUT, &headers(&[("authorization", "Bearer t0ken")]))
            .is_ok());
        let none = access("0.0.0.0:9464", None);
        assert!(!none.writable());
        assert_eq!(
            none.check(&Method::POST, &headers(&[("authorization", "Bearer ")]))
                .unwrap_err()
                .0,
            StatusCode::FORBIDDEN
        );
    }

    #[test]
    fn a_configured_token_is_required_on_loopback_too() {
        let a = access("127.0.0.1:9464", Some("t0ken"));
        let h = headers(&[("host", "127.0.0.1:9464")]);
        assert_eq!(
            a.check(&Method::POST, &h).unwrap_err().0,
            StatusCode::UNAUTHORIZED
        );
    }
}
