//! `baton auth hash-token`: the SHA-256 form of a bearer token that `baton serve --auth-token`
//! expects, so that only hashes are ever written into configuration.

use std::io::Read as _;

use anyhow::Context as _;
use clap::Subcommand;

use baton_server::api::auth::{self, TokenHash};

/// The `baton auth` subcommands.
#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Read a token from stdin and print its hash (sha256:HEX) for --auth-token; with
    /// --generate, make a random token and print it and its hash.
    HashToken {
        /// Generate a random token instead of reading one.
        #[arg(long)]
        generate: bool,
    },
}

pub(super) fn run(command: AuthCommand) -> anyhow::Result<()> {
    match command {
        AuthCommand::HashToken { generate: true } => {
            let token = auth::generate_token();
            let hash = TokenHash::of(&token);
            super::print_out(&format!("token: {token}\nhash:  {hash}\n"))?;
        }
        AuthCommand::HashToken { generate: false } => {
            let mut text = String::new();
            std::io::stdin()
                .take(auth::MAX_TOKEN_CHARS as u64 + 3)
                .read_to_string(&mut text)
                .context("cannot read a token from stdin")?;
            let token = text.strip_suffix('\n').unwrap_or(&text);
            let token = token.strip_suffix('\r').unwrap_or(token);
            if token.is_empty() {
                anyhow::bail!("no token on stdin: pipe one in, or pass --generate");
            }
            auth::check_token(token)?;
            super::print_out(&format!("{}\n", TokenHash::of(token)))?;
        }
    }
    Ok(())
}
