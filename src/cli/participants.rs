//! `baton participants ...`: the participant registry as the coordinator sees it.

use clap::Subcommand;
use serde_json::json;

use super::{output, print_json, print_out, Remote};

/// The `participants` subcommands.
#[derive(Debug, PartialEq, Eq, Subcommand)]
pub enum ParticipantsCommand {
    /// Registered participant endpoints.
    List {
        /// Only endpoints of this service.
        #[arg(long)]
        service: Option<String>,
    },
}

pub(super) async fn run(remote: &Remote, command: ParticipantsCommand) -> anyhow::Result<()> {
    let client = remote.connect().await?;
    match command {
        ParticipantsCommand::List { service } => {
            let participants = client.list_participants(service.as_deref()).await?;
            if remote.json {
                let list: Vec<_> = participants.iter().map(output::participant_json).collect();
                print_json(&json!({ "participants": list }))
            } else {
                print_out(&output::participants_table(&participants))
            }
        }
    }
}
