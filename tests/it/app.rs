//! `spawn_app()`: a real `tsad serve` on port 0 with a fresh database — a SQLite file in a
//! temp directory, or a new PostgreSQL database on the server `TSAD_TEST_DATABASE_URL`
//! names. Without that variable the PostgreSQL tests say so and skip, unless
//! `TSAD_REQUIRE_POSTGRES=1` (scripts/test.sh and CI), where its absence fails them.
use std::net::SocketAddr;
use std::path::PathBuf;

use serde_json::Value;
use tokio::sync::oneshot;
use tsad::app::Application;
use tsad::config::{parse_api_keys, Settings};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A running service and what is needed to restart it on the same database.
pub struct TestApp {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    pub database_url: String,
    pub keys: Option<String>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: Option<std::sync::Arc<tempfile::TempDir>>,
}

/// The shipped models, or `TSAD_TEST_MODELS_DIR` when set.
pub fn models_dir() -> PathBuf {
    std::env::var_os("TSAD_TEST_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models"))
}

/// The PostgreSQL server `TSAD_TEST_DATABASE_URL` names, or `None` (after saying so) when it
/// is not set; its absence fails the test under `TSAD_REQUIRE_POSTGRES=1`.
pub fn postgres_server() -> Option<String> {
    let Ok(server) = std::env::var("TSAD_TEST_DATABASE_URL") else {
        let required = std::env::var("TSAD_REQUIRE_POSTGRES").is_ok_and(|v| v == "1");
        assert!(!required, "TSAD_REQUIRE_POSTGRES=1 but TSAD_TEST_DATABASE_URL is not set");
        eprintln!("SKIPPED: PostgreSQL test: TSAD_TEST_DATABASE_URL is not set");
        return None;
    };
    Some(server)
}

/// A fresh database URL for `backend`, or `None` (after saying so) when PostgreSQL is absent.
pub async fn fresh_database(backend: Backend) -> Option<(String, Option<std::sync::Arc<tempfile::TempDir>>)> {
    match backend {
        Backend::Sqlite => {
            let dir = std::sync::Arc::new(tempfile::tempdir().expect("temp dir"));
            let url = format!("sqlite://{}", dir.path().join("tsad.db").display());
            Some((url, Some(dir)))
        }
        Backend::Postgres => {
            let server = postgres_server()?;
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&server).await.expect("PostgreSQL reachable");
            // Only a server on this machine: process ids are this machine's.
            let local = reqwest::Url::parse(&server)
                .is_ok_and(|u| matches!(u.host_str(), None | Some("127.0.0.1" | "localhost" | "[::1]")));
            if local {
                drop_stale_databases(&mut conn).await;
            }
            let name = format!("tsad_test_{}", std::process::id()) + &format!("_{}", rand::random::<u64>());
            sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.expect("create database");
            let base = server.rsplit_once('/').map_or(server.as_str(), |(base, _)| base).to_string();
            Some((format!("{base}/{name}"), None))
        }
    }
}

/// Drops, once a test process, the databases of earlier test processes no longer running on
/// this machine (`tsad_test_<pid>_…`, and `tsad_unit_<pid>_…` of the unit tests): a test leaves its
/// database behind (it cannot know it is the process's last), and each run of the suite
/// made some twenty on the machine's server, none ever dropped.
async fn drop_stale_databases(conn: &mut sqlx::PgConnection) {
    static DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if DONE.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT datname FROM pg_database WHERE datname LIKE 'tsad\\_test\\_%' OR datname LIKE 'tsad\\_unit\\_%'",
    )
    .fetch_all(&mut *conn)
    .await
    .expect("lists databases");
    for name in names {
        let pid = name.split('_').nth(2).and_then(|p| p.parse::<u32>().ok());
        let running = pid.is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
        if pid.is_some() && !running {
            if let Err(e) =
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut *conn).await
            {
                eprintln!("NOTE: a stale test database {name} was not dropped: {e}");
            }
        }
    }
}

impl TestApp {
    /// Starts a service on `database_url` with optional API keys.
    pub async fn start(database_url: &str, keys: Option<&str>) -> TestApp {
        Self::start_with(database_url, keys, |_| {}).await
    }

    /// Like [`TestApp::start`], with `tweak` applied to the settings.
    pub async fn start_with(database_url: &str, keys: Option<&str>, tweak: impl FnOnce(&mut Settings)) -> TestApp {
        // Logs of the service under test: TSAD_LOG=debug cargo test … -- --nocapture
        let filter = std::env::var("TSAD_LOG").unwrap_or_else(|_| "warn".into());
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
        let mut settings = Settings::for_tests(database_url, models_dir());
        if let Some(keys) = keys {
            settings.api_keys = parse_api_keys(keys).expect("valid test keys");
        }
        settings.inference_threads = 1;
        tweak(&mut settings);
        let app = Application::build(settings).await.expect("app builds");
        let addr = app.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until(async move {
            let _ = stopped.await;
        }));
        TestApp {
            addr,
            client: reqwest::Client::new(),
            database_url: database_url.to_string(),
            keys: keys.map(str::to_string),
            stop: Some(stop),
            task: Some(task),
            _dir: None,
        }
    }

    /// Stops the service gracefully and waits for it.
    pub async fn stop(mut self) -> Option<std::sync::Arc<tempfile::TempDir>> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("server ran cleanly");
        }
        self._dir.take()
    }

    /// Keeps `dir` (the SQLite file's directory) alive as long as this app.
    pub fn keep(&mut self, dir: Option<std::sync::Arc<tempfile::TempDir>>) {
        self._dir = dir;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self.client.post(self.url(path)).json(body).send().await.expect("request sent");
        decode(response).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self.client.get(self.url(path)).send().await.expect("request sent");
        decode(response).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self.client.put(self.url(path)).json(body).send().await.expect("request sent");
        decode(response).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        let response = self.client.delete(self.url(path)).send().await.expect("request sent");
        decode(response).await
    }
}

/// Status and JSON body (`Null` when empty or not JSON).
pub async fn decode(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Starts a service on a fresh database of `backend`; `None` if that backend is absent.
pub async fn spawn_app(backend: Backend) -> Option<TestApp> {
    spawn_app_with_keys(backend, None).await
}

pub async fn spawn_app_with_keys(backend: Backend, keys: Option<&str>) -> Option<TestApp> {
    spawn_app_with(backend, keys, |_| {}).await
}

pub async fn spawn_app_with(
    backend: Backend,
    keys: Option<&str>,
    tweak: impl FnOnce(&mut Settings),
) -> Option<TestApp> {
    let (url, dir) = fresh_database(backend).await?;
    let mut app = TestApp::start_with(&url, keys, tweak).await;
    app._dir = dir;
    Some(app)
}

/// Restarts a stopped app's database with a new service.
pub async fn restart(app: TestApp) -> TestApp {
    restart_with(app, |_| {}).await
}

/// Like [`restart`], with `tweak` applied to the new service's settings.
pub async fn restart_with(app: TestApp, tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let url = app.database_url.clone();
    let keys = app.keys.clone();
    let dir = app.stop().await;
    let mut app = TestApp::start_with(&url, keys.as_deref(), tweak).await;
    app._dir = dir;
    app
}
