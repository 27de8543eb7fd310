//! Media figures against an in-process Hearth on 127.0.0.1: upload and download throughput
//! (MB/s) of one large file, and the peak resident memory of the process while the server
//! makes a thumbnail of a 4000×3000 JPEG the bench generates itself.
//!
//! `cargo run --release --example media_bench -- [--mb N]` (default 200 MB)

use std::{io::Cursor, time::Instant};

use hearth::config::{Config, Listener, RateLimit, Registration, RegistrationMode};
use serde_json::{json, Value};

fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Resets the peak-RSS counter (`VmHWM`) to the current RSS (Linux `clear_refs` 5).
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

async fn register(http: &reqwest::Client, base: &str) -> String {
    let url = format!("{base}/_matrix/client/v3/register");
    let body = json!({"username": "bench", "password": "pw"});
    let challenge: Value = http
        .post(&url)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let session = challenge["session"].as_str().unwrap();
    let body = json!({"username": "bench", "password": "pw",
        "auth": {"type": "m.login.dummy", "session": session}});
    let done: Value = http
        .post(&url)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    done["access_token"].as_str().unwrap().to_owned()
}

async fn upload(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    ct: &str,
    data: Vec<u8>,
) -> String {
    let response = http
        .post(format!("{base}/_matrix/media/v3/upload"))
        .bearer_auth(token)
        .header("content-type", ct)
        .body(data)
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "upload: {}",
        response.status()
    );
    let body: Value = response.json().await.unwrap();
    body["content_uri"]
        .as_str()
        .unwrap()
        .trim_start_matches("mxc://")
        .to_owned()
}

#[tokio::main]
async fn main() {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let mb: usize = match raw.as_slice() {
        [] => 200,
        [flag, n] if flag == "--mb" => n.parse().expect("--mb takes a number"),
        _ => {
            eprintln!("usage: media_bench [--mb N]");
            std::process::exit(2);
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        data_dir: dir.path().to_path_buf(),
        listeners: vec![Listener {
            bind: "127.0.0.1:0".parse().unwrap(),
        }],
        registration: Registration {
            mode: RegistrationMode::Open,
            ..Default::default()
        },
        bcrypt_cost: 4,
        rate_limit: RateLimit {
            enabled: false,
            ..Default::default()
        },
        log_level: "warn".into(),
        ..Default::default()
    };
    let mut config = config;
    config.limits.max_upload_bytes = (mb as u64 + 1) * 1024 * 1024;
    let server = hearth::server::start(config).await.unwrap();
    let base = server.base_url();
    let http = reqwest::Client::new();
    let token = register(&http, &base).await;

    // Thumbnail first, while the process is small: a 4000×3000 JPEG with detail everywhere.
    let jpeg = {
        let img = image::RgbImage::from_fn(4000, 3000, |x, y| {
            image::Rgb([(x % 251) as u8, (y % 241) as u8, ((x ^ y) % 239) as u8])
        });
        let mut out = Vec::new();
        image::DynamicImage::ImageRgb8(img)
            .write_to(&mut Cursor::new(&mut out), image::ImageFormat::Jpeg)
            .unwrap();
        out
    };
    let jpeg_len = jpeg.len();
    let id = upload(&http, &base, &token, "image/jpeg", jpeg).await;
    let rss_before = status_kb("VmRSS:");
    let peak_reset = reset_peak();
    for (w, h, method) in [(800, 600, "scale"), (96, 96, "crop")] {
        let started = Instant::now();
        let response = http
            .get(format!(
                "{base}/_matrix/client/v1/media/thumbnail/{id}?width={w}&height={h}&method={method}"
            ))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "thumbnail: {}",
            response.status()
        );
        let n = response.bytes().await.unwrap().len();
        println!(
            "thumbnail {w}x{h} {method} of a 4000x3000 JPEG ({:.1} MB): {:.0} ms, {n} bytes",
            jpeg_len as f64 / 1e6,
            started.elapsed().as_secs_f64() * 1000.0
        );
    }
    let peak = status_kb("VmHWM:");
    if peak_reset {
        println!(
            "process RSS before thumbnailing {:.1} MB, peak while thumbnailing {:.1} MB (+{:.1} MB)",
            rss_before as f64 / 1024.0,
            peak as f64 / 1024.0,
            peak.saturating_sub(rss_before) as f64 / 1024.0
        );
    } else {
        println!(
            "peak RSS of the process so far {:.1} MB (clear_refs unavailable)",
            peak as f64 / 1024.0
        );
    }

    // Throughput of one large file.
    let mut data = vec![0u8; mb * 1024 * 1024];
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = (x >> 24) as u8;
    }
    let total = data.len() as f64 / 1e6;
    let started = Instant::now();
    let id = upload(&http, &base, &token, "video/mp4", data).await;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "upload {total:.0} MB: {secs:.2} s, {:.0} MB/s (hashed, synced, renamed)",
        total / secs
    );

    let started = Instant::now();
    let mut response = http
        .get(format!("{base}/_matrix/client/v1/media/download/{id}"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let mut received = 0usize;
    while let Some(chunk) = response.chunk().await.unwrap() {
        received += chunk.len();
    }
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(received, mb * 1024 * 1024);
    println!(
        "download {total:.0} MB: {secs:.2} s, {:.0} MB/s (streamed)",
        total / secs
    );
    println!(
        "process peak RSS overall {:.1} MB (includes the bench's own {total:.0} MB buffer)",
        status_kb("VmHWM:") as f64 / 1024.0
    );

    server.stop().await;
}
