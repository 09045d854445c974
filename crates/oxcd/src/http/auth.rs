//! The v2 auth API (`/v2/auth/{enable,users,roles}`) and the access checks of the other
//! endpoints, as etcd's `v2http/client_auth.go` and `v2auth` store do them.
//!
//! Records live in the v2 store under `/2` and change through ordinary raft proposals
//! (create, update, delete of `/2/...` nodes), exactly the writes etcd makes: they are
//! replicated, survive restarts and travel in snapshots with the rest of the store. Reads
//! are local, except the read-modify-write paths, which read with a quorum as etcd does.
//!
//! Who is asking: the `Authorization: Basic` header, or, with `--client-cert-auth` and no
//! such header, the common names of the verified client certificate chain that the
//! connection hands in through [`ConnInfo::cert_common_names`] (the TLS listener fills it).
//! A request without credentials gets the `guest` role's permissions on the keys API and no
//! root rights.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use oxcd_api::json::to_string as to_json;
use oxcd_api::v2::{Error as V2Error, ErrorCode, Event};
use serde_json::{json, Value};

use super::base::http_error;
use super::body::RespBody;
use super::form::{path_clean, path_join};
use super::keys::error_response;
use super::{method_not_allowed, names, text_error};
use crate::auth::{
    attach_root_role, auth_err, check_password, default_guest_role, first_json_value,
    hash_password, merge_role, merge_user, parse_basic_auth, root_role, AuthError, MergeError,
    Permissions, Role, User, GUEST_ROLE, ROOT_ROLE, STORE_PERMS_PREFIX,
};
use crate::server::request::{Expiry, V2Request};
use crate::server::EtcdServer;

/// The URL prefix of the auth API.
pub const AUTH_PREFIX: &str = "/v2/auth";

/// What the connection tells about the client.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's address.
    pub remote: SocketAddr,
    /// Common names of the verified client certificate chains, in order (empty without
    /// TLS client certificates). With `--client-cert-auth`, a request without an
    /// `Authorization` header is the first of these names that is a user (etcd's
    /// `userFromClientCertificate`).
    pub cert_common_names: Arc<[String]>,
}

impl ConnInfo {
    /// A plain TCP connection.
    pub fn plain(remote: SocketAddr) -> Self {
        ConnInfo {
            remote,
            cert_common_names: Arc::from(Vec::new()),
        }
    }
}

/// The credentials of one request, taken from its headers before the body is read.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The `Authorization` header, when present and not empty.
    pub authorization: Option<HeaderValue>,
    /// The connection's certificate names.
    pub cert_common_names: Arc<[String]>,
}

impl Credentials {
    /// Credentials of a request.
    pub fn from_request(headers: &HeaderMap, conn: &ConnInfo) -> Self {
        Credentials {
            authorization: headers
                .get(http::header::AUTHORIZATION)
                .filter(|v| !v.is_empty())
                .cloned(),
            cert_common_names: Arc::clone(&conn.cert_common_names),
        }
    }
}

/// Why an auth operation failed; each kind is written as etcd's `writeError` writes it.
#[derive(Debug)]
pub enum Failure {
    /// `{"message":"auth: ..."}` with a status.
    Auth(AuthError),
    /// A store or raft error: etcd's v2 error JSON.
    V2(V2Error),
    /// Anything else: 500 `{"message":"Internal Server Error"}`.
    Internal(String),
}

impl From<AuthError> for Failure {
    fn from(e: AuthError) -> Self {
        Failure::Auth(e)
    }
}

impl Failure {
    fn response(&self) -> Response<RespBody> {
        match self {
            Failure::Auth(e) => http_error(
                StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                &e.message,
            ),
            Failure::V2(e) => error_response(e),
            Failure::Internal(msg) => {
                tracing::warn!(error = %msg, "auth: unexpected error");
                http_error(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error")
            }
        }
    }

    fn is_code(&self, code: ErrorCode) -> bool {
        matches!(self, Failure::V2(e) if e.code == code)
    }
}

/// etcd's `v2auth.store` over this server: records read from the local store (or with a
/// quorum), written through raft.
struct AuthStore<'a> {
    server: &'a Arc<EtcdServer>,
}

impl AuthStore<'_> {
    async fn request_resource(&self, res: &str, quorum: bool) -> Result<Event, Failure> {
        let path = path_join(STORE_PERMS_PREFIX, res);
        let res = if quorum {
            self.server
                .do_v2(V2Request::QuorumGet {
                    path,
                    recursive: false,
                    sorted: false,
                })
                .await
                .map_err(|e| Failure::V2(e.to_v2()))?
        } else {
            self.server.get(&path, false, false)
        };
        res.map_err(Failure::V2)
    }

    async fn propose(&self, req: V2Request) -> Result<Event, Failure> {
        self.server
            .do_v2(req)
            .await
            .map_err(|e| Failure::V2(e.to_v2()))?
            .map_err(Failure::V2)
    }

    /// etcd's `ensureAuthDirectories`: `/2`, `/2/users`, `/2/roles` and `/2/enabled`
    /// (`false`) are created before the first write of this process.
    async fn ensure_dirs(&self) -> Result<(), Failure> {
        let auth = &self.server.auth;
        if auth.ensured.load(Ordering::Acquire) {
            return Ok(());
        }
        for (path, dir, value) in [
            ("/2", true, ""),
            ("/2/users", true, ""),
            ("/2/roles", true, ""),
            ("/2/enabled", false, "false"),
        ] {
            let req = V2Request::Create {
                path: path.to_string(),
                value: value.to_string(),
                dir,
                unique: false,
                expiry: Expiry::default(),
            };
            match self.propose(req).await {
                Ok(_) => {}
                Err(e) if e.is_code(ErrorCode::NodeExist) => {}
                Err(e) => {
                    tracing::warn!(?e, "auth: failed to create the auth directories");
                    return Err(e);
                }
            }
        }
        auth.ensured.store(true, Ordering::Release);
        Ok(())
    }

    async fn set_resource(
        &self,
        res: &str,
        value: &Value,
        prev_exist: bool,
    ) -> Result<Event, Failure> {
        self.ensure_dirs().await?;
        let path = path_join(STORE_PERMS_PREFIX, res);
        let value = to_json(value);
        let req = if prev_exist {
            V2Request::Update {
                path,
                value,
                expiry: Expiry::default(),
            }
        } else {
            V2Request::Create {
                path,
                value,
                dir: false,
                unique: false,
                expiry: Expiry::default(),
            }
        };
        self.propose(req).await
    }

    async fn delete_resource(&self, res: &str) -> Result<Event, Failure> {
        self.ensure_dirs().await?;
        self.propose(V2Request::Delete {
            path: path_join(STORE_PERMS_PREFIX, res),
            dir: false,
            recursive: false,
        })
        .await
    }

    fn names_of(ev: Event) -> Vec<String> {
        let mut names: Vec<String> = ev
            .node
            .and_then(|mut n| n.nodes.take())
            .unwrap_or_default()
            .into_iter()
            .map(|n| n.key.rsplit('/').next().unwrap_or_default().to_string())
            .collect();
        names.sort();
        names
    }

    async fn all_users(&self) -> Result<Vec<String>, Failure> {
        match self.request_resource("/users/", false).await {
            Ok(ev) => Ok(Self::names_of(ev)),
            Err(e) if e.is_code(ErrorCode::KeyNotFound) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    async fn all_roles(&self) -> Result<Vec<String>, Failure> {
        match self.request_resource("/roles/", false).await {
            Ok(ev) => {
                let mut names = Self::names_of(ev);
                names.push(ROOT_ROLE.to_string());
                names.sort();
                Ok(names)
            }
            Err(e) if e.is_code(ErrorCode::KeyNotFound) => Ok(vec![ROOT_ROLE.to_string()]),
            Err(e) => Err(e),
        }
    }

    fn value_of(ev: Event) -> Result<Value, Failure> {
        let text = ev.node.and_then(|mut n| n.value.take()).unwrap_or_default();
        serde_json::from_str(&text).map_err(|e| Failure::Internal(e.to_string()))
    }

    async fn get_user(&self, name: &str, quorum: bool) -> Result<User, Failure> {
        let ev = match self
            .request_resource(&format!("/users/{name}"), quorum)
            .await
        {
            Err(e) if e.is_code(ErrorCode::KeyNotFound) => {
                return Err(auth_err(404, format!("User {name} does not exist.")).into())
            }
            r => r?,
        };
        let u = User::from_json(&Self::value_of(ev)?)
            .map_err(|_| Failure::Internal("stored user is not valid".into()))?;
        Ok(if u.user == ROOT_ROLE {
            attach_root_role(u)
        } else {
            u
        })
    }

    async fn get_role(&self, name: &str, quorum: bool) -> Result<Role, Failure> {
        if name == ROOT_ROLE {
            return Ok(root_role());
        }
        let ev = match self
            .request_resource(&format!("/roles/{name}"), quorum)
            .await
        {
            Err(e) if e.is_code(ErrorCode::KeyNotFound) => {
                return Err(auth_err(404, format!("Role {name} does not exist.")).into())
            }
            r => r?,
        };
        Role::from_json(&Self::value_of(ev)?)
            .map_err(|_| Failure::Internal("stored role is not valid".into()))
    }

    async fn create_user(&self, user: User) -> Result<User, Failure> {
        let mut user = if user.user == ROOT_ROLE {
            attach_root_role(user)
        } else {
            user
        };
        if user.password.is_empty() {
            return Err(auth_err(
                400,
                format!("Cannot create user {} with an empty password", user.user),
            )
            .into());
        }
        user.password = hash(user.password).await.map_err(Failure::Internal)?;
        match self
            .set_resource(&format!("/users/{}", user.user), &user.to_json(), false)
            .await
        {
            Ok(_) => {
                tracing::info!(user = %user.user, "auth: created a user");
                Ok(user)
            }
            Err(e) if e.is_code(ErrorCode::NodeExist) => {
                Err(auth_err(409, format!("User {} already exists.", user.user)).into())
            }
            Err(e) => Err(e),
        }
    }

    async fn update_user(&self, user: User) -> Result<User, Failure> {
        // etcd's "doesn't exist" branch here is unreachable (`getUser` already turned the
        // store's error into an auth error): a missing user gets `getUser`'s message.
        let old = self.get_user(&user.user, true).await?;
        let new_password = (!user.password.is_empty()).then(|| user.password.clone());
        let hashed = match new_password {
            Some(p) => Some(hash(p).await.map_err(Failure::Internal)?),
            None => None,
        };
        let merged = merge_user(&old, &user, |_| Ok(hashed.clone().unwrap_or_default())).map_err(
            |e| match e {
                MergeError::Auth(a) => Failure::Auth(a),
                MergeError::Internal(m) => Failure::Internal(m),
            },
        )?;
        if merged == old {
            return Err(auth_err(
                400,
                "User not updated. Use grant/revoke/password to update the user.",
            )
            .into());
        }
        self.set_resource(&format!("/users/{}", user.user), &merged.to_json(), true)
            .await?;
        self.server.auth.passwords.forget(&user.user);
        tracing::info!(user = %user.user, "auth: updated a user");
        Ok(merged)
    }

    async fn delete_user(&self, name: &str) -> Result<(), Failure> {
        if self.server.auth_enabled() && name == ROOT_ROLE {
            return Err(auth_err(403, "Cannot delete root user while auth is enabled.").into());
        }
        match self.delete_resource(&format!("/users/{name}")).await {
            Ok(_) => {
                self.server.auth.passwords.forget(name);
                tracing::info!(user = %name, "auth: deleted a user");
                Ok(())
            }
            Err(e) if e.is_code(ErrorCode::KeyNotFound) => {
                Err(auth_err(404, format!("User {name} does not exist")).into())
            }
            Err(e) => Err(e),
        }
    }

    async fn create_role(&self, role: &Role) -> Result<(), Failure> {
        if role.role == ROOT_ROLE {
            return Err(auth_err(
                403,
                format!("Cannot modify role {}: is root role.", role.role),
            )
            .into());
        }
        match self
            .set_resource(&format!("/roles/{}", role.role), &role.to_json(), false)
            .await
        {
            Ok(_) => {
                tracing::info!(role = %role.role, "auth: created a role");
                Ok(())
            }
            Err(e) if e.is_code(ErrorCode::NodeExist) => {
                Err(auth_err(409, format!("Role {} already exists.", role.role)).into())
            }
            Err(e) => Err(e),
        }
    }

    async fn delete_role(&self, name: &str) -> Result<(), Failure> {
        if name == ROOT_ROLE {
            return Err(auth_err(403, format!("Cannot modify role {name}: is root role.")).into());
        }
        match self.delete_resource(&format!("/roles/{name}")).await {
            Ok(_) => {
                tracing::info!(role = %name, "auth: deleted a role");
                Ok(())
            }
            Err(e) if e.is_code(ErrorCode::KeyNotFound) => {
                Err(auth_err(404, format!("Role {name} doesn't exist.")).into())
            }
            Err(e) => Err(e),
        }
    }

    async fn update_role(&self, role: &Role) -> Result<Role, Failure> {
        if role.role == ROOT_ROLE {
            return Err(auth_err(
                403,
                format!("Cannot modify role {}: is root role.", role.role),
            )
            .into());
        }
        // As for users, a missing role gets `getRole`'s message.
        let old = self.get_role(&role.role, true).await?;
        let merged = merge_role(&old, role)?;
        if merged == old {
            return Err(auth_err(
                400,
                "Role not updated. Use grant/revoke to update the role.",
            )
            .into());
        }
        self.set_resource(&format!("/roles/{}", role.role), &merged.to_json(), true)
            .await?;
        tracing::info!(role = %role.role, "auth: updated a role");
        Ok(merged)
    }

    async fn enable(&self) -> Result<(), Failure> {
        if self.server.auth_enabled() {
            return Err(auth_err(409, "already enabled").into());
        }
        if self.get_user(ROOT_ROLE, true).await.is_err() {
            return Err(auth_err(409, "No root user available, please create one").into());
        }
        if self.get_role(GUEST_ROLE, true).await.is_err() {
            tracing::info!("auth: no guest role access found; creating default");
            self.create_role(&default_guest_role()).await?;
        }
        self.set_resource("/enabled", &Value::Bool(true), true)
            .await?;
        tracing::info!("auth: enabled auth");
        Ok(())
    }

    async fn disable(&self) -> Result<(), Failure> {
        if !self.server.auth_enabled() {
            return Err(auth_err(409, "already disabled").into());
        }
        self.set_resource("/enabled", &Value::Bool(false), true)
            .await?;
        tracing::info!("auth: disabled auth");
        Ok(())
    }

    // ---- who is asking ----

    /// etcd's `userFromBasicAuth`: the user whose password matches, else `None`.
    async fn user_from_basic_auth(&self, header: &HeaderValue) -> Option<User> {
        let Some((name, password)) = parse_basic_auth(header.as_bytes()) else {
            tracing::warn!("auth: malformed basic auth encoding");
            return None;
        };
        let user = self.get_user(&name, false).await.ok()?;
        let cache = &self.server.auth.passwords;
        if cache.hit(&name, &user.password, &password) {
            return Some(user);
        }
        let stored = user.password.clone();
        let pw = password.clone();
        let ok = tokio::task::spawn_blocking(move || check_password(&stored, &pw))
            .await
            .unwrap_or(false);
        if !ok {
            tracing::warn!(user = %name, "auth: incorrect password");
            return None;
        }
        cache.remember(&name, &user.password, &password);
        Some(user)
    }

    /// etcd's `userFromClientCertificate`: the first common name that is a user.
    async fn user_from_client_cert(&self, creds: &Credentials) -> Option<User> {
        for cn in creds.cert_common_names.iter() {
            if let Ok(user) = self.get_user(cn, false).await {
                tracing::debug!(user = %user.user, "auth: authenticated a user by its certificate's common name");
                return Some(user);
            }
        }
        None
    }
}

async fn hash(password: String) -> Result<String, String> {
    tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|e| e.to_string())?
}

/// etcd's `hasRootAccess`.
pub async fn has_root_access(server: &Arc<EtcdServer>, creds: &Credentials) -> bool {
    if !server.auth_enabled() {
        return true;
    }
    let store = AuthStore { server };
    let user = match &creds.authorization {
        None if server.auth.client_cert_auth => store.user_from_client_cert(creds).await,
        None => {
            tracing::warn!("auth: malformed basic auth encoding");
            None
        }
        Some(h) => store.user_from_basic_auth(h).await,
    };
    let Some(user) = user else {
        return false;
    };
    if user.role_names().iter().any(|r| r == ROOT_ROLE) {
        return true;
    }
    tracing::warn!(user = %user.user, "auth: user does not have the root role");
    false
}

/// etcd's `hasWriteRootAccess`: reads are open, writes need root.
pub async fn has_write_root_access(
    server: &Arc<EtcdServer>,
    method: &Method,
    creds: &Credentials,
) -> bool {
    *method == Method::GET || *method == Method::HEAD || has_root_access(server, creds).await
}

/// etcd's `hasKeyPrefixAccess`: `key` is the URL path after `/v2/keys`.
pub async fn has_key_prefix_access(
    server: &Arc<EtcdServer>,
    method: &Method,
    creds: &Credentials,
    key: &str,
    recursive: bool,
) -> bool {
    if !server.auth_enabled() {
        return true;
    }
    let store = AuthStore { server };
    let write = *method != Method::GET && *method != Method::HEAD;
    let user = match &creds.authorization {
        None => {
            let user = if server.auth.client_cert_auth {
                store.user_from_client_cert(creds).await
            } else {
                None
            };
            match user {
                Some(u) => u,
                None => {
                    // etcd's `hasGuestAccess`.
                    let ok = store
                        .get_role(GUEST_ROLE, false)
                        .await
                        .is_ok_and(|role| role.has_key_access(key, write));
                    if !ok {
                        tracing::warn!(%key, "auth: invalid access for an unauthenticated user");
                    }
                    return ok;
                }
            }
        }
        Some(h) => match store.user_from_basic_auth(h).await {
            Some(u) => u,
            None => return false,
        },
    };
    for name in user.role_names() {
        let Ok(role) = store.get_role(name, false).await else {
            continue;
        };
        let ok = if recursive {
            role.has_recursive_access(key, write)
        } else {
            role.has_key_access(key, write)
        };
        if ok {
            return true;
        }
    }
    tracing::warn!(user = %user.user, %key, "auth: invalid access for user on key");
    false
}

/// etcd's `writeNoAuth`.
pub fn no_auth() -> Response<RespBody> {
    http_error(StatusCode::UNAUTHORIZED, "Insufficient credentials")
}

/// The keys API's 401 (etcd's `writeKeyNoAuth`).
pub fn key_no_auth() -> Response<RespBody> {
    error_response(&V2Error::new(
        ErrorCode::Unauthorized,
        "Insufficient credentials",
        0,
    ))
}

fn allow(method: &Method, allowed: &[Method], header: &'static str) -> Option<Response<RespBody>> {
    (!allowed.contains(method)).then(|| method_not_allowed(header))
}

/// The refusal of a root-only auth endpoint, if any: 405 for another method, 401 for a
/// caller without the root role.
async fn refuse_unless_root(
    server: &Arc<EtcdServer>,
    method: &Method,
    creds: &Credentials,
    allowed: &[Method],
    header: &'static str,
) -> Option<Response<RespBody>> {
    if let Some(r) = allow(method, allowed, header) {
        return Some(r);
    }
    if !has_root_access(server, creds).await {
        return Some(no_auth());
    }
    None
}

fn json_ok(server: &EtcdServer, status: StatusCode, body: Option<&Value>) -> Response<RespBody> {
    let mut resp = match body {
        Some(v) => Response::new(RespBody::full(format!("{}\n", to_json(v)))),
        None => Response::new(RespBody::empty()),
    };
    *resp.status_mut() = status;
    headers(server, &mut resp);
    resp
}

/// The headers etcd sets once a request passed the access check.
fn headers(server: &EtcdServer, resp: &mut Response<RespBody>) {
    let h = resp.headers_mut();
    h.insert(names::X_ETCD_CLUSTER_ID, server.cluster_id_header.clone());
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
}

fn with_headers(server: &EtcdServer, mut resp: Response<RespBody>) -> Response<RespBody> {
    headers(server, &mut resp);
    resp
}

/// Serves `/v2/auth/...`. `path` is the clean URL path; `body` the request body (read only
/// for PUT); `query_ok` whether the URL query parses (Go's `ParseForm` on listings).
pub async fn serve(
    server: &Arc<EtcdServer>,
    method: &Method,
    path: &str,
    creds: &Credentials,
    body: Bytes,
    query_ok: bool,
) -> Response<RespBody> {
    let Some(rest) = path.strip_prefix(AUTH_PREFIX) else {
        return text_error(StatusCode::NOT_FOUND, "404 page not found");
    };
    // Go's ServeMux: `/v2/auth/roles`, `/v2/auth/roles/...`, `/v2/auth/users[...]`,
    // `/v2/auth/enable` (exactly).
    let resource = if rest == "/enable" {
        "enable"
    } else if rest == "/roles" || rest.starts_with("/roles/") {
        "roles"
    } else if rest == "/users" || rest.starts_with("/users/") {
        "users"
    } else {
        return text_error(StatusCode::NOT_FOUND, "404 page not found");
    };
    // etcd's `authCapabilityHandler`: no auth until the cluster version is known.
    let capable = server
        .shared
        .cluster_version
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .is_some();
    if !capable {
        return http_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Not capable of accessing auth feature during rolling upgrades.",
        );
    }
    if resource == "enable" {
        return enable_disable(server, method, creds).await;
    }
    let sub = path_clean(rest);
    let pieces: Vec<&str> = sub.split('/').collect();
    match pieces.len() {
        2 => list(server, method, creds, resource, query_ok).await,
        3 if resource == "users" => {
            for_user(server, method, creds, pieces[2], &body, query_ok).await
        }
        3 => for_role(server, method, creds, pieces[2], &body).await,
        _ => http_error(StatusCode::BAD_REQUEST, "Invalid path"),
    }
}

async fn enable_disable(
    server: &Arc<EtcdServer>,
    method: &Method,
    creds: &Credentials,
) -> Response<RespBody> {
    if let Some(r) = allow(
        method,
        &[Method::GET, Method::PUT, Method::DELETE],
        "GET,PUT,DELETE",
    ) {
        return r;
    }
    if !has_write_root_access(server, method, creds).await {
        return no_auth();
    }
    let store = AuthStore { server };
    let enabled = server.auth_enabled();
    let res = match *method {
        Method::GET => {
            return json_ok(server, StatusCode::OK, Some(&json!({ "enabled": enabled })))
        }
        Method::PUT => store.enable().await,
        _ => store.disable().await,
    };
    match res {
        Ok(()) => json_ok(server, StatusCode::OK, None),
        Err(e) => with_headers(server, e.response()),
    }
}

/// `GET /v2/auth/users` and `GET /v2/auth/roles`.
async fn list(
    server: &Arc<EtcdServer>,
    method: &Method,
    creds: &Credentials,
    resource: &str,
    query_ok: bool,
) -> Response<RespBody> {
    if let Some(r) = refuse_unless_root(server, method, creds, &[Method::GET], "GET").await {
        return r;
    }
    let store = AuthStore { server };
    let result: Result<Value, Failure> = async {
        if resource == "roles" {
            let names = store.all_roles().await?;
            if !query_ok {
                return Err(Failure::Internal("invalid query".into()));
            }
            let mut roles = Vec::new();
            for name in names {
                roles.push(store.get_role(&name, false).await?.to_json());
            }
            Ok(json!({ "roles": if roles.is_empty() { Value::Null } else { Value::Array(roles) } }))
        } else {
            let names = store.all_users().await?;
            if !query_ok {
                return Err(Failure::Internal("invalid query".into()));
            }
            let mut users = Vec::new();
            for name in names {
                let user = store.get_user(&name, false).await?;
                let mut roles = Vec::new();
                for r in user.role_names() {
                    if let Ok(role) = store.get_role(r, false).await {
                        roles.push(role.to_json());
                    }
                }
                users.push(user_with_roles(&user.user, roles));
            }
            Ok(json!({ "users": if users.is_empty() { Value::Null } else { Value::Array(users) } }))
        }
    }
    .await;
    match result {
        Ok(v) => json_ok(server, StatusCode::OK, Some(&v)),
        Err(e) => with_headers(server, e.response()),
    }
}

/// etcd's `userWithRoles` (`roles` is `omitempty`).
fn user_with_roles(name: &str, roles: Vec<Value>) -> Value {
    let mut m = serde_json::Map::new();
    m.insert("user".into(), Value::String(name.to_string()));
    if !roles.is_empty() {
        m.insert("roles".into(), Value::Array(roles));
    }
    Value::Object(m)
}

async fn for_user(
    server: &Arc<EtcdServer>,
    method: &Method,
    creds: &Credentials,
    name: &str,
    body: &[u8],
    query_ok: bool,
) -> Response<RespBody> {
    let all = [Method::GET, Method::PUT, Method::DELETE];
    if let Some(r) = refuse_unless_root(server, method, creds, &all, "GET,PUT,DELETE").await {
        return r;
    }
    let store = AuthStore { server };
    let result: Result<(StatusCode, Option<Value>), Failure> = async {
        match *method {
            Method::GET => {
                let user = store.get_user(name, false).await?;
                if !query_ok {
                    return Err(Failure::Internal("invalid query".into()));
                }
                let mut roles = Vec::new();
                for r in user.role_names() {
                    roles.push(store.get_role(r, false).await?.to_json());
                }
                Ok((StatusCode::OK, Some(user_with_roles(&user.user, roles))))
            }
            Method::PUT => {
                let Ok(user) = first_json_value(body).and_then(|v| User::from_json(&v)) else {
                    return Err(auth_http(400, "Invalid JSON in request body."));
                };
                if user.user != name {
                    return Err(auth_http(
                        400,
                        "User JSON name does not match the name in the URL",
                    ));
                }
                let has_grants = user.grant.as_ref().is_some_and(|g| !g.is_empty())
                    || user.revoke.as_ref().is_some_and(|r| !r.is_empty());
                let has_roles = user.roles.as_ref().is_some_and(|r| !r.is_empty());
                let (mut out, created) = if !has_grants {
                    if has_roles {
                        (store.create_user(user).await?, false)
                    } else {
                        // etcd's `CreateOrUpdateUser`.
                        match store.get_user(&user.user, true).await {
                            Ok(_) => (store.update_user(user).await?, false),
                            Err(_) => (store.create_user(user).await?, true),
                        }
                    }
                } else {
                    if has_roles {
                        return Err(auth_http(
                            400,
                            "User JSON contains both roles and grant/revoke",
                        ));
                    }
                    (store.update_user(user).await?, false)
                };
                out.password.clear();
                let status = if created {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                };
                Ok((status, Some(out.to_json())))
            }
            _ => {
                store.delete_user(name).await?;
                Ok((StatusCode::OK, None))
            }
        }
    }
    .await;
    match result {
        Ok((status, body)) => json_ok(server, status, body.as_ref()),
        Err(e) => with_headers(server, e.response()),
    }
}

/// An `HTTPError` raised by the handler itself (no `auth: ` prefix).
fn auth_http(status: u16, msg: &str) -> Failure {
    Failure::Auth(AuthError {
        status,
        message: msg.to_string(),
    })
}

async fn for_role(
    server: &Arc<EtcdServer>,
    method: &Method,
    creds: &Credentials,
    name: &str,
    body: &[u8],
) -> Response<RespBody> {
    let all = [Method::GET, Method::PUT, Method::DELETE];
    if let Some(r) = refuse_unless_root(server, method, creds, &all, "GET,PUT,DELETE").await {
        return r;
    }
    let store = AuthStore { server };
    let result: Result<(StatusCode, Option<Value>), Failure> = async {
        match *method {
            Method::GET => Ok((
                StatusCode::OK,
                Some(store.get_role(name, false).await?.to_json()),
            )),
            Method::PUT => {
                let Ok(role) = first_json_value(body).and_then(|v| Role::from_json(&v)) else {
                    return Err(auth_http(400, "Invalid JSON in request body."));
                };
                if role.role != name {
                    return Err(auth_http(
                        400,
                        "Role JSON name does not match the name in the URL",
                    ));
                }
                if Permissions::is_empty(role.grant.as_ref())
                    && Permissions::is_empty(role.revoke.as_ref())
                {
                    store.create_role(&role).await?;
                    Ok((StatusCode::CREATED, Some(role.to_json())))
                } else {
                    if !Permissions::is_empty(Some(&role.permissions)) {
                        return Err(auth_http(
                            400,
                            "Role JSON contains both permissions and grant/revoke",
                        ));
                    }
                    let out = store.update_role(&role).await?;
                    Ok((StatusCode::OK, Some(out.to_json())))
                }
            }
            _ => {
                store.delete_role(name).await?;
                Ok((StatusCode::OK, None))
            }
        }
    }
    .await;
    match result {
        Ok((status, body)) => json_ok(server, status, body.as_ref()),
        Err(e) => with_headers(server, e.response()),
    }
}
