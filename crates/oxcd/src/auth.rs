//! etcd v2 authentication: users, roles, permissions and passwords (etcd's `v2auth`).
//!
//! This module is the pure part: the records as etcd stores them (JSON values under `/2` in
//! the v2 store: `/2/users/<name>`, `/2/roles/<name>`, `/2/enabled`), their decoding with
//! Go's `encoding/json` rules, the grant/revoke merges, the key matching rules and the
//! password hashing. The HTTP side (`http/auth.rs`) reads and writes the records through the
//! store and raft, as etcd's `v2auth` store does.
//!
//! Go's JSON distinguishes a `nil` slice (`null`) from an empty one (`[]`), and etcd's
//! "not updated" check (`reflect.DeepEqual`) does too: lists are `Option<Vec<_>>` here, and
//! `None` is written as `null`, so the same requests give the same bodies and the same
//! "not updated" answers as etcd.
//!
//! Passwords are hashed with bcrypt (cost 10, `$2a$`), as etcd's `passwordStore` does, so
//! a password is checked exactly as etcd checks it. bcrypt is slow by design (tens of
//! milliseconds per check) and etcd runs it on every authenticated request; [`PasswordCache`]
//! remembers successful checks instead.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::Mutex;

use serde_json::{json, Map, Value};

/// The store namespace of the auth records (hidden from the keys API as `/0` is).
pub const STORE_PERMS_PREFIX: &str = "/2";
/// The role with every right, built in (never stored).
pub const ROOT_ROLE: &str = "root";
/// The role whose permissions apply to requests without credentials.
pub const GUEST_ROLE: &str = "guest";
/// etcd's bcrypt cost (`bcrypt.DefaultCost`).
const BCRYPT_COST: u32 = 10;

/// An error of the auth layer: an HTTP status and etcd's message (`auth: ...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthError {
    /// HTTP status.
    pub status: u16,
    /// The message of `{"message": ...}`.
    pub message: String,
}

/// etcd's `authErr`.
pub fn auth_err(status: u16, msg: impl std::fmt::Display) -> AuthError {
    AuthError {
        status,
        message: format!("auth: {msg}"),
    }
}

/// A request body (or stored record) that Go's JSON decoder would refuse for the struct.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidJson;

/// A user record (etcd's `v2auth.User`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct User {
    /// Name.
    pub user: String,
    /// bcrypt hash when stored; the clear password in a request.
    pub password: String,
    /// Granted roles (`null` until the first grant or revoke).
    pub roles: Option<Vec<String>>,
    /// Roles to grant (requests only).
    pub grant: Option<Vec<String>>,
    /// Roles to revoke (requests only).
    pub revoke: Option<Vec<String>>,
}

/// Read and write key patterns (etcd's `RWPermission`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RwPermission {
    /// Readable key patterns.
    pub read: Option<Vec<String>>,
    /// Writable key patterns.
    pub write: Option<Vec<String>>,
}

/// etcd's `Permissions`: only the key-value part exists in v2.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Permissions {
    /// Key-value permissions.
    pub kv: RwPermission,
}

/// A role record (etcd's `v2auth.Role`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Role {
    /// Name.
    pub role: String,
    /// What the role may do.
    pub permissions: Permissions,
    /// Permissions to grant (requests only).
    pub grant: Option<Permissions>,
    /// Permissions to revoke (requests only).
    pub revoke: Option<Permissions>,
}

/// The built-in root role.
pub fn root_role() -> Role {
    Role {
        role: ROOT_ROLE.to_string(),
        permissions: all_keys(),
        grant: None,
        revoke: None,
    }
}

/// The guest role created when auth is first enabled: everything, as etcd's default.
pub fn default_guest_role() -> Role {
    Role {
        role: GUEST_ROLE.to_string(),
        permissions: all_keys(),
        grant: None,
        revoke: None,
    }
}

fn all_keys() -> Permissions {
    Permissions {
        kv: RwPermission {
            read: Some(vec!["/*".to_string()]),
            write: Some(vec!["/*".to_string()]),
        },
    }
}

// ---- JSON, as Go's encoding/json writes and reads these structs ----

fn strings_json(v: &Option<Vec<String>>) -> Value {
    match v {
        None => Value::Null,
        Some(list) => Value::Array(list.iter().cloned().map(Value::String).collect()),
    }
}

impl Permissions {
    /// `{"kv":{"read":...,"write":...}}`.
    pub fn to_json(&self) -> Value {
        json!({ "kv": { "read": strings_json(&self.kv.read), "write": strings_json(&self.kv.write) } })
    }

    /// etcd's `IsEmpty` (a missing set of permissions is empty too).
    pub fn is_empty(p: Option<&Permissions>) -> bool {
        p.is_none_or(|p| {
            p.kv.read.as_ref().is_none_or(Vec::is_empty)
                && p.kv.write.as_ref().is_none_or(Vec::is_empty)
        })
    }
}

impl User {
    /// The JSON etcd writes (`password`, `grant` and `revoke` are `omitempty`).
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("user".into(), Value::String(self.user.clone()));
        if !self.password.is_empty() {
            m.insert("password".into(), Value::String(self.password.clone()));
        }
        m.insert("roles".into(), strings_json(&self.roles));
        for (key, list) in [("grant", &self.grant), ("revoke", &self.revoke)] {
            if list.as_ref().is_some_and(|l| !l.is_empty()) {
                m.insert(key.into(), strings_json(list));
            }
        }
        Value::Object(m)
    }

    /// Decodes a user as Go's `json.Unmarshal` into `v2auth.User` does.
    pub fn from_json(v: &Value) -> Result<User, InvalidJson> {
        let Some(obj) = object_or_null(v)? else {
            return Ok(User::default());
        };
        Ok(User {
            user: dec_string(field(obj, "user"))?,
            password: dec_string(field(obj, "password"))?,
            roles: dec_strings(field(obj, "roles"))?,
            grant: dec_strings(field(obj, "grant"))?,
            revoke: dec_strings(field(obj, "revoke"))?,
        })
    }

    /// The role names, `[]` when there are none.
    pub fn role_names(&self) -> &[String] {
        self.roles.as_deref().unwrap_or_default()
    }
}

impl Role {
    /// The JSON etcd writes (`grant` and `revoke` are omitted when absent).
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("role".into(), Value::String(self.role.clone()));
        m.insert("permissions".into(), self.permissions.to_json());
        if let Some(g) = &self.grant {
            m.insert("grant".into(), g.to_json());
        }
        if let Some(r) = &self.revoke {
            m.insert("revoke".into(), r.to_json());
        }
        Value::Object(m)
    }

    /// Decodes a role as Go's `json.Unmarshal` into `v2auth.Role` does.
    pub fn from_json(v: &Value) -> Result<Role, InvalidJson> {
        let Some(obj) = object_or_null(v)? else {
            return Ok(Role::default());
        };
        Ok(Role {
            role: dec_string(field(obj, "role"))?,
            permissions: dec_permissions(field(obj, "permissions"))?.unwrap_or_default(),
            grant: dec_permissions(field(obj, "grant"))?,
            revoke: dec_permissions(field(obj, "revoke"))?,
        })
    }

    /// etcd's `HasKeyAccess`: the root role may do anything; others need a pattern that
    /// matches the key exactly or, ending in `*`, as a prefix.
    pub fn has_key_access(&self, key: &str, write: bool) -> bool {
        self.role == ROOT_ROLE
            || self
                .list(write)
                .iter()
                .any(|pattern| simple_match(pattern, key))
    }

    /// etcd's `HasRecursiveAccess`: only prefix patterns (ending in `*`) can cover a
    /// recursive request.
    pub fn has_recursive_access(&self, key: &str, write: bool) -> bool {
        self.role == ROOT_ROLE
            || self
                .list(write)
                .iter()
                .any(|pattern| prefix_match(pattern, key))
    }

    fn list(&self, write: bool) -> &[String] {
        let l = if write {
            &self.permissions.kv.write
        } else {
            &self.permissions.kv.read
        };
        l.as_deref().unwrap_or_default()
    }
}

/// etcd's `simpleMatch`. (An empty pattern makes etcd's handler panic and drop the
/// connection; here it matches nothing.)
pub fn simple_match(pattern: &str, key: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => key.starts_with(prefix),
        None => !pattern.is_empty() && key == pattern,
    }
}

/// etcd's `prefixMatch`.
pub fn prefix_match(pattern: &str, key: &str) -> bool {
    pattern
        .strip_suffix('*')
        .is_some_and(|prefix| key.starts_with(prefix))
}

/// A JSON object, `None` for `null` (Go leaves the struct zero), error otherwise.
fn object_or_null(v: &Value) -> Result<Option<&Map<String, Value>>, InvalidJson> {
    match v {
        Value::Null => Ok(None),
        Value::Object(m) => Ok(Some(m)),
        _ => Err(InvalidJson),
    }
}

/// Go matches JSON keys to fields exactly first, then case-insensitively.
fn field<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name).or_else(|| {
        obj.iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
            .next_back()
    })
}

fn dec_string(v: Option<&Value>) -> Result<String, InvalidJson> {
    match v {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(InvalidJson),
    }
}

fn dec_strings(v: Option<&Value>) -> Result<Option<Vec<String>>, InvalidJson> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| dec_string(Some(i)))
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(InvalidJson),
    }
}

fn dec_permissions(v: Option<&Value>) -> Result<Option<Permissions>, InvalidJson> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(obj)) => {
            let kv = match field(obj, "kv") {
                None | Some(Value::Null) => RwPermission::default(),
                Some(Value::Object(kv)) => RwPermission {
                    read: dec_strings(field(kv, "read"))?,
                    write: dec_strings(field(kv, "write"))?,
                },
                Some(_) => return Err(InvalidJson),
            };
            Ok(Some(Permissions { kv }))
        }
        Some(_) => Err(InvalidJson),
    }
}

/// Parses the first JSON value of a request body, as Go's `json.NewDecoder(body).Decode`
/// does (what follows it is not read).
pub fn first_json_value(body: &[u8]) -> Result<Value, InvalidJson> {
    serde_json::Deserializer::from_slice(body)
        .into_iter::<Value>()
        .next()
        .ok_or(InvalidJson)?
        .map_err(|_| InvalidJson)
}

// ---- merges (grant, revoke, password change), as etcd's `merge` functions ----

/// A set's values, sorted: etcd's `types.Set.Values` then `sort.Strings` (never `null`).
fn set_values(set: std::collections::BTreeSet<String>) -> Option<Vec<String>> {
    Some(set.into_iter().collect())
}

/// The stored user after applying a request's password, grants and revokes. `hash` hashes
/// a new password.
pub fn merge_user(
    old: &User,
    new: &User,
    hash: impl FnOnce(&str) -> Result<String, String>,
) -> Result<User, MergeError> {
    if old.user != new.user {
        return Err(MergeError::Auth(auth_err(
            409,
            format!(
                "Merging user data with conflicting usernames: {} {}",
                old.user, new.user
            ),
        )));
    }
    let password = if new.password.is_empty() {
        old.password.clone()
    } else {
        hash(&new.password).map_err(MergeError::Internal)?
    };
    let mut roles: std::collections::BTreeSet<String> = old.role_names().iter().cloned().collect();
    for g in new.grant.as_deref().unwrap_or_default() {
        if !roles.insert(g.clone()) {
            return Err(MergeError::Auth(auth_err(
                409,
                format!("Granting duplicate role {g} for user {}", new.user),
            )));
        }
    }
    for r in new.revoke.as_deref().unwrap_or_default() {
        if !roles.remove(r) {
            return Err(MergeError::Auth(auth_err(
                409,
                format!("Revoking ungranted role {r} for user {}", new.user),
            )));
        }
    }
    Ok(User {
        user: old.user.clone(),
        password,
        roles: set_values(roles),
        grant: None,
        revoke: None,
    })
}

/// Why a merge failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MergeError {
    /// etcd's auth error (status and message).
    Auth(AuthError),
    /// Hashing failed (etcd answers 500).
    Internal(String),
}

/// The stored role after applying a request's grants and revokes.
pub fn merge_role(old: &Role, new: &Role) -> Result<Role, AuthError> {
    if old.role != new.role {
        return Err(auth_err(
            409,
            format!(
                "Merging role with conflicting names: {} {}",
                old.role, new.role
            ),
        ));
    }
    let mut perms = old.permissions.clone();
    if let Some(g) = &new.grant {
        let grant = |cur: &Option<Vec<String>>, add: &Option<Vec<String>>, what: &str| {
            let mut set: std::collections::BTreeSet<String> =
                cur.iter().flatten().cloned().collect();
            for p in add.iter().flatten() {
                if !set.insert(p.clone()) {
                    return Err(auth_err(
                        409,
                        format!("Granting duplicate {what} permission {p}"),
                    ));
                }
            }
            Ok(set_values(set))
        };
        let read = grant(&perms.kv.read, &g.kv.read, "read")?;
        let write = grant(&perms.kv.write, &g.kv.write, "write")?;
        perms.kv = RwPermission { read, write };
    }
    if let Some(r) = &new.revoke {
        let revoke = |cur: &Option<Vec<String>>, remove: &Option<Vec<String>>| {
            let mut set: std::collections::BTreeSet<String> =
                cur.iter().flatten().cloned().collect();
            for p in remove.iter().flatten() {
                // etcd logs an ungranted permission and goes on.
                set.remove(p);
            }
            set_values(set)
        };
        perms.kv = RwPermission {
            read: revoke(&perms.kv.read, &r.kv.read),
            write: revoke(&perms.kv.write, &r.kv.write),
        };
    }
    Ok(Role {
        role: old.role.clone(),
        permissions: perms,
        grant: None,
        revoke: None,
    })
}

/// Adds the root role to the root user's roles (etcd's `attachRootRole`).
pub fn attach_root_role(mut u: User) -> User {
    if !u.role_names().iter().any(|r| r == ROOT_ROLE) {
        u.roles
            .get_or_insert_with(Vec::new)
            .push(ROOT_ROLE.to_string());
    }
    u
}

// ---- passwords ----

/// Hashes a password as etcd does: bcrypt, cost 10, written as `$2a$`. Like the bcrypt of
/// Debian's etcd 3.4, only the first 72 bytes count (a longer password is not refused).
pub fn hash_password(password: &str) -> Result<String, String> {
    bcrypt::hash_with_result(password, BCRYPT_COST)
        .map(|h| h.format_for_version(bcrypt::Version::TwoA))
        .map_err(|e| e.to_string())
}

/// Checks a password against a stored bcrypt hash (etcd's `CheckPassword`).
pub fn check_password(hash: &str, password: &str) -> bool {
    bcrypt::verify(password, hash).unwrap_or(false)
}

/// Successful password checks, so that bcrypt runs once per (user, password) instead of on
/// every request. An entry holds the stored hash it was checked against, so a password
/// change or a re-created user invalidates it by itself; it holds a keyed digest of the
/// supplied password, never the password (two SipHash-1-3 values under random per-process
/// keys: 128 bits, which nobody without the keys can aim a collision at).
pub struct PasswordCache {
    keys: (
        std::collections::hash_map::RandomState,
        std::collections::hash_map::RandomState,
    ),
    entries: Mutex<HashMap<String, (String, u128)>>,
}

/// Entries kept before the cache starts over.
const PASSWORD_CACHE_MAX: usize = 4096;

impl Default for PasswordCache {
    fn default() -> Self {
        PasswordCache {
            keys: (Default::default(), Default::default()),
            entries: Mutex::new(HashMap::new()),
        }
    }
}

impl PasswordCache {
    fn digest(&self, user: &str, password: &str) -> u128 {
        let one = |k: &std::collections::hash_map::RandomState| {
            let mut h = k.build_hasher();
            h.write(user.as_bytes());
            h.write_u8(0xff);
            h.write(password.as_bytes());
            h.finish()
        };
        (u128::from(one(&self.keys.0)) << 64) | u128::from(one(&self.keys.1))
    }

    /// Whether this password was already found to match this stored hash.
    pub fn hit(&self, user: &str, stored_hash: &str, password: &str) -> bool {
        let d = self.digest(user, password);
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(user)
            .is_some_and(|(h, digest)| h == stored_hash && *digest == d)
    }

    /// Remembers a successful check.
    pub fn remember(&self, user: &str, stored_hash: &str, password: &str) {
        let d = self.digest(user, password);
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= PASSWORD_CACHE_MAX && !entries.contains_key(user) {
            entries.clear();
        }
        entries.insert(user.to_string(), (stored_hash.to_string(), d));
    }

    /// Forgets a user (its record changed or went away).
    pub fn forget(&self, user: &str) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(user);
    }
}

/// Decodes an HTTP basic `Authorization` value as Go's `Request.BasicAuth` does: `Basic `
/// (any case), standard base64 with padding, `user:password` split at the first colon.
pub fn parse_basic_auth(header: &[u8]) -> Option<(String, String)> {
    use base64::Engine;
    const PREFIX: &[u8] = b"Basic ";
    if header.len() < PREFIX.len() || !header[..PREFIX.len()].eq_ignore_ascii_case(PREFIX) {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(&header[PREFIX.len()..])
        .ok()?;
    // Go's strings are bytes; invalid UTF-8 here simply never matches a stored name.
    let text = String::from_utf8_lossy(&decoded);
    let (user, pass) = text.split_once(':')?;
    Some((user.to_string(), pass.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_as_etcd() {
        assert!(simple_match("/foo", "/foo"));
        assert!(!simple_match("/foo", "/foo/bar"));
        assert!(simple_match("/foo*", "/foobar"));
        assert!(simple_match("/foo/*", "/foo/bar"));
        assert!(!simple_match("/foo/*", "/foo"));
        assert!(!simple_match("/*", ""));
        assert!(!simple_match("", ""));
        assert!(prefix_match("/foo*", "/foo"));
        assert!(!prefix_match("/foo", "/foo"));
        let r = Role {
            role: "r".into(),
            permissions: Permissions {
                kv: RwPermission {
                    read: Some(vec!["/a/*".into(), "/b".into()]),
                    write: None,
                },
            },
            ..Default::default()
        };
        assert!(r.has_key_access("/a/x", false));
        assert!(r.has_key_access("/b", false));
        assert!(!r.has_key_access("/b", true));
        assert!(!r.has_recursive_access("/b", false));
        assert!(r.has_recursive_access("/a/x", false));
        assert!(root_role().has_key_access("", true));
    }

    #[test]
    fn json_keeps_null_and_empty_apart() {
        let u = User::from_json(&serde_json::json!({"User": "a", "password": "p"})).unwrap();
        assert_eq!(u.user, "a");
        assert_eq!(u.roles, None);
        assert_eq!(
            oxcd_api::json::to_string(&u.to_json()),
            r#"{"user":"a","password":"p","roles":null}"#
        );
        let r = Role::from_json(
            &serde_json::json!({"role": "x", "permissions": {"kv": {"read": ["/foo/*"]}}}),
        )
        .unwrap();
        assert_eq!(
            oxcd_api::json::to_string(&r.to_json()),
            r#"{"role":"x","permissions":{"kv":{"read":["/foo/*"],"write":null}}}"#
        );
        assert!(User::from_json(&serde_json::json!({"user": 1})).is_err());
        assert!(User::from_json(&serde_json::json!([])).is_err());
        assert_eq!(User::from_json(&Value::Null).unwrap(), User::default());
        assert!(first_json_value(b"{\"user\":\"a\"} trailing").is_ok());
        assert!(first_json_value(b"").is_err());
    }

    #[test]
    fn merges_follow_etcd() {
        let old = User {
            user: "u".into(),
            password: "h".into(),
            ..Default::default()
        };
        let req = User {
            user: "u".into(),
            grant: Some(vec!["b".into(), "a".into()]),
            ..Default::default()
        };
        let merged = merge_user(&old, &req, |_| unreachable!()).unwrap();
        assert_eq!(merged.roles, Some(vec!["a".into(), "b".into()]));
        assert!(matches!(
            merge_user(&merged, &req, |_| unreachable!()),
            Err(MergeError::Auth(AuthError { status: 409, .. }))
        ));
        // Nothing to change still turns `null` roles into `[]`, as etcd's set does.
        let same = merge_user(
            &old,
            &User {
                user: "u".into(),
                ..Default::default()
            },
            |_| unreachable!(),
        )
        .unwrap();
        assert_eq!(same.roles, Some(vec![]));
        let role = Role {
            role: "r".into(),
            ..Default::default()
        };
        let revoke_nothing = Role {
            role: "r".into(),
            revoke: Some(Permissions {
                kv: RwPermission {
                    read: Some(vec!["/x".into()]),
                    write: None,
                },
            }),
            ..Default::default()
        };
        let out = merge_role(&role, &revoke_nothing).unwrap();
        assert_eq!(out.permissions.kv.read, Some(vec![]));
        assert_ne!(out, role);
    }

    #[test]
    fn passwords_hash_and_check() {
        let h = hash_password("secret").unwrap();
        assert!(h.starts_with("$2a$10$"));
        assert!(check_password(&h, "secret"));
        assert!(!check_password(&h, "Secret"));
        assert!(!check_password("garbage", "secret"));
        let cache = PasswordCache::default();
        assert!(!cache.hit("u", &h, "secret"));
        cache.remember("u", &h, "secret");
        assert!(cache.hit("u", &h, "secret"));
        assert!(!cache.hit("u", &h, "other"));
        assert!(!cache.hit("u", "another hash", "secret"));
        cache.forget("u");
        assert!(!cache.hit("u", &h, "secret"));
    }

    #[test]
    fn basic_auth_parses_as_go() {
        assert_eq!(
            parse_basic_auth(b"Basic dXNlcjpwYXNz"),
            Some(("user".into(), "pass".into()))
        );
        assert_eq!(
            parse_basic_auth(b"basic dXNlcjpwOmFzcw=="),
            Some(("user".into(), "p:ass".into()))
        );
        assert_eq!(parse_basic_auth(b"Basic dXNlcg=="), None);
        assert_eq!(parse_basic_auth(b"Bearer x"), None);
        assert_eq!(parse_basic_auth(b"Basic !!"), None);
    }
}
