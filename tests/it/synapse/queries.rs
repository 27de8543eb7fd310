//! What Hearth and Synapse do for each other outside rooms: server keys (each fetched by the
//! other, as a notary shows), profiles, device and one-time keys, to-device messages, remote
//! media, alias resolution and the public room directory — each asked by a client of one
//! server about the other.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use super::Pair;
use crate::common::{create_room, enc};
use crate::e2ee::Dev;

/// The notary answer `answer` (of `/_matrix/key/v2/query/{server}`) holds `server`'s own key
/// response `own`, signed by `server` and countersigned by `notary`.
fn check_notary_answer(p: &Pair, answer: &Value, own: &Value, server: &str, notary: &str) {
    let keys = answer["server_keys"].as_array();
    p.ensure(keys.is_some(), format!("{notary} about {server}: {answer}"));
    let found: Vec<&Value> = keys
        .unwrap()
        .iter()
        .filter(|k| k["server_name"] == server)
        .collect();
    p.ensure_eq(found.len(), 1, format!("{notary} about {server}: {answer}"));
    let found = found[0];
    p.ensure_eq(
        &found["verify_keys"],
        &own["verify_keys"],
        format!("{server}'s keys as {notary} fetched them"),
    );
    // Signed by the same key ids (the signatures differ when `valid_until_ts` does: each
    // fetch gets a fresh response).
    let key_ids = |v: &Value| {
        v["signatures"][server]
            .as_object()
            .map(|s| s.keys().cloned().collect::<Vec<_>>())
    };
    p.ensure_eq(
        key_ids(found),
        key_ids(own),
        format!("{server}'s own signature, kept by {notary}: {found}"),
    );
    p.ensure(
        found["signatures"][notary].is_object(),
        format!("{notary} countersigns what it serves: {found}"),
    );
}

/// A `POST /_matrix/key/v2/query` body asking for `server`'s current key (from `own`, its
/// own key response). Synapse's notary fetches a key it lacks only when the key id is named,
/// and it requires `minimum_valid_until_ts`, which the spec makes optional.
fn notary_query(server: &str, own: &Value) -> Value {
    let key_id = own["verify_keys"]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    json!({"server_keys": {server: {key_id: {"minimum_valid_until_ts": now}}}})
}

#[tokio::test]
#[ignore = "needs Synapse: a Python in SYNAPSE_PYTHON; .ci/run runs it"]
async fn server_keys_are_fetched_both_ways() {
    let p = Pair::start().await;
    let (hearth, syn) = (&p.hearth, &p.syn);

    // Synapse fetches Hearth's keys over TLS federation and serves them as a notary.
    let (status, hearth_own) = hearth.get("/_matrix/key/v2/server", None).await;
    assert_eq!(status, StatusCode::OK, "{hearth_own}");
    let (status, answer) = syn
        .post(
            "/_matrix/key/v2/query",
            None,
            notary_query(&hearth.name, &hearth_own),
        )
        .await;
    p.ensure_eq(
        status,
        StatusCode::OK,
        format!("Synapse's notary: {answer}"),
    );
    check_notary_answer(&p, &answer, &hearth_own, &hearth.name, &syn.name);

    // And Hearth fetches Synapse's.
    let (status, syn_own) = syn.get("/_matrix/key/v2/server", None).await;
    assert_eq!(status, StatusCode::OK, "{syn_own}");
    let (status, answer) = hearth
        .post(
            "/_matrix/key/v2/query",
            None,
            notary_query(&syn.name, &syn_own),
        )
        .await;
    p.ensure_eq(status, StatusCode::OK, format!("Hearth's notary: {answer}"));
    check_notary_answer(&p, &answer, &syn_own, &syn.name, &hearth.name);
}

fn profile(user: &str) -> String {
    format!("/_matrix/client/v3/profile/{}", enc(user))
}

#[tokio::test]
#[ignore = "needs Synapse: a Python in SYNAPSE_PYTHON; .ci/run runs it"]
async fn profiles_are_queried_both_ways() {
    let p = Pair::start().await;
    let (hearth, syn) = (&p.hearth, &p.syn);
    let alice = p.hearth_user("alice").await;
    let bob = syn.register("bob").await;
    let alice_profile = json!({
        "displayname": "Alice on Hearth",
        "avatar_url": format!("mxc://{}/alicepicture", hearth.name),
    });
    let bob_profile = json!({
        "displayname": "Bob on Synapse",
        "avatar_url": format!("mxc://{}/bobpicture", syn.name),
    });
    for field in ["displayname", "avatar_url"] {
        let path = format!("{}/{field}", profile(&alice.user));
        let (status, body) = hearth
            .put(
                &path,
                Some(&alice.token),
                json!({field: alice_profile[field]}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let path = format!("{}/{field}", profile(&bob.user));
        let (status, body) = syn
            .put(&path, Some(&bob.token), json!({field: bob_profile[field]}))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    // Hearth asks Synapse (query/profile over federation).
    let (status, body) = hearth.get(&profile(&bob.user), Some(&alice.token)).await;
    p.ensure_eq(status, StatusCode::OK, format!("Hearth about Bob: {body}"));
    p.ensure_eq(&body, &bob_profile, "Bob's profile as Hearth tells it");
    let (status, body) = hearth
        .get(
            &format!("{}/displayname", profile(&bob.user)),
            Some(&alice.token),
        )
        .await;
    p.ensure_eq(status, StatusCode::OK, format!("{body}"));
    p.ensure_eq(
        &body,
        &json!({"displayname": "Bob on Synapse"}),
        "one field",
    );

    // Synapse asks Hearth.
    let (status, body) = syn.get(&profile(&alice.user), Some(&bob.token)).await;
    p.ensure_eq(
        status,
        StatusCode::OK,
        format!("Synapse about Alice: {body}"),
    );
    p.ensure_eq(&body, &alice_profile, "Alice's profile as Synapse tells it");
    let (status, body) = syn
        .get(
            &format!("{}/avatar_url", profile(&alice.user)),
            Some(&bob.token),
        )
        .await;
    p.ensure_eq(status, StatusCode::OK, format!("{body}"));
    p.ensure_eq(
        &body,
        &json!({"avatar_url": alice_profile["avatar_url"]}),
        "one field",
    );

    // Unknown users are 404 M_NOT_FOUND through either server.
    let (status, body) = hearth
        .get(
            &profile(&format!("@nobody-here:{}", syn.name)),
            Some(&alice.token),
        )
        .await;
    p.ensure_eq(status, StatusCode::NOT_FOUND, format!("{body}"));
    p.ensure_eq(&body["errcode"], &json!("M_NOT_FOUND"), "errcode");
    let (status, body) = syn
        .get(
            &profile(&format!("@nobody-here:{}", hearth.name)),
            Some(&bob.token),
        )
        .await;
    p.ensure_eq(status, StatusCode::NOT_FOUND, format!("{body}"));
    p.ensure_eq(&body["errcode"], &json!("M_NOT_FOUND"), "errcode");
}

/// The `keys/upload` body with `dev`'s device keys and its one-time keys 1 and 2.
fn keys_body(dev: &Dev) -> Value {
    json!({
        "device_keys": dev.device_keys(),
        "one_time_keys": {
            "signed_curve25519:AAAAAQ": dev.otk(1),
            "signed_curve25519:AAAAAg": dev.otk(2),
        },
    })
}

/// Checks a `keys/query` answer about `dev`, and two `keys/claim` answers that hand out its
/// two one-time keys, each once.
fn check_keys(p: &Pair, asker: &str, query: &Value, claims: [&Value; 3], dev: &Dev) {
    let what = format!("{asker} about {}", dev.user);
    p.ensure(
        query.get("failures").is_none_or(|f| f == &json!({})),
        format!("{what}: {query}"),
    );
    let devices = &query["device_keys"][&dev.user];
    p.ensure_eq(
        devices
            .as_object()
            .map(|d| d.keys().cloned().collect::<Vec<_>>()),
        Some(vec![dev.device.clone()]),
        format!("{what}: devices in {query}"),
    );
    let uploaded = dev.device_keys();
    for field in ["user_id", "device_id", "algorithms", "keys", "signatures"] {
        p.ensure_eq(
            &devices[&dev.device][field],
            &uploaded[field],
            format!("{what}: {field} in {query}"),
        );
    }
    let mut handed_out = Vec::new();
    for claim in &claims[..2] {
        p.ensure(
            claim.get("failures").is_none_or(|f| f == &json!({})),
            format!("{what}: {claim}"),
        );
        let keys = claim["one_time_keys"][&dev.user][&dev.device].as_object();
        p.ensure_eq(keys.map(|k| k.len()), Some(1), format!("{what}: {claim}"));
        handed_out.push(keys.unwrap().iter().next().unwrap());
    }
    handed_out.sort_by(|a, b| a.0.cmp(b.0));
    p.ensure_eq(
        handed_out,
        vec![
            (&"signed_curve25519:AAAAAQ".to_owned(), &dev.otk(1)),
            (&"signed_curve25519:AAAAAg".to_owned(), &dev.otk(2)),
        ],
        format!("{what}: the two claimed keys"),
    );
    // The third claim finds none left (no fallback key was uploaded).
    let third = &claims[2]["one_time_keys"];
    p.ensure(
        third == &json!({})
            || third[&dev.user] == json!({})
            || third[&dev.user][&dev.device] == json!({}),
        format!("{what}: third claim {}", claims[2]),
    );
}

#[tokio::test]
#[ignore = "needs Synapse: a Python in SYNAPSE_PYTHON; .ci/run runs it"]
async fn device_and_one_time_keys_are_queried_and_claimed_both_ways() {
    let p = Pair::start().await;
    let (hearth, syn) = (&p.hearth, &p.syn);
    let alice = p.hearth_user("alice").await;
    let bob = syn.register("bob").await;
    let (status, body) = alice.upload(hearth, keys_body(&alice)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = syn
        .post(
            "/_matrix/client/v3/keys/upload",
            Some(&bob.token),
            keys_body(&bob),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let query = |user: &str| json!({"device_keys": {user: []}, "timeout": 10000});
    let claim = |dev: &Dev| json!({"one_time_keys": {&dev.user: {&dev.device: "signed_curve25519"}}, "timeout": 10000});

    let (status, asked) = hearth
        .post(
            "/_matrix/client/v3/keys/query",
            Some(&alice.token),
            query(&bob.user),
        )
        .await;
    p.ensure_eq(status, StatusCode::OK, format!("{asked}"));
    let mut claims = Vec::new();
    for _ in 0..3 {
        let (status, body) = hearth
            .post(
                "/_matrix/client/v3/keys/claim",
                Some(&alice.token),
                claim(&bob),
            )
            .await;
        p.ensure_eq(status, StatusCode::OK, format!("{body}"));
        claims.push(body);
    }
    check_keys(
        &p,
        "Hearth",
        &asked,
        [&claims[0], &claims[1], &claims[2]],
        &bob,
    );

    let (status, asked) = syn
        .post(
            "/_matrix/client/v3/keys/query",
            Some(&bob.token),
            query(&alice.user),
        )
        .await;
    p.ensure_eq(status, StatusCode::OK, format!("{asked}"));
    let mut claims = Vec::new();
    for _ in 0..3 {
        let (status, body) = syn
            .post(
                "/_matrix/client/v3/keys/claim",
                Some(&bob.token),
                claim(&alice),
            )
            .await;
        p.ensure_eq(status, StatusCode::OK, format!("{body}"));
        claims.push(body);
    }
    check_keys(
        &p,
        "Synapse",
        &asked,
        [&claims[0], &claims[1], &claims[2]],
        &alice,
    );
}

/// The to-device events `sync` returned.
fn to_device_events(sync: &Value) -> Vec<Value> {
    sync["to_device"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
#[ignore = "needs Synapse: a Python in SYNAPSE_PYTHON; .ci/run runs it"]
async fn to_device_messages_travel_both_ways() {
    let p = Pair::start().await;
    let (hearth, syn) = (&p.hearth, &p.syn);
    let alice = p.hearth_user("alice").await;
    let bob = syn.register("bob").await;
    // Initial syncs: what arrives afterwards is the message.
    let (_, first) = hearth
        .get("/_matrix/client/v3/sync?timeout=0", Some(&alice.token))
        .await;
    let alice_since = first["next_batch"].as_str().unwrap().to_owned();
    let (_, first) = syn
        .get("/_matrix/client/v3/sync?timeout=0", Some(&bob.token))
        .await;
    let bob_since = first["next_batch"].as_str().unwrap().to_owned();

    let (status, body) = hearth
        .put(
            "/_matrix/client/v3/sendToDevice/m.hearth.test/h1",
            Some(&alice.token),
            json!({"messages": {&bob.user: {&bob.device: {"text": "to Synapse"}}}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = syn
        .put(
            "/_matrix/client/v3/sendToDevice/m.hearth.test/s1",
            Some(&bob.token),
            json!({"messages": {&alice.user: {"*": {"text": "to Hearth"}}}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let got = p
        .eventually("Bob's to-device message on Synapse", || async {
            let (_, sync) = syn
                .get(
                    &format!(
                        "/_matrix/client/v3/sync?timeout=500&since={}",
                        enc(&bob_since)
                    ),
                    Some(&bob.token),
                )
                .await;
            let events = to_device_events(&sync);
            (!events.is_empty()).then_some(events)
        })
        .await;
    p.ensure_eq(
        got,
        vec![json!({"sender": alice.user, "type": "m.hearth.test", "content": {"text": "to Synapse"}})],
        "what Synapse delivered",
    );
    let got = p
        .eventually("Alice's to-device message on Hearth", || async {
            let (_, sync) = hearth
                .get(
                    &format!(
                        "/_matrix/client/v3/sync?timeout=500&since={}",
                        enc(&alice_since)
                    ),
                    Some(&alice.token),
                )
                .await;
            let events = to_device_events(&sync);
            (!events.is_empty()).then_some(events)
        })
        .await;
    p.ensure_eq(
        got,
        vec![
            json!({"sender": bob.user, "type": "m.hearth.test", "content": {"text": "to Hearth"}}),
        ],
        "what Hearth delivered",
    );
}

/// Uploads `data` with the legacy endpoint (both servers have it); returns the media id.
async fn upload(request: reqwest::RequestBuilder, data: &[u8]) -> String {
    let response = request
        .header("content-type", "text/plain")
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    let mxc = body["content_uri"].as_str().unwrap();
    mxc.rsplit_once('/').unwrap().1.to_owned()
}

#[tokio::test]
#[ignore = "needs Synapse: a Python in SYNAPSE_PYTHON; .ci/run runs it"]
async fn remote_media_loads_both_ways() {
    let p = Pair::start().await;
    let (hearth, syn) = (&p.hearth, &p.syn);
    let alice = p.hearth_user("alice").await;
    let bob = syn.register("bob").await;
    let upload_path = "/_matrix/media/v3/upload?filename=note.txt";
    let from_hearth = b"a file uploaded to Hearth".repeat(100);
    let hearth_id = upload(
        hearth
            .http
            .post(format!("{}{upload_path}", hearth.base))
            .bearer_auth(&alice.token),
        &from_hearth,
    )
    .await;
    let from_synapse = b"a file uploaded to Synapse".repeat(100);
    let syn_id = upload(
        syn.request(Method::POST, upload_path, &bob.token),
        &from_synapse,
    )
    .await;

    // Hearth's client fetches Synapse's media (authenticated federation media).
    let response = hearth
        .http
        .get(format!(
            "{}/_matrix/client/v1/media/download/{}/{syn_id}",
            hearth.base, syn.name
        ))
        .bearer_auth(&alice.token)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let kind = response.headers().get("content-type").cloned();
    let bytes = response.bytes().await.unwrap();
    p.ensure_eq(
        status,
        StatusCode::OK,
        format!(
            "Hearth fetching Synapse's media: {}",
            String::from_utf8_lossy(&bytes)
        ),
    );
    p.ensure_eq(&bytes[..], &from_synapse[..], "the bytes via Hearth");
    p.ensure_eq(
        kind.as_ref().and_then(|k| k.to_str().ok()),
        Some("text/plain"),
        "content type via Hearth",
    );

    // Synapse's client fetches Hearth's.
    let response = syn
        .request(
            Method::GET,
            &format!(
                "/_matrix/client/v1/media/download/{}/{hearth_id}",
                hearth.name
            ),
            &bob.token,
        )
        .send()
        .await
        .unwrap();
    let status = response.status();
    let kind = response.headers().get("content-type").cloned();
    let bytes = response.bytes().await.unwrap();
    p.ensure_eq(
        status,
        StatusCode::OK,
        format!(
            "Synapse fetching Hearth's media: {}",
            String::from_utf8_lossy(&bytes)
        ),
    );
    p.ensure_eq(&bytes[..], &from_hearth[..], "the bytes via Synapse");
    // Synapse names the charset of the text types it serves.
    p.ensure_eq(
        kind.as_ref().and_then(|k| k.to_str().ok()),
        Some("text/plain; charset=UTF-8"),
        "content type via Synapse",
    );

    // Media neither has: 404 M_NOT_FOUND through either.
    let (status, body) = hearth
        .get(
            &format!("/_matrix/client/v1/media/download/{}/nosuchmedia", syn.name),
            Some(&alice.token),
        )
        .await;
    p.ensure_eq(status, StatusCode::NOT_FOUND, format!("{body}"));
    p.ensure_eq(&body["errcode"], &json!("M_NOT_FOUND"), "errcode");
    let (status, body) = syn
        .get(
            &format!(
                "/_matrix/client/v1/media/download/{}/nosuchmedia",
                hearth.name
            ),
            Some(&bob.token),
        )
        .await;
    p.ensure_eq(status, StatusCode::NOT_FOUND, format!("{body}"));
    p.ensure_eq(&body["errcode"], &json!("M_NOT_FOUND"), "errcode");
}

#[tokio::test]
#[ignore = "needs Synapse: a Python in SYNAPSE_PYTHON; .ci/run runs it"]
async fn aliases_and_public_rooms_resolve_both_ways() {
    let p = Pair::start().await;
    let (hearth, syn) = (&p.hearth, &p.syn);
    let alice = p.hearth_user("alice").await;
    let bob = syn.register("bob").await;
    let hearth_local = super::unique("hearth-room-");
    let syn_local = super::unique("synapse-room-");
    let hearth_room = create_room(
        hearth,
        &alice.token,
        json!({"room_alias_name": hearth_local, "visibility": "public", "name": hearth_local}),
    )
    .await;
    let (status, body) = syn
        .post(
            "/_matrix/client/v3/createRoom",
            Some(&bob.token),
            json!({"room_alias_name": syn_local, "visibility": "public", "name": syn_local}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let syn_room = body["room_id"].as_str().unwrap().to_owned();

    // Hearth resolves Synapse's alias (query/directory).
    let alias = format!("#{syn_local}:{}", syn.name);
    let (status, body) = hearth
        .get(
            &format!("/_matrix/client/v3/directory/room/{}", enc(&alias)),
            Some(&alice.token),
        )
        .await;
    p.ensure_eq(
        status,
        StatusCode::OK,
        format!("Hearth resolving {alias}: {body}"),
    );
    p.ensure_eq(
        &body,
        &json!({"room_id": syn_room, "servers": [syn.name]}),
        "Synapse's alias via Hearth",
    );
    // Synapse resolves Hearth's.
    let alias = format!("#{hearth_local}:{}", hearth.name);
    let (status, body) = syn
        .get(
            &format!("/_matrix/client/v3/directory/room/{}", enc(&alias)),
            Some(&bob.token),
        )
        .await;
    p.ensure_eq(
        status,
        StatusCode::OK,
        format!("Synapse resolving {alias}: {body}"),
    );
    p.ensure_eq(
        &body,
        &json!({"room_id": hearth_room, "servers": [hearth.name]}),
        "Hearth's alias via Synapse",
    );
    // Unknown aliases: 404 M_NOT_FOUND both ways.
    let (status, body) = hearth
        .get(
            &format!(
                "/_matrix/client/v3/directory/room/{}",
                enc(&format!("#no-such-room:{}", syn.name))
            ),
            Some(&alice.token),
        )
        .await;
    p.ensure_eq(status, StatusCode::NOT_FOUND, format!("{body}"));
    p.ensure_eq(&body["errcode"], &json!("M_NOT_FOUND"), "errcode");
    let (status, body) = syn
        .get(
            &format!(
                "/_matrix/client/v3/directory/room/{}",
                enc(&format!("#no-such-room:{}", hearth.name))
            ),
            Some(&bob.token),
        )
        .await;
    p.ensure_eq(status, StatusCode::NOT_FOUND, format!("{body}"));
    p.ensure_eq(&body["errcode"], &json!("M_NOT_FOUND"), "errcode");

    // The public room directories, asked through the other server. Synapse's lists rooms of
    // other tests too: look for this test's room.
    // Synapse adds a room to its directory in the background (its room statistics).
    let path = format!(
        "/_matrix/client/v3/publicRooms?server={}&limit=1000",
        enc(&syn.name)
    );
    let listed = p
        .eventually("Synapse's room listed via Hearth", || async {
            let (status, body) = hearth.get(&path, Some(&alice.token)).await;
            p.ensure_eq(
                status,
                StatusCode::OK,
                format!("Hearth listing Synapse's rooms: {body}"),
            );
            let chunk = body["chunk"].as_array().cloned().unwrap_or_default();
            chunk.into_iter().find(|r| r["room_id"] == syn_room)
        })
        .await;
    p.ensure_eq(&listed["name"], &json!(syn_local), "its name");
    p.ensure_eq(
        &listed["canonical_alias"],
        &json!(format!("#{syn_local}:{}", syn.name)),
        "its alias",
    );
    p.ensure_eq(&listed["num_joined_members"], &json!(1), "its members");
    let (status, body) = syn
        .get(
            &format!(
                "/_matrix/client/v3/publicRooms?server={}",
                enc(&hearth.name)
            ),
            Some(&bob.token),
        )
        .await;
    p.ensure_eq(
        status,
        StatusCode::OK,
        format!("Synapse listing Hearth's rooms: {body}"),
    );
    let chunk = body["chunk"].as_array().cloned().unwrap_or_default();
    p.ensure_eq(
        chunk.len(),
        1,
        format!("Hearth's rooms via Synapse: {body}"),
    );
    p.ensure_eq(&chunk[0]["room_id"], &json!(hearth_room), "the room");
    p.ensure_eq(&chunk[0]["name"], &json!(hearth_local), "its name");
    p.ensure_eq(
        &chunk[0]["canonical_alias"],
        &json!(format!("#{hearth_local}:{}", hearth.name)),
        "its alias",
    );
    p.ensure_eq(&chunk[0]["num_joined_members"], &json!(1), "its members");
}
