//! v2 auth state is replicated data: users, roles and the enabled flag survive a SIGKILL
//! and a restart, also when the member restarts from a snapshot (`--snapshot-count 10`).

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use oxcd_tests::{ureq, Member};

fn call(
    base: &str,
    method: &str,
    path: &str,
    creds: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let mut req = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(30))
        .build()
        .request(method, &format!("{base}{path}"));
    if let Some(c) = creds {
        let enc = base64::engine::general_purpose::STANDARD.encode(c);
        req = req.set("Authorization", &format!("Basic {enc}"));
    }
    let res = match body {
        Some(b) if path.starts_with("/v2/keys") => req
            .set("Content-Type", "application/x-www-form-urlencoded")
            .send_string(b),
        Some(b) => req.send_string(b),
        None => req.call(),
    };
    let resp = match res {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {path}: {e}"),
    };
    (resp.status(), resp.into_string().unwrap_or_default())
}

/// Method, path, credentials, body, expected status.
type SetupStep = (
    &'static str,
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
    u16,
);

/// What a client can observe of the auth state.
fn observe(base: &str) -> Vec<(u16, String)> {
    let root = Some("root:rootpw");
    vec![
        call(base, "GET", "/v2/auth/enable", None, None),
        call(base, "GET", "/v2/auth/users", None, None),
        call(base, "GET", "/v2/auth/users", root, None),
        call(base, "GET", "/v2/auth/roles", root, None),
        call(base, "GET", "/v2/keys/app/k1", Some("app:apppw"), None),
        call(base, "GET", "/v2/keys/other", Some("app:apppw"), None),
        call(base, "GET", "/v2/keys/app/k1", Some("app:wrong"), None),
        call(base, "GET", "/v2/keys/public", None, None),
        call(base, "GET", "/v2/keys/app/k1", None, None),
    ]
}

#[test]
fn users_roles_and_enabled_flag_survive_kill_restart_and_snapshot() {
    let mut m = Member::start(
        Path::new(env!("CARGO_BIN_EXE_oxcd")),
        &["--snapshot-count", "10"],
    );
    let base = m.client_url.clone();
    let root = Some("root:rootpw");
    let setup: &[SetupStep] = &[
        ("PUT", "/v2/keys/app/k1", None, Some("value=v1"), 201),
        ("PUT", "/v2/keys/other", None, Some("value=o"), 201),
        ("PUT", "/v2/keys/public", None, Some("value=p"), 201),
        (
            "PUT",
            "/v2/auth/users/root",
            None,
            Some(r#"{"user":"root","password":"rootpw"}"#),
            201,
        ),
        (
            "PUT",
            "/v2/auth/roles/app",
            None,
            Some(r#"{"role":"app","permissions":{"kv":{"read":["/app/*"],"write":["/app/*"]}}}"#),
            201,
        ),
        (
            "PUT",
            "/v2/auth/users/app",
            None,
            Some(r#"{"user":"app","password":"apppw"}"#),
            201,
        ),
        (
            "PUT",
            "/v2/auth/users/app",
            None,
            Some(r#"{"user":"app","grant":["app"]}"#),
            200,
        ),
        ("PUT", "/v2/auth/enable", None, None, 200),
        (
            "PUT",
            "/v2/auth/roles/guest",
            root,
            Some(r#"{"role":"guest","revoke":{"kv":{"read":["/*"],"write":["/*"]}}}"#),
            200,
        ),
        (
            "PUT",
            "/v2/auth/roles/guest",
            root,
            Some(r#"{"role":"guest","grant":{"kv":{"read":["/public"]}}}"#),
            200,
        ),
    ];
    for (method, path, creds, body, want) in setup {
        let (status, text) = call(&base, method, path, *creds, *body);
        assert_eq!(status, *want, "{method} {path}: {text}");
    }
    let before = observe(&base);
    assert_eq!(before[0], (200, "{\"enabled\":true}\n".to_string()));
    assert_eq!(before[1].0, 401);
    assert_eq!(before[4].0, 200);
    assert_eq!(before[5].0, 401);
    assert_eq!(before[6].0, 401);
    assert_eq!(before[7].0, 200);
    assert_eq!(before[8].0, 401);

    // Restart from the WAL alone.
    m.restart();
    assert_eq!(observe(&base), before, "after SIGKILL and restart");

    // Enough writes for snapshots (every 10 entries), then restart from a snapshot.
    for i in 0..40 {
        let (status, text) = call(
            &base,
            "PUT",
            &format!("/v2/keys/app/n{i}"),
            Some("app:apppw"),
            Some("value=x"),
        );
        assert_eq!(status, 201, "{text}");
    }
    let snaps = std::fs::read_dir(m.dir.0.join("data/member/snap"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with(".snap"))
                .count()
        })
        .unwrap_or(0);
    assert!(snaps > 0, "no snapshot written");
    m.restart();
    assert_eq!(observe(&base), before, "after a restart from a snapshot");

    // The restarted process writes auth records again (its auth directories already exist).
    let (status, text) = call(
        &base,
        "PUT",
        "/v2/auth/roles/later",
        root,
        Some(r#"{"role":"later"}"#),
    );
    assert_eq!(status, 201, "{text}");
    let (status, _) = call(&base, "DELETE", "/v2/auth/enable", root, None);
    assert_eq!(status, 200);
    m.restart();
    assert_eq!(
        call(&base, "GET", "/v2/auth/enable", None, None),
        (200, "{\"enabled\":false}\n".to_string())
    );
    assert_eq!(
        call(&base, "GET", "/v2/auth/roles/later", None, None).0,
        200
    );
}

/// Auth written through one member holds on every member: the records and the enabled
/// flag are replicated entries, and each member's apply refreshes its own enabled flag.
#[test]
fn auth_state_written_through_one_member_applies_on_all() {
    let cluster = oxcd_tests::cluster::Cluster::start(
        Path::new(env!("CARGO_BIN_EXE_oxcd")),
        3,
        oxcd_tests::cluster::FAST_TIMING,
        false,
    );
    let urls: Vec<String> = cluster
        .members
        .iter()
        .map(|m| m.client_url.clone())
        .collect();
    let root = Some("root:rootpw");
    let steps: &[(usize, SetupStep)] = &[
        (0, ("PUT", "/v2/keys/app/k1", None, Some("value=v1"), 201)),
        (
            1,
            (
                "PUT",
                "/v2/auth/users/root",
                None,
                Some(r#"{"user":"root","password":"rootpw"}"#),
                201,
            ),
        ),
        (
            2,
            (
                "PUT",
                "/v2/auth/roles/app",
                None,
                Some(r#"{"role":"app","permissions":{"kv":{"read":["/app/*"],"write":[]}}}"#),
                201,
            ),
        ),
        (
            0,
            (
                "PUT",
                "/v2/auth/users/app",
                None,
                Some(r#"{"user":"app","password":"apppw","roles":["app"]}"#),
                200,
            ),
        ),
        (1, ("PUT", "/v2/auth/enable", None, None, 200)),
        (
            2,
            (
                "PUT",
                "/v2/auth/roles/guest",
                root,
                Some(r#"{"role":"guest","revoke":{"kv":{"read":["/*"],"write":["/*"]}}}"#),
                200,
            ),
        ),
    ];
    for (i, (method, path, creds, body, want)) in steps {
        let (status, text) = call(&urls[*i], method, path, *creds, *body);
        assert_eq!(status, *want, "member {i}: {method} {path}: {text}");
    }
    let expect = |url: &str| -> Vec<u16> {
        vec![
            call(url, "GET", "/v2/auth/users", None, None).0,
            call(url, "GET", "/v2/auth/users", root, None).0,
            call(url, "GET", "/v2/keys/app/k1", Some("app:apppw"), None).0,
            call(
                url,
                "PUT",
                "/v2/keys/app/k1",
                Some("app:apppw"),
                Some("value=x"),
            )
            .0,
            call(url, "GET", "/v2/keys/app/k1", None, None).0,
            call(url, "POST", "/v2/members", Some("app:apppw"), Some("{}")).0,
        ]
    };
    for (i, url) in urls.iter().enumerate() {
        // Followers apply the last entries a moment after the proposer answered.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let got = expect(url);
            if got == [401, 200, 200, 401, 401, 401] {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "member {i}: {got:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
