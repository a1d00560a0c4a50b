//! Rust participants for the Python SDK's example and interop tests (sdks/python,
//! examples/python): they serve next to Python participants against one coordinator.
//!
//! ```sh
//! BATON_ADDR=http://127.0.0.1:7600 cargo run --example rust_participants
//! ```
//!
//! - With `BATON_ADDR`, serves and registers the `inventory` (action `reserve`, compensated by
//!   `reserve`) and `shipping` (action `ship`, which fails for the sku `FRAGILE`) services of the
//!   order saga. `BATON_TOKEN` is sent when set.
//! - With `BARRIER_DATABASE_URL`, also serves a `ledger` participant whose handlers go through the
//!   Rust `PgBarrier` on that PostgreSQL database: `credit` (execute / compensate) and `hold`
//!   (prepare / commit / abort) each insert a row into `ledger_entries` in the barrier's local
//!   transaction. The Python barrier tests call it directly to check that both SDKs share one
//!   `baton_barrier` table.
//!
//! Prints `<name> <endpoint>` per participant, then `ready`, and serves until SIGTERM or Ctrl-C.

use baton_tx::participant::barrier::PgBarrier;
use baton_tx::participant::{HandlerError, Participant, Registration, Reply, Request};
use serde::Deserialize;

#[derive(Deserialize)]
struct Order {
    order: String,
    sku: String,
    qty: u32,
}

#[derive(Deserialize)]
struct Amount {
    amount: i64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut servers = Vec::new();
    if let Ok(addr) = std::env::var("BATON_ADDR") {
        let token = std::env::var("BATON_TOKEN").ok();
        let inventory = Participant::new()
            .on_execute("reserve", |req: Request| async move {
                let o: Order = req.json()?;
                println!(
                    "  inventory (rust): reserve {} x {} for {}",
                    o.qty, o.sku, o.order
                );
                Ok(Reply::ok())
            })
            .on_compensate("reserve", |req: Request| async move {
                let o: Order = req.json()?;
                println!(
                    "  inventory (rust): release {} x {} of {}",
                    o.qty, o.sku, o.order
                );
                Ok(Reply::ok())
            });
        let shipping = Participant::new().on_execute("ship", |req: Request| async move {
            let o: Order = req.json()?;
            if o.sku == "FRAGILE" {
                return Err(HandlerError::failed("no courier takes fragile goods today"));
            }
            println!("  shipping (rust): ship {}", o.order);
            Ok(Reply::ok())
        });
        for (service, participant) in [("inventory", inventory), ("shipping", shipping)] {
            let server = participant.serve("127.0.0.1:0").await?;
            let mut registration = Registration::new(addr.clone(), service);
            if let Some(token) = &token {
                registration = registration.token(token);
            }
            server.register(registration).await?;
            println!("{service} {}", server.endpoint());
            servers.push(server);
        }
    }
    if let Ok(url) = std::env::var("BARRIER_DATABASE_URL") {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&url)
            .await?;
        let barrier = PgBarrier::new(pool.clone());
        barrier.migrate().await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS ledger_entries \
             (tx_id text NOT NULL, branch bigint NOT NULL, phase text NOT NULL, \
              sdk text NOT NULL, delta bigint NOT NULL)",
        )
        .execute(&pool)
        .await?;
        let mut ledger = Participant::new();
        for (phase, action) in [
            (baton_tx::participant::Phase::Execute, "credit"),
            (baton_tx::participant::Phase::Compensate, "credit"),
            (baton_tx::participant::Phase::Prepare, "hold"),
            (baton_tx::participant::Phase::Commit, "hold"),
            (baton_tx::participant::Phase::Abort, "hold"),
        ] {
            let barrier = barrier.clone();
            ledger = ledger.on(phase, action, move |req: Request| {
                let barrier = barrier.clone();
                async move { ledger_entry(&barrier, req).await }
            });
        }
        let server = ledger.serve("127.0.0.1:0").await?;
        println!("ledger {}", server.endpoint());
        servers.push(server);
    }
    println!("ready");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    for server in servers {
        server.shutdown().await;
    }
    Ok(())
}

/// Records the call's amount (negated for compensate and abort) in `ledger_entries`, once, in the
/// barrier's transaction; the output names the SDK that did it.
async fn ledger_entry(barrier: &PgBarrier, req: Request) -> Result<Reply, HandlerError> {
    let Amount { amount } = req.json()?;
    let phase = req.phase;
    let delta = match phase {
        baton_tx::participant::Phase::Compensate | baton_tx::participant::Phase::Abort => -amount,
        _ => amount,
    };
    let (tx_id, branch) = (req.tx_id.clone(), i64::from(req.branch_index));
    barrier
        .run(&req, move |conn| {
            Box::pin(async move {
                if amount < 0 {
                    return Err(HandlerError::failed("amount must not be negative"));
                }
                sqlx::query(
                    "INSERT INTO ledger_entries (tx_id, branch, phase, sdk, delta) \
                     VALUES ($1, $2, $3, 'rust', $4)",
                )
                .bind(tx_id)
                .bind(branch)
                .bind(phase.as_str())
                .bind(delta)
                .execute(conn)
                .await
                .map_err(|e| HandlerError::transient(e.to_string()))?;
                Ok(Reply::output(b"rust".to_vec()).with_message(format!("rust {phase}")))
            })
        })
        .await
}
