//! Integration tests: one binary, one module per subject.
mod app;
mod bptt;
mod checkpoint;
mod cli;
mod configs;
mod learning;
mod lecture;
mod openapi;
mod outage;
mod pytorch;
mod retention;
mod service;
mod storage;
mod support;
mod synthetic;
