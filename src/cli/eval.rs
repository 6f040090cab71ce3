//! `tsad eval`: detection quality on labelled data, through the same streaming core that
//! serves users.
use std::path::PathBuf;

use anyhow::anyhow;
use clap::{Args, Subcommand};

use super::CliError;
use crate::eval::nab_run::{table, NabRun};

#[derive(Debug, Args)]
pub struct EvalArgs {
    #[command(subcommand)]
    command: EvalCommand,
}

#[derive(Debug, Subcommand)]
enum EvalCommand {
    /// Replay a NAB-layout corpus, write NAB results and print the normalised scores of
    /// tsad and of the windowed-Gaussian baseline for every profile.
    Nab(NabArgs),
}

#[derive(Debug, Args)]
struct NabArgs {
    /// NAB data folder (`<category>/<file>.csv`).
    #[arg(long)]
    data: PathBuf,
    /// NAB label windows (`combined_windows.json`).
    #[arg(long)]
    labels: PathBuf,
    /// NAB scoring profiles (`profiles.json`) [default: NAB's three profiles].
    #[arg(long)]
    profiles: Option<PathBuf>,
    /// Folder for the results (`OUT/<name>/<category>/<name>_<file>.csv`, `OUT/scores.json`).
    #[arg(long)]
    out: PathBuf,
    /// Detector name in the results.
    #[arg(long, default_value = "tsad")]
    name: String,
    /// Model registry [default: the shipped models].
    #[arg(long)]
    models_dir: Option<PathBuf>,
    /// Automatic fits run at once.
    #[arg(long, default_value_t = 2)]
    fit_jobs: usize,
}

pub fn run(args: EvalArgs) -> Result<(), CliError> {
    match args.command {
        EvalCommand::Nab(a) => nab(a),
    }
}

fn nab(a: NabArgs) -> Result<(), CliError> {
    for (flag, path) in [("--data", &a.data), ("--labels", &a.labels)] {
        if !path.exists() {
            return Err(CliError::Usage(anyhow!("{flag} {} does not exist", path.display())));
        }
    }
    if crate::api::wire::stream_name(&a.name).is_err() {
        return Err(CliError::Usage(anyhow!("--name must be 1-128 characters of A-Z a-z 0-9 . _ : -")));
    }
    let run = NabRun {
        data: a.data,
        labels: a.labels,
        profiles: a.profiles,
        out: a.out,
        name: a.name,
        models_dir: a.models_dir.unwrap_or_else(crate::config::default_models_dir),
        fit_jobs: a.fit_jobs,
    };
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| CliError::Runtime(e.into()))?;
    let report = runtime.block_on(run.run(|line| eprintln!("{line}"))).map_err(CliError::Runtime)?;
    println!("{}", table(&report));
    println!(
        "{} files, {} rows, {} windows; replay {:.1} s; results in {}",
        report.files,
        report.rows,
        report.windows,
        report.replay_seconds,
        run.out.display()
    );
    Ok(())
}
