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

    /// The address to bind: `localhost` is 127.0.0.1, as Go's listener resolves it. A host
    /// that does not resolve is an error (a member must not start without a listener it was
    /// asked for).
    pub fn socket_addr(&self) -> Result<SocketAddr, String> {
        let host = if self.host == "localhost" {
            "127.0.0.1"
        } else {
            self.host.as_str()
        };
        let lookup = |host: &str| (host, self.port).to_socket_addrs();
        // `[::1]` is written with brackets in a URL but resolved without them.
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        match lookup(bare).map(|mut it| it.next()) {
            Ok(Some(addr)) => Ok(addr),
            Ok(None) | Err(_) => Err(format!(
                "listen tcp {}:{}: lookup {bare}: no such host",
                self.host, self.port
            )),
        }
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

    #[test]
    fn resolves_or_refuses() {
        let u = Url::parse("http://localhost:2379").unwrap();
        assert_eq!(u.socket_addr().unwrap().to_string(), "127.0.0.1:2379");
        let u = Url::parse("http://[::1]:2379").unwrap();
        assert_eq!(u.socket_addr().unwrap().to_string(), "[::1]:2379");
        // A name that cannot resolve (the .invalid TLD is reserved, RFC 2606).
        let u = Url::parse("http://no-such-host.invalid:2379").unwrap();
        let e = u.socket_addr().unwrap_err();
        assert!(e.contains("no such host"), "{e}");
    }
}
