//! Bootstrap from DNS SRV records (`--discovery-srv`), as etcd's `srv.GetCluster`.
//!
//! The initial cluster is read from `_etcd-server-ssl._tcp.<domain>` (https peers) and
//! `_etcd-server._tcp.<domain>` (http peers), with `-<name>` after the service when
//! `--discovery-srv-name` is set. Both are used and combined; the lookup fails only when
//! neither has any record (etcd 3.3 and 3.5 do this; 3.4.23 fails when only the plain-http
//! records exist). A record is this member when its target resolves to the same address
//! and port as one of this member's advertised peer URLs: that entry gets this member's name,
//! the others a number. Peer URLs are built from the records' targets (without the trailing
//! dot), so every member derives the same member IDs from the same records. The lookup uses
//! the system's resolver configuration (`/etc/resolv.conf`).

use std::net::SocketAddr;

/// The first address `host:port` resolves to (Go's `net.ResolveTCPAddr`).
async fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("lookup {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("lookup {host}: no address"))
}

/// The `(target, port)` of every SRV record of `name`.
async fn lookup_srv(
    resolver: &hickory_resolver::TokioResolver,
    name: &str,
) -> Result<Vec<(String, u16)>, String> {
    let found = resolver
        .srv_lookup(name)
        .await
        .map_err(|e| format!("lookup {name}: {e}"))?;
    Ok(found
        .iter()
        .map(|srv| {
            let target = srv.target().to_utf8();
            (target.trim_end_matches('.').to_string(), srv.port())
        })
        .collect())
}

/// The initial cluster from `domain`'s SRV records, as `(name, peer URL)` entries; this
/// member (`name`, advertising `peer_urls`) must be among them.
pub async fn initial_cluster(
    domain: &str,
    service_name: &str,
    name: &str,
    peer_urls: &[String],
) -> Result<Vec<(String, String)>, String> {
    let entries = cluster(domain, service_name, name, peer_urls).await?;
    if !entries.iter().any(|(n, _)| n == name) {
        return Err(format!(
            "cannot find local etcd member {name:?} in SRV records"
        ));
    }
    Ok(entries)
}

/// The peer URLs of `domain`'s SRV records (a proxy's bootstrap: it is no member itself).
pub async fn peer_urls(domain: &str, service_name: &str) -> Result<Vec<String>, String> {
    let entries = cluster(domain, service_name, "", &[]).await?;
    Ok(entries.into_iter().map(|(_, url)| url).collect())
}

/// The `(name, peer URL)` entries of `domain`'s SRV records, the one of this member (found
/// by the address its `peer_urls` resolve to) named `name`.
async fn cluster(
    domain: &str,
    service_name: &str,
    name: &str,
    peer_urls: &[String],
) -> Result<Vec<(String, String)>, String> {
    let resolver = hickory_resolver::TokioResolver::builder_tokio()
        .map_err(|e| format!("reading the system's resolver configuration: {e}"))?
        .build();
    // This member's advertised peer URLs, by the address they resolve to.
    let mut own: Vec<(SocketAddr, String)> = Vec::new();
    for url in peer_urls {
        let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
        let authority = rest.split('/').next().unwrap_or(rest);
        let (host, port) = authority
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.trim_matches(['[', ']']), p.parse::<u16>().ok()?)))
            .ok_or_else(|| format!("advertised peer URL {url} has no port"))?;
        own.push((resolve(host, port).await?, scheme.to_string()));
    }
    let suffix = if service_name.is_empty() {
        String::new()
    } else {
        format!("-{service_name}")
    };
    let mut entries: Vec<(String, String)> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    let mut temp_name = 0;
    for (service, scheme) in [
        (format!("etcd-server-ssl{suffix}"), "https"),
        (format!("etcd-server{suffix}"), "http"),
    ] {
        let records = match lookup_srv(&resolver, &format!("_{service}._tcp.{domain}.")).await {
            Ok(r) => r,
            Err(e) => {
                tracing::info!(service = %service, scheme, error = %e, "get cluster for {service} SRV: none");
                errors.push(format!("error querying DNS SRV records for _{service} {e}"));
                continue;
            }
        };
        for (target, port) in records {
            let url = format!("{scheme}://{target}:{port}");
            let addr = match resolve(&target, port).await {
                Ok(a) => a,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            let entry_name = match own.iter().find(|(a, _)| *a == addr) {
                Some((_, own_scheme)) if own_scheme != scheme => {
                    errors.push(format!(
                        "bootstrap at {url} from DNS for {service} has scheme mismatch with expected peer {own_scheme}://{addr}"
                    ));
                    continue;
                }
                Some(_) => name.to_string(),
                None => {
                    temp_name += 1;
                    (temp_name - 1).to_string()
                }
            };
            tracing::info!("got bootstrap from DNS for etcd-server at {entry_name}={url}");
            entries.push((entry_name, url));
        }
    }
    if entries.is_empty() {
        return Err(if errors.is_empty() {
            format!("no SRV records for _etcd-server-ssl{suffix} or _etcd-server{suffix} under {domain}")
        } else {
            errors.join("; ")
        });
    }
    Ok(entries)
}
