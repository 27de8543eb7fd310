//! The media repository over HTTP: uploads (plain and asynchronous), downloads with their
//! security headers and ranges, thumbnails of every method on PNG, JPEG, GIF and WebP, limits,
//! interrupted uploads, deduplication, the legacy endpoints' freeze and the admin CLI.

use std::{io::Cursor, path::Path, time::Duration};

use image::{DynamicImage, ImageFormat, Rgb, RgbImage, Rgba, RgbaImage};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{errcode, TestServer};

const V1: &str = "/_matrix/client/v1/media";
const LEGACY: &str = "/_matrix/media/v3";
const CSP: &str = "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; style-src 'unsafe-inline'; object-src 'self';";

/// A server whose legacy endpoints serve everything (no freeze).
async fn server() -> TestServer {
    TestServer::start_with(|c| c.media.legacy_download_freeze = None).await
}

/// Deterministic pseudo-random bytes.
fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

async fn request(
    srv: &TestServer,
    method: Method,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> reqwest::Response {
    let mut req = srv.http.request(method, format!("{}{path}", srv.base));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(body) = body {
        req = req.body(body);
    }
    req.send().await.expect("request sent")
}

async fn json_of(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let body = response.bytes().await.unwrap();
    let value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).unwrap_or_else(|_| panic!("JSON body: {body:?}"))
    };
    (status, value)
}

/// Uploads `data`; returns (server, media id).
async fn upload(
    srv: &TestServer,
    token: &str,
    data: &[u8],
    content_type: &str,
    filename: Option<&str>,
) -> (String, String) {
    let path = match filename {
        Some(f) => format!("{LEGACY}/upload?filename={}", crate::common::enc(f)),
        None => format!("{LEGACY}/upload"),
    };
    let response = request(
        srv,
        Method::POST,
        &path,
        Some(token),
        &[("content-type", content_type)],
        Some(data.to_vec()),
    )
    .await;
    let (status, body) = json_of(response).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mxc = body["content_uri"].as_str().unwrap();
    let (server, id) = mxc.strip_prefix("mxc://").unwrap().split_once('/').unwrap();
    (server.to_owned(), id.to_owned())
}

async fn download(srv: &TestServer, token: &str, server: &str, id: &str) -> reqwest::Response {
    let path = format!("{V1}/download/{server}/{id}");
    request(srv, Method::GET, &path, Some(token), &[], None).await
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap())
        .unwrap_or("")
}

/// Files in the content store (everything under `media/` except the temporary directory),
/// in path order.
fn stored_files(data_dir: &Path) -> Vec<std::path::PathBuf> {
    fn walk(dir: &Path, tmp: &Path, out: &mut Vec<std::path::PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path == tmp {
                continue;
            }
            if path.is_dir() {
                walk(&path, tmp, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    let media = data_dir.join("media");
    walk(&media, &media.join("tmp"), &mut out);
    out.sort();
    out
}

fn tmp_files(data_dir: &Path) -> usize {
    std::fs::read_dir(data_dir.join("media/tmp"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test]
async fn round_trip_types_and_sizes() {
    let srv = server().await;
    let (_, token, _) = srv.register("alice", "pw").await;
    let cases: Vec<(Vec<u8>, &str, Option<&str>)> = vec![
        (b"hello, media".to_vec(), "text/plain", Some("hello.txt")),
        (Vec::new(), "application/octet-stream", None),
        (bytes(70_000, 1), "image/png", Some("not-really.png")),
        (
            bytes(12 * 1024 * 1024 + 17, 2),
            "video/mp4",
            Some("big.mp4"),
        ),
    ];
    for (data, content_type, filename) in cases {
        let (server, id) = upload(&srv, &token, &data, content_type, filename).await;
        assert_eq!(server, "localhost");
        for legacy in [false, true] {
            let response = if legacy {
                let path = format!("{LEGACY}/download/{server}/{id}");
                request(&srv, Method::GET, &path, None, &[], None).await
            } else {
                download(&srv, &token, &server, &id).await
            };
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(header(&response, "content-type"), content_type);
            assert_eq!(header(&response, "content-length"), data.len().to_string());
            let body = response.bytes().await.unwrap();
            assert_eq!(body.len(), data.len());
            assert!(body[..] == data[..], "bytes differ for {content_type}");
        }
        // With a file name in the path, that name is served.
        let path = format!("{V1}/download/{server}/{id}/other%20name.bin");
        let response = request(&srv, Method::GET, &path, Some(&token), &[], None).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            header(&response, "content-disposition").ends_with("filename=\"other name.bin\""),
            "{}",
            header(&response, "content-disposition")
        );
        assert_eq!(response.bytes().await.unwrap().len(), data.len());
    }
}

#[tokio::test]
async fn security_headers_and_disposition() {
    let srv = server().await;
    let (_, token, _) = srv.register("alice", "pw").await;

    let (s, id) = upload(&srv, &token, b"\x89PNG...", "image/png", Some("cat.png")).await;
    let response = download(&srv, &token, &s, &id).await;
    assert_eq!(header(&response, "content-type"), "image/png");
    assert_eq!(
        header(&response, "content-disposition"),
        "inline; filename=\"cat.png\""
    );
    assert_eq!(header(&response, "content-security-policy"), CSP);
    assert_eq!(
        header(&response, "cross-origin-resource-policy"),
        "cross-origin"
    );
    assert_eq!(header(&response, "x-content-type-options"), "nosniff");
    assert_eq!(header(&response, "access-control-allow-origin"), "*");

    // An unsafe type is never inline and not served under its own type.
    let html = b"<script>alert(1)</script>";
    let (s, id) = upload(&srv, &token, html, "text/html", Some("page.html")).await;
    let response = download(&srv, &token, &s, &id).await;
    assert_eq!(
        header(&response, "content-type"),
        "application/octet-stream"
    );
    assert_eq!(
        header(&response, "content-disposition"),
        "attachment; filename=\"page.html\""
    );
    assert_eq!(header(&response, "content-security-policy"), CSP);
    assert_eq!(header(&response, "x-content-type-options"), "nosniff");
    assert_eq!(&response.bytes().await.unwrap()[..], html);

    // A safe type with a smuggled second type is served as its normalised essence only.
    let (s, id) = upload(&srv, &token, html, "text/plain;x=1,text/html", None).await;
    let response = download(&srv, &token, &s, &id).await;
    assert_eq!(header(&response, "content-type"), "text/plain");

    // A non-ASCII file name is encoded per RFC 6266 / RFC 5987.
    let (s, id) = upload(&srv, &token, b"x", "text/plain", Some("résumé 1.txt")).await;
    let response = download(&srv, &token, &s, &id).await;
    assert_eq!(
        header(&response, "content-disposition"),
        "inline; filename*=utf-8''r%C3%A9sum%C3%A9%201.txt"
    );

    // Without a file name, only the disposition type.
    let (s, id) = upload(&srv, &token, b"{}", "application/json", None).await;
    let response = download(&srv, &token, &s, &id).await;
    assert_eq!(header(&response, "content-disposition"), "inline");
}

#[tokio::test]
async fn range_requests() {
    let srv = server().await;
    let (_, token, _) = srv.register("alice", "pw").await;
    let data = bytes(3 * 1024 * 1024, 7);
    let (s, id) = upload(&srv, &token, &data, "video/mp4", None).await;
    let path = format!("{V1}/download/{s}/{id}");
    let get = |range: &'static str| {
        let path = path.clone();
        let srv = &srv;
        let token = token.clone();
        async move {
            request(
                srv,
                Method::GET,
                &path,
                Some(&token),
                &[("range", range)],
                None,
            )
            .await
        }
    };

    let response = get("bytes=0-9").await;
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        header(&response, "content-range"),
        format!("bytes 0-9/{}", data.len())
    );
    assert_eq!(header(&response, "accept-ranges"), "bytes");
    assert_eq!(&response.bytes().await.unwrap()[..], &data[0..10]);

    let response = get("bytes=2000000-").await;
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(&response.bytes().await.unwrap()[..], &data[2_000_000..]);

    let response = get("bytes=-100").await;
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        &response.bytes().await.unwrap()[..],
        &data[data.len() - 100..]
    );

    let response = get("bytes=99999999-").await;
    assert_eq!(response.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        header(&response, "content-range"),
        format!("bytes */{}", data.len())
    );

    // HEAD: headers only.
    let response = request(&srv, Method::HEAD, &path, Some(&token), &[], None).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "content-length"), data.len().to_string());
    assert!(response.bytes().await.unwrap().is_empty());
}

/// A 400×300 test picture: a gradient with a red left half, so crops and scales are visible.
fn picture(format: ImageFormat) -> Vec<u8> {
    let (w, h) = (400, 300);
    let image = if format == ImageFormat::Png {
        DynamicImage::ImageRgba8(RgbaImage::from_fn(w, h, |x, y| {
            Rgba([if x < w / 2 { 255 } else { 0 }, (y % 256) as u8, 80, 200])
        }))
    } else {
        DynamicImage::ImageRgb8(RgbImage::from_fn(w, h, |x, y| {
            Rgb([if x < w / 2 { 255 } else { 0 }, (y % 256) as u8, 80])
        }))
    };
    let mut out = Vec::new();
    image.write_to(&mut Cursor::new(&mut out), format).unwrap();
    out
}

#[tokio::test]
async fn thumbnails_every_method_and_format() {
    let srv = server().await;
    let (_, token, _) = srv.register("alice", "pw").await;
    let formats = [
        (ImageFormat::Png, "image/png", "image/png"),
        (ImageFormat::Jpeg, "image/jpeg", "image/jpeg"),
        (ImageFormat::Gif, "image/gif", "image/png"),
        (ImageFormat::WebP, "image/webp", "image/png"),
    ];
    // (width, height, method) → expected size of the result.
    let requests = [
        (32, 32, "crop", (32, 32)),
        (90, 60, "crop", (96, 96)),
        (320, 240, "scale", (320, 240)),
        (100, 100, "scale", (320, 240)),
        (1000, 1000, "scale", (400, 300)),
    ];
    for (format, content_type, thumb_type) in formats {
        let data = picture(format);
        let (s, id) = upload(&srv, &token, &data, content_type, Some("pic")).await;
        for (w, h, method, expected) in requests {
            let path = format!("{V1}/thumbnail/{s}/{id}?width={w}&height={h}&method={method}");
            let response = request(&srv, Method::GET, &path, Some(&token), &[], None).await;
            assert_eq!(response.status(), StatusCode::OK, "{format:?} {method}");
            assert_eq!(header(&response, "content-type"), thumb_type);
            assert_eq!(header(&response, "content-security-policy"), CSP);
            assert_eq!(header(&response, "x-content-type-options"), "nosniff");
            let body = response.bytes().await.unwrap();
            let thumb = image::load_from_memory(&body).unwrap();
            assert_eq!(
                (thumb.width(), thumb.height()),
                expected,
                "{format:?} {w}x{h} {method}"
            );
            if method == "crop" && expected == (32, 32) {
                // A centred crop of a picture whose left half is red: red on the left only.
                let rgb = thumb.to_rgb8();
                assert!(rgb.get_pixel(2, 16)[0] > 200, "{format:?}");
                assert!(rgb.get_pixel(29, 16)[0] < 60, "{format:?}");
            }
        }
    }

    // Cached after the first generation: asking again makes no new file and returns the
    // same bytes.
    let data = picture(ImageFormat::Png);
    let (s, id) = upload(&srv, &token, &data, "image/png", None).await;
    let path = format!("{LEGACY}/thumbnail/{s}/{id}?width=64&height=64&method=crop");
    let first = request(&srv, Method::GET, &path, None, &[], None).await;
    assert_eq!(first.status(), StatusCode::OK);
    let first = first.bytes().await.unwrap();
    let files = stored_files(&srv.config.data_dir).len();
    // 50×50 falls in the same 96×96 bucket.
    let path = format!("{V1}/thumbnail/{s}/{id}?width=50&height=50&method=crop");
    let second = request(&srv, Method::GET, &path, Some(&token), &[], None).await;
    assert_eq!(second.bytes().await.unwrap(), first);
    assert_eq!(stored_files(&srv.config.data_dir).len(), files);
}

#[tokio::test]
async fn thumbnail_errors() {
    let srv = TestServer::start_with(|c| {
        c.media.legacy_download_freeze = None;
        c.media.max_thumbnail_pixels = 250_000;
    })
    .await;
    let (_, token, _) = srv.register("alice", "pw").await;
    let thumb = |s: &str, id: &str, q: &str| format!("{V1}/thumbnail/{s}/{id}?{q}");

    // Over the pixel limit: refused before decoding.
    let big = {
        let img = DynamicImage::ImageRgb8(RgbImage::new(600, 500));
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
            .unwrap();
        out
    };
    let (s, id) = upload(&srv, &token, &big, "image/png", None).await;
    let response = request(
        &srv,
        Method::GET,
        &thumb(&s, &id, "width=32&height=32"),
        Some(&token),
        &[],
        None,
    )
    .await;
    let (status, body) = json_of(response).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(errcode(&body), "M_TOO_LARGE");
    assert!(
        body["error"].as_str().unwrap().contains("600×500"),
        "{body}"
    );

    // A decompression bomb: a tiny PNG whose header claims 100000×100000 pixels.
    let bomb = forged_png(100_000, 100_000);
    assert!(bomb.len() < 200);
    let (s, id) = upload(&srv, &token, &bomb, "image/png", None).await;
    let response = request(
        &srv,
        Method::GET,
        &thumb(&s, &id, "width=32&height=32"),
        Some(&token),
        &[],
        None,
    )
    .await;
    let (status, body) = json_of(response).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(errcode(&body), "M_TOO_LARGE");

    // Not an image at all, whatever the declared type.
    let (s, id) = upload(&srv, &token, b"plain text", "image/png", None).await;
    let response = request(
        &srv,
        Method::GET,
        &thumb(&s, &id, "width=32&height=32"),
        Some(&token),
        &[],
        None,
    )
    .await;
    let (status, body) = json_of(response).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // Bad parameters.
    let small = picture(ImageFormat::Png);
    let (s, id) = upload(&srv, &token, &small, "image/png", None).await;
    for (q, code) in [
        ("width=32", "M_MISSING_PARAM"),
        ("width=0&height=32", "M_INVALID_PARAM"),
        ("width=-1&height=32", "M_INVALID_PARAM"),
        ("width=32&height=32&method=stretch", "M_INVALID_PARAM"),
    ] {
        let response = request(
            &srv,
            Method::GET,
            &thumb(&s, &id, q),
            Some(&token),
            &[],
            None,
        )
        .await;
        let (status, body) = json_of(response).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{q}: {body}");
        assert_eq!(errcode(&body), code, "{q}");
    }
}

/// A PNG with a valid signature and IHDR claiming `w`×`h`, and a token IDAT.
fn forged_png(w: u32, h: u32) -> Vec<u8> {
    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(
        &mut out,
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    chunk(&mut out, b"IEND", &[]);
    out
}

/// Sends a raw HTTP/1.1 request and returns the response head and body as text.
async fn raw_http(srv: &TestServer, head: String, body_parts: &[&[u8]]) -> String {
    let addr = srv.base.strip_prefix("http://").unwrap();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    for part in body_parts {
        if stream.write_all(part).await.is_err() {
            break;
        }
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn limits_size_and_quota() {
    let srv = TestServer::start_with(|c| {
        c.limits.max_upload_bytes = 1024 * 1024;
        c.media.quota_bytes_per_user = 1_500_000;
    })
    .await;
    let (_, token, _) = srv.register("alice", "pw").await;

    for path in [format!("{V1}/config"), format!("{LEGACY}/config")] {
        let (status, body) = srv.get(&path, Some(&token)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["m.upload.size"], 1024 * 1024);
    }

    // Declared too large: refused from the Content-Length.
    let response = request(
        &srv,
        Method::POST,
        &format!("{LEGACY}/upload"),
        Some(&token),
        &[("content-type", "application/octet-stream")],
        Some(bytes(1024 * 1024 + 1, 3)),
    )
    .await;
    let (status, body) = json_of(response).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(errcode(&body), "M_TOO_LARGE");

    // Chunked, no declared length: refused once the stream passes the limit.
    let chunk = vec![b'a'; 256 * 1024];
    let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
    framed.extend_from_slice(&chunk);
    framed.extend_from_slice(b"\r\n");
    let head = format!(
        "POST {LEGACY}/upload HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\
         content-type: text/plain\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    let parts: Vec<&[u8]> = std::iter::repeat_n(framed.as_slice(), 5)
        .chain([&b"0\r\n\r\n"[..]])
        .collect();
    let answer = raw_http(&srv, head, &parts).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("M_TOO_LARGE"), "{answer}");
    assert_eq!(tmp_files(&srv.config.data_dir), 0);
    assert!(stored_files(&srv.config.data_dir).is_empty());

    // Quota: 1 MB fits, a second 1 MB does not; the refusal stores nothing.
    upload(&srv, &token, &bytes(1_000_000, 4), "video/mp4", None).await;
    let response = request(
        &srv,
        Method::POST,
        &format!("{LEGACY}/upload"),
        Some(&token),
        &[("content-type", "video/mp4")],
        Some(bytes(1_000_000, 5)),
    )
    .await;
    let (status, body) = json_of(response).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(errcode(&body), "M_FORBIDDEN");
    assert_eq!(stored_files(&srv.config.data_dir).len(), 1);
    // Another user has a quota of their own.
    let (_, bob, _) = srv.register("bob", "pw").await;
    upload(&srv, &bob, &bytes(1_000_000, 5), "video/mp4", None).await;

    // Unauthenticated uploads and downloads of the authenticated form are refused.
    let response = request(
        &srv,
        Method::POST,
        &format!("{LEGACY}/upload"),
        None,
        &[],
        Some(b"x".to_vec()),
    )
    .await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

/// Bytes in the temporary files of uploads in progress.
fn tmp_bytes(data_dir: &Path) -> u64 {
    std::fs::read_dir(data_dir.join("media/tmp"))
        .map(|d| {
            d.flatten()
                .map(|e| e.metadata().map_or(0, |m| m.len()))
                .sum()
        })
        .unwrap_or(0)
}

/// Sends `head` and the first body parts, keeping the connection open for more.
async fn start_raw(srv: &TestServer, head: String, parts: &[&[u8]]) -> tokio::net::TcpStream {
    let addr = srv.base.strip_prefix("http://").unwrap();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    for part in parts {
        stream.write_all(part).await.unwrap();
    }
    stream
}

/// Uploads `data` with a declared length; returns the status and errcode (if any).
async fn try_upload(srv: &TestServer, token: &str, data: Vec<u8>) -> (StatusCode, String) {
    let response = request(
        srv,
        Method::POST,
        &format!("{LEGACY}/upload"),
        Some(token),
        &[("content-type", "application/octet-stream")],
        Some(data),
    )
    .await;
    let (status, body) = json_of(response).await;
    (status, errcode(&body).to_owned())
}

#[tokio::test]
async fn uploads_in_progress_count_against_the_quota() {
    let srv = TestServer::start_with(|c| c.media.quota_bytes_per_user = 1_500_000).await;
    let (_, token, _) = srv.register("alice", "pw").await;
    let data_dir = srv.config.data_dir.clone();

    // A big streamed upload (chunked: no declared length) is under way with 1,000,000 bytes
    // received and not finished.
    let chunk = bytes(250_000, 11);
    let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
    framed.extend_from_slice(&chunk);
    framed.extend_from_slice(b"\r\n");
    let head = format!(
        "POST {LEGACY}/upload HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\
         content-type: video/mp4\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    let parts = [framed.as_slice(); 4];
    let mut first = start_raw(&srv, head, &parts).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while tmp_bytes(&data_dir) < 1_000_000 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        tmp_bytes(&data_dir),
        1_000_000,
        "the first upload is received"
    );

    // Nothing is committed yet, so only the bytes in flight stand between a second 1 MB
    // upload and the 1.5 MB quota: it is refused, declared or streamed.
    assert_eq!(
        try_upload(&srv, &token, bytes(1_000_000, 12)).await,
        (StatusCode::FORBIDDEN, "M_FORBIDDEN".to_owned())
    );
    let head = format!(
        "POST {LEGACY}/upload HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\
         content-type: video/mp4\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    let f = framed.as_slice();
    let answer = raw_http(&srv, head, &[f, f, f, b"0\r\n\r\n"]).await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("M_FORBIDDEN"), "{answer}");
    // What is left of the quota is still usable.
    assert_eq!(
        try_upload(&srv, &token, bytes(400_000, 13)).await.0,
        StatusCode::OK
    );

    // The first upload completes within the quota it held all along.
    first.write_all(b"0\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), first.read_to_end(&mut answer))
        .await
        .expect("first upload answered")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // An abandoned upload gives its hold back: 100,000 bytes declared, then the client leaves.
    let head = format!(
        "POST {LEGACY}/upload HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\
         content-type: video/mp4\r\ncontent-length: 100000\r\n\r\n"
    );
    let abandoned = start_raw(&srv, head, &[&bytes(10_000, 14)]).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while tmp_bytes(&data_dir) < 10_000 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // While it is held, the last 100,000 bytes of quota are taken.
    assert_eq!(
        try_upload(&srv, &token, bytes(100_000, 15)).await.0,
        StatusCode::FORBIDDEN
    );
    drop(abandoned);
    // The server notices the disconnect within moments; then the hold is gone.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut status = StatusCode::FORBIDDEN;
    while status == StatusCode::FORBIDDEN && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        status = try_upload(&srv, &token, bytes(100_000, 15)).await.0;
    }
    assert_eq!(status, StatusCode::OK);
    // Exactly full now.
    assert_eq!(
        try_upload(&srv, &token, vec![1]).await,
        (StatusCode::FORBIDDEN, "M_FORBIDDEN".to_owned())
    );
}

#[tokio::test]
async fn orphan_files_are_swept_at_start() {
    let mut srv = server().await;
    let (_, token, _) = srv.register("alice", "pw").await;
    let data_dir = srv.config.data_dir.clone();
    let kept = bytes(5_000, 21);
    let (server_name, id) = upload(&srv, &token, &kept, "application/octet-stream", None).await;
    let committed = stored_files(&data_dir);
    assert_eq!(committed.len(), 1);

    // A file placed at its content address whose index row was never committed (a crash
    // between the rename and the commit), in a fan-out directory of its own and next to the
    // committed one; and a leftover in the temporary directory.
    let orphan = "ab".repeat(32);
    let orphan_path = data_dir.join("media/ab/ab").join(&orphan);
    std::fs::create_dir_all(orphan_path.parent().unwrap()).unwrap();
    std::fs::write(&orphan_path, b"never committed").unwrap();
    let committed_dir = committed[0].parent().unwrap();
    let name = committed[0].file_name().unwrap().to_str().unwrap();
    let neighbour = committed_dir.join(format!("{}{}", &name[..4], "0".repeat(60)));
    std::fs::write(&neighbour, b"never committed either").unwrap();
    std::fs::write(data_dir.join("media/tmp/x.part"), b"half an upload").unwrap();

    srv.restart().await;
    assert!(!orphan_path.exists(), "the orphan is swept");
    assert!(
        !neighbour.exists(),
        "the orphan next to a committed file is swept"
    );
    assert_eq!(tmp_files(&data_dir), 0);
    assert_eq!(
        stored_files(&data_dir),
        committed,
        "the committed file stays"
    );
    let response = download(&srv, &token, &server_name, &id).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(&response.bytes().await.unwrap()[..], &kept[..]);
}

#[tokio::test]
async fn interrupted_upload_leaves_nothing() {
    let srv = server().await;
    let (_, token, _) = srv.register("alice", "pw").await;
    let data_dir = srv.config.data_dir.clone();

    // The client promises 2 MB, sends 600 kB and disappears.
    let head = format!(
        "POST {LEGACY}/upload HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\
         content-type: video/mp4\r\ncontent-length: 2000000\r\n\r\n"
    );
    {
        let addr = srv.base.strip_prefix("http://").unwrap();
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&bytes(600_000, 9)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        // A partial file is being written now, but nothing is visible.
        assert!(tmp_files(&data_dir) > 0, "the upload is under way");
        assert!(stored_files(&data_dir).is_empty());
    }
    // Connection dropped: the partial file goes away, nothing else appears.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while tmp_files(&data_dir) > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(tmp_files(&data_dir), 0);
    assert!(stored_files(&data_dir).is_empty());

    // The same for an asynchronous upload: the id stays "not yet uploaded".
    let (status, created) = srv
        .post("/_matrix/media/v1/create", Some(&token), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let mxc = created["content_uri"].as_str().unwrap();
    let id = mxc.rsplit('/').next().unwrap();
    let head = format!(
        "PUT {LEGACY}/upload/localhost/{id} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\
         content-type: video/mp4\r\ncontent-length: 2000000\r\n\r\n"
    );
    {
        let addr = srv.base.strip_prefix("http://").unwrap();
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&bytes(100_000, 9)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let path = format!("{V1}/download/localhost/{id}?timeout_ms=100");
    let (status, body) = srv.get(&path, Some(&token)).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(errcode(&body), "M_NOT_YET_UPLOADED");
    assert!(stored_files(&data_dir).is_empty());
    // The id can still be filled.
    let response = request(
        &srv,
        Method::PUT,
        &format!("{LEGACY}/upload/localhost/{id}"),
        Some(&token),
        &[("content-type", "text/plain")],
        Some(b"complete".to_vec()),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let response = download(&srv, &token, "localhost", id).await;
    assert_eq!(&response.bytes().await.unwrap()[..], b"complete");
}

#[tokio::test]
async fn async_upload() {
    let srv = server().await;
    let (_, token, _) = srv.register("alice", "pw").await;
    let (_, bob, _) = srv.register("bob", "pw").await;

    let (status, created) = srv
        .post("/_matrix/media/v1/create", Some(&token), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    assert!(created["unused_expires_at"].as_u64().unwrap() > 0);
    let mxc = created["content_uri"].as_str().unwrap().to_owned();
    let id = mxc.rsplit('/').next().unwrap().to_owned();

    // A download started before the upload waits for it.
    let waiter = {
        let url = format!("{}{V1}/download/localhost/{id}?timeout_ms=10000", srv.base);
        let http = srv.http.clone();
        let token = token.clone();
        tokio::spawn(async move { http.get(url).bearer_auth(token).send().await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Only the creator may upload.
    let put = |who: String, body: &'static [u8]| {
        let path = format!("{LEGACY}/upload/localhost/{id}");
        let srv = &srv;
        async move {
            json_of(
                request(
                    srv,
                    Method::PUT,
                    &path,
                    Some(&who),
                    &[("content-type", "text/plain")],
                    Some(body.to_vec()),
                )
                .await,
            )
            .await
        }
    };
    let (status, body) = put(bob.clone(), b"bob's").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(errcode(&body), "M_FORBIDDEN");
    let (status, body) = put(token.clone(), b"later bytes").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = put(token.clone(), b"again").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(errcode(&body), "M_CANNOT_OVERWRITE_MEDIA");

    let response = waiter.await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(&response.bytes().await.unwrap()[..], b"later bytes");

    // Unknown ids.
    let response = request(
        &srv,
        Method::PUT,
        &format!("{LEGACY}/upload/localhost/nosuchid"),
        Some(&token),
        &[],
        Some(b"x".to_vec()),
    )
    .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let (status, body) = srv
        .get(&format!("{V1}/download/localhost/nosuchid"), Some(&token))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(errcode(&body), "M_NOT_FOUND");
}

#[tokio::test]
async fn dedup_by_content() {
    let srv = server().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let (_, bob, _) = srv.register("bob", "pw").await;
    let data = bytes(500_000, 11);
    let (_, a) = upload(&srv, &alice, &data, "video/mp4", Some("a.mp4")).await;
    let (_, b) = upload(&srv, &bob, &data, "application/octet-stream", Some("b.bin")).await;
    assert_ne!(a, b);
    assert_eq!(stored_files(&srv.config.data_dir).len(), 1);
    // Each id keeps its own metadata.
    let ra = download(&srv, &alice, "localhost", &a).await;
    assert_eq!(header(&ra, "content-type"), "video/mp4");
    assert!(header(&ra, "content-disposition").contains("a.mp4"));
    let rb = download(&srv, &alice, "localhost", &b).await;
    assert!(header(&rb, "content-disposition").contains("b.bin"));
    assert_eq!(ra.bytes().await.unwrap(), rb.bytes().await.unwrap());
    // The file's name is its sha256.
    let name = stored_files(&srv.config.data_dir)[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert_eq!(name.len(), 64);
}

#[tokio::test]
async fn remote_media_and_legacy_freeze() {
    // Default config: the legacy endpoints are frozen (media uploaded now is too new).
    let srv = TestServer::start().await;
    let (_, token, _) = srv.register("alice", "pw").await;
    // Remote media is fetched over federation (tests/it/fed_media.rs); ids that cannot be
    // media ids are unknown without asking anyone.
    let (status, body) = srv
        .get(&format!("{V1}/download/matrix.org/abc%2Fdef"), Some(&token))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(errcode(&body), "M_NOT_FOUND");
    let (status, body) = srv
        .get(
            &format!("{V1}/thumbnail/not%20a%20server/abcdef?width=32&height=32"),
            Some(&token),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(errcode(&body), "M_NOT_FOUND");

    let png = picture(ImageFormat::Png);
    let (s, id) = upload(&srv, &token, &png, "image/png", None).await;
    for path in [
        format!("{LEGACY}/download/{s}/{id}"),
        format!("{LEGACY}/download/{s}/{id}/x.png"),
        format!("{LEGACY}/thumbnail/{s}/{id}?width=32&height=32"),
    ] {
        let (status, body) = srv.get(&path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(errcode(&body), "M_NOT_FOUND");
    }
    // The authenticated form serves it, and needs a token.
    assert_eq!(
        download(&srv, &token, &s, &id).await.status(),
        StatusCode::OK
    );
    let (status, body) = srv.get(&format!("{V1}/download/{s}/{id}"), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(errcode(&body), "M_MISSING_TOKEN");
}

#[tokio::test]
async fn admin_cli_lists_deletes_and_purges() {
    let mut srv = server().await;
    let (user, token, _) = srv.register("alice", "pw").await;
    let png = picture(ImageFormat::Png);
    let (_, keep) = upload(&srv, &token, b"keep me", "text/plain", Some("keep.txt")).await;
    let (_, gone) = upload(&srv, &token, &png, "image/png", Some("gone.png")).await;
    // A thumbnail, to be deleted with its media.
    let path = format!("{V1}/thumbnail/localhost/{gone}?width=32&height=32&method=crop");
    assert_eq!(
        request(&srv, Method::GET, &path, Some(&token), &[], None)
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(stored_files(&srv.config.data_dir).len(), 3);
    srv.server.take().unwrap().stop().await;

    let data_dir = srv.config.data_dir.clone();
    let hearth = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_hearth"))
            .args(args)
            .env_clear()
            .env("HEARTH_DATA_DIR", &data_dir)
            .env("HEARTH_LOG_LEVEL", "warn")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = hearth(&["media", "list", "alice"]);
    assert!(ok, "{err}");
    assert!(out.contains(&format!("mxc://localhost/{keep}")), "{out}");
    assert!(out.contains(&format!("mxc://localhost/{gone}")), "{out}");
    assert!(
        out.contains("keep.txt") && out.contains("image/png"),
        "{out}"
    );
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(err.contains(&user), "{err}");

    let (ok, out, err) = hearth(&["media", "delete", &format!("mxc://localhost/{gone}")]);
    assert!(ok, "{err}");
    assert!(out.contains("deleted"), "{out}");
    assert_eq!(stored_files(&data_dir).len(), 1);
    let (ok, _, err) = hearth(&["media", "delete", &format!("mxc://localhost/{gone}")]);
    assert!(!ok);
    assert!(err.contains("no such media"), "{err}");
    let (ok, _, err) = hearth(&["media", "delete", "mxc://elsewhere.org/abc"]);
    assert!(!ok, "{err}");

    // Purging before an old date keeps everything; before a future date removes all.
    let (ok, out, err) = hearth(&["media", "purge", "--before", "2000-01-01"]);
    assert!(ok, "{err}");
    assert!(out.contains("purged 0"), "{out}");
    let (ok, out, err) = hearth(&["media", "purge", "--before", "2999-01-01"]);
    assert!(ok, "{err}");
    assert!(out.contains("purged 1"), "{out}");
    assert!(stored_files(&data_dir).is_empty());
    let (ok, _, err) = hearth(&["media", "purge", "--before", "yesterday"]);
    assert!(!ok);
    assert!(err.contains("YYYY-MM-DD"), "{err}");

    let server = hearth::server::start(srv.config.clone()).await.unwrap();
    srv.base = server.base_url();
    srv.server = Some(server);
    let (status, _) = srv
        .get(&format!("{V1}/download/localhost/{keep}"), Some(&token))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // The quota counter went back to zero with the deletions: the whole quota is free.
    srv.server.take().unwrap().stop().await;
    srv.config.media.quota_bytes_per_user = 600_000;
    let server = hearth::server::start(srv.config.clone()).await.unwrap();
    srv.base = server.base_url();
    srv.server = Some(server);
    upload(&srv, &token, &bytes(600_000, 12), "video/mp4", None).await;
}

#[tokio::test]
async fn create_is_limited_per_user() {
    let srv = server().await;
    let (_, alice, _) = srv.register("alice", "pw").await;
    let (_, bob, _) = srv.register("bob", "pw").await;
    for _ in 0..16 {
        let (status, body) = srv
            .post("/_matrix/media/v1/create", Some(&alice), json!({}))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (status, body) = srv
        .post("/_matrix/media/v1/create", Some(&alice), json!({}))
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(errcode(&body), "M_LIMIT_EXCEEDED");
    assert!(body["retry_after_ms"].as_u64().is_some());
    // Another user is not affected.
    let (status, _) = srv
        .post("/_matrix/media/v1/create", Some(&bob), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = srv.post("/_matrix/media/v1/create", None, json!({})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}
