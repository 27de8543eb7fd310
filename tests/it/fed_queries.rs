//! Queries between two Hearth servers on loopback: profiles, aliases, device and one-time
//! keys, room directories — asked by a client of A about B, and answered by B to signed
//! requests; plus what a server that is down or never answers does to a key query.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::{create_room, enc, errcode};
use crate::e2ee::{claim, query, CrossSigning, Dev};
use crate::fed_common::{start_many, FedServer};

fn profile(user: &str) -> String {
    format!("/_matrix/client/v3/profile/{}", enc(user))
}

async fn set_displayname(srv: &FedServer, token: &str, user: &str, name: &str) {
    let (status, body) = srv
        .put(
            &format!("{}/displayname", profile(user)),
            Some(token),
            json!({"displayname": name}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn profiles_of_remote_users_come_from_their_server() {
    let fed = start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let (_, alice, _) = a.register("alice", "password-a").await;
    let (bob, bob_token, _) = b.register("bob", "password-b").await;
    set_displayname(b, &bob_token, &bob, "Bob of B").await;

    let (status, body) = a.get(&profile(&bob), Some(&alice)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["displayname"], "Bob of B");
    assert!(body.get("avatar_url").is_none(), "{body}");

    let (status, body) = a
        .get(&format!("{}/displayname", profile(&bob)), Some(&alice))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"displayname": "Bob of B"}));
    // A field Bob has not set, and a user B does not have.
    let (status, body) = a
        .get(&format!("{}/avatar_url", profile(&bob)), Some(&alice))
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::NOT_FOUND, "M_NOT_FOUND")
    );
    let nobody = b.user_id("nobody");
    let (status, body) = a.get(&profile(&nobody), Some(&alice)).await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::NOT_FOUND, "M_NOT_FOUND")
    );

    // B's answer to a signed query: only the field asked for.
    let path = format!(
        "/_matrix/federation/v1/query/profile?user_id={}&field=displayname",
        enc(&bob)
    );
    let (status, body) = a.signed(b, &b.name, Method::GET, &path, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"displayname": "Bob of B"}));
}

#[tokio::test]
async fn aliases_of_another_server_resolve_through_it() {
    let fed = start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let (_, alice, _) = a.register("alice", "password-a").await;
    let (_, bob, _) = b.register("bob", "password-b").await;
    let room = create_room(b, &bob, json!({"room_alias_name": "lounge"})).await;
    let alias = format!("#lounge:{}", b.name);

    let (status, body) = a
        .get(
            &format!("/_matrix/client/v3/directory/room/{}", enc(&alias)),
            Some(&alice),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["room_id"], room.as_str());
    assert_eq!(body["servers"], json!([b.name]));

    let missing = format!("#nowhere:{}", b.name);
    let (status, body) = a
        .get(
            &format!("/_matrix/client/v3/directory/room/{}", enc(&missing)),
            Some(&alice),
        )
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::NOT_FOUND, "M_NOT_FOUND")
    );

    // Joining and knocking resolve the alias the same way, then ask B (the room is neither
    // public nor open to knocks, so B refuses both; `fed_joins`, `fed_invites`).
    for path in ["join", "knock"] {
        let (status, body) = a
            .post(
                &format!("/_matrix/client/v3/{path}/{}", enc(&alias)),
                Some(&alice),
                json!({}),
            )
            .await;
        assert_eq!(
            (status, errcode(&body)),
            (StatusCode::FORBIDDEN, "M_FORBIDDEN"),
            "{path}: {body}"
        );
        let (status, body) = a
            .post(
                &format!("/_matrix/client/v3/{path}/{}", enc(&missing)),
                Some(&alice),
                json!({}),
            )
            .await;
        assert_eq!(
            (status, errcode(&body)),
            (StatusCode::NOT_FOUND, "M_NOT_FOUND"),
            "{path}: {body}"
        );
    }
}

#[tokio::test]
async fn keys_of_remote_users_are_queried_and_claimed() {
    let fed = start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let alice = Dev::register(a, "alice").await;
    let bob = Dev::register(b, "bob").await;
    bob.upload_device_keys(b).await;
    let (status, body) = bob
        .upload(
            b,
            json!({"one_time_keys": {
                "signed_curve25519:AAAAAQ": bob.otk(1),
                "signed_curve25519:AAAAAg": bob.otk(2),
            }}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = b
        .put(
            &format!("/_matrix/client/v3/devices/{}", bob.device),
            Some(&bob.token),
            json!({"display_name": "Bob's phone"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let cross = CrossSigning::new();
    let (status, body) = b
        .post(
            "/_matrix/client/v3/keys/device_signing/upload",
            Some(&bob.token),
            cross.upload_body(&bob.user),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let body = query(a, &alice.token, json!({ &bob.user: [] })).await;
    assert!(
        body.get("failures").is_none_or(|f| f == &json!({})),
        "{body}"
    );
    let keys = &body["device_keys"][&bob.user][&bob.device];
    let uploaded = bob.device_keys();
    assert_eq!(keys["keys"], uploaded["keys"], "{body}");
    assert_eq!(keys["unsigned"]["device_display_name"], "Bob's phone");
    assert_eq!(keys["signatures"], uploaded["signatures"], "{body}");
    assert_eq!(
        body["master_keys"][&bob.user],
        cross.key(&bob.user, "master")
    );
    assert_eq!(
        body["self_signing_keys"][&bob.user],
        cross.key(&bob.user, "self_signing")
    );
    // Bob's user-signing key is his alone.
    assert!(body
        .get("user_signing_keys")
        .is_none_or(|k| k.get(&bob.user).is_none()));

    // One device asked for, one unknown device: only the known one.
    let body = query(
        a,
        &alice.token,
        json!({ &bob.user: [&bob.device, "NOSUCH"] }),
    )
    .await;
    let devices = body["device_keys"][&bob.user].as_object().unwrap();
    assert_eq!(devices.keys().collect::<Vec<_>>(), vec![&bob.device]);

    // Claims hand out Bob's keys oldest first, each once.
    let want = json!({ &bob.user: { &bob.device: "signed_curve25519" } });
    let first = claim(a, &alice.token, want.clone()).await;
    let second = claim(a, &alice.token, want.clone()).await;
    let key_of = |body: &Value| {
        let keys = body["one_time_keys"][&bob.user][&bob.device]
            .as_object()
            .unwrap_or_else(|| panic!("{body}"))
            .clone();
        assert_eq!(keys.len(), 1, "{body}");
        keys.into_iter().next().unwrap()
    };
    assert_eq!(
        key_of(&first),
        ("signed_curve25519:AAAAAQ".into(), bob.otk(1))
    );
    assert_eq!(
        key_of(&second),
        ("signed_curve25519:AAAAAg".into(), bob.otk(2))
    );
    let third = claim(a, &alice.token, want).await;
    assert_eq!(third["one_time_keys"], json!({}), "{third}");

    // B's device list for Bob, as a server tracking his devices reads it.
    let path = format!("/_matrix/federation/v1/user/devices/{}", enc(&bob.user));
    let (status, body) = a.signed(b, &b.name, Method::GET, &path, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], bob.user.as_str());
    assert!(body["stream_id"].as_u64().unwrap() > 0, "{body}");
    let devices = body["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 1, "{body}");
    assert_eq!(devices[0]["device_id"], bob.device.as_str());
    assert_eq!(devices[0]["keys"]["keys"], uploaded["keys"]);
    assert_eq!(devices[0]["device_display_name"], "Bob's phone");
    // The keys are as uploaded, without what servers add (`unsigned`).
    assert!(devices[0]["keys"].get("unsigned").is_none(), "{body}");
    assert_eq!(body["master_key"], cross.key(&bob.user, "master"));
    assert_eq!(
        body["self_signing_key"],
        cross.key(&bob.user, "self_signing")
    );
}

#[tokio::test]
async fn the_room_directory_of_another_server_is_listed_with_server() {
    let fed = start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let (_, alice, _) = a.register("alice", "password-a").await;
    let (_, bob, _) = b.register("bob", "password-b").await;
    let published = create_room(
        b,
        &bob,
        json!({"visibility": "public", "name": "Garden club", "room_alias_name": "garden"}),
    )
    .await;
    create_room(b, &bob, json!({"visibility": "public", "name": "Chess"})).await;
    create_room(b, &bob, json!({"name": "Unlisted"})).await;

    let path = format!("/_matrix/client/v3/publicRooms?server={}", enc(&b.name));
    let (status, body) = a.get(&path, Some(&alice)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let names: Vec<&str> = body["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(names.len(), 2, "{body}");
    assert!(
        names.contains(&"Garden club") && names.contains(&"Chess"),
        "{body}"
    );
    assert_eq!(body["total_room_count_estimate"], 2);

    // Pagination passes through: one room, then the other.
    let (_, page) = a.get(&format!("{path}&limit=1"), Some(&alice)).await;
    assert_eq!(page["chunk"].as_array().unwrap().len(), 1, "{page}");
    let next = page["next_batch"].as_str().expect("next_batch");
    let (_, rest) = a
        .get(&format!("{path}&limit=1&since={}", enc(next)), Some(&alice))
        .await;
    assert_eq!(rest["chunk"].as_array().unwrap().len(), 1, "{rest}");
    assert_ne!(page["chunk"][0]["room_id"], rest["chunk"][0]["room_id"]);

    // The filtered form.
    let (status, body) = a
        .post(
            &path,
            Some(&alice),
            json!({"filter": {"generic_search_term": "garden"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["chunk"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body["chunk"][0]["room_id"], published.as_str());
    assert_eq!(
        body["chunk"][0]["canonical_alias"],
        format!("#garden:{}", b.name)
    );

    // B's own answers to signed requests: a limit of 0 is no limit, all networks are the
    // Matrix rooms here, and a third-party network has none.
    for (query, rooms) in [
        ("limit=0", 2),
        ("include_all_networks=true", 2),
        ("third_party_instance_id=irc", 0),
    ] {
        let path = format!("/_matrix/federation/v1/publicRooms?{query}");
        let (status, body) = a.signed(b, &b.name, Method::GET, &path, None).await;
        assert_eq!(status, StatusCode::OK, "{query}: {body}");
        assert_eq!(
            body["chunk"].as_array().unwrap().len(),
            rooms,
            "{query}: {body}"
        );
    }
    let (status, body) = a
        .signed(
            b,
            &b.name,
            Method::POST,
            "/_matrix/federation/v1/publicRooms",
            Some(json!({"limit": 1, "filter": {"generic_search_term": "CHESS"}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["chunk"][0]["name"], "Chess", "{body}");

    // The listing needs no access token (spec), another server's neither.
    let (status, body) = a.get(&path, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["chunk"].as_array().unwrap().len(), 2, "{body}");
}

/// Connections to black holes: open now, and the most open at once.
#[derive(Default)]
struct Connections {
    open: AtomicUsize,
    most: AtomicUsize,
}

/// A TCP listener that accepts connections and never answers (a server that hangs); each
/// connection counts in `connections` until the other side closes it.
async fn black_hole(connections: Arc<Connections>) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let name = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
    let task = tokio::spawn(async move {
        let mut readers = tokio::task::JoinSet::new();
        // Bounded: the tests make a handful of connections to each.
        for _ in 0..64 {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let open = connections.open.fetch_add(1, Ordering::SeqCst) + 1;
            connections.most.fetch_max(open, Ordering::SeqCst);
            let connections = connections.clone();
            readers.spawn(async move {
                let mut buf = [0u8; 4096];
                // Until the client gives up (EOF or reset); nothing is ever answered.
                while matches!(
                    tokio::io::AsyncReadExt::read(&mut socket, &mut buf).await,
                    Ok(n) if n > 0
                ) {}
                connections.open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (name, task)
}

#[tokio::test]
async fn servers_that_are_down_or_hang_are_failures_and_the_rest_answers() {
    let mut fed = start_many(3).await;
    let alice = Dev::register(&fed.servers[0], "alice").await;
    let bob = Dev::register(&fed.servers[1], "bob").await;
    bob.upload_device_keys(&fed.servers[1]).await;
    let carol = fed.servers[2].user_id("carol");
    let down = fed.servers[2].name.clone();
    fed.servers[2].stop().await;
    let (hang, hole) = black_hole(Arc::default()).await;
    let hung_user = format!("@dave:{hang}");
    let a = &fed.servers[0];

    let started = Instant::now();
    let (status, body) = tokio::time::timeout(
        Duration::from_secs(30),
        a.post(
            "/_matrix/client/v3/keys/query",
            Some(&alice.token),
            json!({
                "timeout": 2000,
                "device_keys": { &bob.user: [], &carol: [], &hung_user: [] },
            }),
        ),
    )
    .await
    .expect("keys/query answers");
    let query_took = started.elapsed();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body["device_keys"][&bob.user][&bob.device].is_object(),
        "{body}"
    );
    assert!(body["failures"][&down].is_object(), "{body}");
    assert!(body["failures"][&hang].is_object(), "{body}");
    assert!(
        body["failures"].get(&fed.servers[1].name).is_none(),
        "{body}"
    );

    let (status, body) = tokio::time::timeout(
        Duration::from_secs(30),
        a.post(
            "/_matrix/client/v3/keys/claim",
            Some(&alice.token),
            json!({
                "timeout": 2000,
                "one_time_keys": { &hung_user: { "DEV": "signed_curve25519" } },
            }),
        ),
    )
    .await
    .expect("keys/claim answers");
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["failures"][&hang].is_object(), "{body}");
    hole.abort();
    eprintln!("keys/query with a hanging server, timeout 2000 ms: answered in {query_took:?}");
}

/// A user asking about users of many servers that all hang, in two requests at once: at
/// most `PER_REQUESTER` (16) connections are open at any time — one request alone could open
/// 16, two could open 32 without the per-user bound —, servers whose turn comes after the
/// deadline are failures without a connection, and both requests answer.
#[tokio::test]
async fn key_queries_about_many_servers_are_bounded() {
    let fed = start_many(1).await;
    let a = &fed.servers[0];
    let alice = Dev::register(a, "alice").await;
    let connections = Arc::new(Connections::default());
    let mut holes = Vec::new();
    for _ in 0..40 {
        holes.push(black_hole(connections.clone()).await);
    }
    let ask = |holes: &[(String, tokio::task::JoinHandle<()>)]| {
        let users: serde_json::Map<String, Value> = holes
            .iter()
            .map(|(name, _)| (format!("@someone:{name}"), json!([])))
            .collect();
        let token = alice.token.clone();
        async move {
            tokio::time::timeout(
                Duration::from_secs(30),
                a.post(
                    "/_matrix/client/v3/keys/query",
                    Some(&token),
                    json!({ "timeout": 1000, "device_keys": users }),
                ),
            )
            .await
            .expect("keys/query answers")
        }
    };
    let (first, second) = tokio::join!(ask(&holes[..20]), ask(&holes[20..]));
    for ((status, body), holes) in [(first, &holes[..20]), (second, &holes[20..])] {
        assert_eq!(status, StatusCode::OK, "{body}");
        for (name, _) in holes {
            assert!(body["failures"][name].is_object(), "{name}: {body}");
        }
    }
    let most = connections.most.load(Ordering::SeqCst);
    assert!(
        (1..=hearth::service::federation::queries::PER_REQUESTER).contains(&most),
        "{most} connections at once"
    );
    eprintln!("40 hanging servers asked about in two requests: {most} connections at most");
    for (_, task) in holes {
        task.abort();
    }
}

#[tokio::test]
async fn inbound_queries_answer_only_for_this_server() {
    let fed = start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    b.register("bob", "password-b").await;
    let stranger = a.user_id("alice");
    let get = |path: String| async move { a.signed(b, &b.name, Method::GET, &path, None).await };

    let (status, body) = get(format!(
        "/_matrix/federation/v1/query/profile?user_id={}",
        enc(&stranger)
    ))
    .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::NOT_FOUND, "M_NOT_FOUND")
    );
    let (status, body) = get(format!(
        "/_matrix/federation/v1/query/profile?user_id={}",
        enc(&b.user_id("nobody"))
    ))
    .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::NOT_FOUND, "M_NOT_FOUND")
    );
    let (status, body) = get(format!(
        "/_matrix/federation/v1/query/directory?room_alias={}",
        enc(&format!("#room:{}", a.name))
    ))
    .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::NOT_FOUND, "M_NOT_FOUND")
    );
    let (status, body) = get(format!(
        "/_matrix/federation/v1/user/devices/{}",
        enc(&stranger)
    ))
    .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::BAD_REQUEST, "M_INVALID_PARAM")
    );
    let (status, body) = get(format!(
        "/_matrix/federation/v1/user/devices/{}",
        enc(&b.user_id("nobody"))
    ))
    .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::NOT_FOUND, "M_NOT_FOUND")
    );
    for (path, request) in [
        (
            "/_matrix/federation/v1/user/keys/query",
            json!({"device_keys": { &b.user_id("bob"): [], &stranger: [] }}),
        ),
        (
            "/_matrix/federation/v1/user/keys/claim",
            json!({"one_time_keys": { &stranger: { "DEV": "signed_curve25519" } }}),
        ),
    ] {
        let (status, body) = a
            .signed(b, &b.name, Method::POST, path, Some(request.clone()))
            .await;
        assert_eq!(
            (status, errcode(&body)),
            (StatusCode::BAD_REQUEST, "M_INVALID_PARAM"),
            "{path}"
        );
    }

    // Unsigned, and signed for another destination.
    let path = "/_matrix/federation/v1/user/keys/query";
    let request = json!({"device_keys": { &b.user_id("bob"): [] }});
    let (status, body) = b.post(path, None, request.clone()).await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED")
    );
    let (status, body) = a
        .signed(b, &a.name, Method::POST, path, Some(request))
        .await;
    assert_eq!(
        (status, errcode(&body)),
        (StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED")
    );
}

/// Rough latency of remote queries on loopback (figures for the report; no assertion on
/// them): `cargo test --release --test it fed_queries::latency -- --ignored --nocapture`.
#[tokio::test]
#[ignore]
async fn latency() {
    let fed = start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let alice = Dev::register(a, "alice").await;
    let bob = Dev::register(b, "bob").await;
    bob.upload_device_keys(b).await;
    set_displayname(b, &bob.token, &bob.user, "Bob").await;
    const ROUNDS: u32 = 200;
    // Warm-up: B's key in A's keyring, connections open.
    let (status, _) = a.get(&profile(&bob.user), Some(&alice.token)).await;
    assert_eq!(status, StatusCode::OK);
    let local = a.user_id("alice");
    for (what, remote) in [("local", false), ("remote", true)] {
        let user = if remote {
            bob.user.clone()
        } else {
            local.clone()
        };
        let started = Instant::now();
        for _ in 0..ROUNDS {
            let (status, _) = a.get(&profile(&user), Some(&alice.token)).await;
            assert_eq!(status, StatusCode::OK);
        }
        eprintln!(
            "{what} profile: {:?} per lookup",
            started.elapsed() / ROUNDS
        );
        let started = Instant::now();
        for _ in 0..ROUNDS {
            query(a, &alice.token, json!({ &user: [] })).await;
        }
        eprintln!(
            "{what} keys/query: {:?} per query",
            started.elapsed() / ROUNDS
        );
    }
}
