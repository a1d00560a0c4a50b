//! Baton in one process, on the embedded SQLite store, with no setup:
//!
//! ```sh
//! cargo run --example quickstart
//! ```
//!
//! It starts a coordinator and three participant services (inventory, payments, shipping) on free
//! loopback ports, runs one order saga that commits and one whose payment is declined (so the
//! inventory reservation is compensated), and prints both transactions' event logs.

use std::time::Duration;

use baton_server::api::auth::AuthConfig;
use baton_server::api::{self, Limits, ServeConfig};
use baton_server::coordinator::Config;
use baton_server::registry::RegistryConfig;
use baton_server::store::StoreOptions;
use baton_tx::client::{Client, Event, Saga, Step, Transaction, TxState};
use baton_tx::participant::{HandlerError, Participant, Registration, Reply, Request};
use serde::Deserialize;

#[derive(Deserialize)]
struct Charge {
    amount: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The embedded store: one SQLite file in a fresh temporary directory.
    let dir = std::env::temp_dir().join(format!("baton-quickstart-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let database_url = format!("sqlite://{}", dir.join("baton.db").display());

    // The coordinator, on a free loopback port, without TLS and with authentication off: only
    // this process talks to it. `baton serve` needs bearer tokens (or an explicit --no-auth).
    let coordinator = api::serve(ServeConfig {
        listen: "127.0.0.1:0".parse()?,
        http_listen: None,
        database_url,
        store: StoreOptions::default(),
        migrate: true,
        coordinator: Config {
            id: "quickstart".into(),
            ..Config::default()
        },
        registry: RegistryConfig::default(),
        limits: Limits::default(),
        drain: Duration::from_secs(5),
        header_timeout: api::DEFAULT_HEADER_TIMEOUT,
        max_client_connections: api::DEFAULT_MAX_CLIENT_CONNECTIONS,
        auth: AuthConfig::Disabled,
        tls: None,
        console: false,
    })
    .await?;
    println!("coordinator on {}", coordinator.endpoint());
    println!("authentication is off: loopback only, for this demo (see README, Security)");

    // Three participant services, each an action and its compensation in a few lines.
    let inventory = Participant::new()
        .on_execute("reserve", |req: Request| async move {
            println!("  inventory: reserve items for {}", req.tx_id);
            Ok(Reply::output(b"reservation r-1".to_vec()))
        })
        .on_compensate("reserve", |req: Request| async move {
            println!("  inventory: release the reservation of {}", req.tx_id);
            Ok(Reply::ok())
        })
        .serve("127.0.0.1:0")
        .await?;
    let payments = Participant::new()
        .on_execute("charge", |req: Request| async move {
            let charge: Charge = req.json()?;
            if charge.amount > 100 {
                println!(
                    "  payments: decline {} (amount {})",
                    req.tx_id, charge.amount
                );
                return Err(HandlerError::failed("card declined: amount over the limit"));
            }
            println!("  payments: charge {} for {}", charge.amount, req.tx_id);
            Ok(Reply::ok())
        })
        .on_compensate("charge", |req: Request| async move {
            println!("  payments: refund {}", req.tx_id);
            Ok(Reply::ok())
        })
        .serve("127.0.0.1:0")
        .await?;
    let shipping = Participant::new()
        .on_execute("ship", |req: Request| async move {
            println!("  shipping: ship {}", req.tx_id);
            Ok(Reply::ok())
        })
        .serve("127.0.0.1:0")
        .await?;
    for (service, server) in [
        ("inventory", &inventory),
        ("payments", &payments),
        ("shipping", &shipping),
    ] {
        server
            .register(Registration::new(coordinator.endpoint(), service))
            .await?;
    }

    // An application defines its sagas in code.
    let client = Client::connect(coordinator.endpoint()).await?;
    let order = |amount: u64| -> anyhow::Result<Saga> {
        Ok(Saga::new()
            .step(
                Step::new("reserve", "inventory")
                    .action("reserve")
                    .compensate("reserve"),
            )
            .step(
                Step::new("charge", "payments")
                    .action("charge")
                    .compensate("charge")
                    .json(&serde_json::json!({ "amount": amount }))?,
            )
            .step(Step::new("ship", "shipping").action("ship"))
            .label("example", "quickstart")
            .timeout(Duration::from_secs(30)))
    };

    let mut failures = 0;
    for (what, amount, expected) in [
        ("order that commits", 40, TxState::Committed),
        ("order whose payment is declined", 500, TxState::Compensated),
    ] {
        println!("\n== {what}");
        let tx = client.run(order(amount)?).await?;
        let state = tx.state;
        println!("transaction {} is {state}", tx.id);
        if let Some(reason) = &tx.last_error {
            println!("reason: {reason}");
        }
        let events = client.events(tx.id, 0, 1000).await?;
        print_history(&tx, &events);
        if state != expected {
            failures += 1;
            eprintln!("expected {expected:?}, got {state:?}");
        }
    }

    inventory.shutdown().await;
    payments.shutdown().await;
    shipping.shutdown().await;
    coordinator.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    anyhow::ensure!(failures == 0, "the quickstart did not end as expected");
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
