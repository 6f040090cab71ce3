//! Properties of the scorer over arbitrary streams, with every baseline: every verdict is
//! finite with its score
//! in [0, 1] and its band around the forecast; flags only grow with sensitivity; bad input
//! changes nothing; the state survives the JSON round trip that persistence uses.
use proptest::prelude::*;

use super::{Baseline, Forecast, RunningNormaliser, Scorer, ScorerConfig, Verdict};

/// One step of a stream: a reading (two channels) and the forecast made before it.
#[derive(Debug, Clone)]
struct Step {
    values: Vec<f64>,
    mean: Vec<f64>,
    log_var: Vec<f64>,
}

fn finite() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => -10.0f64..10.0,
        2 => -1e6f64..1e6,
        1 => -1e15f64..1e15,
        1 => Just(0.0),
        1 => prop::num::f64::NORMAL,
    ]
}

fn step() -> impl Strategy<Value = Step> {
    (
        prop::collection::vec(finite(), 2),
        prop::collection::vec(finite(), 2),
        prop::collection::vec(prop_oneof![4 => -5.0f64..5.0, 1 => -200.0f64..200.0, 1 => prop::num::f64::NORMAL], 2),
    )
        .prop_map(|(values, mean, log_var)| Step { values, mean, log_var })
}

/// Judges `steps` as the service does (normaliser updated after judging); the verdicts.
fn run(scorer: &mut Scorer, norm: &mut RunningNormaliser, config: &ScorerConfig, steps: &[Step]) -> Vec<Verdict> {
    steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let forecast = (i > 0).then(|| Forecast { mean: s.mean.clone(), log_var: s.log_var.clone() });
            let verdict = scorer.judge(config, &s.values, forecast.as_ref(), norm);
            norm.update(&s.values);
            verdict
        })
        .collect()
}

fn config(sensitivity: f64, baseline: Baseline) -> ScorerConfig {
    ScorerConfig { warmup: 20, sensitivity, baseline, ..ScorerConfig::default() }
}

fn baseline() -> impl Strategy<Value = Baseline> {
    prop_oneof![Just(Baseline::Forecast), Just(Baseline::Warmup), Just(Baseline::History)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn verdicts_are_finite_with_scores_in_0_1(
        steps in prop::collection::vec(step(), 1..300),
        sensitivity in 0.0f64..=1.0,
        baseline in baseline(),
    ) {
        let config = config(sensitivity, baseline);
        let mut scorer = Scorer::new(2);
        let mut norm = RunningNormaliser::new(2);
        for (i, v) in run(&mut scorer, &mut norm, &config, &steps).iter().enumerate() {
            prop_assert!(v.score.is_finite() && (0.0..=1.0).contains(&v.score), "score {} at {i}", v.score);
            prop_assert!(v.surprise.is_finite() && v.surprise >= 0.0, "surprise {} at {i}", v.surprise);
            // A flag needs more (the short average's confirmation, the reading standing out),
            // never less.
            prop_assert!(!v.anomaly || (i as u64 >= config.warmup && v.score >= config.threshold()));
            for c in 0..2 {
                let (lo, mid, hi) = (v.lower[c], v.expected[c], v.upper[c]);
                prop_assert!(lo.is_finite() && mid.is_finite() && hi.is_finite(), "band {lo} {mid} {hi} at {i}");
                prop_assert!(lo <= mid && mid <= hi, "band {lo} {mid} {hi} at {i}");
            }
        }
    }

    #[test]
    fn flags_only_grow_with_sensitivity(
        steps in prop::collection::vec(step(), 30..200),
        a in 0.0f64..=1.0,
        b in 0.0f64..=1.0,
        baseline in baseline(),
    ) {
        let (low, high) = if a <= b { (a, b) } else { (b, a) };
        let flags = |s: f64| {
            let mut scorer = Scorer::new(2);
            let mut norm = RunningNormaliser::new(2);
            run(&mut scorer, &mut norm, &config(s, baseline), &steps).iter().map(|v| v.anomaly).collect::<Vec<_>>()
        };
        let (few, many) = (flags(low), flags(high));
        for (i, (f, m)) in few.iter().zip(&many).enumerate() {
            prop_assert!(!f || *m, "reading {i} flagged at sensitivity {low} but not at {high}");
        }
    }

    #[test]
    fn non_finite_or_misshapen_input_changes_nothing(
        steps in prop::collection::vec(step(), 1..60),
        bad in prop_oneof![Just(f64::NAN), Just(f64::INFINITY), Just(f64::NEG_INFINITY)],
        where_ in 0usize..3,
        baseline in baseline(),
    ) {
        let config = config(0.5, baseline);
        let mut scorer = Scorer::new(2);
        let mut norm = RunningNormaliser::new(2);
        run(&mut scorer, &mut norm, &config, &steps);
        let before = scorer.clone();
        let good = Forecast { mean: vec![0.0, 0.0], log_var: vec![0.0, 0.0] };
        let (values, forecast) = match where_ {
            0 => (vec![bad, 1.0], good),
            1 => (vec![1.0, 1.0], Forecast { mean: vec![bad, 0.0], log_var: vec![0.0, 0.0] }),
            _ => (vec![1.0], good),
        };
        prop_assert!(scorer.try_judge(&config, &values, Some(&forecast), &norm).is_err());
        prop_assert_eq!(&scorer, &before);
    }

    #[test]
    fn state_survives_the_json_round_trip(
        steps in prop::collection::vec(step(), 1..150),
        more in prop::collection::vec(step(), 1..50),
        baseline in baseline(),
    ) {
        let config = config(0.5, baseline);
        let mut scorer = Scorer::new(2);
        let mut norm = RunningNormaliser::new(2);
        run(&mut scorer, &mut norm, &config, &steps);
        let text = serde_json::to_string(&scorer).expect("serialises");
        let mut restored: Scorer = serde_json::from_str(&text).expect("deserialises");
        let mut norm2 = norm.clone();
        let a = run(&mut scorer, &mut norm, &config, &more);
        let b = run(&mut restored, &mut norm2, &config, &more);
        // The first of `more` is judged unforecast by `run`; the rest must agree exactly.
        prop_assert_eq!(a, b);
    }
}
