//! Integration tests: one binary, one module per subject.
mod bptt;
mod checkpoint;
mod cli;
mod configs;
mod learning;
mod lecture;
mod pytorch;
mod support;
