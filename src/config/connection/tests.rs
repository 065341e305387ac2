use super::*;
use std::collections::HashMap;

fn resolve(s: &ConnectionSettings, vars: &[(&str, &str)]) -> Result<Endpoint, String> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    s.resolve(&move |k| map.get(k).cloned())
}

#[test]
fn redacts_passwords_in_urls() {
    for (url, shown) in [
        ("redis://u:p%40ss@h:1/0", "redis://u:***@h:1/0"),
        ("redis://:pw@h", "redis://:***@h"),
        ("rediss://pw@h:6380", "rediss://***@h:6380"),
        // An '@' after a '?': a user part holding '?', or a query value holding '@'. Neither
        // split can be trusted, so only the scheme is shown.
        ("redis://h:1?x=@y", "redis://<redacted>"),
        (
            "redis+unix:///s.sock?password=ab@cd",
            "redis+unix://<redacted>",
        ),
        ("redis://:pa?ss@h", "redis://<redacted>"),
        ("redis://u:p#w@h", "redis://u:***@h"),
        ("redis://:a@b@h/1", "redis://:***@h/1"),
        (
            "redis+unix:///s.sock?db=1&password=x",
            "redis+unix:///s.sock?db=1&password=***",
        ),
        (
            "redis+sentinel://u:p@a:1,b:2/m",
            "redis+sentinel://u:***@a:1,b:2/m",
        ),
        ("not a url with secret", "<not a URL>"),
    ] {
        assert_eq!(redact_url(url), shown, "{url}");
    }
    assert_eq!(format!("{:?}", Secret::new("hunter2")), "<redacted>");
}

#[test]
fn the_environment_fills_what_code_did_not_set() {
    let none = ConnectionSettings::default();
    let e = resolve(&none, &[]).unwrap();
    assert_eq!(
        e.address,
        Address::Url(Secret::new("redis://127.0.0.1:6379"))
    );
    assert_eq!((e.connections, e.wants_tls()), (1, false));
    let e = resolve(
        &none,
        &[
            ("REDIS_HOST", "cache.internal"),
            ("REDIS_PORT", "6380"),
            ("REDIS_DB", "3"),
            ("REDIS_PASSWORD", "p@ss/#%?"),
            ("REDIS_SSL", "TRUE"),
            ("REDIS_MAX_CONNECTIONS", "20"),
            ("REDIS_CONNECTION_TIMEOUT", "5"),
            ("REDIS_COMMAND_TIMEOUT", "150ms"),
        ],
    )
    .unwrap();
    assert_eq!(
        e.address,
        Address::Parts {
            host: "cache.internal".into(),
            port: 6380,
            db: 3
        }
    );
    assert_eq!(e.password.as_ref().unwrap().expose(), "p@ss/#%?");
    assert!(e.wants_tls());
    assert_eq!(e.connections, 20);
    assert_eq!(e.connect_timeout, Duration::from_secs(5));
    assert_eq!(e.command_timeout, Duration::from_millis(150));
    assert_eq!(e.describe(), "rediss://cache.internal:6380/3");
    // Code wins, item by item.
    let code = ConnectionSettings {
        url: Some(Secret::new("redis://10.0.0.1")),
        connections: Some(4),
        ..Default::default()
    };
    let e = resolve(
        &code,
        &[("REDIS_URL", "redis://x"), ("REDIS_MAX_CONNECTIONS", "9")],
    );
    let e = e.unwrap();
    assert_eq!(e.address, Address::Url(Secret::new("redis://10.0.0.1")));
    assert_eq!(e.connections, 4);
}

#[test]
fn sentinel_urls_are_parsed() {
    let code = |url: &str| ConnectionSettings {
        url: Some(Secret::new(url)),
        ..Default::default()
    };
    let e = resolve(&code("redis+sentinel://app:p%40ss@a:1,b/mymaster/2"), &[]).unwrap();
    assert_eq!(
        e.address,
        Address::Sentinel {
            nodes: vec![("a".into(), 1), ("b".into(), 26379)],
            master: "mymaster".into(),
            db: 2
        }
    );
    assert_eq!(e.username.as_deref(), Some("app"));
    assert_eq!(e.password.as_ref().unwrap().expose(), "p@ss");
    assert!(!e.wants_tls());
    assert_eq!(e.describe(), "redis+sentinel://a:1,b:26379/mymaster/2");
    let e = resolve(
        &code("rediss+sentinel://a/m"),
        &[("REDIS_SENTINEL_PASSWORD", "s")],
    );
    let e = e.unwrap();
    assert!(e.wants_tls());
    assert_eq!(e.sentinel_password.unwrap().expose(), "s");
    for (url, says) in [
        ("redis+sentinel://a:1", "names no master"),
        ("redis+sentinel:///m", "lists no Sentinel"),
        ("redis+sentinel://a:x/m", "port"),
        ("redis+sentinel://a/m/x", "database"),
    ] {
        let err = resolve(&code(url), &[]).unwrap_err();
        assert!(err.contains(says), "{url}: {err}");
    }
}

#[test]
fn bad_or_conflicting_variables_are_named() {
    let none = ConnectionSettings::default();
    for (vars, says) in [
        (
            vec![("REDIS_URL", "redis://a"), ("REDIS_HOST", "b")],
            "both set",
        ),
        (vec![("REDIS_PORT", "70000")], "REDIS_PORT"),
        (vec![("REDIS_DB", "-1")], "REDIS_DB"),
        (vec![("REDIS_SSL", "maybe")], "REDIS_SSL"),
        (
            vec![("REDIS_MAX_CONNECTIONS", "0")],
            "REDIS_MAX_CONNECTIONS",
        ),
        (
            vec![("REDIS_MAX_CONNECTIONS", "1000")],
            "REDIS_MAX_CONNECTIONS",
        ),
        (
            vec![("REDIS_COMMAND_TIMEOUT", "0")],
            "REDIS_COMMAND_TIMEOUT",
        ),
        (
            vec![("REDIS_CONNECTION_TIMEOUT", "fast")],
            "REDIS_CONNECTION_TIMEOUT",
        ),
        (vec![("REDIS_TLS_CERT_FILE", "/x")], "set both"),
        (
            vec![("REDIS_TLS_CA_FILE", "/nonexistent/ca.pem")],
            "cannot read",
        ),
        (vec![("REDIS_HOST", "a/b")], "REDIS_HOST"),
    ] {
        let err = resolve(&none, &vars).unwrap_err();
        assert!(err.contains(says), "{vars:?}: {err}");
    }
}
