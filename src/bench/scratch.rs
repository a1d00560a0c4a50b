//! The log a bench run writes to: a fresh PostgreSQL database (created here, dropped at the end),
//! a database the user named, or temporary SQLite files.

use std::path::PathBuf;
use std::time::Duration;

use sqlx::{Connection, Executor, PgConnection};

use super::{BenchError, Store, DEFAULT_SERVER_URL};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where Baton's log and the baseline's tables live for one run.
#[derive(Debug)]
pub struct Scratch {
    /// The coordinator's database URL.
    pub baton_url: String,
    /// The baseline's database URL (the same PostgreSQL database; its own SQLite file).
    pub baseline_url: String,
    owned: Owned,
}

/// What this run created and must remove.
#[derive(Debug)]
enum Owned {
    /// A database on `server`, dropped at the end.
    Database { server: String, name: String },
    /// A directory of SQLite files, removed at the end.
    Directory(PathBuf),
    /// The user's database: left as it is (the baseline drops its own tables).
    Nothing,
}

impl Scratch {
    /// Creates the scratch log `store` asks for.
    pub async fn create(store: &Store) -> Result<Scratch, BenchError> {
        match store {
            Store::Postgres(Some(url)) => Ok(Scratch {
                baton_url: url.clone(),
                baseline_url: url.clone(),
                owned: Owned::Nothing,
            }),
            Store::Postgres(None) => {
                let server = DEFAULT_SERVER_URL.to_string();
                let name = format!("baton_bench_{}", uuid::Uuid::now_v7().simple());
                let mut conn = connect(&server).await?;
                conn.execute(format!("CREATE DATABASE \"{name}\"").as_str())
                    .await
                    .map_err(|e| BenchError::Database(format!("create database {name}: {e}")))?;
                let _ = conn.close().await;
                let url = with_database(&server, &name);
                Ok(Scratch {
                    baton_url: url.clone(),
                    baseline_url: url,
                    owned: Owned::Database { server, name },
                })
            }
            Store::Sqlite => {
                let dir = std::env::temp_dir()
                    .join(format!("baton-bench-{}", uuid::Uuid::now_v7().simple()));
                std::fs::create_dir_all(&dir).map_err(|e| {
                    BenchError::Database(format!("create directory {}: {e}", dir.display()))
                })?;
                Ok(Scratch {
                    baton_url: format!("sqlite://{}", dir.join("baton.db").display()),
                    baseline_url: format!("sqlite://{}", dir.join("baseline.db").display()),
                    owned: Owned::Directory(dir),
                })
            }
        }
    }

    /// A short description for the report (no credentials).
    pub fn describe(&self) -> String {
        match &self.owned {
            Owned::Database { name, .. } => {
                format!("postgres (fresh database {name} on 127.0.0.1:5432)")
            }
            Owned::Directory(_) => "sqlite (temporary files)".to_string(),
            Owned::Nothing => "postgres (--database-url)".to_string(),
        }
    }

    /// Drops what [`Scratch::create`] made. Failures are reported on stderr, not returned: the
    /// run's own result matters more.
    pub async fn remove(self) {
        match self.owned {
            Owned::Database { server, name } => {
                let dropped = async {
                    let mut conn = connect(&server).await?;
                    conn.execute(
                        format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)").as_str(),
                    )
                    .await
                    .map_err(|e| BenchError::Database(e.to_string()))?;
                    let _ = conn.close().await;
                    Ok::<(), BenchError>(())
                };
                if let Err(e) = dropped.await {
                    tracing::warn!(database = %name, error = %e, "could not drop the bench database");
                }
            }
            Owned::Directory(dir) => {
                if let Err(e) = std::fs::remove_dir_all(&dir) {
                    tracing::warn!(dir = %dir.display(), error = %e, "could not remove the bench files");
                }
            }
            Owned::Nothing => {}
        }
    }
}

async fn connect(url: &str) -> Result<PgConnection, BenchError> {
    match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect(url)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(BenchError::Database(format!(
            "cannot connect to the local server 127.0.0.1:5432 as postgres ({e}); start it, or \
             give --database-url or --sqlite"
        ))),
        Err(_) => Err(BenchError::Database(format!(
            "the local server 127.0.0.1:5432 did not answer within {CONNECT_TIMEOUT:?}"
        ))),
    }
}

/// `server` with its database (the URL path) replaced by `name`, keeping any query string.
fn with_database(server: &str, name: &str) -> String {
    let (base, query) = match server.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (server, None),
    };
    let authority = base.find("://").map_or(0, |i| i + 3);
    let path = base[authority..]
        .find('/')
        .map_or(base.len(), |i| authority + i);
    match query {
        Some(query) => format!("{}/{name}?{query}", &base[..path]),
        None => format!("{}/{name}", &base[..path]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_database_of_a_url() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "b"),
            "postgres://postgres@127.0.0.1:5432/b"
        );
        assert_eq!(
            with_database("postgres://u@h?sslmode=disable", "b"),
            "postgres://u@h/b?sslmode=disable"
        );
    }
}
