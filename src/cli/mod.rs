//! The `tsad` command line: argument parsing and the subcommands' edges. Errors are
//! printed as one line; usage and input errors exit with status 2.
mod admin;
mod bench;
mod eval;
mod import;
mod serve;
mod simulate;
mod train;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Streaming time-series anomaly detection with recurrent neural networks.
#[derive(Debug, Parser)]
#[command(name = "tsad", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Measure the inference core or HTTP ingest (prints a table, optionally JSON).
    Bench(bench::BenchArgs),
    /// Measure detection quality on labelled data (NAB, MIT-BIH) through the streaming core.
    Eval(eval::EvalArgs),
    /// Post one column of a CSV file into a stream of a running server.
    Import(import::ImportArgs),
    /// Training jobs of a running server: list, show, cancel, watch.
    Jobs(admin::JobsArgs),
    /// Models of a running server: list, activate a version, train a new one.
    Models(admin::ModelsArgs),
    /// Run the detection service (HTTP API, streams, storage, metrics).
    Serve(crate::config::ServeArgs),
    /// The demo: post synthetic sensor and ECG streams with injected anomalies to a running
    /// server and report which the server flagged.
    Simulate(simulate::SimulateArgs),
    /// Train a next-step forecaster on one column of a CSV file and save it as a model
    /// directory (weights.safetensors + model.json).
    Train(train::TrainArgs),
}

/// A failure the CLI reports: `Usage` for bad flags or input (exit 2), `Runtime` otherwise.
#[derive(Debug)]
pub enum CliError {
    Usage(anyhow::Error),
    Runtime(anyhow::Error),
}

/// Parses the process arguments and runs the subcommand.
pub fn main() -> ExitCode {
    use clap::CommandFactory;
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            // clap adds usage and a hint; one line says what is wrong.
            let rendered = e.render().to_string();
            let message = rendered.split("\n\n").next().unwrap_or("error: invalid arguments");
            eprintln!("{} (see --help)", message.split_whitespace().collect::<Vec<_>>().join(" "));
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        None => {
            // Bare `tsad` shows what it can do.
            let _ = Cli::command().print_help();
            println!();
            return ExitCode::SUCCESS;
        }
        Some(Command::Bench(args)) => bench::run(args),
        Some(Command::Eval(args)) => eval::run(args),
        Some(Command::Import(args)) => import::run(args),
        Some(Command::Jobs(args)) => admin::jobs(args),
        Some(Command::Models(args)) => admin::models(args),
        Some(Command::Serve(args)) => serve::run(args),
        Some(Command::Simulate(args)) => simulate::run(args),
        Some(Command::Train(args)) => train::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Usage(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
        Err(CliError::Runtime(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
