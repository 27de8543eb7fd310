//! The federation transport and request authentication between real Hearth servers on
//! loopback: TLS against the test CA, X-Matrix signatures checked on arrival.

use reqwest::{Method, StatusCode};
use ruma::api::federation::discovery::get_server_version::v1 as version;
use ruma::ServerName;
use serde_json::json;

use crate::common::errcode;
use crate::fed_common::{start_many, start_many_with, FedServer};

fn services(s: &FedServer) -> &hearth::service::Services {
    &s.server.as_ref().expect("running").services
}

#[tokio::test]
async fn requests_travel_over_tls_to_the_named_server() {
    let mut fed = start_many_with(3, |i, config| {
        // The third server does not trust the test CA: every TLS handshake it makes fails.
        if i == 2 {
            config.outbound.extra_ca_file = None;
        }
    })
    .await;
    let (a, b, c) = (&fed.servers[0], &fed.servers[1], &fed.servers[2]);
    let b_name = ServerName::parse(&b.name).unwrap();
    let answer = services(a)
        .federation
        .send_unauthenticated(&b_name, version::Request::new())
        .await
        .expect("A reaches B");
    assert_eq!(answer.server.unwrap().name.as_deref(), Some("Hearth"));

    let a_name = ServerName::parse(&a.name).unwrap();
    let to_self = services(a)
        .federation
        .send_unauthenticated(&a_name, version::Request::new())
        .await;
    assert!(matches!(
        to_self,
        Err(hearth::service::federation::client::FedError::ToSelf)
    ));

    let untrusted = services(c)
        .federation
        .send_unauthenticated(&a_name, version::Request::new())
        .await;
    assert!(
        matches!(
            untrusted,
            Err(hearth::service::federation::client::FedError::Outbound(
                hearth::outbound::OutboundError::Tls
            ))
        ),
        "{untrusted:?}"
    );

    // A server that is down: a transport error, promptly.
    fed.servers[1].stop().await;
    let down = services(&fed.servers[0])
        .federation
        .send_unauthenticated(&b_name, version::Request::new())
        .await;
    assert!(
        matches!(
            down,
            Err(hearth::service::federation::client::FedError::Outbound(_))
        ),
        "{down:?}"
    );
    // Back on the same name and port: reachable again.
    fed.servers[1].start_again().await;
    services(&fed.servers[0])
        .federation
        .send_unauthenticated(&b_name, version::Request::new())
        .await
        .expect("B is back");
}

/// An authenticated endpoint to probe the router's X-Matrix check with.
fn profile_path(user: &str) -> String {
    format!(
        "/_matrix/federation/v1/query/profile?user_id={}",
        crate::common::enc(user)
    )
}

#[tokio::test]
async fn inbound_requests_need_a_valid_x_matrix_signature() {
    let fed = start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    b.register("bob", "password-bob").await;
    let path = profile_path(&b.user_id("bob"));

    // Signed by A's real key for B: answered.
    let (status, body) = a.signed(b, &b.name, Method::GET, &path, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // No Authorization header at all.
    let (status, body) = b.get(&path, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(errcode(&body), "M_UNAUTHORIZED");

    // Addressed to another server.
    let (status, body) = a.signed(b, &a.name, Method::GET, &path, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(errcode(&body), "M_UNAUTHORIZED");

    // A signature over another request (the path differs from the one signed).
    let keys = a.signing_key();
    let signed_for = http::Request::builder()
        .method("GET")
        .uri(profile_path("@someone:else.example"))
        .body(Vec::<u8>::new())
        .unwrap();
    let header = ruma::api::federation::authentication::XMatrix::sign_http_request(
        &signed_for,
        ruma::api::federation::authentication::XMatrixSigningInput::new(
            a.name.as_str().try_into().unwrap(),
            b.name.as_str().try_into().unwrap(),
            &keys.keypair,
        ),
    )
    .unwrap();
    let response = b
        .http
        .get(format!("{}{path}", b.base))
        .header("authorization", header.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    // A body that differs from the signed one (a PUT with JSON).
    let send = "/_matrix/federation/v1/send/t1";
    let (status, _) = a
        .signed(
            b,
            &b.name,
            Method::PUT,
            send,
            Some(json!({"origin": a.name, "origin_server_ts": 1, "pdus": []})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let header_for_other_body = {
        let request = http::Request::builder()
            .method("PUT")
            .uri(send)
            .body(
                json!({"origin": a.name, "origin_server_ts": 2, "pdus": []})
                    .to_string()
                    .into_bytes(),
            )
            .unwrap();
        ruma::api::federation::authentication::XMatrix::sign_http_request(
            &request,
            ruma::api::federation::authentication::XMatrixSigningInput::new(
                a.name.as_str().try_into().unwrap(),
                b.name.as_str().try_into().unwrap(),
                &keys.keypair,
            ),
        )
        .unwrap()
    };
    let response = b
        .http
        .put(format!("{}{send}", b.base))
        .header("authorization", header_for_other_body.to_string())
        .header("content-type", "application/json")
        .body(json!({"origin": a.name, "origin_server_ts": 3, "pdus": []}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    // An origin whose keys cannot be fetched (nothing listens there).
    let response = b
        .http
        .get(format!("{}{path}", b.base))
        .header(
            "authorization",
            format!(
                "X-Matrix origin=\"127.0.0.1:9\",destination=\"{}\",key=\"ed25519:x\",sig=\"{}\"",
                b.name,
                "A".repeat(86)
            ),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}
