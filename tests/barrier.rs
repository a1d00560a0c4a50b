//! The participant barrier against real databases: every check runs on PostgreSQL (a fresh
//! database per test) and on SQLite (a fresh file per test), with a tiny bank as the business.
//!
//! The bank's account 1 starts at 100. Execute debits, compensate refunds; prepare moves money to
//! `held`, commit drops the hold, abort gives it back. Every check asserts the balances a user
//! would see.

mod support;

/// Expands the suite for one database type: `$db` is the sqlx database, `$bank` an async fn
/// returning a fresh [`Bank`] for it. Each module is concrete, so the business SQL is plain sqlx.
macro_rules! suite {
    ($module:ident, $db:ty, $bank:path) => {
        mod $module {
            use std::sync::Arc;

            use baton_tx::participant::barrier::{Barrier, Entry};
            use baton_tx::participant::{HandlerError, Phase, Reply, Request};

            type Db = $db;
            type Conn = <Db as sqlx::Database>::Connection;

            struct Bank {
                barrier: Barrier<Db>,
                // Keeps the database alive (dropped after the pool).
                _store: Box<dyn Send + Sync>,
            }

            async fn bank() -> Bank {
                let (pool, store) = $bank().await;
                let barrier = Barrier::<Db>::new(pool);
                barrier.migrate().await.expect("migrate");
                // Idempotent: services call it on every start.
                barrier.migrate().await.expect("migrate again");
                sqlx::query(
                    "CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance BIGINT NOT NULL, \
                     held BIGINT NOT NULL)",
                )
                .execute(barrier.pool())
                .await
                .expect("create accounts");
                sqlx::query("INSERT INTO accounts (id, balance, held) VALUES (1, 100, 0)")
                    .execute(barrier.pool())
                    .await
                    .expect("open account");
                Bank {
                    barrier,
                    _store: store,
                }
            }

            fn req(phase: Phase, tx_id: &str, amount: i64, attempt: u32) -> Request {
                Request {
                    phase,
                    tx_id: tx_id.to_string(),
                    branch_index: 3,
                    branch_name: "pay".into(),
                    action: "pay".into(),
                    payload: amount.to_string().into_bytes(),
                    attempt,
                    deadline: None,
                    outputs: Vec::new(),
                    labels: Default::default(),
                    trace: None,
                }
            }

            fn db(e: sqlx::Error) -> HandlerError {
                HandlerError::transient(e.to_string())
            }

            /// Adds `delta` to balance and `hold` to held of account 1; returns the new balance.
            async fn change(conn: &mut Conn, delta: i64, hold: i64) -> Result<i64, HandlerError> {
                sqlx::query_scalar(
                    "UPDATE accounts SET balance = balance + $1, held = held + $2 WHERE id = 1 \
                     RETURNING balance",
                )
                .bind(delta)
                .bind(hold)
                .fetch_one(conn)
                .await
                .map_err(db)
            }

            impl Bank {
                /// (balance, held) of account 1.
                async fn account(&self) -> (i64, i64) {
                    sqlx::query_as("SELECT balance, held FROM accounts WHERE id = 1")
                        .fetch_one(self.barrier.pool())
                        .await
                        .expect("read account")
                }

                /// The whole handler, as a service would write it with the barrier.
                async fn call(&self, req: &Request) -> Result<Reply, HandlerError> {
                    let amount: i64 = req.json()?;
                    let attempt = req.attempt;
                    let phase = req.phase;
                    self.barrier
                        .run(req, move |conn| {
                            Box::pin(async move {
                                let (delta, hold) = match phase {
                                    Phase::Execute => (-amount, 0),
                                    Phase::Compensate => (amount, 0),
                                    Phase::Prepare => (-amount, amount),
                                    Phase::Commit => (0, -amount),
                                    Phase::Abort => (amount, -amount),
                                };
                                // Change first, check after: a failure must also undo the
                                // change already made in this transaction.
                                let left = change(conn, delta, hold).await?;
                                if left < 0 {
                                    return Err(HandlerError::failed("insufficient funds"));
                                }
                                Ok(Reply::output(format!("{phase} on attempt {attempt}")))
                            })
                        })
                        .await
                }
            }

            fn output(result: Result<Reply, HandlerError>) -> String {
                let reply = result.expect("ok reply");
                String::from_utf8(reply.output).expect("utf8 output")
            }

            fn is_failed(result: &Result<Reply, HandlerError>, needle: &str) -> bool {
                matches!(result, Err(HandlerError::Failed(m)) if m.contains(needle))
            }

            fn is_permanent(result: &Result<Reply, HandlerError>, needle: &str) -> bool {
                matches!(result, Err(HandlerError::Permanent(m)) if m.contains(needle))
            }

            #[tokio::test]
            async fn duplicate_execute_applies_once_and_returns_the_first_output() {
                let bank = bank().await;
                let first = bank.call(&req(Phase::Execute, "t1", 30, 1)).await;
                assert_eq!(output(first), "execute on attempt 1");
                let again = bank.call(&req(Phase::Execute, "t1", 30, 2)).await;
                assert_eq!(output(again), "execute on attempt 1");
                assert_eq!(bank.account().await, (70, 0));
                // Another transaction is another key.
                let other = bank.call(&req(Phase::Execute, "t2", 30, 1)).await;
                assert_eq!(output(other), "execute on attempt 1");
                assert_eq!(bank.account().await, (40, 0));
            }

            #[tokio::test]
            async fn failed_execute_repeats_as_failed_without_the_change() {
                let bank = bank().await;
                let first = bank.call(&req(Phase::Execute, "t1", 500, 1)).await;
                assert!(is_failed(&first, "insufficient funds"), "{first:?}");
                assert_eq!(bank.account().await, (100, 0));
                // Even once the money is there, the recorded answer stands.
                sqlx::query("UPDATE accounts SET balance = 1000 WHERE id = 1")
                    .execute(bank.barrier.pool())
                    .await
                    .expect("top up");
                let again = bank.call(&req(Phase::Execute, "t1", 500, 2)).await;
                assert!(is_failed(&again, "insufficient funds"), "{again:?}");
                assert_eq!(bank.account().await, (1000, 0));
                // And compensating the failed action has nothing to undo.
                let undo = bank.barrier.enter(&req(Phase::Compensate, "t1", 500, 1)).await;
                assert!(matches!(undo, Ok(Entry::Skip(_))), "{undo:?}");
                assert_eq!(bank.account().await, (1000, 0));
            }

            #[tokio::test]
            async fn compensation_before_action_is_null_and_refuses_the_action() {
                let bank = bank().await;
                let undo = bank.barrier.enter(&req(Phase::Compensate, "t1", 30, 1)).await;
                assert!(matches!(undo, Ok(Entry::Skip(_))), "{undo:?}");
                let late = bank.call(&req(Phase::Execute, "t1", 30, 1)).await;
                assert!(is_failed(&late, "already compensated"), "{late:?}");
                let later = bank.call(&req(Phase::Execute, "t1", 30, 2)).await;
                assert!(is_failed(&later, "already compensated"), "{later:?}");
                // The null compensation repeats as OK.
                let again = bank.call(&req(Phase::Compensate, "t1", 30, 2)).await;
                assert!(again.is_ok(), "{again:?}");
                assert_eq!(bank.account().await, (100, 0));
            }

            #[tokio::test]
            async fn action_then_compensation_apply_once_each() {
                let bank = bank().await;
                for attempt in 1..=3 {
                    let done = bank.call(&req(Phase::Execute, "t1", 30, attempt)).await;
                    assert_eq!(output(done), "execute on attempt 1");
                }
                assert_eq!(bank.account().await, (70, 0));
                let undone = bank.call(&req(Phase::Compensate, "t1", 30, 1)).await;
                assert_eq!(output(undone), "compensate on attempt 1");
                assert_eq!(bank.account().await, (100, 0));
                // A stale duplicate of the action changes nothing either.
                let stale = bank.call(&req(Phase::Execute, "t1", 30, 4)).await;
                assert_eq!(output(stale), "execute on attempt 1");
                assert_eq!(bank.account().await, (100, 0));
            }

            #[tokio::test]
            async fn duplicate_compensation_applies_once() {
                let bank = bank().await;
                bank.call(&req(Phase::Execute, "t1", 30, 1))
                    .await
                    .expect("execute");
                for attempt in 1..=3 {
                    let undone = bank.call(&req(Phase::Compensate, "t1", 30, attempt)).await;
                    assert_eq!(output(undone), "compensate on attempt 1");
                }
                assert_eq!(bank.account().await, (100, 0));
            }

            #[tokio::test]
            async fn prepare_and_commit_apply_once() {
                let bank = bank().await;
                for attempt in 1..=2 {
                    let voted = bank.call(&req(Phase::Prepare, "t1", 30, attempt)).await;
                    assert_eq!(output(voted), "prepare on attempt 1");
                }
                assert_eq!(bank.account().await, (70, 30));
                for attempt in 1..=2 {
                    let done = bank.call(&req(Phase::Commit, "t1", 30, attempt)).await;
                    assert_eq!(output(done), "commit on attempt 1");
                }
                assert_eq!(bank.account().await, (70, 0));
            }

            #[tokio::test]
            async fn prepare_then_abort_releases_once() {
                let bank = bank().await;
                bank.call(&req(Phase::Prepare, "t1", 30, 1))
                    .await
                    .expect("prepare");
                for attempt in 1..=2 {
                    let done = bank.call(&req(Phase::Abort, "t1", 30, attempt)).await;
                    assert_eq!(output(done), "abort on attempt 1");
                }
                assert_eq!(bank.account().await, (100, 0));
            }

            #[tokio::test]
            async fn abort_before_prepare_refuses_the_prepare() {
                let bank = bank().await;
                let abort = bank.barrier.enter(&req(Phase::Abort, "t1", 30, 1)).await;
                assert!(matches!(abort, Ok(Entry::Skip(_))), "{abort:?}");
                let late = bank.call(&req(Phase::Prepare, "t1", 30, 1)).await;
                assert!(is_failed(&late, "already aborted"), "{late:?}");
                assert_eq!(bank.account().await, (100, 0));
            }

            #[tokio::test]
            async fn commit_after_abort_is_refused() {
                let bank = bank().await;
                bank.call(&req(Phase::Prepare, "t1", 30, 1))
                    .await
                    .expect("prepare");
                bank.call(&req(Phase::Abort, "t1", 30, 1))
                    .await
                    .expect("abort");
                assert_eq!(bank.account().await, (100, 0));
                for attempt in 1..=2 {
                    let commit = bank.call(&req(Phase::Commit, "t1", 30, attempt)).await;
                    assert!(is_permanent(&commit, "already aborted"), "{commit:?}");
                }
                assert_eq!(bank.account().await, (100, 0));
            }

            #[tokio::test]
            async fn abort_after_commit_is_refused() {
                let bank = bank().await;
                bank.call(&req(Phase::Prepare, "t1", 30, 1))
                    .await
                    .expect("prepare");
                bank.call(&req(Phase::Commit, "t1", 30, 1))
                    .await
                    .expect("commit");
                assert_eq!(bank.account().await, (70, 0));
                for attempt in 1..=2 {
                    let abort = bank.call(&req(Phase::Abort, "t1", 30, attempt)).await;
                    assert!(is_permanent(&abort, "already committed"), "{abort:?}");
                }
                assert_eq!(bank.account().await, (70, 0));
            }

            #[tokio::test]
            async fn commit_without_prepare_is_refused() {
                let bank = bank().await;
                let commit = bank.call(&req(Phase::Commit, "t1", 30, 1)).await;
                assert!(is_permanent(&commit, "prepare was not recorded"), "{commit:?}");
                let failed = bank.call(&req(Phase::Prepare, "t2", 500, 1)).await;
                assert!(is_failed(&failed, "insufficient funds"), "{failed:?}");
                let commit = bank.call(&req(Phase::Commit, "t2", 500, 1)).await;
                assert!(is_permanent(&commit, "voted no"), "{commit:?}");
                assert_eq!(bank.account().await, (100, 0));
            }

            #[tokio::test]
            async fn transient_failure_records_nothing() {
                let bank = bank().await;
                let request = req(Phase::Execute, "t1", 30, 1);
                let busy = bank
                    .barrier
                    .run(&request, |conn| {
                        Box::pin(async move {
                            change(conn, -30, 0).await?;
                            Err(HandlerError::transient("downstream busy"))
                        })
                    })
                    .await;
                assert_eq!(busy, Err(HandlerError::transient("downstream busy")));
                assert_eq!(bank.account().await, (100, 0));
                // The retry runs the business code for real.
                let retry = bank.call(&req(Phase::Execute, "t1", 30, 2)).await;
                assert_eq!(output(retry), "execute on attempt 2");
                assert_eq!(bank.account().await, (70, 0));
            }

            #[tokio::test]
            async fn dropped_guard_records_nothing() {
                let bank = bank().await;
                let request = req(Phase::Execute, "t1", 30, 1);
                match bank.barrier.enter(&request).await {
                    Ok(Entry::Fresh(mut guard)) => {
                        change(guard.tx(), -30, 0).await.expect("debit");
                        drop(guard);
                    }
                    other => panic!("expected a fresh entry, got {other:?}"),
                }
                assert_eq!(bank.account().await, (100, 0));
                let retry = bank.call(&req(Phase::Execute, "t1", 30, 2)).await;
                assert_eq!(output(retry), "execute on attempt 2");
            }

            #[tokio::test]
            async fn empty_tx_id_is_a_permanent_error() {
                let bank = bank().await;
                let result = bank.call(&req(Phase::Execute, "", 30, 1)).await;
                assert!(is_permanent(&result, "tx_id"), "{result:?}");
                assert_eq!(bank.account().await, (100, 0));
            }

            #[tokio::test]
            async fn missing_table_is_a_permanent_error() {
                let (pool, _store) = $bank().await;
                let barrier = Barrier::<Db>::new(pool);
                let entry = barrier.enter(&req(Phase::Execute, "t1", 30, 1)).await;
                assert!(
                    matches!(&entry, Err(HandlerError::Permanent(m)) if m.contains("migrate")),
                    "{entry:?}"
                );
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn concurrent_duplicate_executes_debit_once() {
                let bank = Arc::new(bank().await);
                let calls: Vec<_> = (1..=20)
                    .map(|attempt| {
                        let bank = Arc::clone(&bank);
                        tokio::spawn(async move {
                            bank.call(&req(Phase::Execute, "t1", 30, attempt)).await
                        })
                    })
                    .collect();
                let mut outputs = Vec::new();
                for call in calls {
                    outputs.push(output(call.await.expect("task")));
                }
                // Every caller sees the one result that was recorded.
                outputs.dedup();
                assert_eq!(outputs.len(), 1, "{outputs:?}");
                assert_eq!(bank.account().await, (70, 0));
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn racing_action_and_compensation_always_net_to_zero() {
                let bank = Arc::new(bank().await);
                for round in 0..10 {
                    let tx_id = format!("race-{round}");
                    let execute = {
                        let bank = Arc::clone(&bank);
                        let req = req(Phase::Execute, &tx_id, 30, 1);
                        tokio::spawn(async move { bank.call(&req).await })
                    };
                    let compensate = {
                        let bank = Arc::clone(&bank);
                        let req = req(Phase::Compensate, &tx_id, 30, 1);
                        tokio::spawn(async move { bank.call(&req).await })
                    };
                    let executed = execute.await.expect("task");
                    compensate.await.expect("task").expect("compensation succeeds");
                    // Either the action ran and was undone, or it was refused as hanging.
                    assert!(
                        executed.is_ok() || is_failed(&executed, "already compensated"),
                        "{executed:?}"
                    );
                    assert_eq!(bank.account().await, (100, 0), "round {round}");
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn racing_commit_and_abort_exactly_one_wins() {
                let bank = Arc::new(bank().await);
                for round in 0..10 {
                    let tx_id = format!("race-{round}");
                    bank.call(&req(Phase::Prepare, &tx_id, 10, 1))
                        .await
                        .expect("prepare");
                    let commit = {
                        let bank = Arc::clone(&bank);
                        let req = req(Phase::Commit, &tx_id, 10, 1);
                        tokio::spawn(async move { bank.call(&req).await })
                    };
                    let abort = {
                        let bank = Arc::clone(&bank);
                        let req = req(Phase::Abort, &tx_id, 10, 1);
                        tokio::spawn(async move { bank.call(&req).await })
                    };
                    let committed = commit.await.expect("task");
                    let aborted = abort.await.expect("task");
                    assert!(
                        committed.is_ok() != aborted.is_ok(),
                        "round {round}: {committed:?} / {aborted:?}"
                    );
                    let (_, held) = bank.account().await;
                    assert_eq!(held, 0, "round {round}");
                }
                // Each committed round kept its 10; each aborted one gave it back.
                let (balance, _) = bank.account().await;
                assert!((0..=100).contains(&balance) && balance % 10 == 0, "{balance}");
            }
        }
    };
}

/// A fresh PostgreSQL database, dropped with the returned holder.
async fn pg_pool() -> (sqlx::PgPool, Box<dyn Send + Sync>) {
    let db = support::db::fresh_database().await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect(&db.url)
        .await
        .expect("connect");
    (pool, Box::new(db))
}

/// A fresh SQLite file in the temp dir, removed (with its journal files) when dropped.
struct SqliteFile(std::path::PathBuf);

impl Drop for SqliteFile {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut path = self.0.clone().into_os_string();
            path.push(suffix);
            let _ = std::fs::remove_file(path);
        }
    }
}

async fn sqlite_pool() -> (sqlx::SqlitePool, Box<dyn Send + Sync>) {
    let path = std::env::temp_dir().join(format!("baton-barrier-{}.db", uuid::Uuid::now_v7()));
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .busy_timeout(std::time::Duration::from_secs(10));
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(8)
        .connect_with(options)
        .await
        .expect("open sqlite");
    (pool, Box::new(SqliteFile(path)))
}

suite!(postgres, sqlx::Postgres, crate::pg_pool);
suite!(sqlite, sqlx::Sqlite, crate::sqlite_pool);
