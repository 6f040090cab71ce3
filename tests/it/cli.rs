//! The `tsad` binary: help, `tsad train`, and one clear error line with exit status 2 for
//! bad flags and bad CSV.
use std::path::Path;
use std::process::{Command, Output};

use tch::Device;
use tsad::model::Network;

use crate::support::noisy_sine;

fn tsad(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tsad")).args(args).output().expect("tsad runs")
}

fn write_csv(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("csv written");
    path.display().to_string()
}

fn sine_csv(dir: &Path, rows: usize) -> String {
    let body: String = noisy_sine(rows, 4).iter().enumerate().map(|(t, v)| format!("{t},{v}\n")).collect();
    write_csv(dir, "sine.csv", &format!("timestamp,value\n{body}"))
}

#[test]
fn bare_tsad_prints_its_help() {
    let out = tsad(&[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("Usage") && text.contains("train"), "{text}");
}

#[test]
fn train_writes_a_loadable_model_and_reports_every_epoch() {
    let dir = tempfile::tempdir().expect("temp dir");
    let csv = sine_csv(dir.path(), 800);
    let out_dir = dir.path().join("models/sine/1");
    let out = tsad(&[
        "train",
        "--csv",
        &csv,
        "--architecture",
        "gru",
        "--hidden",
        "8",
        "--layers",
        "2",
        "--window",
        "20",
        "--epochs",
        "3",
        "--patience",
        "10",
        "--out",
        out_dir.to_str().expect("utf-8 path"),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for epoch in 1..=3 {
        assert!(stdout.contains(&format!("epoch   {epoch}/3")), "{stdout}");
    }
    let (net, card) = Network::load(&out_dir, Device::Cpu).expect("model loads");
    assert_eq!(net.config().layers, 2);
    assert!(card.command.contains("train"));
    let summary = card.training.expect("summary");
    assert_eq!((summary.epochs_run, summary.window), (3, 20));
    assert!(summary.val_rmse.is_some_and(|r| r.is_finite()));
}

#[test]
fn bad_flags_and_bad_csv_give_one_error_line_and_exit_2() {
    let dir = tempfile::tempdir().expect("temp dir");
    let good = sine_csv(dir.path(), 400);
    let out_dir = dir.path().join("out");
    let out = out_dir.to_str().expect("utf-8 path");
    let missing = write_csv(dir.path(), "a.csv", "timestamp,level\n1,2\n");
    let text = write_csv(dir.path(), "b.csv", "value\n1\nabc\n");
    let nan = write_csv(dir.path(), "c.csv", "value\n1\nNaN\n");
    let short = write_csv(dir.path(), "d.csv", "value\n1\n2\n3\n");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["train", "--csv", &missing, "--column", "value", "--out", out], "no column named \"value\""),
        (vec!["train", "--csv", &missing, "--out", out], "--column"),
        (vec!["train", "--csv", &text, "--out", out], "line 3"),
        (vec!["train", "--csv", &nan, "--out", out], "not a finite number"),
        (vec!["train", "--csv", &short, "--out", out], "too few"),
        (vec!["train", "--csv", "/nonexistent.csv", "--out", out], "/nonexistent.csv"),
        (vec!["train", "--csv", &good, "--architecture", "transformer", "--out", out], "transformer"),
        (vec!["train", "--csv", &good, "--hidden", "0", "--out", out], "hidden"),
        (vec!["train", "--csv", &good, "--hidden", "-3", "--out", out], "-3"),
        (vec!["train", "--csv", &good, "--layers", "0", "--out", out], "layers"),
        (vec!["train", "--csv", &good, "--window", "1", "--out", out], "window"),
        (vec!["train", "--csv", &good, "--epochs", "0", "--out", out], "epochs"),
        (vec!["train", "--csv", &good, "--learning-rate", "NaN", "--out", out], "learning_rate"),
        (vec!["train", "--csv", &good], "--out"),
        (vec!["train", "--csv", &good, "--out", out, "--bogus"], "--bogus"),
        (vec!["frobnicate"], "frobnicate"),
    ];
    for (args, needle) in cases {
        let result = tsad(&args);
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert_eq!(result.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?} should print one line: {stderr}");
        assert!(stderr.starts_with("error"), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?} should mention {needle}: {stderr}");
        assert!(!out_dir.exists(), "{args:?} wrote a model");
    }
}

#[test]
fn serve_refuses_bad_configuration_with_one_line_and_exit_2() {
    let dir = tempfile::tempdir().expect("temp dir");
    let toml = dir.path().join("tsad.toml");
    std::fs::write(&toml, "max_batch = \"lots\"\n").expect("write");
    let toml = toml.to_str().expect("utf-8 path");
    for (args, needle) in [
        (vec!["serve", "--listen", "0.0.0.0:18080"], "without API keys"),
        (vec!["serve", "--listen", "nowhere"], "listen"),
        (vec!["serve", "--sensitivity", "7"], "sensitivity"),
        (vec!["serve", "--api-keys", "root:0123456789abcdef0"], "scope"),
        (vec!["serve", "--database-url", "mysql://x"], "database_url"),
        (vec!["serve", "--config", toml], "tsad.toml"),
    ] {
        let result = tsad(&args);
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert_eq!(result.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?} should mention {needle}: {stderr}");
    }
}

/// A NAB-layout corpus of two small files (one labelled window with a spike in one of them).
fn tiny_nab(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let data = dir.join("data");
    let mut windows = serde_json::Map::new();
    for (category, file, spike) in [("synthetic", "calm.csv", None), ("synthetic", "spiky.csv", Some(900))] {
        std::fs::create_dir_all(data.join(category)).expect("mkdir");
        let values = noisy_sine(1200, 7);
        let start = chrono::NaiveDate::from_ymd_opt(2026, 1, 1).expect("date").and_hms_opt(0, 0, 0).expect("time");
        let stamp = |i: usize| (start + chrono::Duration::minutes(5 * i as i64)).format("%Y-%m-%d %H:%M:%S");
        let mut text = String::from("timestamp,value\n");
        for (i, v) in values.iter().enumerate() {
            let v = if Some(i) == spike { v + 8.0 } else { *v };
            text.push_str(&format!("{},{v}\n", stamp(i)));
        }
        std::fs::write(data.join(category).join(file), text).expect("write csv");
        let labelled: Vec<serde_json::Value> = spike
            .map(|i| vec![serde_json::json!([stamp(i - 20).to_string(), stamp(i + 20).to_string()])])
            .unwrap_or_default();
        windows.insert(format!("{category}/{file}"), serde_json::Value::Array(labelled));
    }
    let labels = dir.join("windows.json");
    std::fs::write(&labels, serde_json::Value::Object(windows).to_string()).expect("write labels");
    (data, labels)
}

#[test]
fn eval_nab_replays_every_row_writes_nab_results_and_scores_both_detectors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (data, labels) = tiny_nab(dir.path());
    let out = dir.path().join("out");
    let args = ["eval", "nab", "--data", data.to_str().expect("utf-8"), "--labels", labels.to_str().expect("utf-8")];
    let run = tsad(&[&args[..], &["--out", out.to_str().expect("utf-8"), "--fit-jobs", "1"]].concat());
    let (stdout, stderr) = (String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    assert!(run.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("tsad") && stdout.contains("windowedGaussian") && stdout.contains("standard"), "{stdout}");
    for detector in ["tsad", "windowedGaussian"] {
        let csv = std::fs::read_to_string(out.join(detector).join("synthetic").join(format!("{detector}_spiky.csv")))
            .expect("results written");
        let rows: Vec<&str> = csv.lines().skip(1).collect();
        assert_eq!(rows.len(), 1200, "one row per input row");
        assert_eq!(csv.lines().next(), Some("timestamp,value,anomaly_score,label"));
        let scores: Vec<f64> =
            rows.iter().map(|r| r.split(',').nth(2).expect("score").parse().expect("number")).collect();
        assert!(scores.iter().all(|s| (0.0..=1.0).contains(s)), "scores in [0, 1]");
        assert_eq!(rows.iter().filter(|r| r.ends_with(",1")).count(), 41, "the labelled window");
        if detector == "tsad" {
            // The spike stands out of everything after the probationary period.
            let best = scores[180..].iter().cloned().fold(0.0, f64::max);
            assert_eq!(scores[900], best, "{}", scores[900]);
        }
    }
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("scores.json")).expect("scores.json")).expect("json");
    assert_eq!(report["rows"], 2400);
    assert_eq!(report["detectors"]["tsad"].as_array().map(Vec::len), Some(3), "{report}");
    assert!(report["models"]["synthetic/spiky.csv"].as_str().is_some_and(|m| m.starts_with("auto-")), "{report}");
    // Bad input: a missing folder is a usage error.
    let missing = tsad(&["eval", "nab", "--data", "/nonexistent", "--labels", "/nonexistent", "--out", "/tmp/x"]);
    assert_eq!(missing.status.code(), Some(2));
}

/// Writes a one-lead WFDB record `syn` of `seconds` at 360 Hz: a beat a second, every tenth
/// beat after the first 40 s a large, wide, inverted one annotated `V`.
fn synthetic_ecg(dir: &Path, seconds: usize) {
    synthetic_ecg_named(dir, "syn", seconds, 1.0);
}

/// [`synthetic_ecg`] under another name, with every amplitude times `gain`.
fn synthetic_ecg_named(dir: &Path, name: &str, seconds: usize, gain: f64) {
    use tsad::eval::wfdb::{checksum, code_for_symbol, encode_212, encode_annotations, Annotation};
    let n = seconds * 360;
    let mut mv = vec![0.0f64; n];
    let mut annotations = Vec::new();
    for beat in 0..seconds {
        let peak = beat * 360 + 180;
        let ventricular = beat >= 40 && beat % 10 == 0;
        let (height, width) = if ventricular { (-2.5 * gain, 25.0) } else { (gain, 8.0) };
        for (i, v) in mv.iter_mut().enumerate() {
            let d = (i as f64 - peak as f64) / width;
            if d.abs() < 6.0 {
                *v += height * (-0.5 * d * d).exp();
            }
        }
        let symbol = if ventricular { "V" } else { "N" };
        annotations.push(Annotation {
            sample: peak as u64,
            code: code_for_symbol(symbol).expect("standard symbol"),
            symbol: if ventricular { "V" } else { "N" },
            sub: 0,
            chan: 0,
            num: 0,
            aux: None,
        });
    }
    let adu: Vec<i16> = mv.iter().enumerate().map(|(i, v)| (v * 200.0 + (i % 3) as f64) as i16).collect();
    std::fs::write(dir.join(format!("{name}.dat")), encode_212(&adu)).expect("write dat");
    let header = format!("{name} 1 360 {n}\n{name}.dat 212 200 11 0 {} {} 0 MLII\n", adu[0], checksum(&adu));
    std::fs::write(dir.join(format!("{name}.hea")), header).expect("write hea");
    std::fs::write(dir.join(format!("{name}.atr")), encode_annotations(&annotations)).expect("write atr");
}

fn eval_ecg(dir: &Path, unit: &str) -> (String, serde_json::Value, String) {
    let (out, beats) = (dir.join(format!("report-{unit}.json")), dir.join(format!("beats-{unit}.csv")));
    let path = |p: &Path| p.to_str().expect("utf-8").to_string();
    let run = tsad(&[
        "eval",
        "ecg",
        "--mitdb",
        &path(dir),
        "--records",
        "syn",
        "--unit",
        unit,
        "--out",
        &path(&out),
        "--beats-out",
        &path(&beats),
        "--warmup-s",
        "30",
        "--fit-jobs",
        "1",
    ]);
    let (stdout, stderr) = (String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    assert!(run.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("syn") && stdout.contains("mean per-record AUC"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).expect("report")).expect("json");
    let rows = std::fs::read_to_string(&beats).expect("beats");
    assert_eq!(rows.lines().next(), Some("record,sample,symbol,class,score,surprise,flagged,baseline"));
    assert!(rows.lines().skip(1).all(|r| r.starts_with("syn,")));
    (stdout.to_string(), report, rows)
}

#[test]
fn eval_ecg_scores_every_beat_after_the_warmup_and_reports_auc_and_detection() {
    let dir = tempfile::tempdir().expect("temp dir");
    synthetic_ecg(dir.path(), 120);
    // A sample stream: beats whose window lies wholly after the 30 s warm-up, seconds
    // 30..119, 8 of them V.
    let (_, report, rows) = eval_ecg(dir.path(), "samples");
    let syn = &report["records"]["syn"];
    assert_eq!((syn["normal_beats"].as_u64(), syn["abnormal_beats"].as_u64()), (Some(82), Some(8)), "{report}");
    assert_eq!(syn["ventricular"]["beats"], 8);
    let auc = syn["auc"].as_f64().expect("auc");
    assert!((0.0..=1.0).contains(&auc), "{auc}");
    assert!(syn["model"].as_str().is_some_and(|m| m.starts_with("auto-")), "fitted on the warm-up: {report}");
    assert_eq!(rows.lines().count(), 91);
    // A beat stream: every beat after the warm-up with a beat on each side (the last has
    // none): seconds 30..118. Wide inverted beats among narrow ones: the reference detector
    // ranks all of them first; the stream's scorer ranks most of them above the normal beats
    // (measured 0.88: the first come before its history is long enough to score, and an
    // identical beat every ten is a recurring surprise, which the scorer discounts).
    let (_, report, rows) = eval_ecg(dir.path(), "beats");
    let syn = &report["records"]["syn"];
    assert_eq!((syn["normal_beats"].as_u64(), syn["abnormal_beats"].as_u64()), (Some(81), Some(8)), "{report}");
    assert_eq!(syn["baseline_auc"].as_f64(), Some(1.0), "{report}");
    assert!(syn["auc"].as_f64().expect("auc") > 0.8, "{report}");
    assert_eq!(rows.lines().count(), 90);
    // Bad input is a usage error.
    let path = |p: &Path| p.to_str().expect("utf-8").to_string();
    let out = path(&dir.path().join("x.json"));
    let bad = tsad(&["eval", "ecg", "--mitdb", &path(dir.path()), "--records", "../etc", "--out", &out]);
    assert_eq!(bad.status.code(), Some(2));
    let bad = tsad(&["eval", "ecg", "--mitdb", "/nonexistent", "--records", "syn", "--out", &out]);
    assert_eq!(bad.status.code(), Some(2));
    let bad =
        tsad(&["eval", "ecg", "--mitdb", &path(dir.path()), "--records", "syn", "--unit", "minutes", "--out", &out]);
    assert_eq!(bad.status.code(), Some(2));
    for (flag, value) in [("--sensitivity", "1.5"), ("--sensitivity", "NaN"), ("--baseline", "yesterday")] {
        let bad = tsad(&["eval", "ecg", "--mitdb", &path(dir.path()), "--records", "syn", flag, value, "--out", &out]);
        let stderr = String::from_utf8_lossy(&bad.stderr);
        assert_eq!(bad.status.code(), Some(2), "{flag} {value}: {stderr}");
        assert!(stderr.contains(&flag[2..]), "{flag} {value}: {stderr}");
    }
    assert!(!dir.path().join("x.json").exists(), "a refused run writes nothing");
}

#[test]
fn eval_ecg_supervised_trains_on_some_records_and_reports_on_others() {
    let dir = tempfile::tempdir().expect("temp dir");
    synthetic_ecg_named(dir.path(), "syn", 300, 1.0);
    synthetic_ecg_named(dir.path(), "big", 300, 1.6);
    let path = |p: &Path| p.to_str().expect("utf-8").to_string();
    let (out, beats) = (path(&dir.path().join("report.json")), path(&dir.path().join("beats.csv")));
    let mitdb = path(dir.path());
    let args = ["eval", "ecg", "--mitdb", &mitdb, "--warmup-s", "30", "--epochs", "6", "--out", &out];
    let run = tsad(&[&args[..], &["--train-records", "syn", "--test-records", "big", "--beats-out", &beats]].concat());
    let (stdout, stderr) = (String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    assert!(run.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("overall") && stderr.contains("epoch 1"), "{stdout}{stderr}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).expect("report")).expect("json");
    // 298 beats with a neighbour each side, 26 of them V (seconds 40, 50, ..., 290); EC57
    // scores those after the record's 30 s learning period, `strict` all of them.
    let v = &report["overall"]["ventricular"];
    let strict = &report["strict"];
    assert_eq!((strict["beats"].as_u64(), strict["ventricular"]["beats"].as_u64()), (Some(298), Some(26)), "{report}");
    let scored = report["overall"]["beats"].as_u64().expect("beats");
    assert!((260..298).contains(&scored) && v["beats"].as_u64() == Some(26), "{report}");
    // The test record's amplitude differs; the wide inverted beats are still found.
    assert!(v["sensitivity"].as_f64().expect("Se") >= 0.9, "{report}");
    assert!(v["positive_predictivity"].as_f64().expect("+P") >= 0.9, "{report}");
    assert_eq!(std::fs::read_to_string(&beats).expect("beats").lines().count(), 299);
    // By default each training V beat is redrawn the four ways.
    assert_eq!(report["augment"].as_u64(), Some(4), "{report}");
    // A record in both lists, or a list without its pair, is a usage error.
    let both = tsad(&[&args[..], &["--train-records", "syn", "--test-records", "syn"]].concat());
    assert_eq!(both.status.code(), Some(2), "{}", String::from_utf8_lossy(&both.stderr));
    let alone = tsad(&[&args[..], &["--train-records", "syn"]].concat());
    assert_eq!(alone.status.code(), Some(2));
    let mixed = tsad(&[&args[..], &["--records", "syn", "--train-records", "syn", "--test-records", "big"]].concat());
    assert_eq!(mixed.status.code(), Some(2));
    // No GRU at all, an absurd number of boosting rounds, redrawings or training budget is
    // refused before any work.
    for bad in [["--seeds", "0"], ["--tree-rounds", "1000000"], ["--augment", "5"], ["--training-seconds", "0"]] {
        let run = tsad(&[&args[..], &["--train-records", "syn", "--test-records", "big"], &bad[..]].concat());
        assert_eq!(run.status.code(), Some(2), "{bad:?}: {}", String::from_utf8_lossy(&run.stderr));
        assert!(String::from_utf8_lossy(&run.stderr).contains("--seeds"), "{bad:?}");
    }
}

/// `tsad serve` at its most verbose, driven with valid and invalid keys: no key, nor any
/// part of one, reaches the log.
#[test]
fn api_keys_never_reach_the_log_even_at_trace_level() {
    use std::io::{BufRead, BufReader, Read, Write};
    let dir = tempfile::tempdir().expect("temp dir");
    let admin = "admin-key-0123456789abcdef";
    let write = "write-key-0123456789abcdef";
    let wrong = "wrong-key-0123456789abcdef";
    let database = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
    let mut child = Command::new(env!("CARGO_BIN_EXE_tsad"))
        .args(["serve", "--listen", "127.0.0.1:0", "--database-url", &database])
        .args(["--api-keys", &format!("admin:{admin},write:{write}")])
        .env("TSAD_LOG", "trace")
        .env("TSAD_AUTO_TRAIN_JOBS", "0")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("tsad serve starts");
    // The log goes to stdout or stderr; read both, find the bound address.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    for pipe in [
        Box::new(child.stdout.take().expect("stdout")) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().expect("stderr")),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    drop(tx);
    let mut log = Vec::new();
    let addr = loop {
        let line = rx.recv_timeout(std::time::Duration::from_secs(60)).expect("tsad logs that it is serving");
        log.push(line.clone());
        if line.contains("tsad serving") {
            let at = line.find("addr=").expect("addr field") + 5;
            break line[at..].split_whitespace().next().expect("address").trim_matches('"').to_string();
        }
    };
    let request = |method: &str, path: &str, key: &str, body: &str| {
        let mut s = std::net::TcpStream::connect(&addr).expect("connect");
        let text = format!(
            "{method} {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\nx-api-key: {key}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(text.as_bytes()).expect("send");
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        answer
    };
    let body = r#"{"readings":[{"ts":1767225600000,"value":1.5}]}"#;
    assert!(request("POST", "/v1/streams/k/readings", write, body).starts_with("HTTP/1.1 200"));
    assert!(request("POST", "/v1/streams/k/readings", wrong, body).starts_with("HTTP/1.1 401"));
    assert!(request("GET", "/admin/v1/models", write, "").starts_with("HTTP/1.1 403"));
    assert!(request("GET", "/admin/v1/jobs", admin, "").starts_with("HTTP/1.1 200"));
    // Until the last request's log line is out, then everything left once the pipes close.
    while !log.iter().any(|l| l.contains("/admin/v1/jobs")) {
        match rx.recv_timeout(std::time::Duration::from_secs(30)) {
            Ok(line) => log.push(line),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    log.extend(rx.iter());
    let text = log.join("\n");
    assert!(text.contains("/admin/v1/jobs"), "the requests were logged at trace level:\n{text}");
    for secret in [admin, write, wrong, "0123456789abcdef"] {
        assert!(!text.contains(secret), "a key reached the log:\n{text}");
    }
}

/// Runs `tsad` off the test's runtime, which serves the in-process server meanwhile.
async fn tsad_beside_server(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_tsad")).args(&args).output().expect("tsad runs")
    })
    .await
    .expect("tsad finished")
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

async fn stored_readings(app: &crate::app::TestApp, stream: &str) -> u64 {
    let (status, body) = app.get(&format!("/v1/streams/{stream}")).await;
    assert_eq!(status, 200, "{stream}: {body}");
    body["readings"].as_u64().expect("a count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_fills_every_stream_retrying_refusals_and_the_server_flags_an_injected_spike() {
    // One ingest request at a time: the streams' concurrent posts are refused (429) and retried.
    let app = crate::app::spawn_app_with(crate::app::Backend::Sqlite, None, |s| s.max_ingest_requests = 1)
        .await
        .expect("SQLite is always there");
    let args = strings(&[
        "simulate",
        "--server",
        &app.url(""),
        "--streams",
        "3",
        "--readings",
        "600",
        "--seed",
        "3",
        "--prefix",
        "sim-",
        "--batch",
        "250",
        "--start",
        "2026-01-01T00:00:00Z",
        "--json",
    ]);
    let run = tsad_beside_server(args.clone()).await;
    let stdout = String::from_utf8_lossy(&run.stdout).to_string();
    assert!(run.status.success(), "{stdout}{}", String::from_utf8_lossy(&run.stderr));
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON summary");
    let streams = report["streams"].as_array().expect("streams");
    let names: Vec<&str> = streams.iter().filter_map(|s| s["stream"].as_str()).collect();
    assert_eq!(names, ["sim-sensor-1", "sim-sensor-2", "sim-ecg-1"], "one in five is ECG, at least one");
    for name in &names {
        assert_eq!(stored_readings(&app, name).await, 600, "{name}");
    }
    let first = app.get("/v1/streams/sim-sensor-1/readings?limit=2").await.1;
    assert_eq!(first["readings"][0]["ts"], "2026-01-01T00:00:00Z");
    assert_eq!(first["readings"][1]["ts"], "2026-01-01T00:01:00Z", "one a minute by default");
    // Every sensor stream had a spike injected after its warm-up; the server caught one at least,
    // and the event the summary names is the server's.
    let mut caught = 0;
    for stream in streams.iter().filter(|s| s["kind"] == "sensor") {
        let injected = stream["injected"].as_array().expect("injected");
        assert!(injected.iter().any(|a| a["kind"] == "spike"), "{stream}");
        for spike in injected.iter().filter(|a| a["kind"] == "spike" && a["flagged"] == true) {
            let name = stream["stream"].as_str().expect("name");
            let events = app.get(&format!("/v1/streams/{name}/anomalies")).await.1;
            let ids: Vec<&serde_json::Value> =
                events["anomalies"].as_array().expect("events").iter().map(|e| &e["id"]).collect();
            assert!(ids.contains(&&spike["events"][0]), "{spike} among {events}");
            caught += 1;
        }
    }
    assert!(caught >= 1, "no injected spike was flagged: {report}");
    let metrics = app.client.get(app.url("/metrics")).send().await.expect("metrics").text().await.expect("text");
    assert!(metrics.lines().any(|l| l.contains("status=\"429\"")), "no request was refused: {metrics}");
    // The same start and seed again: the same readings, answered from storage.
    let again = tsad_beside_server(args).await;
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    for name in &names {
        assert_eq!(stored_readings(&app, name).await, 600, "{name} after a repeated run");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_posts_a_csv_with_or_without_timestamps_and_a_rerun_changes_nothing() {
    let app = crate::app::spawn_app(crate::app::Backend::Sqlite).await.expect("SQLite is always there");
    let dir = tempfile::tempdir().expect("temp dir");
    let values = noisy_sine(300, 5);
    let start = chrono::NaiveDate::from_ymd_opt(2026, 1, 1).expect("date").and_hms_opt(0, 0, 0).expect("time");
    let rows: String = values
        .iter()
        .enumerate()
        .map(|(i, v)| format!("{},{v}\n", (start + chrono::Duration::minutes(i as i64)).format("%Y-%m-%d %H:%M:%S")))
        .collect();
    let with_ts = write_csv(dir.path(), "with.csv", &format!("timestamp,value\n{rows}"));
    let rows: String = values[..250].iter().map(|v| format!("{v}\n")).collect();
    let without_ts = write_csv(dir.path(), "without.csv", &format!("level\n{rows}"));
    let import = |file: &str, stream: &str| {
        strings(&["import", file, "--server", &app.url(""), "--stream", stream, "--batch", "100"])
    };
    for round in 0..2 {
        let run = tsad_beside_server(import(&with_ts, "imp-ts")).await;
        let stdout = String::from_utf8_lossy(&run.stdout);
        assert!(run.status.success(), "round {round}: {stdout}{}", String::from_utf8_lossy(&run.stderr));
        assert!(stdout.contains("300 readings"), "{stdout}");
        assert_eq!(stored_readings(&app, "imp-ts").await, 300, "round {round}");
        let page = app.get("/v1/streams/imp-ts/readings?limit=2").await.1;
        assert_eq!(page["readings"][0]["ts"], "2026-01-01T00:00:00Z");
        assert_eq!(page["readings"][1]["value"].as_f64(), Some(values[1]));

        let run = tsad_beside_server(import(&without_ts, "imp-plain")).await;
        assert!(run.status.success(), "round {round}: {}", String::from_utf8_lossy(&run.stderr));
        assert_eq!(stored_readings(&app, "imp-plain").await, 250, "round {round}");
        let page = app.get("/v1/streams/imp-plain/readings?limit=2").await.1;
        let ts = |i: usize| {
            chrono::DateTime::parse_from_rfc3339(page["readings"][i]["ts"].as_str().expect("ts")).expect("rfc 3339")
        };
        assert_eq!((ts(1) - ts(0)).num_milliseconds(), 1000, "one second apart");
        let last = app.get("/v1/streams/imp-plain").await.1["last_ts"].as_str().expect("last").to_string();
        let age =
            tsad::storage::now_ms() - chrono::DateTime::parse_from_rfc3339(&last).expect("rfc 3339").timestamp_millis();
        assert!((0..600_000).contains(&age), "ending about now: {last}");
    }
    app.stop().await;
}

#[test]
fn import_refuses_bad_files_with_one_line_naming_the_problem_and_exit_2() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = write_csv(dir.path(), "a.csv", "timestamp,level\n1767225600,2\n");
    let text = write_csv(dir.path(), "b.csv", "timestamp,value\n1767225600,1\n1767225601,abc\n");
    let bad_ts = write_csv(dir.path(), "c.csv", "timestamp,value\n1767225600,1\n1767225601,2\nnoon,3\n");
    let backwards = write_csv(dir.path(), "d.csv", "timestamp,value\n2026-01-01 00:00:05,1\n2026-01-01 00:00:05,2\n");
    let good = write_csv(dir.path(), "e.csv", "value\n1\n2\n");
    // Nothing listens there: every case must be refused before the server is asked.
    let server = "http://127.0.0.1:9";
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec![&missing, "--column", "value"], "no column named \"value\""),
        (vec![&missing, "--ts-column", "time"], "no column named \"time\""),
        (vec![&text, "--stream", "s"], "line 3"),
        (vec![&bad_ts], "line 4, column \"timestamp\": \"noon\" is not a timestamp"),
        (vec![&backwards], "line 3"),
        (vec!["/nonexistent.csv"], "/nonexistent.csv"),
        (vec![&good, "--stream", "no spaces"], "stream names"),
        (vec![&good, "--batch", "0"], "--batch"),
    ];
    for (args, needle) in cases {
        let mut full = vec!["import", "--server", server];
        if !args.contains(&"--stream") {
            full.extend(["--stream", "s"]);
        }
        full.extend(args);
        let result = tsad(&full);
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert_eq!(result.status.code(), Some(2), "{full:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{full:?} should print one line: {stderr}");
        assert!(stderr.starts_with("error"), "{full:?}: {stderr}");
        assert!(stderr.contains(needle), "{full:?} should mention {needle}: {stderr}");
    }
}

#[test]
fn bench_http_posts_each_streams_readings_together_and_refuses_a_shape_that_does_not_divide() {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("http.json");
    let json_arg = json.to_str().expect("utf-8");
    let common = ["bench", "http", "--streams", "6", "--batch", "20", "--clients", "2", "--throughput-only"];
    let run = tsad(&[&common[..], &["--per-stream", "10", "--seconds", "0.5", "--json", json_arg]].concat());
    let (stdout, stderr) = (String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    assert!(run.status.success(), "{stdout}{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).expect("json written")).expect("json");
    let row = &report["results"][0];
    // Two streams a request (20 readings, 10 of each); every client owns 3 streams.
    assert_eq!(
        (row["readings_per_request"].as_u64(), row["readings_per_stream_per_request"].as_u64()),
        (Some(20), Some(10))
    );
    assert!(row["readings_per_s"].as_f64().is_some_and(|r| r > 0.0), "{report}");
    let bad = tsad(&[&common[..], &["--per-stream", "3"]].concat());
    assert_eq!(bad.status.code(), Some(2), "{}", String::from_utf8_lossy(&bad.stderr));
}

/// `bench scoring` judges a stream with each baseline and reports nanoseconds a reading and
/// the readings flagged: its 8σ-and-more spikes (one every 997 readings) are flagged past the
/// warm-up, so the judging timed is the real one. No readings is a usage error.
#[test]
fn bench_scoring_times_each_baseline_on_a_stream_whose_spikes_it_flags() {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("scoring.json");
    let run = tsad(&["bench", "scoring", "--readings", "20000", "--json", json.to_str().expect("utf-8")]);
    let (stdout, stderr) = (String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    assert!(run.status.success(), "{stdout}{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).expect("json written")).expect("json");
    let rows = report["scoring"].as_array().expect("rows");
    let baselines: Vec<&str> = rows.iter().filter_map(|r| r["baseline"].as_str()).collect();
    assert_eq!(baselines, ["forecast", "warmup", "history"], "{report}");
    for row in rows {
        assert!(row["ns_per_reading"].as_f64().is_some_and(|ns| ns > 0.0), "{report}");
        assert_eq!(row["readings"].as_u64(), Some(20_000), "{report}");
    }
    // 20 spikes, 19 of them after the warm-up of 200 readings. The warm-up baseline also
    // flags what its 200 readings never saw (most of the daily sine, the shift).
    assert!(rows[0]["flagged"].as_u64().is_some_and(|f| (19..=60).contains(&f)), "{report}");
    assert!(rows[1]["flagged"].as_u64().is_some_and(|f| f >= 19), "{report}");
    let none = tsad(&["bench", "scoring", "--readings", "0"]);
    assert_eq!(none.status.code(), Some(2), "{}", String::from_utf8_lossy(&none.stderr));
}

/// Without `--throughput-only`, `bench http` also measures the latency phases: the same load
/// at half the rate reached, single readings, and requests of the measured shape one at a
/// time, each a row of the report, the paced ones with the server's own means.
#[test]
fn bench_http_measures_half_rate_single_readings_and_one_request_at_a_time() {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("http.json");
    let args = ["bench", "http", "--streams", "4", "--batch", "20", "--per-stream", "10", "--clients", "2"];
    let run = tsad(&[&args[..], &["--seconds", "0.5", "--json", json.to_str().expect("utf-8")]].concat());
    let (stdout, stderr) = (String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    assert!(run.status.success(), "{stdout}{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).expect("json written")).expect("json");
    let rows = report["results"].as_array().expect("rows");
    let loads: Vec<&str> = rows.iter().filter_map(|r| r["load"].as_str()).collect();
    assert_eq!(loads, ["max", "half of max", "single reading", "one at a time"], "{report}");
    let alone = &rows[3];
    assert_eq!(alone["readings_per_request"].as_u64(), Some(20), "{report}");
    // Every 10 ms for half a second: at most about fifty requests, each answered. Fewer
    // only when the server was slower than the pace (a disk stalled by a build beside it
    // once made each request take ~230 ms): then its latencies say so.
    let requests = alone["requests"].as_u64().expect("requests counted");
    let p50 = alone["p50_ms"].as_f64().expect("p50 measured");
    assert!((1..=60).contains(&requests), "{report}");
    assert!(p50 > 0.0, "{report}");
    assert!(requests >= 10 || p50 > 10.0, "fewer requests than the pace allows, yet each answered fast: {report}");
    assert!(alone["server_means"]["commit_latency_seconds"].as_f64().is_some_and(|c| c > 0.0), "{report}");
    assert!(stdout.contains("one at a time"), "{stdout}");
}

/// `bench http` on PostgreSQL measures in a scratch database of its own on the server and
/// drops it afterwards: the report says PostgreSQL, no scratch database is left, and the
/// database the URL names has not a reading more.
#[tokio::test]
async fn bench_http_on_postgres_measures_in_a_scratch_database_it_drops() {
    use sqlx::Connection;
    let Some(server) = crate::app::postgres_server() else { return };
    // The scratch databases on the server, and the readings in the database the URL names
    // (which the bench must leave alone).
    let scratch = || async {
        let mut conn = sqlx::PgConnection::connect(&server).await.expect("PostgreSQL reachable");
        let names: Vec<String> =
            sqlx::query_scalar("SELECT datname::TEXT FROM pg_database WHERE datname LIKE 'tsad_bench_%'")
                .fetch_all(&mut conn)
                .await
                .expect("list databases");
        let table: bool = sqlx::query_scalar("SELECT to_regclass('public.readings') IS NOT NULL")
            .fetch_one(&mut conn)
            .await
            .expect("look the table up");
        let readings: Option<i64> = match table {
            true => {
                Some(sqlx::query_scalar("SELECT count(*) FROM readings").fetch_one(&mut conn).await.expect("count"))
            }
            false => None,
        };
        (names, readings)
    };
    let before = scratch().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("http.json");
    let args = ["bench", "http", "--streams", "4", "--batch", "8", "--clients", "2", "--throughput-only"];
    let extra = ["--seconds", "0.5", "--database-url", &server, "--json", json.to_str().expect("utf-8")];
    let run = tsad(&[&args[..], &extra[..]].concat());
    let (stdout, stderr) = (String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    assert!(run.status.success(), "{stdout}{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).expect("json written")).expect("json");
    assert_eq!(report["results"][0]["database"], "postgres", "{report}");
    assert!(report["results"][0]["readings_per_s"].as_f64().is_some_and(|r| r > 0.0), "{report}");
    assert_eq!(scratch().await, before, "the scratch database dropped, the named one untouched: {stderr}");
}

/// `bench http --server` drives a service already running, posting with the API key given:
/// the report names the running service, and the readings are stored on it, in the streams
/// the run created. Without the key it is refused and fails; a URL that is not `http://`, or
/// `--server` beside `--database-url`, is a usage error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_http_drives_a_service_already_running() {
    const KEYS: &str = "read:read-key-0123456789,write:write-key-0123456789";
    let app = crate::app::spawn_app_with_keys(crate::app::Backend::Sqlite, Some(KEYS)).await.expect("SQLite");
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("http.json");
    let server = app.url("");
    let args = ["bench", "http", "--server", &server, "--streams", "4", "--batch", "20", "--per-stream", "10"];
    let extra = ["--clients", "2", "--seconds", "0.5", "--throughput-only", "--json", json.to_str().expect("utf-8")];
    let run = tsad_beside_server(strings(&[&args[..], &extra[..], &["--key", "write-key-0123456789"]].concat())).await;
    let (stdout, stderr) = (String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    assert!(run.status.success(), "{stdout}{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).expect("json written")).expect("json");
    let row = &report["results"][0];
    assert_eq!(row["database"], "running service", "{report}");
    let measured = row["readings_per_s"].as_f64().expect("a rate");
    assert!(measured > 0.0, "{report}");
    // The four streams, each with the untimed round's one reading and the timed phase's ten a
    // request.
    let listed = app
        .client
        .get(app.url("/v1/streams"))
        .bearer_auth("read-key-0123456789")
        .send()
        .await
        .expect("list")
        .json::<serde_json::Value>()
        .await
        .expect("json");
    let streams = listed["streams"].as_array().expect("streams");
    let bench: Vec<&serde_json::Value> =
        streams.iter().filter(|s| s["name"].as_str().is_some_and(|n| n.starts_with("bench-"))).collect();
    assert_eq!(bench.len(), 4, "{listed}");
    for stream in &bench {
        let readings = stream["readings"].as_u64().expect("a count");
        assert!(readings > 1 && (readings - 1) % 10 == 0, "{stream}");
    }
    let refused = tsad_beside_server(strings(&[&args[..], &extra[..]].concat())).await;
    assert_eq!(refused.status.code(), Some(1), "{}", String::from_utf8_lossy(&refused.stdout));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("401"), "{}", String::from_utf8_lossy(&refused.stderr));
    for bad in [vec!["--server", "ftp://127.0.0.1:1"], vec!["--server", &server, "--database-url", "sqlite://x.db"]] {
        let run = tsad_beside_server(strings(&[&["bench", "http"][..], &bad[..]].concat())).await;
        assert_eq!(run.status.code(), Some(2), "{bad:?}: {}", String::from_utf8_lossy(&run.stderr));
    }
    app.stop().await;
}

/// `bench http --keep-database` leaves its scratch SQLite file and names it; `bench reads`
/// reads pages of it back, twice, each page at most `--limit` readings of one stream. A
/// database without streams long enough is an error that says so; no queries, a usage
/// error.
#[test]
fn bench_reads_reads_back_pages_of_the_database_bench_http_kept() {
    let dir = tempfile::tempdir().expect("temp dir");
    let args = ["bench", "http", "--streams", "4", "--batch", "20", "--per-stream", "10", "--clients", "2"];
    let fill = tsad(&[&args[..], &["--seconds", "0.5", "--throughput-only", "--keep-database"]].concat());
    let stdout = String::from_utf8_lossy(&fill.stdout);
    assert!(fill.status.success(), "{stdout}{}", String::from_utf8_lossy(&fill.stderr));
    let url = stdout
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("kept").map(|rest| rest.trim().to_string()))
        .expect("the kept database named");
    let file = std::path::PathBuf::from(url.strip_prefix("sqlite://").expect("a SQLite URL"));
    assert!(file.is_file(), "{url}");
    let _kept = KeptDir(file.parent().expect("its directory").to_path_buf());

    let json = dir.path().join("reads.json");
    let read = ["bench", "reads", "--database-url", &url, "--queries", "20", "--limit", "5"];
    let run = tsad(&[&read[..], &["--json", json.to_str().expect("utf-8")]].concat());
    let (stdout, stderr) = (String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    assert!(run.status.success(), "{stdout}{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).expect("json written")).expect("json");
    assert_eq!(report["pages"], 20, "{report}");
    let rows = report["results"].as_array().expect("rows");
    let passes: Vec<&str> = rows.iter().filter_map(|r| r["pass"].as_str()).collect();
    assert_eq!(passes, ["first", "again"], "{report}");
    for row in rows {
        assert_eq!(row["requests"], 20, "{report}");
        assert!(row["readings_per_page"].as_f64().is_some_and(|n| n > 0.0 && n <= 5.0), "{report}");
        assert!(row["p50_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{report}");
        assert!(row["server_mean_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{report}");
    }

    let empty = format!("sqlite://{}", dir.path().join("empty.db").display());
    let none = tsad(&["bench", "reads", "--database-url", &empty, "--queries", "5"]);
    let stderr = String::from_utf8_lossy(&none.stderr);
    assert_eq!(none.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no stream with more than 1000 readings"), "{stderr}");
    let zero = tsad(&["bench", "reads", "--database-url", &url, "--queries", "0"]);
    assert_eq!(zero.status.code(), Some(2), "{}", String::from_utf8_lossy(&zero.stderr));
}

/// Removes a directory `--keep-database` left when the test ends, passed or failed.
struct KeptDir(std::path::PathBuf);

impl Drop for KeptDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
