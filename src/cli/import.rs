//! `tsad import`: posts one column of a CSV file into a stream of a running server, in
//! batches, with a progress line. Also the posting side that `tsad simulate` shares: an
//! ingest client that retries a refused batch (429/503, after `Retry-After`) and the progress
//! line.
//!
//! Bad files are refused before anything is posted, with one line naming the line of the
//! file (exit 2). A re-run posts the same readings at the same timestamps, which the server
//! answers from storage without storing anything twice.
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use clap::Args;
use serde_json::{json, Value};

use super::admin::ServerArgs;
use super::CliError;
use crate::import::read_csv_series;

/// Most readings the server takes in one request (its default `--max-readings`).
pub(super) const MAX_BATCH: u32 = 10_000;
/// Longest a batch is retried while the server keeps refusing it (429/503).
const RETRY_FOR: Duration = Duration::from_secs(300);
/// Longest single wait, whatever `Retry-After` says.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(30);
/// Retries of a batch after a broken connection or a timeout (it may have been committed:
/// the retry is then answered from storage).
const TRANSPORT_RETRIES: u32 = 3;

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// CSV file with a header row.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    #[command(flatten)]
    server: ServerArgs,
    /// The stream to post into (created with defaults on its first reading).
    #[arg(long, value_name = "NAME")]
    stream: String,
    /// Value column; default: the only column besides the timestamps, or the one named `value`.
    #[arg(long, value_name = "NAME")]
    column: Option<String>,
    /// Timestamp column [default: `timestamp` when the file has one]: Unix seconds or
    /// milliseconds, RFC 3339, or `YYYY-MM-DD HH:MM:SS` (UTC), increasing. Without one, rows
    /// are one second apart, ending now (a re-run of the same file reuses the times of the
    /// first run).
    #[arg(long, value_name = "NAME")]
    ts_column: Option<String>,
    /// Readings per request.
    #[arg(long, value_name = "N", default_value_t = 5000,
          value_parser = clap::value_parser!(u32).range(1..=MAX_BATCH as i64))]
    batch: u32,
}

pub fn run(args: ImportArgs) -> Result<(), CliError> {
    crate::api::wire::stream_name(&args.stream).map_err(|e| CliError::Usage(anyhow!("--stream: {e}")))?;
    let series = read_csv_series(&args.file, args.column.as_deref(), args.ts_column.as_deref())
        .map_err(|e| CliError::Usage(e.into()))?;
    let client = Ingest::new(&args.server)?;
    runtime()?.block_on(async move {
        let timestamps = match series.timestamps {
            Some((_, ts)) => ts,
            None => seconds_apart(&client, &args.stream, &series.values).await?,
        };
        let readings: Vec<(i64, f64)> = timestamps.into_iter().zip(series.values).collect();
        let started = Instant::now();
        let mut progress = Progress::new(Some(readings.len() as u64));
        let (mut sent, mut flagged) = (0u64, 0u64);
        for batch in readings.chunks(args.batch as usize) {
            let answer = client.post_readings(&args.stream, batch).await?;
            sent += batch.len() as u64;
            flagged += answer["anomalies"].as_array().map_or(0, |a| a.len() as u64);
            progress.show(sent, flagged);
        }
        progress.finish(sent, flagged);
        let (first, last) = (readings[0].0, readings[readings.len() - 1].0);
        if args.server.json {
            let out = json!({
                "stream": args.stream,
                "readings": sent,
                "anomalous": flagged,
                "first_ts": crate::api::wire::format_ts(first),
                "last_ts": crate::api::wire::format_ts(last),
            });
            println!("{out}");
        } else {
            println!(
                "{}: {sent} readings from {} to {} posted in {:.1} s; {flagged} judged anomalous; see {}/",
                args.stream,
                crate::api::wire::format_ts(first),
                crate::api::wire::format_ts(last),
                started.elapsed().as_secs_f64(),
                client.base,
            );
        }
        Ok(())
    })
}

/// Timestamps for a file without any: one second apart, ending now. When the stream already
/// ends with exactly these values one second apart (an earlier import of the same file),
/// their timestamps are reused, so a re-run changes nothing; when it holds other readings,
/// the new ones follow them.
async fn seconds_apart(client: &Ingest, stream: &str, values: &[f64]) -> Result<Vec<i64>, CliError> {
    let n = values.len() as i64;
    let spaced = |end: i64| (0..n).map(|i| end - (n - 1 - i) * 1000).collect::<Vec<i64>>();
    let now = crate::storage::now_ms() / 1000 * 1000;
    // Without the read scope the stream cannot be looked at: treat it as new.
    let last = match client.get(&format!("/v1/streams/{stream}")).await {
        Ok(Some(status)) => status["last_ts"].as_str().and_then(parse_rfc3339),
        Ok(None) => None,
        Err(CliError::Usage(_)) => None,
        Err(e) => return Err(e),
    };
    let Some(last) = last else { return Ok(spaced(now)) };
    let candidate = spaced(last);
    let stored = client.stored_readings(stream, candidate[0], last + 1).await?;
    let same = stored.len() == values.len()
        && stored.iter().zip(candidate.iter().zip(values)).all(|((ts, v), (cts, cv))| ts == cts && v == cv);
    Ok(if same { candidate } else { spaced(now.max(last + n * 1000)) })
}

fn parse_rfc3339(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text).ok().map(|t| t.timestamp_millis())
}

pub(super) fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| CliError::Runtime(e.into()))
}

/// A client of a running server's ingest and query API.
pub(super) struct Ingest {
    http: reqwest::Client,
    /// The server's base URL, without a trailing slash.
    pub(super) base: String,
    key: Option<String>,
}

impl Ingest {
    pub(super) fn new(server: &ServerArgs) -> Result<Ingest, CliError> {
        let base = server.server.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(CliError::Usage(anyhow!("--server must be an http:// or https:// URL, not {base:?}")));
        }
        // A batch of 10,000 readings of one stream is judged one after another: give it time.
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| CliError::Runtime(e.into()))?;
        Ok(Ingest { http, base, key: server.key.clone() })
    }

    /// Sends a request built by `make`, again after 429/503 (waiting `Retry-After`) and after a
    /// broken connection; the status and JSON body of the first other answer.
    async fn send(&self, make: impl Fn() -> reqwest::RequestBuilder) -> Result<(reqwest::StatusCode, Value), CliError> {
        let refused_since = Instant::now();
        let mut transport_failures = 0;
        loop {
            let mut request = make();
            if let Some(key) = &self.key {
                request = request.bearer_auth(key);
            }
            let response = match request.send().await {
                Ok(response) => response,
                Err(e) if !e.is_connect() && transport_failures < TRANSPORT_RETRIES => {
                    transport_failures += 1;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                Err(e) => {
                    return Err(CliError::Runtime(anyhow!("cannot reach {}: {}", self.base, error_chain(&e))));
                }
            };
            let status = response.status();
            if status == 429 || status == 503 {
                let wait = response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map_or(Duration::from_secs(1), Duration::from_secs)
                    .clamp(Duration::from_millis(100), MAX_RETRY_WAIT);
                if refused_since.elapsed() + wait <= RETRY_FOR {
                    tokio::time::sleep(wait).await;
                    continue;
                }
            }
            let text = response.text().await.unwrap_or_default();
            return Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)));
        }
    }

    /// GET `path`: its JSON, or `None` for a 404.
    pub(super) async fn get(&self, path: &str) -> Result<Option<Value>, CliError> {
        let url = format!("{}{path}", self.base);
        let (status, body) = self.send(|| self.http.get(&url)).await?;
        if status == 404 {
            return Ok(None);
        }
        check(status, body, "").map(Some)
    }

    /// Posts readings `(ts in ms, value)` into `stream`; the server's answer.
    pub(super) async fn post_readings(&self, stream: &str, readings: &[(i64, f64)]) -> Result<Value, CliError> {
        let url = format!("{}/v1/streams/{stream}/readings", self.base);
        let items: Vec<Value> = readings.iter().map(|(ts, value)| json!({ "ts": ts, "value": value })).collect();
        let body = serde_json::to_vec(&json!({ "readings": items })).map_err(|e| CliError::Runtime(e.into()))?;
        let (status, answer) = self
            .send(|| self.http.post(&url).header(reqwest::header::CONTENT_TYPE, "application/json").body(body.clone()))
            .await?;
        check(status, answer, &format!("stream {stream}: "))
    }

    /// The stored readings `(ts, value)` of `stream` in `[from, to)`, oldest first.
    async fn stored_readings(&self, stream: &str, from: i64, to: i64) -> Result<Vec<(i64, f64)>, CliError> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/v1/streams/{stream}/readings?from={from}&to={to}&limit={MAX_BATCH}");
            if let Some(c) = &cursor {
                path += &format!("&cursor={c}");
            }
            let Some(page) = self.get(&path).await? else { return Ok(out) };
            for r in page["readings"].as_array().into_iter().flatten() {
                if let (Some(ts), Some(v)) = (r["ts"].as_str().and_then(parse_rfc3339), r["value"].as_f64()) {
                    out.push((ts, v));
                }
            }
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => return Ok(out),
            }
        }
    }

    /// Every anomaly event of `stream` that started at or after `from` (ms), oldest first.
    pub(super) async fn anomalies(&self, stream: &str, from: i64) -> Result<Vec<Value>, CliError> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/v1/streams/{stream}/anomalies?from={from}&limit=1000");
            if let Some(c) = &cursor {
                path += &format!("&cursor={c}");
            }
            let Some(page) = self.get(&path).await? else { break };
            out.extend(page["anomalies"].as_array().cloned().unwrap_or_default());
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        out.reverse();
        Ok(out)
    }
}

/// The body of a 2xx; otherwise the problem's `detail` as an error: usage (exit 2) for a
/// refused request (4xx other than 404 and 409), runtime otherwise.
fn check(status: reqwest::StatusCode, body: Value, context: &str) -> Result<Value, CliError> {
    if status.is_success() {
        return Ok(body);
    }
    let detail = body["detail"].as_str().unwrap_or("no detail").to_string();
    let error = anyhow!("{context}{} {}: {detail}", status.as_u16(), status.canonical_reason().unwrap_or(""));
    Err(if status.is_client_error() && status != 404 && status != 409 {
        CliError::Usage(error)
    } else {
        CliError::Runtime(error)
    })
}

/// A reqwest error with its causes, on one line ("error sending request: … connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text += &format!(": {cause}");
        source = cause.source();
    }
    text
}

/// The progress line on standard error: redrawn in place (`\r`) on a terminal, a plain line
/// every few seconds otherwise.
pub(super) struct Progress {
    /// Readings to send, when known (draws a bar).
    total: Option<u64>,
    tty: bool,
    started: Instant,
    /// When the line was last drawn.
    drawn: Option<Instant>,
}

impl Progress {
    pub(super) fn new(total: Option<u64>) -> Progress {
        let tty = std::io::stderr().is_terminal();
        // Off a terminal the first line comes after one interval, so quick runs print none.
        let drawn = if tty { None } else { Some(Instant::now()) };
        Progress { total, tty, started: Instant::now(), drawn }
    }

    /// Shows `sent` readings so far, `flagged` of them anomalous (at most every 100 ms on a
    /// terminal, every 5 s otherwise).
    pub(super) fn show(&mut self, sent: u64, flagged: u64) {
        let every = if self.tty { Duration::from_millis(100) } else { Duration::from_secs(5) };
        if self.drawn.is_some_and(|at| at.elapsed() < every) {
            return;
        }
        self.draw(sent, flagged);
    }

    fn draw(&mut self, sent: u64, flagged: u64) {
        self.drawn = Some(Instant::now());
        let elapsed = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = sent as f64 / elapsed;
        let line = match self.total {
            Some(total) if total > 0 => {
                let done = (sent as f64 / total as f64).min(1.0);
                let filled = (done * 24.0).round() as usize;
                format!(
                    "[{}{}] {sent}/{total} readings {:3.0}%  {rate:.0}/s  {flagged} flagged anomalous",
                    "#".repeat(filled),
                    ".".repeat(24 - filled),
                    done * 100.0
                )
            }
            _ => format!("{sent} readings  {rate:.0}/s  {flagged} flagged anomalous"),
        };
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r{line}\x1b[K");
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }

    /// Draws the final count and ends the line on a terminal (a summary follows on standard
    /// output).
    pub(super) fn finish(&mut self, sent: u64, flagged: u64) {
        if self.tty {
            self.draw(sent, flagged);
            let _ = writeln!(std::io::stderr());
        }
    }
}
