//! `tsad bench reads`: pages of stored readings read back over HTTP from a database a long
//! run has filled (`tsad bench http --keep-database`), one at a time: a random stream's
//! readings from a random point of its history, as a dashboard or an export would ask for
//! them. With `--drop-caches` the kernel's page cache is emptied first, so the first pass
//! reads from the disk; the second pass asks the same pages again.
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use super::{percentile, write_json};
use crate::app::Application;
use crate::config::{default_models_dir, Settings};

/// What `tsad bench reads` was asked to do.
pub(super) struct ReadsWork {
    pub database_url: String,
    pub queries: usize,
    pub limit: usize,
    pub drop_caches: bool,
    pub seed: u64,
}

/// One page asked for: the stream and the first timestamp (Unix ms).
struct Page {
    stream: String,
    from: i64,
}

pub(super) async fn reads(work: ReadsWork, json_out: Option<PathBuf>) -> anyhow::Result<()> {
    let mut settings = Settings::for_tests(&work.database_url, default_models_dir());
    settings.request_timeout = Duration::from_secs(120);
    let app = Application::build(settings).await?;
    let addr = app.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async move {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    let result = measure(&client, addr, &work).await;
    let _ = stop.send(());
    server.await??;
    let (pages, rows) = result?;
    let database_bytes = database_bytes(&work.database_url).await;
    write_json(
        json_out,
        json!({
            "benchmark": "reads", "database": crate::app::redact(&work.database_url),
            "database_bytes": database_bytes, "limit": work.limit, "pages": pages, "results": rows,
        }),
    )
}

/// Chooses the pages (untimed: the streams' list and each chosen stream's first reading),
/// then reads them twice, timing each request. Returns the number of pages and a row a pass.
async fn measure(
    client: &reqwest::Client,
    addr: std::net::SocketAddr,
    work: &ReadsWork,
) -> anyhow::Result<(usize, Vec<Value>)> {
    // Every stream, a page at a time, and the readings they hold.
    let mut streams: Vec<(String, i64)> = Vec::new();
    let (mut listed, mut total) = (0usize, 0i64);
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("http://{addr}/v1/streams?limit=10000");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page: StreamPage = client.get(&url).send().await?.error_for_status()?.json().await?;
        listed += page.streams.len();
        for s in page.streams {
            total += s.readings;
            if s.readings > work.limit as i64 {
                let last = s.last_ts.as_deref().map(crate::api::wire::query_timestamp).transpose();
                if let Ok(Some(last)) = last {
                    streams.push((s.name, last));
                }
            }
        }
        cursor = page.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    if streams.is_empty() {
        bail!("the database holds no stream with more than {} readings (fill it with `tsad bench http`)", work.limit);
    }
    println!(
        "{listed} streams, {total} readings; {} pages of at most {} readings, each from a random point of one of the \
         {} streams with more than that",
        work.queries,
        work.limit,
        streams.len()
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(work.seed);
    let mut oldest_ts = std::collections::HashMap::new();
    let mut pages = Vec::with_capacity(work.queries);
    for _ in 0..work.queries {
        let (name, last) = &streams[rng.random_range(0..streams.len())];
        let oldest = match oldest_ts.get(name) {
            Some(&ts) => ts,
            None => {
                let page = read_page(client, addr, name, None, 1).await?;
                let first = page.first().ok_or_else(|| anyhow!("stream {name} returned no reading"))?;
                let ts =
                    crate::api::wire::query_timestamp(&first.ts).map_err(|e| anyhow!("a reading's `ts`: {e:?}"))?;
                oldest_ts.insert(name.clone(), ts);
                ts
            }
        };
        pages.push(Page { stream: name.clone(), from: rng.random_range(oldest..=*last) });
    }
    if work.drop_caches {
        drop_page_cache()?;
    }
    println!(
        "{:<22} {:>9} {:>9} {:>9} {:>9} {:>15} {:>14}",
        "pass", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "server mean ms", "readings/page"
    );
    let mut rows = Vec::new();
    let passes: [&str; 2] = if work.drop_caches { ["cold (caches dropped)", "again"] } else { ["first", "again"] };
    for pass in passes {
        let mut latencies = Vec::with_capacity(pages.len());
        let mut readings = 0usize;
        let before = server_time(client, addr).await?;
        for page in &pages {
            let started = Instant::now();
            let got = read_page(client, addr, &page.stream, Some(page.from), work.limit).await?;
            latencies.push(started.elapsed().as_secs_f64() * 1e3);
            readings += got.len();
        }
        let after = server_time(client, addr).await?;
        let server_ms = (after.0 - before.0) / (after.1 - before.1) * 1e3;
        latencies.sort_by(f64::total_cmp);
        let per_page = readings as f64 / pages.len() as f64;
        let (p50, p99, p999) =
            (percentile(&latencies, 0.5), percentile(&latencies, 0.99), percentile(&latencies, 0.999));
        let max = latencies.last().copied().unwrap_or(f64::NAN);
        println!("{pass:<22} {p50:>9.2} {p99:>9.2} {p999:>9.2} {max:>9.2} {server_ms:>15.2} {per_page:>14.1}");
        rows.push(json!({
            "pass": pass, "p50_ms": p50, "p99_ms": p99, "p999_ms": p999, "max_ms": max, "server_mean_ms": server_ms,
            "readings_per_page": per_page, "requests": latencies.len(),
        }));
    }
    Ok((pages.len(), rows))
}

/// One page of a stream's readings from `from` on: their timestamps, as the API wrote them.
async fn read_page(
    client: &reqwest::Client,
    addr: std::net::SocketAddr,
    stream: &str,
    from: Option<i64>,
    limit: usize,
) -> anyhow::Result<Vec<ReadingTs>> {
    let mut url = format!("http://{addr}/v1/streams/{stream}/readings?limit={limit}");
    if let Some(from) = from {
        url.push_str(&format!("&from={from}"));
    }
    let response = client.get(&url).send().await?;
    let status = response.status();
    if !status.is_success() {
        bail!("GET {url}: {status} {}", response.text().await.unwrap_or_default());
    }
    // Only the timestamps are decoded, and none parsed: the client's work is timed with
    // each page.
    let body: ReadingsPage = response.json().await.with_context(|| format!("GET {url}: the answer"))?;
    Ok(body.readings)
}

/// The server's own time on pages of readings so far: the sum of its request durations
/// (seconds) and their count, from `/metrics`.
async fn server_time(client: &reqwest::Client, addr: std::net::SocketAddr) -> anyhow::Result<(f64, f64)> {
    let text = client.get(format!("http://{addr}/metrics")).send().await?.error_for_status()?.text().await?;
    let value = |suffix: &str| {
        let series =
            format!("tsad_http_request_duration_seconds_{suffix}{{route=\"/v1/streams/{{stream}}/readings\"}} ");
        text.lines().find_map(|l| l.strip_prefix(series.as_str())?.trim().parse::<f64>().ok()).unwrap_or(0.0)
    };
    Ok((value("sum"), value("count")))
}

#[derive(serde::Deserialize)]
struct StreamPage {
    streams: Vec<ListedStream>,
    next_cursor: Option<String>,
}

#[derive(serde::Deserialize)]
struct ListedStream {
    name: String,
    readings: i64,
    last_ts: Option<String>,
}

#[derive(serde::Deserialize)]
struct ReadingsPage {
    readings: Vec<ReadingTs>,
}

#[derive(serde::Deserialize)]
struct ReadingTs {
    ts: String,
}

/// Writes back dirty pages and empties the kernel's page cache (Linux, root).
fn drop_page_cache() -> anyhow::Result<()> {
    // SAFETY: `sync(2)` takes no arguments and cannot fail.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3")
        .context("--drop-caches: writing /proc/sys/vm/drop_caches (it needs root, on Linux)")
}

/// The database's size on disk: the SQLite file with its write-ahead log, or
/// `pg_database_size`.
async fn database_bytes(url: &str) -> Option<u64> {
    super::DatabaseSize::open(url).await.bytes().await
}
