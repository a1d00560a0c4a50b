//! Rendering for the operator commands: aligned tables, times, durations and JSON documents.
//!
//! A small formatter written here rather than a table crate: the CLI needs left-aligned columns
//! and nothing else, which is a few lines.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Map, Value};

use baton_tx::client::{Branch, Event, ParticipantInfo, Transaction, TxState};

/// A table with a header row; columns are as wide as their widest cell.
#[derive(Debug, Clone, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub fn new<S: Into<String>>(header: impl IntoIterator<Item = S>) -> Self {
        Table {
            header: header.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    /// Add a row; missing cells are blank, extra cells are dropped.
    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        let mut cells: Vec<String> = cells.into_iter().map(Into::into).collect();
        cells.resize(self.header.len(), String::new());
        self.rows.push(cells);
    }

    /// The table as text: columns separated by two spaces, the last column unpadded so lines
    /// carry no trailing blanks.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let last = row.len().saturating_sub(1);
            let mut line = String::new();
            for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                if i < last {
                    let pad = width - cell.chars().count();
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// A time as RFC 3339 in UTC, to the millisecond.
pub fn time(t: SystemTime) -> String {
    DateTime::<Utc>::from(t).to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// An optional time as [`time`] writes it; none as `-`.
pub fn time_or_dash(t: Option<SystemTime>) -> String {
    t.map_or_else(|| "-".to_string(), time)
}

/// Milliseconds since the Unix epoch (negative before it).
pub fn unix_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_millis()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

/// A signed millisecond difference as `+12ms` (negative when the clocks disagreed).
pub fn delta(ms: i64) -> String {
    if ms < 0 {
        format!("{ms}ms")
    } else {
        format!("+{ms}ms")
    }
}

/// Parse `--since`: an RFC 3339 time, or a duration back from `now` such as `90s`, `15m`, `1h`,
/// `2d` or `1h30m`.
pub fn parse_since(text: &str, now: SystemTime) -> Result<SystemTime, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(SystemTime::from(t));
    }
    let ago = parse_duration(text).map_err(|e| {
        format!("{e} (expected an RFC 3339 time like 2024-05-01T12:00:00Z or a duration like 1h)")
    })?;
    now.checked_sub(ago)
        .ok_or_else(|| format!("{text:?} reaches too far back"))
}

pub use crate::duration::parse_duration;

/// Parse a transaction state as operators write it (`running`, `failed`, ...).
pub fn parse_state(text: &str) -> Result<TxState, String> {
    text.trim().to_ascii_lowercase().parse().map_err(|_| {
        format!(
            "unknown state {text:?} (one of running, compensating, committed, compensated, \
             failed, preparing, committing, aborting, aborted)"
        )
    })
}

/// Parse a `key=value` label filter.
pub fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("label {text:?} must look like key=value")),
    }
}

fn or_dash(text: &str) -> &str {
    if text.is_empty() {
        "-"
    } else {
        text
    }
}

fn opt_or_dash(text: &Option<String>) -> String {
    or_dash(text.as_deref().unwrap_or_default()).to_string()
}

fn labels_text(labels: &std::collections::HashMap<String, String>) -> String {
    let mut pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.sort();
    pairs.join(",")
}

/// The `tx list` table.
pub fn tx_table(transactions: &[Transaction]) -> String {
    let mut table = Table::new([
        "ID",
        "KIND",
        "STATE",
        "CREATED",
        "UPDATED",
        "LABELS",
        "LAST ERROR",
    ]);
    for tx in transactions {
        table.row([
            tx.id.to_string(),
            tx.kind.as_str().to_string(),
            tx.state.to_string(),
            time(tx.created_at),
            time(tx.updated_at),
            or_dash(&labels_text(&tx.labels)).to_string(),
            opt_or_dash(&tx.last_error),
        ]);
    }
    table.render()
}

/// The transaction's header and branches, as `tx show` prints them before the timeline.
pub fn tx_detail(tx: &Transaction) -> String {
    let mut state = tx.state.to_string();
    if tx.in_doubt {
        state.push_str(" (in doubt)");
    }
    let owner = match &tx.owner {
        None => "-".to_string(),
        Some(owner) => format!("{owner} (epoch {})", tx.epoch),
    };
    let mut header = Table::new(["", ""]);
    let fields = [
        ("id:", tx.id.to_string()),
        ("kind:", tx.kind.as_str().to_string()),
        ("state:", state),
        ("labels:", or_dash(&labels_text(&tx.labels)).to_string()),
        ("idempotency key:", opt_or_dash(&tx.idempotency_key)),
        ("created:", time(tx.created_at)),
        ("updated:", time(tx.updated_at)),
        ("deadline:", time_or_dash(tx.deadline)),
        ("last error:", opt_or_dash(&tx.last_error)),
        ("owner:", owner),
    ];
    for (name, value) in fields {
        header.row([name.to_string(), value]);
    }
    // The header table's empty title row is not wanted.
    let header = header.render();
    let header = header.split_once('\n').map_or("", |(_, rest)| rest);

    let mut branches = Table::new([
        "INDEX",
        "NAME",
        "STAGE",
        "KIND",
        "TARGET",
        "STATE",
        "ATTEMPTS",
        "LAST ERROR",
    ]);
    for b in &tx.branches {
        branches.row([
            b.index.to_string(),
            b.name.clone(),
            b.stage.to_string(),
            b.kind.as_str().to_string(),
            or_dash(&b.target.to_string()).to_string(),
            b.status.to_string(),
            b.attempts.to_string(),
            opt_or_dash(&b.last_error),
        ]);
    }
    format!("{header}\nbranches:\n{}", branches.render())
}

/// The event timeline: each event's time, the time since the previous event and since the first,
/// the branch (by name when `branches` are known), kind and detail.
pub fn timeline(events: &[Event], branches: &[Branch]) -> String {
    let mut table = Table::new(["TIME", "+PREV", "+START", "BRANCH", "KIND", "DETAIL"]);
    let start = events.first().map_or(0, |e| unix_ms(e.at));
    let mut previous = start;
    for event in events {
        let at = unix_ms(event.at);
        let branch = match event.branch {
            None => "-".to_string(),
            Some(index) => match branches.iter().find(|b| b.index == index) {
                Some(b) => format!("{index} {}", b.name),
                None => index.to_string(),
            },
        };
        table.row([
            time(event.at),
            delta(at.saturating_sub(previous)),
            delta(at.saturating_sub(start)),
            branch,
            event.kind_name.clone(),
            or_dash(&event.detail).to_string(),
        ]);
        previous = at;
    }
    table.render()
}

/// The `participants list` table, with the answering coordinator's balancing state: the
/// service's policy, calls in flight, and until when a failing endpoint is passed over.
pub fn participants_table(participants: &[ParticipantInfo]) -> String {
    let mut table = Table::new([
        "SERVICE",
        "ENDPOINT",
        "WEIGHT",
        "ZONE",
        "EXPIRES",
        "POLICY",
        "OUTSTANDING",
        "EJECTED UNTIL",
    ]);
    for p in participants {
        table.row([
            p.service.clone(),
            p.endpoint.clone(),
            p.weight.to_string(),
            opt_or_dash(&p.zone),
            p.expires_at.map_or_else(|| "never".to_string(), time),
            opt_or_dash(&p.policy),
            p.outstanding.to_string(),
            time_or_dash(p.ejected_until),
        ]);
    }
    table.render()
}

/// Bytes for JSON output: text when they are UTF-8 (the JSON convention), base64 otherwise.
fn bytes_json(map: &mut Map<String, Value>, name: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(text) => map.insert(name.to_string(), Value::from(text)),
        Err(_) => map.insert(
            format!("{name}_base64"),
            Value::from(base64::engine::general_purpose::STANDARD.encode(bytes)),
        ),
    };
}

/// A transaction as JSON. The field names here are the stable interface scripts rely on.
pub fn tx_json(tx: &Transaction) -> Value {
    let branches: Vec<Value> = tx
        .branches
        .iter()
        .map(|b| {
            let mut map = Map::new();
            map.insert("index".into(), json!(b.index));
            map.insert("name".into(), json!(b.name));
            map.insert("stage".into(), json!(b.stage));
            map.insert("kind".into(), json!(b.kind.as_str()));
            map.insert("target".into(), json!(b.target.to_string()));
            map.insert("action".into(), json!(b.action));
            map.insert(
                "compensate".into(),
                json!(b.compensate.as_deref().unwrap_or_default()),
            );
            map.insert("state".into(), json!(b.status.as_str()));
            map.insert("attempts".into(), json!(b.attempts));
            bytes_json(&mut map, "output", &b.output);
            map.insert(
                "last_error".into(),
                json!(b.last_error.as_deref().unwrap_or_default()),
            );
            Value::Object(map)
        })
        .collect();
    json!({
        "tx_id": tx.id.to_string(),
        "kind": tx.kind.as_str(),
        "state": tx.state.as_str(),
        "labels": tx.labels,
        "idempotency_key": tx.idempotency_key.as_deref().unwrap_or_default(),
        "created_at": time(tx.created_at),
        "updated_at": time(tx.updated_at),
        "deadline_at": time_json(tx.deadline),
        "last_error": tx.last_error.as_deref().unwrap_or_default(),
        "owner": tx.owner.as_deref().unwrap_or_default(),
        "epoch": tx.epoch,
        "in_doubt": tx.in_doubt,
        "branches": branches,
    })
}

/// An event as JSON; `branch` is null for events about the whole transaction.
pub fn event_json(event: &Event) -> Value {
    json!({
        "tx_id": event.tx_id.to_string(),
        "seq": event.seq,
        "at": time(event.at),
        "at_ms": unix_ms(event.at),
        "kind": event.kind_name,
        "branch": event.branch,
        "detail": event.detail,
    })
}

/// A participant endpoint as JSON.
pub fn participant_json(p: &ParticipantInfo) -> Value {
    json!({
        "service": p.service,
        "endpoint": p.endpoint,
        "weight": p.weight,
        "zone": p.zone.as_deref().unwrap_or_default(),
        "expires_at": time_json(p.expires_at),
        "policy": p.policy,
        "outstanding": p.outstanding,
        "ejected_until": time_json(p.ejected_until),
    })
}

fn time_json(t: Option<SystemTime>) -> Value {
    t.map_or(Value::Null, |t| Value::from(time(t)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_tx::client::{StepKind, StepStatus, Target, TxKind};
    use std::time::Duration;

    #[test]
    fn table_aligns_columns_without_trailing_blanks() {
        let mut table = Table::new(["ID", "STATE", "NOTE"]);
        table.row(["1", "committed", ""]);
        table.row(["12345", "failed", "boom"]);
        table.row(["7"]);
        assert_eq!(
            table.render(),
            "ID     STATE      NOTE\n\
             1      committed\n\
             12345  failed     boom\n\
             7\n"
        );
    }

    #[test]
    fn times_and_deltas() {
        assert_eq!(time_or_dash(None), "-");
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(time(t), "2023-11-14T22:13:20.123Z");
        assert_eq!(unix_ms(t), 1_700_000_000_123);
        assert_eq!(unix_ms(UNIX_EPOCH - Duration::from_millis(5)), -5);
        assert_eq!(delta(0), "+0ms");
        assert_eq!(delta(1530), "+1530ms");
        assert_eq!(delta(-5), "-5ms");
    }

    #[test]
    fn since_takes_a_time_or_a_duration_back() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(10_000);
        assert_eq!(
            parse_since("1h", now),
            Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(6_400))
        );
        assert_eq!(
            parse_since("1970-01-01T00:00:10Z", now),
            Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(10))
        );
        assert!(parse_since("yesterday", now).is_err());
    }

    #[test]
    fn states_labels_and_enum_names() {
        assert_eq!(parse_state("failed"), Ok(TxState::Failed));
        assert_eq!(parse_state("Running"), Ok(TxState::Running));
        assert!(parse_state("unspecified").is_err());
        assert!(parse_state("done").is_err());
        assert_eq!(parse_label("order=42"), Ok(("order".into(), "42".into())));
        assert_eq!(parse_label("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(parse_label("order").is_err());
        assert!(parse_label("=1").is_err());
    }

    const T1: &str = "01890a5d-ac96-774b-bcce-b302099a8057";

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    fn sample() -> (Transaction, Vec<Event>) {
        let tx = Transaction {
            id: T1.parse().unwrap(),
            kind: TxKind::Saga,
            state: TxState::Compensated,
            labels: [("order".to_string(), "42".to_string())].into(),
            idempotency_key: None,
            created_at: at(1_700_000_000_000),
            updated_at: at(1_700_000_000_250),
            deadline: None,
            last_error: Some("charge: card declined".into()),
            owner: Some("c1".into()),
            epoch: 2,
            in_doubt: false,
            branches: vec![Branch {
                index: 0,
                name: "reserve".into(),
                stage: 0,
                kind: StepKind::Compensatable,
                target: Target::Service("inventory".into()),
                action: "reserve".into(),
                compensate: None,
                status: StepStatus::Compensated,
                attempts: 1,
                output: vec![0xff, 0x00],
                last_error: None,
            }],
        };
        let event = |seq: u64, ms: u64, branch: Option<u32>, kind: &str| Event {
            tx_id: tx.id,
            seq,
            at: at(ms),
            kind: kind.parse().ok(),
            kind_name: kind.into(),
            branch,
            detail: String::new(),
        };
        let events = vec![
            event(1, 1_700_000_000_000, None, "accepted"),
            event(2, 1_700_000_000_040, Some(0), "execute_ok"),
            event(3, 1_700_000_000_250, Some(0), "compensated"),
        ];
        (tx, events)
    }

    #[test]
    fn participants_show_the_balancing_state() {
        let p = ParticipantInfo {
            service: "pay".into(),
            endpoint: "http://10.0.0.1:9000".into(),
            weight: 1,
            zone: None,
            expires_at: None,
            policy: Some("least_outstanding".into()),
            outstanding: 3,
            ejected_until: Some(at(1_700_000_000_000)),
        };
        let table = participants_table(std::slice::from_ref(&p));
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "SERVICE  ENDPOINT              WEIGHT  ZONE  EXPIRES  POLICY             OUTSTANDING  EJECTED UNTIL"
        );
        assert_eq!(
            lines[1],
            "pay      http://10.0.0.1:9000  1       -     never    least_outstanding  3            2023-11-14T22:13:20.000Z"
        );
        let value = participant_json(&p);
        assert_eq!(value["policy"], "least_outstanding");
        assert_eq!(value["outstanding"], 3);
        assert_eq!(value["ejected_until"], "2023-11-14T22:13:20.000Z");
        assert_eq!(value["expires_at"], Value::Null);
    }

    #[test]
    fn detail_and_timeline() {
        let (tx, events) = sample();
        let detail = tx_detail(&tx);
        assert!(
            detail.starts_with(&format!("id:               {T1}\n")),
            "{detail}"
        );
        assert!(detail.contains("state:            compensated\n"));
        assert!(detail.contains("labels:           order=42\n"));
        assert!(detail.contains("deadline:         -\n"));
        assert!(detail.contains("owner:            c1 (epoch 2)\n"));
        assert!(detail.contains("INDEX  NAME     STAGE  KIND           TARGET     STATE"));
        let timeline = timeline(&events, &tx.branches);
        let lines: Vec<&str> = timeline.lines().collect();
        assert_eq!(
            lines[0],
            "TIME                      +PREV   +START  BRANCH     KIND         DETAIL"
        );
        assert_eq!(
            lines[1],
            "2023-11-14T22:13:20.000Z  +0ms    +0ms    -          accepted     -"
        );
        assert_eq!(
            lines[3],
            "2023-11-14T22:13:20.250Z  +210ms  +250ms  0 reserve  compensated  -"
        );
    }

    #[test]
    fn json_documents() {
        let (tx, events) = sample();
        let value = tx_json(&tx);
        assert_eq!(value["state"], "compensated");
        assert_eq!(value["deadline_at"], Value::Null);
        assert_eq!(value["created_at"], "2023-11-14T22:13:20.000Z");
        assert_eq!(value["branches"][0]["output_base64"], "/wA=");
        assert_eq!(event_json(&events[0])["branch"], Value::Null);
        assert_eq!(event_json(&events[1])["branch"], 0);
    }
}
