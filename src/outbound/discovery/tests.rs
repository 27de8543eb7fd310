use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use super::*;

/// Lookups from tables; counts what was asked.
#[derive(Default)]
struct Fake {
    well_known: HashMap<String, WellKnownOutcome>,
    srv: HashMap<String, Result<Vec<SrvRecord>, String>>,
    asked_well_known: Mutex<Vec<String>>,
    asked_srv: Mutex<Vec<String>>,
}

impl Fake {
    fn with_well_known(mut self, host: &str, outcome: WellKnownOutcome) -> Self {
        self.well_known.insert(host.into(), outcome);
        self
    }

    fn with_srv(mut self, name: &str, records: &[(u16, u16, u16, &str)]) -> Self {
        let records = records
            .iter()
            .map(|&(priority, weight, port, target)| SrvRecord {
                priority,
                weight,
                port,
                target: target.into(),
            })
            .collect();
        self.srv.insert(name.into(), Ok(records));
        self
    }
}

impl Lookups for Fake {
    fn well_known(&self, host: &str) -> impl Future<Output = WellKnownOutcome> + Send {
        self.asked_well_known.lock().unwrap().push(host.into());
        let outcome = self
            .well_known
            .get(host)
            .cloned()
            .unwrap_or_else(|| WellKnownOutcome::Invalid("404".into()));
        async move { outcome }
    }

    fn srv(&self, name: &str) -> impl Future<Output = Result<Vec<SrvRecord>, String>> + Send {
        self.asked_srv.lock().unwrap().push(name.into());
        let records = self.srv.get(name).cloned().unwrap_or(Ok(Vec::new()));
        async move { records }
    }

    fn random(&self, _max: u32) -> u32 {
        0
    }
}

fn name(s: &str) -> Host {
    Host::Name(s.into())
}

fn ip(s: &str) -> Host {
    Host::Ip(s.parse().unwrap())
}

async fn run(server_name: &str, fake: &Fake) -> Route {
    discover(server_name, fake, DEFAULT_PORT).await.unwrap()
}

#[test]
fn server_names_split_per_the_grammar() {
    let ok = |s: &str| split_server_name(s).unwrap();
    assert_eq!(ok("example.org"), (name("example.org"), None));
    assert_eq!(ok("Example.ORG:8448"), (name("example.org"), Some(8448)));
    assert_eq!(ok("127.0.0.1"), (ip("127.0.0.1"), None));
    assert_eq!(ok("127.0.0.1:8448"), (ip("127.0.0.1"), Some(8448)));
    assert_eq!(ok("[::1]"), (ip("::1"), None));
    assert_eq!(
        ok("[1234:5678::abcd]:443"),
        (ip("1234:5678::abcd"), Some(443))
    );
    for bad in [
        "", ":8448", "a:", "a:0", "a:65536", "a:123456", "a b", "::1", "[::1", "[nope]:1",
        "[::1]x", "a_b.org", "a:1:2", "a:+1",
    ] {
        assert!(
            split_server_name(bad).is_none(),
            "{bad:?} should be refused"
        );
    }
}

#[tokio::test]
async fn ip_literals_and_explicit_ports_skip_well_known_and_srv() {
    let fake = Fake::default();
    let r = run("127.0.0.1", &fake).await;
    assert_eq!(r.targets, vec![(ip("127.0.0.1"), 8448)]);
    assert_eq!(
        (r.tls_name, r.host_header.as_str()),
        (ip("127.0.0.1"), "127.0.0.1")
    );
    let r = run("[::1]:9000", &fake).await;
    assert_eq!(r.targets, vec![(ip("::1"), 9000)]);
    assert_eq!(
        (r.tls_name, r.host_header.as_str()),
        (ip("::1"), "[::1]:9000")
    );
    let r = run("matrix.example.org:4443", &fake).await;
    assert_eq!(r.targets, vec![(name("matrix.example.org"), 4443)]);
    assert_eq!(r.tls_name, name("matrix.example.org"));
    assert_eq!(r.host_header, "matrix.example.org:4443");
    assert!(r.well_known.is_none() && r.srv.is_none());
    assert!(fake.asked_well_known.lock().unwrap().is_empty());
    assert!(fake.asked_srv.lock().unwrap().is_empty());
    assert_eq!(
        discover("not a name", &fake, DEFAULT_PORT).await,
        Err(OutboundError::InvalidUrl)
    );
}

#[tokio::test]
async fn delegation_to_an_ip_or_a_name_with_port_is_used_as_is() {
    let delegated = |d: &str| {
        Fake::default().with_well_known("example.org", WellKnownOutcome::Delegated(d.into()))
    };
    let r = run("example.org", &delegated("10.1.2.3")).await;
    assert_eq!(r.targets, vec![(ip("10.1.2.3"), 8448)]);
    assert_eq!(
        (r.tls_name, r.host_header.as_str()),
        (ip("10.1.2.3"), "10.1.2.3")
    );
    let r = run("example.org", &delegated("[2001:db8::1]:443")).await;
    assert_eq!(r.targets, vec![(ip("2001:db8::1"), 443)]);
    assert_eq!(r.host_header, "[2001:db8::1]:443");
    let fake = delegated("matrix.example.org:443");
    let r = run("example.org", &fake).await;
    assert_eq!(r.targets, vec![(name("matrix.example.org"), 443)]);
    assert_eq!(r.tls_name, name("matrix.example.org"));
    assert_eq!(r.host_header, "matrix.example.org:443");
    assert_eq!(
        r.well_known,
        Some(WellKnownOutcome::Delegated("matrix.example.org:443".into()))
    );
    assert!(fake.asked_srv.lock().unwrap().is_empty());
}

#[tokio::test]
async fn delegation_to_a_bare_name_uses_its_srv_records_then_8448() {
    let base = || {
        Fake::default().with_well_known(
            "example.org",
            WellKnownOutcome::Delegated("matrix.example.org".into()),
        )
    };
    // _matrix-fed first; the certificate and Host are the delegated name, not the SRV target.
    let fake = base()
        .with_srv(
            "_matrix-fed._tcp.matrix.example.org.",
            &[(10, 0, 443, "a.example.net.")],
        )
        .with_srv(
            "_matrix._tcp.matrix.example.org.",
            &[(10, 0, 8448, "b.example.net.")],
        );
    let r = run("example.org", &fake).await;
    assert_eq!(r.targets, vec![(name("a.example.net."), 443)]);
    assert_eq!(r.tls_name, name("matrix.example.org"));
    assert_eq!(r.host_header, "matrix.example.org");
    assert_eq!(
        r.srv.as_deref(),
        Some("_matrix-fed._tcp.matrix.example.org.")
    );
    // Only the deprecated record.
    let fake = base().with_srv(
        "_matrix._tcp.matrix.example.org.",
        &[(10, 0, 8448, "b.example.net.")],
    );
    let r = run("example.org", &fake).await;
    assert_eq!(r.targets, vec![(name("b.example.net."), 8448)]);
    assert_eq!(r.srv.as_deref(), Some("_matrix._tcp.matrix.example.org."));
    // None: the delegated name on 8448.
    let fake = base();
    let r = run("example.org", &fake).await;
    assert_eq!(r.targets, vec![(name("matrix.example.org"), 8448)]);
    assert_eq!(r.host_header, "matrix.example.org");
    assert_eq!(
        *fake.asked_srv.lock().unwrap(),
        vec![
            "_matrix-fed._tcp.matrix.example.org.".to_owned(),
            "_matrix._tcp.matrix.example.org.".to_owned()
        ]
    );
}

#[tokio::test]
async fn without_delegation_the_server_names_srv_then_8448_are_used() {
    for outcome in [
        WellKnownOutcome::Invalid("404".into()),
        WellKnownOutcome::Unreachable("connection refused".into()),
    ] {
        let fake = Fake::default()
            .with_well_known("example.org", outcome.clone())
            .with_srv(
                "_matrix-fed._tcp.example.org.",
                &[(5, 0, 8443, "fed.example.org.")],
            );
        let r = run("example.org", &fake).await;
        assert_eq!(r.targets, vec![(name("fed.example.org."), 8443)]);
        assert_eq!(r.tls_name, name("example.org"));
        assert_eq!(r.host_header, "example.org");
        assert_eq!(r.well_known, Some(outcome));
    }
    // A failing DNS server is like no record; no record at all is port 8448.
    let mut fake = Fake::default();
    fake.srv.insert(
        "_matrix-fed._tcp.example.org.".into(),
        Err("SERVFAIL".into()),
    );
    let r = run("example.org", &fake).await;
    assert_eq!(r.targets, vec![(name("example.org"), 8448)]);
    // "." as the only target: the service is decidedly not available.
    let fake = Fake::default().with_srv("_matrix-fed._tcp.example.org.", &[(0, 0, 0, ".")]);
    assert_eq!(
        discover("example.org", &fake, DEFAULT_PORT).await,
        Err(OutboundError::Dns)
    );
}

#[test]
fn srv_records_are_ordered_by_priority_then_weighted_draw() {
    let rec = |priority, weight, target: &str| SrvRecord {
        priority,
        weight,
        port: 1,
        target: target.into(),
    };
    let records = vec![
        rec(20, 0, "late"),
        rec(10, 60, "heavy"),
        rec(10, 0, "zero"),
        rec(10, 40, "light"),
    ];
    let order = |draws: &[u32]| {
        let mut draws = draws.iter().copied();
        order_srv(records.clone(), |max| draws.next().unwrap_or(0).min(max))
            .into_iter()
            .map(|r| r.target)
            .collect::<Vec<_>>()
    };
    // Draw 0 picks the weight-0 record (placed first); 1..=60 "heavy", 61..=100 "light".
    assert_eq!(order(&[0, 0, 0, 0]), ["zero", "heavy", "light", "late"]);
    assert_eq!(order(&[100, 60, 0, 0]), ["light", "heavy", "zero", "late"]);
    assert_eq!(order(&[30, 0, 0, 0]), ["heavy", "zero", "light", "late"]);
}

#[test]
fn well_known_bodies_and_cache_headers_are_parsed() {
    assert_eq!(
        parse_well_known(br#"{"m.server": "matrix.example.org:443"}"#),
        Ok("matrix.example.org:443".into())
    );
    for bad in [
        &b"not json"[..],
        br#"{}"#,
        br#"{"m.server": 8448}"#,
        br#"{"m.server": "https://matrix.example.org"}"#,
        br#"{"m.server": ""}"#,
    ] {
        assert!(
            parse_well_known(bad).is_err(),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
    let h = |s: &str| cache_control_ttl(Some(s));
    assert_eq!(h("max-age=3600"), Some(Duration::from_secs(3600)));
    assert_eq!(h("public, Max-Age=\"60\""), Some(Duration::from_secs(60)));
    assert_eq!(h("max-age=60, no-cache"), Some(Duration::ZERO));
    assert_eq!(h("public"), None);
    assert_eq!(cache_control_ttl(None), None);

    let ok = WellKnownOutcome::Delegated("m.example.org".into());
    let ttl = |outcome: &WellKnownOutcome, header: Option<u64>, failures| {
        well_known_ttl(outcome, header.map(Duration::from_secs), failures).as_secs()
    };
    assert_eq!(ttl(&ok, None, 0), 24 * 3600);
    assert_eq!(ttl(&ok, Some(7 * 24 * 3600), 0), 48 * 3600);
    assert_eq!(ttl(&ok, Some(0), 0), 60);
    assert_eq!(ttl(&ok, Some(600), 0), 600);
    let down = WellKnownOutcome::Unreachable("refused".into());
    assert_eq!(ttl(&down, None, 1), 300);
    assert_eq!(ttl(&down, None, 2), 600);
    assert_eq!(ttl(&down, None, 4), 2400);
    assert_eq!(ttl(&down, None, 5), 3600);
    assert_eq!(ttl(&down, None, u32::MAX), 3600);
    let invalid = WellKnownOutcome::Invalid("404".into());
    assert_eq!(ttl(&invalid, Some(7200), 1), 3600);
    assert_eq!(ttl(&invalid, Some(120), 1), 120);
    assert_eq!(ttl(&invalid, None, 1), 300);
}

#[tokio::test]
async fn the_cache_keeps_answers_for_their_lifetime_and_fetches_once() {
    let cache = WellKnownCache::new(100);
    let fetches = AtomicUsize::new(0);
    let t0 = Instant::now();
    let answer = |outcome: WellKnownOutcome, ttl: Option<u64>| {
        fetches.fetch_add(1, SeqCst);
        async move { (outcome, ttl.map(Duration::from_secs)) }
    };
    let ok = WellKnownOutcome::Delegated("m.example.org:443".into());
    let got = cache
        .get_or_fetch("example.org", t0, || answer(ok.clone(), Some(600)))
        .await;
    assert_eq!(got, ok);
    // Fresh: not fetched again.
    let later = t0 + Duration::from_secs(599);
    let got = cache
        .get_or_fetch("example.org", later, || {
            answer(WellKnownOutcome::Invalid("x".into()), None)
        })
        .await;
    assert_eq!((got, fetches.load(SeqCst)), (ok.clone(), 1));
    // Expired, and the well-known host is down: the old delegation stays in use.
    let expired = t0 + Duration::from_secs(601);
    let down = WellKnownOutcome::Unreachable("refused".into());
    let got = cache
        .get_or_fetch("example.org", expired, || answer(down.clone(), None))
        .await;
    assert_eq!((got, fetches.load(SeqCst)), (ok.clone(), 2));
    // A definitive invalid answer replaces it.
    let gone = WellKnownOutcome::Invalid("404".into());
    let got = cache
        .get_or_fetch("example.org", expired + Duration::from_secs(301), || {
            answer(gone.clone(), None)
        })
        .await;
    assert_eq!((got, fetches.load(SeqCst)), (gone, 3));

    // Concurrent cold lookups of one host fetch once.
    let slow = || {
        fetches.fetch_add(1, SeqCst);
        async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            (WellKnownOutcome::Delegated("x.example:1".into()), None)
        }
    };
    let now = Instant::now();
    let (a, b) = tokio::join!(
        cache.get_or_fetch("cold.example", now, slow),
        cache.get_or_fetch("cold.example", now, slow)
    );
    assert_eq!(a, b);
    assert_eq!(fetches.load(SeqCst), 4);
}

#[tokio::test]
async fn the_cache_is_bounded() {
    let cache = WellKnownCache::new(3);
    let t0 = Instant::now();
    let answer = |ttl: u64| async move {
        (
            WellKnownOutcome::Delegated("m.example:1".into()),
            Some(Duration::from_secs(ttl)),
        )
    };
    cache.get_or_fetch("a", t0, || answer(100)).await;
    cache.get_or_fetch("b", t0, || answer(200)).await;
    cache.get_or_fetch("c", t0, || answer(300)).await;
    assert_eq!(cache.len(), 3);
    // Full: the soonest-expiring entry ("a") goes.
    cache.get_or_fetch("d", t0, || answer(400)).await;
    assert_eq!(cache.len(), 3);
    {
        let slots = cache.slots.lock().unwrap();
        assert!(!slots.contains_key("a") && slots.contains_key("d"));
    }
    // Past "b" and "c"'s expiry both go at the next insert.
    cache
        .get_or_fetch("e", t0 + Duration::from_secs(350), || answer(400))
        .await;
    assert_eq!(cache.len(), 2);
}

#[test]
fn redirects_resolve_to_https_urls_only() {
    let base: http::Uri = "https://example.org/.well-known/matrix/server"
        .parse()
        .unwrap();
    let go = |l: &str| redirect_target(&base, l).map(|u| u.to_string());
    assert_eq!(
        go("https://www.example.org/.well-known/matrix/server").as_deref(),
        Some("https://www.example.org/.well-known/matrix/server")
    );
    assert_eq!(go("/other").as_deref(), Some("https://example.org/other"));
    assert_eq!(
        go("server.json").as_deref(),
        Some("https://example.org/.well-known/matrix/server.json")
    );
    assert_eq!(
        go("//cdn.example.net/x").as_deref(),
        Some("https://cdn.example.net/x")
    );
    assert_eq!(go("http://example.org/.well-known/matrix/server"), None);
    assert_eq!(go("ftp://example.org/x"), None);
    assert_eq!(go("https:///nohost"), None);
}
