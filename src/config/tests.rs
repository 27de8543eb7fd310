//! Unit tests of loading, overrides and validation.

use super::*;

fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    vars.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml_str(text, "test.toml", env(&[]))
}

fn with_env(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::from_toml_str("", "test.toml", env(vars))
}

#[test]
fn defaults() {
    let c = Config::default();
    assert_eq!(c.server_name, "localhost");
    assert_eq!(c.data_dir, PathBuf::from("./data"));
    assert_eq!(c.listeners[0].bind, "127.0.0.1:8008".parse().unwrap());
    assert_eq!(c.registration.mode, RegistrationMode::Open);
    assert_eq!(c.storage.engine, EngineKind::Redb);
    assert_eq!(
        (c.bcrypt_cost, c.storage.cache_mb, c.log_level.as_str()),
        (12, 8, "info")
    );
    assert_eq!(c.limits.max_request_bytes, 1_048_576);
    assert_eq!(c.public_base_url(), "http://localhost:8008");
    c.validate().unwrap();
}

#[test]
fn empty_file_and_no_file_are_the_defaults() {
    assert_eq!(parse("").unwrap(), Config::default());
    assert_eq!(
        Config::load_with_env(None, env(&[])).unwrap(),
        Config::default()
    );
    let c = parse("[well_known]\nclient_base_url = \"\"\nserver = \"\"\n").unwrap();
    assert_eq!(c, Config::default());
}

#[test]
fn example_config_parses_and_validates() {
    let c = parse(EXAMPLE_CONFIG).unwrap();
    assert_eq!(c.registration.mode, RegistrationMode::Token);
}

#[test]
fn every_example_file_parses_and_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            Config::load_with_env(Some(&path), env(&[]))
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            n += 1;
        }
    }
    assert!(n >= 3, "expected the example configs, found {n}");
}

#[test]
fn each_validation_error_names_its_key() {
    let cases = [
        ("server_name = \"bad name\"", "server_name"),
        ("server_name = \"example.org:99999\"", "server_name"),
        ("server_name = \"[::1\"", "server_name"),
        ("data_dir = \"\"", "data_dir"),
        ("log_level = \"debgu\"", "log_level"),
        ("log_level = \"hearth=loud\"", "log_level"),
        ("bcrypt_cost = 3", "bcrypt_cost"),
        ("bcrypt_cost = 32", "bcrypt_cost"),
        ("listeners = []", "listeners"),
        ("[[listeners]]\n[[listeners]]", "listeners[1].bind"),
        (
            "[limits]\nmax_request_bytes = 0",
            "limits.max_request_bytes",
        ),
        ("[limits]\nmax_upload_bytes = 0", "limits.max_upload_bytes"),
        (
            "[media]\nmax_thumbnail_pixels = 0",
            "media.max_thumbnail_pixels",
        ),
        (
            "[media]\nlegacy_download_freeze = \"2024-13-01\"",
            "media.legacy_download_freeze",
        ),
        (
            "[rate_limit]\nper_user_per_second = 0.0",
            "rate_limit.per_user_per_second",
        ),
        (
            "[rate_limit]\nper_ip_per_second = -1.0",
            "rate_limit.per_ip_per_second",
        ),
        (
            "[rate_limit]\nper_user_burst = 0",
            "rate_limit.per_user_burst",
        ),
        ("[rate_limit]\nper_ip_burst = 0", "rate_limit.per_ip_burst"),
        (
            "[well_known]\nclient_base_url = \"ftp://x\"",
            "well_known.client_base_url",
        ),
        ("[well_known]\nserver = \"x:y\"", "well_known.server"),
        ("[storage]\ncache_mb = 0", "storage.cache_mb"),
        ("trusted_proxies = [\"10.0.0.0/33\"]", "trusted_proxies[0]"),
        (
            "trusted_proxies = [\"::1\", \"proxy\"]",
            "trusted_proxies[1]",
        ),
        ("trusted_proxies = [\"10.0.0.1/x\"]", "trusted_proxies[0]"),
        (
            "[outbound]\nallow_networks = [\"10.0.0.0/8\", \"fd00::/129\"]",
            "outbound.allow_networks[1]",
        ),
        (
            "[outbound]\nallow_networks = [\"localhost\"]",
            "outbound.allow_networks[0]",
        ),
        (
            "[outbound]\nallow_networks = [\"192.168.1.0/\"]",
            "outbound.allow_networks[0]",
        ),
    ];
    for (text, key) in cases {
        match parse(text) {
            Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key, "{text}"),
            other => panic!("{text}: expected an error for {key}, got {other:?}"),
        }
    }
    let msg = parse("bcrypt_cost = 3").unwrap_err().to_string();
    assert_eq!(msg, "bcrypt_cost: must be between 4 and 31, got 3");
}

#[test]
fn outbound_section_parses_and_overrides() {
    let c = parse(
        "[outbound]\nallow_networks = [\"10.1.2.0/24\", \"::1\"]\nextra_ca_file = \"/etc/ca.pem\"",
    )
    .unwrap();
    let allowed = c.outbound.allow_networks();
    assert_eq!(allowed.len(), 2);
    assert!(allowed[0].contains("10.1.2.200".parse().unwrap()));
    assert!(!allowed[0].contains("10.1.3.1".parse().unwrap()));
    assert!(allowed[1].contains("::1".parse().unwrap()));
    assert_eq!(c.outbound.extra_ca_file, Some(PathBuf::from("/etc/ca.pem")));
    let c = parse("[outbound]\nextra_ca_file = \"\"").unwrap();
    assert_eq!(c.outbound, Outbound::default());
    let c = with_env(&[("HEARTH_OUTBOUND__ALLOW_NETWORKS", "[\"127.0.0.0/8\"]")]).unwrap();
    assert_eq!(c.outbound.allow_networks, vec!["127.0.0.0/8".to_owned()]);
    let err = with_env(&[("HEARTH_OUTBOUND__ALLOW_NETWORKS", "[\"nope\"]")]).unwrap_err();
    assert!(
        err.to_string().contains("outbound.allow_networks[0]"),
        "{err}"
    );
}

#[test]
fn valid_values_are_accepted() {
    for name in [
        "example.org",
        "example.org:8448",
        "1.2.3.4",
        "127.0.0.1:8448",
        "[::1]:8448",
        "a-b.c",
    ] {
        assert!(split_server_name(name).is_some(), "{name}");
    }
    for filter in [
        "warn",
        "TRACE",
        "hearth=debug,warn",
        "hearth::store=trace,warp=off",
    ] {
        assert!(valid_log_filter(filter), "{filter}");
    }
}

#[test]
fn wrong_types_and_syntax_errors_name_the_file() {
    let msg = parse("bcrypt_cost = \"twelve\"").unwrap_err().to_string();
    assert!(msg.contains("test.toml") && msg.contains("line 1"), "{msg}");
    let msg = parse("[registration]\nmode = \"sometimes\"")
        .unwrap_err()
        .to_string();
    assert!(msg.contains("sometimes") && msg.contains("line 2"), "{msg}");
}

#[test]
fn unknown_key_is_rejected_with_its_name() {
    let msg = parse("server_nmae = \"x\"").unwrap_err().to_string();
    assert!(msg.contains("server_nmae"), "{msg}");
    let msg = parse("[storage]\ncache_size = 1").unwrap_err().to_string();
    assert!(msg.contains("cache_size"), "{msg}");
    let msg = parse("[ratelimit]\nenabled = false")
        .unwrap_err()
        .to_string();
    assert!(msg.contains("ratelimit"), "{msg}");
}

#[test]
fn env_overrides_top_level_and_section() {
    let text = "server_name = \"file.org\"\n[registration]\nmode = \"closed\"\n";
    let vars = env(&[
        ("HEARTH_SERVER_NAME", "example.org"),
        ("HEARTH_REGISTRATION__MODE", "token"),
        ("HEARTH_STORAGE__ENGINE", "sled"),
        ("HEARTH_CONFIG", "/ignored.toml"),
        ("PATH", "/usr/bin"),
    ]);
    let c = Config::from_toml_str(text, "t", vars).unwrap();
    assert_eq!(c.server_name, "example.org");
    assert_eq!(c.registration.mode, RegistrationMode::Token);
    assert_eq!(c.storage.engine, EngineKind::Sled);
}

#[test]
fn env_values_are_typed() {
    let c = with_env(&[
        ("HEARTH_RATE_LIMIT__ENABLED", "false"),
        ("HEARTH_RATE_LIMIT__PER_IP_PER_SECOND", "2.5"),
        ("HEARTH_BCRYPT_COST", "10"),
        ("HEARTH_DATA_DIR", "1234"),
    ])
    .unwrap();
    assert!(!c.rate_limit.enabled);
    assert_eq!((c.rate_limit.per_ip_per_second, c.bcrypt_cost), (2.5, 10));
    assert_eq!(c.data_dir, PathBuf::from("1234"));
    let msg = with_env(&[("HEARTH_BCRYPT_COST", "lots")])
        .unwrap_err()
        .to_string();
    assert!(msg.contains("HEARTH_BCRYPT_COST"), "{msg}");
    let msg = with_env(&[("HEARTH_BCRYPT_COST", "99")])
        .unwrap_err()
        .to_string();
    assert!(msg.starts_with("bcrypt_cost:"), "{msg}");
}

#[test]
fn env_listeners_replace_the_list() {
    let text = "[[listeners]]\nbind = \"127.0.0.1:9000\"\n";
    let vars = env(&[("HEARTH_LISTENERS", "0.0.0.0:8008, [::]:8448")]);
    let c = Config::from_toml_str(text, "t", vars).unwrap();
    let binds: Vec<String> = c.listeners.iter().map(|l| l.bind.to_string()).collect();
    assert_eq!(binds, ["0.0.0.0:8008", "[::]:8448"]);
    let msg = with_env(&[("HEARTH_LISTENERS", "nowhere")])
        .unwrap_err()
        .to_string();
    assert!(msg.contains("HEARTH_LISTENERS"), "{msg}");
}

#[test]
fn env_unknown_variable_is_rejected() {
    for var in [
        "HEARTH_SERVERNAME",
        "HEARTH_REGISTRATON__MODE",
        "HEARTH_STORAGE__SIZE",
    ] {
        match with_env(&[(var, "x")]) {
            Err(e @ ConfigError::Env { .. }) => assert!(e.to_string().contains(var), "{e}"),
            other => panic!("{var}: {other:?}"),
        }
    }
    let msg = with_env(&[("HEARTH_SERVER_NAME__X", "y")])
        .unwrap_err()
        .to_string();
    assert!(msg.contains("HEARTH_SERVER_NAME__X"), "{msg}");
}

#[test]
fn explicit_missing_file_is_an_error_naming_the_path() {
    let path = Path::new("/nonexistent/hearth-test/hearth.toml");
    let msg = Config::load_with_env(Some(path), env(&[]))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("/nonexistent/hearth-test/hearth.toml"),
        "{msg}"
    );
}

#[test]
fn public_base_url_prefers_client_base_url() {
    let c = parse("[well_known]\nclient_base_url = \"https://matrix.example.org/\"").unwrap();
    assert_eq!(c.public_base_url(), "https://matrix.example.org");
    let c = parse("server_name = \"[::1]:8448\"\n[[listeners]]\nbind = \"[::]:9000\"").unwrap();
    assert_eq!(c.public_base_url(), "http://[::1]:9000");
}

#[test]
fn turn_settings_and_their_validation() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/turn/hearth.toml");
    let c = Config::load_with_env(Some(&path), env(&[])).unwrap();
    assert_eq!(c.turn.uris.len(), 3);
    assert!(c.turn.shared_secret.is_some() && c.turn.username.is_none());
    assert_eq!(Config::default().turn.ttl, DEFAULT_TURN_TTL);
    assert!(!Config::default().turn.is_configured());

    let c = with_env(&[
        ("HEARTH_TURN__URIS", "[\"turn:t.example.org\"]"),
        ("HEARTH_TURN__SHARED_SECRET", "s3cret"),
    ])
    .unwrap();
    assert_eq!(c.turn.shared_secret.as_deref(), Some("s3cret"));

    let uri = "uris = [\"turn:t.example.org:3478\"]";
    let cases = [
        (
            "uris = [\"http://t.example.org\"]\nshared_secret = \"s\"",
            "turn.uris[0]",
        ),
        (uri, "turn.uris"),
        ("shared_secret = \"s\"", "turn.uris"),
        (&format!("{uri}\nusername = \"u\""), "turn.username"),
        (
            &format!("{uri}\nshared_secret = \"s\"\nusername = \"u\"\npassword = \"p\""),
            "turn.shared_secret",
        ),
        (
            &format!("{uri}\nshared_secret = \"s\"\nttl = 5"),
            "turn.ttl",
        ),
    ];
    for (body, key) in cases {
        let text = format!("[turn]\n{body}\n");
        match parse(&text) {
            Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key, "{text}"),
            other => panic!("{text}: expected an error for {key}, got {other:?}"),
        }
    }
    parse(&format!(
        "[turn]\n{uri}\nusername = \"u\"\npassword = \"p\"\n"
    ))
    .unwrap();
}

#[test]
fn support_contacts_and_their_validation() {
    let c = parse(
        "[well_known]\nsupport_page = \"https://example.org/help\"\n\
         [[well_known.contacts]]\nrole = \"m.role.admin\"\nmatrix_id = \"@admin:example.org\"\n",
    )
    .unwrap();
    assert_eq!(c.well_known.contacts.len(), 1);
    let cases = [
        (
            "support_page = \"example.org/help\"",
            "well_known.support_page",
        ),
        (
            "[[well_known.contacts]]\nrole = \"m.role.admin\"",
            "well_known.contacts[0].matrix_id",
        ),
        (
            "[[well_known.contacts]]\nrole = \"m.role.admin\"\nmatrix_id = \"admin\"",
            "well_known.contacts[0].matrix_id",
        ),
        (
            "[[well_known.contacts]]\nrole = \"\"\nemail_address = \"a@example.org\"",
            "well_known.contacts[0].role",
        ),
        (
            "[[well_known.contacts]]\nrole = \"m.role.admin\"\nemail_address = \"nobody\"",
            "well_known.contacts[0].email_address",
        ),
    ];
    for (body, key) in cases {
        let text = format!("[well_known]\n{body}\n");
        match parse(&text) {
            Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key, "{text}"),
            other => panic!("{text}: expected an error for {key}, got {other:?}"),
        }
    }
}
