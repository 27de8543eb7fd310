//! HTTPS: certificate files with SIGHUP reload, `hearth check` against it, the `[tls]`
//! validation messages, and ACME end to end against pebble (a real ACME test server) on
//! loopback.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hearth::cli::check::{https_get, roots};
use hearth::config::Config;

const BIN: &str = env!("CARGO_BIN_EXE_hearth");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

fn ca() -> Ca {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "hearth test CA");
    let cert = params.self_signed(&key).unwrap();
    Ca { cert, key }
}

/// A leaf certificate for `names` signed by `ca`, written as PEM to `cert` and `key`.
fn leaf(ca: &Ca, names: &[&str], cert: &Path, key: &Path) {
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    let leaf = params.signed_by(&leaf_key, &ca.cert, &ca.key).unwrap();
    std::fs::write(cert, leaf.pem()).unwrap();
    std::fs::write(key, leaf_key.serialize_pem()).unwrap();
}

fn tls_roots(ca_pem: &Path) -> rustls::RootCertStore {
    roots(Some(ca_pem)).unwrap()
}

async fn wait_https(addr: SocketAddr, host: &str, ca_pem: &Path, child: &mut Child, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match https_get(
            addr,
            host,
            tls_roots(ca_pem),
            "/_matrix/client/versions",
            &["http/1.1"],
        )
        .await
        {
            Ok(r) if r.status == 200 => return,
            Ok(_) | Err(_) => {}
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("hearth exited: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "no HTTPS on {addr} within {secs}s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_mode_serves_https_h2_and_reloads_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca();
    let ca_pem = dir.path().join("ca.pem");
    std::fs::write(&ca_pem, ca.cert.pem()).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    leaf(&ca, &["localhost"], &cert, &key);
    let (plain, tls) = (free_port(), free_port());
    let tls_addr: SocketAddr = format!("127.0.0.1:{tls}").parse().unwrap();
    let env = [
        (
            "HEARTH_DATA_DIR",
            dir.path().join("data").display().to_string(),
        ),
        ("HEARTH_LISTENERS", format!("127.0.0.1:{plain}")),
        ("HEARTH_TLS__MODE", "files".into()),
        ("HEARTH_TLS__CERT", cert.display().to_string()),
        ("HEARTH_TLS__KEY", key.display().to_string()),
        ("HEARTH_TLS__LISTENERS", format!("[\"{tls_addr}\"]")),
        ("HEARTH_WELL_KNOWN__SERVER", format!("localhost:{tls}")),
        ("HEARTH_LOG_LEVEL", "warn".into()),
    ];
    let mut child = Command::new(BIN)
        .env_clear()
        .envs(env.clone())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_https(tls_addr, "localhost", &ca_pem, &mut child, 20).await;

    // HTTP/2 is offered by ALPN and chosen; HTTP/1.1 answers the client API.
    let r = https_get(
        tls_addr,
        "localhost",
        tls_roots(&ca_pem),
        "/",
        &["h2", "http/1.1"],
    )
    .await
    .unwrap();
    assert_eq!(r.alpn.as_deref(), Some("h2"));
    assert_eq!(r.names, vec!["localhost".to_owned()]);
    let r = https_get(
        tls_addr,
        "localhost",
        tls_roots(&ca_pem),
        "/_matrix/client/versions",
        &["http/1.1"],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body.contains("versions"), "{}", r.body);
    // An unknown endpoint over TLS is a Matrix error like on plain HTTP.
    let r = https_get(
        tls_addr,
        "localhost",
        tls_roots(&ca_pem),
        "/_matrix/nope",
        &["http/1.1"],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 404);
    assert!(r.body.contains("M_UNRECOGNIZED"));
    // A client that does not trust the CA is refused.
    assert!(https_get(
        tls_addr,
        "localhost",
        roots(None).unwrap(),
        "/",
        &["http/1.1"]
    )
    .await
    .is_err());

    // New files + SIGHUP: the next handshake shows the new certificate, no restart.
    leaf(&ca, &["localhost", "reloaded.test"], &cert, &key);
    assert!(Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = https_get(tls_addr, "localhost", tls_roots(&ca_pem), "/", &["h2"])
            .await
            .unwrap();
        if r.names.contains(&"reloaded.test".to_owned()) {
            break;
        }
        assert!(Instant::now() < deadline, "certificate not reloaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP must not stop it"
    );

    // `hearth check` reports what a remote server would see.
    let out = Command::new(BIN)
        .env_clear()
        .envs(env)
        .args([
            "check",
            "--name",
            "localhost",
            "--connect",
            &tls_addr.to_string(),
            "--ca",
            ca_pem.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("certificate valid for localhost, reloaded.test"),
        "{text}"
    );
    assert!(text.contains("ALPN h2"), "{text}");
    assert!(
        text.contains(&format!(
            "https://localhost/.well-known/matrix/server delegates to localhost:{tls}"
        )),
        "{text}"
    );
    assert!(
        text.contains("self-signature valid") && text.contains("keys ed25519:"),
        "{text}"
    );
    assert!(text.contains("client API answers"), "{text}");
    assert!(
        text.contains(&format!("https://{tls_addr}  accepting")),
        "{text}"
    );
    stop(child);

    // Without the CA, check reports the problem and fails.
    let out = Command::new(BIN)
        .env_clear()
        .env("HEARTH_DATA_DIR", dir.path().join("data"))
        .args([
            "check",
            "--name",
            "localhost",
            "--connect",
            &tls_addr.to_string(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("PROBLEM"));
}

#[test]
fn tls_config_is_validated_with_clear_messages() {
    let err = |text: &str| {
        Config::from_toml_str(text, "t", Vec::new())
            .unwrap_err()
            .to_string()
    };
    let e = err("[tls]\nmode = \"acme\"\nlisteners = [\"0.0.0.0:443\"]\n");
    assert!(e.contains("tls.email"), "{e}");
    let e = err("[tls]\nmode = \"acme\"\nemail = \"a@b.c\"\n");
    assert!(e.contains("tls.listeners") && e.contains("required"), "{e}");
    let e = err("[tls]\nmode = \"files\"\nlisteners = [\"0.0.0.0:443\"]\ncert = \"c.pem\"\n");
    assert!(e.contains("tls.key"), "{e}");
    let e = err("[tls]\nlisteners = [\"0.0.0.0:443\"]\n");
    assert!(e.contains("mode is \"off\""), "{e}");
    let e = err("[tls]\nmode = \"acme\"\nemail = \"a@b.c\"\nlisteners = [\"127.0.0.1:8008\"]\n");
    assert!(e.contains("listed twice"), "{e}");
    let e = err("server_name = \"127.0.0.1\"\n[tls]\nmode = \"acme\"\nemail = \"a@b.c\"\nlisteners = [\"0.0.0.0:443\"]\n");
    assert!(e.contains("tls.domains"), "{e}");
    for name in ["127.0.0.1:8448", "[::1]:8448"] {
        let e = err(&format!("server_name = \"{name}\"\n[tls]\nmode = \"acme\"\nemail = \"a@b.c\"\nlisteners = [\"0.0.0.0:8448\"]\n"));
        assert!(
            e.contains("tls.domains")
                && e.contains("ACME cannot issue a certificate for an IP address"),
            "{e}"
        );
    }
    // An IP-literal server name with certificate files is fine.
    Config::from_toml_str(
        "server_name = \"127.0.0.1:8448\"\n[tls]\nmode = \"files\"\nlisteners = [\"127.0.0.1:8448\"]\ncert = \"c.pem\"\nkey = \"k.pem\"\n",
        "t",
        Vec::new(),
    )
    .unwrap();
    let e = err("[tls]\nmode = \"acme\"\nemail = \"a@b.c\"\nlisteners = [\"0.0.0.0:443\"]\ndirectory = \"nope\"\n");
    assert!(e.contains("tls.directory"), "{e}");
    let e = err("[tls]\nmode = \"tls\"\n");
    assert!(e.contains("acme") || e.contains("unknown variant"), "{e}");
    let ok = Config::from_toml_str(
        "server_name = \"example.org\"\n[tls]\nmode = \"acme\"\nemail = \"a@example.org\"\nlisteners = [\"[::]:443\"]\n",
        "t",
        Vec::new(),
    )
    .unwrap();
    assert_eq!(ok.tls.acme_domains(&ok.server_name), vec!["example.org"]);
    assert_eq!(
        ok.tls.directory_url(),
        "https://acme-v02.api.letsencrypt.org/directory"
    );
}

/// Kills the child on drop (pebble and its DNS helper).
struct Guard(Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn which(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
}

/// ACME end to end: pebble (with pebble-challtestsrv answering DNS with 127.0.0.1) issues a
/// certificate for `hearth.test` over TLS-ALPN-01 on Hearth's HTTPS listener; a client that
/// trusts only pebble's root connects. Ignored by a plain `cargo test` (it needs pebble);
/// `.ci/run` installs pebble and runs it with `--include-ignored`. When run, pebble is required.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs pebble (apt-get install pebble); .ci/run runs it"]
async fn acme_certificate_from_pebble() {
    assert!(
        which("pebble") && which("pebble-challtestsrv"),
        "pebble and pebble-challtestsrv are required (apt-get install pebble)"
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // pebble's own HTTPS (the ACME directory) needs a certificate; our CA signs it.
    let ca = ca();
    let ca_pem = d.join("ca.pem");
    std::fs::write(&ca_pem, ca.cert.pem()).unwrap();
    leaf(
        &ca,
        &["localhost", "127.0.0.1"],
        &d.join("pebble-cert.pem"),
        &d.join("pebble-key.pem"),
    );
    let (dns, dns_mgmt, acme, mgmt, tls, plain) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let _dns = Guard(
        Command::new("pebble-challtestsrv")
            .args([
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
                "-dns01",
                &format!("127.0.0.1:{dns}"),
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-management",
                &format!("127.0.0.1:{dns_mgmt}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let config = serde_json::json!({"pebble": {
        "listenAddress": format!("127.0.0.1:{acme}"),
        "managementListenAddress": format!("127.0.0.1:{mgmt}"),
        "certificate": d.join("pebble-cert.pem"),
        "privateKey": d.join("pebble-key.pem"),
        "httpPort": free_port(),
        "tlsPort": tls,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": false
    }});
    std::fs::write(d.join("pebble.json"), config.to_string()).unwrap();
    let pebble_log = std::fs::File::create(d.join("pebble.log")).unwrap();
    let _pebble = Guard(
        Command::new("pebble")
            .args(["-config", d.join("pebble.json").to_str().unwrap()])
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(pebble_log.try_clone().unwrap())
            .stderr(pebble_log)
            .spawn()
            .unwrap(),
    );
    let tls_addr: SocketAddr = format!("127.0.0.1:{tls}").parse().unwrap();
    let data = d.join("data");
    let log = std::fs::File::create(d.join("hearth.log")).unwrap();
    let mut child = Command::new(BIN)
        .env_clear()
        .env("HEARTH_SERVER_NAME", "hearth.test")
        .env("HEARTH_DATA_DIR", &data)
        .env("HEARTH_LISTENERS", format!("127.0.0.1:{plain}"))
        .env("HEARTH_TLS__MODE", "acme")
        .env("HEARTH_TLS__EMAIL", "admin@hearth.test")
        .env(
            "HEARTH_TLS__DIRECTORY",
            format!("https://127.0.0.1:{acme}/dir"),
        )
        .env("HEARTH_TLS__DIRECTORY_CA", &ca_pem)
        .env("HEARTH_TLS__LISTENERS", format!("[\"{tls_addr}\"]"))
        .env("HEARTH_LOG_LEVEL", "info,rustls_acme=debug")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();

    // pebble's issuing root, from its management interface (its own HTTPS uses our CA).
    let issuer_pem = d.join("pebble-root.pem");
    let mgmt_addr: SocketAddr = format!("127.0.0.1:{mgmt}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let root = loop {
        match https_get(
            mgmt_addr,
            "localhost",
            tls_roots(&ca_pem),
            "/roots/0",
            &["http/1.1"],
        )
        .await
        {
            Ok(r) if r.status == 200 && r.body.contains("BEGIN CERTIFICATE") => break r.body,
            _ => {}
        }
        assert!(Instant::now() < deadline, "pebble did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The body may be chunked; keep only the PEM block.
    let start = root.find("-----BEGIN").unwrap();
    let end = root.find("-----END CERTIFICATE-----").unwrap() + "-----END CERTIFICATE-----".len();
    std::fs::write(&issuer_pem, format!("{}\n", &root[start..end])).unwrap();

    let deadline = Instant::now() + Duration::from_secs(45);
    let result = loop {
        if let Ok(r) = https_get(
            tls_addr,
            "hearth.test",
            roots(Some(&issuer_pem)).unwrap(),
            "/_matrix/client/versions",
            &["http/1.1"],
        )
        .await
        {
            break r;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "hearth exited {status}: {}",
                std::fs::read_to_string(d.join("hearth.log")).unwrap()
            );
        }
        if Instant::now() > deadline {
            panic!(
                "no certificate from pebble within 45 s\nhearth log:\n{}\npebble log:\n{}",
                std::fs::read_to_string(d.join("hearth.log")).unwrap(),
                std::fs::read_to_string(d.join("pebble.log")).unwrap()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(result.status, 200);
    assert_eq!(result.names, vec!["hearth.test".to_owned()]);
    // The cache holds the account key and the certificate key: private to the server's user.
    use std::os::unix::fs::PermissionsExt;
    let cache = data.join("acme");
    assert_eq!(
        std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let files: Vec<_> = std::fs::read_dir(&cache).unwrap().flatten().collect();
    assert!(files.len() >= 2, "account and certificate cached");
    for f in files {
        let mode = f.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{:?} has mode {mode:o}", f.path());
    }
    stop(child);

    // A restart deploys the cached certificate without a new order.
    let log = std::fs::File::create(d.join("hearth2.log")).unwrap();
    let mut child = Command::new(BIN)
        .env_clear()
        .env("HEARTH_SERVER_NAME", "hearth.test")
        .env("HEARTH_DATA_DIR", &data)
        .env("HEARTH_LISTENERS", format!("127.0.0.1:{plain}"))
        .env("HEARTH_TLS__MODE", "acme")
        .env("HEARTH_TLS__EMAIL", "admin@hearth.test")
        .env(
            "HEARTH_TLS__DIRECTORY",
            format!("https://127.0.0.1:{acme}/dir"),
        )
        .env("HEARTH_TLS__DIRECTORY_CA", &ca_pem)
        .env("HEARTH_TLS__LISTENERS", format!("[\"{tls_addr}\"]"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    wait_https(tls_addr, "hearth.test", &issuer_pem, &mut child, 20).await;
    stop(child);
    let log = std::fs::read_to_string(d.join("hearth2.log")).unwrap();
    assert!(log.contains("DeployedCachedCert"), "{log}");
}
