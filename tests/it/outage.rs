//! The database going away mid-run: `/readyz` fails, ingest answers 503 without
//! acknowledging, nothing is half-stored, and the service recovers by itself when the
//! database returns. PostgreSQL is reached through a TCP proxy the test cuts and restores
//! (stopping the shared server would break every other test running beside this one), or
//! stalls: connections stay open and nothing passes, as across a network partition, where
//! only the service's own commit timeout answers.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::app::{fresh_database, Backend, TestApp};

/// Forwards connections to `upstream` while up; when cut, drops every open connection and
/// refuses new ones, as a database host that went away; when stalled, holds every byte
/// (connections stay open) until resumed.
struct Proxy {
    addr: std::net::SocketAddr,
    up: Arc<AtomicBool>,
    stalled: watch::Sender<bool>,
    open: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

/// Copies `from` to `to`, holding what it read while `stalled`.
async fn forward(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    mut stalled: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if stalled.wait_for(|stalled| !stalled).await.is_err() {
            return; // the proxy is gone
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let up = Arc::new(AtomicBool::new(true));
        let (stalled, _) = watch::channel(false);
        let open: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (up2, stalled2, open2) = (up.clone(), stalled.clone(), open.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { return };
                if !up2.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let upstream = upstream.clone();
                let stalled = stalled2.subscribe();
                let task = tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(&upstream).await {
                        let (client_read, client_write) = client.into_split();
                        let (server_read, server_write) = server.into_split();
                        // Either direction ending ends both (the other socket closes).
                        tokio::select! {
                            () = forward(client_read, server_write, stalled.clone()) => {}
                            () = forward(server_read, client_write, stalled) => {}
                        }
                    }
                });
                open2.lock().expect("proxy lock").push(task);
            }
        });
        Proxy { addr, up, stalled, open, accept }
    }

    /// A proxy to the PostgreSQL server of `url`, and `url` through it.
    async fn around(url: &str) -> (Proxy, String) {
        // postgres://user@HOST:PORT/db → the same through the proxy.
        let (scheme_user, rest) = url.split_once('@').expect("user@host in the URL");
        let (host_port, db) = rest.split_once('/').expect("a database name");
        let proxy = Proxy::start(host_port.to_string()).await;
        let proxied = format!("{scheme_user}@{}/{db}", proxy.addr);
        (proxy, proxied)
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for task in self.open.lock().expect("proxy lock").drain(..) {
            task.abort(); // both sockets close
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }

    fn stall(&self) {
        self.stalled.send_replace(true);
    }

    fn resume(&self) {
        self.stalled.send_replace(false);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.resume();
        self.cut();
    }
}

fn batch(from: usize, n: usize) -> Value {
    let readings: Vec<Value> = (from..from + n)
        .map(|i| json!({"ts": 1_767_225_600_000i64 + i as i64 * 1000, "value": 10.0 + (i as f64 / 7.0).sin()}))
        .collect();
    json!({ "readings": readings })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_gives_503_acknowledges_nothing_and_recovers() {
    let Some((url, _)) = fresh_database(Backend::Postgres).await else { return };
    let (proxy, proxied) = Proxy::around(&url).await;
    let app = TestApp::start(&proxied, None).await;

    let (status, reply) = app.post("/v1/streams/boiler/readings", &batch(0, 200)).await;
    assert_eq!(status, 200, "{reply}");
    let (status, _) = app.get("/readyz").await;
    assert_eq!(status, 200);

    proxy.cut();
    let (status, ready) = app.get("/readyz").await;
    assert_eq!(status, 503, "readyz with the database gone: {ready}");
    // Ingest during the outage: never a 2xx; a 503 (or 429 while shedding) with Retry-After.
    for attempt in 0..3 {
        let response = app
            .client
            .post(app.url("/v1/streams/boiler/readings"))
            .json(&batch(200, 50))
            .send()
            .await
            .expect("the service answers");
        let status = response.status().as_u16();
        let retry_after = response.headers().contains_key("retry-after");
        let (_, body) = crate::app::decode(response).await;
        assert!(status == 503 || status == 429, "attempt {attempt}: {status} {body}");
        assert!(retry_after, "attempt {attempt}: {status} without Retry-After");
        assert_eq!(body["status"], status, "problem+json body: {body}");
    }

    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _) = app.get("/readyz").await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "readyz did not recover within 30 s of the database returning");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The refused batch, retried, is stored once; then ingest goes on.
    retried_batch_is_stored_once(&app).await;
    app.stop().await;
}

/// Posts `batch(from, n)` to `stream` until it is accepted, whole (at most 10 s: the service
/// answers 503 until its connections to the database are back).
async fn post_until_accepted(app: &TestApp, stream: &str, from: usize, n: usize) {
    let mut status = 0;
    for _ in 0..50 {
        let (s, reply) = app.post(&format!("/v1/streams/{stream}/readings"), &batch(from, n)).await;
        status = s;
        if s == 200 {
            assert_eq!(reply["accepted"], n, "{reply}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(status, 200, "ingest did not recover");
}

/// Posts `batch(200, 50)` to `boiler` until it is accepted (at most 10 s), then the next 50,
/// and checks the stream holds its 300 readings once each.
async fn retried_batch_is_stored_once(app: &TestApp) {
    post_until_accepted(app, "boiler", 200, 50).await;
    let (status, reply) = app.post("/v1/streams/boiler/readings", &batch(250, 50)).await;
    assert_eq!(status, 200, "{reply}");
    let (_, stream) = app.get("/v1/streams/boiler").await;
    assert_eq!(stream["readings"], 300, "{stream}");
    let (_, page) = app.get("/v1/streams/boiler/readings?limit=10000").await;
    let stored = page["readings"].as_array().expect("readings");
    assert_eq!(stored.len(), 300);
    let mut ts: Vec<&str> = stored.iter().map(|r| r["ts"].as_str().expect("ts")).collect();
    ts.dedup();
    assert_eq!(ts.len(), 300, "a reading stored twice");
}

/// A commit sent into a partition (the connection stays open, nothing comes back) is
/// answered 503 after `commit_timeout`, not after the request's timeout or never; its stream
/// reloads from storage, and once the database is back the same readings, retried, are
/// stored once, whichever way the stalled commit ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_the_database_never_answers_times_out_and_its_stream_reloads() {
    let Some((url, _)) = fresh_database(Backend::Postgres).await else { return };
    let (proxy, proxied) = Proxy::around(&url).await;
    let timeout = Duration::from_secs(1);
    let app = TestApp::start_with(&proxied, None, |s| {
        s.commit_timeout = timeout;
        s.request_timeout = Duration::from_secs(5);
    })
    .await;
    let (status, reply) = app.post("/v1/streams/boiler/readings", &batch(0, 200)).await;
    assert_eq!(status, 200, "{reply}");

    proxy.stall();
    let started = Instant::now();
    let (status, reply) = app.post("/v1/streams/boiler/readings", &batch(200, 50)).await;
    let waited = started.elapsed();
    assert_eq!(status, 503, "a commit the database never answered: {reply}");
    assert!(
        waited >= timeout && waited < Duration::from_secs(4),
        "answered after {waited:?}: not the commit timeout of {timeout:?} (the request timeout is 5 s)"
    );
    // While stalled, the stream (reloading from storage) answers nothing but errors.
    let (status, reply) = app.post("/v1/streams/boiler/readings", &batch(200, 50)).await;
    assert_ne!(status, 200, "acknowledged while the database was unreachable: {reply}");

    proxy.resume();
    retried_batch_is_stored_once(&app).await;
    app.stop().await;
}

/// A lone reading's network step runs while its commit does, and is applied only once the
/// commit is: single readings refused in an outage leave nothing of themselves in the
/// stream, which, once the database is back and they are retried until stored, judges every
/// reading as a twin stream fed the same readings without an outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lone_readings_refused_in_an_outage_leave_no_step_behind() {
    let Some((url, _)) = fresh_database(Backend::Postgres).await else { return };
    let (proxy, proxied) = Proxy::around(&url).await;
    let app = TestApp::start(&proxied, None).await;
    for stream in ["boiler", "twin"] {
        let (status, reply) = app.post(&format!("/v1/streams/{stream}/readings"), &batch(0, 100)).await;
        assert_eq!(status, 200, "{reply}");
    }
    proxy.cut();
    for i in 100..103 {
        let (status, reply) = app.post("/v1/streams/boiler/readings", &batch(i, 1)).await;
        assert_ne!(status, 200, "acknowledged in an outage: {reply}");
    }
    proxy.restore();
    for i in 100..130 {
        post_until_accepted(&app, "boiler", i, 1).await;
        let (status, reply) = app.post("/v1/streams/twin/readings", &batch(i, 1)).await;
        assert_eq!(status, 200, "{reply}");
    }
    let (_, boiler) = app.get("/v1/streams/boiler/readings?limit=1000").await;
    let (_, twin) = app.get("/v1/streams/twin/readings?limit=1000").await;
    let (boiler, twin) =
        (boiler["readings"].as_array().expect("readings"), twin["readings"].as_array().expect("readings"));
    assert_eq!((boiler.len(), twin.len()), (130, 130));
    for (i, (a, b)) in boiler.iter().zip(twin).enumerate() {
        crate::service::assert_judged_alike(a, b, &format!("reading {i}, after an outage and without"));
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_beyond_the_admission_limit_is_refused_before_its_body_is_read() {
    use tokio::io::AsyncWriteExt;
    let Some(app) = crate::app::spawn_app_with(Backend::Sqlite, None, |s| s.max_ingest_requests = 1).await else {
        return;
    };
    // A slow client: headers and half its body sent, so it holds the only permit.
    let body = serde_json::to_vec(&batch(0, 20)).expect("json");
    let mut slow = TcpStream::connect(app.addr).await.expect("connect");
    let head = format!(
        "POST /v1/streams/slow/readings HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    slow.write_all(head.as_bytes()).await.expect("write head");
    slow.write_all(&body[..body.len() / 2]).await.expect("write half");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = app.client.get(app.url("/metrics")).send().await.expect("metrics").text().await.expect("text");
        if text.lines().any(|l| l == "tsad_ingest_permits_available 0") {
            break; // the slow request holds the only permit
        }
        assert!(Instant::now() < deadline, "the slow request was never admitted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let response = app.client.post(app.url("/v1/streams/fast/readings")).json(&batch(0, 5)).send().await.expect("sent");
    assert_eq!(response.status().as_u16(), 429);
    assert!(response.headers().contains_key("retry-after"));
    // Reads are not ingest: still served.
    assert_eq!(app.get("/v1/streams").await.0, 200);

    // The slow client finishes: it is answered, and the permit comes back.
    slow.write_all(&body[body.len() / 2..]).await.expect("write rest");
    let mut answer = vec![0u8; 4096];
    let n = tokio::io::AsyncReadExt::read(&mut slow, &mut answer).await.expect("read");
    assert!(
        String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer[..n])
    );
    let (status, reply) = app.post("/v1/streams/fast/readings", &batch(0, 5)).await;
    assert_eq!(status, 200, "{reply}");
    let (_, fast) = app.get("/v1/streams/fast").await;
    assert_eq!(fast["readings"], 5, "the refused request stored nothing: {fast}");
    app.stop().await;
}
