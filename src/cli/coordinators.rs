//! `baton coordinators`: the coordinators sharing the log, with their load.

use serde_json::json;

use super::{output, print_json, print_out, Remote};

pub(super) async fn run(remote: &Remote) -> anyhow::Result<()> {
    let client = remote.connect().await?;
    let coordinators = client.list_coordinators().await?;
    if remote.json {
        let list: Vec<_> = coordinators
            .iter()
            .map(|c| {
                json!({
                    "id": c.id,
                    "address": c.address,
                    "started_at": output::time(c.started_at),
                    "heartbeat_at": output::time(c.heartbeat_at),
                    "version": c.version,
                    "owned": c.owned,
                })
            })
            .collect();
        return print_json(&json!({ "coordinators": list }));
    }
    let mut table =
        output::Table::new(["ID", "ADDRESS", "STARTED", "HEARTBEAT", "VERSION", "OWNED"]);
    for c in &coordinators {
        table.row([
            c.id.clone(),
            c.address.clone(),
            output::time(c.started_at),
            output::time(c.heartbeat_at),
            c.version.clone(),
            c.owned.to_string(),
        ]);
    }
    print_out(&table.render())
}
