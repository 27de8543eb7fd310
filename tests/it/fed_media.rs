//! Media over federation between two Hearth servers on loopback (TLS, test CA): remote media
//! through B's client API (bytes, types, dispositions, thumbnails, size cap, cache while the
//! origin is down, the deprecated endpoints), and A's federation media endpoints answering
//! signed requests with `multipart/mixed`.

use std::io::Cursor;

use bytes::Bytes;
use hearth::service::media::multipart::{self, Payload};
use image::{DynamicImage, ImageFormat, Rgba, RgbaImage};
use reqwest::StatusCode;
use ruma::api::federation::authentication::{XMatrix, XMatrixSigningInput};
use serde_json::Value;

use crate::common::{errcode, TestServer};
use crate::fed_common::{self, FedServer};

const V1: &str = "/_matrix/client/v1/media";
const LEGACY: &str = "/_matrix/media/v3";
const FED: &str = "/_matrix/federation/v1/media";
const CSP: &str = "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; style-src 'unsafe-inline'; object-src 'self';";
/// B's size cap for remote media in these tests.
const B_MAX: u64 = 200_000;

async fn get(
    srv: &TestServer,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut req = srv.http.get(format!("{}{path}", srv.base));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.expect("request sent")
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap())
        .unwrap_or("")
}

async fn error_of(response: reqwest::Response) -> (StatusCode, String, String) {
    let status = response.status();
    let body: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    (
        status,
        errcode(&body).to_owned(),
        body["error"].as_str().unwrap_or_default().to_owned(),
    )
}

/// Uploads `data` to `srv`; returns the media id.
async fn upload(
    srv: &TestServer,
    token: &str,
    data: &[u8],
    content_type: &str,
    name: &str,
) -> String {
    let response = srv
        .http
        .post(format!("{}{LEGACY}/upload?filename={name}", srv.base))
        .bearer_auth(token)
        .header("content-type", content_type)
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    let mxc = body["content_uri"].as_str().unwrap();
    mxc.rsplit_once('/').unwrap().1.to_owned()
}

/// An id from `/create` on `srv`, not uploaded to.
async fn pending(srv: &TestServer, token: &str) -> String {
    let (status, body) = srv
        .post(
            "/_matrix/media/v1/create",
            Some(token),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mxc = body["content_uri"].as_str().unwrap();
    mxc.rsplit_once('/').unwrap().1.to_owned()
}

/// A `w`×`h` PNG.
fn picture(w: u32, h: u32) -> Vec<u8> {
    let image = DynamicImage::ImageRgba8(RgbaImage::from_fn(w, h, |x, y| {
        Rgba([if x < w / 2 { 255 } else { 0 }, (y % 256) as u8, 80, 255])
    }));
    let mut out = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
        .unwrap();
    out
}

/// A GET of `to`'s federation API (over its plain listener), X-Matrix signed by `from` when
/// `sign`.
async fn federation_get(
    from: &FedServer,
    to: &FedServer,
    path: &str,
    sign: bool,
) -> reqwest::Response {
    let mut req = to.http.get(format!("{}{path}", to.base));
    if sign {
        let keys = from.signing_key();
        let request = http::Request::get(path).body(Vec::<u8>::new()).unwrap();
        let input = XMatrixSigningInput::new(
            from.name.as_str().try_into().unwrap(),
            to.name.as_str().try_into().unwrap(),
            &keys.keypair,
        );
        let header = XMatrix::sign_http_request(&request, input).unwrap();
        req = req.header("authorization", header.to_string());
    }
    req.send().await.expect("request sent")
}

/// The payload of a federation media answer.
async fn multipart_of(response: reqwest::Response) -> Payload {
    if response.status() != StatusCode::OK {
        panic!("{:?}", error_of(response).await);
    }
    let content_type = header(&response, "content-type").to_owned();
    assert!(
        content_type.starts_with("multipart/mixed; boundary="),
        "{content_type}"
    );
    let declared: usize = header(&response, "content-length").parse().unwrap();
    let body = response.bytes().await.unwrap();
    assert_eq!(body.len(), declared);
    multipart::parse(&content_type, body).unwrap()
}

async fn two_servers() -> fed_common::Fed {
    fed_common::start_many_with(2, |i, config| {
        if i == 1 {
            config.limits.max_upload_bytes = B_MAX;
            // B's deprecated endpoints serve everything, so remote media reaches them too.
            config.media.legacy_download_freeze = None;
        }
    })
    .await
}

#[tokio::test]
async fn federation_endpoints_answer_signed_requests_with_multipart() {
    let fed = fed_common::start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let (_, alice, _) = a.register("alice", "pw").await;
    let id = upload(
        a,
        &alice,
        b"some \r\n--bytes--\r\n",
        "text/plain",
        "notes.txt",
    )
    .await;

    let payload =
        multipart_of(federation_get(b, a, &format!("{FED}/download/{id}"), true).await).await;
    assert_eq!(
        payload,
        Payload::File {
            bytes: Bytes::from_static(b"some \r\n--bytes--\r\n"),
            content_type: Some("text/plain".into()),
            disposition: Some("inline; filename=\"notes.txt\"".into()),
        }
    );

    // Unsigned: refused before anything is looked up.
    let (status, code, _) =
        error_of(federation_get(b, a, &format!("{FED}/download/{id}"), false).await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED")
    );
    let (status, code, _) = error_of(
        federation_get(
            b,
            a,
            &format!("{FED}/thumbnail/{id}?width=32&height=32"),
            false,
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED")
    );

    // Not uploaded yet: waited for, up to timeout_ms.
    let later = pending(a, &alice).await;
    let path = format!("{FED}/download/{later}?timeout_ms=50");
    let (status, code, _) = error_of(federation_get(b, a, &path, true).await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::GATEWAY_TIMEOUT, "M_NOT_YET_UPLOADED")
    );

    // Unknown media.
    let (status, code, _) =
        error_of(federation_get(b, a, &format!("{FED}/download/nosuchmedia"), true).await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::NOT_FOUND, "M_NOT_FOUND")
    );

    // A thumbnail, made the way the client API makes it.
    let png = picture(200, 150);
    let pic = upload(a, &alice, &png, "image/png", "pic.png").await;
    let payload = multipart_of(
        federation_get(
            b,
            a,
            &format!("{FED}/thumbnail/{pic}?width=32&height=32&method=crop"),
            true,
        )
        .await,
    )
    .await;
    let Payload::File {
        bytes,
        content_type,
        ..
    } = payload
    else {
        panic!("a file part")
    };
    assert_eq!(content_type.as_deref(), Some("image/png"));
    let thumb = image::load_from_memory(&bytes).unwrap();
    assert_eq!((thumb.width(), thumb.height()), (32, 32));
    let (status, code, _) = error_of(
        federation_get(
            b,
            a,
            &format!("{FED}/thumbnail/{pic}?width=0&height=32"),
            true,
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_REQUEST, "M_INVALID_PARAM")
    );
}

#[tokio::test]
async fn remote_media_through_the_client_api() {
    let mut fed = two_servers().await;
    let (_, alice, _) = fed.servers[0].register("alice", "pw").await;
    let (_, bob, _) = fed.servers[1].register("bob", "pw").await;
    let a_name = fed.servers[0].name.clone();
    let (a, b) = (&fed.servers[0], &fed.servers[1]);

    let text = upload(a, &alice, b"hello from A", "text/plain", "notes.txt").await;
    let html = upload(
        a,
        &alice,
        b"<script>alert(1)</script>",
        "text/html",
        "page.html",
    )
    .await;
    let png = picture(200, 150);
    let pic = upload(a, &alice, &png, "image/png", "pic.png").await;

    // Bytes, type and disposition as A has them, with the safe headers.
    let response = get(
        b,
        &format!("{V1}/download/{a_name}/{text}"),
        Some(&bob),
        &[],
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "content-type"), "text/plain");
    assert_eq!(
        header(&response, "content-disposition"),
        "inline; filename=\"notes.txt\""
    );
    assert_eq!(header(&response, "content-security-policy"), CSP);
    assert_eq!(
        header(&response, "cross-origin-resource-policy"),
        "cross-origin"
    );
    assert_eq!(&response.bytes().await.unwrap()[..], b"hello from A");
    // The file name in the path wins; ranges work on the cached copy.
    let response = get(
        b,
        &format!("{V1}/download/{a_name}/{text}/other.txt"),
        Some(&bob),
        &[("range", "bytes=0-4")],
    )
    .await;
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        header(&response, "content-disposition"),
        "inline; filename=\"other.txt\""
    );
    assert_eq!(&response.bytes().await.unwrap()[..], b"hello");
    // A type that is not safe inline is an attachment of no particular type.
    let response = get(
        b,
        &format!("{V1}/download/{a_name}/{html}"),
        Some(&bob),
        &[],
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header(&response, "content-type"),
        "application/octet-stream"
    );
    assert_eq!(
        header(&response, "content-disposition"),
        "attachment; filename=\"page.html\""
    );
    // The authenticated endpoints need a token for remote media too.
    let response = get(b, &format!("{V1}/download/{a_name}/{text}"), None, &[]).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    // Thumbnails of A's image, in B's buckets.
    for (query, want) in [
        ("width=32&height=32&method=crop", (32, 32)),
        ("width=300&height=200&method=scale", (200, 150)),
    ] {
        let response = get(
            b,
            &format!("{V1}/thumbnail/{a_name}/{pic}?{query}"),
            Some(&bob),
            &[],
        )
        .await;
        assert_eq!(response.status(), StatusCode::OK, "{query}");
        assert_eq!(header(&response, "content-type"), "image/png");
        let thumb = image::load_from_memory(&response.bytes().await.unwrap()).unwrap();
        assert_eq!((thumb.width(), thumb.height()), want, "{query}");
    }
    // A's own answer for something that cannot be thumbnailed.
    let response = get(
        b,
        &format!("{V1}/thumbnail/{a_name}/{text}?width=32&height=32"),
        Some(&bob),
        &[],
    )
    .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    // Not uploaded on A yet: B says so too.
    let later = pending(a, &alice).await;
    let path = format!("{V1}/download/{a_name}/{later}?timeout_ms=50");
    let (status, code, _) = error_of(get(b, &path, Some(&bob), &[]).await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::GATEWAY_TIMEOUT, "M_NOT_YET_UPLOADED")
    );

    // Unknown on A: 404 on B.
    let (status, code, _) = error_of(
        get(
            b,
            &format!("{V1}/download/{a_name}/nosuchmedia"),
            Some(&bob),
            &[],
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::NOT_FOUND, "M_NOT_FOUND")
    );

    // Larger than B's cap: refused with a clear error, and not cached.
    let big = vec![7u8; B_MAX as usize + 1];
    let big_id = upload(a, &alice, &big, "application/octet-stream", "big.bin").await;
    let (status, code, error) = error_of(
        get(
            b,
            &format!("{V1}/download/{a_name}/{big_id}"),
            Some(&bob),
            &[],
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_GATEWAY, "M_TOO_LARGE")
    );
    assert!(error.contains(&B_MAX.to_string()), "{error}");

    // Concurrent first requests for one item all get it.
    let many = upload(a, &alice, b"fetched once", "text/plain", "once.txt").await;
    let path = format!("{V1}/download/{a_name}/{many}");
    let answers =
        futures_util::future::join_all((0..5).map(|_| get(b, &path, Some(&bob), &[]))).await;
    for response in answers {
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(&response.bytes().await.unwrap()[..], b"fetched once");
    }

    // B's deprecated endpoints (no freeze on B) serve remote media too; with
    // allow_remote=false only what B has cached.
    let legacy = upload(a, &alice, b"for old clients", "text/plain", "old.txt").await;
    let response = get(
        b,
        &format!("{LEGACY}/download/{a_name}/{legacy}?allow_remote=false"),
        None,
        &[],
    )
    .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let response = get(
        b,
        &format!("{LEGACY}/download/{a_name}/{legacy}"),
        None,
        &[],
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "content-security-policy"), CSP);
    assert_eq!(&response.bytes().await.unwrap()[..], b"for old clients");
    let response = get(
        b,
        &format!("{LEGACY}/download/{a_name}/{text}?allow_remote=false"),
        None,
        &[],
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let response = get(
        b,
        &format!("{LEGACY}/thumbnail/{a_name}/{pic}?width=32&height=32&method=crop"),
        None,
        &[],
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);

    // A goes away: B still serves what it cached, and says it cannot reach A otherwise.
    fed.servers[0].server.take().unwrap().stop().await;
    let b = &fed.servers[1];
    let response = get(
        b,
        &format!("{V1}/download/{a_name}/{text}"),
        Some(&bob),
        &[],
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "content-type"), "text/plain");
    assert_eq!(&response.bytes().await.unwrap()[..], b"hello from A");
    let response = get(
        b,
        &format!("{V1}/thumbnail/{a_name}/{pic}?width=32&height=32&method=crop"),
        Some(&bob),
        &[],
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let (status, _, error) = error_of(
        get(
            b,
            &format!("{V1}/download/{a_name}/{html}x"),
            Some(&bob),
            &[],
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{error}");
}

/// What the pre-1.11 server in [`old_server`] was asked: `(path and query, signed)`.
type Asked = std::sync::Arc<std::sync::Mutex<Vec<(String, bool)>>>;

/// A server of the time before authenticated media, named `127.0.0.1:<port>`, on TLS with the
/// federation test certificate: it does not know the federation media endpoints (404
/// `M_UNRECOGNIZED`), and its deprecated `/_matrix/media/v3/{download,thumbnail}` are Hearth
/// `origin`'s own (`origin` must serve them unfrozen), its media ids being `origin`'s.
async fn old_server(origin: &FedServer) -> (String, Asked) {
    use hyper_util::rt::TokioIo;
    use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};

    // The certificate every test server has (for 127.0.0.1, from the test CA).
    let certs = CertificateDer::pem_file_iter(&origin.config.tls.cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&origin.config.tls.key).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let name = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
    let asked = Asked::default();
    let (seen, own, origin_name, origin_base) = (
        asked.clone(),
        name.clone(),
        origin.name.clone(),
        origin.base.clone(),
    );
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, seen, own, origin_name, origin_base, client) = (
                acceptor.clone(),
                seen.clone(),
                own.clone(),
                origin_name.clone(),
                origin_base.clone(),
                client.clone(),
            );
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(
                    move |req: http::Request<hyper::body::Incoming>| {
                        let target = req.uri().to_string();
                        seen.lock()
                            .unwrap()
                            .push((target.clone(), req.headers().contains_key("authorization")));
                        let (own, origin_name, origin_base, client) = (
                            own.clone(),
                            origin_name.clone(),
                            origin_base.clone(),
                            client.clone(),
                        );
                        async move {
                            let legacy = ["download", "thumbnail"].iter().find_map(|k| {
                                target
                                    .strip_prefix(&format!("{LEGACY}/{k}/{own}/"))
                                    .map(|rest| (k, rest))
                            });
                            let response = match legacy {
                            Some((kind, rest)) => {
                                let url = format!("{origin_base}{LEGACY}/{kind}/{origin_name}/{rest}");
                                let answer = client.get(url).send().await.unwrap();
                                let mut out = http::Response::builder().status(answer.status().as_u16());
                                for name in ["content-type", "content-disposition"] {
                                    if let Some(v) = answer.headers().get(name) {
                                        out = out.header(name, v.to_str().unwrap());
                                    }
                                }
                                out.body(http_body_util::Full::new(answer.bytes().await.unwrap())).unwrap()
                            }
                            None => http::Response::builder()
                                .status(404)
                                .header("content-type", "application/json")
                                .body(http_body_util::Full::new(Bytes::from_static(
                                    br#"{"errcode":"M_UNRECOGNIZED","error":"Unrecognized request"}"#,
                                )))
                                .unwrap(),
                        };
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (name, asked)
}

#[tokio::test]
async fn servers_without_authenticated_media_are_asked_the_deprecated_endpoints() {
    let fed = fed_common::start_many_with(2, |i, config| {
        if i == 0 {
            config.media.legacy_download_freeze = None;
        }
    })
    .await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let (old, asked) = old_server(a).await;
    let (_, alice, _) = a.register("alice", "pw").await;
    let (_, bob, _) = b.register("bob", "pw").await;
    let doc = upload(a, &alice, b"from an old server", "text/plain", "old.txt").await;
    let png = picture(120, 90);
    let pic = upload(a, &alice, &png, "image/png", "pic.png").await;

    let response = get(b, &format!("{V1}/download/{old}/{doc}"), Some(&bob), &[]).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "content-type"), "text/plain");
    assert_eq!(
        header(&response, "content-disposition"),
        "inline; filename=\"old.txt\""
    );
    assert_eq!(&response.bytes().await.unwrap()[..], b"from an old server");
    let response = get(
        b,
        &format!("{V1}/thumbnail/{old}/{pic}?width=32&height=32&method=crop"),
        Some(&bob),
        &[],
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let thumb = image::load_from_memory(&response.bytes().await.unwrap()).unwrap();
    assert_eq!((thumb.width(), thumb.height()), (32, 32));

    // The new endpoint first (signed), then the deprecated one, unsigned, with
    // allow_remote=false.
    let asked = asked.lock().unwrap().clone();
    assert_eq!(
        asked,
        vec![
            (format!("{FED}/download/{doc}?timeout_ms=20000"), true),
            (format!("{LEGACY}/download/{old}/{doc}?timeout_ms=20000&allow_remote=false"), false),
            (format!("{FED}/thumbnail/{pic}?width=32&height=32&method=crop&timeout_ms=20000"), true),
            (
                format!("{LEGACY}/thumbnail/{old}/{pic}?width=32&height=32&method=crop&timeout_ms=20000&allow_remote=false"),
                false
            ),
        ]
    );
}

/// The process's peak resident memory so far (`VmHWM`), in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Figure for the report, not a check: time and peak memory for B to fetch and cache a 10 MB
/// file from A and serve it (both servers in this process; A streams its file, B holds the
/// answer in memory once). `cargo test --release --test it fed_media::figure -- --ignored --nocapture`
#[tokio::test]
#[ignore]
async fn figure_fetch_and_cache_10_mb() {
    let fed = fed_common::start_many(2).await;
    let (a, b) = (&fed.servers[0], &fed.servers[1]);
    let (_, alice, _) = a.register("alice", "pw").await;
    let (_, bob, _) = b.register("bob", "pw").await;
    let data: Vec<u8> = (0..10_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let id = upload(a, &alice, &data, "application/octet-stream", "ten.bin").await;
    drop(data);
    let path = format!("{V1}/download/{}/{id}", a.name);
    for round in ["first (fetch and cache)", "second (cached)"] {
        // Resets the peak to the current resident size (Linux: clear_refs 5).
        std::fs::write("/proc/self/clear_refs", "5").unwrap();
        let before = peak_rss_kib();
        let started = std::time::Instant::now();
        let mut response = get(b, &path, Some(&bob), &[]).await;
        assert_eq!(response.status(), StatusCode::OK);
        let mut received = 0;
        while let Some(chunk) = response.chunk().await.unwrap() {
            received += chunk.len();
        }
        assert_eq!(received, 10_000_000);
        println!(
            "{round}: {} ms, peak RSS {} KiB → {} KiB",
            started.elapsed().as_millis(),
            before,
            peak_rss_kib()
        );
    }
}
