//! A small bank participant: accounts in its own SQLite database, every handler behind the
//! participant barrier, so repeated, reordered or crashed-and-resent calls move money once.
//!
//! Two-phase commit (TCC style): `debit` reserves on prepare, takes the money on commit and
//! releases the reservation on abort; `credit` checks the account on prepare and adds the money
//! on commit. Saga: `withdraw` and `deposit`, each compensated by the opposite move.
//!
//! Shared by `examples/bank_transfer` and the randomized transfer test.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use baton_tx::participant::barrier::{Business, SqliteBarrier};
use baton_tx::participant::{HandlerError, Participant, Reply, Request};
use serde::Deserialize;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{SqliteConnection, SqlitePool};

/// What a transfer branch carries.
#[derive(Debug, Deserialize)]
pub struct Move {
    pub account: String,
    pub amount: i64,
}

/// Failures to inject around the real work (for the randomized test; all zero by default).
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    /// Probability of answering UNAVAILABLE before doing anything.
    pub fail_before: f64,
    /// Probability of doing the work, then answering UNAVAILABLE (a lost reply).
    pub fail_after: f64,
    /// Probability of stalling `hang` before doing the work (past the caller's timeout).
    pub stall: f64,
    pub hang: Duration,
}

/// One bank: its database, barrier and the participant that serves it.
pub struct Bank {
    pub name: String,
    pool: SqlitePool,
    barrier: SqliteBarrier,
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Reserve,
    Take,
    Release,
    CheckAccount,
    Add,
    Nothing,
    Withdraw,
    Deposit,
    TakeBack,
}

impl Bank {
    /// Opens (creating if needed) the bank's SQLite database at `path`.
    pub async fn open(name: &str, path: &std::path::Path) -> Result<Arc<Bank>, sqlx::Error> {
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS accounts (id TEXT PRIMARY KEY, \
             balance INTEGER NOT NULL, reserved INTEGER NOT NULL DEFAULT 0)",
        )
        .execute(&pool)
        .await?;
        let barrier = SqliteBarrier::new(pool.clone());
        barrier
            .migrate()
            .await
            .map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
        Ok(Arc::new(Bank {
            name: name.to_string(),
            pool,
            barrier,
        }))
    }

    pub async fn open_account(&self, id: &str, balance: i64) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO accounts (id, balance) VALUES (?, ?)")
            .bind(id)
            .bind(balance)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Every account with its balance and reservation, by id.
    pub async fn accounts(&self) -> Result<Vec<(String, i64, i64)>, sqlx::Error> {
        sqlx::query_as("SELECT id, balance, reserved FROM accounts ORDER BY id")
            .fetch_all(&self.pool)
            .await
    }

    /// The money in the bank, and how much of it is reserved.
    pub async fn totals(&self) -> Result<(i64, i64), sqlx::Error> {
        sqlx::query_as("SELECT COALESCE(SUM(balance), 0), COALESCE(SUM(reserved), 0) FROM accounts")
            .fetch_one(&self.pool)
            .await
    }

    /// The participant: 2PC actions `debit` and `credit`, saga actions `withdraw` and `deposit`.
    pub fn participant(self: &Arc<Self>, faults: Faults) -> Participant {
        let h = |op: Op| {
            let bank = self.clone();
            move |req: Request| {
                let bank = bank.clone();
                async move { bank.handle(req, op, faults).await }
            }
        };
        Participant::new()
            .on_prepare("debit", h(Op::Reserve))
            .on_commit("debit", h(Op::Take))
            .on_abort("debit", h(Op::Release))
            .on_prepare("credit", h(Op::CheckAccount))
            .on_commit("credit", h(Op::Add))
            .on_abort("credit", h(Op::Nothing))
            .on_execute("withdraw", h(Op::Withdraw))
            .on_compensate("withdraw", h(Op::Deposit))
            .on_execute("deposit", h(Op::Deposit))
            // Undoing a deposit must not fail for lack of funds: it takes the money back as is.
            .on_compensate("deposit", h(Op::TakeBack))
    }

    async fn handle(&self, req: Request, op: Op, faults: Faults) -> Result<Reply, HandlerError> {
        if rand::random::<f64>() < faults.fail_before {
            return Err(HandlerError::transient("injected: unavailable"));
        }
        if rand::random::<f64>() < faults.stall {
            tokio::time::sleep(faults.hang).await;
        }
        let m: Move = req.json()?;
        let reply = self
            .barrier
            .run(&req, move |conn| -> Business<'_> {
                Box::pin(async move { apply(conn, op, &m.account, m.amount).await })
            })
            .await?;
        if rand::random::<f64>() < faults.fail_after {
            return Err(HandlerError::transient("injected: reply lost"));
        }
        Ok(reply)
    }
}

fn db(e: sqlx::Error) -> HandlerError {
    HandlerError::transient(format!("database: {e}"))
}

async fn apply(
    conn: &mut SqliteConnection,
    op: Op,
    account: &str,
    amount: i64,
) -> Result<Reply, HandlerError> {
    let found: Option<(i64, i64)> =
        sqlx::query_as("SELECT balance, reserved FROM accounts WHERE id = ?")
            .bind(account)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db)?;
    let Some((balance, reserved)) = found else {
        return Err(HandlerError::failed(format!("no account {account}")));
    };
    let (balance, reserved) = match op {
        Op::Reserve if balance - reserved < amount => {
            return Err(HandlerError::failed(format!(
                "insufficient funds in {account}"
            )))
        }
        Op::Withdraw if balance < amount => {
            return Err(HandlerError::failed(format!(
                "insufficient funds in {account}"
            )))
        }
        Op::Reserve => (balance, reserved + amount),
        Op::Take => (balance - amount, reserved - amount),
        Op::Release => (balance, reserved - amount),
        Op::CheckAccount | Op::Nothing => (balance, reserved),
        Op::Add | Op::Deposit => (balance + amount, reserved),
        Op::Withdraw | Op::TakeBack => (balance - amount, reserved),
    };
    sqlx::query("UPDATE accounts SET balance = ?, reserved = ? WHERE id = ?")
        .bind(balance)
        .bind(reserved)
        .bind(account)
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    Ok(Reply::ok())
}
