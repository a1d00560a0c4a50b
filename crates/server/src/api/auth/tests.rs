use std::collections::BTreeMap;

use tonic::Code;

use super::*;

/// SHA-256 of "test", from the standard's test vectors.
const TEST_HASH: &str = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

fn spec(text: &str) -> TokenSpec {
    text.parse().unwrap()
}

fn headers(value: Option<&str>) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    if let Some(value) = value {
        map.insert(http::header::AUTHORIZATION, value.parse().unwrap());
    }
    map
}

fn tokens() -> AuthConfig {
    AuthConfig::Tokens(
        Tokens::new(vec![
            spec(&format!("app:client:shop={}", TokenHash::of("app-secret"))),
            spec(&format!("ops:operator={}", TokenHash::of("ops-secret"))),
            spec(&format!("svc:participant={}", TokenHash::of("svc-secret"))),
            spec(&format!(
                "both:client+operator={}",
                TokenHash::of("both-secret")
            )),
        ])
        .unwrap(),
    )
}

#[test]
fn hashes_are_sha256_in_hex() {
    assert_eq!(TokenHash::of("test").to_string(), TEST_HASH);
    assert_eq!(
        TEST_HASH.parse::<TokenHash>().unwrap(),
        TokenHash::of("test")
    );
    let upper = TEST_HASH.replace("9f86", "9F86");
    assert_eq!(upper.parse::<TokenHash>().unwrap(), TokenHash::of("test"));
    assert!(TokenHash::of("test").matches(&TokenHash::of("test")));
    assert!(!TokenHash::of("test").matches(&TokenHash::of("tesT")));
}

#[test]
fn parses_token_entries() {
    let s = spec(&format!("app-1:client:shop.eu={TEST_HASH}"));
    assert_eq!(s.name, "app-1");
    assert!(s.roles.contains(Role::Client) && !s.roles.contains(Role::Operator));
    assert_eq!(s.namespace.as_deref(), Some("shop.eu"));
    assert_eq!(s.hash, TokenHash::of("test"));

    let s = spec(&format!("ops:operator+client+participant={TEST_HASH}"));
    assert_eq!(s.roles, Roles::ALL);
    assert_eq!(s.roles.to_string(), "client+operator+participant");
    assert_eq!(s.namespace, None);
}

#[test]
fn refuses_bad_entries_naming_what_is_wrong() {
    let cases = [
        ("app:client", "expected NAME:ROLES"),
        (&format!("app={TEST_HASH}") as &str, "expected NAME:ROLES"),
        (&format!("a:client:ns:x={TEST_HASH}"), "expected NAME:ROLES"),
        (&format!(":client={TEST_HASH}"), "token name"),
        (&format!("a b:client={TEST_HASH}"), "token name"),
        (&format!("app:admin={TEST_HASH}"), "unknown role \"admin\""),
        (&format!("app:client,operator={TEST_HASH}"), "unknown role"),
        (&format!("app:client+={TEST_HASH}"), "unknown role"),
        (
            &format!("app:operator:ns={TEST_HASH}"),
            "binds a client token",
        ),
        (
            &format!("app:client+operator:ns={TEST_HASH}"),
            "binds a client token",
        ),
        (
            &format!("app:participant:ns={TEST_HASH}"),
            "binds a client token",
        ),
        (
            &format!("app:client:n/s={TEST_HASH}"),
            "namespace may hold only",
        ),
        ("app:client=sha256:abcd", "64 hex digits"),
        (
            "app:client=9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            "64 hex digits",
        ),
    ];
    for (text, expected) in cases {
        let err = text.parse::<TokenSpec>().unwrap_err().to_string();
        assert!(err.contains(expected), "{text}: {err}");
    }
}

#[test]
fn errors_never_repeat_a_token_given_by_mistake() {
    for text in [
        "hunter2-plain-token",
        "app:client=hunter2-plain-token",
        "app:client:hunter2-plain/token=sha256:00",
    ] {
        let err = text.parse::<TokenSpec>().unwrap_err().to_string();
        assert!(!err.contains("hunter2"), "{text}: {err}");
    }
}

#[test]
fn token_files_skip_comments_and_name_the_bad_line() {
    let text = format!(
        "# tokens\n\napp:client={TEST_HASH}\n  ops:operator={}  \n",
        TokenHash::of("x")
    );
    let specs = parse_token_lines(&text).unwrap();
    assert_eq!(specs.len(), 2);
    assert_eq!(specs[1].name, "ops");
    let err = parse_token_lines("# x\napp:client=nothash\n")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("line 2: token \"app\""), "{err}");
}

#[test]
fn token_sets_are_non_empty_with_unique_names_and_hashes() {
    assert!(Tokens::new(vec![])
        .unwrap_err()
        .to_string()
        .contains("no auth tokens"));
    let a = spec(&format!("a:client={TEST_HASH}"));
    let a_again = spec(&format!("a:operator={}", TokenHash::of("other")));
    let b_same_hash = spec(&format!("b:operator={TEST_HASH}"));
    assert!(Tokens::new(vec![a.clone(), a_again])
        .unwrap_err()
        .to_string()
        .contains("twice"));
    assert!(Tokens::new(vec![a, b_same_hash])
        .unwrap_err()
        .to_string()
        .contains("same hash"));
}

#[test]
fn every_rpc_of_the_proto_has_a_role() {
    let proto = include_str!("../../../../../proto/baton/v1/coordinator.proto");
    let rpcs: Vec<&str> = proto
        .lines()
        .filter_map(|l| l.trim().strip_prefix("rpc "))
        .filter_map(|l| l.split('(').next())
        .map(str::trim)
        .collect();
    assert_eq!(rpcs.len(), METHOD_ROLES.len(), "{rpcs:?}");
    for rpc in rpcs {
        assert!(
            required_role(&format!("/baton.v1.Coordinator/{rpc}")).is_some(),
            "{rpc} has no role"
        );
    }
    assert_eq!(required_role("/baton.v1.Coordinator/Unknown"), None);
    assert_eq!(required_role("/other.Service/Start"), None);
    assert_eq!(required_role("/baton.v1.CoordinatorX/Start"), None);
}

#[test]
fn check_authenticates_then_authorizes() {
    let auth = tokens();
    let start = "/baton.v1.Coordinator/Start";
    let list = "/baton.v1.Coordinator/List";

    let p = auth
        .check(start, &headers(Some("Bearer app-secret")))
        .unwrap();
    assert_eq!(p.name, "app");
    assert_eq!(p.scope, Scope::Namespace(Some("shop".into())));
    // The scheme is case-insensitive.
    assert!(auth
        .check(start, &headers(Some("bearer app-secret")))
        .is_ok());

    for bad in [
        None,
        Some("Bearer wrong"),
        Some("Basic app-secret"),
        Some("Bearer "),
        Some("app-secret"),
    ] {
        let status = auth.check(start, &headers(bad)).unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{bad:?}");
        assert!(!status.message().contains("secret"), "{}", status.message());
    }
    let long = format!("Bearer {}", "x".repeat(2000));
    assert_eq!(
        auth.check(start, &headers(Some(&long))).unwrap_err().code(),
        Code::Unauthenticated
    );

    let denied = auth
        .check(list, &headers(Some("Bearer app-secret")))
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(
        denied.message().contains("needs the operator role"),
        "{}",
        denied.message()
    );
    assert!(denied.message().contains("\"app\""), "{}", denied.message());

    // Roles do not imply each other.
    let start_as_ops = auth
        .check(start, &headers(Some("Bearer ops-secret")))
        .unwrap_err();
    assert_eq!(start_as_ops.code(), Code::PermissionDenied);
    let both = auth
        .check(start, &headers(Some("Bearer both-secret")))
        .unwrap();
    assert_eq!(both.scope, Scope::All);
    assert!(auth
        .check(list, &headers(Some("Bearer both-secret")))
        .is_ok());

    // An unknown method is denied to a valid token, and unauthenticated without one.
    let unknown = "/baton.v1.Coordinator/DropEverything";
    assert_eq!(
        auth.check(unknown, &headers(Some("Bearer both-secret")))
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    assert_eq!(
        auth.check(unknown, &headers(None)).unwrap_err().code(),
        Code::Unauthenticated
    );

    let open = AuthConfig::Disabled.check(unknown, &headers(None)).unwrap();
    assert_eq!(open, Principal::anonymous());
}

#[test]
fn namespaces_stamp_and_hide_transactions() {
    let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let shop = Principal {
        name: "app".into(),
        roles: Roles::default().with(Role::Client),
        scope: Scope::Namespace(Some("shop".into())),
    };
    let default = Principal {
        scope: Scope::Namespace(None),
        ..shop.clone()
    };

    let mut mine = labels(&[("order", "1")]);
    shop.stamp(&mut mine).unwrap();
    assert_eq!(mine, labels(&[("order", "1"), (NAMESPACE_LABEL, "shop")]));
    shop.stamp(&mut mine).unwrap();
    let err = shop
        .stamp(&mut labels(&[(NAMESPACE_LABEL, "bank")]))
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().starts_with("labels[\"baton.namespace\"]"),
        "{}",
        err.message()
    );

    let mut plain = labels(&[("order", "1")]);
    default.stamp(&mut plain).unwrap();
    assert_eq!(plain, labels(&[("order", "1")]));
    assert_eq!(
        default.stamp(&mut mine.clone()).unwrap_err().code(),
        Code::PermissionDenied
    );

    let mut chosen = labels(&[(NAMESPACE_LABEL, "bank")]);
    Principal::anonymous().stamp(&mut chosen).unwrap();
    assert_eq!(chosen, labels(&[(NAMESPACE_LABEL, "bank")]));

    assert!(shop.sees(&mine) && !shop.sees(&plain) && !shop.sees(&chosen));
    assert!(default.sees(&plain) && !default.sees(&mine));
    assert!(Principal::anonymous().sees(&mine) && Principal::anonymous().sees(&plain));
}

#[test]
fn generated_tokens_are_random_and_long() {
    let (a, b) = (generate_token(), generate_token());
    assert_eq!(a.len(), 64);
    assert_ne!(a, b);
}
