//! An order saga against a running coordinator (for example `baton serve` on PostgreSQL):
//!
//! ```sh
//! cargo run -- serve --database-url postgres://postgres@127.0.0.1:5432/postgres --no-auth &
//! cargo run --example order_saga                # BATON_ADDR overrides http://127.0.0.1:7600
//! cargo run -- tx list --label example=order_saga
//! ```
//!
//! Against a coordinator with auth tokens, set `BATON_TOKEN` to a token with the `client`,
//! `operator` and `participant` roles (the example starts sagas, reads their events and registers
//! its participants).
//!
//! The example serves its own participants (inventory, payments, shipping) on free loopback
//! ports, registers them with the coordinator, and places two orders: one that ships, and one
//! whose shipping fails, so the payment is refunded and the stock released.

use std::time::Duration;

use baton_tx::client::{Client, Event, Saga, Step, Transaction};
use baton_tx::participant::{HandlerError, Participant, Registration, Reply, Request};
use serde::Deserialize;

#[derive(Deserialize)]
struct Order {
    order: String,
    sku: String,
    qty: u32,
    amount_cents: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::var("BATON_ADDR").unwrap_or_else(|_| "http://127.0.0.1:7600".into());
    let token = std::env::var("BATON_TOKEN").ok();
    let inventory = Participant::new()
        .on_execute("reserve", |req: Request| async move {
            let o: Order = req.json()?;
            println!("  inventory: reserve {} x {} for {}", o.qty, o.sku, o.order);
            Ok(Reply::ok())
        })
        .on_compensate("reserve", |req: Request| async move {
            let o: Order = req.json()?;
            println!("  inventory: release {} x {} of {}", o.qty, o.sku, o.order);
            Ok(Reply::ok())
        })
        .serve("127.0.0.1:0")
        .await?;
    let payments = Participant::new()
        .on_execute("charge", |req: Request| async move {
            let o: Order = req.json()?;
            println!(
                "  payments: charge {} cents for {}",
                o.amount_cents, o.order
            );
            Ok(Reply::output(format!("payment-{}", o.order).into_bytes()))
        })
        .on_compensate("charge", |req: Request| async move {
            let payment = req
                .output_of("charge")
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            println!("  payments: refund {payment}");
            Ok(Reply::ok())
        })
        .serve("127.0.0.1:0")
        .await?;
    let shipping = Participant::new()
        .on_execute("ship", |req: Request| async move {
            let o: Order = req.json()?;
            if o.sku == "FRAGILE" {
                return Err(HandlerError::failed("no courier takes fragile goods today"));
            }
            println!("  shipping: ship {}", o.order);
            Ok(Reply::ok())
        })
        .serve("127.0.0.1:0")
        .await?;
    for (service, server) in [
        ("inventory", &inventory),
        ("payments", &payments),
        ("shipping", &shipping),
    ] {
        let mut registration = Registration::new(addr.clone(), service);
        if let Some(token) = &token {
            registration = registration.token(token);
        }
        server.register(registration).await?;
    }

    let mut client = Client::connect(addr.clone()).await?;
    if let Some(token) = &token {
        client = client.with_token(token)?;
    }
    let run_id = std::process::id();
    for (n, sku) in [(1, "BOOK"), (2, "FRAGILE")] {
        let order = serde_json::json!({
            "order": format!("o-{run_id}-{n}"), "sku": sku, "qty": 1, "amount_cents": 1299,
        });
        let saga = Saga::new()
            .step(
                Step::new("reserve", "inventory")
                    .compensate("reserve")
                    .json(&order)?,
            )
            .step(
                Step::new("charge", "payments")
                    .compensate("charge")
                    .json(&order)?,
            )
            .step(Step::new("ship", "shipping").json(&order)?)
            .idempotency_key(format!("order-{run_id}-{n}"))
            .label("example", "order_saga")
            .timeout(Duration::from_secs(60));
        println!("\n== order {n} ({sku})");
        let tx = client.run(saga).await?;
        println!("transaction {} is {}", tx.id, tx.state);
        let events = client.events(tx.id, 0, 1000).await?;
        print_history(&tx, &events);
    }
    inventory.shutdown().await;
    payments.shutdown().await;
    shipping.shutdown().await;
    Ok(())
}

/// The transaction's branches and its history, one line each.
fn print_history(tx: &Transaction, events: &[Event]) {
    for b in &tx.branches {
        let error = b.last_error.as_deref().unwrap_or("");
        println!(
            "  branch {} {:<10} {:<12} {error}",
            b.index, b.name, b.status
        );
    }
    for e in events {
        let branch = e
            .branch
            .and_then(|index| tx.branches.iter().find(|b| b.index == index))
            .map_or("", |b| b.name.as_str());
        println!(
            "  #{:<3} {:<18} {branch:<10} {}",
            e.seq, e.kind_name, e.detail
        );
    }
}
