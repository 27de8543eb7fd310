use std::sync::Mutex;

use super::*;

type Answer = Result<http::Response<Bytes>, FetchError>;

/// A transport answering from a table: `(federation?, path-and-query or URL) → answer`, and
/// recording what was asked (with whether it was signed).
struct Fake {
    answers: Vec<(bool, String, Answer)>,
    asked: Mutex<Vec<(bool, String, bool)>>,
}

impl Fake {
    fn new(answers: Vec<(bool, &str, Answer)>) -> Self {
        Fake {
            answers: answers
                .into_iter()
                .map(|(f, p, a)| (f, p.to_owned(), a))
                .collect(),
            asked: Mutex::default(),
        }
    }

    fn answer(
        &self,
        federation: bool,
        target: String,
        sign: bool,
    ) -> Result<http::Response<Bytes>, FetchError> {
        self.asked
            .lock()
            .unwrap()
            .push((federation, target.clone(), sign));
        self.answers
            .iter()
            .find(|(f, p, _)| *f == federation && *p == target)
            .map(|(_, _, a)| a.clone())
            .unwrap_or_else(|| panic!("unexpected request {target}"))
    }

    fn asked(&self) -> Vec<(bool, String, bool)> {
        self.asked.lock().unwrap().clone()
    }
}

impl Transport for Fake {
    fn federation(
        &self,
        _destination: &ServerName,
        request: http::Request<Vec<u8>>,
        sign: bool,
        _timeout: Duration,
        max_body: usize,
    ) -> BoxFuture<Result<http::Response<Bytes>, FetchError>> {
        let answer = self
            .answer(true, request.uri().to_string(), sign)
            .and_then(|r| {
                if r.body().len() > max_body {
                    Err(FetchError::TooLarge)
                } else {
                    Ok(r)
                }
            });
        Box::pin(async move { answer })
    }

    fn get(
        &self,
        url: &str,
        _timeout: Duration,
        max_body: usize,
    ) -> BoxFuture<Result<http::Response<Bytes>, FetchError>> {
        let answer = self.answer(false, url.to_owned(), false).and_then(|r| {
            if r.body().len() > max_body {
                Err(FetchError::TooLarge)
            } else {
                Ok(r)
            }
        });
        Box::pin(async move { answer })
    }
}

fn response(
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<http::Response<Bytes>, FetchError> {
    let mut b = http::Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    Ok(b.body(Bytes::copy_from_slice(body)).unwrap())
}

fn remote_error(status: u16, errcode: Option<&str>) -> Result<http::Response<Bytes>, FetchError> {
    Err(FetchError::Remote {
        status: StatusCode::from_u16(status).unwrap(),
        errcode: errcode.map(str::to_owned),
        error: "x".into(),
    })
}

fn multipart_answer(second_part: &str) -> Result<http::Response<Bytes>, FetchError> {
    let body = format!(
        "--b\r\nContent-Type: application/json\r\n\r\n{{}}\r\n--b\r\n{second_part}\r\n--b--\r\n"
    );
    response(
        200,
        &[("content-type", "multipart/mixed; boundary=b")],
        body.as_bytes(),
    )
}

const FED: &str = "/_matrix/federation/v1/media/download/abc?timeout_ms=5000";
const LEGACY: &str =
    "/_matrix/media/v3/download/origin.example/abc?timeout_ms=5000&allow_remote=false";

fn origin() -> &'static ServerName {
    <&ServerName>::try_from("origin.example").unwrap()
}

#[test]
fn fallback_decision() {
    let e = |status: u16, errcode: Option<&str>| remote_error(status, errcode).unwrap_err();
    assert!(falls_back(&e(404, Some("M_UNRECOGNIZED"))));
    assert!(falls_back(&e(400, Some("M_UNRECOGNIZED"))));
    assert!(falls_back(&e(405, None)));
    assert!(falls_back(&e(404, None)));
    assert!(!falls_back(&e(404, Some("M_NOT_FOUND"))));
    assert!(!falls_back(&e(400, None)));
    assert!(!falls_back(&e(500, Some("M_UNRECOGNIZED"))));
    assert!(!falls_back(&e(502, None)));
    assert!(!falls_back(&FetchError::Transport("down".into())));
    assert!(!falls_back(&FetchError::TooLarge));
}

#[tokio::test]
async fn multipart_answer_is_read_and_signed() {
    let fake = Fake::new(vec![(
        true,
        FED,
        multipart_answer("Content-Type: text/plain\r\nContent-Disposition: attachment; filename=\"a.txt\"\r\n\r\nhello"),
    )]);
    let got = fetch(&fake, origin(), "abc", Kind::Download, 5000, 100)
        .await
        .unwrap();
    assert_eq!(got.bytes, Bytes::from_static(b"hello"));
    assert_eq!(got.content_type.as_deref(), Some("text/plain"));
    assert_eq!(got.filename.as_deref(), Some("a.txt"));
    assert_eq!(fake.asked(), vec![(true, FED.to_owned(), true)]);
}

#[tokio::test]
async fn unrecognised_endpoint_falls_back_to_the_legacy_one() {
    let fake = Fake::new(vec![
        (true, FED, remote_error(404, Some("M_UNRECOGNIZED"))),
        (
            true,
            LEGACY,
            response(
                200,
                &[
                    ("content-type", "image/png"),
                    ("content-disposition", "inline; filename*=utf-8''%C3%A9.png"),
                ],
                b"png",
            ),
        ),
    ]);
    let got = fetch(&fake, origin(), "abc", Kind::Download, 5000, 100)
        .await
        .unwrap();
    assert_eq!(got.bytes, Bytes::from_static(b"png"));
    assert_eq!(got.content_type.as_deref(), Some("image/png"));
    assert_eq!(got.filename.as_deref(), Some("é.png"));
    // The legacy endpoint is unauthenticated, and asked with allow_remote=false.
    assert_eq!(
        fake.asked(),
        vec![
            (true, FED.to_owned(), true),
            (true, LEGACY.to_owned(), false)
        ]
    );
}

#[tokio::test]
async fn not_found_does_not_fall_back() {
    let fake = Fake::new(vec![(true, FED, remote_error(404, Some("M_NOT_FOUND")))]);
    let err = fetch(&fake, origin(), "abc", Kind::Download, 5000, 100)
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Remote { status, .. } if status == 404));
    assert_eq!(fake.asked().len(), 1);
    let client = fetch_error(origin(), Kind::Download, 100, err);
    assert_eq!(
        (client.status.as_u16(), client.errcode),
        (404, "M_NOT_FOUND")
    );
}

#[tokio::test]
async fn thumbnails_ask_for_the_bucket_on_both_endpoints() {
    let spec = thumbnail::Spec {
        width: 96,
        height: 96,
        crop: true,
    };
    let fed =
        "/_matrix/federation/v1/media/thumbnail/abc?width=96&height=96&method=crop&timeout_ms=0";
    let legacy = "/_matrix/media/v3/thumbnail/origin.example/abc?width=96&height=96&method=crop&timeout_ms=0&allow_remote=false";
    let fake = Fake::new(vec![
        (true, fed, remote_error(400, Some("M_UNRECOGNIZED"))),
        (
            true,
            legacy,
            response(200, &[("content-type", "image/png")], b"thumb"),
        ),
    ]);
    let got = fetch(&fake, origin(), "abc", Kind::Thumbnail(spec), 0, 100)
        .await
        .unwrap();
    assert_eq!(got.bytes, Bytes::from_static(b"thumb"));
    assert_eq!(fake.asked().len(), 2);
}

#[tokio::test]
async fn location_is_followed_with_redirects() {
    let fake = Fake::new(vec![
        (
            true,
            FED,
            multipart_answer("Location: https://cdn.example/one\r\n"),
        ),
        (
            false,
            "https://cdn.example/one",
            response(302, &[("location", "/two")], b""),
        ),
        (
            false,
            "https://cdn.example/two",
            response(
                200,
                &[
                    ("content-type", "video/mp4"),
                    ("content-disposition", "inline; filename=v.mp4"),
                ],
                b"movie",
            ),
        ),
    ]);
    let got = fetch(&fake, origin(), "abc", Kind::Download, 5000, 100)
        .await
        .unwrap();
    assert_eq!(got.bytes, Bytes::from_static(b"movie"));
    assert_eq!(got.filename.as_deref(), Some("v.mp4"));
    assert_eq!(fake.asked().len(), 3);

    // A redirect loop ends.
    let looping = Fake::new(vec![
        (
            true,
            FED,
            multipart_answer("Location: https://cdn.example/loop\r\n"),
        ),
        (
            false,
            "https://cdn.example/loop",
            response(307, &[("location", "https://cdn.example/loop")], b""),
        ),
    ]);
    let err = fetch(&looping, origin(), "abc", Kind::Download, 5000, 100)
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Response(_)), "{err:?}");
    assert_eq!(looping.asked().len(), 1 + 1 + MAX_REDIRECTS);
}

#[tokio::test]
async fn size_cap_applies_to_every_path() {
    let big = "x".repeat(101);
    let fake = Fake::new(vec![(
        true,
        FED,
        multipart_answer(&format!("Content-Type: text/plain\r\n\r\n{big}")),
    )]);
    let err = fetch(&fake, origin(), "abc", Kind::Download, 5000, 100)
        .await
        .unwrap_err();
    assert_eq!(err, FetchError::TooLarge);
    let client = fetch_error(origin(), Kind::Download, 100, err);
    assert_eq!(
        (client.status.as_u16(), client.errcode),
        (502, "M_TOO_LARGE")
    );

    let fake = Fake::new(vec![
        (
            true,
            FED,
            multipart_answer("Location: https://cdn.example/big\r\n"),
        ),
        (
            false,
            "https://cdn.example/big",
            response(200, &[], big.as_bytes()),
        ),
    ]);
    let err = fetch(&fake, origin(), "abc", Kind::Download, 5000, 100)
        .await
        .unwrap_err();
    assert_eq!(err, FetchError::TooLarge);
}

#[test]
fn redirect_targets() {
    assert_eq!(
        absolute("https://a.example/x/y", "/z?q=1").as_deref(),
        Some("https://a.example/z?q=1")
    );
    assert_eq!(
        absolute("https://a.example/x", "http://b.example/").as_deref(),
        Some("http://b.example/")
    );
    assert_eq!(absolute("https://a.example/x", "//b.example/"), None);
    assert_eq!(absolute("https://a.example/x", "relative"), None);
    assert_eq!(absolute("https://a.example/x", "file:///etc/passwd"), None);
}

/// A transport whose federation answers come after a pause, counting requests.
struct Slow {
    calls: std::sync::atomic::AtomicUsize,
    body: &'static [u8],
}

impl Transport for Slow {
    fn federation(
        &self,
        _destination: &ServerName,
        _request: http::Request<Vec<u8>>,
        _sign: bool,
        _timeout: Duration,
        _max_body: usize,
    ) -> BoxFuture<Result<http::Response<Bytes>, FetchError>> {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let body = format!(
            "--b\r\nContent-Type: application/json\r\n\r\n{{}}\r\n--b\r\nContent-Type: text/plain\r\n\r\n{}\r\n--b--\r\n",
            String::from_utf8_lossy(self.body)
        );
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            response(
                200,
                &[("content-type", "multipart/mixed; boundary=b")],
                body.as_bytes(),
            )
        })
    }

    fn get(
        &self,
        _: &str,
        _: Duration,
        _: usize,
    ) -> BoxFuture<Result<http::Response<Bytes>, FetchError>> {
        Box::pin(async { Err(FetchError::Transport("no plain requests here".into())) })
    }
}

fn media(dir: &std::path::Path, freeze: Option<&str>) -> Media {
    let config = crate::config::Config {
        data_dir: dir.to_path_buf(),
        media: crate::config::Media {
            legacy_download_freeze: freeze.map(str::to_owned),
            ..Default::default()
        },
        ..Default::default()
    };
    let store = crate::store::Store::open(&dir.join("db"), crate::store::EngineKind::Redb, 1 << 20)
        .unwrap();
    Media::new(store, &config, "here.example".try_into().unwrap())
}

const AUTHED: Access = Access {
    timeout_ms: 1000,
    legacy: false,
    fetch: true,
};

#[tokio::test]
async fn concurrent_requests_share_one_fetch_and_the_copy_is_cached() {
    let dir = tempfile::tempdir().unwrap();
    let media = media(dir.path(), None);
    let slow = Slow {
        calls: Default::default(),
        body: b"shared bytes",
    };
    let requests =
        (0..6).map(|_| media.remote(&slow, "origin.example", "abc", Kind::Download, AUTHED));
    let results = futures_util::future::join_all(requests).await;
    for r in &results {
        let r = r.as_ref().unwrap();
        assert_eq!(r.size, 12);
        assert_eq!(r.content_type.as_deref(), Some("text/plain"));
        assert_eq!(
            std::fs::read(media.blob_path(&r.sha256)).unwrap(),
            b"shared bytes"
        );
    }
    assert_eq!(slow.calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    // Later requests are answered from the cache; a thumbnail is another item.
    media
        .remote(&slow, "origin.example", "abc", Kind::Download, AUTHED)
        .await
        .unwrap();
    assert_eq!(slow.calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    let spec = thumbnail::Spec {
        width: 30,
        height: 30,
        crop: true,
    };
    let thumb = media
        .remote(
            &slow,
            "origin.example",
            "abc",
            Kind::Thumbnail(spec),
            AUTHED,
        )
        .await
        .unwrap();
    assert_eq!(slow.calls.load(std::sync::atomic::Ordering::SeqCst), 2);
    // One file, referenced by both rows.
    assert_eq!(
        media.store.get::<MediaBlobs>(&thumb.sha256).unwrap(),
        Some(2)
    );
    // The bucket, not the asked size, names the cached thumbnail.
    let bucket = thumbnail::Spec {
        width: 32,
        height: 32,
        crop: true,
    };
    assert!(media
        .cached_remote("origin.example", "abc", Kind::Thumbnail(bucket))
        .unwrap()
        .is_some());
}

#[tokio::test]
async fn legacy_access_follows_allow_remote_and_the_freeze() {
    let dir = tempfile::tempdir().unwrap();
    let slow = Slow {
        calls: Default::default(),
        body: b"x",
    };
    let legacy = Access {
        legacy: true,
        ..AUTHED
    };
    let no_fetch = Access {
        fetch: false,
        ..legacy
    };
    {
        // No freeze: the legacy endpoints fetch, unless allow_remote=false.
        let media = media(dir.path(), None);
        let err = media
            .remote(&slow, "origin.example", "a", Kind::Download, no_fetch)
            .await
            .unwrap_err();
        assert_eq!(err.errcode, "M_NOT_FOUND");
        assert_eq!(slow.calls.load(std::sync::atomic::Ordering::SeqCst), 0);
        media
            .remote(&slow, "origin.example", "a", Kind::Download, legacy)
            .await
            .unwrap();
        media
            .remote(&slow, "origin.example", "a", Kind::Download, no_fetch)
            .await
            .unwrap();
        assert_eq!(slow.calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
    // A freeze in the past: a copy fetched after it is frozen, and nothing new is fetched.
    let media = media(dir.path(), Some("2024-09-01"));
    let err = media
        .remote(&slow, "origin.example", "a", Kind::Download, legacy)
        .await
        .unwrap_err();
    assert_eq!((err.status.as_u16(), err.errcode), (404, "M_NOT_FOUND"));
    let err = media
        .remote(&slow, "origin.example", "b", Kind::Download, legacy)
        .await
        .unwrap_err();
    assert_eq!(err.errcode, "M_NOT_FOUND");
    assert_eq!(slow.calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    // The authenticated endpoints serve it all the same.
    media
        .remote(&slow, "origin.example", "a", Kind::Download, AUTHED)
        .await
        .unwrap();
    // Bad names and ids are unknown media, asked of nobody.
    for (server, id) in [
        ("not a server", "a"),
        ("origin.example", "../x"),
        ("origin.example", ""),
    ] {
        let err = media
            .remote(&slow, server, id, Kind::Download, AUTHED)
            .await
            .unwrap_err();
        assert_eq!(err.errcode, "M_NOT_FOUND");
    }
    assert_eq!(slow.calls.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn cached_copies_can_be_dropped_and_are_fetched_again() {
    let dir = tempfile::tempdir().unwrap();
    let media = media(dir.path(), None);
    let slow = Slow {
        calls: Default::default(),
        body: b"cached",
    };
    let calls = || slow.calls.load(std::sync::atomic::Ordering::SeqCst);
    let spec = thumbnail::Spec {
        width: 32,
        height: 32,
        crop: true,
    };
    let one = media
        .remote(&slow, "origin.example", "one", Kind::Download, AUTHED)
        .await
        .unwrap();
    media
        .remote(
            &slow,
            "origin.example",
            "one",
            Kind::Thumbnail(spec),
            AUTHED,
        )
        .await
        .unwrap();
    media
        .remote(&slow, "origin.example", "two", Kind::Download, AUTHED)
        .await
        .unwrap();
    // The same bytes: one file with three references.
    let file = media.blob_path(&one.sha256);
    assert_eq!(media.store.get::<MediaBlobs>(&one.sha256).unwrap(), Some(3));

    assert!(media.delete_remote("origin.example", "one").await.unwrap());
    assert!(!media.delete_remote("origin.example", "one").await.unwrap());
    assert!(media
        .cached_remote("origin.example", "one", Kind::Thumbnail(spec))
        .unwrap()
        .is_none());
    assert_eq!(media.store.get::<MediaBlobs>(&one.sha256).unwrap(), Some(1));
    assert!(file.exists());
    media
        .remote(&slow, "origin.example", "one", Kind::Download, AUTHED)
        .await
        .unwrap();
    assert_eq!(calls(), 4);

    // Purging before a past date keeps everything; purging before tomorrow drops all of it.
    assert_eq!(media.purge_remote_before(1).await.unwrap(), 0);
    assert_eq!(
        media
            .purge_remote_before(now_ms() + 86_400_000)
            .await
            .unwrap(),
        2
    );
    assert_eq!(media.store.get::<MediaBlobs>(&one.sha256).unwrap(), None);
    assert!(!file.exists());
}
