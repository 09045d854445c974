//! TLS process tests: client TLS (server certificate, client certificate auth, a foreign CA,
//! a revocation list, auto TLS) and peer TLS (a three-member cluster over https, a member
//! whose certificate comes from another CA), each against oxcd and, where the behaviour is
//! etcd's, against Debian's etcd too. Clients are `curl`.
//!
//! The certificates are etcd's own test fixtures, installed with Debian's
//! `golang-etcd-server-dev` (`e2e/run.sh` and `.ci/run` install it); without them the tests
//! fail and say so. A certificate from another CA is made here with rcgen.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oxcd_tests::cluster::{get_json, try_put, Cluster, FAST_TIMING};
use oxcd_tests::{Member, TempDir, ETCD};

const FIXTURES: &str = "/usr/share/gocode/src/go.etcd.io/etcd/integration/fixtures";

fn oxcd() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_oxcd"))
}

/// A fixture's path; panics with the package to install when the fixtures are missing.
fn fixture(name: &str) -> String {
    let p = Path::new(FIXTURES).join(name);
    assert!(
        p.exists(),
        "TLS fixture {} is missing: install Debian's golang-etcd-server-dev (apt-get install golang-etcd-server-dev)",
        p.display()
    );
    p.to_string_lossy().into_owned()
}

/// The servers to test: oxcd, and Debian's etcd when installed (it is in CI).
fn binaries() -> Vec<PathBuf> {
    let mut v = vec![oxcd()];
    if Path::new(ETCD).exists() {
        v.push(PathBuf::from(ETCD));
    }
    v
}

fn server_cert_args() -> Vec<String> {
    vec![
        "--cert-file".into(),
        fixture("server.crt"),
        "--key-file".into(),
        fixture("server.key.insecure"),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A CA of our own and a certificate it signed for localhost/127.0.0.1 (client and server
/// use), written to `dir`: (ca, cert, key) paths.
fn foreign_ca(dir: &Path) -> (String, String, String) {
    own_ca(dir, "foreign", None)
}

/// Like [`foreign_ca`], with the files named after `name` and, with `valid`, the signed
/// certificate's validity period (from, until).
fn own_ca(
    dir: &Path,
    name: &str,
    valid: Option<(time::OffsetDateTime, time::OffsetDateTime)>,
) -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, "not the etcd fixtures' ca");
    ca_params.distinguished_name = dn;
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, "example.com");
    params.distinguished_name = dn;
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    if let Some((from, until)) = valid {
        params.not_before = from;
        params.not_after = until;
    }
    let cert = params.signed_by(&key, &issuer).unwrap();
    let write = |name: &str, text: String| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_string_lossy().into_owned()
    };
    (
        write(&format!("{name}-ca.crt"), ca_cert.pem()),
        write(&format!("{name}.crt"), cert.pem()),
        write(&format!("{name}.key"), key.serialize_pem()),
    )
}

/// An expired client certificate from a trusted CA is refused in the handshake; a current
/// one from a trusted CA is served (the control), by etcd and oxcd alike.
#[test]
fn an_expired_client_certificate_is_refused() {
    let tmp = TempDir::new("tls-expired");
    let past = Some((
        rcgen::date_time_ymd(2020, 1, 1),
        rcgen::date_time_ymd(2021, 1, 1),
    ));
    let (ca, expired, expired_key) = own_ca(&tmp.0, "expired", past);
    // The control: a current certificate from a second CA of our own; the member trusts
    // both CAs (one bundle file).
    let (ca2, current, current_key) = own_ca(&tmp.0, "current", None);
    let bundle = tmp.0.join("both-ca.crt");
    let text = std::fs::read_to_string(&ca).unwrap() + &std::fs::read_to_string(&ca2).unwrap();
    std::fs::write(&bundle, text).unwrap();
    let bundle = bundle.to_string_lossy().into_owned();
    let server_ca = fixture("ca.crt");
    for bin in binaries() {
        let who = bin.display().to_string();
        let mut extra = server_cert_args();
        extra.extend(["--trusted-ca-file", &bundle, "--client-cert-auth"].map(String::from));
        let m = Member::start_tls(
            &bin,
            "https",
            "http",
            &strs(&extra),
            &[],
            &[
                "--cacert",
                &server_ca,
                "--cert",
                &current,
                "--key",
                &current_key,
            ],
        );
        let url = format!("{}/v2/keys/exp", m.client_url);
        let ok = m.curl(&["-XPUT", &url, "-d", "value=1"]);
        assert!(
            ok.ok() && ok.stdout.contains("\"value\":\"1\""),
            "{who}: {ok:?}"
        );
        let r = oxcd_tests::curl(&[
            "--cacert",
            &server_ca,
            "--cert",
            &expired,
            "--key",
            &expired_key,
            &url,
        ]);
        assert!(
            !r.ok(),
            "{who}: an expired client certificate was served: {r:?}"
        );
    }
}

/// https clients with the CA get answers; without it, or over plaintext, they do not.
#[test]
fn client_tls_serves_https_and_only_https() {
    let ca = fixture("ca.crt");
    for bin in binaries() {
        let who = bin.display().to_string();
        let m = Member::start_tls(
            &bin,
            "https",
            "http",
            &strs(&server_cert_args()),
            &[],
            &["--cacert", &ca],
        );
        let put = m.curl(&["-XPUT", "{c}/v2/keys/tls", "-d", "value=yes"]);
        assert!(put.ok(), "{who}: {put:?}");
        assert!(put.stdout.contains("\"value\":\"yes\""), "{who}: {put:?}");
        let get = m.curl(&["{c}/v2/keys/tls"]);
        assert!(get.stdout.contains("\"value\":\"yes\""), "{who}: {get:?}");
        // The advertised client URL is what --advertise-client-urls says.
        let members = m.curl(&["{c}/v2/members"]);
        assert!(
            members
                .stdout
                .contains(&format!("\"clientURLs\":[\"{}\"]", m.client_url)),
            "{who}: {members:?}"
        );
        // Without the CA the server certificate is not trusted (curl: 60).
        let r = oxcd_tests::curl(&[&format!("{}/v2/keys/tls", m.client_url)]);
        assert!(
            !r.ok(),
            "{who}: an untrusted server certificate was accepted"
        );
        // Plaintext on the https port is not served.
        let plain = m.client_url.replace("https://", "http://");
        let r = oxcd_tests::curl(&["--max-time", "5", &format!("{plain}/v2/keys/tls")]);
        assert!(
            !r.stdout.contains("\"value\""),
            "{who}: plaintext served on the https port: {r:?}"
        );
    }
}

/// `--client-cert-auth`: a client must present a certificate signed by the trusted CA,
/// and one on the revocation list is refused.
#[test]
fn client_cert_auth_refuses_clients_without_a_trusted_certificate() {
    let (ca, cert, key) = (
        fixture("ca.crt"),
        fixture("server.crt"),
        fixture("server.key.insecure"),
    );
    let (revoked, revoked_key) = (
        fixture("server-revoked.crt"),
        fixture("server-revoked.key.insecure"),
    );
    let crl = fixture("revoke.crl");
    let tmp = TempDir::new("tls-foreign");
    let (_, foreign_cert, foreign_key) = foreign_ca(&tmp.0);
    for bin in binaries() {
        let who = bin.display().to_string();
        let mut extra = server_cert_args();
        extra.extend(
            [
                "--trusted-ca-file",
                &ca,
                "--client-cert-auth",
                "--client-crl-file",
                &crl,
            ]
            .map(String::from),
        );
        let m = Member::start_tls(
            &bin,
            "https",
            "http",
            &strs(&extra),
            &[],
            &["--cacert", &ca, "--cert", &cert, "--key", &key],
        );
        let url = format!("{}/v2/keys/auth", m.client_url);
        let ok = m.curl(&["-XPUT", &url, "-d", "value=1"]);
        assert!(
            ok.ok() && ok.stdout.contains("\"value\":\"1\""),
            "{who}: {ok:?}"
        );
        // No client certificate: the handshake fails.
        let r = oxcd_tests::curl(&["--cacert", &ca, &url]);
        assert!(
            !r.ok(),
            "{who}: a client without a certificate was served: {r:?}"
        );
        // A certificate from another CA: refused.
        let r = oxcd_tests::curl(&[
            "--cacert",
            &ca,
            "--cert",
            &foreign_cert,
            "--key",
            &foreign_key,
            &url,
        ]);
        assert!(
            !r.ok(),
            "{who}: a foreign client certificate was served: {r:?}"
        );
        // A revoked certificate: refused.
        let r = oxcd_tests::curl(&[
            "--cacert",
            &ca,
            "--cert",
            &revoked,
            "--key",
            &revoked_key,
            &url,
        ]);
        assert!(
            !r.ok(),
            "{who}: a revoked client certificate was served: {r:?}"
        );
        // The trusted one still works after all that.
        let again = m.curl(&[&url]);
        assert!(again.stdout.contains("\"value\":\"1\""), "{who}: {again:?}");
    }
}

/// Fast timing, and v2 on (Debian's etcd 3.4 has it off by default).
fn base_args() -> Vec<String> {
    let mut v: Vec<String> = FAST_TIMING.iter().map(|s| s.to_string()).collect();
    v.push("--enable-v2=true".into());
    v
}

fn peer_tls_args() -> Vec<String> {
    let mut v = base_args();
    v.extend([
        "--peer-cert-file".into(),
        fixture("server.crt"),
        "--peer-key-file".into(),
        fixture("server.key.insecure"),
        "--peer-trusted-ca-file".into(),
        fixture("ca.crt"),
        "--peer-client-cert-auth".into(),
    ]);
    v
}

/// Three members talking over https peer URLs elect a leader and replicate.
#[test]
fn peer_tls_cluster_forms_and_replicates() {
    for bin in binaries() {
        let who = bin.display().to_string();
        let args = peer_tls_args();
        let c = Cluster::start_with(&bin, 3, "https", &|_| args.clone(), false, &[0, 1, 2]);
        let idx = try_put(
            &c.members[1].client_url,
            "peer/tls",
            "v",
            Duration::from_secs(10),
        )
        .unwrap_or_else(|| panic!("{who}: write through a follower failed"));
        let listings = c.listings(&[0, 1, 2], idx, Duration::from_secs(10));
        for l in &listings {
            assert_eq!(l["node"]["nodes"][0]["nodes"][0]["value"], "v", "{who}");
        }
        let members = get_json(&c.members[0].client_url, "/v2/members").unwrap();
        for m in members["members"].as_array().unwrap() {
            let url = m["peerURLs"][0].as_str().unwrap();
            assert!(url.starts_with("https://"), "{who}: {members}");
        }
    }
}

/// A member whose peer certificate comes from another CA cannot talk to the cluster: the
/// other two form a quorum and serve, it never becomes ready, and the handshakes are
/// refused on both sides.
#[test]
fn member_with_a_foreign_certificate_cannot_join() {
    let tmp = TempDir::new("tls-foreign-peer");
    let (foreign_ca_file, cert, key) = foreign_ca(&tmp.0);
    for bin in binaries() {
        let who = bin.display().to_string();
        let good = peer_tls_args();
        let mut bad = base_args();
        bad.extend(
            [
                "--peer-cert-file",
                &cert,
                "--peer-key-file",
                &key,
                "--peer-trusted-ca-file",
                &foreign_ca_file,
                "--peer-client-cert-auth",
            ]
            .map(String::from),
        );
        let c = Cluster::start_with(
            &bin,
            3,
            "https",
            &|i| if i == 2 { bad.clone() } else { good.clone() },
            false,
            &[0, 1],
        );
        let idx = try_put(
            &c.members[0].client_url,
            "quorum",
            "ok",
            Duration::from_secs(10),
        )
        .unwrap_or_else(|| panic!("{who}: the two good members do not serve"));
        assert!(idx > 0);
        // Give the outsider time to try.
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            assert!(
                get_json(&c.members[2].client_url, "/v2/keys/quorum").is_none(),
                "{who}: the member with a foreign certificate serves"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        if bin == oxcd() {
            let good_log = c.members[0].log();
            assert!(
                good_log.contains("TLS handshake error"),
                "{who}: no refused handshake in the good member's log:\n{good_log}"
            );
            let bad_log = c.members[2].log();
            assert!(
                bad_log.contains("x509: certificate signed by unknown authority")
                    || bad_log.contains("remote error: tls"),
                "{who}: the outsider's log does not say why:\n{bad_log}"
            );
        }
    }
}

/// `--auto-tls`: a self-signed certificate in `<data-dir>/fixtures/client`, served to
/// `curl -k`, reused on restart.
#[test]
fn auto_tls_member_serves_curl_insecure() {
    for bin in binaries() {
        let who = bin.display().to_string();
        let mut m = Member::start_tls(&bin, "https", "http", &["--auto-tls"], &[], &["-k"]);
        let put = m.curl(&["-XPUT", "{c}/v2/keys/auto", "-d", "value=tls"]);
        assert!(put.stdout.contains("\"value\":\"tls\""), "{who}: {put:?}");
        // Not trusted without -k.
        let r = oxcd_tests::curl(&[&format!("{}/v2/keys/auto", m.client_url)]);
        assert!(!r.ok(), "{who}: {r:?}");
        let dir = m.dir.0.join("data/fixtures/client");
        let cert = std::fs::read(dir.join("cert.pem")).unwrap();
        let key_meta = std::fs::metadata(dir.join("key.pem")).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(key_meta.permissions().mode() & 0o777, 0o600, "{who}");
        }
        m.restart();
        assert_eq!(std::fs::read(dir.join("cert.pem")).unwrap(), cert, "{who}");
        let get = m.curl(&["{c}/v2/keys/auto"]);
        assert!(get.stdout.contains("\"value\":\"tls\""), "{who}: {get:?}");
    }
}

/// An https URL without a certificate (and without auto TLS) refuses to start, with
/// etcd's message.
#[test]
fn https_without_a_certificate_refuses_to_start() {
    let out = std::process::Command::new(oxcd())
        .args([
            "--listen-client-urls",
            "https://127.0.0.1:2379",
            "--advertise-client-urls",
            "https://127.0.0.1:2379",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("TLS key/cert (--cert-file, --key-file) must be provided for client url https://127.0.0.1:2379 with HTTPS scheme"),
        "{err}"
    );
}
