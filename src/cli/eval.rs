//! `tsad eval`: detection quality on labelled data, through the same streaming core that
//! serves users.
use std::path::PathBuf;

use anyhow::anyhow;
use clap::{Args, Subcommand};

use super::CliError;
use crate::eval::ecg::{table as ecg_table, EcgRun};
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
    /// Stream MIT-BIH records (lead MLII) through the core and report how the scores
    /// separate abnormal from normal beats, and how the flags find V and S beats.
    Ecg(EcgArgs),
}

#[derive(Debug, Args)]
struct EcgArgs {
    /// Folder holding the records (`NNN.hea`, `NNN.dat`, `NNN.atr`).
    #[arg(long)]
    mitdb: PathBuf,
    /// Records to stream, comma-separated (e.g. 101,106,119).
    #[arg(long, required = true, value_delimiter = ',')]
    records: Vec<String>,
    /// Where to write the report (JSON).
    #[arg(long)]
    out: PathBuf,
    /// One row per scored beat: record, sample, symbol, class, score, flagged.
    #[arg(long)]
    beats_out: Option<PathBuf>,
    /// Warm-up at the start of each record, seconds; the automatic fit learns from it.
    #[arg(long, default_value_t = 300.0)]
    warmup_s: f64,
    /// Half-width of the window around each R peak whose largest score is the beat's, seconds.
    #[arg(long, default_value_t = 0.1)]
    beat_window_s: f64,
    /// Model registry [default: the shipped models].
    #[arg(long)]
    models_dir: Option<PathBuf>,
    /// Automatic fits run at once.
    #[arg(long, default_value_t = 2)]
    fit_jobs: usize,
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
        EvalCommand::Ecg(a) => ecg(a),
    }
}

fn ecg(a: EcgArgs) -> Result<(), CliError> {
    if !a.mitdb.is_dir() {
        return Err(CliError::Usage(anyhow!("--mitdb {} is not a folder", a.mitdb.display())));
    }
    if let Some(bad) = a.records.iter().find(|r| r.is_empty() || !r.chars().all(|c| c.is_ascii_alphanumeric())) {
        return Err(CliError::Usage(anyhow!("--records: {bad:?} is not a record name")));
    }
    for (flag, v) in [("--warmup-s", a.warmup_s), ("--beat-window-s", a.beat_window_s)] {
        if !(v.is_finite() && v > 0.0 && v <= 3600.0) {
            return Err(CliError::Usage(anyhow!("{flag} must be in (0, 3600] seconds, got {v}")));
        }
    }
    let run = EcgRun {
        mitdb: a.mitdb,
        records: a.records,
        models_dir: a.models_dir.unwrap_or_else(crate::config::default_models_dir),
        fit_jobs: a.fit_jobs,
        warmup_s: a.warmup_s,
        beat_window_s: a.beat_window_s,
    };
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| CliError::Runtime(e.into()))?;
    let (report, beats) = runtime.block_on(run.run(|line| eprintln!("{line}"))).map_err(CliError::Runtime)?;
    let json = serde_json::to_string_pretty(&report).map_err(|e| CliError::Runtime(e.into()))?;
    std::fs::write(&a.out, json + "\n").map_err(|e| CliError::Runtime(anyhow!("writing {}: {e}", a.out.display())))?;
    if let Some(path) = &a.beats_out {
        let mut text = String::from("record,sample,symbol,class,score,surprise,flagged\n");
        for b in &beats {
            let flagged = u8::from(b.flagged);
            let fields = format!("{},{},{},{},{},{}", b.record, b.sample, b.symbol, b.class, b.score, b.surprise);
            text.push_str(&format!("{fields},{flagged}\n"));
        }
        std::fs::write(path, text).map_err(|e| CliError::Runtime(anyhow!("writing {}: {e}", path.display())))?;
    }
    print!("{}", ecg_table(&report));
    println!("replay {:.1} s; report in {}", report.replay_seconds, a.out.display());
    Ok(())
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
