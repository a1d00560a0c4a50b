//! What the crash and failover tests share: the order saga they run under load and the
//! invariants checked afterwards against the participant's ledger and the log.

use baton_tx::client::{Saga, Step, TxState};
use sqlx::Connection;

use super::participant::Ledger;

/// A three-step order saga on `endpoint` whose third step fails when `fail`; each step's
/// participant call takes `sleep_ms`.
pub fn order_saga(endpoint: &str, key: &str, fail: bool, sleep_ms: u64) -> Saga {
    let step = |name: &str, action: &str| {
        Step::to_endpoint(name, endpoint)
            .action(action)
            .compensate("undo")
            .json(&serde_json::json!({ "sleep_ms": sleep_ms }))
            .expect("json payload")
    };
    Saga::new()
        .step(step("reserve", "ok"))
        .step(step("charge", "ok"))
        .step(step("ship", if fail { "fail" } else { "ok" }))
        .idempotency_key(key)
}

/// The invariants for one saga: committed → every step executed, nothing compensated;
/// compensated → the failing third step never applied, the first two executed and compensated.
pub fn check_saga(ledger: &Ledger, tx: &baton_tx::client::Transaction, fail: bool) {
    let id = &tx.id.to_string();
    if fail {
        assert_eq!(tx.state, TxState::Compensated, "{tx:?}");
        for b in 0..2 {
            assert_eq!(ledger.times_applied(id, b, "execute"), 1, "{id} step {b}");
            assert_eq!(
                ledger.times_applied(id, b, "compensate"),
                1,
                "{id} step {b} undone"
            );
        }
        assert_eq!(ledger.times_applied(id, 2, "execute"), 0);
        assert_eq!(
            ledger.delivered(id, 2, "compensate"),
            0,
            "{id}: a failed step is not undone"
        );
    } else {
        assert_eq!(tx.state, TxState::Committed, "{tx:?}");
        for b in 0..3 {
            assert_eq!(ledger.times_applied(id, b, "execute"), 1, "{id} step {b}");
            assert_eq!(ledger.delivered(id, b, "compensate"), 0, "{id} step {b}");
        }
    }
}

/// No epoch of any transaction has events written by two coordinators, and every event names the
/// coordinator and epoch it was written under: each epoch had one owner, and fencing kept every
/// other coordinator's writes out.
pub async fn check_event_writers(url: &str) {
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    let shared: Vec<(uuid::Uuid, i64, i64)> = sqlx::query_as(
        "SELECT tx_id, epoch, count(DISTINCT owner) FROM baton_event_runs \
         GROUP BY tx_id, epoch HAVING count(DISTINCT owner) > 1 LIMIT 5",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert!(
        shared.is_empty(),
        "epochs written by two owners: {shared:?}"
    );
    let (events, unsigned, epochs): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE owner IS NULL OR epoch IS NULL), \
                count(DISTINCT (tx_id, epoch)) FROM baton_event_runs",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(unsigned, 0, "every event names its writer");
    eprintln!("{events} event runs in {epochs} (transaction, epoch) pairs, each with one writer");
}
