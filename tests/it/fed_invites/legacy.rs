//! `invite` v1, the deprecated endpoint of servers that lack v2: served (hand-signed v1
//! requests from B to A), and used when the invitee's server does not know v2 (B behind a
//! proxy that answers v2 invites 404 `M_UNRECOGNIZED`, as a server without them does).

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use reqwest::{Method, StatusCode};
use ruma::{
    room_version_rules::RedactionRules, signatures::hash_and_sign_event, CanonicalJsonObject,
};
use serde_json::{json, Value};

use super::{invite, member_content, services, sync_token, sync_until};
use crate::common::{create_room, enc, errcode};
use crate::fed_common::{start_many, start_many_with, FedServer};
use crate::fed_pdus::events::{now_ms, Remote};

/// A v1 invite of `invitee` by `@carol` of `remote`'s server (room version 1 format: the id
/// is a field, references are `[id, hashes]` pairs), with `membership`.
fn v1_invite(remote: &Remote, invitee: &str, membership: &str, n: u32) -> (String, Value) {
    let event_id = format!("$v1invite{n}:{}", remote.name);
    let value = json!({
        "event_id": event_id,
        "type": "m.room.member",
        "room_id": format!("!old:{}", remote.name),
        "sender": remote.user("carol"),
        "origin": remote.name,
        "state_key": invitee,
        "origin_server_ts": now_ms(),
        "depth": 7,
        "prev_events": [[format!("$prev:{}", remote.name), {"sha256": "aGFzaA"}]],
        "auth_events": [[format!("$auth:{}", remote.name), {"sha256": "aGFzaA"}]],
        "content": {"membership": membership},
    });
    let mut object: CanonicalJsonObject = serde_json::from_value(value).unwrap();
    hash_and_sign_event(&remote.name, &remote.key, &mut object, &RedactionRules::V1).unwrap();
    (event_id, serde_json::to_value(&object).unwrap())
}

/// `event` as a v1 invite body: the stripped state in its `unsigned`.
fn v1_body(event: &Value, remote: &Remote) -> Value {
    let mut body = event.clone();
    body["unsigned"] = json!({"invite_room_state": [
        {"type": "m.room.create", "state_key": "", "sender": remote.user("carol"),
         "content": {"creator": remote.user("carol")}},
        {"type": "m.room.name", "state_key": "", "sender": remote.user("carol"),
         "content": {"name": "An old room"}},
    ]});
    body
}

async fn put_v1(
    from: &FedServer,
    to: &FedServer,
    event: &Value,
    body: Value,
) -> (StatusCode, Value) {
    let path = format!(
        "/_matrix/federation/v1/invite/{}/{}",
        enc(event["room_id"].as_str().unwrap()),
        enc(event["event_id"].as_str().unwrap())
    );
    from.signed(to, &to.name, Method::PUT, &path, Some(body))
        .await
}

#[tokio::test]
async fn v1_invites_are_checked_signed_and_shown() {
    let fed = start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let (alice, alice_token, _) = a.register("alice", "password1").await;
    let since = sync_token(a, &alice_token).await;
    let remote = Remote::server(b);

    // Not an invite.
    let (_, event) = v1_invite(&remote, &alice, "join", 1);
    let (status, answer) = put_v1(b, a, &event, v1_body(&event, &remote)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(errcode(&answer), "M_INVALID_PARAM");
    // Signed, then changed.
    let (_, mut event) = v1_invite(&remote, &alice, "invite", 2);
    event["origin_server_ts"] = json!(1);
    let (status, answer) = put_v1(b, a, &event, v1_body(&event, &remote)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(errcode(&answer), "M_INVALID_PARAM");
    // Not an event.
    let (_, event) = v1_invite(&remote, &alice, "invite", 3);
    let (status, answer) = put_v1(b, a, &event, json!([200])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(errcode(&answer), "M_BAD_JSON");
    // An event id in the path that is not the event's.
    let path = format!(
        "/_matrix/federation/v1/invite/{}/{}",
        enc(event["room_id"].as_str().unwrap()),
        enc(&format!("$other:{}", b.name))
    );
    let (status, answer) = b
        .signed(
            a,
            &a.name,
            Method::PUT,
            &path,
            Some(v1_body(&event, &remote)),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");

    // A proper one: A signs it, answers `[200, {"event": …}]`, and Alice sees the invite.
    let (event_id, event) = v1_invite(&remote, &alice, "invite", 4);
    let (status, answer) = put_v1(b, a, &event, v1_body(&event, &remote)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer[0], 200, "{answer}");
    let signed = &answer[1]["event"];
    assert_eq!(signed["event_id"], event_id.as_str(), "{answer}");
    assert!(signed["signatures"][&a.name].is_object(), "{answer}");
    assert!(signed["signatures"][&b.name].is_object(), "{answer}");
    assert!(
        signed["unsigned"].get("invite_room_state").is_none(),
        "{answer}"
    );
    let room_id = event["room_id"].as_str().unwrap();
    let sync = sync_until(a, &alice_token, &since, "the v1 invite", |s| {
        s["rooms"]["invite"][room_id].is_object()
    })
    .await;
    let events = &sync["rooms"]["invite"][room_id]["invite_state"]["events"];
    let has = |kind: &str| events.as_array().unwrap().iter().any(|e| e["type"] == kind);
    assert!(has("m.room.name") && has("m.room.create"), "{sync}");
    let record = services(a)
        .rooms
        .remote_invite(
            &ruma::UserId::parse(&alice).unwrap(),
            &ruma::RoomId::parse(room_id).unwrap(),
        )
        .unwrap()
        .unwrap();
    assert_eq!(record.room_version, "1");
}

/// What the proxy in front of B was asked: `(method, path)`.
type Asked = Arc<Mutex<Vec<(String, String)>>>;

/// A server without `invite` v2, on `listener` (named `127.0.0.1:<its port>`), on TLS with the
/// federation test certificate (`like`'s): it answers v2 invites 404 `M_UNRECOGNIZED` and
/// passes every other request on to the plain listener at `target` (a real Hearth server named
/// after the proxy). Returns what it was asked.
fn without_invite_v2(listener: tokio::net::TcpListener, like: &FedServer, target: String) -> Asked {
    use hyper_util::rt::TokioIo;
    use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};

    let certs = CertificateDer::pem_file_iter(&like.config.tls.cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&like.config.tls.key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let asked = Asked::default();
    let seen = asked.clone();
    let target = Arc::new(target);
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, seen, target, client) = (
                acceptor.clone(),
                seen.clone(),
                target.clone(),
                client.clone(),
            );
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (seen, target, client) = (seen.clone(), target.clone(), client.clone());
                        async move {
                            Ok::<_, std::convert::Infallible>(
                                pass_on(req, &seen, &target, &client).await,
                            )
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    asked
}

async fn pass_on(
    req: http::Request<hyper::body::Incoming>,
    seen: &Asked,
    base: &str,
    client: &reqwest::Client,
) -> http::Response<http_body_util::Full<Bytes>> {
    use http_body_util::BodyExt;
    let method = req.method().clone();
    let path = req.uri().path_and_query().unwrap().to_string();
    seen.lock()
        .unwrap()
        .push((method.to_string(), req.uri().path().to_owned()));
    if path.starts_with("/_matrix/federation/v2/invite/") {
        return http::Response::builder()
            .status(404)
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(Bytes::from_static(
                br#"{"errcode":"M_UNRECOGNIZED","error":"Unrecognized request"}"#,
            )))
            .unwrap();
    }
    let headers = req.headers().clone();
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let mut out = client.request(method, format!("{base}{path}"));
    for name in ["authorization", "content-type"] {
        if let Some(value) = headers.get(name) {
            out = out.header(name, value.to_str().unwrap());
        }
    }
    let answer = out.body(body).send().await.unwrap();
    let status = answer.status().as_u16();
    let kind = answer
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let mut response = http::Response::builder().status(status);
    if let Some(kind) = kind {
        response = response.header("content-type", kind);
    }
    response
        .body(http_body_util::Full::new(answer.bytes().await.unwrap()))
        .unwrap()
}

#[tokio::test]
async fn invites_fall_back_to_v1_for_servers_without_v2() {
    // B goes by the proxy's name; the proxy passes requests on to B once both are up (no
    // one knows B before then).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
    let proxied = proxy.clone();
    let mut fed = start_many_with(2, move |i, config| {
        if i == 1 {
            config.server_name = proxied.clone();
        }
    })
    .await;
    fed.servers[1].name = proxy.clone();
    let asked = without_invite_v2(listener, &fed.servers[0], fed.servers[1].base.clone());
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let (_, alice_token, _) = a.register("alice", "password1").await;
    let (bob, bob_token, _) = b.register("bob", "password1").await;
    assert!(bob.ends_with(&proxy), "{bob}");
    let since = sync_token(b, &bob_token).await;

    // Room version 1: v2 is not known, v1 is asked and B signs.
    let room_id = create_room(
        a,
        &alice_token,
        json!({"preset": "private_chat", "room_version": "1", "name": "Old times"}),
    )
    .await;
    let (status, body) = invite(a, &alice_token, &room_id, &bob).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let invites: Vec<(String, String)> = asked
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, path)| path.contains("/invite/"))
        .cloned()
        .collect();
    assert_eq!(invites.len(), 2, "{invites:?}");
    assert!(
        invites[0].1.starts_with("/_matrix/federation/v2/invite/"),
        "{invites:?}"
    );
    assert!(
        invites[1].1.starts_with("/_matrix/federation/v1/invite/"),
        "{invites:?}"
    );
    let (status, member) = member_content(a, &alice_token, &room_id, &bob).await;
    assert_eq!(
        (status, &member["membership"]),
        (StatusCode::OK, &json!("invite"))
    );
    let sync = sync_until(b, &bob_token, &since, "the invite", |s| {
        s["rooms"]["invite"][&room_id].is_object()
    })
    .await;
    let events = sync["rooms"]["invite"][&room_id]["invite_state"]["events"]
        .as_array()
        .unwrap();
    assert!(
        events.iter().any(|e| e["content"]["name"] == "Old times"),
        "{sync}"
    );
    // Bob joins through A.
    let (status, body) = b
        .post(
            &format!(
                "/_matrix/client/v3/join/{}?server_name={}",
                enc(&room_id),
                enc(&a.name)
            ),
            Some(&bob_token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, member) = member_content(a, &alice_token, &room_id, &bob).await;
    assert_eq!(
        (status, &member["membership"]),
        (StatusCode::OK, &json!("join"))
    );

    // Room version 10: v1 cannot carry it; the room is unchanged.
    let room_id = create_room(
        a,
        &alice_token,
        json!({"preset": "private_chat", "room_version": "10"}),
    )
    .await;
    let (status, body) = invite(a, &alice_token, &room_id, &bob).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(errcode(&body), "M_UNSUPPORTED_ROOM_VERSION");
    let (status, _) = member_content(a, &alice_token, &room_id, &bob).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
