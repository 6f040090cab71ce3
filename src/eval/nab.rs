//! Numenta Anomaly Benchmark (NAB) scoring, reimplemented in Rust.
//!
//! This follows NAB's own scorer (`nab/sweeper.py`, `nab/optimizer.py`, `nab/scorer.py` and
//! `Runner.normalize` in `nab/runner.py`, numenta/NAB at ea702d7) step for step, so that scores and
//! optimised thresholds agree with NAB's to floating-point noise. It also contains NAB's
//! `windowedGaussian` reference detector.
//!
//! How NAB scores a detector, in short:
//!
//! 1. Each data file has zero or more labelled anomaly windows `(start, end)`, given as timestamps that
//!    occur exactly in the file.
//! 2. Every row gets a "sweep score": inside a window it is the reward a detection there would earn
//!    (a scaled sigmoid of the row's position, highest at the window's left edge); outside a window it is
//!    the (negative) cost of a false positive, which depends on the distance past the preceding window.
//! 3. The first rows of every file (the probationary period, 15% of the rows, at most 750) are ignored.
//! 4. For a threshold `t`, a row with `anomaly_score >= t` is a detection. Each window contributes the
//!    best sweep score of its detections, or `-fn_weight` when it has none; false positives add their
//!    sweep scores. The raw score is the sum over windows and false positives.
//! 5. The threshold is optimised over the whole corpus in one pass: rows are sorted by anomaly score,
//!    highest first, and the score is recorded each time the anomaly score changes, so every distinct
//!    anomaly score is tried as a threshold. The best score wins; among equal scores the highest
//!    threshold wins.
//! 6. The corpus is then scored file by file at that threshold and the per-file scores are summed.
//! 7. The normalised score is `100 * (S - S_null) / (S_perfect - S_null)`, where `S_null` is the score of
//!    NAB's null detector (constant anomaly score 0.5, at its own optimised threshold) and `S_perfect` is
//!    the number of labelled windows times `tp_weight`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use chrono::NaiveDateTime;
use serde::Deserialize;

/// Share of each file that NAB treats as the probationary period.
pub const PROBATION_PERCENT: f64 = 0.15;

/// The threshold NAB starts its sweep at: above any anomaly score, so nothing is detected.
pub const START_THRESHOLD: f64 = 1.1;

/// The constant anomaly score of NAB's null detector.
pub const NULL_DETECTOR_SCORE: f64 = 0.5;

/// Errors from loading NAB files or scoring.
#[derive(Debug, thiserror::Error)]
pub enum NabError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// A JSON file did not have the expected shape.
    #[error("bad JSON in {path}: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
    /// A CSV file did not have the expected shape.
    #[error("bad CSV {path} line {line}: {message}")]
    Csv { path: PathBuf, line: usize, message: String },
    /// A timestamp string could not be parsed.
    #[error("bad timestamp {0:?}")]
    Timestamp(String),
    /// A result file has no entry in the label windows.
    #[error("no label windows for {0}")]
    MissingLabels(String),
    /// A window limit does not occur among the file's timestamps.
    #[error("window limit {timestamp} does not occur in {key}")]
    WindowLimitNotFound { key: String, timestamp: NaiveDateTime },
    /// Timestamps and scores have different lengths.
    #[error("{key}: {timestamps} timestamps but {scores} scores")]
    LengthMismatch { key: String, timestamps: usize, scores: usize },
    /// Nothing to score.
    #[error("no rows to score")]
    Empty,
}

type Result<T> = std::result::Result<T, NabError>;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> NabError + '_ {
    move |source| NabError::Io { path: path.to_path_buf(), source }
}

// ---------------------------------------------------------------------------------------------------------
// Profiles
// ---------------------------------------------------------------------------------------------------------

/// A NAB application profile: the weights of the cost matrix.
///
/// `tn_weight` is read for completeness; NAB's scorer does not use it.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub name: String,
    pub tp_weight: f64,
    pub fp_weight: f64,
    pub fn_weight: f64,
    pub tn_weight: f64,
}

impl Profile {
    /// The three profiles NAB ships in `config/profiles.json`, in name order.
    pub fn nab_defaults() -> Vec<Profile> {
        let p = |name: &str, fp_weight, fn_weight| Profile {
            name: name.to_string(),
            tp_weight: 1.0,
            fp_weight,
            fn_weight,
            tn_weight: 1.0,
        };
        vec![p("reward_low_FN_rate", 0.11, 2.0), p("reward_low_FP_rate", 0.22, 1.0), p("standard", 0.11, 1.0)]
    }
}

#[derive(Deserialize)]
struct ProfileJson {
    #[serde(rename = "CostMatrix")]
    cost_matrix: CostMatrixJson,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CostMatrixJson {
    tp_weight: f64,
    fp_weight: f64,
    fn_weight: f64,
    tn_weight: f64,
}

/// Reads NAB's `profiles.json` (`{name: {"CostMatrix": {"tpWeight": .., ...}}}`), returning the
/// profiles in name order.
pub fn load_profiles(path: impl AsRef<Path>) -> Result<Vec<Profile>> {
    let path = path.as_ref();
    let text = fs::read_to_string(path).map_err(io_err(path))?;
    let raw: BTreeMap<String, ProfileJson> =
        serde_json::from_str(&text).map_err(|source| NabError::Json { path: path.to_path_buf(), source })?;
    Ok(raw
        .into_iter()
        .map(|(name, p)| Profile {
            name,
            tp_weight: p.cost_matrix.tp_weight,
            fp_weight: p.cost_matrix.fp_weight,
            fn_weight: p.cost_matrix.fn_weight,
            tn_weight: p.cost_matrix.tn_weight,
        })
        .collect())
}

// ---------------------------------------------------------------------------------------------------------
// Timestamps, windows and CSV files
// ---------------------------------------------------------------------------------------------------------

/// Parses a NAB timestamp: `2014-04-01 00:00:00`, optionally with fractional seconds
/// (`2014-04-10 07:15:00.000000`, as in the label files). A `T` separator is accepted too.
pub fn parse_timestamp(text: &str) -> Result<NaiveDateTime> {
    let text = text.trim();
    NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f")
        .or_else(|_| NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f"))
        .map_err(|_| NabError::Timestamp(text.to_string()))
}

/// A labelled anomaly window: first and last timestamp, both inclusive.
pub type Window = (NaiveDateTime, NaiveDateTime);

/// The labelled anomaly windows of a corpus, keyed by data file (`"category/file.csv"`), as read from
/// NAB's `labels/combined_windows.json`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Windows {
    pub by_file: BTreeMap<String, Vec<Window>>,
}

impl Windows {
    /// Reads a NAB windows file: `{"category/file.csv": [["start", "end"], ...], ...}`.
    pub fn load(path: impl AsRef<Path>) -> Result<Windows> {
        let path = path.as_ref();
        let text = fs::read_to_string(path).map_err(io_err(path))?;
        let raw: BTreeMap<String, Vec<[String; 2]>> =
            serde_json::from_str(&text).map_err(|source| NabError::Json { path: path.to_path_buf(), source })?;
        let mut by_file = BTreeMap::new();
        for (key, limits) in raw {
            let windows = limits
                .iter()
                .map(|[start, end]| Ok((parse_timestamp(start)?, parse_timestamp(end)?)))
                .collect::<Result<Vec<_>>>()?;
            by_file.insert(key, windows);
        }
        Ok(Windows { by_file })
    }

    /// The windows of one file, if the file is labelled.
    pub fn get(&self, key: &str) -> Option<&[Window]> {
        self.by_file.get(key).map(Vec::as_slice)
    }

    /// The number of windows over all files. NAB's perfect score is this times `tp_weight`.
    pub fn count(&self) -> usize {
        self.by_file.values().map(Vec::len).sum()
    }
}

/// One detector's output for one data file.
#[derive(Debug, Clone, PartialEq)]
pub struct FileResult {
    /// The data file's key in the label windows, e.g. `"realKnownCause/nyc_taxi.csv"`.
    pub key: String,
    pub timestamps: Vec<NaiveDateTime>,
    /// Anomaly scores, nominally in `[0, 1]`.
    pub scores: Vec<f64>,
}

/// A NAB data file: timestamps and values.
#[derive(Debug, Clone, PartialEq)]
pub struct DataFile {
    pub timestamps: Vec<NaiveDateTime>,
    pub values: Vec<f64>,
}

/// A comma-separated file with a header row, split into cells. NAB files have no quoting.
struct Table {
    path: PathBuf,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn read(path: &Path) -> Result<Table> {
        let text = fs::read_to_string(path).map_err(io_err(path))?;
        let mut lines = text.lines().map(|l| l.trim_end_matches('\r')).filter(|l| !l.trim().is_empty());
        let header = lines
            .next()
            .ok_or_else(|| NabError::Csv { path: path.to_path_buf(), line: 1, message: "empty file".into() })?
            .split(',')
            .map(|c| c.trim().to_string())
            .collect();
        let rows = lines.map(|l| l.split(',').map(|c| c.trim().to_string()).collect()).collect();
        Ok(Table { path: path.to_path_buf(), header, rows })
    }

    fn column_index(&self, name: &str) -> Result<usize> {
        self.header.iter().position(|h| h == name).ok_or_else(|| NabError::Csv {
            path: self.path.clone(),
            line: 1,
            message: format!("no column {name:?}"),
        })
    }

    fn cell(&self, row: usize, col: usize) -> Result<&str> {
        self.rows[row].get(col).map(String::as_str).ok_or_else(|| NabError::Csv {
            path: self.path.clone(),
            line: row + 2,
            message: format!("missing column {}", col + 1),
        })
    }

    fn timestamps(&self) -> Result<Vec<NaiveDateTime>> {
        let col = self.column_index("timestamp")?;
        (0..self.rows.len()).map(|r| parse_timestamp(self.cell(r, col)?)).collect()
    }

    fn floats(&self, name: &str) -> Result<Vec<f64>> {
        let col = self.column_index(name)?;
        (0..self.rows.len())
            .map(|r| {
                let cell = self.cell(r, col)?;
                cell.parse::<f64>().map_err(|e| NabError::Csv {
                    path: self.path.clone(),
                    line: r + 2,
                    message: format!("{name} {cell:?}: {e}"),
                })
            })
            .collect()
    }
}

/// Reads a NAB results CSV (columns include `timestamp` and `anomaly_score`) for the data file `key`.
pub fn read_results_csv(path: impl AsRef<Path>, key: &str) -> Result<FileResult> {
    let table = Table::read(path.as_ref())?;
    Ok(FileResult { key: key.to_string(), timestamps: table.timestamps()?, scores: table.floats("anomaly_score")? })
}

/// Reads a NAB data CSV (`timestamp,value`).
pub fn read_data_csv(path: impl AsRef<Path>) -> Result<DataFile> {
    let table = Table::read(path.as_ref())?;
    Ok(DataFile { timestamps: table.timestamps()?, values: table.floats("value")? })
}

/// Reads one named numeric column of any CSV with a header row (e.g. a results file's
/// `S(t)_standard` column).
pub fn read_csv_column(path: impl AsRef<Path>, column: &str) -> Result<Vec<f64>> {
    Table::read(path.as_ref())?.floats(column)
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut entries = fs::read_dir(dir)
        .map_err(io_err(dir))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(io_err(dir))?;
    entries.sort();
    Ok(entries)
}

/// Reads a NAB results folder for one detector: `<dir>/<category>/<detector>_<file>.csv`.
///
/// Keys become `<category>/<file>.csv`. Hidden files and NAB's `*_scores.csv` summaries are skipped.
/// Files come back in key order (NAB itself walks the folder in file-system order; only floating-point
/// summation order depends on it).
pub fn load_results_dir(dir: impl AsRef<Path>, detector: &str) -> Result<Vec<FileResult>> {
    let prefix = format!("{detector}_");
    let mut results = Vec::new();
    for category in sorted_entries(dir.as_ref())? {
        if !category.is_dir() {
            continue;
        }
        let category_name = category.file_name().unwrap_or_default().to_string_lossy().into_owned();
        for file in sorted_entries(&category)? {
            let name = file.file_name().unwrap_or_default().to_string_lossy().into_owned();
            if name.starts_with('.') || !name.ends_with(".csv") || name.contains("_scores.csv") {
                continue;
            }
            let data_name = name.strip_prefix(&prefix).unwrap_or(&name);
            results.push(read_results_csv(&file, &format!("{category_name}/{data_name}"))?);
        }
    }
    Ok(results)
}

// ---------------------------------------------------------------------------------------------------------
// Per-row sweep scores
// ---------------------------------------------------------------------------------------------------------

/// The number of leading rows NAB ignores: `min(floor(0.15 * rows), 0.15 * 5000)`, i.e. at most 750.
pub fn probationary_length(num_rows: usize) -> usize {
    let length = (PROBATION_PERCENT * num_rows as f64).floor().min(PROBATION_PERCENT * 5000.0);
    length as usize
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// NAB's scaled sigmoid of a position relative to a window.
///
/// `-1.0` is a window's left edge (0.98661, the best reward), `0.0` its right edge (0.0), positive values
/// lie past the window (1.0 gives -0.98661). Anything beyond 3.0 is -1.
pub fn scaled_sigmoid(relative_position: f64) -> f64 {
    if relative_position > 3.0 {
        -1.0
    } else {
        2.0 * sigmoid(-5.0 * relative_position) - 1.0
    }
}

/// Where a row stands for scoring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowKind {
    /// In the probationary period; ignored.
    Probationary,
    /// Outside every window: a detection here is a false positive.
    Outside,
    /// Inside the window with this corpus-wide id: a detection here is a true positive.
    InWindow(usize),
}

/// One row ready for threshold sweeping (NAB's `AnomalyPoint`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SweepPoint {
    pub anomaly_score: f64,
    /// The weighted score a detection at this row earns (positive in a window, negative outside).
    pub sweep_score: f64,
    pub kind: RowKind,
}

fn index_of(timestamps: &[NaiveDateTime], t: NaiveDateTime, key: &str) -> Result<usize> {
    timestamps
        .iter()
        .position(|&x| x == t)
        .ok_or_else(|| NabError::WindowLimitNotFound { key: key.to_string(), timestamp: t })
}

/// Computes every row's sweep score for one file (NAB's `Sweeper.calcSweepScore`).
///
/// Windows are entered when a row's timestamp equals the next window's start and left after the row
/// equal to its end, so windows must be sorted and their limits must be timestamps of the file.
/// Window ids are `first_window_id + index`, so files scored together need distinct ranges.
///
/// Inside a window of width `w` whose right edge is row `r`, row `i` earns
/// `scaled_sigmoid(-(r - i + 1) / w) * tp_weight / scaled_sigmoid(-1)`. Outside, row `i` costs
/// `scaled_sigmoid(|r' - i| / (w' - 1)) * fp_weight` where `r'`, `w'` belong to the preceding window,
/// or `-fp_weight` when no window precedes it.
pub fn sweep_file(
    result: &FileResult,
    windows: &[Window],
    profile: &Profile,
    first_window_id: usize,
) -> Result<Vec<SweepPoint>> {
    let FileResult { key, timestamps, scores } = result;
    if timestamps.len() != scores.len() {
        return Err(NabError::LengthMismatch { key: key.clone(), timestamps: timestamps.len(), scores: scores.len() });
    }
    let max_tp = scaled_sigmoid(-1.0);
    let probation = probationary_length(timestamps.len());

    struct Current {
        id: usize,
        end: NaiveDateTime,
        right_index: usize,
        width: f64,
    }
    let mut next_window = 0;
    let mut current: Option<Current> = None;
    // Right index and width of the window most recently left.
    let mut previous: Option<(usize, f64)> = None;
    let mut points = Vec::with_capacity(timestamps.len());

    for (i, (&t, &anomaly_score)) in timestamps.iter().zip(scores).enumerate() {
        if let Some(&(start, end)) = windows.get(next_window) {
            if t == start {
                let right_index = index_of(timestamps, end, key)?;
                let left_index = index_of(timestamps, start, key)?;
                let width = (right_index as i64 - left_index as i64 + 1) as f64;
                current = Some(Current { id: first_window_id + next_window, end, right_index, width });
                next_window += 1;
            }
        }

        let (sweep_score, window_id) = match &current {
            Some(w) => {
                let position = -((w.right_index as i64 - i as i64 + 1) as f64) / w.width;
                (scaled_sigmoid(position) * profile.tp_weight / max_tp, Some(w.id))
            }
            None => {
                let unweighted = match previous {
                    None => -1.0,
                    Some((right_index, width)) => {
                        scaled_sigmoid((right_index as i64 - i as i64).abs() as f64 / (width - 1.0))
                    }
                };
                (unweighted * profile.fp_weight, None)
            }
        };

        let kind = match window_id {
            _ if i < probation => RowKind::Probationary,
            Some(id) => RowKind::InWindow(id),
            None => RowKind::Outside,
        };
        points.push(SweepPoint { anomaly_score, sweep_score, kind });

        if let Some(w) = &current {
            if t == w.end {
                previous = Some((i, w.width));
                current = None;
            }
        }
    }
    Ok(points)
}

// ---------------------------------------------------------------------------------------------------------
// Scores by threshold
// ---------------------------------------------------------------------------------------------------------

/// The score and row counts when every row with `anomaly_score >= threshold` is a detection.
///
/// Counts are of rows (not windows) outside the probationary period: `tp` detected rows in windows,
/// `fn_` undetected rows in windows, `fp` detected rows outside, `tn` undetected rows outside.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThresholdScore {
    pub threshold: f64,
    pub score: f64,
    pub tp: usize,
    pub tn: usize,
    pub fp: usize,
    pub fn_: usize,
    pub total: usize,
}

/// Running state of a sweep: the false-positive sum, each window's best reward so far, and counts.
struct SweepState {
    fp_sum: f64,
    /// Window parts in the order NAB's dict holds them (first appearance in the sorted rows), so sums
    /// are added in NAB's order.
    window_parts: Vec<f64>,
    slot_of: BTreeMap<usize, usize>,
    tp: usize,
    tn: usize,
    fp: usize,
    fn_: usize,
}

impl SweepState {
    fn new(sorted: &[&SweepPoint], fn_weight: f64) -> SweepState {
        let mut state =
            SweepState { fp_sum: 0.0, window_parts: Vec::new(), slot_of: BTreeMap::new(), tp: 0, tn: 0, fp: 0, fn_: 0 };
        for point in sorted {
            match point.kind {
                RowKind::InWindow(id) => {
                    state.fn_ += 1;
                    if !state.slot_of.contains_key(&id) {
                        state.slot_of.insert(id, state.window_parts.len());
                        state.window_parts.push(-fn_weight);
                    }
                }
                RowKind::Outside => state.tn += 1,
                RowKind::Probationary => {}
            }
        }
        state
    }

    fn score(&self) -> f64 {
        self.window_parts.iter().fold(self.fp_sum, |sum, part| sum + part)
    }

    fn row(&self, threshold: f64) -> ThresholdScore {
        ThresholdScore {
            threshold,
            score: self.score(),
            tp: self.tp,
            tn: self.tn,
            fp: self.fp,
            fn_: self.fn_,
            total: self.tp + self.tn + self.fp + self.fn_,
        }
    }

    fn detect(&mut self, point: &SweepPoint) {
        match point.kind {
            RowKind::InWindow(id) => {
                self.tp += 1;
                self.fn_ -= 1;
                let part = &mut self.window_parts[self.slot_of[&id]];
                *part = part.max(point.sweep_score);
            }
            RowKind::Outside => {
                self.fp += 1;
                self.tn -= 1;
                self.fp_sum += point.sweep_score;
            }
            RowKind::Probationary => {}
        }
    }
}

/// Non-probationary rows sorted by anomaly score, highest first; ties keep their order (stable sort).
fn scorable_sorted(points: &[SweepPoint]) -> Vec<&SweepPoint> {
    let mut sorted: Vec<&SweepPoint> = points.iter().filter(|p| p.kind != RowKind::Probationary).collect();
    sorted.sort_by(|a, b| b.anomaly_score.partial_cmp(&a.anomaly_score).unwrap_or(std::cmp::Ordering::Equal));
    sorted
}

/// Scores every candidate threshold in one pass (NAB's `Sweeper.calcScoreByThreshold`).
///
/// The first entry is threshold 1.1 (no detections) unless the top anomaly score is exactly 1.1; then
/// one entry per distinct anomaly score, in decreasing order, each counting every row with a score at
/// or above it as a detection.
pub fn scores_by_threshold(points: &[SweepPoint], profile: &Profile) -> Vec<ThresholdScore> {
    let sorted = scorable_sorted(points);
    let mut state = SweepState::new(&sorted, profile.fn_weight);
    let mut rows = Vec::new();
    let mut threshold = START_THRESHOLD;
    for point in &sorted {
        if point.anomaly_score != threshold {
            rows.push(state.row(threshold));
            threshold = point.anomaly_score;
        }
        state.detect(point);
    }
    rows.push(state.row(threshold));
    rows
}

/// The score with no detections at all, labelled with `threshold`.
fn no_detection_row(points: &[SweepPoint], profile: &Profile, threshold: f64) -> ThresholdScore {
    SweepState::new(&scorable_sorted(points), profile.fn_weight).row(threshold)
}

/// Picks the entry NAB uses for `threshold` from `scores_by_threshold` output (as in
/// `Sweeper.scoreDataSet`): the entry with exactly that threshold, else the one just above it.
///
/// NAB fails when no entry qualifies; here a threshold below every anomaly score takes the last entry
/// (everything detected) and one above every entry gets the no-detection score.
fn matching_row(rows: &[ThresholdScore], points: &[SweepPoint], profile: &Profile, threshold: f64) -> ThresholdScore {
    let mut previous: Option<&ThresholdScore> = None;
    for row in rows {
        if row.threshold == threshold {
            return *row;
        }
        if row.threshold < threshold {
            return match previous {
                Some(p) => *p,
                None => no_detection_row(points, profile, threshold),
            };
        }
        previous = Some(row);
    }
    *rows.last().expect("scores_by_threshold always returns an entry")
}

// ---------------------------------------------------------------------------------------------------------
// Corpus scoring, optimisation and normalisation
// ---------------------------------------------------------------------------------------------------------

fn windows_for<'a>(windows: &'a Windows, key: &str) -> Result<&'a [Window]> {
    windows.get(key).ok_or_else(|| NabError::MissingLabels(key.to_string()))
}

/// Scores one file at `threshold` (NAB's `scoreDataSet`): the per-row sweep scores (NAB's `S(t)`
/// column) and the matching threshold entry.
pub fn score_file(
    result: &FileResult,
    windows: &Windows,
    profile: &Profile,
    threshold: f64,
) -> Result<(Vec<f64>, ThresholdScore)> {
    let points = sweep_file(result, windows_for(windows, &result.key)?, profile, 0)?;
    let rows = scores_by_threshold(&points, profile);
    let row = matching_row(&rows, &points, profile, threshold);
    Ok((points.iter().map(|p| p.sweep_score).collect(), row))
}

/// Finds the best threshold over the whole corpus (NAB's `optimizeThreshold`).
///
/// All files' rows are swept together; the entry with the highest score wins, the first (highest
/// threshold) among equals.
pub fn optimize_threshold(results: &[FileResult], windows: &Windows, profile: &Profile) -> Result<ThresholdScore> {
    let mut points = Vec::new();
    let mut next_id = 0;
    for result in results {
        let file_windows = windows_for(windows, &result.key)?;
        points.extend(sweep_file(result, file_windows, profile, next_id)?);
        next_id += file_windows.len();
    }
    let rows = scores_by_threshold(&points, profile);
    let mut best = rows.first().copied().ok_or(NabError::Empty)?;
    for row in &rows[1..] {
        if row.score > best.score {
            best = *row;
        }
    }
    Ok(best)
}

/// Raw score and counts of a corpus at one threshold, summed file by file (NAB's `scoreCorpus`).
pub fn raw_score_at_threshold(
    results: &[FileResult],
    windows: &Windows,
    profile: &Profile,
    threshold: f64,
) -> Result<ThresholdScore> {
    let mut total = ThresholdScore { threshold, score: 0.0, tp: 0, tn: 0, fp: 0, fn_: 0, total: 0 };
    for result in results {
        let (_, row) = score_file(result, windows, profile, threshold)?;
        total.score += row.score;
        total.tp += row.tp;
        total.tn += row.tn;
        total.fp += row.fp;
        total.fn_ += row.fn_;
        total.total += row.total;
    }
    Ok(total)
}

/// The null detector's raw score on the same files: constant anomaly score 0.5, scored at its own
/// optimised threshold. In practice the optimiser picks 1.1 (no detections), so this is
/// `-fn_weight` times the number of windows with rows past the probationary period.
pub fn null_raw_score(results: &[FileResult], windows: &Windows, profile: &Profile) -> Result<f64> {
    let null: Vec<FileResult> = results
        .iter()
        .map(|r| FileResult {
            key: r.key.clone(),
            timestamps: r.timestamps.clone(),
            scores: vec![NULL_DETECTOR_SCORE; r.timestamps.len()],
        })
        .collect();
    let threshold = optimize_threshold(&null, windows, profile)?.threshold;
    Ok(raw_score_at_threshold(&null, windows, profile, threshold)?.score)
}

/// The perfect raw score: every labelled window (over the whole windows file, as NAB counts the label
/// file) detected at its left edge.
pub fn perfect_raw_score(windows: &Windows, profile: &Profile) -> f64 {
    windows.count() as f64 * profile.tp_weight
}

/// NAB's normalisation: `100 * (raw - null) / (perfect - null)`.
pub fn normalize(raw: f64, null: f64, perfect: f64) -> f64 {
    100.0 * (raw - null) / (perfect - null)
}

/// A detector's result on a corpus for one profile.
///
/// `tp`, `fp`, `fn_`, `tn` count rows outside the probationary periods (see [`ThresholdScore`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CorpusScore {
    pub threshold: f64,
    pub raw_score: f64,
    pub normalized_score: f64,
    pub tp: usize,
    pub fp: usize,
    pub fn_: usize,
    pub tn: usize,
    /// The null detector's raw score used for normalisation.
    pub null_score: f64,
    /// The perfect raw score used for normalisation.
    pub perfect_score: f64,
}

/// Scores a corpus at a given threshold and normalises it against the null and perfect detectors.
pub fn score_corpus_at_threshold(
    results: &[FileResult],
    windows: &Windows,
    profile: &Profile,
    threshold: f64,
) -> Result<CorpusScore> {
    let raw = raw_score_at_threshold(results, windows, profile, threshold)?;
    let null_score = null_raw_score(results, windows, profile)?;
    let perfect_score = perfect_raw_score(windows, profile);
    Ok(CorpusScore {
        threshold,
        raw_score: raw.score,
        normalized_score: normalize(raw.score, null_score, perfect_score),
        tp: raw.tp,
        fp: raw.fp,
        fn_: raw.fn_,
        tn: raw.tn,
        null_score,
        perfect_score,
    })
}

/// Scores a corpus the way `run.py --optimize --score --normalize` does: optimise the threshold on the
/// corpus, score each file at it, sum, and normalise.
pub fn score_corpus(results: &[FileResult], windows: &Windows, profile: &Profile) -> Result<CorpusScore> {
    let threshold = optimize_threshold(results, windows, profile)?.threshold;
    score_corpus_at_threshold(results, windows, profile, threshold)
}

// ---------------------------------------------------------------------------------------------------------
// windowedGaussian detector
// ---------------------------------------------------------------------------------------------------------

/// Number of past values the windowedGaussian detector fits its Gaussian to.
pub const GAUSSIAN_WINDOW_SIZE: usize = 6400;
/// Once the window is full, it slides forward this many values at a time.
pub const GAUSSIAN_STEP_SIZE: usize = 100;

/// NAB's windowedGaussian detector.
///
/// Each value's anomaly score is `1 - Q(|z|)` (one minus the upper-tail probability of a normal
/// distribution), with `z` measured against the mean and population standard deviation of the window
/// of values seen before it. The first value scores 0. The window grows value by value up to 6400;
/// after that new values are buffered and the window slides forward 100 values at a time, refitting
/// only then. A zero standard deviation is replaced by 1e-6. Sums follow numpy's pairwise summation so
/// the fit matches NAB's bit for bit in practice.
pub fn windowed_gaussian(values: &[f64]) -> Vec<f64> {
    let mut window: Vec<f64> = Vec::with_capacity(GAUSSIAN_WINDOW_SIZE);
    let mut step_buffer: Vec<f64> = Vec::with_capacity(GAUSSIAN_STEP_SIZE);
    let (mut mean, mut std) = (0.0, 1.0);
    let mut scores = Vec::with_capacity(values.len());
    for &value in values {
        scores.push(if window.is_empty() { 0.0 } else { 1.0 - normal_tail_probability(value, mean, std) });
        let refit = if window.len() < GAUSSIAN_WINDOW_SIZE {
            window.push(value);
            true
        } else {
            step_buffer.push(value);
            if step_buffer.len() == GAUSSIAN_STEP_SIZE {
                window.drain(..GAUSSIAN_STEP_SIZE);
                window.append(&mut step_buffer);
                true
            } else {
                false
            }
        };
        if refit {
            (mean, std) = numpy_mean_std(&window);
            if std == 0.0 {
                std = 0.000001;
            }
        }
    }
    scores
}

/// The probability of a sample beyond `x` on the far side of the mean: `Q(|x - mean| / std)`.
pub fn normal_tail_probability(x: f64, mean: f64, std: f64) -> f64 {
    // NAB mirrors values below the mean onto the upper side.
    let x = if x < mean { 2.0 * mean - x } else { x };
    let z = (x - mean) / std;
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

/// Mean and population standard deviation as `numpy.mean` / `numpy.std` compute them.
fn numpy_mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = numpy_sum(values) / n;
    let squares: Vec<f64> = values.iter().map(|v| (v - mean) * (v - mean)).collect();
    (mean, (numpy_sum(&squares) / n).sqrt())
}

/// `numpy.add.reduce` on a contiguous float64 array: identity 0.0 plus numpy's pairwise sum.
fn numpy_sum(values: &[f64]) -> f64 {
    0.0 + pairwise_sum(values)
}

/// numpy's pairwise summation: blocks of up to 128 summed with 8 accumulators, split in halves above.
fn pairwise_sum(a: &[f64]) -> f64 {
    const BLOCK: usize = 128;
    let n = a.len();
    if n < 8 {
        a.iter().fold(0.0, |sum, v| sum + v)
    } else if n <= BLOCK {
        let mut acc = [0.0; 8];
        acc.copy_from_slice(&a[..8]);
        let whole = n - n % 8;
        for chunk in a[8..whole].chunks_exact(8) {
            for (r, v) in acc.iter_mut().zip(chunk) {
                *r += v;
            }
        }
        let head = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
        a[whole..].iter().fold(head, |sum, v| sum + v)
    } else {
        let half = n / 2;
        let half = half - half % 8;
        pairwise_sum(&a[..half]) + pairwise_sum(&a[half..])
    }
}

/// Evaluates `c[0] + c[1] x + c[2] x^2 + ...` by Horner's rule.
fn poly(x: f64, c: &[f64]) -> f64 {
    c.iter().rev().fold(0.0, |acc, &k| acc * x + k)
}

/// The complementary error function, accurate to about one ulp.
///
/// Uses the piecewise rational minimax approximations of Sun's fdlibm `s_erf.c` (the algorithm behind
/// most C libraries' `erfc`, which Python's `math.erfc` calls): a polynomial ratio near zero, an
/// expansion around 1 up to 1.25, and `exp(-x^2 - 0.5625 + R(1/x^2)/S(1/x^2)) / x` beyond.
/// Coefficients are written with fdlibm's published digits.
#[allow(clippy::excessive_precision)]
pub fn erfc(x: f64) -> f64 {
    const ERX: f64 = 8.45062911510467529297e-01;
    const PP: [f64; 5] = [
        1.28379167095512558561e-01,
        -3.25042107247001499370e-01,
        -2.84817495755985104766e-02,
        -5.77027029648944159157e-03,
        -2.37630166566501626084e-05,
    ];
    const QQ: [f64; 6] = [
        1.0,
        3.97917223959155352819e-01,
        6.50222499887672944485e-02,
        5.08130628187576562776e-03,
        1.32494738004321644526e-04,
        -3.96022827877536812320e-06,
    ];
    const PA: [f64; 7] = [
        -2.36211856075265944077e-03,
        4.14856118683748331666e-01,
        -3.72207876035701323847e-01,
        3.18346619901161753674e-01,
        -1.10894694282396677476e-01,
        3.54783043256182359371e-02,
        -2.16637559486879084300e-03,
    ];
    const QA: [f64; 7] = [
        1.0,
        1.06420880400844228286e-01,
        5.40397917702171048937e-01,
        7.18286544141962662868e-02,
        1.26171219808761642112e-01,
        1.36370839120290507362e-02,
        1.19844998467991074170e-02,
    ];
    const RA: [f64; 8] = [
        -9.86494403484714822705e-03,
        -6.93858572707181764372e-01,
        -1.05586262253232909814e+01,
        -6.23753324503260060396e+01,
        -1.62396669462573470355e+02,
        -1.84605092906711035994e+02,
        -8.12874355063065934246e+01,
        -9.81432934416914548592e+00,
    ];
    const SA: [f64; 9] = [
        1.0,
        1.96512716674392571292e+01,
        1.37657754143519042600e+02,
        4.34565877475229228821e+02,
        6.45387271733267880336e+02,
        4.29008140027567833386e+02,
        1.08635005541779435134e+02,
        6.57024977031928170135e+00,
        -6.04244152148580987438e-02,
    ];
    const RB: [f64; 7] = [
        -9.86494292470009928597e-03,
        -7.99283237680523006574e-01,
        -1.77579549177547519889e+01,
        -1.60636384855821916062e+02,
        -6.37566443368389627722e+02,
        -1.02509513161107724954e+03,
        -4.83519191608651397019e+02,
    ];
    const SB: [f64; 8] = [
        1.0,
        3.03380607434824582924e+01,
        3.25792512996573918826e+02,
        1.53672958608443695994e+03,
        3.19985821950859553908e+03,
        2.55305040643316442583e+03,
        4.74528541206955367215e+02,
        -2.24409524465858183362e+01,
    ];

    if x.is_nan() {
        return x;
    }
    let ax = x.abs();
    if ax < 0.84375 {
        if ax < f64::EPSILON / 4.0 {
            return 1.0 - x;
        }
        let z = x * x;
        let y = poly(z, &PP) / poly(z, &QQ);
        return if x < 0.25 { 1.0 - (x + x * y) } else { 0.5 - ((x - 0.5) + x * y) };
    }
    if ax < 1.25 {
        let s = ax - 1.0;
        let p = poly(s, &PA) / poly(s, &QA);
        return if x >= 0.0 { (1.0 - ERX) - p } else { 1.0 + (ERX + p) };
    }
    if ax >= 28.0 {
        return if x > 0.0 { 0.0 } else { 2.0 };
    }
    if x < -6.0 {
        return 2.0;
    }
    let s = 1.0 / (ax * ax);
    let (r, q) = if ax < 1.0 / 0.35 { (poly(s, &RA), poly(s, &SA)) } else { (poly(s, &RB), poly(s, &SB)) };
    // Split x^2 exactly: z keeps the top 20 mantissa bits of |x|, so z*z is exact.
    let z = f64::from_bits(ax.to_bits() & 0xffff_ffff_0000_0000);
    let tail = (-z * z - 0.5625).exp() * ((z - ax) * (z + ax) + r / q).exp() / ax;
    if x > 0.0 {
        tail
    } else {
        2.0 - tail
    }
}

// ---------------------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, NaiveDate};

    // --- synthetic unit tests ---------------------------------------------------------------------------

    fn profile(tp: f64, fp: f64, fn_: f64) -> Profile {
        Profile { name: "test".into(), tp_weight: tp, fp_weight: fp, fn_weight: fn_, tn_weight: 1.0 }
    }

    /// `n` five-minute rows starting 2014-04-01, anomaly score 1.0 at `detections` and 0.0 elsewhere.
    fn synthetic(n: usize, detections: &[usize]) -> FileResult {
        let t0 = NaiveDate::from_ymd_opt(2014, 4, 1).unwrap().and_hms_opt(0, 0, 0).unwrap();
        let timestamps = (0..n).map(|i| t0 + Duration::minutes(5 * i as i64)).collect();
        let scores = (0..n).map(|i| if detections.contains(&i) { 1.0 } else { 0.0 }).collect();
        FileResult { key: "synthetic/file.csv".into(), timestamps, scores }
    }

    fn windows_rows(result: &FileResult, rows: &[(usize, usize)]) -> Windows {
        let list = rows.iter().map(|&(a, b)| (result.timestamps[a], result.timestamps[b])).collect();
        Windows { by_file: BTreeMap::from([(result.key.clone(), list)]) }
    }

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn scaled_sigmoid_values() {
        assert!(close(scaled_sigmoid(-1.0), 0.986614298151, 1e-12));
        assert!(close(scaled_sigmoid(-0.5), 0.848283639957, 1e-12));
        assert_eq!(scaled_sigmoid(0.0), 0.0);
        assert!(close(scaled_sigmoid(1.0), -0.986614298151, 1e-12));
        assert!(close(scaled_sigmoid(3.0), 2.0 / (1.0 + 15f64.exp()) - 1.0, 1e-15));
        assert_eq!(scaled_sigmoid(3.0001), -1.0);
        assert_eq!(scaled_sigmoid(50.0), -1.0);
    }

    #[test]
    fn probationary_lengths() {
        assert_eq!(probationary_length(4032), 604);
        assert_eq!(probationary_length(1624), 243);
        assert_eq!(probationary_length(5000), 750);
        assert_eq!(probationary_length(22695), 750);
        assert_eq!(probationary_length(10), 1);
        assert_eq!(probationary_length(6), 0);
    }

    #[test]
    fn timestamps_with_and_without_fraction() {
        let a = parse_timestamp("2014-04-10 07:15:00.000000").unwrap();
        let b = parse_timestamp("2014-04-10 07:15:00").unwrap();
        assert_eq!(a, b);
        assert!(parse_timestamp("2011-07-11 04:00:01.5").unwrap() > parse_timestamp("2011-07-11 04:00:01").unwrap());
        assert!(parse_timestamp("yesterday").is_err());
    }

    #[test]
    fn early_detection_earns_full_reward_once() {
        // 100 rows, 15 probationary; window rows 40..=49. Detections at the left edge and mid-window:
        // only the best (earliest) counts, and it is worth exactly tp_weight.
        let result = synthetic(100, &[40, 45]);
        let windows = windows_rows(&result, &[(40, 49)]);
        let p = profile(1.0, 0.11, 1.0);
        let (sweep, row) = score_file(&result, &windows, &p, 0.5).unwrap();
        assert!(close(sweep[40], 1.0, 1e-12));
        assert!(close(sweep[45], scaled_sigmoid(-5.0 / 10.0) / scaled_sigmoid(-1.0), 1e-12));
        assert!(close(row.score, 1.0, 1e-12));
        assert_eq!((row.tp, row.fp, row.fn_, row.tn), (2, 0, 8, 75));
        // Rows before the first window cost the full fp weight.
        assert_eq!(sweep[20], -0.11);
    }

    #[test]
    fn missed_window_costs_fn_weight() {
        let result = synthetic(100, &[]);
        let windows = windows_rows(&result, &[(40, 49), (70, 79)]);
        let (_, row) = score_file(&result, &windows, &profile(1.0, 0.11, 2.0), 0.5).unwrap();
        assert!(close(row.score, -4.0, 1e-12));
    }

    #[test]
    fn false_positive_after_window_is_weighted_by_distance() {
        // Window rows 40..=49 (width 10); a detection at row 55 lies 6 rows past the right edge,
        // relative position 6 / (10 - 1).
        let result = synthetic(100, &[55]);
        let windows = windows_rows(&result, &[(40, 49)]);
        let p = profile(1.0, 0.11, 1.0);
        let (sweep, row) = score_file(&result, &windows, &p, 0.5).unwrap();
        let fp = scaled_sigmoid(6.0 / 9.0) * 0.11;
        assert!(close(sweep[55], fp, 1e-15));
        assert!(close(row.score, -1.0 + fp, 1e-12));
        assert_eq!((row.tp, row.fp), (0, 1));
        // Far past the window (relative position > 3) the cost is the full fp weight.
        assert_eq!(sweep[99], -0.11);
    }

    #[test]
    fn probationary_rows_are_ignored() {
        // A detection inside the probationary period (row 5 of 100) neither costs nor counts.
        let result = synthetic(100, &[5]);
        let windows = windows_rows(&result, &[(40, 49)]);
        let (_, row) = score_file(&result, &windows, &profile(1.0, 0.11, 1.0), 0.5).unwrap();
        assert!(close(row.score, -1.0, 1e-12));
        assert_eq!(row.total, 85);
        assert_eq!(row.fp, 0);
    }

    #[test]
    fn threshold_sweep_records_each_distinct_score() {
        let mut result = synthetic(100, &[]);
        result.scores[42] = 0.9;
        result.scores[60] = 0.9;
        result.scores[80] = 0.7;
        let windows = windows_rows(&result, &[(40, 49)]);
        let p = profile(1.0, 0.11, 1.0);
        let points = sweep_file(&result, windows.get(&result.key).unwrap(), &p, 0).unwrap();
        let rows = scores_by_threshold(&points, &p);
        let thresholds: Vec<f64> = rows.iter().map(|r| r.threshold).collect();
        assert_eq!(thresholds, vec![1.1, 0.9, 0.7, 0.0]);
        assert_eq!((rows[1].tp, rows[1].fp), (1, 1));
        // A threshold between two scores takes the entry just above it.
        let (_, row) = score_file(&result, &windows, &p, 0.8).unwrap();
        assert_eq!(row.threshold, 0.9);
        let best = optimize_threshold(std::slice::from_ref(&result), &windows, &p).unwrap();
        assert_eq!(best.threshold, 0.9);
    }

    #[test]
    fn null_and_perfect_normalisation() {
        let result = synthetic(100, &[40]);
        let windows = windows_rows(&result, &[(40, 49)]);
        let p = profile(1.0, 0.11, 1.0);
        let score = score_corpus(std::slice::from_ref(&result), &windows, &p).unwrap();
        assert_eq!(score.null_score, -1.0);
        assert_eq!(score.perfect_score, 1.0);
        assert!(close(score.normalized_score, 100.0, 1e-9));
    }

    #[test]
    #[allow(clippy::excessive_precision)]
    fn erfc_matches_known_values() {
        let cases = [
            (0.0, 1.0),
            (0.1, 0.8875370839817151),
            (0.5, 0.4795001221869535),
            (1.0, 0.15729920705028513),
            (2.0, 0.004677734981047266),
            (3.0, 2.209049699858544e-05),
            (5.0, 1.5374597944280349e-12),
            (-1.0, 1.8427007929497148),
        ];
        for (x, want) in cases {
            assert!(close(erfc(x), want, want * 1e-14), "erfc({x}) = {} want {want}", erfc(x));
        }
    }

    #[test]
    fn pairwise_sum_matches_plain_sum_on_integers() {
        let v: Vec<f64> = (0..1000).map(f64::from).collect();
        assert_eq!(pairwise_sum(&v), 499500.0);
        let (mean, std) = numpy_mean_std(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(mean, 2.5);
        assert!(close(std, 1.25f64.sqrt(), 1e-15));
    }

    // --- tests against NAB's own output -----------------------------------------------------------------

    /// The NAB data folder, or `None` (with a loud note) when it is not present.
    fn nab_dir() -> Option<PathBuf> {
        let mut roots = Vec::new();
        if let Ok(dir) = std::env::var("TSAD_DATA_DIR") {
            roots.push(PathBuf::from(dir));
        }
        roots.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
        roots.push(PathBuf::from("/work/shared/data"));
        let found = roots.iter().map(|r| r.join("nab")).find(|d| d.join("reference/reference.json").is_file());
        if found.is_none() {
            eprintln!("SKIPPED: NAB data (nab/reference/reference.json) not found under {roots:?}");
        }
        found
    }

    const DETECTORS: [&str; 2] = ["numenta", "windowedGaussian"];

    #[test]
    fn reproduces_nab_optimized_scores_and_thresholds() {
        let Some(dir) = nab_dir() else { return };
        let reference: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(dir.join("reference/reference.json")).unwrap()).unwrap();
        let windows = Windows::load(dir.join("labels/combined_windows.json")).unwrap();
        let profiles = load_profiles(dir.join("profiles.json")).unwrap();
        assert_eq!(profiles, Profile::nab_defaults());
        let mut failures = Vec::new();
        for detector in DETECTORS {
            let results = load_results_dir(dir.join("reference").join(detector), detector).unwrap();
            assert_eq!(results.len(), windows.by_file.len());
            for profile in &profiles {
                let got = score_corpus(&results, &windows, profile).unwrap();
                let want = &reference["optimized"][detector];
                let want_score = want["scores"][&profile.name].as_f64().unwrap();
                let want_threshold = want["thresholds"][&profile.name].as_f64().unwrap();
                let want_raw = want["raw_scores"][&profile.name].as_f64().unwrap();
                let want_null = reference["optimized"]["null"]["raw_scores"][&profile.name].as_f64().unwrap();
                eprintln!(
                    "{detector:>16} {:>18}: score {:.9} (NAB {:.9}, diff {:.1e})  threshold {} (NAB {})  \
                     raw {:.6} (NAB {:.6})  null {} (NAB {})",
                    profile.name,
                    got.normalized_score,
                    want_score,
                    got.normalized_score - want_score,
                    got.threshold,
                    want_threshold,
                    got.raw_score,
                    want_raw,
                    got.null_score,
                    want_null
                );
                if !close(got.normalized_score, want_score, 0.05) {
                    failures
                        .push(format!("{detector}/{}: score {} vs {want_score}", profile.name, got.normalized_score));
                }
                if !close(got.threshold, want_threshold, 1e-9) {
                    failures
                        .push(format!("{detector}/{}: threshold {} vs {want_threshold}", profile.name, got.threshold));
                }
                if !close(got.null_score, want_null, 1e-9) {
                    failures.push(format!("{detector}/{}: null {} vs {want_null}", profile.name, got.null_score));
                }
            }
        }
        assert!(failures.is_empty(), "mismatches:\n{}", failures.join("\n"));
    }

    #[test]
    fn reproduces_nab_scores_at_published_thresholds() {
        let Some(dir) = nab_dir() else { return };
        let reference: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(dir.join("reference/reference.json")).unwrap()).unwrap();
        let windows = Windows::load(dir.join("labels/combined_windows.json")).unwrap();
        for detector in DETECTORS {
            let results = load_results_dir(dir.join("reference").join(detector), detector).unwrap();
            for profile in &load_profiles(dir.join("profiles.json")).unwrap() {
                let want = &reference["corpus_thresholds"][detector];
                let threshold = want["thresholds"][&profile.name].as_f64().unwrap();
                let want_score = want["scores"][&profile.name].as_f64().unwrap();
                let got = score_corpus_at_threshold(&results, &windows, profile, threshold).unwrap();
                eprintln!(
                    "{detector:>16} {:>18} at {threshold}: {:.9} (NAB {want_score:.9}, diff {:.1e})",
                    profile.name,
                    got.normalized_score,
                    got.normalized_score - want_score
                );
                assert!(close(got.normalized_score, want_score, 0.05), "{detector}/{}", profile.name);
            }
        }
    }

    #[test]
    fn reproduces_nab_per_row_sweep_scores() {
        let Some(dir) = nab_dir() else { return };
        let windows = Windows::load(dir.join("labels/combined_windows.json")).unwrap();
        let profiles = load_profiles(dir.join("profiles.json")).unwrap();
        for detector in DETECTORS {
            let folder = dir.join("reference").join(detector);
            for result in load_results_dir(&folder, detector).unwrap() {
                let (category, file) = result.key.split_once('/').unwrap();
                let path = folder.join(category).join(format!("{detector}_{file}"));
                for profile in &profiles {
                    let want = read_csv_column(&path, &format!("S(t)_{}", profile.name)).unwrap();
                    let (got, _) = score_file(&result, &windows, profile, 0.5).unwrap();
                    assert_eq!(got.len(), want.len());
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        assert!(close(*g, *w, 1e-9), "{} {} row {i}: {g} vs {w}", result.key, profile.name);
                    }
                }
            }
        }
    }

    #[test]
    fn windowed_gaussian_reproduces_nab_scores() {
        let Some(dir) = nab_dir() else { return };
        let folder = dir.join("reference/windowedGaussian");
        let mut worst = (0.0f64, String::new());
        for reference in load_results_dir(&folder, "windowedGaussian").unwrap() {
            let data = read_data_csv(dir.join("data").join(&reference.key)).unwrap();
            assert_eq!(data.timestamps, reference.timestamps, "{}", reference.key);
            let ours = windowed_gaussian(&data.values);
            for (i, (o, r)) in ours.iter().zip(&reference.scores).enumerate() {
                let diff = (o - r).abs();
                if diff > worst.0 {
                    worst = (diff, format!("{} row {i}: {o} vs {r}", reference.key));
                }
            }
        }
        eprintln!("windowedGaussian: largest difference {:e} ({})", worst.0, worst.1);
        assert!(worst.0 <= 1e-6, "largest difference {:e} at {}", worst.0, worst.1);
    }
}
