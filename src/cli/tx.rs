//! `baton tx ...`: list, inspect, retry, cancel and purge transactions.

use std::time::{Duration, SystemTime};

use clap::Subcommand;
use serde_json::json;

use super::{output, print_json, print_out, Remote};
use baton_tx::client::{Client, Event, ListQuery, Transaction, TxId, TxState};

/// Events fetched per `Events` call; the coordinator's default page size.
const EVENTS_PAGE: u32 = 1000;
/// A bound on the pages fetched for one transaction, so a misbehaving server cannot make the CLI
/// loop forever.
const MAX_EVENT_PAGES: usize = 1000;

/// The `tx` subcommands.
#[derive(Debug, PartialEq, Eq, Subcommand)]
pub enum TxCommand {
    /// Transactions, newest first.
    List {
        /// Only transactions in this state (repeatable).
        #[arg(long = "state", value_name = "STATE", value_parser = output::parse_state)]
        states: Vec<TxState>,
        /// Only transactions with this label, as key=value (repeatable; all must match).
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = output::parse_label)]
        labels: Vec<(String, String)>,
        /// Only transactions created since this RFC 3339 time or this long ago (1h, 30m, 2d).
        #[arg(long, value_name = "TIME|DURATION", value_parser = parse_since_now)]
        since: Option<SystemTime>,
        /// Page size (the coordinator's default is 50).
        #[arg(long)]
        limit: Option<u32>,
        /// Continue from the token a previous page printed.
        #[arg(long)]
        page_token: Option<String>,
    },
    /// A transaction: its header, branches and event timeline.
    Show {
        /// The transaction id.
        id: String,
    },
    /// A transaction's event timeline.
    Events {
        /// The transaction id.
        id: String,
    },
    /// Resume a failed transaction: a saga whose compensation gave up compensates again. Only
    /// the failed state can be retried; an unfinished transaction is still being driven.
    Retry {
        /// The transaction id.
        id: String,
    },
    /// Cancel a transaction: a running saga compensates, a 2PC before its decision aborts.
    Cancel {
        /// The transaction id.
        id: String,
        /// Why, recorded in the transaction's history.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Delete finished (committed, compensated, aborted) transactions and their history that
    /// ended longer ago than --older-than, now, as the retention sweep does. Failed and
    /// unfinished transactions are never deleted.
    Purge {
        /// How long ago they must have ended, such as 7d, 12h, 30m or 90s.
        #[arg(long, value_name = "DURATION", value_parser = parse_age)]
        older_than: Duration,
        /// Transactions deleted per database transaction [default: the coordinator's
        /// --retention-batch].
        #[arg(long)]
        batch: Option<u32>,
    },
}

/// A purge age: a duration greater than zero.
fn parse_age(text: &str) -> Result<Duration, String> {
    let age = output::parse_duration(text)?;
    if age.is_zero() {
        return Err("must be greater than 0".to_string());
    }
    Ok(age)
}

fn parse_since_now(text: &str) -> Result<SystemTime, String> {
    output::parse_since(text, SystemTime::now())
}

pub(super) async fn run(remote: &Remote, command: TxCommand) -> anyhow::Result<()> {
    let client = remote.connect().await?;
    match command {
        TxCommand::List {
            states,
            labels,
            since,
            limit,
            page_token,
        } => {
            let query = ListQuery {
                states,
                labels: labels.into_iter().collect(),
                created_after: since,
                created_before: None,
                limit: limit.unwrap_or(0),
                page_token,
            };
            let page = client.list(query).await?;
            if remote.json {
                let list: Vec<_> = page.transactions.iter().map(output::tx_json).collect();
                return print_json(&json!({
                    "transactions": list,
                    "next_page_token": page.next_page_token.unwrap_or_default(),
                }));
            }
            print_out(&output::tx_table(&page.transactions))?;
            if let Some(token) = &page.next_page_token {
                print_out(&format!("\nmore: --page-token {token}\n"))?;
            }
            Ok(())
        }
        TxCommand::Show { id } => {
            let id = tx_id(&id)?;
            let tx = client.get(id).await?;
            let events = all_events(&client, id).await?;
            if remote.json {
                let mut value = output::tx_json(&tx);
                value["events"] = events.iter().map(output::event_json).collect();
                return print_json(&value);
            }
            print_out(&output::tx_detail(&tx))?;
            print_out("\nevents:\n")?;
            print_out(&output::timeline(&events, &tx.branches))
        }
        TxCommand::Events { id } => {
            let id = tx_id(&id)?;
            let events = all_events(&client, id).await?;
            if remote.json {
                let list: Vec<_> = events.iter().map(output::event_json).collect();
                return print_json(&json!({ "tx_id": id.to_string(), "events": list }));
            }
            print_out(&output::timeline(&events, &[]))
        }
        TxCommand::Retry { id } => print_tx(remote, &client.retry(tx_id(&id)?).await?),
        TxCommand::Cancel { id, reason } => {
            print_tx(remote, &client.cancel(tx_id(&id)?, &reason).await?)
        }
        TxCommand::Purge { older_than, batch } => {
            let purged = client.purge(older_than, batch.unwrap_or(0)).await?;
            if remote.json {
                return print_json(&json!({ "purged": purged }));
            }
            print_out(&format!("purged {purged} finished transactions\n"))
        }
    }
}

/// The id argument. Read after connecting, so an unreachable coordinator is reported first, as
/// for every other command.
fn tx_id(text: &str) -> anyhow::Result<TxId> {
    Ok(text.parse()?)
}

fn print_tx(remote: &Remote, tx: &Transaction) -> anyhow::Result<()> {
    if remote.json {
        return print_json(&output::tx_json(tx));
    }
    print_out(&output::tx_detail(tx))
}

/// The whole history, page by page.
async fn all_events(client: &Client, id: TxId) -> anyhow::Result<Vec<Event>> {
    let mut events: Vec<Event> = Vec::new();
    for _ in 0..MAX_EVENT_PAGES {
        let after = events.last().map_or(0, |e| e.seq);
        let page = client.events(id, after, EVENTS_PAGE).await?;
        let full = page.len() >= EVENTS_PAGE as usize;
        // A page that does not move forward would repeat forever.
        let moved = page.last().is_some_and(|e| e.seq > after);
        events.extend(page);
        if !full || !moved {
            break;
        }
    }
    Ok(events)
}
