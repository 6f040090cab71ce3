//! Anomaly events (DESIGN.md §4 step 4): flagged readings, allowing short gaps, form one
//! event — start, end, peak time and score, actual vs expected at the peak — open until a
//! quiet period closes it.
//!
//! It owns only the grouping of verdicts a stream has already judged, in order; storing and
//! announcing events is the caller's business.

use super::{ScoringError, Verdict};

/// Default gap: flagged readings separated by at most this many unflagged ones join one event.
const DEFAULT_GAP: u32 = 5;
/// Default quiet period: an open event closes after this many unflagged readings.
const DEFAULT_QUIET: u32 = 20;
/// Longest quiet period accepted.
const MAX_QUIET: u32 = 1_000_000;

/// How flagged readings are grouped into events.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct EventConfig {
    /// Flagged readings separated by at most this many unflagged ones join one event (default 5).
    pub gap: u32,
    /// An open event closes after this many unflagged readings (default 20). A flagged
    /// reading after more than `gap`, but fewer than `quiet`, unflagged ones starts a new event
    /// and closes the old one.
    pub quiet: u32,
}

impl Default for EventConfig {
    fn default() -> Self {
        Self { gap: DEFAULT_GAP, quiet: DEFAULT_QUIET }
    }
}

impl EventConfig {
    /// Checks `1 <= quiet <= 1 000 000` and `gap < quiet` (a larger gap could never be
    /// bridged: the event would have closed first).
    pub fn validate(&self) -> Result<(), ScoringError> {
        if self.quiet == 0 || self.quiet > MAX_QUIET {
            return Err(ScoringError::InvalidConfig(format!(
                "quiet must be between 1 and {MAX_QUIET} readings, got {}",
                self.quiet
            )));
        }
        if self.gap >= self.quiet {
            return Err(ScoringError::InvalidConfig(format!(
                "gap ({}) must be smaller than quiet ({})",
                self.gap, self.quiet
            )));
        }
        Ok(())
    }
}

/// An anomaly event as far as it is known.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OpenEvent {
    /// Timestamp (ms) of its first flagged reading.
    pub start_ts: i64,
    /// Timestamp (ms) of its last flagged reading.
    pub end_ts: i64,
    /// Timestamp (ms) of its highest-scoring reading (the first of equals).
    pub peak_ts: i64,
    /// Score of that reading.
    pub peak_score: f64,
    /// The reading at the peak, data units.
    pub actual: Vec<f64>,
    /// What was expected at the peak, data units.
    pub expected: Vec<f64>,
    /// Unflagged readings since its last flagged one.
    pub unflagged_since: u32,
}

impl OpenEvent {
    fn start(ts: i64, values: &[f64], verdict: &Verdict) -> Self {
        Self {
            start_ts: ts,
            end_ts: ts,
            peak_ts: ts,
            peak_score: verdict.score,
            actual: values.to_vec(),
            expected: verdict.expected.to_vec(),
            unflagged_since: 0,
        }
    }

    fn extend(&mut self, ts: i64, values: &[f64], verdict: &Verdict) {
        self.end_ts = ts;
        self.unflagged_since = 0;
        if verdict.score > self.peak_score {
            self.peak_ts = ts;
            self.peak_score = verdict.score;
            self.actual = values.to_vec();
            self.expected = verdict.expected.to_vec();
        }
    }
}

/// What one verdict changed about a stream's events.
#[derive(Debug, Clone, PartialEq)]
pub enum EventUpdate {
    /// A new event, not reported before.
    Opened(OpenEvent),
    /// A flagged reading extended the open event (its end, perhaps its peak).
    Updated(OpenEvent),
    /// The event is over; it will not change again.
    Closed(OpenEvent),
}

/// The open anomaly event of a stream, if any.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EventTracker {
    /// The event still open, if any.
    pub open: Option<OpenEvent>,
    /// Whether `open` has not been reported yet: a flagged reading that closed the previous
    /// event (by arriving after more than `gap` unflagged readings) could report only that
    /// closing, so the new event's opening is reported with the next verdict.
    #[serde(default)]
    unannounced: bool,
}

impl EventTracker {
    /// Feed every verdict in order with its timestamp (ms) and values; returns what changed, if anything.
    ///
    /// - A flagged reading with no event open → `Opened`.
    /// - A flagged reading at most `gap` unflagged readings after the open event's last one →
    ///   `Updated` (end, and peak if it scores higher).
    /// - A flagged reading more than `gap` unflagged readings after it, while it is still open
    ///   → `Closed` of the old event; the new event opened by this reading is reported as
    ///   `Opened` with the next verdict (whatever it is), one reading late.
    /// - The `quiet`-th unflagged reading in a row → `Closed`.
    ///
    /// Unflagged readings otherwise change nothing that is reported.
    pub fn observe(&mut self, config: &EventConfig, ts: i64, values: &[f64], verdict: &Verdict) -> Option<EventUpdate> {
        let announce = std::mem::take(&mut self.unannounced);
        let Some(mut event) = self.open.take() else {
            if verdict.anomaly {
                let event = OpenEvent::start(ts, values, verdict);
                self.open = Some(event.clone());
                return Some(EventUpdate::Opened(event));
            }
            return None;
        };
        let update = if verdict.anomaly {
            if event.unflagged_since <= config.gap {
                event.extend(ts, values, verdict);
                self.open = Some(event.clone());
                if announce {
                    EventUpdate::Opened(event)
                } else {
                    EventUpdate::Updated(event)
                }
            } else {
                self.open = Some(OpenEvent::start(ts, values, verdict));
                self.unannounced = true;
                EventUpdate::Closed(event)
            }
        } else {
            event.unflagged_since = event.unflagged_since.saturating_add(1);
            if announce {
                // Announced before it can close (with a valid config it cannot close yet anyway).
                self.open = Some(event.clone());
                EventUpdate::Opened(event)
            } else if event.unflagged_since >= config.quiet {
                EventUpdate::Closed(event)
            } else {
                self.open = Some(event);
                return None;
            }
        };
        Some(update)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(score: f64, anomaly: bool, expected: f64) -> Verdict {
        Verdict {
            expected: smallvec::smallvec![expected],
            lower: smallvec::smallvec![expected - 1.0],
            upper: smallvec::smallvec![expected + 1.0],
            score,
            anomaly,
            surprise: 0.0,
        }
    }

    /// Feeds flags (true = flagged) with timestamps 0, 10, 20…; scores and values encode the
    /// index so peaks can be checked. Returns every update with the index that produced it.
    fn feed(config: &EventConfig, flags: &[bool], scores: &[f64]) -> (EventTracker, Vec<(usize, EventUpdate)>) {
        let mut tracker = EventTracker::default();
        let mut updates = Vec::new();
        for (i, &flag) in flags.iter().enumerate() {
            let score = scores.get(i).copied().unwrap_or(if flag { 0.6 } else { 0.1 });
            let v = verdict(score, flag, 100.0 + i as f64);
            if let Some(u) = tracker.observe(config, i as i64 * 10, &[i as f64], &v) {
                updates.push((i, u));
            }
        }
        (tracker, updates)
    }

    fn pattern(s: &str) -> Vec<bool> {
        s.chars().map(|c| c == 'X').collect()
    }

    #[test]
    fn unflagged_readings_open_nothing() {
        let (tracker, updates) = feed(&EventConfig::default(), &pattern("...................."), &[]);
        assert!(updates.is_empty());
        assert_eq!(tracker.open, None);
    }

    #[test]
    fn flags_separated_by_at_most_gap_unflagged_readings_join_one_event() {
        let config = EventConfig { gap: 2, quiet: 10 };
        let (tracker, updates) = feed(&config, &pattern("X..X.X"), &[]);
        assert_eq!(updates.len(), 3);
        assert!(matches!(&updates[0], (0, EventUpdate::Opened(e)) if e.start_ts == 0));
        assert!(matches!(&updates[1], (3, EventUpdate::Updated(e)) if e.start_ts == 0 && e.end_ts == 30));
        assert!(matches!(&updates[2], (5, EventUpdate::Updated(e)) if e.start_ts == 0 && e.end_ts == 50));
        let open = tracker.open.expect("still open");
        assert_eq!((open.start_ts, open.end_ts, open.unflagged_since), (0, 50, 0));
    }

    #[test]
    fn a_flag_after_more_than_gap_unflagged_readings_starts_a_new_event() {
        let config = EventConfig { gap: 2, quiet: 10 };
        let (tracker, updates) = feed(&config, &pattern("XX...X.."), &[]);
        assert!(matches!(&updates[0], (0, EventUpdate::Opened(e)) if e.start_ts == 0));
        assert!(matches!(&updates[1], (1, EventUpdate::Updated(e)) if e.end_ts == 10));
        // Reading 5 closes the first event and opens the second, reported with reading 6.
        assert!(matches!(&updates[2], (5, EventUpdate::Closed(e)) if e.start_ts == 0 && e.end_ts == 10));
        assert!(matches!(&updates[3], (6, EventUpdate::Opened(e)) if e.start_ts == 50 && e.end_ts == 50));
        assert_eq!(updates.len(), 4);
        assert_eq!(tracker.open.map(|e| (e.start_ts, e.unflagged_since)), Some((50, 2)));
    }

    #[test]
    fn a_new_event_that_is_extended_at_once_is_still_reported_as_opened() {
        let config = EventConfig { gap: 1, quiet: 10 };
        let (_, updates) = feed(&config, &pattern("X..XX"), &[]);
        assert!(matches!(&updates[1], (3, EventUpdate::Closed(e)) if e.start_ts == 0));
        assert!(matches!(&updates[2], (4, EventUpdate::Opened(e)) if e.start_ts == 30 && e.end_ts == 40));
        assert_eq!(updates.len(), 3);
    }

    #[test]
    fn an_event_closes_after_quiet_unflagged_readings() {
        let config = EventConfig { gap: 2, quiet: 4 };
        let (tracker, updates) = feed(&config, &pattern("X.X....."), &[]);
        assert_eq!(updates.len(), 3);
        assert!(matches!(&updates[2], (6, EventUpdate::Closed(e)) if e.start_ts == 0 && e.end_ts == 20));
        assert_eq!(tracker.open, None);
        // A flag after closing opens a fresh event.
        let (_, updates) = feed(&config, &pattern("X....X"), &[]);
        assert!(matches!(&updates[1], (4, EventUpdate::Closed(_))));
        assert!(matches!(&updates[2], (5, EventUpdate::Opened(e)) if e.start_ts == 50));
    }

    #[test]
    fn the_peak_is_the_highest_score_and_keeps_actual_and_expected_of_that_reading() {
        let config = EventConfig::default();
        let scores = [0.6, 0.9, 0.7, 0.9, 0.95, 0.1, 0.8];
        let (tracker, _) = feed(&config, &pattern("XXXXX.X"), &scores);
        let e = tracker.open.expect("open");
        assert_eq!((e.peak_ts, e.peak_score), (40, 0.95));
        assert_eq!((e.actual.clone(), e.expected.clone()), (vec![4.0], vec![104.0]));
        assert_eq!((e.start_ts, e.end_ts), (0, 60));
        // Ties keep the first peak.
        let (tracker, _) = feed(&config, &pattern("XXX"), &[0.7, 0.9, 0.9]);
        assert_eq!(tracker.open.map(|e| e.peak_ts), Some(10));
    }

    #[test]
    fn event_config_validation_rejects_gaps_that_cannot_be_bridged_and_empty_quiet_periods() {
        assert!(EventConfig::default().validate().is_ok());
        for bad in [
            EventConfig { gap: 0, quiet: 0 },
            EventConfig { gap: 5, quiet: 5 },
            EventConfig { gap: 9, quiet: 5 },
            EventConfig { gap: 0, quiet: MAX_QUIET + 1 },
        ] {
            assert!(matches!(bad.validate(), Err(ScoringError::InvalidConfig(_))), "{bad:?}");
        }
        assert!(EventConfig { gap: 0, quiet: 1 }.validate().is_ok());
    }

    #[test]
    fn tracker_round_trips_through_json_including_an_unannounced_event() {
        let config = EventConfig { gap: 1, quiet: 10 };
        let mut tracker = EventTracker::default();
        for (i, flag) in pattern("X...X").into_iter().enumerate() {
            tracker.observe(&config, i as i64, &[1.0], &verdict(0.7, flag, 1.0));
        }
        let json = serde_json::to_string(&tracker).expect("serialisable");
        let mut back: EventTracker = serde_json::from_str(&json).expect("deserialisable");
        assert_eq!(back, tracker);
        // The restored tracker still announces the new event with the next verdict.
        assert!(
            matches!(back.observe(&config, 5, &[1.0], &verdict(0.1, false, 1.0)), Some(EventUpdate::Opened(e)) if e.start_ts == 4)
        );
        // A tracker persisted before `unannounced` existed still loads.
        let old: EventTracker = serde_json::from_str(r#"{"open":null}"#).expect("old form");
        assert_eq!(old, EventTracker::default());
    }
}
