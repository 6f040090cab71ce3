//! Detection quality on labelled data: NAB (scorer, baseline, replay of every file through
//! the streaming core) and MIT-BIH (WFDB reading, beat-level metrics).
pub mod beats;
pub mod classify;
pub mod ecg;
pub mod nab;
pub mod nab_run;
pub mod replay;
pub mod wfdb;

/// `[######..........] 3/8`: how far a run over `total` items is, for progress lines.
pub fn progress_bar(done: usize, total: usize) -> String {
    const WIDTH: usize = 16;
    let filled = if total == 0 { WIDTH } else { (done.min(total) * WIDTH) / total };
    format!("[{}{}] {done}/{total}", "#".repeat(filled), ".".repeat(WIDTH - filled))
}
