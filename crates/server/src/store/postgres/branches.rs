//! Branch states as PostgreSQL stores them (migration 0010): in the transaction's own row, a
//! JSON object keyed by branch index, merged into by each update that changes a branch. An
//! output or error longer than [`INLINE_MAX`] bytes is kept apart, in `baton_branch_data`, and
//! its entry says so; every later version of the row would copy it otherwise.
//!
//! An entry leaves out what is at its default (no attempts, no output, no error, no order), so a
//! W1 step's entry is about 60 bytes.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::super::{RawBranch, StoreError};
use crate::model::{BranchRecord, TxId};

/// The longest output or error, in bytes, kept in the row.
pub(super) const INLINE_MAX: usize = 256;

/// The column, for errors.
const COLUMN: &str = "baton_transactions.branches";

#[derive(Serialize, Deserialize)]
struct Entry<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow)]
    state: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "is_zero")]
    attempts: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    done_order: Option<i64>,
    /// Base64, as the stored definitions hold bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    output: Option<Cow<'a, str>>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    last_error: Option<Cow<'a, str>>,
    /// Output and error are in `baton_branch_data`.
    #[serde(default, skip_serializing_if = "is_false")]
    apart: bool,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Whether a branch's output and error go to `baton_branch_data`.
pub(super) fn apart(branch: &BranchRecord) -> bool {
    branch.output.as_ref().is_some_and(|o| o.len() > INLINE_MAX)
        || branch
            .last_error
            .as_ref()
            .is_some_and(|e| e.len() > INLINE_MAX)
}

/// The JSON object an update merges into the row for its changed branches; `None` when none
/// changed.
pub(super) fn encode(branches: &[BranchRecord]) -> Result<Option<String>, StoreError> {
    if branches.is_empty() {
        return Ok(None);
    }
    let mut object: BTreeMap<String, Entry<'_>> = BTreeMap::new();
    for b in branches {
        let apart = apart(b);
        let inline = !apart;
        object.insert(
            b.index.to_string(),
            Entry {
                name: Cow::Borrowed(&b.name),
                state: Cow::Borrowed(b.status.as_str()),
                attempts: i64::from(b.attempts),
                done_order: b.done_order.map(i64::from),
                output: b
                    .output
                    .as_ref()
                    .filter(|_| inline)
                    .map(|o| Cow::Owned(base64::engine::general_purpose::STANDARD.encode(o))),
                last_error: b
                    .last_error
                    .as_deref()
                    .filter(|_| inline)
                    .map(Cow::Borrowed),
                apart,
            },
        );
    }
    serde_json::to_string(&object)
        .map(Some)
        .map_err(|e| StoreError::Database(sqlx::Error::Encode(Box::new(e))))
}

/// What is kept apart for one branch, read from `baton_branch_data`.
pub(super) struct Apart {
    pub output: Option<Vec<u8>>,
    pub last_error: Option<String>,
}

/// Decodes a row's `branches` column (text) into branch rows, taking what is kept apart from
/// `data` (by transaction and index, taken out of it), which the caller reads beforehand in one query for the
/// rows that [`has_apart`].
pub(super) fn decode(
    tx_id: TxId,
    column: Option<&str>,
    data: &mut HashMap<(TxId, i64), Apart>,
) -> Result<Vec<RawBranch>, StoreError> {
    let Some(text) = column else {
        return Ok(Vec::new());
    };
    let corrupt = |detail: String| StoreError::Corrupt {
        table: COLUMN,
        detail: format!("transaction {tx_id}: {detail}"),
    };
    let object: BTreeMap<&str, Entry<'_>> =
        serde_json::from_str(text).map_err(|e| corrupt(e.to_string()))?;
    let mut rows = Vec::with_capacity(object.len());
    for (key, entry) in object {
        let index: i64 = key
            .parse()
            .map_err(|_| corrupt(format!("branch key {key:?} is not an index")))?;
        let (output, last_error) = if entry.apart {
            let kept = data.remove(&(tx_id, index)).ok_or_else(|| {
                corrupt(format!("branch {index}: its data kept apart is missing"))
            })?;
            (kept.output, kept.last_error)
        } else {
            let output = entry
                .output
                .map(|o| {
                    base64::engine::general_purpose::STANDARD
                        .decode(o.as_bytes())
                        .map_err(|e| corrupt(format!("branch {index} output: {e}")))
                })
                .transpose()?;
            (output, entry.last_error.map(Cow::into_owned))
        };
        rows.push(RawBranch {
            table: COLUMN,
            tx_id,
            index,
            name: entry.name.into_owned(),
            state: entry.state.into_owned(),
            attempts: entry.attempts,
            output,
            last_error,
            done_order: entry.done_order,
        });
    }
    Ok(rows)
}

/// Whether a row's `branches` column may keep anything apart: a cheap look before parsing. Only
/// a key can be followed by a colon in JSON text, so a name or error that reads "apart" does
/// not match; PostgreSQL prints jsonb with a space after the colon.
pub(super) fn has_apart(column: Option<&str>) -> bool {
    column.is_some_and(|text| text.contains("\"apart\": true") || text.contains("\"apart\":true"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::StepStatus;

    fn branch(index: u32, output: Option<Vec<u8>>, error: Option<String>) -> BranchRecord {
        BranchRecord {
            index,
            name: format!("step \"{index}\""),
            status: StepStatus::Succeeded,
            attempts: index,
            output,
            last_error: error,
            done_order: (index > 0).then_some(index),
        }
    }

    #[test]
    fn entries_read_back_as_written_and_large_ones_from_apart() {
        let id = TxId::new();
        let big = vec![7u8; INLINE_MAX + 1];
        let written = vec![
            branch(0, None, None),
            branch(1, Some(Vec::new()), Some("short".into())),
            branch(2, Some(vec![0, 255, 10]), None),
            branch(10, Some(big.clone()), Some("kept with it".into())),
            branch(11, None, Some("e".repeat(INLINE_MAX + 1))),
        ];
        let text = encode(&written).unwrap().unwrap();
        assert!(has_apart(Some(&text)));
        assert!(
            !text.contains("7777"),
            "a large output stays out of the row"
        );
        let mut data = HashMap::new();
        data.insert(
            (id, 10),
            Apart {
                output: Some(big),
                last_error: Some("kept with it".into()),
            },
        );
        data.insert(
            (id, 11),
            Apart {
                output: None,
                last_error: Some("e".repeat(INLINE_MAX + 1)),
            },
        );
        let read: Vec<BranchRecord> = decode(id, Some(&text), &mut data)
            .unwrap()
            .into_iter()
            .map(|raw| raw.into_record().unwrap())
            .collect();
        let mut expected = written.clone();
        expected.sort_by_key(|b| b.index);
        let mut read = read;
        read.sort_by_key(|b| b.index);
        assert_eq!(read, expected);
    }

    #[test]
    fn an_entry_kept_apart_without_its_data_is_corrupt() {
        let id = TxId::new();
        let text = encode(&[branch(3, Some(vec![1; INLINE_MAX + 1]), None)])
            .unwrap()
            .unwrap();
        let err = decode(id, Some(&text), &mut HashMap::new()).err().unwrap();
        assert!(err.to_string().contains("missing"), "{err}");
        assert!(encode(&[]).unwrap().is_none());
        assert!(decode(id, None, &mut HashMap::new()).unwrap().is_empty());
        assert!(!has_apart(None));
    }
}
