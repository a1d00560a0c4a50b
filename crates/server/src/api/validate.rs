//! Checks on what clients send: sizes and counts against [`Limits`], control characters, endpoints,
//! durations, labels and the shape of a saga's step kinds. Every rejection names the field and
//! quotes client text only cut short ([`echo`]).

use std::collections::BTreeMap;
use std::fmt;

use tonic::Status;

use crate::model::{StepDef, StepKind};

/// Input limits; everything a client sends is bounded.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest payload of one step, in bytes.
    pub max_payload_bytes: usize,
    /// Most steps in one saga.
    pub max_steps: usize,
    /// Most labels on one transaction, and the longest label key or value.
    pub max_labels: usize,
    pub max_label_len: usize,
    /// Longest idempotency key, step name, action, service or endpoint.
    pub max_name_len: usize,
    /// Longest per-call timeout a step may ask for, in ms.
    pub max_call_timeout_ms: u64,
    /// Most attempts a retry policy may ask for.
    pub max_attempts: u32,
    /// Longest a `Wait` (or `Start` with `wait`) blocks, in ms.
    pub max_wait_ms: u64,
    /// Longest overall timeout (`StartRequest.timeout_ms`) a transaction may ask for, in ms.
    pub max_tx_timeout_ms: u64,
    /// Longest backoff a retry policy may ask for, in ms.
    pub max_backoff_ms: u64,
    /// Longest time-to-live of a participant registration, in ms.
    pub max_ttl_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload_bytes: 1 << 20,
            max_steps: 100,
            max_labels: 32,
            max_label_len: 256,
            max_name_len: 256,
            max_call_timeout_ms: 3_600_000,
            max_attempts: 1000,
            max_wait_ms: 300_000,
            max_tx_timeout_ms: 30 * 24 * 3_600_000,
            max_backoff_ms: 3_600_000,
            max_ttl_ms: 24 * 3_600_000,
        }
    }
}

pub(crate) fn invalid(field: impl fmt::Display, what: impl fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {what}"))
}

pub(crate) fn too_large(field: impl fmt::Display, what: impl fmt::Display) -> Status {
    Status::resource_exhausted(format!("{field}: {what}"))
}

/// A field of one item of a list, as an error message names it (`saga.steps[2].retry.max_attempts`).
/// It is written out only when a check fails: a `Start` that passes, nearly every one, formats no
/// field names (eager names were 2.5 % of a coordinator's instructions per W1 saga, measured with
/// callgrind on 2026-12-07, `9b31c97`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct ItemField {
    list: &'static str,
    index: usize,
    /// The path below the item, empty for the item itself.
    path: &'static str,
}

impl ItemField {
    /// Item `index` of the list `list` (`saga.steps`).
    pub(crate) fn item(list: &'static str, index: usize) -> Self {
        ItemField {
            list,
            index,
            path: "",
        }
    }

    /// The field `path` of the same item (`name`, `retry.max_attempts`).
    pub(crate) fn at(self, path: &'static str) -> Self {
        ItemField { path, ..self }
    }
}

impl fmt::Display for ItemField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.list, self.index)?;
        if !self.path.is_empty() {
            write!(f, ".{}", self.path)?;
        }
        Ok(())
    }
}

/// Most characters of client text an error message repeats.
const ECHO_CHARS: usize = 64;

/// `text` quoted for an error message, cut to its first 64 characters with an ellipsis: a status
/// message travels in a response header, and a 100,000-character id echoed whole overflows the
/// client's header limit so that it sees a transport error instead of the status.
pub fn echo(text: &str) -> String {
    match text.char_indices().nth(ECHO_CHARS) {
        None => format!("{text:?}"),
        Some((cut, _)) => format!("{:?}…", &text[..cut]),
    }
}

fn check_len(field: impl fmt::Display, text: &str, max: usize) -> Result<(), Status> {
    if text.len() > max {
        return Err(too_large(
            field,
            format!("{} bytes exceed the limit of {max}", text.len()),
        ));
    }
    Ok(())
}

/// The first control character of `text` that `allowed` does not let through, as an error.
fn check_controls(field: impl fmt::Display, text: &str, allowed: &[char]) -> Result<(), Status> {
    match text
        .char_indices()
        .find(|(_, c)| c.is_control() && !allowed.contains(c))
    {
        None => Ok(()),
        Some((at, c)) => Err(invalid(
            field,
            format!(
                "must not contain control characters (U+{:04X} at byte {at})",
                u32::from(c)
            ),
        )),
    }
}

/// A name, key or filter of at most `max` bytes without control characters (empty allowed).
///
/// Every string a client sends goes through this or [`check_free_text`]: PostgreSQL refuses a
/// NUL in text, and a transaction whose definition it refuses can never be driven; other control
/// characters in a name only garble logs and tables.
pub fn check_text<F: fmt::Display + Copy>(field: F, text: &str, max: usize) -> Result<(), Status> {
    check_len(field, text, max)?;
    check_controls(field, text, &[])
}

/// Free text such as a cancel reason: like [`check_text`], but tabs and line breaks are fine.
pub fn check_free_text<F: fmt::Display + Copy>(
    field: F,
    text: &str,
    max: usize,
) -> Result<(), Status> {
    check_len(field, text, max)?;
    check_controls(field, text, &['\t', '\n', '\r'])
}

pub(crate) fn check_name<F: fmt::Display + Copy>(
    field: F,
    text: &str,
    limits: &Limits,
) -> Result<(), Status> {
    if text.trim().is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    check_text(field, text, limits.max_name_len)
}

/// Checks a participant endpoint (a step's or a registration's); the one parser for both.
pub fn check_endpoint<F: fmt::Display + Copy>(
    field: F,
    endpoint: &str,
    limits: &Limits,
) -> Result<(), Status> {
    check_len(field, endpoint, limits.max_name_len)?;
    crate::model::parse_endpoint(endpoint)
        .map(|_| ())
        .map_err(|e| invalid(field, e))
}

/// The largest page `List` returns (`ListRequest.limit`).
pub const MAX_PAGE_SIZE: u32 = 1000;

/// A page size named `field` (`limit` over gRPC; `page_size` or `limit` over HTTP).
pub(crate) fn check_page_size(field: &str, size: u32) -> Result<(), Status> {
    if size > MAX_PAGE_SIZE {
        return Err(invalid(
            field,
            format!("{size} exceeds the maximum page size of {MAX_PAGE_SIZE}"),
        ));
    }
    Ok(())
}

/// The earliest and latest times a client may name (years 1 to 9999): PostgreSQL refuses
/// timestamps far beyond them that chrono still represents.
const MIN_TIME_MS: i64 = -62_135_596_800_000;
const MAX_TIME_MS: i64 = 253_402_300_799_999;

/// A time in Unix milliseconds named `field` (`created_after_ms` over gRPC, `created_after` over
/// HTTP); 0 means none.
pub(crate) fn time_ms(
    field: &str,
    ms: i64,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, Status> {
    if ms == 0 {
        return Ok(None);
    }
    (MIN_TIME_MS..=MAX_TIME_MS)
        .contains(&ms)
        .then(|| chrono::DateTime::from_timestamp_millis(ms))
        .flatten()
        .map(Some)
        .ok_or_else(|| {
            invalid(
                field,
                format!("{ms} is out of range (years 1 to 9999 in unix milliseconds)"),
            )
        })
}

/// A duration in ms, checked against `max` (0 is always fine: it means "the default" or "none").
pub fn check_ms(field: impl fmt::Display, ms: u64, max: u64) -> Result<(), Status> {
    if ms > max {
        return Err(invalid(field, format!("{ms} exceeds the limit of {max}")));
    }
    Ok(())
}

/// Labels after checking their count and sizes.
pub fn labels(
    field: &str,
    given: &std::collections::HashMap<String, String>,
    limits: &Limits,
) -> Result<BTreeMap<String, String>, Status> {
    if given.len() > limits.max_labels {
        return Err(too_large(
            field,
            format!(
                "{} labels exceed the limit of {}",
                given.len(),
                limits.max_labels
            ),
        ));
    }
    let mut out = BTreeMap::new();
    for (k, v) in given {
        if k.is_empty() {
            return Err(invalid(field, "a label key must not be empty"));
        }
        let entry = format!("{field}[{}]", echo(k));
        if k.len() > limits.max_label_len || v.len() > limits.max_label_len {
            return Err(too_large(
                &entry,
                format!(
                    "keys and values are limited to {} bytes",
                    limits.max_label_len
                ),
            ));
        }
        check_controls(&entry, k, &[])?;
        check_controls(&entry, v, &[])?;
        out.insert(k.clone(), v.clone());
    }
    Ok(out)
}

/// The saga's step kinds in order: at most one pivot, alone in its stage and without a
/// compensation; every step after it retriable, and no retriable step before it.
pub(crate) fn check_kinds(steps: &[StepDef]) -> Result<(), Status> {
    let pivots: Vec<usize> = steps
        .iter()
        .enumerate()
        .filter(|(_, s)| s.kind == StepKind::Pivot)
        .map(|(i, _)| i)
        .collect();
    if pivots.len() > 1 {
        return Err(invalid(
            ItemField::item("saga.steps", pivots[1]).at("kind"),
            "a saga has at most one pivot step",
        ));
    }
    let pivot = pivots.first().copied();
    if let Some(p) = pivot {
        let stage = steps[p].stage;
        if steps[p].compensate.is_some() {
            return Err(invalid(
                ItemField::item("saga.steps", p).at("compensate"),
                "a pivot step has no compensation: it is the point of no return",
            ));
        }
        if let Some((i, _)) = steps
            .iter()
            .enumerate()
            .find(|(i, s)| *i != p && s.stage == stage)
        {
            return Err(invalid(
                ItemField::item("saga.steps", i).at("stage"),
                "a pivot step runs alone in its stage",
            ));
        }
    }
    for (i, s) in steps.iter().enumerate() {
        let after_pivot = pivot.is_some_and(|p| i > p);
        if after_pivot && s.kind != StepKind::Retriable {
            return Err(invalid(
                ItemField::item("saga.steps", i).at("kind"),
                "steps after the pivot must be retriable",
            ));
        }
        if !after_pivot && s.kind == StepKind::Retriable {
            return Err(invalid(
                ItemField::item("saga.steps", i).at("kind"),
                "a retriable step must come after a pivot step",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_refused_in_labels_and_free_text() {
        for (k, v) in [("k\0", "v"), ("k", "v\0"), ("k", "line\nbreak")] {
            let given = [(k.to_string(), v.to_string())].into_iter().collect();
            let err = labels("labels", &given, &Limits::default()).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            let want = format!("labels[{k:?}]: must not contain control characters");
            assert!(err.message().starts_with(&want), "{}", err.message());
        }
        assert!(check_free_text("reason", "two\nlines\tand a tab", 256).is_ok());
        let err = check_free_text("reason", "nul\0", 256).unwrap_err();
        assert!(err
            .message()
            .starts_with("reason: must not contain control characters"));
    }

    #[test]
    fn echoed_text_is_cut_short() {
        assert_eq!(echo("abc"), "\"abc\"");
        assert_eq!(echo("a\0"), "\"a\\0\"");
        let long = "é".repeat(100_000);
        let echoed = echo(&long);
        assert_eq!(echoed, format!("{:?}…", "é".repeat(64)));
    }
}
