//! `tsad models` and `tsad jobs`: the admin API from the command line, talking to a running
//! server. Tables for people, `--json` for scripts; HTTP problems are printed as their
//! `detail` and exit 1 (2 for a refused request: 4xx other than 404/409).
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::CliError;

/// Where the server is and how to authenticate.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Base URL of a running `tsad serve`.
    #[arg(long, env = "TSAD_SERVER", default_value = "http://127.0.0.1:8080", global = true)]
    pub(super) server: String,
    /// API key, sent as a bearer token: the admin scope for `models` and `jobs`; `write` (and
    /// `read` for the summaries) for `simulate` and `import`.
    #[arg(long, env = "TSAD_API_KEY", hide_env_values = true, global = true)]
    pub(super) key: Option<String>,
    /// Print the server's JSON instead of a table.
    #[arg(long, global = true)]
    pub(super) json: bool,
}

#[derive(Debug, Args)]
pub struct ModelsArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(subcommand)]
    command: Option<ModelsCommand>,
}

#[derive(Debug, Subcommand)]
enum ModelsCommand {
    /// List models and their versions (the default).
    List,
    /// Make VERSION the active version of MODEL (hot swap; an older version is a rollback).
    Activate { model: String, version: String },
    /// Queue a training job for a new version of MODEL from stored streams.
    Train(TrainArgs),
}

#[derive(Debug, Args)]
struct TrainArgs {
    model: String,
    /// Stream names or glob patterns to learn from (repeat or separate with commas).
    #[arg(long, required = true, value_delimiter = ',')]
    streams: Vec<String>,
    #[arg(long)]
    architecture: Option<String>,
    #[arg(long)]
    hidden: Option<usize>,
    #[arg(long)]
    layers: Option<usize>,
    #[arg(long)]
    window: Option<usize>,
    #[arg(long)]
    epochs: Option<usize>,
    #[arg(long)]
    learning_rate: Option<f64>,
    /// Only readings at or after this RFC 3339 time.
    #[arg(long)]
    from: Option<String>,
    /// Only readings before this RFC 3339 time.
    #[arg(long)]
    to: Option<String>,
    /// Activate the new version when the job succeeds.
    #[arg(long)]
    activate: bool,
    /// Follow the job's progress until it ends.
    #[arg(long)]
    wait: bool,
}

#[derive(Debug, Args)]
pub struct JobsArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(subcommand)]
    command: Option<JobsCommand>,
}

#[derive(Debug, Subcommand)]
enum JobsCommand {
    /// List recent jobs, newest first (the default).
    List,
    /// Show one job.
    Show { id: i64 },
    /// Cancel a queued or running job.
    Cancel { id: i64 },
    /// Follow a job's progress until it ends.
    Watch { id: i64 },
}

struct Client {
    http: reqwest::Client,
    args: ServerArgs,
}

impl Client {
    fn new(args: ServerArgs) -> Client {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("static client config");
        Client { http, args }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value, CliError> {
        let url = format!("{}{path}", self.args.server.trim_end_matches('/'));
        let mut request = self.http.request(method, &url);
        if let Some(key) = &self.args.key {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response =
            request.send().await.with_context(|| format!("cannot reach {}", self.args.server)).map_err(runtime)?;
        let status = response.status();
        let value: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(value);
        }
        let detail = value["detail"].as_str().unwrap_or("no detail").to_string();
        let error = anyhow!("{} {}: {detail}", status.as_u16(), status.canonical_reason().unwrap_or(""));
        Err(if status.is_client_error() && status != 404 && status != 409 {
            CliError::Usage(error)
        } else {
            CliError::Runtime(error)
        })
    }
}

fn runtime(e: anyhow::Error) -> CliError {
    CliError::Runtime(e)
}

fn block_on<F: std::future::Future<Output = Result<(), CliError>>>(future: F) -> Result<(), CliError> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| runtime(e.into()))?.block_on(future)
}

pub fn models(args: ModelsArgs) -> Result<(), CliError> {
    let client = Client::new(args.server);
    block_on(async move {
        match args.command.unwrap_or(ModelsCommand::List) {
            ModelsCommand::List => {
                let models = client.call(reqwest::Method::GET, "/admin/v1/models", None).await?;
                print_or(&client, &models, || models_table(&models));
            }
            ModelsCommand::Activate { model, version } => {
                let path = format!("/admin/v1/models/{model}/versions/{version}/activate");
                let model = client.call(reqwest::Method::POST, &path, None).await?;
                print_or(&client, &model, || models_table(&json!({ "models": [model] })));
            }
            ModelsCommand::Train(train) => {
                let mut body = json!({ "streams": train.streams, "activate": train.activate });
                let optional = [
                    ("architecture", train.architecture.map(Value::from)),
                    ("hidden", train.hidden.map(Value::from)),
                    ("layers", train.layers.map(Value::from)),
                    ("window", train.window.map(Value::from)),
                    ("epochs", train.epochs.map(Value::from)),
                    ("learning_rate", train.learning_rate.map(Value::from)),
                    ("from", train.from.map(Value::from)),
                    ("to", train.to.map(Value::from)),
                ];
                for (name, value) in optional {
                    if let Some(value) = value {
                        body[name] = value;
                    }
                }
                let path = format!("/admin/v1/models/{}/train", train.model);
                let job = client.call(reqwest::Method::POST, &path, Some(body)).await?;
                print_or(&client, &job, || jobs_table(std::slice::from_ref(&job)));
                if train.wait {
                    watch(&client, job["id"].as_i64().unwrap_or(0)).await?;
                }
            }
        }
        Ok(())
    })
}

pub fn jobs(args: JobsArgs) -> Result<(), CliError> {
    let client = Client::new(args.server);
    block_on(async move {
        match args.command.unwrap_or(JobsCommand::List) {
            JobsCommand::List => {
                let jobs = client.call(reqwest::Method::GET, "/admin/v1/jobs", None).await?;
                let list = jobs["jobs"].as_array().cloned().unwrap_or_default();
                print_or(&client, &jobs, || jobs_table(&list));
            }
            JobsCommand::Show { id } => {
                let job = client.call(reqwest::Method::GET, &format!("/admin/v1/jobs/{id}"), None).await?;
                print_or(&client, &job, || jobs_table(std::slice::from_ref(&job)));
                if let Some(error) = job["error"].as_str() {
                    if !client.args.json {
                        println!("error: {error}");
                    }
                }
            }
            JobsCommand::Cancel { id } => {
                let job = client.call(reqwest::Method::DELETE, &format!("/admin/v1/jobs/{id}"), None).await?;
                print_or(&client, &job, || jobs_table(std::slice::from_ref(&job)));
            }
            JobsCommand::Watch { id } => watch(&client, id).await?,
        }
        Ok(())
    })
}

/// Prints a progress line whenever the job's epoch changes; returns when it has ended
/// (an error exit when it did not succeed).
async fn watch(client: &Client, id: i64) -> Result<(), CliError> {
    let mut last_epoch = None;
    loop {
        let job = client.call(reqwest::Method::GET, &format!("/admin/v1/jobs/{id}"), None).await?;
        let progress = &job["progress"];
        let epoch = progress["epoch"].as_u64();
        if epoch.is_some() && epoch != last_epoch && !client.args.json {
            println!(
                "job {id}: epoch {}/{}  train {:.5}  val {:.5}  grad {:.3}  eta {:.0}s",
                progress["epoch"],
                progress["epochs"],
                progress["train_loss"].as_f64().unwrap_or(f64::NAN),
                progress["val_loss"].as_f64().unwrap_or(f64::NAN),
                progress["grad_norm"].as_f64().unwrap_or(f64::NAN),
                progress["eta_s"].as_f64().unwrap_or(f64::NAN),
            );
            last_epoch = epoch;
        }
        match job["status"].as_str() {
            Some("queued" | "running") => tokio::time::sleep(Duration::from_millis(500)).await,
            Some("succeeded") => {
                print_or(client, &job, || println!("job {id} succeeded: {} version {}", job["model"], job["version"]));
                return Ok(());
            }
            status => {
                print_or(client, &job, || ());
                let why = job["error"].as_str().unwrap_or("");
                return Err(runtime(anyhow!("job {id} {}: {why}", status.unwrap_or("vanished"))));
            }
        }
    }
}

fn print_or(client: &Client, value: &Value, table: impl FnOnce()) {
    if client.args.json {
        println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
    } else {
        table();
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.5}"),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

pub(super) fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
}

fn models_table(models: &Value) {
    let mut rows = Vec::new();
    for model in models["models"].as_array().into_iter().flatten() {
        for v in model["versions"].as_array().into_iter().flatten() {
            rows.push(vec![
                text(&model["name"]),
                text(&v["version"]),
                if v["active"] == true { "*".into() } else { String::new() },
                text(&v["architecture"]),
                text(&v["hidden"]),
                text(&v["layers"]),
                text(&v["window"]),
                text(&v["val_loss"]),
                text(&v["created_at"]),
            ]);
        }
    }
    print_table(&["MODEL", "VERSION", "ACTIVE", "ARCH", "HIDDEN", "LAYERS", "WINDOW", "VAL_LOSS", "CREATED"], &rows);
}

fn jobs_table(jobs: &[Value]) {
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            let p = &j["progress"];
            let epoch = if p.is_null() { "-".into() } else { format!("{}/{}", p["epoch"], p["epochs"]) };
            vec![
                text(&j["id"]),
                text(&j["model"]),
                text(&j["status"]),
                epoch,
                text(&p["val_loss"]),
                text(&j["version"]),
                text(&j["created_at"]),
            ]
        })
        .collect();
    print_table(&["ID", "MODEL", "STATUS", "EPOCH", "VAL_LOSS", "VERSION", "CREATED"], &rows);
}
