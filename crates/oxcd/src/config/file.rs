//! `--config-file`: etcd 3.4's YAML configuration file.
//!
//! etcd reads the file with `sigs.k8s.io/yaml`: YAML 1.1 (go-yaml v2) is turned into JSON,
//! which `encoding/json` decodes into etcd's config structs. This module reproduces what
//! that pipeline accepts and refuses, and turns each key into the value its flag would have
//! (`heartbeat-interval: 100` becomes `--heartbeat-interval=100`), so the file goes through
//! the same validation as the command line:
//!
//! - keys are matched exactly, else case-insensitively (as `encoding/json` does); keys etcd
//!   does not know are ignored;
//! - a key with no value (`data-dir:`) or `null` keeps the default;
//! - a value of the wrong type is refused with etcd's error, for the first offending key in
//!   alphabetical order (the JSON's order). A number or boolean is not a string
//!   (`name: 123` is refused, as etcd refuses it), except for the keys of etcd's proxy
//!   section (`proxy`, `discovery-fallback`, `proxy-*`), where go-yaml's conversion applies
//!   (`proxy: off` is the string `"false"`);
//! - plain scalars are resolved as in YAML 1.1: `yes`, `on`, `off` are booleans, `0x10` is
//!   16, `100.0` is a number (and a valid `uint`), quoted scalars are strings.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle};

use super::ConfigError;

/// The type of an etcd config field, as `encoding/json` sees it.
#[derive(Clone, Copy)]
enum Ty {
    Str,
    Uint,
    Uint64,
    Int64,
    Bool,
    StrList,
    /// `client-transport-security` / `peer-transport-security`: flag prefix.
    Security(&'static str),
}

impl Ty {
    fn go_name(self) -> &'static str {
        match self {
            Ty::Str => "string",
            Ty::Uint => "uint",
            Ty::Uint64 => "uint64",
            Ty::Int64 => "int64",
            Ty::Bool => "bool",
            Ty::StrList => "[]string",
            Ty::Security(_) => "embed.securityConfig",
        }
    }
}

/// What a key of etcd's configuration becomes in oxcd.
#[derive(Clone, Copy)]
enum Target {
    /// The flag of that name.
    Flag(&'static str),
    /// An etcd setting oxcd has no flag for: refused when given a value.
    Unsupported,
    /// Read and type-checked, with no effect (the transport security sections, whose
    /// keys are decoded one by one).
    Unused,
}

/// Keys of etcd 3.4's `embed.configYAML` (decoded without go-yaml's string conversion).
const EMBED_KEYS: &[(&str, Ty, Target)] = &[
    ("name", Ty::Str, Target::Flag("name")),
    ("data-dir", Ty::Str, Target::Flag("data-dir")),
    ("wal-dir", Ty::Str, Target::Flag("wal-dir")),
    ("snapshot-count", Ty::Uint64, Target::Flag("snapshot-count")),
    ("max-snapshots", Ty::Uint, Target::Flag("max-snapshots")),
    ("max-wals", Ty::Uint, Target::Flag("max-wals")),
    (
        "heartbeat-interval",
        Ty::Uint,
        Target::Flag("heartbeat-interval"),
    ),
    (
        "election-timeout",
        Ty::Uint,
        Target::Flag("election-timeout"),
    ),
    (
        "quota-backend-bytes",
        Ty::Int64,
        Target::Flag("quota-backend-bytes"),
    ),
    (
        "max-request-bytes",
        Ty::Uint,
        Target::Flag("max-request-bytes"),
    ),
    ("cipher-suites", Ty::StrList, Target::Flag("cipher-suites")),
    (
        "initial-cluster-state",
        Ty::Str,
        Target::Flag("initial-cluster-state"),
    ),
    ("discovery-srv", Ty::Str, Target::Flag("discovery-srv")),
    ("discovery-proxy", Ty::Str, Target::Flag("discovery-proxy")),
    ("discovery", Ty::Str, Target::Flag("discovery")),
    ("initial-cluster", Ty::Str, Target::Flag("initial-cluster")),
    (
        "initial-cluster-token",
        Ty::Str,
        Target::Flag("initial-cluster-token"),
    ),
    (
        "strict-reconfig-check",
        Ty::Bool,
        Target::Flag("strict-reconfig-check"),
    ),
    ("enable-v2", Ty::Bool, Target::Flag("enable-v2")),
    (
        "auto-compaction-mode",
        Ty::Str,
        Target::Flag("auto-compaction-mode"),
    ),
    (
        "auto-compaction-retention",
        Ty::Str,
        Target::Flag("auto-compaction-retention"),
    ),
    ("pre-vote", Ty::Bool, Target::Flag("pre-vote")),
    (
        "force-new-cluster",
        Ty::Bool,
        Target::Flag("force-new-cluster"),
    ),
    ("enable-pprof", Ty::Bool, Target::Flag("enable-pprof")),
    ("metrics", Ty::Str, Target::Flag("metrics")),
    (
        "listen-metrics-urls",
        Ty::Str,
        Target::Flag("listen-metrics-urls"),
    ),
    ("logger", Ty::Str, Target::Flag("logger")),
    ("log-level", Ty::Str, Target::Flag("log-level")),
    ("log-outputs", Ty::StrList, Target::Flag("log-outputs")),
    ("debug", Ty::Bool, Target::Flag("debug")),
    (
        "listen-peer-urls",
        Ty::Str,
        Target::Flag("listen-peer-urls"),
    ),
    (
        "listen-client-urls",
        Ty::Str,
        Target::Flag("listen-client-urls"),
    ),
    (
        "initial-advertise-peer-urls",
        Ty::Str,
        Target::Flag("initial-advertise-peer-urls"),
    ),
    (
        "advertise-client-urls",
        Ty::Str,
        Target::Flag("advertise-client-urls"),
    ),
    ("cors", Ty::Str, Target::Flag("cors")),
    (
        "client-transport-security",
        Ty::Security(""),
        Target::Unused,
    ),
    (
        "peer-transport-security",
        Ty::Security("peer-"),
        Target::Unused,
    ),
    // etcd settings oxcd does not have (as flags they are undefined too).
    (
        "discovery-srv-name",
        Ty::Str,
        Target::Flag("discovery-srv-name"),
    ),
    (
        "initial-election-tick-advance",
        Ty::Bool,
        Target::Unsupported,
    ),
    ("backend-batch-interval", Ty::Int64, Target::Unsupported),
    ("backend-batch-limit", Ty::Int64, Target::Unsupported),
    ("max-txn-ops", Ty::Uint, Target::Unsupported),
    ("max-concurrent-streams", Ty::Uint, Target::Unsupported),
    ("grpc-keepalive-min-time", Ty::Int64, Target::Unsupported),
    ("grpc-keepalive-interval", Ty::Int64, Target::Unsupported),
    ("grpc-keepalive-timeout", Ty::Int64, Target::Unsupported),
    ("auth-token", Ty::Str, Target::Unsupported),
    ("bcrypt-cost", Ty::Uint, Target::Unsupported),
    ("auth-token-ttl", Ty::Uint, Target::Unsupported),
    (
        "experimental-initial-corrupt-check",
        Ty::Bool,
        Target::Unsupported,
    ),
    (
        "experimental-corrupt-check-time",
        Ty::Int64,
        Target::Unsupported,
    ),
    ("experimental-enable-v2v3", Ty::Str, Target::Unsupported),
    (
        "experimental-backend-bbolt-freelist-type",
        Ty::Str,
        Target::Unsupported,
    ),
    (
        "experimental-enable-lease-checkpoint",
        Ty::Bool,
        Target::Unsupported,
    ),
    (
        "experimental-enable-lease-checkpoint-persist",
        Ty::Bool,
        Target::Unsupported,
    ),
    (
        "experimental-compaction-batch-limit",
        Ty::Int64,
        Target::Unsupported,
    ),
    (
        "experimental-watch-progress-notify-interval",
        Ty::Int64,
        Target::Unsupported,
    ),
    (
        "experimental-warning-apply-duration",
        Ty::Int64,
        Target::Unsupported,
    ),
    ("enable-grpc-gateway", Ty::Bool, Target::Unsupported),
    ("log-output", Ty::StrList, Target::Unsupported),
    ("log-package-levels", Ty::Str, Target::Unsupported),
    ("unsafe-no-fsync", Ty::Bool, Target::Unsupported),
    ("host-whitelist", Ty::Str, Target::Unsupported),
];

/// Keys of etcd's `securityConfig` (the two `*-transport-security` sections) and the flag
/// each becomes, after the section's prefix.
const SECURITY_KEYS: &[(&str, Ty, &str)] = &[
    ("cert-file", Ty::Str, "cert-file"),
    ("key-file", Ty::Str, "key-file"),
    ("client-cert-auth", Ty::Bool, "client-cert-auth"),
    ("trusted-ca-file", Ty::Str, "trusted-ca-file"),
    ("auto-tls", Ty::Bool, "auto-tls"),
];

/// Keys of etcdmain's `configProxy` (decoded in a second pass, with go-yaml's conversion of
/// numbers and booleans to strings).
const PROXY_KEYS: &[(&str, Ty, Target)] = &[
    (
        "proxy-failure-wait",
        Ty::Uint,
        Target::Flag("proxy-failure-wait"),
    ),
    (
        "proxy-refresh-interval",
        Ty::Uint,
        Target::Flag("proxy-refresh-interval"),
    ),
    (
        "proxy-dial-timeout",
        Ty::Uint,
        Target::Flag("proxy-dial-timeout"),
    ),
    (
        "proxy-write-timeout",
        Ty::Uint,
        Target::Flag("proxy-write-timeout"),
    ),
    (
        "proxy-read-timeout",
        Ty::Uint,
        Target::Flag("proxy-read-timeout"),
    ),
    ("proxy", Ty::Str, Target::Flag("proxy")),
    (
        "discovery-fallback",
        Ty::Str,
        Target::Flag("discovery-fallback"),
    ),
];

/// Reads the file at `path` and returns the flags it sets, by flag name, in the text form a
/// flag's value has (`"true"`, `"100"`, comma-separated lists).
pub(super) fn load(path: &str) -> Result<HashMap<&'static str, String>, ConfigError> {
    let text = std::fs::read(path).map_err(|e| {
        let op = if e.kind() == std::io::ErrorKind::IsADirectory {
            "read"
        } else {
            "open"
        };
        ConfigError::Invalid(format!("{op} {path}: {}", go_io_error(&e)))
    })?;
    from_str(&String::from_utf8_lossy(&text))
}

/// [`load`] on the file's text.
pub(super) fn from_str(text: &str) -> Result<HashMap<&'static str, String>, ConfigError> {
    let doc = parse_yaml(text)
        .map_err(|e| ConfigError::Invalid(format!("error converting YAML to JSON: yaml: {e}")))?;
    let mut set = HashMap::new();
    decode(
        &doc,
        EMBED_KEYS,
        "configYAML",
        "embed.configYAML",
        false,
        &mut set,
    )?;
    decode(
        &doc,
        PROXY_KEYS,
        "configProxy",
        "etcdmain.configProxy",
        true,
        &mut set,
    )?;
    Ok(set)
}

/// The text Go gives an OS error (`no such file or directory`).
fn go_io_error(e: &std::io::Error) -> String {
    let s = e.to_string();
    let s = match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    };
    let mut c = s.chars();
    match c.next() {
        Some(first) => first.to_lowercase().chain(c).collect(),
        None => s,
    }
}

/// A YAML node with its scalars unresolved (style and tag kept, as resolution needs them).
#[derive(Clone, Debug)]
enum Node {
    Scalar {
        text: String,
        plain: bool,
        str_tag: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

/// Parses the first document (go-yaml's `Unmarshal` reads only that one); `None` for an
/// empty file.
fn parse_yaml(text: &str) -> Result<Option<Node>, String> {
    enum Open {
        Seq(usize, Vec<Node>),
        Map(usize, Vec<(Node, Node)>, Option<Node>),
    }
    let mut anchors: HashMap<usize, Node> = HashMap::new();
    let mut stack: Vec<Open> = Vec::new();
    let mut root: Option<Node> = None;
    let mut parser = Parser::new_from_str(text);
    // Adds a finished node to its parent; the node itself when it is the document's root.
    fn finish(
        stack: &mut [Open],
        anchors: &mut HashMap<usize, Node>,
        anchor: usize,
        node: Node,
    ) -> Option<Node> {
        if anchor > 0 {
            anchors.insert(anchor, node.clone());
        }
        match stack.last_mut() {
            None => Some(node),
            Some(Open::Seq(_, items)) => {
                items.push(node);
                None
            }
            Some(Open::Map(_, pairs, key)) => {
                match key.take() {
                    None => *key = Some(node),
                    Some(k) => pairs.push((k, node)),
                }
                None
            }
        }
    }
    while let Some(next) = parser.next_event() {
        let (event, _) = next.map_err(|e| format!("line {}: {}", e.marker().line(), e.info()))?;
        let done = match event {
            Event::StreamEnd | Event::DocumentEnd => break,
            Event::Scalar(text, style, anchor, tag) => {
                let str_tag = tag.as_ref().is_some_and(|t| {
                    t.suffix == "str" && (t.handle == "!!" || t.handle == "tag:yaml.org,2002:")
                });
                let node = Node::Scalar {
                    text: text.into_owned(),
                    plain: style == ScalarStyle::Plain,
                    str_tag,
                };
                finish(&mut stack, &mut anchors, anchor, node)
            }
            Event::Alias(id) => {
                let node = anchors
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| "unknown anchor referenced".to_string())?;
                finish(&mut stack, &mut anchors, 0, node)
            }
            Event::SequenceStart(anchor, _) => {
                stack.push(Open::Seq(anchor, Vec::new()));
                None
            }
            Event::MappingStart(anchor, _) => {
                stack.push(Open::Map(anchor, Vec::new(), None));
                None
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (anchor, node) = match stack.pop() {
                    Some(Open::Seq(a, items)) => (a, Node::Seq(items)),
                    Some(Open::Map(a, pairs, _)) => (a, Node::Map(pairs)),
                    None => return Err("unbalanced collection".into()),
                };
                finish(&mut stack, &mut anchors, anchor, node)
            }
            Event::Nothing | Event::StreamStart | Event::DocumentStart(_) => None,
        };
        if done.is_some() {
            root = done;
            break;
        }
    }
    Ok(root)
}

/// A resolved YAML value, as go-yaml v2 types it.
#[derive(Debug)]
enum Value<'a> {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(&'a str),
    Seq(&'a [Node]),
    Map(&'a [(Node, Node)]),
}

impl Value<'_> {
    /// How `encoding/json` names the value in a type error.
    fn json_kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Int(_) | Value::Float(_) => "number",
            Value::Str(_) => "string",
            Value::Seq(_) => "array",
            Value::Map(_) => "object",
        }
    }

    /// The number as JSON writes it.
    fn json_number(&self) -> String {
        match self {
            Value::Int(n) => n.to_string(),
            Value::Float(f) if f.fract() == 0.0 && f.abs() < 1e21 => format!("{f:.0}"),
            Value::Float(f) => f.to_string(),
            _ => String::new(),
        }
    }
}

fn resolve(node: &Node) -> Value<'_> {
    match node {
        Node::Seq(items) => Value::Seq(items),
        Node::Map(pairs) => Value::Map(pairs),
        Node::Scalar {
            text,
            plain,
            str_tag,
        } => {
            if !plain || *str_tag {
                return Value::Str(text);
            }
            resolve_plain(text)
        }
    }
}

/// go-yaml v2's resolution of a plain scalar (YAML 1.1 booleans, Go integer syntax).
fn resolve_plain(s: &str) -> Value<'_> {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "y" | "Y" | "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => {
            return Value::Bool(true)
        }
        "n" | "N" | "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => {
            return Value::Bool(false)
        }
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Value::Float(f64::INFINITY)
        }
        "-.inf" | "-.Inf" | "-.INF" => return Value::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Value::Float(f64::NAN),
        _ => {}
    }
    let first = s.as_bytes()[0];
    if first.is_ascii_digit() || matches!(first, b'-' | b'+' | b'.') {
        if let Some(n) = parse_go_int(&s.replace('_', "")) {
            return Value::Int(n);
        }
        if is_yaml_float(s) {
            if let Ok(f) = s.replace('_', "").parse::<f64>() {
                return Value::Float(f);
            }
        }
    }
    Value::Str(s)
}

/// Go's `strconv.ParseInt(s, 0, 64)`, then `ParseUint` for larger values.
fn parse_go_int(s: &str) -> Option<i128> {
    let (neg, digits) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let (radix, body) = if let Some(r) = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        (16, r)
    } else if let Some(r) = digits
        .strip_prefix("0b")
        .or_else(|| digits.strip_prefix("0B"))
    {
        (2, r)
    } else if let Some(r) = digits
        .strip_prefix("0o")
        .or_else(|| digits.strip_prefix("0O"))
    {
        (8, r)
    } else if digits.len() > 1 && digits.starts_with('0') {
        (8, &digits[1..])
    } else {
        (10, digits)
    };
    if body.is_empty() || !body.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let v = u128::from_str_radix(body, radix).ok()?;
    let v = if neg { -(v as i128) } else { v as i128 };
    (i128::from(i64::MIN)..=i128::from(u64::MAX))
        .contains(&v)
        .then_some(v)
}

/// go-yaml v2's float syntax: `[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?`.
fn is_yaml_float(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    if i < b.len() && matches!(b[i], b'-' | b'+') {
        i += 1;
    }
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i - start
    };
    if i < b.len() && b[i] == b'.' {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    } else {
        if digits(&mut i) == 0 {
            return false;
        }
        if i < b.len() && b[i] == b'.' {
            i += 1;
            digits(&mut i);
        }
    }
    if i < b.len() && matches!(b[i], b'e' | b'E') {
        i += 1;
        if i < b.len() && matches!(b[i], b'-' | b'+') {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

/// A map key as the JSON object key it becomes.
fn key_string(node: &Node) -> Result<String, String> {
    Ok(match resolve(node) {
        Value::Str(s) => s.to_string(),
        Value::Int(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".into(),
        Value::Float(f) => f.to_string(),
        Value::Seq(_) | Value::Map(_) => return Err("Unsupported map key".into()),
    })
}

/// The map's entries in JSON order (sorted keys; among equal keys, the later one last, so
/// it wins).
fn sorted_entries(pairs: &[(Node, Node)]) -> Result<Vec<(String, &Node)>, String> {
    let mut entries = pairs
        .iter()
        .map(|(k, v)| Ok((key_string(k)?, v)))
        .collect::<Result<Vec<_>, String>>()?;
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(entries)
}

/// `encoding/json`'s field lookup: exact name first, else case-insensitive.
fn find<'t, T>(table: &'t [(&'static str, Ty, T)], key: &str) -> Option<&'t (&'static str, Ty, T)> {
    table
        .iter()
        .find(|e| e.0 == key)
        .or_else(|| table.iter().find(|e| e.0.eq_ignore_ascii_case(key)))
}

/// A decoding error worded as `sigs.k8s.io/yaml` and `encoding/json` word it.
fn json_error(e: String) -> ConfigError {
    ConfigError::Invalid(format!(
        "error unmarshaling JSON: while decoding JSON: json: {e}"
    ))
}

/// Decodes the document into one of etcd's structs (`table`), recording each set flag.
fn decode(
    doc: &Option<Node>,
    table: &[(&'static str, Ty, Target)],
    struct_name: &str,
    go_type: &str,
    to_string: bool,
    set: &mut HashMap<&'static str, String>,
) -> Result<(), ConfigError> {
    let yaml_error =
        |e: String| ConfigError::Invalid(format!("error converting YAML to JSON: {e}"));
    let pairs = match doc.as_ref().map(resolve) {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Map(pairs)) => pairs,
        Some(other) => {
            return Err(json_error(format!(
                "cannot unmarshal {} into Go value of type {go_type}",
                other.json_kind()
            )))
        }
    };
    let mut unsupported = None;
    for (key, node) in sorted_entries(pairs).map_err(yaml_error)? {
        let Some(&(name, ty, target)) = find(table, &key) else {
            continue; // etcd ignores keys it does not know
        };
        let field = format!("{struct_name}.{name}");
        let value = resolve(node);
        if let Ty::Security(prefix) = ty {
            let pairs = match value {
                Value::Null => continue,
                Value::Map(pairs) => pairs,
                other => {
                    return Err(json_error(format!(
                        "cannot unmarshal {} into Go struct field {field} of type {}",
                        other.json_kind(),
                        ty.go_name()
                    )))
                }
            };
            for (k, node) in sorted_entries(pairs).map_err(yaml_error)? {
                let Some(&(sub, ty, flag)) = find(SECURITY_KEYS, &k) else {
                    continue;
                };
                let field = format!("securityConfig.{name}.{sub}");
                if let Some(v) = convert(resolve(node), ty, &field, to_string)? {
                    set.insert(flag_name(prefix, flag), v);
                }
            }
            continue;
        }
        let Some(v) = convert(value, ty, &field, to_string)? else {
            continue;
        };
        match target {
            Target::Flag(flag) => {
                set.insert(flag, v);
            }
            Target::Unsupported => {
                unsupported.get_or_insert(name);
            }
            Target::Unused => {}
        }
    }
    if let Some(name) = unsupported {
        return Err(ConfigError::Invalid(format!(
            "config file key {name:?}: oxcd does not support this etcd setting yet (nor its flag --{name})"
        )));
    }
    Ok(())
}

/// The flag name of a security key: `cert-file`, `peer-cert-file`, ...
fn flag_name(prefix: &str, key: &str) -> &'static str {
    let full = format!("{prefix}{key}");
    super::FLAGS
        .iter()
        .find(|f| f.0 == full)
        .map(|f| f.0)
        .expect("every security key is a flag")
}

/// One value into a field of type `ty`, as `encoding/json` would decode it: the flag text,
/// `None` for null (the field keeps its default), or the type error.
fn convert(
    value: Value,
    ty: Ty,
    field: &str,
    to_string: bool,
) -> Result<Option<String>, ConfigError> {
    let mismatch = |what: String| {
        Err(json_error(format!(
            "cannot unmarshal {what} into Go struct field {field} of type {}",
            ty.go_name()
        )))
    };
    if let Value::Null = value {
        return Ok(None);
    }
    if let (Value::Float(f), Ty::Str | Ty::Uint | Ty::Uint64 | Ty::Int64) = (&value, ty) {
        if !f.is_finite() {
            return Err(ConfigError::Invalid(format!(
                "error converting YAML to JSON: json: unsupported value: {}",
                go_float_inf(*f)
            )));
        }
    }
    match ty {
        Ty::Str => match value {
            Value::Str(s) => Ok(Some(s.to_string())),
            Value::Int(n) if to_string => Ok(Some(n.to_string())),
            Value::Float(f) if to_string => Ok(Some((f as f32).to_string())),
            Value::Bool(b) if to_string => Ok(Some(b.to_string())),
            other => mismatch(other.json_kind().to_string()),
        },
        Ty::Uint | Ty::Uint64 | Ty::Int64 => {
            let (lo, hi) = match ty {
                Ty::Int64 => (i128::from(i64::MIN), i128::from(i64::MAX)),
                _ => (0, i128::from(u64::MAX)),
            };
            let n = match value {
                Value::Int(n) => Some(n),
                Value::Float(f) if f.fract() == 0.0 && f.abs() < 1e21 => Some(f as i128),
                Value::Float(_) => None,
                other => return mismatch(other.json_kind().to_string()),
            };
            match n {
                Some(n) if (lo..=hi).contains(&n) => Ok(Some(n.to_string())),
                _ => mismatch(format!("number {}", value.json_number())),
            }
        }
        Ty::Bool => match value {
            Value::Bool(b) => Ok(Some(b.to_string())),
            other => mismatch(other.json_kind().to_string()),
        },
        Ty::StrList => match value {
            Value::Seq(items) => {
                let mut out = Vec::new();
                for item in items {
                    match resolve(item) {
                        Value::Str(s) => out.push(s.to_string()),
                        Value::Null => out.push(String::new()),
                        other => {
                            return Err(json_error(format!(
                                "cannot unmarshal {} into Go struct field {field} of type string",
                                other.json_kind()
                            )))
                        }
                    }
                }
                Ok(Some(out.join(",")))
            }
            other => mismatch(other.json_kind().to_string()),
        },
        Ty::Security(_) => unreachable!("sections are decoded by the caller"),
    }
}

fn go_float_inf(f: f64) -> &'static str {
    if f.is_nan() {
        "NaN"
    } else if f > 0.0 {
        "+Inf"
    } else {
        "-Inf"
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;
    use std::path::PathBuf;
    use std::time::Duration;

    use super::super::{parse, Command, ConfigError, LogOutput, Logger, ServerConfig, TlsInfo};

    fn run(args: &[&str], env: &[(&str, &str)]) -> Result<ServerConfig, ConfigError> {
        let mut v: Vec<OsString> = vec!["oxcd".into()];
        v.extend(args.iter().map(OsString::from));
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let lookup = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        match parse(v, &lookup)? {
            Command::Run(c) => Ok(*c),
            other => panic!("unexpected {other:?}"),
        }
    }

    /// A YAML file in the temp dir, removed on drop.
    struct Yaml(PathBuf);

    impl Yaml {
        fn new(text: &str) -> Yaml {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let path = std::env::temp_dir().join(format!(
                "oxcd-config-test-{}-{}.yml",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::write(&path, text).unwrap();
            Yaml(path)
        }

        fn path(&self) -> &str {
            self.0.to_str().unwrap()
        }

        fn load(&self) -> Result<ServerConfig, ConfigError> {
            run(&["--config-file", self.path()], &[])
        }
    }

    impl Drop for Yaml {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// The configuration without the field that says where it came from.
    fn comparable(mut c: ServerConfig) -> String {
        c.config_file = None;
        format!("{c:?}")
    }

    fn err(text: &str) -> String {
        Yaml::new(text).load().unwrap_err().to_string()
    }

    const TYPE_ERROR: &str = "error unmarshaling JSON: while decoding JSON: json: cannot unmarshal";

    #[test]
    fn every_key_maps_onto_its_flag() {
        let yaml = Yaml::new(
            r#"
# Every key of etcd 3.4's example file oxcd has a flag for, none at its default.
name: 'infra1'
data-dir: /var/lib/infra1
wal-dir: /var/lib/infra1-wal
snapshot-count: 5000
heartbeat-interval: 50
election-timeout: 600
quota-backend-bytes: 0
listen-peer-urls: https://127.0.0.1:12380
listen-client-urls: https://127.0.0.1:12379,http://127.0.0.1:12378
max-snapshots: 3
max-wals: 0
cors: http://a.example,http://b.example
initial-advertise-peer-urls: https://127.0.0.1:12380
advertise-client-urls: https://127.0.0.1:12379
discovery:
discovery-fallback: 'exit'
discovery-proxy:
discovery-srv:
initial-cluster: infra1=https://127.0.0.1:12380,infra2=https://127.0.0.1:22380
initial-cluster-token: 'tok-1'
initial-cluster-state: 'existing'
strict-reconfig-check: false
enable-v2: false
enable-pprof: false
proxy: 'off'
proxy-failure-wait: 5000
proxy-refresh-interval: 30000
proxy-dial-timeout: 1000
proxy-write-timeout: 5000
proxy-read-timeout: 0
client-transport-security:
  cert-file: /etc/c.pem
  key-file: /etc/k.pem
  client-cert-auth: true
  trusted-ca-file: /etc/ca.pem
  auto-tls: false
peer-transport-security:
  cert-file: /etc/pc.pem
  key-file: /etc/pk.pem
  client-cert-auth: true
  trusted-ca-file: /etc/pca.pem
  auto-tls: true
debug: false
log-level: warn
logger: zap
log-outputs: [stdout, /tmp/oxcd.log]
force-new-cluster: false
auto-compaction-mode: revision
auto-compaction-retention: "0"
cipher-suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305]
pre-vote: false
max-request-bytes: 2048
metrics: extensive
listen-metrics-urls: http://127.0.0.1:12381
"#,
        );
        let from_file = yaml.load().unwrap();
        assert_eq!(from_file.config_file.as_deref(), Some(yaml.path()));
        let from_flags = run(
            &[
                "--name=infra1",
                "--data-dir=/var/lib/infra1",
                "--wal-dir=/var/lib/infra1-wal",
                "--snapshot-count=5000",
                "--heartbeat-interval=50",
                "--election-timeout=600",
                "--listen-peer-urls=https://127.0.0.1:12380",
                "--listen-client-urls=https://127.0.0.1:12379,http://127.0.0.1:12378",
                "--max-snapshots=3",
                "--max-wals=0",
                "--cors=http://a.example,http://b.example",
                "--initial-advertise-peer-urls=https://127.0.0.1:12380",
                "--advertise-client-urls=https://127.0.0.1:12379",
                "--discovery-fallback=exit",
                "--initial-cluster=infra1=https://127.0.0.1:12380,infra2=https://127.0.0.1:22380",
                "--initial-cluster-token=tok-1",
                "--initial-cluster-state=existing",
                "--strict-reconfig-check=false",
                "--enable-v2=false",
                "--cert-file=/etc/c.pem",
                "--key-file=/etc/k.pem",
                "--client-cert-auth",
                "--trusted-ca-file=/etc/ca.pem",
                "--peer-cert-file=/etc/pc.pem",
                "--peer-key-file=/etc/pk.pem",
                "--peer-client-cert-auth",
                "--peer-trusted-ca-file=/etc/pca.pem",
                "--peer-auto-tls",
                "--log-level=warn",
                "--logger=zap",
                "--log-outputs=stdout,/tmp/oxcd.log",
                "--auto-compaction-mode=revision",
                "--cipher-suites=TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
                "--pre-vote=false",
                "--max-request-bytes=2048",
                "--metrics=extensive",
                "--listen-metrics-urls=http://127.0.0.1:12381",
            ],
            &[],
        )
        .unwrap();
        assert_eq!(comparable(from_file.clone()), comparable(from_flags));
        // And the values are the file's, not defaults that happen to agree.
        let c = from_file;
        assert_eq!(c.name, "infra1");
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/infra1"));
        assert_eq!(c.wal_dir, Some(PathBuf::from("/var/lib/infra1-wal")));
        assert_eq!(c.snapshot_count, 5000);
        assert_eq!(c.heartbeat_interval, Duration::from_millis(50));
        assert_eq!(c.election_timeout, Duration::from_millis(600));
        assert_eq!((c.max_snapshots, c.max_wals), (3, 0));
        assert_eq!(c.initial_cluster.len(), 2);
        assert_eq!(c.initial_cluster_state, "existing");
        assert_eq!(c.initial_cluster_token, "tok-1");
        assert!(!c.strict_reconfig_check && !c.enable_v2 && !c.pre_vote);
        assert_eq!(c.logger, Logger::Zap);
        assert_eq!(
            c.log_outputs,
            vec![
                LogOutput::Stdout,
                LogOutput::File(PathBuf::from("/tmp/oxcd.log"))
            ]
        );
        assert_eq!(c.log_level, "warn");
        assert_eq!(c.cipher_suites.len(), 2);
        assert_eq!(c.max_request_bytes, 2048);
        assert_eq!(c.listen_metrics_urls[0].port, 12381);
        assert_eq!(c.cors, vec!["http://a.example", "http://b.example"]);
        assert_eq!(
            c.client_tls,
            TlsInfo {
                cert_file: "/etc/c.pem".into(),
                key_file: "/etc/k.pem".into(),
                trusted_ca_file: "/etc/ca.pem".into(),
                client_cert_auth: true,
                ..TlsInfo::default()
            }
        );
        assert_eq!(
            c.peer_tls,
            TlsInfo {
                cert_file: "/etc/pc.pem".into(),
                key_file: "/etc/pk.pem".into(),
                trusted_ca_file: "/etc/pca.pem".into(),
                client_cert_auth: true,
                auto_tls: true,
                ..TlsInfo::default()
            }
        );
    }

    #[test]
    fn absent_keys_take_etcds_defaults() {
        // An empty file, or one of nulls, is the configuration without flags.
        let defaults = comparable(run(&[], &[]).unwrap());
        for text in [
            "",
            "# nothing\n",
            "name:\ndata-dir:\ninitial-cluster:\ncors: ~\nlog-outputs:\nclient-transport-security:\n",
        ] {
            assert_eq!(comparable(Yaml::new(text).load().unwrap()), defaults, "{text:?}");
        }
        let c = Yaml::new("").load().unwrap();
        assert_eq!(c.name, "default");
        assert_eq!(c.data_dir, PathBuf::from("default.etcd"));
        assert_eq!(c.initial_cluster[0].1.to_string(), "http://localhost:2380");
        // A name alone: data dir and cluster follow it, as with `etcd --name infra1`.
        let c = Yaml::new("name: infra1\ndata-dir:\n").load().unwrap();
        assert_eq!(c.data_dir, PathBuf::from("infra1.etcd"));
        assert_eq!(c.initial_cluster[0].0, "infra1");
        // etcd's default cluster is `default=http://localhost:2380` whatever the advertised
        // peer URL: with the default name and another URL, the two disagree (etcd refuses
        // this too, from the file and from flags).
        let e = err("initial-advertise-peer-urls: http://127.0.0.1:43380\n");
        assert!(e.starts_with("--initial-cluster has default=http://localhost:2380 but missing from --initial-advertise-peer-urls=http://127.0.0.1:43380"), "{e}");
        let e = run(
            &["--initial-advertise-peer-urls=http://127.0.0.1:43380"],
            &[],
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("--initial-cluster has default=http://localhost:2380"),
            "{e}"
        );
        // An explicitly empty cluster has no member of this name.
        assert_eq!(
            err("initial-cluster: ''\n"),
            "couldn't find local name \"default\" in the initial cluster configuration"
        );
        // In the file, listen-client-urls without advertise-client-urls keeps the default
        // advertised URL (etcd's file path has no "set explicitly"); as flags it is refused.
        let c = Yaml::new("listen-client-urls: http://127.0.0.1:43379\n")
            .load()
            .unwrap();
        assert_eq!(
            c.advertise_client_urls[0].to_string(),
            "http://localhost:2379"
        );
        assert!(run(&["--listen-client-urls=http://127.0.0.1:43379"], &[]).is_err());
    }

    #[test]
    fn other_flags_and_env_are_ignored_with_a_config_file() {
        let yaml = Yaml::new("name: fromfile\nsnapshot-count: 10\n");
        let env = [
            ("ETCD_NAME", "fromenv"),
            ("ETCD_SNAPSHOT_COUNT", "7"),
            ("ETCD_HEARTBEAT_INTERVAL", "bogus"),
        ];
        let c = run(
            &[
                "--config-file",
                yaml.path(),
                "--name",
                "fromflag",
                "--max-wals",
                "9",
            ],
            &env,
        )
        .unwrap();
        assert_eq!(c.name, "fromfile");
        assert_eq!(c.snapshot_count, 10);
        assert_eq!(c.max_wals, 5); // the flag's value is ignored, not only overridden
        assert_eq!(c.heartbeat_interval, Duration::from_millis(100));
        // ETCD_CONFIG_FILE does the same.
        let mut with_file = env.to_vec();
        with_file.push(("ETCD_CONFIG_FILE", yaml.path()));
        let c = run(&["--name", "fromflag"], &with_file).unwrap();
        assert_eq!((c.name.as_str(), c.snapshot_count), ("fromfile", 10));
        assert_eq!(c.config_file.as_deref(), Some(yaml.path()));
        // The flag wins over the variable.
        let other = Yaml::new("name: other\n");
        let c = run(&["--config-file", other.path()], &with_file).unwrap();
        assert_eq!(c.name, "other");
        // Flag syntax is still checked: the flags are parsed before the file is read.
        assert!(matches!(
            run(&["--config-file", yaml.path(), "--bogus"], &[]),
            Err(ConfigError::UnknownFlag(_))
        ));
        // Without a file, the variables apply as usual.
        assert_eq!(run(&[], &env[..1]).unwrap().name, "fromenv");
    }

    #[test]
    fn missing_file_and_bad_yaml_exit_1_with_etcds_errors() {
        let missing = std::env::temp_dir().join("oxcd-config-test-no-such-file.yml");
        let path = missing.to_str().unwrap();
        let e = run(&["--config-file", path], &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("open {path}: no such file or directory")
        );
        assert_eq!(e.exit_code(), 1);
        assert_eq!(e.config_file(), Some(path));
        let e = err("name: [a\n");
        assert!(
            e.starts_with("error converting YAML to JSON: yaml: line "),
            "{e}"
        );
        let e = err("name: a\n  bad indentation: b\n");
        assert!(
            e.starts_with("error converting YAML to JSON: yaml: line "),
            "{e}"
        );
        // Not a mapping.
        assert_eq!(
            err("- a\n- b\n"),
            format!("{TYPE_ERROR} array into Go value of type embed.configYAML")
        );
        // A flag-level refusal in the file is exit 1 too (etcd reads files without the
        // flag package).
        let e = Yaml::new("initial-cluster-state: bogus\n")
            .load()
            .unwrap_err();
        assert_eq!(e.exit_code(), 1);
    }

    #[test]
    fn type_errors_are_etcds() {
        // Each expected text is what etcd 3.4.23 prints for the same file.
        for (text, want) in [
            ("heartbeat-interval: \"100\"\n", "string into Go struct field configYAML.heartbeat-interval of type uint"),
            ("heartbeat-interval: -1\n", "number -1 into Go struct field configYAML.heartbeat-interval of type uint"),
            ("heartbeat-interval: 1.5\n", "number 1.5 into Go struct field configYAML.heartbeat-interval of type uint"),
            ("snapshot-count: abc\n", "string into Go struct field configYAML.snapshot-count of type uint64"),
            ("log-outputs: stderr\n", "string into Go struct field configYAML.log-outputs of type []string"),
            ("client-transport-security:\n  client-cert-auth: \"x\"\n", "string into Go struct field securityConfig.client-transport-security.client-cert-auth of type bool"),
            ("proxy-failure-wait: \"x\"\n", "string into Go struct field configProxy.proxy-failure-wait of type uint"),
            ("name: [a, b]\n", "array into Go struct field configYAML.name of type string"),
            ("name: {a: b}\n", "object into Go struct field configYAML.name of type string"),
            ("name: yes\n", "bool into Go struct field configYAML.name of type string"),
            ("name: 0x10\n", "number into Go struct field configYAML.name of type string"),
            // The first key in the JSON's (alphabetical) order is reported.
            ("snapshot-count: \"x\"\nheartbeat-interval: \"y\"\n", "string into Go struct field configYAML.heartbeat-interval of type uint"),
        ] {
            assert_eq!(err(text), format!("{TYPE_ERROR} {want}"), "{text:?}");
        }
    }

    #[test]
    fn yaml_scalars_resolve_as_in_go_yaml() {
        // Durations are milliseconds; a number written as a float is still a whole uint.
        let c = Yaml::new("heartbeat-interval: 50\nelection-timeout: 500\n")
            .load()
            .unwrap();
        assert_eq!(c.heartbeat_interval, Duration::from_millis(50));
        assert_eq!(c.election_timeout, Duration::from_millis(500));
        let c = Yaml::new("heartbeat-interval: 100.0\nelection-timeout: 1e3\n")
            .load()
            .unwrap();
        assert_eq!(c.election_timeout, Duration::from_millis(1000));
        let c = Yaml::new("snapshot-count: 0x10\nmax-wals: 010\n")
            .load()
            .unwrap();
        assert_eq!((c.snapshot_count, c.max_wals), (16, 8));
        // YAML 1.1 booleans.
        let c = Yaml::new("enable-v2: off\nstrict-reconfig-check: no\npre-vote: On\n")
            .load()
            .unwrap();
        assert!(!c.enable_v2 && !c.strict_reconfig_check && c.pre_vote);
        // Keys match case-insensitively; unknown keys are ignored, as etcd ignores them.
        let c = Yaml::new("Name: infra2\nno-such-key: 1\nsnapshot-count: 12\n")
            .load()
            .unwrap();
        assert_eq!((c.name.as_str(), c.snapshot_count), ("infra2", 12));
        // Anchors and aliases.
        let c = Yaml::new(
            "initial-advertise-peer-urls: &p http://localhost:2380\nlisten-peer-urls: *p\n",
        )
        .load()
        .unwrap();
        assert_eq!(c.listen_peer_urls[0].to_string(), "http://localhost:2380");
        // An explicit string tag makes a string of a number.
        let c = Yaml::new("name: !!str 123\n").load().unwrap();
        assert_eq!(c.name, "123");
        // Only the first document counts.
        let c = Yaml::new("name: first\n---\nname: second\n")
            .load()
            .unwrap();
        assert_eq!(c.name, "first");
        // The proxy section is decoded with go-yaml's string conversion: a bare `off` is
        // the string "false", which is no proxy mode.
        let e = err("proxy: off\n");
        assert!(e.contains("\"false\"") && e.contains("-proxy"), "{e}");
        assert!(Yaml::new("proxy: 'off'\n").load().is_ok());
    }

    #[test]
    fn file_values_go_through_the_flags_validation() {
        // The same refusal, with the same words, as the flag.
        for (key, flag) in [
            ("election-timeout: 10", "--election-timeout=10"),
            ("heartbeat-interval: 0", "--heartbeat-interval=0"),
            ("quota-backend-bytes: 1000", "--quota-backend-bytes=1000"),
            ("discovery-fallback: bogus", "--discovery-fallback=bogus"),
            ("logger: bogus", "--logger=bogus"),
            ("log-level: verbose", "--log-level=verbose"),
            (
                "auto-compaction-retention: 1x",
                "--auto-compaction-retention=1x",
            ),
            ("cipher-suites: [TLS_NOPE]", "--cipher-suites=TLS_NOPE"),
            (
                "listen-client-urls: unix://x:1",
                "--listen-client-urls=unix://x:1",
            ),
            (
                "client-transport-security:\n  cert-file: c.pem",
                "--cert-file=c.pem",
            ),
        ] {
            let from_file = err(&format!("{key}\n"));
            let from_flag = run(
                &[flag, "--advertise-client-urls=http://localhost:2379"],
                &[],
            )
            .unwrap_err()
            .to_string();
            assert_eq!(from_file, from_flag, "{key}");
        }
        assert_eq!(
            err("election-timeout: 10\n"),
            "--election-timeout[10ms] should be at least as 5 times as --heartbeat-interval[100ms]"
        );
        assert_eq!(
            err("heartbeat-interval: 0\n"),
            "--heartbeat-interval must be >0 (set to 0ms)"
        );
        // etcd settings oxcd has no flag for are refused, not ignored (a null is nothing).
        let e = err("auth-token: jwt\n");
        assert!(
            e.contains("\"auth-token\"") && e.contains("not support"),
            "{e}"
        );
        assert!(Yaml::new("auth-token:\n").load().is_ok());
    }

    #[test]
    fn sample_settings_oxcd_accepts_with_a_warning() {
        // etcd's example file enables pprof and a v3 compaction retention of one hour.
        let c = Yaml::new("enable-pprof: true\nauto-compaction-mode: periodic\nauto-compaction-retention: \"1\"\n").load().unwrap();
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
        assert!(run(&[], &[]).unwrap().warnings.is_empty());
        for ok in ["5", "1h30m", "90s", "0"] {
            assert!(
                run(&["--auto-compaction-retention", ok], &[]).is_ok(),
                "{ok}"
            );
        }
        // A number is not a string in this field (etcd's example quotes it).
        assert_eq!(
            err("auto-compaction-retention: 1\n"),
            format!("{TYPE_ERROR} number into Go struct field configYAML.auto-compaction-retention of type string")
        );
    }
}
