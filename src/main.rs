//! The `baton` binary: parse the command line, set up logging, run, report errors.

use std::process::ExitCode;

use baton_cli::cli::{Cli, Command, LogFormat};
use clap::Parser;
use tracing_subscriber::EnvFilter;

/// mimalloc rather than glibc's malloc: a call and a log write allocate and free many small
/// buffers across worker threads, and glibc's arenas spent about a sixth of the coordinator's CPU
/// on that in `baton bench` (docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One thread means a current-thread runtime: every task runs on the main thread, without
    // the multi-thread scheduler's shared queues and its worker beside the thread blocked in
    // `block_on`. Against a multi-thread runtime of one worker, on 2 CPUs shared with
    // PostgreSQL, `baton bench` spent 10 % less CPU per W1 saga and ran 5 % more of them at
    // C=32 (docs/BENCHMARKS.md). The bench's participant process always runs so: it only
    // answers calls that return at once.
    let threads = cli.worker_threads();
    let mut builder = if threads == 1 || matches!(cli.command, Command::BenchParticipant(_)) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut multi = tokio::runtime::Builder::new_multi_thread();
        multi.worker_threads(threads);
        multi
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    // Inside the runtime: the OTLP exporter (feature `otlp`) keeps its gRPC client there. The
    // guard flushes exported spans when main returns.
    let _export = {
        let _in_runtime = runtime.enter();
        init_tracing(cli.log_format)
    };
    match runtime.block_on(baton_cli::cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr so command output on stdout stays parseable. `BATON_LOG` wins over
/// `RUST_LOG`; the default level is `info`. With the `otlp` feature and
/// `OTEL_EXPORTER_OTLP_ENDPOINT` set, spans at `info` and above are also exported over OTLP,
/// whatever the log level.
/// Returns what must live until the end of `main` (the exporter, which flushes when dropped).
fn init_tracing(format: LogFormat) -> Option<Box<dyn std::any::Any>> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;

    let filter = std::env::var("BATON_LOG")
        .ok()
        .and_then(|spec| EnvFilter::try_new(spec).ok())
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    // Colours only for a terminal: a log file or collector gets plain text, its fields written
    // without the styles' formatting (src/log_fields.rs).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let fmt = match format {
        LogFormat::Text if !ansi => fmt.fmt_fields(baton_cli::log_fields::PlainFields).boxed(),
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().boxed(),
    };
    let registry = tracing_subscriber::registry().with(fmt.with_filter(filter));
    #[cfg(feature = "otlp")]
    {
        match baton_server::telemetry::otlp::tracer() {
            Ok(Some((tracer, guard))) => {
                let export = tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_filter(tracing_subscriber::filter::LevelFilter::INFO);
                registry.with(export).init();
                return Some(Box::new(guard));
            }
            Ok(None) => {}
            Err(e) => eprintln!("warning: not exporting spans: {e}"),
        }
    }
    registry.init();
    None
}
