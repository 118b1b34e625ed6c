//! Checks of single agent-config values that validation makes with the same
//! code as the component using the value: the OTLP exporter (endpoint,
//! headers, credential file names) and the bundle verifier (trusted keys).
//! Part of the config model, below both; they re-export what they use.

/// `Ok` when `e` is an `http://` or `https://` URL with a host.
pub fn check_endpoint(e: &str) -> Result<(), String> {
    let expected = "expected a URL like `https://collector.example:4317`";
    let u = url::Url::parse(e).map_err(|err| format!("{expected}, got `{e}` ({err})"))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(format!("{expected}, got scheme `{}` in `{e}`", u.scheme()));
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err(format!("{expected}, got no host in `{e}`"));
    }
    Ok(())
}

/// `Ok` when `name` (and `value`, if given) can be sent as an HTTP header and gRPC metadata.
/// Messages never contain the value.
pub fn check_header(name: &str, value: Option<&str>) -> Result<(), String> {
    let lower = name.to_ascii_lowercase();
    if http::HeaderName::from_bytes(lower.as_bytes()).is_err()
        || lower
            .parse::<tonic::metadata::MetadataKey<tonic::metadata::Ascii>>()
            .is_err()
    {
        return Err(format!(
            "`{name}` is not a valid header name: expected letters, digits and `-`"
        ));
    }
    if lower.ends_with("-bin") {
        return Err(format!(
            "`{name}`: binary (`-bin`) metadata is not supported"
        ));
    }
    if let Some(v) = value {
        if http::HeaderValue::from_str(v).is_err()
            || v.parse::<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>()
                .is_err()
        {
            return Err(format!("the value of header `{name}` is not a valid header value: expected visible ASCII without line breaks"));
        }
    }
    Ok(())
}

/// A file name inside the credentials directory: no directories, no `..`.
pub fn is_plain_file_name(f: &str) -> bool {
    !f.is_empty() && f != "." && f != ".." && !f.contains('/')
}

/// A trusted key: the base64 line of a minisign `.pub` file (`RW…`), or the whole file.
pub fn parse_public_key(s: &str) -> Result<minisign_verify::PublicKey, String> {
    let line = s
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))
        .unwrap_or("");
    minisign_verify::PublicKey::from_base64(line).map_err(|e| {
        format!(
            "expected a minisign public key (the `RW…` line of a .pub file), got `{line}` ({e})"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_and_headers_are_checked_without_echoing_values() {
        assert!(check_endpoint("https://collector.example:4317").is_ok());
        assert!(check_endpoint("collector:4317").is_err());
        assert!(check_endpoint("ftp://x")
            .unwrap_err()
            .contains("scheme `ftp`"));
        assert!(check_endpoint("http://").is_err());
        assert!(check_header("x-api-key", Some("abc")).is_ok());
        assert!(check_header("bad header", Some("v"))
            .unwrap_err()
            .contains("not a valid header name"));
        let e = check_header("x-api-key", Some("sec\nret")).unwrap_err();
        assert!(!e.contains("sec"), "{e}");
        assert!(
            is_plain_file_name("otlp-key")
                && !is_plain_file_name("../etc/passwd")
                && !is_plain_file_name("")
        );
    }

    #[test]
    fn a_trusted_key_is_the_base64_line_of_a_pub_file() {
        let e = parse_public_key("untrusted comment: x\nnot a key\n").unwrap_err();
        assert!(e.starts_with("expected a minisign public key (the `RW…` line of a .pub file), got `not a key`"), "{e}");
        assert!(parse_public_key("").is_err());
    }
}
