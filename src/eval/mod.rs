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
    let filled = (done.min(total) * WIDTH).checked_div(total).unwrap_or(WIDTH);
    format!("[{}{}] {done}/{total}", "#".repeat(filled), ".".repeat(WIDTH - filled))
}
