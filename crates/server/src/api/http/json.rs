//! Between JSON and the gRPC messages: requests are read from a parsed [`Value`] field by field,
//! so every refusal names the full path of the field (`saga.steps[0].kind`), and unknown fields
//! are refused rather than ignored; responses are written with lowercase names for states and
//! kinds, ids as strings and times both as RFC 3339 text and Unix milliseconds.

use std::collections::HashMap;

use base64::Engine;
use serde_json::{json, Map, Value};

use super::api::ApiError;
use crate::proto;

/// One JSON object being read. Every field taken is removed; [`Obj::finish`] refuses the rest.
pub struct Obj {
    path: String,
    map: Map<String, Value>,
}

impl Obj {
    /// `value` as an object at `path` (`""` for the body itself).
    pub fn new(path: &str, value: Value) -> Result<Obj, ApiError> {
        match value {
            Value::Object(map) => Ok(Obj {
                path: path.to_string(),
                map,
            }),
            other => Err(ApiError::invalid(
                if path.is_empty() { "body" } else { path },
                format!("expected an object, got {}", type_name(&other)),
            )),
        }
    }

    /// The path of `key` within this object.
    pub fn field(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// The value of `key`; an explicit `null` counts as absent, as an unset proto field does.
    fn take(&mut self, key: &str) -> Option<Value> {
        self.map.remove(key).filter(|v| !v.is_null())
    }

    pub fn has(&self, key: &str) -> bool {
        self.map.get(key).is_some_and(|v| !v.is_null())
    }

    pub fn string(&mut self, key: &str) -> Result<String, ApiError> {
        match self.take(key) {
            None => Ok(String::new()),
            Some(Value::String(s)) => Ok(s),
            Some(other) => Err(self.wrong(key, "a string", &other)),
        }
    }

    pub fn u64(&mut self, key: &str) -> Result<u64, ApiError> {
        match self.take(key) {
            None => Ok(0),
            Some(Value::Number(n)) if n.as_u64().is_some() => Ok(n.as_u64().unwrap_or(0)),
            Some(other) => Err(self.wrong(key, "a non-negative integer", &other)),
        }
    }

    pub fn u32(&mut self, key: &str) -> Result<u32, ApiError> {
        let n = self.u64(key)?;
        u32::try_from(n).map_err(|_| {
            ApiError::invalid(
                &self.field(key),
                format!("{n} exceeds the maximum of {}", u32::MAX),
            )
        })
    }

    pub fn bool(&mut self, key: &str) -> Result<bool, ApiError> {
        match self.take(key) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(b),
            Some(other) => Err(self.wrong(key, "true or false", &other)),
        }
    }

    /// A nested object, if given.
    pub fn object(&mut self, key: &str) -> Result<Option<Obj>, ApiError> {
        let field = self.field(key);
        self.take(key).map(|v| Obj::new(&field, v)).transpose()
    }

    /// An array's elements with their paths (`steps[3]`).
    pub fn array(&mut self, key: &str) -> Result<Vec<(String, Value)>, ApiError> {
        match self.take(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => {
                let field = self.field(key);
                Ok(items
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| (format!("{field}[{i}]"), v))
                    .collect())
            }
            Some(other) => Err(self.wrong(key, "an array", &other)),
        }
    }

    /// An object of string values (labels).
    pub fn labels(&mut self, key: &str) -> Result<HashMap<String, String>, ApiError> {
        let Some(mut obj) = self.object(key)? else {
            return Ok(HashMap::new());
        };
        let keys: Vec<String> = obj.map.keys().cloned().collect();
        let mut out = HashMap::new();
        for k in keys {
            match obj.map.remove(&k) {
                Some(Value::String(v)) => {
                    out.insert(k, v);
                }
                Some(other) => {
                    return Err(ApiError::invalid(
                        &format!("{}[{k:?}]", obj.path),
                        format!("expected a string, got {}", type_name(&other)),
                    ))
                }
                None => {}
            }
        }
        Ok(out)
    }

    /// Bytes given either as any JSON value in `key` (sent as its JSON text) or as base64 in
    /// `{key}_base64`; not both.
    pub fn payload(&mut self, key: &str) -> Result<Vec<u8>, ApiError> {
        let b64_key = format!("{key}_base64");
        match (self.take(key), self.take(&b64_key)) {
            (Some(_), Some(_)) => Err(ApiError::invalid(
                &self.field(key),
                format!("give {key} or {b64_key}, not both"),
            )),
            (Some(v), None) => Ok(serde_json::to_vec(&v).unwrap_or_default()),
            (None, Some(Value::String(text))) => base64::engine::general_purpose::STANDARD
                .decode(text.as_bytes())
                .map_err(|e| ApiError::invalid(&self.field(&b64_key), format!("not base64: {e}"))),
            (None, Some(other)) => Err(self.wrong(&b64_key, "a base64 string", &other)),
            (None, None) => Ok(Vec::new()),
        }
    }

    /// Refuses any field not read: a misspelt field must not be silently ignored.
    pub fn finish(self) -> Result<(), ApiError> {
        match self.map.keys().next() {
            None => Ok(()),
            Some(key) => Err(ApiError::invalid(&self.field(key), "unknown field")),
        }
    }

    fn wrong(&self, key: &str, expected: &str, got: &Value) -> ApiError {
        ApiError::invalid(
            &self.field(key),
            format!("expected {expected}, got {}", type_name(got)),
        )
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.as_i64().is_some_and(|n| n < 0) => "a negative number",
        Value::Number(n) if n.is_f64() => float_name(n.as_f64().unwrap_or(f64::NAN)),
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// What a number that is not a 64-bit integer is: JSON has one number type, and a value too
/// large for an integer or written with an exponent arrives as a float.
fn float_name(f: f64) -> &'static str {
    if f < 0.0 {
        "a negative number"
    } else if f.fract() != 0.0 {
        "a fractional number"
    } else if f >= u64::MAX as f64 {
        "a number too large for a 64-bit integer"
    } else {
        "a number with a decimal point or an exponent"
    }
}

// ---- requests ----

fn retry(obj: &mut Obj) -> Result<Option<proto::RetryPolicy>, ApiError> {
    let Some(mut r) = obj.object("retry")? else {
        return Ok(None);
    };
    let policy = proto::RetryPolicy {
        max_attempts: r.u32("max_attempts")?,
        initial_backoff_ms: r.u64("initial_backoff_ms")?,
        max_backoff_ms: r.u64("max_backoff_ms")?,
    };
    r.finish()?;
    Ok(Some(policy))
}

fn step_kind(obj: &mut Obj) -> Result<i32, ApiError> {
    let text = obj.string("kind")?;
    let kind = match text.as_str() {
        "" => proto::StepKind::Unspecified,
        "compensatable" => proto::StepKind::Compensatable,
        "pivot" => proto::StepKind::Pivot,
        "retriable" => proto::StepKind::Retriable,
        other => {
            return Err(ApiError::invalid(
                &obj.field("kind"),
                format!("{other:?} is not compensatable, pivot or retriable"),
            ))
        }
    };
    Ok(kind as i32)
}

fn saga_step(path: String, value: Value) -> Result<proto::SagaStep, ApiError> {
    let mut s = Obj::new(&path, value)?;
    let step = proto::SagaStep {
        name: s.string("name")?,
        service: s.string("service")?,
        endpoint: s.string("endpoint")?,
        action: s.string("action")?,
        compensate: s.string("compensate")?,
        payload: s.payload("payload")?,
        kind: step_kind(&mut s)?,
        stage: s.u32("stage")?,
        timeout_ms: s.u64("timeout_ms")?,
        retry: retry(&mut s)?,
    };
    s.finish()?;
    Ok(step)
}

fn branch(path: String, value: Value) -> Result<proto::TwoPhaseBranch, ApiError> {
    let mut b = Obj::new(&path, value)?;
    let branch = proto::TwoPhaseBranch {
        name: b.string("name")?,
        service: b.string("service")?,
        endpoint: b.string("endpoint")?,
        action: b.string("action")?,
        payload: b.payload("payload")?,
        timeout_ms: b.u64("timeout_ms")?,
        retry: retry(&mut b)?,
    };
    b.finish()?;
    Ok(branch)
}

/// `POST /v1/transactions`.
pub fn start_request(body: Value) -> Result<proto::StartRequest, ApiError> {
    use proto::start_request::Definition;
    let mut o = Obj::new("", body)?;
    if o.has("saga") && o.has("two_phase") {
        return Err(ApiError::invalid(
            "definition",
            "give a saga or a two_phase, not both",
        ));
    }
    let definition = if let Some(mut saga) = o.object("saga")? {
        let steps = saga
            .array("steps")?
            .into_iter()
            .map(|(path, v)| saga_step(path, v))
            .collect::<Result<_, _>>()?;
        saga.finish()?;
        Some(Definition::Saga(proto::Saga { steps }))
    } else if let Some(mut tp) = o.object("two_phase")? {
        let branches = tp
            .array("branches")?
            .into_iter()
            .map(|(path, v)| branch(path, v))
            .collect::<Result<_, _>>()?;
        let prepare_timeout_ms = tp.u64("prepare_timeout_ms")?;
        tp.finish()?;
        Some(Definition::TwoPhase(proto::TwoPhase {
            branches,
            prepare_timeout_ms,
        }))
    } else {
        None
    };
    let req = proto::StartRequest {
        definition,
        idempotency_key: o.string("idempotency_key")?,
        labels: o.labels("labels")?,
        timeout_ms: o.u64("timeout_ms")?,
        wait: o.bool("wait")?,
        wait_timeout_ms: o.u64("wait_timeout_ms")?,
    };
    o.finish()?;
    Ok(req)
}

/// A body that is one object of the fields `read` takes; an empty body is `{}`.
pub fn body_object<T>(
    body: Value,
    read: impl FnOnce(&mut Obj) -> Result<T, ApiError>,
) -> Result<T, ApiError> {
    let mut o = Obj::new("", body)?;
    let out = read(&mut o)?;
    o.finish()?;
    Ok(out)
}

/// A state's name on the wire (`committed`), or `None` for an unknown number.
pub fn state_name(state: i32) -> &'static str {
    match proto::TxState::try_from(state) {
        Ok(proto::TxState::Running) => "running",
        Ok(proto::TxState::Compensating) => "compensating",
        Ok(proto::TxState::Committed) => "committed",
        Ok(proto::TxState::Compensated) => "compensated",
        Ok(proto::TxState::Failed) => "failed",
        Ok(proto::TxState::Preparing) => "preparing",
        Ok(proto::TxState::Committing) => "committing",
        Ok(proto::TxState::Aborting) => "aborting",
        Ok(proto::TxState::Aborted) => "aborted",
        Ok(proto::TxState::Unspecified) | Err(_) => "unspecified",
    }
}

/// The states a `state=` query parameter may name.
pub const STATES: [&str; 9] = [
    "running",
    "compensating",
    "committed",
    "compensated",
    "failed",
    "preparing",
    "committing",
    "aborting",
    "aborted",
];

/// The wire number of a state name.
pub fn state_number(name: &str) -> Option<i32> {
    (1..=9).find(|n| state_name(*n) == name)
}

// ---- responses ----

/// Unix milliseconds as RFC 3339 text (`null` for 0, "none").
fn time(ms: i64) -> Value {
    if ms == 0 {
        return Value::Null;
    }
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)))
        .unwrap_or(Value::Null)
}

fn text_or_null(s: &str) -> Value {
    if s.is_empty() {
        Value::Null
    } else {
        Value::String(s.to_string())
    }
}

fn step_kind_name(kind: i32) -> Value {
    match proto::StepKind::try_from(kind) {
        Ok(proto::StepKind::Compensatable) => json!("compensatable"),
        Ok(proto::StepKind::Pivot) => json!("pivot"),
        Ok(proto::StepKind::Retriable) => json!("retriable"),
        _ => Value::Null,
    }
}

/// A branch's output: as JSON when it is JSON text, always as base64.
fn output(bytes: &[u8]) -> (Value, Value) {
    if bytes.is_empty() {
        return (Value::Null, Value::Null);
    }
    let parsed = serde_json::from_slice::<Value>(bytes).unwrap_or(Value::Null);
    (
        parsed,
        Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
    )
}

pub fn transaction(tx: &proto::Transaction) -> Value {
    let kind = match proto::TxKind::try_from(tx.kind) {
        Ok(proto::TxKind::Saga) => json!("saga"),
        Ok(proto::TxKind::TwoPhase) => json!("two_phase"),
        _ => Value::Null,
    };
    let two_phase = tx.kind == proto::TxKind::TwoPhase as i32;
    let branches: Vec<Value> = tx
        .branches
        .iter()
        .map(|b| {
            let (out, out_b64) = output(&b.output);
            let mut v = json!({
                "index": b.index,
                "name": b.name,
                "target": b.target,
                "action": b.action,
                "state": b.state,
                "attempts": b.attempts,
                "output": out,
                "output_base64": out_b64,
                "last_error": text_or_null(&b.last_error),
            });
            if !two_phase {
                v["stage"] = json!(b.stage);
                v["kind"] = step_kind_name(b.kind);
                v["compensate"] = text_or_null(&b.compensate);
            }
            v
        })
        .collect();
    json!({
        "tx_id": tx.tx_id,
        "kind": kind,
        "state": state_name(tx.state),
        "labels": tx.labels,
        "idempotency_key": text_or_null(&tx.idempotency_key),
        "created_at": time(tx.created_at_ms),
        "created_at_ms": tx.created_at_ms,
        "updated_at": time(tx.updated_at_ms),
        "updated_at_ms": tx.updated_at_ms,
        "deadline_at": time(tx.deadline_at_ms),
        "deadline_at_ms": tx.deadline_at_ms,
        "last_error": text_or_null(&tx.last_error),
        "branches": branches,
        "owner": tx.owner,
        "epoch": tx.epoch,
        "in_doubt": tx.in_doubt,
    })
}

pub fn event(e: &proto::TxEvent) -> Value {
    json!({
        "tx_id": e.tx_id,
        "seq": e.seq,
        "at": time(e.at_ms),
        "at_ms": e.at_ms,
        "kind": e.kind,
        "branch": if e.branch < 0 { Value::Null } else { json!(e.branch) },
        "detail": e.detail,
    })
}

pub fn participant(p: &proto::ParticipantEndpoint) -> Value {
    json!({
        "service": p.service,
        "endpoint": p.endpoint,
        "weight": p.weight,
        "zone": p.zone,
        "expires_at": time(p.expires_at_ms),
        "expires_at_ms": p.expires_at_ms,
        "policy": text_or_null(&p.policy),
        "outstanding": p.outstanding,
        "ejected_until": time(p.ejected_until_ms),
        "ejected_until_ms": p.ejected_until_ms,
    })
}

pub fn coordinator(c: &proto::CoordinatorInfo) -> Value {
    json!({
        "id": c.id,
        "address": c.address,
        "started_at": time(c.started_at_ms),
        "started_at_ms": c.started_at_ms,
        "heartbeat_at": time(c.heartbeat_at_ms),
        "heartbeat_at_ms": c.heartbeat_at_ms,
        "version": c.version,
        "owned": c.owned,
    })
}
