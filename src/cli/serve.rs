//! `tsad serve`: resolve the configuration, start the runtime, serve until a signal.
use anyhow::anyhow;
use tracing_subscriber::EnvFilter;

use super::CliError;
use crate::app::{shutdown_signal, Application};
use crate::config::ServeArgs;

pub fn run(args: ServeArgs) -> Result<(), CliError> {
    let settings = args.resolve().map_err(|e| CliError::Usage(anyhow!(e)))?;
    // Colours only for a terminal: a log file or collector gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("TSAD_LOG").unwrap_or_else(|_| EnvFilter::new("info")))
        .with_ansi(ansi)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("tsad-rt")
        .build()
        .map_err(|e| CliError::Runtime(anyhow!(e)))?;
    runtime
        .block_on(async {
            let app = Application::build(settings).await?;
            app.run_until(shutdown_signal()).await
        })
        .map_err(CliError::Runtime)
}
