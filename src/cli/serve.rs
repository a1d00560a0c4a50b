//! `baton serve` and `baton migrate` (owned by the coordinator work; in progress).

/// Options of `baton serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {}

/// Options of `baton migrate`.
#[derive(Debug, clap::Args)]
pub struct MigrateArgs {}

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let _ = args;
    anyhow::bail!("not yet")
}

pub async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    let _ = args;
    anyhow::bail!("not yet")
}
