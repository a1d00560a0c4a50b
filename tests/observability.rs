//! Observability end to end: `/metrics` of a real `baton serve` process parses as Prometheus text
//! and moves when sagas run, and participants receive the caller's W3C trace context, also after
//! another coordinator took the transaction over.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use baton_tx::client::{Client, Saga, Step, TraceParent, TxState};
use baton_tx::participant::{HandlerError, Participant, Phase, Reply, Request, ServerHandle};
use baton_tx::trace::{TraceId, TRACE_LABEL};
use tokio::sync::Notify;

use support::db::fresh_database;
use support::process::{self, until};

// ---- a small, strict parser of the Prometheus text format (0.0.4) ------------------------------

/// One sample line.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A whole exposition: the declared families (name → type) and every sample.
#[derive(Debug, Default)]
struct Exposition {
    types: HashMap<String, String>,
    samples: Vec<Sample>,
}

impl Exposition {
    /// The value of the one sample with this name and exactly these labels.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let found: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| s.name == name && s.labels == want)
            .collect();
        assert_eq!(found.len(), 1, "one sample {name}{want:?}");
        found[0].value
    }
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_value(text: &str) -> Result<f64, String> {
    match text {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => text
            .parse::<f64>()
            .map_err(|_| format!("{text:?} is not a sample value")),
    }
}

/// `{a="x",b="y"}` → labels and the rest of the line after the closing brace.
fn parse_labels(text: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = text.strip_prefix('{').ok_or("labels must start with {")?;
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = rest.find('=').ok_or("label without =")?;
        let name = &rest[..eq];
        if !is_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or("label value must be quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?}")),
                },
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("label {name} given twice"));
        }
        rest = &rest[end + 1..];
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        } else if !rest.starts_with('}') {
            return Err("labels must be separated by ,".into());
        }
    }
}

/// The family a sample name belongs to, given the declared types.
fn family_of<'a>(name: &'a str, types: &HashMap<String, String>) -> Option<&'a str> {
    if types.contains_key(name) {
        return Some(name);
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if types.get(base).map(String::as_str) == Some("histogram") {
                return Some(base);
            }
        }
    }
    None
}

/// Parses the whole text; every rule broken is an error naming the line.
fn parse_exposition(text: &str) -> Result<Exposition, String> {
    let mut out = Exposition::default();
    let mut helps = HashSet::new();
    let mut finished_families: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    let mut series = HashSet::new();
    if !text.ends_with('\n') {
        return Err("the exposition must end with a newline".into());
    }
    for (n, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        if line.is_empty() {
            return Err(at("empty line".into()));
        }
        if let Some(comment) = line.strip_prefix("# ") {
            let mut parts = comment.splitn(3, ' ');
            let (kind, name, rest) = (parts.next(), parts.next(), parts.next());
            let name = name
                .filter(|n| is_metric_name(n))
                .ok_or_else(|| at("bad name".into()))?;
            match kind {
                Some("HELP") => {
                    if rest.is_none_or(str::is_empty) {
                        return Err(at("HELP without text".into()));
                    }
                    if !helps.insert(name.to_string()) {
                        return Err(at("second HELP".into()));
                    }
                }
                Some("TYPE") => {
                    let t = rest.ok_or_else(|| at("TYPE without a type".into()))?;
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&t) {
                        return Err(at(format!("unknown type {t}")));
                    }
                    if out
                        .samples
                        .iter()
                        .any(|s| family_of(&s.name, &out.types) == Some(name))
                    {
                        return Err(at("TYPE after the family's samples".into()));
                    }
                    if out.types.insert(name.to_string(), t.to_string()).is_some() {
                        return Err(at("second TYPE".into()));
                    }
                }
                _ => return Err(at("only HELP and TYPE comments are expected".into())),
            }
            continue;
        }
        if line.starts_with('#') {
            return Err(at("comment without a space after #".into()));
        }
        let name_end = line.find(['{', ' ']).ok_or_else(|| at("no value".into()))?;
        let name = &line[..name_end];
        if !is_metric_name(name) {
            return Err(at("bad metric name".into()));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).map_err(at)?
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let rest = rest
            .strip_prefix(' ')
            .ok_or_else(|| at("one space before the value".into()))?;
        let mut fields = rest.split(' ');
        let value = parse_value(fields.next().unwrap_or_default()).map_err(at)?;
        if let Some(ts) = fields.next() {
            ts.parse::<i64>().map_err(|_| at("bad timestamp".into()))?;
        }
        if fields.next().is_some() {
            return Err(at("trailing fields".into()));
        }
        let family = family_of(name, &out.types)
            .ok_or_else(|| at("sample of a family with no TYPE".into()))?
            .to_string();
        if current.as_deref() != Some(family.as_str()) {
            if finished_families.contains(&family) {
                return Err(at("family's samples are not together".into()));
            }
            if let Some(prev) = current.replace(family.clone()) {
                finished_families.insert(prev);
            }
        }
        let kind = out.types[&family].as_str();
        if kind == "counter" && (value.is_nan() || value < 0.0) {
            return Err(at("a counter must be a non-negative number".into()));
        }
        if kind == "histogram" && name.ends_with("_bucket") && !labels.contains_key("le") {
            return Err(at("a bucket needs le".into()));
        }
        if !series.insert(format!("{name}{labels:?}")) {
            return Err(at("duplicate series".into()));
        }
        out.samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    check_histograms(&out)?;
    Ok(out)
}

/// Buckets ascend by `le`, counts are cumulative, `+Inf` equals `_count`, `_sum` is there.
fn check_histograms(exp: &Exposition) -> Result<(), String> {
    for (family, _) in exp.types.iter().filter(|(_, t)| *t == "histogram") {
        let mut groups: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for s in exp
            .samples
            .iter()
            .filter(|s| s.name == format!("{family}_bucket"))
        {
            let le = parse_value(&s.labels["le"])?;
            let mut rest = s.labels.clone();
            rest.remove("le");
            groups
                .entry(format!("{rest:?}"))
                .or_default()
                .push((le, s.value));
        }
        if groups.is_empty() {
            return Err(format!("histogram {family} has no buckets"));
        }
        for (labels, buckets) in groups {
            for pair in buckets.windows(2) {
                if pair[1].0 <= pair[0].0 || pair[1].1 < pair[0].1 {
                    return Err(format!(
                        "{family}{labels}: buckets not cumulative: {buckets:?}"
                    ));
                }
            }
            let last = buckets.last().expect("a bucket");
            if last.0 != f64::INFINITY {
                return Err(format!("{family}{labels}: the last bucket is not +Inf"));
            }
            let find = |suffix: &str| {
                exp.samples
                    .iter()
                    .find(|s| {
                        let mut l = s.labels.clone();
                        l.remove("le");
                        s.name == format!("{family}{suffix}") && format!("{l:?}") == labels
                    })
                    .map(|s| s.value)
                    .ok_or_else(|| format!("{family}{labels}: no {suffix}"))
            };
            if find("_count")? != last.1 {
                return Err(format!("{family}{labels}: +Inf bucket differs from _count"));
            }
            let sum = find("_sum")?;
            if sum.is_nan() || sum < 0.0 {
                return Err(format!("{family}{labels}: negative _sum"));
            }
        }
    }
    Ok(())
}

#[test]
fn the_parser_refuses_what_prometheus_would() {
    let good = "# HELP a_total A.\n# TYPE a_total counter\na_total{k=\"v\"} 1\n\
                # HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\n\
                h_sum 3.5\nh_count 2\n";
    let exp = parse_exposition(good).expect("valid");
    assert_eq!(exp.value("a_total", &[("k", "v")]), 1.0);
    let bad = [
        // No TYPE, value missing, bad label quoting, duplicate series, non-cumulative buckets,
        // +Inf differing from _count, no trailing newline, a family split in two.
        "a 1\n",
        "# TYPE a gauge\na\n",
        "# TYPE a gauge\na{k=v} 1\n",
        "# TYPE a gauge\na 1\na 2\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n",
        "# TYPE a gauge\na 1",
        "# TYPE a gauge\n# TYPE b gauge\na{x=\"1\"} 1\nb 1\na{x=\"2\"} 1\n",
        "# TYPE a counter\na -1\n",
    ];
    for text in bad {
        assert!(parse_exposition(text).is_err(), "accepted {text:?}");
    }
}

// ---- the tests --------------------------------------------------------------------------------

/// What a participant saw of one call.
#[derive(Debug, Clone)]
struct Seen {
    tx_id: String,
    phase: Phase,
    trace: Option<TraceParent>,
}

/// A participant that records every call: `ok` succeeds, `fail` fails (a business failure),
/// `undo` compensates, and `hang` does not answer its very first call until `release` is notified.
async fn recording_participant(release: Arc<Notify>) -> (ServerHandle, Arc<Mutex<Vec<Seen>>>) {
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let record = |seen: &Arc<Mutex<Vec<Seen>>>, req: &Request| {
        seen.lock().unwrap().push(Seen {
            tx_id: req.tx_id.clone(),
            phase: req.phase,
            trace: req.traceparent().copied(),
        });
    };
    let (s1, s2, s3, s4) = (seen.clone(), seen.clone(), seen.clone(), seen.clone());
    let hung = Arc::new(AtomicBool::new(false));
    let server = Participant::new()
        .on_execute("ok", move |req: Request| {
            record(&s1, &req);
            async move { Ok(Reply::ok()) }
        })
        .on_execute("fail", move |req: Request| {
            record(&s2, &req);
            async move { Err(HandlerError::failed("declined")) }
        })
        .on_compensate("undo", move |req: Request| {
            record(&s3, &req);
            async move { Ok(Reply::ok()) }
        })
        .on_execute("hang", move |req: Request| {
            record(&s4, &req);
            let release = release.clone();
            let first = !hung.swap(true, Ordering::SeqCst);
            async move {
                if first {
                    release.notified().await;
                }
                Ok(Reply::ok())
            }
        })
        .serve("127.0.0.1:0")
        .await
        .expect("participant serves");
    (server, seen)
}

fn seen_for(seen: &Mutex<Vec<Seen>>, tx_id: &str) -> Vec<Seen> {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|s| s.tx_id == tx_id)
        .cloned()
        .collect()
}

async fn scrape(http: &str) -> Exposition {
    let (status, body) = process::http_get(http, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    parse_exposition(&body).unwrap_or_else(|e| panic!("{e}\n{body}"))
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_move_when_sagas_run() {
    let db = fresh_database().await;
    let (participant, _seen) = recording_participant(Arc::new(Notify::new())).await;
    let p = participant.endpoint();
    let co = process::coordinator(
        &db.url,
        "obs-1",
        &["--max-connections", "5", "--log-writers", "2"],
        &[],
    )
    .await;
    let client = Client::connect(co.endpoint.clone()).await.unwrap();

    let before = scrape(&co.http).await;
    assert_eq!(
        before.value("baton_transactions_started_total", &[("kind", "saga")]),
        0.0
    );
    let committed = client
        .run(
            Saga::new()
                .step(Step::to_endpoint("a", &p).action("ok").compensate("undo"))
                .step(Step::to_endpoint("b", &p).action("ok").compensate("undo")),
        )
        .await
        .unwrap();
    assert_eq!(committed.state, TxState::Committed);
    let compensated = client
        .run(
            Saga::new()
                .step(Step::to_endpoint("a", &p).action("ok").compensate("undo"))
                .step(Step::to_endpoint("b", &p).action("fail").compensate("undo")),
        )
        .await
        .unwrap();
    assert_eq!(compensated.state, TxState::Compensated);

    let after = scrape(&co.http).await;
    let moved = |name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };
    assert_eq!(
        moved("baton_transactions_started_total", &[("kind", "saga")]),
        2.0
    );
    for outcome in ["committed", "compensated"] {
        assert_eq!(
            moved(
                "baton_transactions_finished_total",
                &[("kind", "saga"), ("outcome", outcome)]
            ),
            1.0,
            "{outcome}"
        );
    }
    assert_eq!(after.value("baton_transactions_in_flight", &[]), 0.0);
    // Three executes answered OK, one FAILED, one compensation OK; each timed once.
    let step = "baton_step_duration_seconds_count";
    assert_eq!(moved(step, &[("phase", "execute"), ("outcome", "ok")]), 3.0);
    assert_eq!(
        moved(step, &[("phase", "execute"), ("outcome", "failed")]),
        1.0
    );
    assert_eq!(
        moved(step, &[("phase", "compensate"), ("outcome", "ok")]),
        1.0
    );
    assert_eq!(moved(step, &[("phase", "prepare"), ("outcome", "ok")]), 0.0);
    assert!(
        moved(
            "baton_step_duration_seconds_sum",
            &[("phase", "execute"), ("outcome", "ok")]
        ) > 0.0
    );
    assert_eq!(moved("baton_participant_calls_total", &[]), 5.0);
    // Every log write went through a batch: at least the two accepts and two outcomes.
    let batches = moved("baton_log_batch_size_count", &[]);
    assert!(batches >= 1.0, "{batches}");
    assert!(moved("baton_log_batch_size_sum", &[]) >= 4.0);
    assert_eq!(
        after.value("baton_log_batch_duration_seconds_count", &[]),
        after.value("baton_log_batch_size_count", &[])
    );
    assert_eq!(
        after.value("baton_log_batch_size_count", &[]),
        after.value("baton_log_batches_total", &[])
    );
    // The pool gauges describe the configured pools: 5 connections, plus one per log writer.
    assert_eq!(after.value("baton_db_pool_max_connections", &[]), 7.0);
    let open = after.value("baton_db_pool_connections", &[("state", "idle")])
        + after.value("baton_db_pool_connections", &[("state", "in_use")]);
    assert!((2.0..=7.0).contains(&open), "{open} connections open");
    participant.shutdown().await;
}

#[tokio::test]
async fn a_participant_receives_the_callers_trace_id() {
    let db = fresh_database().await;
    let release = Arc::new(Notify::new());
    let (participant, seen) = recording_participant(release.clone()).await;
    let p = participant.endpoint();
    let mut c1 = process::coordinator(&db.url, "obs-1", &[], &[]).await;
    let plain = Client::connect(c1.endpoint.clone()).await.unwrap();
    let caller = TraceParent::new_root();
    let traced = plain.with_traceparent(caller);

    // A saga that compensates: executes and a compensation all carry the caller's trace id,
    // each call with a span id of its own.
    let tx = traced
        .run(
            Saga::new()
                .step(Step::to_endpoint("a", &p).action("ok").compensate("undo"))
                .step(Step::to_endpoint("b", &p).action("fail").compensate("undo")),
        )
        .await
        .unwrap();
    assert_eq!(tx.state, TxState::Compensated);
    let calls = seen_for(&seen, &tx.id.to_string());
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert!(calls.iter().any(|c| c.phase == Phase::Compensate));
    let mut spans = HashSet::new();
    for call in &calls {
        let got = call.trace.expect("every call carries a traceparent");
        assert_eq!(got.trace_id(), caller.trace_id(), "{call:?}");
        assert_ne!(got.span_id(), caller.span_id(), "{call:?}");
        assert!(spans.insert(got.span_id()), "span ids repeat: {calls:?}");
    }
    // The transaction shows the trace it belongs to.
    assert_eq!(
        tx.labels.get(TRACE_LABEL).map(String::as_str),
        Some(caller.trace_id().to_string().as_str())
    );

    // Without a traceparent (or with an invalid one, which is ignored) the transaction's trace
    // id is its own id.
    let own = plain
        .run(Saga::new().step(Step::to_endpoint("a", &p).action("ok")))
        .await
        .unwrap();
    let mut raw = c1.client.clone();
    let mut bad = tonic::Request::new(baton_tx_proto::StartRequest {
        definition: Some(baton_tx_proto::start_request::Definition::Saga(
            baton_tx_proto::Saga {
                steps: vec![baton_tx_proto::SagaStep {
                    name: "a".into(),
                    endpoint: p.to_string(),
                    action: "ok".into(),
                    ..Default::default()
                }],
            },
        )),
        ..Default::default()
    });
    bad.metadata_mut().insert(
        "traceparent",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"
            .parse()
            .unwrap(),
    );
    let invalid = raw.start(bad).await.unwrap().into_inner().tx_id;
    process::wait(&mut raw, &invalid).await;
    let own_id = own.id.to_string();
    for id in [own_id.as_str(), invalid.as_str()] {
        let expected = TraceId::from_bytes(*uuid::Uuid::parse_str(id).unwrap().as_bytes()).unwrap();
        let calls = seen_for(&seen, id);
        assert_eq!(calls.len(), 1, "{calls:?}");
        assert_eq!(calls[0].trace.map(|t| t.trace_id()), Some(expected));
    }
    assert!(!own.labels.contains_key(TRACE_LABEL));

    // The label is the coordinator's: a client may not set it.
    let refused = plain
        .start(
            Saga::new()
                .step(Step::to_endpoint("a", &p).action("ok"))
                .label(TRACE_LABEL, caller.trace_id().to_string()),
        )
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("labels:"), "{refused}");

    // The trace survives a takeover: a coordinator killed while a call is out, and the one that
    // claims the transaction re-sends it in the same trace.
    let second = TraceParent::new_root();
    let started = plain
        .with_traceparent(second)
        .start(Saga::new().step(Step::to_endpoint("h", &p).action("hang")))
        .await
        .unwrap();
    let started_id = started.tx_id.to_string();
    until("the first delivery", || {
        !seen_for(&seen, &started_id).is_empty()
    })
    .await;
    c1.kill9().await;
    let c2 = process::coordinator(&db.url, "obs-2", &[], &[]).await;
    let mut c2_client = c2.client.clone();
    let done = process::wait(&mut c2_client, &started_id).await;
    assert_eq!(process::state(&done), baton_tx_proto::TxState::Committed);
    release.notify_waiters();
    // The first delivery came from c1, the later ones from c2, which read the trace from the log.
    let calls = seen_for(&seen, &started_id);
    assert!(
        calls.len() >= 2,
        "no redelivery after the takeover: {calls:?}"
    );
    for call in &calls {
        assert_eq!(
            call.trace.map(|t| t.trace_id()),
            Some(second.trace_id()),
            "{calls:?}"
        );
    }
    drop(participant);
}
