//! Differential tests of the v2 auth API (`/v2/auth/...`) and of access control on the
//! other endpoints: every request goes to a fresh Debian etcd 3.4 (`--enable-v2=true`) and
//! a fresh oxcd, with the same credentials; status, Content-Type, the exact body (JSON
//! bodies of the keys API after normalising indexes), `X-Etcd-Index` relative to the start,
//! and the presence of `X-Etcd-Cluster-Id`, `WWW-Authenticate` and `Allow` must match.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use oxcd_tests::{normalized, ureq, Pair, Reply};

/// One step: method, path, credentials (`user:pass`, or `raw:<Authorization value>`), body.
/// A path ending in `#status` compares only status and headers (bodies that name ports).
type Step = (
    &'static str,
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
);

#[derive(Debug, PartialEq)]
struct Answer {
    status: u16,
    content_type: String,
    etcd_index: Option<i64>,
    body: String,
    headers: Vec<&'static str>,
}

fn send(base: &str, base_index: u64, step: &Step) -> Answer {
    let (method, path, creds, body) = *step;
    let (path, status_only) = match path.strip_suffix("#status") {
        Some(p) => (p, true),
        None => (path, false),
    };
    let agent = ureq::AgentBuilder::new()
        .redirects(0)
        .timeout(Duration::from_secs(30))
        .build();
    let mut req = agent.request(method, &format!("{base}{path}"));
    match creds {
        Some(raw) if raw.starts_with("raw:") => req = req.set("Authorization", &raw[4..]),
        Some(up) => {
            let enc = base64::engine::general_purpose::STANDARD.encode(up);
            req = req.set("Authorization", &format!("Basic {enc}"));
        }
        None => {}
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
        Err(e) => panic!("{method} {path}: transport error {e}"),
    };
    let mut headers = Vec::new();
    for h in ["X-Etcd-Cluster-Id", "WWW-Authenticate", "Allow"] {
        if resp.header(h).is_some() {
            headers.push(h);
        }
    }
    let reply = Reply {
        status: resp.status(),
        etcd_index: resp.header("X-Etcd-Index").and_then(|v| v.parse().ok()),
        content_type: resp.header("Content-Type").unwrap_or("").to_string(),
        body: resp.into_string().unwrap_or_default(),
    };
    let (status, mut etcd_index, content_type, json) = normalized(&reply, base_index);
    if status_only {
        etcd_index = None;
    }
    // Keys API bodies carry absolute indexes: compare them normalised. Everything else is
    // compared byte for byte.
    let body = if status_only {
        String::new()
    } else if path.starts_with("/v2/keys") {
        json.to_string()
    } else {
        reply.body
    };
    Answer {
        status,
        content_type,
        etcd_index,
        body,
        headers,
    }
}

/// Sends every step to both servers and records where the answers differ.
trait RunSteps {
    fn run(&mut self, steps: &[Step]);
}

impl RunSteps for Pair {
    fn run(&mut self, steps: &[Step]) {
        for step in steps {
            let e = send(&self.etcd.client_url, self.etcd_base, step);
            let o = send(&self.oxcd.client_url, self.oxcd_base, step);
            if e != o {
                self.mismatches
                    .push(format!("{step:?}\n  etcd: {e:?}\n  oxcd: {o:?}"));
            }
        }
    }
}

fn run(steps: &[Step]) {
    let mut p = Pair::start(Path::new(env!("CARGO_BIN_EXE_oxcd")));
    p.run(steps);
    p.finish();
}

#[test]
fn users_roles_grants_and_errors_with_auth_disabled() {
    run(&[
        ("GET", "/v2/auth/enable", None, None),
        ("GET", "/v2/auth/users", None, None),
        ("GET", "/v2/auth/users/", None, None),
        ("GET", "/v2/auth/roles", None, None),
        ("GET", "/v2/auth/roles/root", None, None),
        ("GET", "/v2/auth/roles/nope", None, None),
        ("GET", "/v2/auth/users/nope", None, None),
        // Users: creation, password rules, JSON errors.
        ("PUT", "/v2/auth/users/foo", None, Some(r#"{"user":"foo"}"#)),
        (
            "PUT",
            "/v2/auth/users/foo",
            None,
            Some(r#"{"user":"bar","password":"p"}"#),
        ),
        ("PUT", "/v2/auth/users/foo", None, Some(r#"{"user":"foo","#)),
        ("PUT", "/v2/auth/users/foo", None, Some("")),
        ("PUT", "/v2/auth/users/foo", None, Some("null")),
        ("PUT", "/v2/auth/users/foo", None, Some(r#"{"user":7}"#)),
        (
            "PUT",
            "/v2/auth/users/foo",
            None,
            Some(r#"{"user":"foo","password":"pass"} trailing"#),
        ),
        (
            "PUT",
            "/v2/auth/users/foo",
            None,
            Some(r#"{"user":"foo","password":"pass"}"#),
        ),
        ("GET", "/v2/auth/users/foo", None, None),
        ("PUT", "/v2/auth/users/foo", None, Some(r#"{"user":"foo"}"#)),
        ("PUT", "/v2/auth/users/foo", None, Some(r#"{"user":"foo"}"#)),
        (
            "PUT",
            "/v2/auth/users/bar",
            None,
            Some(r#"{"USER":"bar","Password":"x","roles":["b","a"]}"#),
        ),
        (
            "PUT",
            "/v2/auth/users/bar",
            None,
            Some(r#"{"user":"bar","password":"x","roles":["a"]}"#),
        ),
        ("GET", "/v2/auth/users/bar", None, None),
        // Grants and revokes.
        (
            "PUT",
            "/v2/auth/users/foo",
            None,
            Some(r#"{"user":"foo","roles":["x"],"grant":["y"]}"#),
        ),
        (
            "PUT",
            "/v2/auth/users/nope",
            None,
            Some(r#"{"user":"nope","grant":["y"]}"#),
        ),
        (
            "PUT",
            "/v2/auth/roles/ro",
            None,
            Some(r#"{"role":"ro","permissions":{"kv":{"read":["/foo/*"]}}}"#),
        ),
        ("PUT", "/v2/auth/roles/ro", None, Some(r#"{"role":"ro"}"#)),
        (
            "PUT",
            "/v2/auth/roles/root",
            None,
            Some(r#"{"role":"root"}"#),
        ),
        ("PUT", "/v2/auth/roles/rw", None, Some(r#"{"role":"rw"}"#)),
        (
            "PUT",
            "/v2/auth/roles/rw",
            None,
            Some(r#"{"role":"other"}"#),
        ),
        (
            "PUT",
            "/v2/auth/users/foo",
            None,
            Some(r#"{"user":"foo","grant":["ro"]}"#),
        ),
        (
            "PUT",
            "/v2/auth/users/foo",
            None,
            Some(r#"{"user":"foo","grant":["ro"]}"#),
        ),
        (
            "PUT",
            "/v2/auth/users/foo",
            None,
            Some(r#"{"user":"foo","revoke":["rw"]}"#),
        ),
        (
            "PUT",
            "/v2/auth/users/foo",
            None,
            Some(r#"{"user":"foo","grant":["rw","ghost"]}"#),
        ),
        ("GET", "/v2/auth/users/foo", None, None),
        ("GET", "/v2/auth/users", None, None),
        (
            "PUT",
            "/v2/auth/users/foo",
            None,
            Some(r#"{"user":"foo","revoke":["ghost"]}"#),
        ),
        // Roles: permissions granted and revoked.
        (
            "PUT",
            "/v2/auth/roles/rw",
            None,
            Some(r#"{"role":"rw","grant":{"kv":{"read":["/a","/b/*"],"write":["/b/*"]}}}"#),
        ),
        (
            "PUT",
            "/v2/auth/roles/rw",
            None,
            Some(r#"{"role":"rw","grant":{"kv":{"read":["/a"]}}}"#),
        ),
        (
            "PUT",
            "/v2/auth/roles/rw",
            None,
            Some(r#"{"role":"rw","grant":{"kv":{"write":["/b/*"]}}}"#),
        ),
        (
            "PUT",
            "/v2/auth/roles/rw",
            None,
            Some(r#"{"role":"rw","revoke":{"kv":{"read":["/zzz"]}}}"#),
        ),
        (
            "PUT",
            "/v2/auth/roles/rw",
            None,
            Some(r#"{"role":"rw","revoke":{"kv":{"read":["/a"]}}}"#),
        ),
        (
            "PUT",
            "/v2/auth/roles/rw",
            None,
            Some(
                r#"{"role":"rw","permissions":{"kv":{"read":["/q"]}},"grant":{"kv":{"read":["/r"]}}}"#,
            ),
        ),
        (
            "PUT",
            "/v2/auth/roles/ro",
            None,
            Some(r#"{"role":"ro","revoke":{"kv":{"write":["/x"]}}}"#),
        ),
        (
            "PUT",
            "/v2/auth/roles/ro",
            None,
            Some(r#"{"role":"ro","revoke":{"kv":{"write":["/x"]}}}"#),
        ),
        (
            "PUT",
            "/v2/auth/roles/nope",
            None,
            Some(r#"{"role":"nope","grant":{"kv":{"read":["/a"]}}}"#),
        ),
        (
            "PUT",
            "/v2/auth/roles/root",
            None,
            Some(r#"{"role":"root","grant":{"kv":{"read":["/a"]}}}"#),
        ),
        ("GET", "/v2/auth/roles/rw", None, None),
        ("GET", "/v2/auth/roles", None, None),
        ("GET", "/v2/auth/users", None, None),
        // Deleting.
        ("DELETE", "/v2/auth/roles/root", None, None),
        ("DELETE", "/v2/auth/roles/ghost", None, None),
        ("DELETE", "/v2/auth/roles/rw", None, None),
        ("GET", "/v2/auth/users/foo", None, None),
        ("GET", "/v2/auth/users", None, None),
        ("DELETE", "/v2/auth/users/foo", None, None),
        ("DELETE", "/v2/auth/users/foo", None, None),
        ("GET", "/v2/auth/users/foo", None, None),
        // Routing and methods.
        ("POST", "/v2/auth/users", None, Some("{}")),
        ("POST", "/v2/auth/users/foo", None, Some("{}")),
        ("PATCH", "/v2/auth/roles/ro", None, Some("{}")),
        ("POST", "/v2/auth/enable", None, None),
        ("GET", "/v2/auth/users/a/b", None, None),
        ("GET", "/v2/auth/roles/a/b", None, None),
        ("GET", "/v2/auth/users/a/", None, None),
        ("GET", "/v2/auth", None, None),
        ("GET", "/v2/auth/", None, None),
        ("GET", "/v2/auth/enable/", None, None),
        ("GET", "/v2/auth/other", None, None),
        ("GET", "/v2/auth/users?a=%zz", None, None),
        // The auth records are not keys.
        ("GET", "/v2/keys/?recursive=true", None, None),
        ("GET", "/v2/keys/2", None, None),
        ("GET", "/v2/auth/enable", None, None),
        ("DELETE", "/v2/auth/enable", None, None),
    ]);
}

#[test]
fn enabling_auth_guest_users_and_root_only_operations() {
    run(&[
        ("PUT", "/v2/keys/foo/bar", None, Some("value=1")),
        ("PUT", "/v2/keys/pub", None, Some("value=2")),
        ("PUT", "/v2/auth/enable", None, None),
        (
            "PUT",
            "/v2/auth/users/reader",
            None,
            Some(r#"{"user":"reader","password":"rpw"}"#),
        ),
        (
            "PUT",
            "/v2/auth/roles/foo",
            None,
            Some(r#"{"role":"foo","permissions":{"kv":{"read":["/foo/*"],"write":["/foo/bar"]}}}"#),
        ),
        (
            "PUT",
            "/v2/auth/users/reader",
            None,
            Some(r#"{"user":"reader","grant":["foo"]}"#),
        ),
        (
            "PUT",
            "/v2/auth/users/root",
            None,
            Some(r#"{"user":"root","password":"rootpw"}"#),
        ),
        ("GET", "/v2/auth/users/root", None, None),
        ("PUT", "/v2/auth/enable", None, None),
        ("GET", "/v2/auth/enable", None, None),
        ("PUT", "/v2/auth/enable", None, None),
        ("PUT", "/v2/auth/enable", Some("root:rootpw"), None),
        ("PUT", "/v2/auth/enable", Some("reader:rpw"), None),
        // Root-only listings and records.
        ("GET", "/v2/auth/users", None, None),
        ("GET", "/v2/auth/users", Some("root:wrong"), None),
        ("GET", "/v2/auth/users", Some("reader:rpw"), None),
        ("GET", "/v2/auth/users", Some("root:rootpw"), None),
        ("GET", "/v2/auth/roles", Some("root:rootpw"), None),
        ("GET", "/v2/auth/roles/guest", Some("root:rootpw"), None),
        ("GET", "/v2/auth/users/reader", Some("raw:Basic !!"), None),
        (
            "GET",
            "/v2/auth/users/reader",
            Some("raw:basic cm9vdDpyb290cHc="),
            None,
        ),
        (
            "GET",
            "/v2/auth/users/reader",
            Some("raw:Basic cm9vdHJvb3Rwdw=="),
            None,
        ),
        ("POST", "/v2/auth/users", None, None),
        ("GET", "/v2/auth/users/a/b", None, None),
        ("DELETE", "/v2/auth/users/root", Some("root:rootpw"), None),
        ("DELETE", "/v2/auth/roles/root", Some("root:rootpw"), None),
        // Keys as the guest (the default guest role may do everything but list "/").
        ("GET", "/v2/keys/foo/bar", None, None),
        ("GET", "/v2/keys/", None, None),
        ("GET", "/v2/keys", None, None),
        ("GET", "/v2/keys/nope", None, None),
        ("PUT", "/v2/keys/guest", None, Some("value=g")),
        ("PUT", "/v2/keys/x?ttl=abc", None, Some("value=g")),
        // Restrict the guest to reading /pub.
        (
            "PUT",
            "/v2/auth/roles/guest",
            Some("root:rootpw"),
            Some(r#"{"role":"guest","revoke":{"kv":{"read":["/*"],"write":["/*"]}}}"#),
        ),
        (
            "PUT",
            "/v2/auth/roles/guest",
            Some("root:rootpw"),
            Some(r#"{"role":"guest","grant":{"kv":{"read":["/pub"]}}}"#),
        ),
        ("GET", "/v2/keys/pub", None, None),
        ("GET", "/v2/keys/pub?recursive=true", None, None),
        ("GET", "/v2/keys/foo/bar", None, None),
        ("PUT", "/v2/keys/pub", None, Some("value=3")),
        ("PUT", "/v2/keys/x?ttl=abc", None, Some("value=g")),
        ("GET", "/v2/keys/foo/bar?wait=true&waitIndex=1", None, None),
        // A user with a role.
        ("GET", "/v2/keys/foo/bar", Some("reader:rpw"), None),
        ("GET", "/v2/keys/foo/bar", Some("reader:bad"), None),
        ("GET", "/v2/keys/foo/bar", Some("reader:"), None),
        ("GET", "/v2/keys/foo/bar", Some("nobody:x"), None),
        (
            "GET",
            "/v2/keys/foo?recursive=true",
            Some("reader:rpw"),
            None,
        ),
        (
            "GET",
            "/v2/keys/foo/?recursive=true",
            Some("reader:rpw"),
            None,
        ),
        (
            "PUT",
            "/v2/keys/foo/bar",
            Some("reader:rpw"),
            Some("value=r"),
        ),
        (
            "PUT",
            "/v2/keys/foo/baz",
            Some("reader:rpw"),
            Some("value=r"),
        ),
        ("DELETE", "/v2/keys/foo/bar", Some("reader:rpw"), None),
        ("GET", "/v2/keys/pub", Some("reader:rpw"), None),
        ("GET", "/v2/keys/pub", Some("raw:Basic !!"), None),
        ("GET", "/v2/keys/?recursive=true", Some("root:rootpw"), None),
        (
            "PUT",
            "/v2/keys/rootkey",
            Some("root:rootpw"),
            Some("value=r"),
        ),
        // Password change: the old password stops working.
        (
            "PUT",
            "/v2/auth/users/reader",
            Some("root:rootpw"),
            Some(r#"{"user":"reader","password":"new"}"#),
        ),
        ("GET", "/v2/keys/foo/bar", Some("reader:rpw"), None),
        ("GET", "/v2/keys/foo/bar", Some("reader:new"), None),
        // Members: reads are open, writes need root; stats are open.
        ("GET", "/v2/members#status", None, None),
        ("POST", "/v2/members", None, Some("{}")),
        ("DELETE", "/v2/members/1234", Some("reader:new"), None),
        ("GET", "/v2/stats/store#status", None, None),
        ("GET", "/v2/stats/self#status", None, None),
        ("GET", "/v2/machines#status", None, None),
        // A deleted guest role leaves guests nothing.
        ("DELETE", "/v2/auth/roles/guest", Some("root:rootpw"), None),
        ("GET", "/v2/keys/pub", None, None),
        // Disabling.
        ("DELETE", "/v2/auth/enable", None, None),
        ("DELETE", "/v2/auth/enable", Some("reader:new"), None),
        ("DELETE", "/v2/auth/enable", Some("root:rootpw"), None),
        ("DELETE", "/v2/auth/enable", Some("root:rootpw"), None),
        ("GET", "/v2/auth/enable", None, None),
        ("GET", "/v2/keys/foo/bar", None, None),
        ("GET", "/v2/auth/users", None, None),
        ("DELETE", "/v2/auth/users/root", None, None),
        ("PUT", "/v2/auth/enable", None, None),
        // Enabling again keeps the (re-created) guest role.
        (
            "PUT",
            "/v2/auth/users/root",
            None,
            Some(r#"{"user":"root","password":"p2","roles":["extra"]}"#),
        ),
        ("PUT", "/v2/auth/enable", None, None),
        ("GET", "/v2/auth/roles", Some("root:p2"), None),
        ("GET", "/v2/auth/users/root", Some("root:p2"), None),
        ("GET", "/v2/keys/pub", None, None),
    ]);
}
