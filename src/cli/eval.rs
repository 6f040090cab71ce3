//! `tsad eval`: detection quality on labelled data, through the same streaming core that
//! serves users.
use std::path::PathBuf;

use anyhow::anyhow;
use clap::{Args, Subcommand};

use super::CliError;
use crate::eval::classify::{table as classify_table, ClassifyRun, REDRAWS};
use crate::eval::ecg::{table as ecg_table, Beat, EcgRun, Unit};
use crate::eval::nab_run::{table, NabRun};
use crate::scoring::Baseline;

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
    /// Records to stream, comma-separated (e.g. 101,106,119): the unsupervised detector.
    #[arg(long, value_delimiter = ',', required_unless_present = "train_records", conflicts_with = "train_records")]
    records: Vec<String>,
    /// Supervised mode: train the beat classifier on the labelled beats of these records...
    #[arg(long, value_delimiter = ',', requires = "test_records")]
    train_records: Vec<String>,
    /// ...and report its sensitivity and positive predictivity on these (never on a
    /// training record).
    #[arg(long, value_delimiter = ',', requires = "train_records")]
    test_records: Vec<String>,
    /// Supervised mode: width of the classifier's GRU.
    #[arg(long, default_value_t = 32)]
    hidden: usize,
    /// Supervised mode: most training epochs (early stopping ends sooner).
    #[arg(long, default_value_t = 12)]
    epochs: usize,
    /// Supervised mode: seed of initialisation and shuffling (of the first GRU; the others
    /// take the next ones).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Supervised mode: GRUs trained with successive seeds and averaged.
    #[arg(long, default_value_t = 3)]
    seeds: usize,
    /// Supervised mode: boosting rounds of the gradient-boosted trees averaged with the GRUs
    /// (0: the GRUs alone).
    #[arg(long, default_value_t = 200)]
    tree_rounds: usize,
    /// Supervised mode: blend each test beat's probability of being ventricular with those of
    /// this many earlier beats of its record nearest in shape, half and half (0: no blend).
    #[arg(long, default_value_t = 5)]
    neighbours: usize,
    /// Supervised mode: call a beat ventricular when its probability of being so reaches
    /// this, else the likeliest other class (0, the default: the likeliest class of all).
    /// Lower trades positive predictivity for sensitivity (docs/EVALUATION.md).
    #[arg(long, default_value_t = 0.0)]
    v_threshold: f32,
    /// Supervised mode: redrawn copies of each training ventricular beat (taller, shorter,
    /// narrower, wider: the first this many) standing in for its repetitions (0: none).
    #[arg(long, default_value_t = 4)]
    augment: usize,
    /// Supervised mode: wall-clock budget of the GRUs' training, all together, seconds (it
    /// keeps the evaluation under ten minutes; on a slow host it can stop a GRU before its
    /// early stopping does, and so change the result).
    #[arg(long, default_value_t = 480)]
    training_seconds: u64,
    /// Where to write the report (JSON).
    #[arg(long)]
    out: PathBuf,
    /// One row per scored beat: record, sample, symbol, class, score, surprise, flagged and
    /// the reference detector's score (beat streams).
    #[arg(long)]
    beats_out: Option<PathBuf>,
    /// Warm-up at the start of each record, seconds; the automatic fit learns from it.
    #[arg(long, default_value_t = 300.0)]
    warmup_s: f64,
    /// Half-width of the window around each R peak whose largest score is the beat's, seconds.
    #[arg(long, default_value_t = 0.1)]
    beat_window_s: f64,
    /// What one reading of a record's stream is: a beat (rhythm and shape features at each
    /// annotated R peak) or a sample of the lead.
    #[arg(long, value_enum, default_value_t = Unit::Beats)]
    unit: Unit,
    /// The streams' baseline: `warmup` (also judge each beat against the record's first
    /// minutes) or `forecast` (the model's forecast only).
    #[arg(long, value_parser = parse_baseline, default_value = "warmup")]
    baseline: Baseline,
    /// The streams' sensitivity, 0..=1 (flags only; the scores, and so the AUC, do not
    /// depend on it) [default: the service's].
    #[arg(long)]
    sensitivity: Option<f64>,
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
    /// The streams' baseline: `history` (each file's own history, the forecast giving only
    /// the band), `forecast` (the model's forecast only) or `warmup` (also each file's
    /// probationary period).
    #[arg(long, value_parser = parse_baseline, default_value = "history")]
    baseline: Baseline,
}

fn parse_baseline(name: &str) -> Result<Baseline, String> {
    Baseline::parse(name).ok_or_else(|| format!("{name:?} is not a baseline (forecast, warmup, history)"))
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
    for (flag, list) in
        [("--records", &a.records), ("--train-records", &a.train_records), ("--test-records", &a.test_records)]
    {
        if let Some(bad) = list.iter().find(|r| r.is_empty() || !r.chars().all(|c| c.is_ascii_alphanumeric())) {
            return Err(CliError::Usage(anyhow!("{flag}: {bad:?} is not a record name")));
        }
    }
    for (flag, v) in [("--warmup-s", a.warmup_s), ("--beat-window-s", a.beat_window_s)] {
        if !(v.is_finite() && v > 0.0 && v <= 3600.0) {
            return Err(CliError::Usage(anyhow!("{flag} must be in (0, 3600] seconds, got {v}")));
        }
    }
    if let Some(s) = a.sensitivity.filter(|s| !(s.is_finite() && (0.0..=1.0).contains(s))) {
        return Err(CliError::Usage(anyhow!("--sensitivity must be in [0, 1], got {s}")));
    }
    if !a.train_records.is_empty() {
        return classify(a);
    }
    let run = EcgRun {
        mitdb: a.mitdb,
        records: a.records,
        models_dir: a.models_dir.unwrap_or_else(crate::config::default_models_dir),
        fit_jobs: a.fit_jobs,
        warmup_s: a.warmup_s,
        beat_window_s: a.beat_window_s,
        unit: a.unit,
        baseline: a.baseline,
        sensitivity: a.sensitivity,
    };
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| CliError::Runtime(e.into()))?;
    let (report, beats) = runtime.block_on(run.run(|line| eprintln!("{line}"))).map_err(CliError::Runtime)?;
    let json = serde_json::to_string_pretty(&report).map_err(|e| CliError::Runtime(e.into()))?;
    std::fs::write(&a.out, json + "\n").map_err(|e| CliError::Runtime(anyhow!("writing {}: {e}", a.out.display())))?;
    write_beats(a.beats_out.as_deref(), &beats)?;
    print!("{}", ecg_table(&report));
    println!("replay {:.1} s; report in {}", report.replay_seconds, a.out.display());
    Ok(())
}

fn write_beats(path: Option<&std::path::Path>, beats: &[Beat]) -> Result<(), CliError> {
    let Some(path) = path else { return Ok(()) };
    let mut text = String::from("record,sample,symbol,class,score,surprise,flagged,baseline\n");
    for b in beats {
        let flagged = u8::from(b.flagged);
        let fields = format!("{},{},{},{},{},{}", b.record, b.sample, b.symbol, b.class, b.score, b.surprise);
        let baseline = b.baseline.map_or(String::new(), |z| z.to_string());
        text.push_str(&format!("{fields},{flagged},{baseline}\n"));
    }
    std::fs::write(path, text).map_err(|e| CliError::Runtime(anyhow!("writing {}: {e}", path.display())))
}

fn classify(a: EcgArgs) -> Result<(), CliError> {
    if let Some(both) = a.train_records.iter().find(|r| a.test_records.contains(r)) {
        return Err(CliError::Usage(anyhow!("record {both} is in both --train-records and --test-records")));
    }
    if !(1..=1024).contains(&a.hidden)
        || !(1..=1000).contains(&a.epochs)
        || !(1..=16).contains(&a.seeds)
        || a.tree_rounds > 10_000
        || a.neighbours > 100
        || !(0.0..1.0).contains(&a.v_threshold)
        || a.augment > REDRAWS.len()
        || !(1..=86_400).contains(&a.training_seconds)
    {
        return Err(CliError::Usage(anyhow!(
            "--hidden must be in 1..=1024, --epochs in 1..=1000, --seeds in 1..=16, --tree-rounds in 0..=10000, \
             --neighbours in 0..=100, --v-threshold in [0, 1), --augment in 0..=4 and --training-seconds in 1..=86400"
        )));
    }
    let run = ClassifyRun {
        mitdb: a.mitdb,
        train_records: a.train_records,
        test_records: a.test_records,
        learn_s: a.warmup_s,
        hidden: a.hidden,
        epochs: a.epochs,
        seed: a.seed,
        seeds: a.seeds,
        tree_rounds: a.tree_rounds,
        max_training: std::time::Duration::from_secs(a.training_seconds),
        neighbours: a.neighbours,
        v_threshold: a.v_threshold,
        augment: a.augment,
    };
    let (report, beats) = run.run(|line| eprintln!("{line}")).map_err(CliError::Runtime)?;
    let json = serde_json::to_string_pretty(&report).map_err(|e| CliError::Runtime(e.into()))?;
    std::fs::write(&a.out, json + "\n").map_err(|e| CliError::Runtime(anyhow!("writing {}: {e}", a.out.display())))?;
    write_beats(a.beats_out.as_deref(), &beats)?;
    print!("{}", classify_table(&report));
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.1}", 100.0 * v));
    let v = |s: &crate::eval::classify::ClassifyScores| {
        format!("{} / {}", pct(s.ventricular.sensitivity), pct(s.ventricular.positive_predictivity))
    };
    println!(
        "V Se / +P (EC57, {}): GRUs alone {}, trees alone {}, together {}, blended with {} neighbours {}; strict \
         {}; the likeliest class instead {}",
        if report.v_threshold > 0.0 {
            format!("V from P(V) >= {}", report.v_threshold)
        } else {
            "the likeliest class".to_string()
        },
        v(&report.gru_overall),
        report.trees_overall.as_ref().map_or("-".to_string(), v),
        report.unblended.as_ref().map_or_else(|| v(&report.overall), v),
        report.neighbours,
        report.unblended.as_ref().map_or("-".to_string(), |_| v(&report.overall)),
        v(&report.strict),
        report.likeliest.as_ref().map_or("-".to_string(), v)
    );
    println!(
        "trained {} GRUs (epochs {:?}, best {:?}) in {:.1} s, trees in {:.1} s; total {:.1} s; report in {}",
        report.seeds,
        report.epochs_run,
        report.best_epoch,
        report.training_seconds,
        report.trees_seconds,
        report.total_seconds,
        a.out.display()
    );
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
        baseline: a.baseline,
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
