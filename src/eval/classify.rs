//! `tsad eval ecg --train-records … --test-records …`: the lecture's many-to-one softmax
//! classifier on heartbeats, inter-patient. A GRU reads each beat's window step by step
//! ([`beats::BeatFeatures::sequence`]: the shape, its deviation from the record's own typical
//! beat, and the rhythm features) and a softmax over the AAMI classes N, S, V, F reads its
//! last state. It is trained with tsad's own training loop ([`crate::model::train::fit`]) on
//! the labelled beats of the training records and judged on the test records, which it never
//! sees during training (a record in both lists is refused). Q beats (paced, unclassifiable)
//! are left out of both, as the AAMI recommendation does.
//!
//! The classes are imbalanced (N is ~90 % of beats): each rarer class is repeated
//! ⌈√(N beats / its beats)⌉ times (at most 10) in the training set. One training beat in ten
//! is held out, before the repetition, for early stopping.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use super::beats::{self, BeatFeatures, CLASSIFIER_INPUTS};
use super::ecg::{class_name, Beat, Lead};
use super::wfdb::{self, AamiClass};
use crate::model::{
    Architecture, CancelToken, ClassifierMode, Dataset, HeadConfig, Network, NetworkConfig, Output, Targets,
    TrainConfig,
};

/// The classes the classifier tells apart, in output order.
pub const CLASSES: [AamiClass; 4] = [AamiClass::N, AamiClass::S, AamiClass::V, AamiClass::F];

/// What to train and test.
#[derive(Debug, Clone)]
pub struct ClassifyRun {
    pub mitdb: PathBuf,
    pub train_records: Vec<String>,
    pub test_records: Vec<String>,
    /// The stretch at the start of every record (training or test) from which its typical
    /// beat, amplitude and RR are learnt, without labels, seconds.
    pub learn_s: f64,
    pub hidden: usize,
    pub epochs: usize,
    pub seed: u64,
    /// Wall-clock budget of the training.
    pub max_training: Duration,
}

/// Sensitivity and positive predictivity for one class (AAMI: false positives are beats of
/// any other class given this one).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClassScore {
    pub beats: u64,
    pub true_positives: u64,
    pub false_negatives: u64,
    pub false_positives: u64,
    pub sensitivity: Option<f64>,
    pub positive_predictivity: Option<f64>,
}

/// Results over some test beats.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClassifyScores {
    pub beats: u64,
    pub ventricular: ClassScore,
    pub supraventricular: ClassScore,
    /// `confusion[true][predicted]`, classes in [`CLASSES`] order.
    pub confusion: [[u64; 4]; 4],
    /// Fraction of beats whose class was predicted.
    pub accuracy: Option<f64>,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct ClassifyReport {
    pub train_records: Vec<String>,
    pub test_records: Vec<String>,
    /// Training beats per class before repetition, [`CLASSES`] order.
    pub train_beats: [u64; 4],
    pub overall: ClassifyScores,
    pub records: BTreeMap<String, ClassifyScores>,
    pub epochs_run: usize,
    pub best_epoch: usize,
    pub training_seconds: f64,
    pub total_seconds: f64,
    pub hidden: usize,
}

fn class_index(class: AamiClass) -> Option<usize> {
    CLASSES.iter().position(|c| *c == class)
}

fn score(predicted: &[(usize, usize)]) -> ClassifyScores {
    let mut confusion = [[0u64; 4]; 4];
    for &(truth, guess) in predicted {
        confusion[truth][guess] += 1;
    }
    let of = |k: usize| {
        let tp = confusion[k][k];
        let fn_ = confusion[k].iter().sum::<u64>() - tp;
        let fp = (0..4).map(|t| confusion[t][k]).sum::<u64>() - tp;
        let (sensitivity, positive_predictivity) = wfdb::sensitivity_ppv(tp, fn_, fp);
        ClassScore {
            beats: tp + fn_,
            true_positives: tp,
            false_negatives: fn_,
            false_positives: fp,
            sensitivity,
            positive_predictivity,
        }
    };
    let beats = predicted.len() as u64;
    let right: u64 = (0..4).map(|k| confusion[k][k]).sum();
    ClassifyScores {
        beats,
        ventricular: of(2),
        supraventricular: of(1),
        confusion,
        accuracy: (beats > 0).then(|| right as f64 / beats as f64),
    }
}

/// The labelled beats (N, S, V, F) of `records`, with the record each came from.
fn labelled(run: &ClassifyRun, records: &[String]) -> anyhow::Result<Vec<(String, BeatFeatures, usize)>> {
    let mut out = Vec::new();
    for name in records {
        let lead = Lead::read(&run.mitdb, name)?;
        for beat in beats::extract(&lead.signal, lead.hz, &lead.annotations, run.learn_s) {
            if let Some(k) = class_index(beat.class) {
                out.push((name.clone(), beat, k));
            }
        }
    }
    Ok(out)
}

fn inputs(beats: &[&BeatFeatures]) -> anyhow::Result<Tensor> {
    let steps = beats.first().map_or(0, |b| b.shape.len());
    anyhow::ensure!(steps > 0, "no beats");
    anyhow::ensure!(beats.iter().all(|b| b.shape.len() == steps), "records of different sampling frequencies");
    let flat: Vec<f32> = beats.iter().flat_map(|b| b.sequence()).collect();
    Ok(Tensor::from_slice(&flat).reshape([beats.len() as i64, steps as i64, CLASSIFIER_INPUTS as i64]))
}

impl ClassifyRun {
    /// Trains on the training records, predicts every beat of the test records; returns the
    /// report and the test beats (score: 1 − P(N); flagged: predicted other than N).
    pub fn run(&self, progress: impl Fn(&str)) -> anyhow::Result<(ClassifyReport, Vec<Beat>)> {
        let started = Instant::now();
        if let Some(both) = self.train_records.iter().find(|r| self.test_records.contains(r)) {
            anyhow::bail!("record {both} is in both --train-records and --test-records");
        }
        for name in self.train_records.iter().chain(&self.test_records) {
            wfdb::read_header(&self.mitdb, name).map_err(|e| anyhow::anyhow!("record {name}: {e}"))?;
        }
        let train = labelled(self, &self.train_records).context("reading the training records")?;
        let test = labelled(self, &self.test_records).context("reading the test records")?;
        anyhow::ensure!(!train.is_empty() && !test.is_empty(), "no labelled beats to train on or to test");
        let mut train_beats = [0u64; 4];
        for (_, _, k) in &train {
            train_beats[*k] += 1;
        }
        anyhow::ensure!(
            train_beats.iter().filter(|n| **n > 0).count() >= 2,
            "the training records hold beats of only one class"
        );
        progress(&format!(
            "training beats N {} S {} V {} F {}; test beats {}",
            train_beats[0],
            train_beats[1],
            train_beats[2],
            train_beats[3],
            test.len()
        ));
        // Hold out every tenth beat for early stopping; repeat the rarer classes.
        let repeat: Vec<usize> = train_beats
            .iter()
            .map(|&n| if n == 0 { 0 } else { ((train_beats[0] as f64 / n as f64).sqrt().ceil() as usize).clamp(1, 10) })
            .collect();
        let (mut fit_set, mut val_set) = (Vec::new(), Vec::new());
        for (i, (_, beat, k)) in train.iter().enumerate() {
            if i % 10 == 9 {
                val_set.push((beat, *k));
            } else {
                fit_set.extend(std::iter::repeat_n((beat, *k), repeat[*k]));
            }
        }
        let dataset = |set: &[(&BeatFeatures, usize)]| -> anyhow::Result<Dataset> {
            let beats: Vec<&BeatFeatures> = set.iter().map(|(b, _)| *b).collect();
            let labels: Vec<i64> = set.iter().map(|(_, k)| *k as i64).collect();
            Ok(Dataset { inputs: inputs(&beats)?, targets: Targets::Classes(Tensor::from_slice(&labels)) })
        };
        let (fit_data, val_data) = (dataset(&fit_set)?, dataset(&val_set)?);
        let config = NetworkConfig {
            input_size: CLASSIFIER_INPUTS,
            head: HeadConfig::Classifier { classes: CLASSES.len(), mode: ClassifierMode::ManyToOne },
            ..NetworkConfig::forecaster(Architecture::Gru, self.hidden, 1)
        };
        let mut network = Network::new(config, Device::Cpu, self.seed)?;
        let train_config = TrainConfig {
            epochs: self.epochs,
            batch_size: 128,
            learning_rate: 3e-3,
            patience: 4,
            seed: self.seed,
            max_duration: Some(self.max_training),
            ..TrainConfig::default()
        };
        let fitted =
            crate::model::train::fit(&mut network, &fit_data, &val_data, &train_config, &CancelToken::new(), |e| {
                progress(&format!(
                    "{} epoch {}: train loss {:.4}, validation loss {:.4}, {:.0} s",
                    super::progress_bar(e.epoch, e.epochs),
                    e.epoch,
                    e.train_loss,
                    e.val_loss,
                    e.elapsed.as_secs_f64()
                ))
            })?;
        // Predict the test beats in chunks.
        let mut probabilities: Vec<f32> = Vec::with_capacity(test.len() * CLASSES.len());
        for chunk in test.chunks(2048) {
            let beats: Vec<&BeatFeatures> = chunk.iter().map(|(_, b, _)| b).collect();
            let xs = inputs(&beats)?;
            let logits = tch::no_grad(|| network.seq(&xs, None))?;
            let Output::Logits(z) = logits.0 else { anyhow::bail!("the classifier returned no logits") };
            let p = z.softmax(-1, Kind::Float).contiguous().view([-1]);
            probabilities.extend(Vec::<f32>::try_from(&p)?);
        }
        let mut per_record: BTreeMap<String, Vec<(usize, usize)>> = BTreeMap::new();
        let mut all = Vec::with_capacity(test.len());
        let mut out = Vec::with_capacity(test.len());
        for ((name, beat, truth), p) in test.iter().zip(probabilities.chunks_exact(CLASSES.len())) {
            let guess = (0..CLASSES.len()).max_by(|a, b| p[*a].total_cmp(&p[*b])).unwrap_or(0);
            per_record.entry(name.clone()).or_default().push((*truth, guess));
            all.push((*truth, guess));
            out.push(Beat {
                record: name.clone(),
                sample: beat.sample,
                symbol: beat.symbol,
                class: class_name(beat.class).to_string(),
                score: f64::from(1.0 - p[0]),
                surprise: f64::from(p[2]),
                flagged: guess != 0,
                baseline: None,
            });
        }
        let report = ClassifyReport {
            train_records: self.train_records.clone(),
            test_records: self.test_records.clone(),
            train_beats,
            overall: score(&all),
            records: per_record.iter().map(|(k, v)| (k.clone(), score(v))).collect(),
            epochs_run: fitted.epochs_run,
            best_epoch: fitted.best_epoch,
            training_seconds: fitted.duration.as_secs_f64(),
            total_seconds: started.elapsed().as_secs_f64(),
            hidden: self.hidden,
        };
        Ok((report, out))
    }
}

/// The report as a table: one row per test record and one for all of them.
pub fn table(report: &ClassifyReport) -> String {
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.1}", 100.0 * v));
    let mut out = format!(
        "{:<8} {:>6} {:>5} {:>6} {:>6} {:>5} {:>6} {:>6}\n",
        "record", "beats", "V", "Se V%", "+P V%", "S", "Se S%", "+P S%"
    );
    let mut row = |name: &str, s: &ClassifyScores| {
        out.push_str(&format!(
            "{:<8} {:>6} {:>5} {:>6} {:>6} {:>5} {:>6} {:>6}\n",
            name,
            s.beats,
            s.ventricular.beats,
            pct(s.ventricular.sensitivity),
            pct(s.ventricular.positive_predictivity),
            s.supraventricular.beats,
            pct(s.supraventricular.sensitivity),
            pct(s.supraventricular.positive_predictivity),
        ));
    };
    for (name, s) in &report.records {
        row(name, s);
    }
    row("overall", &report.overall);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_count_false_positives_from_every_other_class() {
        // truth, guess: V right twice, V called N once, N and S called V once each.
        let s = score(&[(2, 2), (2, 2), (2, 0), (0, 2), (1, 2), (0, 0), (1, 1)]);
        assert_eq!(s.ventricular.true_positives, 2);
        assert_eq!(s.ventricular.false_negatives, 1);
        assert_eq!(s.ventricular.false_positives, 2);
        assert!((s.ventricular.sensitivity.unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert!((s.ventricular.positive_predictivity.unwrap() - 0.5).abs() < 1e-12);
        assert_eq!(s.supraventricular.beats, 2);
        assert!((s.accuracy.unwrap() - 4.0 / 7.0).abs() < 1e-12);
        assert_eq!(s.confusion[2][0], 1);
    }

    fn run(mitdb: PathBuf, train: &[&str], test: &[&str]) -> ClassifyRun {
        ClassifyRun {
            mitdb,
            train_records: train.iter().map(|r| r.to_string()).collect(),
            test_records: test.iter().map(|r| r.to_string()).collect(),
            learn_s: 300.0,
            hidden: 32,
            epochs: 4,
            seed: 0,
            max_training: Duration::from_secs(600),
        }
    }

    #[test]
    fn a_record_in_both_lists_is_refused_before_anything_is_read() {
        let err = run(PathBuf::from("/nonexistent"), &["119", "208"], &["208"]).run(|_| {}).unwrap_err();
        assert!(err.to_string().contains("208 is in both"), "{err}");
        let err = run(PathBuf::from("/nonexistent"), &["119"], &["208"]).run(|_| {}).unwrap_err();
        assert!(err.to_string().contains("record 119"), "{err}");
    }

    #[test]
    fn trained_on_three_records_it_finds_the_ventricular_beats_of_a_fourth() {
        let test = "classify::trained_on_three_records_it_finds_the_ventricular_beats_of_a_fourth";
        let Some(mitdb) = crate::eval::wfdb::tests::mitdb_dir(test) else { return };
        let (report, beats) = run(mitdb, &["119", "208", "201"], &["116"]).run(|_| {}).expect("runs");
        let v = &report.overall.ventricular;
        // Record 116 holds 109 V beats (every beat with a neighbour on each side is judged).
        assert_eq!(v.beats, 109, "{report:?}");
        assert!(v.sensitivity.unwrap() >= 0.8 && v.positive_predictivity.unwrap() >= 0.8, "{v:?}");
        assert_eq!(beats.len() as u64, report.overall.beats);
        assert!(beats.iter().all(|b| (0.0..=1.0).contains(&b.score) && b.record == "116"));
        assert_eq!(report.records.len(), 1);
    }
}
