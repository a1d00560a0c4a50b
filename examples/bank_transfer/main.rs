//! Moving money between two banks, each with its own database and the participant barrier:
//!
//! ```sh
//! cargo run --example bank_transfer
//! ```
//!
//! Everything runs in one process on SQLite files in a temporary directory: a coordinator and two
//! bank services. It moves money with a two-phase commit (debit reserves on prepare; both banks
//! commit or both abort), then with a saga (withdraw, deposit; compensated on failure), and prints
//! the balances before and after each transfer. The total never changes.

mod bank;

use std::time::Duration;

use baton_server::api::auth::AuthConfig;
use baton_server::api::{self, Limits, ServeConfig};
use baton_server::coordinator::Config;
use baton_server::registry::RegistryConfig;
use baton_server::store::StoreOptions;
use baton_tx::client::{Client, Definition, Saga, Step, TwoPhase, TwoPhaseBranch};
use baton_tx::participant::Registration;
use serde_json::json;

use bank::{Bank, Faults};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("baton-bank-transfer-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let coordinator = api::serve(ServeConfig {
        listen: "127.0.0.1:0".parse()?,
        http_listen: None,
        database_url: format!("sqlite://{}", dir.join("baton.db").display()),
        store: StoreOptions::default(),
        migrate: true,
        coordinator: Config {
            id: "bank-transfer".into(),
            ..Config::default()
        },
        registry: RegistryConfig::default(),
        limits: Limits::default(),
        drain: Duration::from_secs(5),
        header_timeout: api::DEFAULT_HEADER_TIMEOUT,
        max_client_connections: api::DEFAULT_MAX_CLIENT_CONNECTIONS,
        // In-process on loopback: nothing else can reach it.
        auth: AuthConfig::Disabled,
        tls: None,
        console: false,
    })
    .await?;

    let a = Bank::open("bank-a", &dir.join("bank-a.db")).await?;
    let b = Bank::open("bank-b", &dir.join("bank-b.db")).await?;
    a.open_account("alice", 100).await?;
    b.open_account("bob", 50).await?;
    let mut servers = Vec::new();
    for bank in [&a, &b] {
        let server = bank
            .participant(Faults::default())
            .serve("127.0.0.1:0")
            .await?;
        server
            .register(Registration::new(coordinator.endpoint(), bank.name.clone()))
            .await?;
        servers.push(server);
    }
    let client = Client::connect(coordinator.endpoint()).await?;
    let total_before = a.totals().await?.0 + b.totals().await?.0;
    print_balances(&a, &b).await?;

    let two_phase = |amount: i64| -> anyhow::Result<TwoPhase> {
        Ok(TwoPhase::new()
            .branch(
                TwoPhaseBranch::new("debit alice", "bank-a")
                    .action("debit")
                    .json(&json!({ "account": "alice", "amount": amount }))?,
            )
            .branch(
                TwoPhaseBranch::new("credit bob", "bank-b")
                    .action("credit")
                    .json(&json!({ "account": "bob", "amount": amount }))?,
            ))
    };
    let saga = |amount: i64, to: &str| -> anyhow::Result<Saga> {
        Ok(Saga::new()
            .step(
                Step::new("withdraw", "bank-b")
                    .action("withdraw")
                    .compensate("withdraw")
                    .json(&json!({ "account": "bob", "amount": amount }))?,
            )
            .step(
                Step::new("deposit", "bank-a")
                    .action("deposit")
                    .compensate("deposit")
                    .json(&json!({ "account": to, "amount": amount }))?,
            ))
    };

    let runs: Vec<(&str, Definition)> = vec![
        ("2PC: alice pays bob 30", two_phase(30)?.into()),
        (
            "2PC: alice pays bob 500 (insufficient funds: aborts)",
            two_phase(500)?.into(),
        ),
        ("saga: bob pays alice 20", saga(20, "alice")?.into()),
        (
            "saga: bob pays a closed account 10 (compensates)",
            saga(10, "carol")?.into(),
        ),
    ];
    for (what, request) in runs {
        println!("\n== {what}");
        let tx = client.run(request).await?;
        println!("transaction {} is {}", tx.id, tx.state);
        if let Some(reason) = &tx.last_error {
            println!("reason: {reason}");
        }
        print_balances(&a, &b).await?;
    }

    let total_after = a.totals().await?.0 + b.totals().await?.0;
    println!("\ntotal money before {total_before}, after {total_after}");
    for server in servers {
        server.shutdown().await;
    }
    coordinator.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    anyhow::ensure!(total_before == total_after, "money was created or lost");
    Ok(())
}

async fn print_balances(a: &Bank, b: &Bank) -> anyhow::Result<()> {
    for bank in [a, b] {
        for (id, balance, reserved) in bank.accounts().await? {
            println!(
                "  {:<7} {:<6} balance {balance:>4}  reserved {reserved:>3}",
                bank.name, id
            );
        }
    }
    Ok(())
}
