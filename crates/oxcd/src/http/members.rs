//! `/v2/members`: the members API — list, add, remove and update members at runtime
//! (etcd's `membersHandler`, same methods, status codes and `{"message":...}` bodies).
//!
//! A change goes through raft as one configuration-change entry (see
//! `server::EtcdServer::change_member`); the answer is sent once it is applied on this
//! member, with the verdict every member reached for it.

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::base::{http_error, member_json};
use super::body::RespBody;
use super::json_response;
use crate::membership::{compute_member_id, id_to_string, Member, MemberChange, MemberError};
use crate::server::{EtcdServer, ServerError};

/// The body of `POST /v2/members` and `PUT /v2/members/<id>`.
#[derive(Deserialize)]
struct MemberRequest {
    #[serde(rename = "peerURLs", default)]
    peer_urls: Vec<String>,
}

/// Serves `/v2/members[/...]` once the method and permissions are checked.
pub async fn serve(
    server: &EtcdServer,
    method: &Method,
    path: &str,
    content_type: Option<&str>,
    body: Bytes,
) -> Response<RespBody> {
    let rest = path
        .trim_start_matches("/v2/members")
        .trim_start_matches('/');
    let mut resp = match *method {
        Method::GET => list(server, rest),
        Method::POST => match parse(content_type, &body) {
            Ok(urls) => add(server, urls).await,
            Err((status, msg)) => http_error(status, &msg),
        },
        // The ID in the path is checked before the body (etcd's `getID`).
        Method::DELETE => match path_id(rest) {
            Ok(id) => remove(server, id).await,
            Err(resp) => *resp,
        },
        _ => match path_id(rest).map(|id| (id, parse(content_type, &body))) {
            Ok((id, Ok(urls))) => update(server, id, urls).await,
            Ok((_, Err((status, msg)))) => http_error(status, &msg),
            Err(resp) => *resp,
        },
    };
    resp.headers_mut().insert(
        super::names::X_ETCD_CLUSTER_ID,
        server.cluster_id_header.clone(),
    );
    resp
}

fn list(server: &EtcdServer, rest: &str) -> Response<RespBody> {
    let members = server
        .shared
        .members
        .read()
        .unwrap_or_else(|e| e.into_inner());
    match rest {
        "" => {
            let list: Vec<_> = members.values().map(member_json).collect();
            json_response(format!(
                "{}\n",
                oxcd_api::json::to_string(&json!({ "members": list }))
            ))
        }
        "leader" => match members.get(&server.leader()) {
            Some(m) => json_response(format!("{}\n", member_json(m))),
            None => http_error(StatusCode::SERVICE_UNAVAILABLE, "During election"),
        },
        _ => http_error(StatusCode::NOT_FOUND, "Not found"),
    }
}

/// The peer URLs of a request body, checked as etcd's `types.NewURLs` checks them (and
/// sorted, as it sorts them).
fn parse(content_type: Option<&str>, body: &[u8]) -> Result<Vec<String>, (StatusCode, String)> {
    // As etcd's `unmarshalRequest`: with parameters (`;`), the media type is lower-cased and
    // trimmed; without, it must be exactly `application/json`. The refusal names what was
    // compared.
    let ctype = content_type.unwrap_or("");
    let media = match ctype.split_once(';') {
        Some((media, _)) => media.trim().to_ascii_lowercase(),
        None => ctype.to_string(),
    };
    if media != "application/json" {
        return Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Bad Content-Type {media}, accept application/json"),
        ));
    }
    let req: MemberRequest =
        serde_json::from_slice(body).map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
    let bad = |msg: String| (StatusCode::BAD_REQUEST, msg);
    if req.peer_urls.is_empty() {
        return Err(bad("no valid URLs given".into()));
    }
    let mut urls = Vec::with_capacity(req.peer_urls.len());
    for raw in req.peer_urls {
        let u = raw.trim();
        let Some((scheme, rest)) = u.split_once("://") else {
            return Err(bad(format!(
                "URL scheme must be http, https, unix, or unixs: {u}"
            )));
        };
        match scheme {
            "http" | "https" => {}
            "unix" | "unixs" => {
                return Err(bad(format!(
                    "unix socket peer URLs are not supported by oxcd: {u}"
                )))
            }
            _ => {
                return Err(bad(format!(
                    "URL scheme must be http, https, unix, or unixs: {u}"
                )))
            }
        }
        let (host, path) = match rest.find(['/', '?', '#']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let has_port = host
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && !p.is_empty() && p.parse::<u16>().is_ok());
        if !has_port {
            return Err(bad(format!(
                "URL address does not have the form \"host:port\": {u}"
            )));
        }
        if !path.is_empty() {
            return Err(bad(format!("URL must not contain a path: {u}")));
        }
        urls.push(u.to_string());
    }
    urls.sort();
    Ok(urls)
}

/// Any failure but the members API's own (a timeout, the strict check) is etcd's 500.
fn internal(e: &ServerError) -> Response<RespBody> {
    tracing::warn!(error = %e, "v2 response error");
    http_error(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error")
}

async fn add(server: &EtcdServer, peer_urls: Vec<String>) -> Response<RespBody> {
    // etcd's `NewMember("", urls, "", now)`: no cluster token, the time of the request.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let member = Member {
        id: compute_member_id(&peer_urls, "", Some(now)),
        name: String::new(),
        peer_urls,
        client_urls: Vec::new(),
    };
    match server
        .change_member(MemberChange::Add(member.clone()))
        .await
    {
        Ok(()) => {
            let mut resp = json_response(format!("{}\n", member_json(&member)));
            *resp.status_mut() = StatusCode::CREATED;
            resp
        }
        Err(ServerError::Member(e @ (MemberError::IdExists | MemberError::PeerUrlExists))) => {
            http_error(StatusCode::CONFLICT, &e.to_string())
        }
        Err(e) => internal(&e),
    }
}

/// The member ID in the path of a DELETE or PUT (hex, as etcd prints it), or etcd's answer:
/// 405 in Go's plain text (no `Allow`) without one, 404 for one that is not hex.
fn path_id(rest: &str) -> Result<u64, Box<Response<RespBody>>> {
    if rest.is_empty() {
        return Err(Box::new(super::text_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method Not Allowed",
        )));
    }
    u64::from_str_radix(rest, 16)
        .ok()
        .filter(|_| !rest.starts_with('+'))
        .ok_or_else(|| Box::new(no_such_member(rest)))
}

/// etcd's answer to a path that names no member.
fn no_such_member(shown: &str) -> Response<RespBody> {
    http_error(StatusCode::NOT_FOUND, &format!("No such member: {shown}"))
}

async fn remove(server: &EtcdServer, id: u64) -> Response<RespBody> {
    let shown = id_to_string(id);
    match server.change_member(MemberChange::Remove(id)).await {
        Ok(()) => no_content(),
        Err(ServerError::Member(MemberError::IdRemoved)) => http_error(
            StatusCode::GONE,
            &format!("Member permanently removed: {shown}"),
        ),
        Err(ServerError::Member(MemberError::IdNotFound)) => no_such_member(&shown),
        Err(e) => internal(&e),
    }
}

async fn update(server: &EtcdServer, id: u64, peer_urls: Vec<String>) -> Response<RespBody> {
    let shown = id_to_string(id);
    match server
        .change_member(MemberChange::Update { id, peer_urls })
        .await
    {
        Ok(()) => no_content(),
        Err(ServerError::Member(e @ MemberError::PeerUrlExists)) => {
            http_error(StatusCode::CONFLICT, &e.to_string())
        }
        Err(ServerError::Member(MemberError::IdNotFound)) => no_such_member(&shown),
        Err(e) => internal(&e),
    }
}

fn no_content() -> Response<RespBody> {
    let mut resp = Response::new(RespBody::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The refusals and messages etcd 3.4 answers (observed with etcd 3.4.23).
    #[test]
    fn peer_urls_are_checked_as_etcd_checks_them() {
        let json = Some("application/json");
        let cases: &[(&str, &str)] = &[
            (r#"{"peerURLs":[]}"#, "no valid URLs given"),
            (r#"{}"#, "no valid URLs given"),
            (
                r#"{"peerURLs":["foo"]}"#,
                "URL scheme must be http, https, unix, or unixs: foo",
            ),
            (
                r#"{"peerURLs":["http://127.0.0.1:1/path"]}"#,
                "URL must not contain a path: http://127.0.0.1:1/path",
            ),
        ];
        for (body, msg) in cases {
            assert_eq!(
                parse(json, body.as_bytes()).unwrap_err(),
                (StatusCode::BAD_REQUEST, msg.to_string()),
                "{body}"
            );
        }
        assert_eq!(parse(json, b"xx").unwrap_err().0, StatusCode::BAD_REQUEST);
        assert_eq!(
            parse(None, br#"{"peerURLs":["http://a:1"]}"#).unwrap_err(),
            (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Bad Content-Type , accept application/json".to_string()
            )
        );
        // etcd 3.4.23: parameters make the media type case-insensitive, and only they.
        let url = br#"{"peerURLs":["http://a:1"]}"#;
        for (ctype, refused) in [
            ("text/plain; charset=utf-8", Some("text/plain")),
            ("Application/JSON", Some("Application/JSON")),
            ("APPLICATION/JSON; x", None),
            ("application/json; charset=utf-8", None),
        ] {
            let got = parse(Some(ctype), url);
            match refused {
                Some(shown) => assert_eq!(
                    got.unwrap_err(),
                    (
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        format!("Bad Content-Type {shown}, accept application/json")
                    ),
                    "{ctype}"
                ),
                None => assert!(got.is_ok(), "{ctype}"),
            }
        }
        assert_eq!(
            parse(json, br#"{"peerURLs":["http://b:2","http://a:1"]}"#).unwrap(),
            vec!["http://a:1".to_string(), "http://b:2".to_string()]
        );
    }
}
