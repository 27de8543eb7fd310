//! Behaviour every endpoint shares: routing errors, CORS, body limits, JSON errors, tokens,
//! rate limiting.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::common::{errcode, TestServer};

#[tokio::test]
async fn unknown_path_is_404_unrecognized_and_wrong_method_405() {
    let srv = TestServer::start().await;
    let (status, body) = srv.get("/_matrix/client/v3/no/such/endpoint", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(errcode(&body), "M_UNRECOGNIZED");

    let (status, body) = srv
        .call(Method::DELETE, "/_matrix/client/versions", None, None)
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(errcode(&body), "M_UNRECOGNIZED");

    // r0 paths route like v3 ones.
    let (status, _) = srv.get("/_matrix/client/r0/login", None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn cors_preflight_on_any_path_and_headers_on_every_response() {
    let srv = TestServer::start().await;
    for path in ["/_matrix/client/v3/login", "/_matrix/client/v3/not/a/thing"] {
        let response = srv.raw(Method::OPTIONS, path, None, None).await;
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        let headers = response.headers();
        assert_eq!(headers["access-control-allow-origin"], "*");
        let methods = headers["access-control-allow-methods"].to_str().unwrap();
        for m in ["GET", "POST", "PUT", "DELETE", "OPTIONS"] {
            assert!(methods.contains(m), "{methods}");
        }
        let allowed = headers["access-control-allow-headers"].to_str().unwrap();
        for h in ["X-Requested-With", "Content-Type", "Authorization"] {
            assert!(allowed.contains(h), "{allowed}");
        }
    }
    // Errors carry CORS headers too, so a browser can read them.
    let response = srv
        .raw(Method::GET, "/_matrix/client/v3/nope", None, None)
        .await;
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
    assert_eq!(response.headers()["content-type"], "application/json");
}

#[tokio::test]
async fn preflight_runs_no_endpoint_logic() {
    let srv = TestServer::start().await;
    // An OPTIONS on logout with a real token must not log the device out.
    let (_, token, _) = srv.register("olive", "pw-olive").await;
    let response = srv
        .raw(
            Method::OPTIONS,
            "/_matrix/client/v3/logout",
            Some(&token),
            None,
        )
        .await;
    assert!(response.status().is_success());
    let (status, _) = srv
        .get("/_matrix/client/v3/account/whoami", Some(&token))
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn bad_json_and_wrong_shape() {
    let srv = TestServer::start().await;
    let response = srv
        .raw(
            Method::POST,
            "/_matrix/client/v3/login",
            None,
            Some("{not json"),
        )
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(errcode(&body), "M_NOT_JSON");

    let (status, body) = srv
        .post("/_matrix/client/v3/login", None, json!({"type": 42}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(errcode(&body), "M_BAD_JSON");
}

#[tokio::test]
async fn too_large_body_is_413() {
    let srv = TestServer::start_with(|c| c.limits.max_request_bytes = 1024).await;
    let big = format!(
        "{{\"type\":\"m.login.password\",\"password\":\"{}\"}}",
        "x".repeat(4096)
    );
    let response = srv
        .raw(Method::POST, "/_matrix/client/v3/login", None, Some(&big))
        .await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(errcode(&body), "M_TOO_LARGE");
}

#[tokio::test]
async fn missing_and_unknown_tokens() {
    let srv = TestServer::start().await;
    let (status, body) = srv.get("/_matrix/client/v3/account/whoami", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(errcode(&body), "M_MISSING_TOKEN");

    let (status, body) = srv
        .get("/_matrix/client/v3/account/whoami", Some("hat_bogus"))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(errcode(&body), "M_UNKNOWN_TOKEN");
    assert_eq!(body["soft_logout"], false);

    let response = srv
        .http
        .get(format!("{}/_matrix/client/v3/account/whoami", srv.base))
        .header("authorization", "Basic abc")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn access_token_in_query_parameter_is_accepted() {
    let srv = TestServer::start().await;
    let (user_id, token, _) = srv.register("quinn", "pw-quinn").await;
    let (status, body) = srv
        .get(
            &format!("/_matrix/client/v3/account/whoami?access_token={token}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], user_id);
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    let srv = TestServer::start_with(|c| {
        c.rate_limit.enabled = true;
        c.rate_limit.per_ip_burst = 3;
        c.rate_limit.per_ip_per_second = 0.5;
    })
    .await;
    let mut limited = None;
    for _ in 0..10 {
        let response = srv
            .raw(Method::GET, "/_matrix/client/versions", None, None)
            .await;
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(response);
            break;
        }
    }
    let response = limited.expect("rate limited within 10 requests");
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(errcode(&body), "M_LIMIT_EXCEEDED");
    assert!(body["retry_after_ms"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn versions_capabilities_and_well_known() {
    let srv = TestServer::start_with(|c| {
        c.well_known.server = Some("matrix.example.org:443".into());
        c.well_known.client_base_url = Some("https://matrix.example.org".into());
    })
    .await;
    let (status, body) = srv.get("/_matrix/client/versions", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body["versions"]
        .as_array()
        .unwrap()
        .contains(&json!("v1.19")));

    let (status, body) = srv.get("/.well-known/matrix/client", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["m.homeserver"]["base_url"],
        "https://matrix.example.org"
    );
    let (status, body) = srv.get("/.well-known/matrix/server", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["m.server"], "matrix.example.org:443");

    let (_, token, _) = srv.register("cap", "pw-cap").await;
    let (status, body) = srv
        .get("/_matrix/client/v3/capabilities", Some(&token))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // m.change_password defaults to enabled when omitted; m.3pid_changes is off (no [email]).
    assert_ne!(
        body["capabilities"]["m.change_password"]["enabled"], false,
        "{body}"
    );
    assert_eq!(
        body["capabilities"]["m.3pid_changes"]["enabled"], false,
        "{body}"
    );
    assert_eq!(body["capabilities"]["m.room_versions"]["default"], "12");
    assert_eq!(
        body["capabilities"]["m.room_versions"]["available"]["1"],
        "stable"
    );

    // Without delegation configured, /.well-known/matrix/server is an honest 404.
    let plain = TestServer::start().await;
    let (status, _) = plain.get("/.well-known/matrix/server", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bad_tokens_are_rate_limited_too() {
    let srv = TestServer::start_with(|c| {
        c.rate_limit.enabled = true;
        c.rate_limit.per_ip_burst = 3;
        c.rate_limit.per_ip_per_second = 0.5;
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(
            srv.get("/_matrix/client/v3/account/whoami", Some("hat_guess"))
                .await
                .0,
        );
    }
    assert!(statuses.contains(&StatusCode::UNAUTHORIZED));
    assert!(
        statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
}

/// Layers point one way (`http → api → service → store`): no lower layer names a higher one,
/// and the server takes nothing from the command line tools.
#[test]
fn layers_point_one_way() {
    fn sources(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let rules: [(&str, &[&str]); 5] = [
        (
            "outbound",
            &[
                "crate::http",
                "crate::api",
                "crate::service",
                "crate::store",
                "crate::cli",
                "crate::server",
            ],
        ),
        (
            "service",
            &["crate::http", "crate::api", "crate::cli", "crate::server"],
        ),
        (
            "store",
            &["crate::http", "crate::api", "crate::service", "crate::cli"],
        ),
        ("api", &["crate::cli", "crate::server"]),
        ("server.rs", &["crate::cli"]),
    ];
    let mut wrong = Vec::new();
    for (layer, forbidden) in rules {
        let mut files = Vec::new();
        let root = src.join(layer);
        if root.is_dir() {
            sources(&root, &mut files);
        } else {
            files.push(root);
        }
        assert!(!files.is_empty(), "{layer}");
        for file in files {
            let text: String = std::fs::read_to_string(&file)
                .unwrap()
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect();
            // The modules named inside `use crate::{a::.., b::{..}}` groups, as well as full
            // paths.
            let grouped: Vec<&str> = text
                .match_indices("crate::{")
                .map(|(at, _)| &text[at..at + text[at..].find(';').unwrap_or(0)])
                .collect();
            for name in forbidden {
                let short = name.trim_start_matches("crate::");
                let in_group = grouped.iter().any(|g| {
                    g.contains(&format!("{{{short}::")) || g.contains(&format!(",{short}::"))
                });
                if text.contains(&format!("{name}::")) || in_group {
                    wrong.push(format!("{} uses {name}", file.display()));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
