//! A validated member URL: `scheme://host:port`, etcd's rules (http/https/unix/unixs, a
//! port, no path).

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};

/// A URL of a listener or an advertised endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub scheme: String,
    pub host: String,
    pub port: u16,
}

impl Url {
    /// Parses and validates one URL.
    pub fn parse(s: &str) -> Result<Url, String> {
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| format!("URL scheme must be http, https, unix, or unixs: {s}"))?;
        if !matches!(scheme, "http" | "https" | "unix" | "unixs") {
            return Err(format!(
                "URL scheme must be http, https, unix, or unixs: {s}"
            ));
        }
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') {
            return Err(format!("URL must not contain a path: {s}"));
        }
        let (host, port) = if let Some(r) = rest.strip_prefix('[') {
            let (h, p) = r
                .split_once("]:")
                .ok_or_else(|| format!("URL address does not have the form \"host:port\": {s}"))?;
            (format!("[{h}]"), p)
        } else {
            rest.rsplit_once(':')
                .map(|(h, p)| (h.to_string(), p))
                .ok_or_else(|| format!("URL address does not have the form \"host:port\": {s}"))?
        };
        if host.is_empty() {
            return Err(format!(
                "URL address does not have the form \"host:port\": {s}"
            ));
        }
        let port = port
            .parse::<u16>()
            .map_err(|_| format!("URL address does not have a valid port: {s}"))?;
        Ok(Url {
            scheme: scheme.to_string(),
            host,
            port,
        })
    }

    /// Addresses to bind: `localhost` is 127.0.0.1, as Go's listener resolves it.
    pub fn socket_addrs(&self) -> Vec<SocketAddr> {
        let host = if self.host == "localhost" {
            "127.0.0.1"
        } else {
            self.host.as_str()
        };
        (host, self.port)
            .to_socket_addrs()
            .map(|it| it.take(1).collect())
            .unwrap_or_default()
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        assert_eq!(Url::parse("http://127.0.0.1:2379").unwrap().port, 2379);
        assert_eq!(
            Url::parse("http://[::1]:2379").unwrap().to_string(),
            "http://[::1]:2379"
        );
        assert!(Url::parse("http://host").is_err());
        assert!(Url::parse("http://host:2379/path").is_err());
        assert!(Url::parse("gopher://host:1").is_err());
        assert!(Url::parse("http://:1").is_err());
    }
}
