//! Detection quality on labelled data: NAB (scorer, baseline, replay of every file through
//! the streaming core) and MIT-BIH (WFDB reading, beat-level metrics).
pub mod ecg;
pub mod nab;
pub mod nab_run;
pub mod replay;
pub mod wfdb;
