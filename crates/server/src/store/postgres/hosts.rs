//! Multi-host PostgreSQL URLs (libpq syntax) and finding the writable host among them.
//!
//! `postgres://user@h1:5432,h2:5433/db?target_session_attrs=read-write` names every node of an
//! HA formation (pg_auto_failover, Patroni, CloudNativePG's pods). sqlx connects to one host
//! only, so the log parses the list itself, asks each host in order whether it is in recovery,
//! and points its pools at the first one that is not: the primary. After a failover it asks
//! again (see `PgLog`).

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};

use super::super::StoreError;

/// libpq's default port, for a host named without one.
const DEFAULT_PORT: u16 = 5432;

/// At most this many hosts in one URL: an HA formation has a handful of nodes, and every
/// re-resolution may try each of them.
pub const MAX_HOSTS: usize = 16;

/// A parsed database URL: its hosts in order and the options shared by all of them.
#[derive(Clone, Debug)]
pub struct Targets {
    /// Connect options per host, in the URL's order (the order hosts are tried in).
    pub hosts: Vec<PgConnectOptions>,
    /// `host:port` of each entry of `hosts`, for logs and errors.
    pub names: Vec<String>,
    /// Whether only a primary will do: several hosts, or `target_session_attrs=read-write` (or
    /// `primary`). A single host without it is used as is, whatever it is (as before).
    pub need_primary: bool,
}

/// Parses `url`, which may name several `host[:port]` entries separated by commas (IPv6 hosts
/// in brackets). Each host gets the URL's user, password, database and parameters;
/// `target_session_attrs` is Baton's to interpret and is not passed to sqlx.
pub fn parse(url: &str) -> Result<Targets, StoreError> {
    let bad = |why: &str| StoreError::UnsupportedUrl(format!("{}: {why}", redact(url)));
    let (scheme, rest) = url
        .split_once("://")
        .filter(|(s, _)| *s == "postgres" || *s == "postgresql")
        .ok_or_else(|| bad("expected postgres://"))?;
    // The authority ends at the first '/' or '?'; user info ends at its last '@'.
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (userinfo, hostlist) = match authority.rfind('@') {
        Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
        None => (None, authority),
    };
    // Split off target_session_attrs (sqlx would only warn about it) and keep the rest.
    let (path, query) = match tail.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (tail, None),
    };
    let mut attrs = None;
    let mut kept = Vec::new();
    for pair in query.into_iter().flat_map(|q| q.split('&')) {
        match pair.split_once('=') {
            Some(("target_session_attrs", value)) => attrs = Some(value),
            _ if pair.is_empty() => {}
            _ => kept.push(pair),
        }
    }
    let need_primary = match attrs {
        None | Some("any") => false,
        Some("read-write") | Some("primary") => true,
        Some(other) => {
            return Err(bad(&format!(
                "target_session_attrs {other:?} is not supported (use read-write)"
            )))
        }
    };
    let mut entries = Vec::new();
    for entry in hostlist.split(',') {
        entries.push(host_port(entry).ok_or_else(|| bad(&format!("bad host {entry:?}")))?);
    }
    if entries.len() > MAX_HOSTS {
        return Err(bad(&format!("more than {MAX_HOSTS} hosts")));
    }
    let mut hosts = Vec::with_capacity(entries.len());
    let mut names = Vec::with_capacity(entries.len());
    for (host, port) in entries {
        let userinfo = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
        let query = if kept.is_empty() {
            String::new()
        } else {
            format!("?{}", kept.join("&"))
        };
        let one = format!("{scheme}://{userinfo}{host}:{port}{path}{query}");
        hosts.push(PgConnectOptions::from_str(&one).map_err(|e| bad(&e.to_string()))?);
        names.push(format!("{host}:{port}"));
    }
    Ok(Targets {
        need_primary: need_primary || hosts.len() > 1,
        hosts,
        names,
    })
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`; the host keeps its brackets (a URL needs them).
fn host_port(entry: &str) -> Option<(&str, u16)> {
    let (host, port) = if entry.starts_with('[') {
        let close = entry.find(']')?;
        let (host, after) = entry.split_at(close + 1);
        match after.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if after.is_empty() => (host, None),
            None => return None,
        }
    } else {
        match entry.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (entry, None),
        }
    };
    if host.is_empty() || host.contains(['/', '@', '?', ' ']) {
        return None;
    }
    let port = match port {
        Some(p) => p.parse().ok().filter(|&p| p > 0)?,
        None => DEFAULT_PORT,
    };
    Some((host, port))
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => match rest[..at].split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***{}", &rest[at..]),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// Whether the server behind `conn` takes writes: it is not in recovery (a standby), and it
/// does not make transactions read-only, which is how libpq's `target_session_attrs=read-write`
/// decides too. An old primary that comes back is read-only while its HA manager demotes it.
pub async fn is_primary(conn: &mut sqlx::PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT NOT pg_is_in_recovery() AND current_setting('transaction_read_only') = 'off'",
    )
    .fetch_one(conn)
    .await
}

/// The index of the first host, in order, that answers within `timeout` and is a primary.
pub async fn find_primary(targets: &Targets, timeout: Duration) -> Result<usize, StoreError> {
    let mut why = Vec::new();
    for (i, options) in targets.hosts.iter().enumerate() {
        let probe = async {
            let mut conn = options.connect().await?;
            let primary = is_primary(&mut conn).await;
            // Closing politely is a courtesy; the answer is what matters.
            let _ = conn.close().await;
            primary
        };
        match tokio::time::timeout(timeout, probe).await {
            Ok(Ok(true)) => return Ok(i),
            Ok(Ok(false)) => why.push(format!("{} is read-only", targets.names[i])),
            Ok(Err(e)) => why.push(format!("{}: {e}", targets.names[i])),
            Err(_) => why.push(format!("{}: no answer in {timeout:?}", targets.names[i])),
        }
    }
    Err(StoreError::Unavailable(format!(
        "no primary among the database hosts ({})",
        why.join("; ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_host_list_in_order_with_ports() {
        let t = parse("postgres://u:pw@h1:5432,h2:6000,h3/baton?sslmode=disable&target_session_attrs=read-write")
            .unwrap();
        assert_eq!(t.names, ["h1:5432", "h2:6000", "h3:5432"]);
        assert!(t.need_primary);
        assert_eq!(t.hosts[1].get_host(), "h2");
        assert_eq!(t.hosts[1].get_port(), 6000);
        assert_eq!(t.hosts[2].get_database(), Some("baton"));
        assert_eq!(t.hosts[0].get_username(), "u");
    }

    #[test]
    fn a_single_host_needs_a_primary_only_when_asked() {
        assert!(!parse("postgres://u@localhost/db").unwrap().need_primary);
        assert!(
            parse("postgresql://u@localhost/db?target_session_attrs=primary")
                .unwrap()
                .need_primary
        );
        assert!(
            parse("postgres://[::1]:5433,[::1]:5434/db")
                .unwrap()
                .need_primary
        );
    }

    #[test]
    fn refuses_what_it_cannot_honour() {
        for url in [
            "postgres://h1:5432,/db",
            "postgres://h1:port/db",
            "postgres://h1:0/db",
            "postgres://h1/db?target_session_attrs=read-only",
            "mysql://h1/db",
        ] {
            assert!(parse(url).is_err(), "{url} should be refused");
        }
        let many = (0..=MAX_HOSTS).map(|i| format!("h{i}")).collect::<Vec<_>>();
        assert!(parse(&format!("postgres://{}/db", many.join(","))).is_err());
    }

    #[test]
    fn messages_do_not_show_the_password() {
        let e = parse("postgres://u:secret@h1:x/db")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("secret"), "{e}");
    }
}
