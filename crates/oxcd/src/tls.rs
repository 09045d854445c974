//! TLS for client and peer listeners and for dialing peers: etcd's `pkg/transport`
//! `TLSInfo` semantics on rustls (ring provider).
//!
//! - A server requires and verifies the other side's certificate when `--client-cert-auth`
//!   is set *or* a trusted CA file is given (etcd 3.4's `ServerConfig`), against that CA
//!   (or the system roots when only `--client-cert-auth` is set, as Go does); a CRL file
//!   revokes end-entity certificates by serial; an allowed CN / host name is checked on the
//!   verified certificate, on both sides of a connection (etcd's `VerifyPeerCertificate`).
//! - A client (a member dialing a peer) presents its certificate when it has one and
//!   verifies the server's against the trusted CA (or the system roots) and the URL's host;
//!   with auto TLS it does not verify the chain (etcd's `InsecureSkipVerify` for
//!   self-signed certificates), but still checks the handshake signatures.
//! - TLS 1.2 and 1.3 only (etcd's `MinVersion: TLS12`); `--cipher-suites` restricts the
//!   TLS 1.2 suites and, as in Go, leaves the TLS 1.3 ones on.
//! - Auto TLS writes `cert.pem` and `key.pem` (mode 0600) into `<data-dir>/fixtures/{client,peer}`
//!   and reuses them on the next start, as etcd's `SelfCert` does.
//!
//! Errors met in handshakes are worded as Go words them ("remote error: tls: bad
//! certificate"), because operators and etcd's tests look for those words in the logs.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
    SupportedCipherSuite,
};

use crate::config::TlsInfo;

/// Go's cipher suite names (`tls.CipherSuites()`, `tls.InsecureCipherSuites()` and the two
/// short CHACHA20 aliases etcd accepts) with the rustls suite each is, where rustls offers
/// it. `None`: Go knows the name, rustls has no such suite (CBC, RC4, 3DES, static RSA).
const GO_SUITES: &[(&str, Option<&str>)] = &[
    ("TLS_AES_128_GCM_SHA256", Some("TLS13_AES_128_GCM_SHA256")),
    ("TLS_AES_256_GCM_SHA384", Some("TLS13_AES_256_GCM_SHA384")),
    (
        "TLS_CHACHA20_POLY1305_SHA256",
        Some("TLS13_CHACHA20_POLY1305_SHA256"),
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        Some("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"),
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        Some("TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"),
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        Some("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"),
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        Some("TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"),
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        Some("TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256"),
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        Some("TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"),
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
        Some("TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256"),
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
        Some("TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"),
    ),
    ("TLS_RSA_WITH_AES_128_CBC_SHA", None),
    ("TLS_RSA_WITH_AES_256_CBC_SHA", None),
    ("TLS_RSA_WITH_AES_128_GCM_SHA256", None),
    ("TLS_RSA_WITH_AES_256_GCM_SHA384", None),
    ("TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA", None),
    ("TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA", None),
    ("TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA", None),
    ("TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA", None),
    ("TLS_RSA_WITH_RC4_128_SHA", None),
    ("TLS_RSA_WITH_3DES_EDE_CBC_SHA", None),
    ("TLS_RSA_WITH_AES_128_CBC_SHA256", None),
    ("TLS_ECDHE_ECDSA_WITH_RC4_128_SHA", None),
    ("TLS_ECDHE_RSA_WITH_RC4_128_SHA", None),
    ("TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA", None),
    ("TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256", None),
    ("TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256", None),
];

fn rustls_suite(name: &str) -> Option<SupportedCipherSuite> {
    rustls::crypto::ring::ALL_CIPHER_SUITES
        .iter()
        .copied()
        .find(|s| s.suite().as_str() == Some(name))
}

/// The cipher suites of `--cipher-suites` (Go names), in the given order; empty means
/// rustls's defaults. An unknown name is refused with etcd's message, a name Go knows but
/// rustls does not offer with one saying so.
pub fn cipher_suites(names: &[String]) -> Result<Vec<SupportedCipherSuite>, String> {
    let mut out = Vec::new();
    for name in names {
        match GO_SUITES.iter().find(|(go, _)| go == name) {
            None => return Err(format!("unexpected TLS cipher suite {name:?}")),
            Some((_, None)) => {
                return Err(format!(
                    "TLS cipher suite {name:?} is not offered by oxcd (rustls has no CBC, RC4, 3DES or static-RSA suites); use ECDHE with AES-GCM or CHACHA20-POLY1305"
                ))
            }
            Some((_, Some(ours))) => {
                let suite = rustls_suite(ours)
                    .ok_or_else(|| format!("TLS cipher suite {name:?} is not offered by oxcd"))?;
                if !out.contains(&suite) {
                    out.push(suite);
                }
            }
        }
    }
    Ok(out)
}

/// The crypto provider with `--cipher-suites` applied: the named TLS 1.2 suites in order,
/// then every TLS 1.3 suite (Go does not let TLS 1.3 suites be configured).
fn provider(suites: &[String]) -> Result<Arc<CryptoProvider>, String> {
    let mut p = rustls::crypto::ring::default_provider();
    let chosen = cipher_suites(suites)?;
    if !chosen.is_empty() {
        let mut list: Vec<SupportedCipherSuite> = chosen
            .iter()
            .copied()
            .filter(|s| matches!(s, SupportedCipherSuite::Tls12(_)))
            .collect();
        list.extend(
            p.cipher_suites
                .iter()
                .copied()
                .filter(|s| matches!(s, SupportedCipherSuite::Tls13(_))),
        );
        p.cipher_suites = list;
    }
    Ok(Arc::new(p))
}

fn read_err(what: &str, path: &str, e: impl std::fmt::Display) -> String {
    format!("{what} {path}: {e}")
}

fn load_certs(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| read_err("open certificate file", path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read_err("read certificate file", path, e))?;
    if certs.is_empty() {
        return Err(format!(
            "read certificate file {path}: no CERTIFICATE block found"
        ));
    }
    Ok(certs)
}

fn load_key(path: &str) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| read_err("read key file", path, e))
}

fn load_roots(path: &str) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| read_err("trusted CA file", path, e))?;
    }
    Ok(roots)
}

/// The system's trusted roots, from the files Go reads on Linux (`SSL_CERT_FILE` first).
fn system_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    let mut files: Vec<PathBuf> = std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    files.extend(
        [
            "/etc/ssl/certs/ca-certificates.crt",
            "/etc/pki/tls/certs/ca-bundle.crt",
            "/etc/ssl/ca-bundle.pem",
            "/etc/pki/tls/cacert.pem",
            "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
            "/etc/ssl/cert.pem",
        ]
        .map(PathBuf::from),
    );
    for f in files {
        if let Ok(iter) = CertificateDer::pem_file_iter(&f) {
            let (added, _) = roots.add_parsable_certificates(iter.flatten());
            if added > 0 {
                break;
            }
        }
    }
    roots
}

fn load_crls(path: &str) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let bytes = std::fs::read(path).map_err(|e| read_err("read CRL file", path, e))?;
    let pem: Vec<_> = CertificateRevocationListDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read_err("read CRL file", path, e))?;
    if !pem.is_empty() {
        return Ok(pem);
    }
    // Go's x509.ParseCRL also takes DER.
    Ok(vec![CertificateRevocationListDer::from(bytes)])
}

/// How the other side's verified certificate must be named (`--peer-cert-allowed-cn`,
/// `--*-cert-allowed-hostname`).
#[derive(Debug, Clone)]
enum NameRule {
    Cn(String),
    Host(String),
}

impl NameRule {
    fn of(info: &TlsInfo) -> Option<NameRule> {
        if !info.allowed_cn.is_empty() {
            Some(NameRule::Cn(info.allowed_cn.clone()))
        } else if !info.allowed_hostname.is_empty() {
            Some(NameRule::Host(info.allowed_hostname.clone()))
        } else {
            None
        }
    }

    /// etcd's check: the CN equals the allowed one, or the certificate is valid for the
    /// allowed host name / IP (SANs, as Go's `VerifyHostname`).
    fn check(&self, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let ok = match self {
            NameRule::Cn(cn) => subject_common_name(cert).as_deref() == Some(cn.as_str()),
            NameRule::Host(host) => {
                let name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']'));
                match (webpki::EndEntityCert::try_from(cert), name) {
                    (Ok(ee), Ok(name)) => ee.verify_is_valid_for_subject_name(&name).is_ok(),
                    _ => false,
                }
            }
        };
        if ok {
            Ok(())
        } else {
            // The plain variant (rustls's own name checks give `NotValidForNameContext`):
            // it sends the bad_certificate alert, as Go does, and `go_error` words it as
            // etcd does.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            ))
        }
    }
}

/// A client verifier that adds the name rule to the chain verification.
#[derive(Debug)]
struct NamedClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    rule: NameRule,
}

impl ClientCertVerifier for NamedClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }
    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let ok = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        self.rule.check(end_entity)?;
        Ok(ok)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// How a dialing member checks the server's certificate.
#[derive(Debug)]
struct PeerServerVerifier {
    /// The chain and host check; `None` with auto TLS (etcd's `InsecureSkipVerify`).
    chain: Option<Arc<WebPkiServerVerifier>>,
    rule: Option<NameRule>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PeerServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(chain) = &self.chain {
            chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        }
        if let Some(rule) = &self.rule {
            rule.check(end_entity)?;
        }
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A server configuration for one side's listeners.
pub fn server_config(
    info: &TlsInfo,
    suites: &[String],
) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = provider(suites)?;
    let certs = load_certs(&info.cert_file)?;
    let key = load_key(&info.key_file)?;
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS configuration: {e}"))?;
    let verify_clients = !info.trusted_ca_file.is_empty() || info.client_cert_auth;
    let cfg = if verify_clients {
        let roots = if info.trusted_ca_file.is_empty() {
            system_roots()
        } else {
            load_roots(&info.trusted_ca_file)?
        };
        let mut vb = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        if !info.crl_file.is_empty() {
            // etcd checks only the client's own certificate against the list.
            vb = vb
                .with_crls(load_crls(&info.crl_file)?)
                .only_check_end_entity_revocation()
                .allow_unknown_revocation_status();
        }
        let mut verifier = vb
            .build()
            .map_err(|e| format!("client certificate verification: {e}"))?;
        if let Some(rule) = NameRule::of(info) {
            verifier = Arc::new(NamedClientVerifier {
                inner: verifier,
                rule,
            });
        }
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    }
    .with_single_cert(certs, key)
    .map_err(|e| format!("TLS key/cert {} / {}: {e}", info.cert_file, info.key_file))?;
    Ok(Arc::new(cfg))
}

/// The client configuration a member dials its peers with.
pub fn client_config(
    info: &TlsInfo,
    suites: &[String],
) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = provider(suites)?;
    let chain = if info.auto_tls {
        None
    } else {
        let roots = if info.trusted_ca_file.is_empty() {
            system_roots()
        } else {
            load_roots(&info.trusted_ca_file)?
        };
        Some(
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                .build()
                .map_err(|e| format!("server certificate verification: {e}"))?,
        )
    };
    let verifier = PeerServerVerifier {
        chain,
        rule: NameRule::of(info),
        algorithms: provider.signature_verification_algorithms,
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS configuration: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let cfg = if info.is_empty() {
        builder.with_no_client_auth()
    } else {
        builder
            .with_client_auth_cert(load_certs(&info.cert_file)?, load_key(&info.key_file)?)
            .map_err(|e| format!("TLS key/cert {} / {}: {e}", info.cert_file, info.key_file))?
    };
    Ok(Arc::new(cfg))
}

/// etcd's `ClientSelfCert` / `PeerSelfCert`: with auto TLS and no certificate given, the
/// certificate in `<data-dir>/fixtures/<side>/`, generated there if absent (valid for a
/// year, for the listen URLs' hosts). Returns `info` with the files filled in.
pub fn self_cert(info: &TlsInfo, dir: &Path, hosts: &[String]) -> Result<TlsInfo, String> {
    let mut out = info.clone();
    if !info.auto_tls || !info.is_empty() {
        if info.auto_tls {
            tracing::warn!("ignoring auto TLS since certs given");
        }
        out.auto_tls = false;
        return Ok(out);
    }
    create_private_dir(dir).map_err(|e| format!("cannot create cert directory {dir:?}: {e}"))?;
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    if !(cert_path.exists() && key_path.exists()) {
        let (cert, key) = generate_self_signed(hosts)?;
        std::fs::write(&cert_path, cert)
            .map_err(|e| format!("cannot write cert file {cert_path:?}: {e}"))?;
        write_private(&key_path, key.as_bytes())
            .map_err(|e| format!("cannot write key file {key_path:?}: {e}"))?;
        tracing::info!(path = %cert_path.display(), "created cert file");
        tracing::info!(path = %key_path.display(), "created key file");
    }
    out.cert_file = cert_path.to_string_lossy().into_owned();
    out.key_file = key_path.to_string_lossy().into_owned();
    Ok(out)
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    let mut f = o.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// A self-signed ECDSA certificate for `hosts` (`host:port` or bare hosts), organisation
/// "etcd", server and client use, valid from now for 365 days: (cert PEM, key PEM).
pub fn generate_self_signed(hosts: &[String]) -> Result<(String, String), String> {
    let mut names: Vec<String> = Vec::new();
    for h in hosts {
        let host = match h.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
            _ => h.as_str(),
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if !host.is_empty() && !names.contains(&host) {
            names.push(host);
        }
    }
    let fail = |e: rcgen::Error| format!("cannot generate x509 certificate: {e}");
    let mut params = rcgen::CertificateParams::new(names).map_err(fail)?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::OrganizationName, "etcd");
    params.distinguished_name = dn;
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyEncipherment,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let at = |secs: i64| {
        time::OffsetDateTime::from_unix_timestamp(secs)
            .map_err(|e| format!("cannot generate x509 certificate: {e}"))
    };
    params.not_before = at(now - 60)?;
    params.not_after = at(now + 365 * 24 * 3600)?;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| format!("cannot generate ECDSA key: {e}"))?;
    let cert = params.self_signed(&key).map_err(fail)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The rustls server name of a peer URL's host (`[::1]` → the IP).
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(ServerName::IpAddress(ip.into()));
    }
    ServerName::try_from(bare.to_string()).map_err(|e| format!("invalid host {host:?}: {e}"))
}

/// A handshake error worded as Go's `crypto/tls` words it.
pub fn go_error(e: &std::io::Error) -> String {
    let Some(err) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return e.to_string();
    };
    match err {
        rustls::Error::AlertReceived(alert) => {
            format!("remote error: tls: {}", go_alert(*alert))
        }
        rustls::Error::InvalidCertificate(CertificateError::Other(o)) => o.to_string(),
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "x509: certificate signed by unknown authority".to_string()
        }
        rustls::Error::InvalidCertificate(CertificateError::Revoked) => {
            "x509: certificate revoked".to_string()
        }
        rustls::Error::InvalidCertificate(CertificateError::NotValidForName) => {
            "client certificate authentication failed".to_string()
        }
        rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. }) => {
            format!("x509: certificate is not valid for the requested name ({err})")
        }
        rustls::Error::NoCertificatesPresented => {
            "tls: client didn't provide a certificate".to_string()
        }
        other => format!("tls: {other}"),
    }
}

fn go_alert(alert: rustls::AlertDescription) -> String {
    use rustls::AlertDescription as A;
    match alert {
        A::BadCertificate => "bad certificate".into(),
        A::CertificateUnknown => "unknown certificate".into(),
        A::UnknownCA => "unknown certificate authority".into(),
        A::CertificateRevoked => "revoked certificate".into(),
        A::CertificateExpired => "expired certificate".into(),
        A::CertificateRequired => "certificate required".into(),
        A::HandshakeFailure => "handshake failure".into(),
        A::AccessDenied => "access denied".into(),
        A::UnsupportedCertificate => "unsupported certificate".into(),
        A::DecryptError => "error decrypting message".into(),
        A::ProtocolVersion => "protocol version not supported".into(),
        other => format!("{other:?}"),
    }
}

/// etcd's check of a member's certificate against the address it connects from (its peer
/// listeners do it unless `--experimental-peer-skip-client-san-verification`): the remote IP
/// must be one of the certificate's IP addresses, or one of its DNS names must resolve to
/// it. Deviations: a certificate naming no address at all is refused (etcd lets it pass;
/// such a certificate cannot serve peers, which verify the names they dial), and wildcard
/// DNS names (which etcd matches through a reverse lookup) do not match.
pub async fn check_peer_address(
    cert: &CertificateDer<'static>,
    remote: IpAddr,
) -> Result<(), String> {
    let Ok(ee) = webpki::EndEntityCert::try_from(cert) else {
        return Err("unreadable certificate".to_string());
    };
    let ip = ServerName::IpAddress(remote.into());
    if ee.verify_is_valid_for_subject_name(&ip).is_ok() {
        return Ok(());
    }
    let names: Vec<String> = ee.valid_dns_names().map(str::to_string).collect();
    for name in names.iter().filter(|n| !n.starts_with("*.")) {
        if let Ok(addrs) = tokio::net::lookup_host((name.as_str(), 0)).await {
            if addrs.into_iter().any(|a| a.ip() == remote) {
                return Ok(());
            }
        }
    }
    Err(format!(
        "tls: {remote} does not match the certificate's IP addresses or DNS names {names:?}"
    ))
}

/// The subject Common Name of a DER certificate (the first CN attribute), or `None`.
///
/// A minimal DER walk, used only on certificates whose chain was verified already:
/// Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serial,
/// signature, issuer, validity, subject, ... } ... }, subject ::= SEQUENCE OF SET OF
/// SEQUENCE { type OID, value ANY }.
pub fn subject_common_name(cert: &[u8]) -> Option<String> {
    // OID 2.5.4.3 (id-at-commonName), DER content bytes.
    const CN: &[u8] = &[0x55, 0x04, 0x03];
    let (tag, cert_body, _) = der_next(cert)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, mut tbs, _) = der_next(cert_body)?;
    if tag != 0x30 {
        return None;
    }
    let mut fields = Vec::new();
    while !tbs.is_empty() && fields.len() < 6 {
        let (tag, body, rest) = der_next(tbs)?;
        fields.push((tag, body));
        tbs = rest;
    }
    // Skip the explicit [0] version when present.
    let at = if fields.first()?.0 == 0xa0 { 5 } else { 4 };
    let (tag, mut rdns) = *fields.get(at)?;
    if tag != 0x30 {
        return None;
    }
    while !rdns.is_empty() {
        let (tag, mut set, rest) = der_next(rdns)?;
        rdns = rest;
        if tag != 0x31 {
            return None;
        }
        while !set.is_empty() {
            let (tag, atv, rest) = der_next(set)?;
            set = rest;
            if tag != 0x30 {
                return None;
            }
            let (tag, oid, value) = der_next(atv)?;
            if tag == 0x06 && oid == CN {
                let (_, text, _) = der_next(value)?;
                return String::from_utf8(text.to_vec()).ok();
            }
        }
    }
    None
}

/// One DER element: (tag, contents, the bytes after it). Single-byte tags, definite
/// lengths only (DER has no others).
fn der_next(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_for(hosts: &[&str]) -> CertificateDer<'static> {
        let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        let (cert, _) = generate_self_signed(&hosts).unwrap();
        CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()
    }

    #[tokio::test]
    async fn a_member_must_connect_from_an_address_its_certificate_names() {
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        let other: IpAddr = "10.1.2.3".parse().unwrap();
        let by_ip = cert_for(&["127.0.0.1"]);
        assert_eq!(check_peer_address(&by_ip, loopback).await, Ok(()));
        assert!(check_peer_address(&by_ip, other).await.is_err());
        // A DNS name that resolves to the remote address.
        let by_name = cert_for(&["localhost"]);
        assert_eq!(check_peer_address(&by_name, loopback).await, Ok(()));
        assert!(check_peer_address(&by_name, other).await.is_err());
    }

    #[test]
    fn go_cipher_suite_names_map_or_are_refused() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let s = cipher_suites(&names(&[
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
            "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
        ]))
        .unwrap();
        assert_eq!(s.len(), 2);
        let e = cipher_suites(&names(&["TLS_BOGUS"])).unwrap_err();
        assert_eq!(e, "unexpected TLS cipher suite \"TLS_BOGUS\"");
        let e = cipher_suites(&names(&["TLS_RSA_WITH_AES_128_CBC_SHA"])).unwrap_err();
        assert!(e.contains("not offered by oxcd"), "{e}");
        // Every rustls suite Go names is found.
        for (go, ours) in GO_SUITES {
            if let Some(ours) = ours {
                assert!(rustls_suite(ours).is_some(), "{go} -> {ours}");
            }
        }
        // TLS 1.3 suites stay on whatever the list says.
        let p = provider(&names(&["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"])).unwrap();
        assert_eq!(p.cipher_suites.len(), 4);
    }

    #[test]
    fn self_signed_certificate_names_its_hosts() {
        let (cert, key) =
            generate_self_signed(&["127.0.0.1:2379".into(), "localhost:2379".into()]).unwrap();
        let der = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        assert!(PrivateKeyDer::from_pem_slice(key.as_bytes()).is_ok());
        let ee = webpki::EndEntityCert::try_from(&der).unwrap();
        for name in ["127.0.0.1", "localhost"] {
            let n = server_name(name).unwrap();
            assert!(ee.verify_is_valid_for_subject_name(&n).is_ok(), "{name}");
        }
        assert_eq!(subject_common_name(&der), None);
        assert!(NameRule::Host("localhost".into()).check(&der).is_ok());
        assert!(NameRule::Host("example.com".into()).check(&der).is_err());
    }

    #[test]
    fn common_name_of_a_certificate() {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::OrganizationName, "etcd");
        dn.push(rcgen::DnType::CommonName, "example.com");
        params.distinguished_name = dn;
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            subject_common_name(cert.der()).as_deref(),
            Some("example.com")
        );
        assert!(NameRule::Cn("example.com".into()).check(cert.der()).is_ok());
        assert!(NameRule::Cn("example2.com".into())
            .check(cert.der())
            .is_err());
        assert_eq!(subject_common_name(b"\x30\x82"), None);
        assert_eq!(subject_common_name(&[]), None);
    }
}
