//! `albef`: the command line. It parses arguments and wires the stage crates together; the
//! work itself lives in `ingest/`, `filter/`, `train/` and `registry/`.
mod cmd;
mod dataset_sql;
mod output;

use clap::{Parser, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "albef",
    version,
    about = "Turn noisy web image-text pairs into ALBEF models",
    long_about = "Turn noisy web image-text pairs into ALBEF models.\n\n\
        ingest -> train -> filter -> train again -> evaluate -> promote, with every run, metric, \
        checkpoint and dataset version tracked in a registry (an embedded SQLite file under \
        ALBEF_HOME by default, or Postgres with --registry postgres://...)."
)]
struct Cli {
    /// Registry URL: postgres://USER@HOST/DB or sqlite://PATH [default: sqlite under --home]
    #[arg(long, global = true, env = "ALBEF_REGISTRY_URL")]
    registry: Option<String>,
    /// Folder for the default SQLite registry and for datasets and checkpoints
    #[arg(
        long,
        global = true,
        env = "ALBEF_HOME",
        default_value = "./albef-home"
    )]
    home: PathBuf,
    /// Log format on stderr; the level comes from RUST_LOG (default: info)
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: cmd::Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Logs go to stderr, coloured only when stderr is a terminal (a log file or a pipe gets
/// plain text, without ANSI escape codes).
fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let ctx = cmd::Context::new(cli.registry, cli.home);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli.command.run(ctx)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            match cmd::stopped_by() {
                Some(signal) => ExitCode::from(128 + signal as u8),
                None => ExitCode::FAILURE,
            }
        }
    }
}

// Keeps the derive honest: every command and flag has help text and no two collide.
#[cfg(test)]
mod tests {
    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
