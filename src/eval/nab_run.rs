//! `tsad eval nab`: every file of a NAB-layout folder replayed through the streaming core,
//! results written in NAB's format, and scored with [`super::nab`] beside the
//! windowed-Gaussian baseline computed in the same run.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use chrono::NaiveDateTime;
use serde::Serialize;

use super::nab::{self, FileResult, Profile, Windows};
use super::replay::{Replay, StreamSetup};
use crate::scoring::Baseline;
use crate::streams::ReadingVerdict;

/// Readings per ingest call during a replay (what a batching client would send).
const CHUNK: usize = 10;

/// What to evaluate and where to write it.
#[derive(Debug, Clone)]
pub struct NabRun {
    /// NAB `data/` folder: `<category>/<file>.csv`.
    pub data: PathBuf,
    /// `combined_windows.json`.
    pub labels: PathBuf,
    /// NAB `profiles.json`; NAB's three shipped profiles when `None`.
    pub profiles: Option<PathBuf>,
    pub out: PathBuf,
    pub name: String,
    pub models_dir: PathBuf,
    /// Automatic fits at once.
    pub fit_jobs: usize,
    /// The streams' baseline setting.
    pub baseline: Baseline,
}

/// A detector's normalised score and threshold on one profile.
#[derive(Debug, Clone, Serialize)]
pub struct ProfileScore {
    pub profile: String,
    pub score: f64,
    pub threshold: f64,
    pub detections_in_windows: usize,
    pub false_positive_rows: usize,
}

/// The outcome of a run: per detector, per profile.
#[derive(Debug, Clone, Serialize)]
pub struct NabReport {
    pub files: usize,
    pub windows: usize,
    pub rows: usize,
    pub replay_seconds: f64,
    pub detectors: BTreeMap<String, Vec<ProfileScore>>,
    /// Which model scored each file at its end (`auto-…` after a fit).
    pub models: BTreeMap<String, String>,
}

struct Series {
    key: String,
    timestamps: Vec<NaiveDateTime>,
    values: Vec<f64>,
}

/// Every `<category>/<file>.csv` under `data`, sorted by key.
fn data_files(data: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut files = Vec::new();
    let categories = std::fs::read_dir(data).with_context(|| format!("reading {}", data.display()))?;
    for category in categories.filter_map(Result::ok).filter(|e| e.path().is_dir()) {
        for file in std::fs::read_dir(category.path())?.filter_map(Result::ok) {
            let path = file.path();
            if path.extension().is_some_and(|e| e == "csv") {
                let key = format!("{}/{}", category.file_name().to_string_lossy(), file.file_name().to_string_lossy());
                files.push((key, path));
            }
        }
    }
    files.sort();
    if files.is_empty() {
        bail!("no <category>/<file>.csv under {}", data.display());
    }
    Ok(files)
}

/// A stream name for a NAB file key (`realKnownCause/nyc_taxi.csv` → `nab:realKnownCause:nyc_taxi`).
fn stream_name(key: &str) -> String {
    let name: String = key
        .trim_end_matches(".csv")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { ':' })
        .collect();
    format!("nab:{name}")
}

/// Unix ms of NAB's naive timestamps (read as UTC), nudged to be strictly increasing.
fn unix_ms(timestamps: &[NaiveDateTime]) -> Vec<i64> {
    let mut out: Vec<i64> = Vec::with_capacity(timestamps.len());
    for t in timestamps {
        let ms = t.and_utc().timestamp_millis();
        out.push(match out.last() {
            Some(&last) if ms <= last => last + 1,
            _ => ms,
        });
    }
    out
}

fn label(timestamps: &[NaiveDateTime], windows: &[nab::Window]) -> Vec<u8> {
    timestamps.iter().map(|t| u8::from(windows.iter().any(|(a, b)| a <= t && t <= b))).collect()
}

/// Writes `OUT/<detector>/<category>/<detector>_<file>.csv` as NAB's results format.
fn write_results(out: &Path, detector: &str, series: &Series, scores: &[f64], windows: &Windows) -> anyhow::Result<()> {
    let (category, file) = series.key.split_once('/').unwrap_or(("", &series.key));
    let dir = out.join(detector).join(category);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let labels = label(&series.timestamps, windows.get(&series.key).unwrap_or(&[]));
    let mut text = String::from("timestamp,value,anomaly_score,label\n");
    for i in 0..series.values.len() {
        text.push_str(&format!(
            "{},{},{},{}\n",
            series.timestamps[i].format("%Y-%m-%d %H:%M:%S"),
            series.values[i],
            scores[i],
            labels[i]
        ));
    }
    let path = dir.join(format!("{detector}_{file}"));
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

/// Writes every verdict (forecast, band, surprise, score, flag) beside the NAB results, as
/// `OUT/<detector>.verdicts/<category>/<file>.csv`, for looking into what was missed.
fn write_verdicts(out: &Path, detector: &str, series: &Series, verdicts: &[ReadingVerdict]) -> anyhow::Result<()> {
    let (category, file) = series.key.split_once('/').unwrap_or(("", &series.key));
    let dir = out.join(format!("{detector}.verdicts")).join(category);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut text = String::from("timestamp,value,expected,lower,upper,surprise,score,anomaly\n");
    for (t, v) in series.timestamps.iter().zip(verdicts) {
        let d = &v.verdict;
        text.push_str(&format!(
            "{},{},{},{},{},{},{},{}\n",
            t.format("%Y-%m-%d %H:%M:%S"),
            v.values[0],
            d.expected[0],
            d.lower[0],
            d.upper[0],
            d.surprise,
            d.score,
            u8::from(d.anomaly)
        ));
    }
    let path = dir.join(file);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

fn score_all(results: &[FileResult], windows: &Windows, profiles: &[Profile]) -> anyhow::Result<Vec<ProfileScore>> {
    profiles
        .iter()
        .map(|p| {
            let s = nab::score_corpus(results, windows, p)?;
            Ok(ProfileScore {
                profile: p.name.clone(),
                score: s.normalized_score,
                threshold: s.threshold,
                detections_in_windows: s.tp,
                false_positive_rows: s.fp,
            })
        })
        .collect()
}

impl NabRun {
    /// Replays, writes and scores; returns the report (also written to `OUT/scores.json`).
    pub async fn run(&self, progress: impl Fn(&str)) -> anyhow::Result<NabReport> {
        let windows = Windows::load(&self.labels)?;
        let profiles = match &self.profiles {
            Some(path) => nab::load_profiles(path)?,
            None => Profile::nab_defaults(),
        };
        let mut corpus = Vec::new();
        for (key, path) in data_files(&self.data)? {
            if windows.get(&key).is_none() {
                bail!("{key} has no entry in {}", self.labels.display());
            }
            let file = nab::read_data_csv(&path)?;
            if file.values.iter().any(|v| !v.is_finite()) {
                bail!("{key}: values must be finite");
            }
            corpus.push(Series { key, timestamps: file.timestamps, values: file.values });
        }
        let rows = corpus.iter().map(|s| s.values.len()).sum();
        progress(&format!("{} files, {rows} rows, {} windows", corpus.len(), windows.count()));

        let started = Instant::now();
        let replay = Replay::start(self.models_dir.clone(), self.fit_jobs).await?;
        let done = std::sync::atomic::AtomicUsize::new(0);
        let total = corpus.len();
        let replays = futures::future::join_all(corpus.iter().map(|series| {
            let replay = &replay;
            let progress = &progress;
            let done = &done;
            async move {
                let name = stream_name(&series.key);
                let ts = unix_ms(&series.timestamps);
                let values: Vec<Vec<f64>> = series.values.iter().map(|v| vec![*v]).collect();
                let warmup = nab::probationary_length(values.len()) as u64;
                let mut verdicts = Vec::with_capacity(values.len());
                replay
                    .run(
                        &name,
                        &ts,
                        &values,
                        StreamSetup { warmup, baseline: self.baseline, sensitivity: None },
                        CHUNK,
                        |v| verdicts.push(v),
                    )
                    .await?;
                let model = replay.model_of(&name).await.map(|(m, v)| format!("{m}/{v}")).unwrap_or_default();
                let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                progress(&format!(
                    "{} {}: {} rows, scored by {model}",
                    super::progress_bar(n, total),
                    series.key,
                    verdicts.len()
                ));
                write_verdicts(&self.out, &self.name, series, &verdicts)?;
                anyhow::Ok((verdicts.iter().map(|v| v.verdict.score).collect::<Vec<f64>>(), model))
            }
        }))
        .await;
        replay.finish().await;
        let replay_seconds = started.elapsed().as_secs_f64();

        let mut ours = Vec::new();
        let mut baseline = Vec::new();
        let mut models = BTreeMap::new();
        for (series, replayed) in corpus.iter().zip(replays) {
            let (scores, model) = replayed?;
            write_results(&self.out, &self.name, series, &scores, &windows)?;
            let gaussian = nab::windowed_gaussian(&series.values);
            write_results(&self.out, "windowedGaussian", series, &gaussian, &windows)?;
            let result = |scores: Vec<f64>| FileResult {
                key: series.key.clone(),
                timestamps: series.timestamps.clone(),
                scores,
            };
            ours.push(result(scores));
            baseline.push(result(gaussian));
            models.insert(series.key.clone(), model);
        }
        let mut detectors = BTreeMap::new();
        detectors.insert(self.name.clone(), score_all(&ours, &windows, &profiles)?);
        detectors.insert("windowedGaussian".to_string(), score_all(&baseline, &windows, &profiles)?);
        let report =
            NabReport { files: corpus.len(), windows: windows.count(), rows, replay_seconds, detectors, models };
        let path = self.out.join("scores.json");
        std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(report)
    }
}

/// The report as a table: one row per detector, one column per profile.
pub fn table(report: &NabReport) -> String {
    let mut profiles: Vec<&str> = Vec::new();
    for scores in report.detectors.values() {
        for s in scores {
            if !profiles.contains(&s.profile.as_str()) {
                profiles.push(&s.profile);
            }
        }
    }
    let mut out = format!("{:<18}", "detector");
    for p in &profiles {
        out.push_str(&format!("  {p:>20}"));
    }
    out.push('\n');
    for (detector, scores) in &report.detectors {
        out.push_str(&format!("{detector:<18}"));
        for p in &profiles {
            let s = scores.iter().find(|s| s.profile == *p);
            let cell = s.map_or("-".into(), |s| format!("{:.2} (t={:.3})", s.score, s.threshold));
            out.push_str(&format!("  {cell:>20}"));
        }
        out.push('\n');
    }
    out
}
