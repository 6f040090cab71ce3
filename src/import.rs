//! Reading series from files. Every failure names the file, the line and the column, so
//! the CLI can print it as one line.
use std::path::Path;

use chrono::{DateTime, NaiveDate, NaiveDateTime};

/// Why a CSV file cannot be used as a series.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{path}: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("{path}: no column named {column:?} (columns: {available})")]
    MissingColumn { path: String, column: String, available: String },
    #[error("{path}: several columns ({available}); choose one with --column")]
    AmbiguousColumn { path: String, available: String },
    #[error("{path}: line {line}, column {column:?}: {value:?} is not a finite number")]
    NotANumber { path: String, line: u64, column: String, value: String },
    #[error("{path}: no data rows")]
    Empty { path: String },
    #[error(
        "{path}: line {line}, column {column:?}: {value:?} is not a timestamp (Unix seconds or \
         milliseconds, RFC 3339 or YYYY-MM-DD HH:MM:SS, 1970-9999)"
    )]
    BadTimestamp { path: String, line: u64, column: String, value: String },
    #[error(
        "{path}: line {line}, column {column:?}: timestamp {value:?} is not after the previous row's {previous:?}"
    )]
    NotIncreasing { path: String, line: u64, column: String, value: String, previous: String },
}

/// A series read from a CSV file: values and, when the file has a timestamp column, their
/// times (Unix milliseconds, strictly increasing).
#[derive(Debug, Clone, PartialEq)]
pub struct CsvSeries {
    /// The value column's name.
    pub column: String,
    pub values: Vec<f64>,
    /// The timestamp column's name and one time per value; `None` without such a column.
    pub timestamps: Option<(String, Vec<i64>)>,
}

/// The largest timestamp accepted, 9999-12-31T23:59:59.999Z, as the API's.
const MAX_TS_MS: i64 = 253_402_300_799_999;

/// Numbers below this (in magnitude) are Unix seconds, above it milliseconds: 10^11 s is
/// the year 5138, 10^11 ms is March 1973.
const SECONDS_BELOW: f64 = 1e11;

/// Reads one numeric column of a CSV file with a header row.
///
/// `column` picks the column by name; without it, the only column, or else the column
/// named `value` (NAB's layout: `timestamp,value`), is used.
pub fn read_csv_column(path: &Path, column: Option<&str>) -> Result<Vec<f64>, ImportError> {
    read_csv(path, column, None, false).map(|series| series.values)
}

/// Reads a value column and, if there is one, a timestamp column of a CSV file with a header
/// row.
///
/// `ts_column` names the timestamp column; without it the column named `timestamp` is used
/// when there is one. `column` names the value column; without it, the only column other
/// than the timestamps, or else the one named `value`. Timestamps are numbers — Unix
/// seconds, or milliseconds when the first number is 10^11 or more (the whole file then
/// uses that unit) — or text: RFC 3339, or `YYYY-MM-DD HH:MM:SS[.fff]`, `YYYY-MM-DDTHH:MM:SS`
/// and `YYYY-MM-DD` read as UTC. They must increase from row to row.
pub fn read_csv_series(path: &Path, column: Option<&str>, ts_column: Option<&str>) -> Result<CsvSeries, ImportError> {
    read_csv(path, column, ts_column, true)
}

/// [`read_csv_series`]; with `with_timestamps` false no column is read as timestamps (the
/// value column is then the only column, or else the one named `value`).
fn read_csv(
    path: &Path,
    column: Option<&str>,
    ts_column: Option<&str>,
    with_timestamps: bool,
) -> Result<CsvSeries, ImportError> {
    let shown = path.display().to_string();
    let unreadable = |e: &dyn std::fmt::Display| ImportError::Unreadable { path: shown.clone(), reason: e.to_string() };
    let mut reader =
        csv::ReaderBuilder::new().has_headers(true).trim(csv::Trim::All).from_path(path).map_err(|e| unreadable(&e))?;
    let headers = reader.headers().map_err(|e| unreadable(&e))?.clone();
    let names: Vec<&str> = headers.iter().collect();
    let available = names.join(", ");
    let find = |name: &str| {
        names.iter().position(|n| *n == name).ok_or_else(|| ImportError::MissingColumn {
            path: shown.clone(),
            column: name.to_string(),
            available: available.clone(),
        })
    };
    let ts_index = match ts_column {
        _ if !with_timestamps => None,
        Some(name) => Some(find(name)?),
        None => names.iter().position(|n| *n == "timestamp"),
    };
    let index = match column {
        Some(name) => find(name)?,
        None => {
            let others: Vec<usize> = (0..names.len()).filter(|i| Some(*i) != ts_index).collect();
            match others[..] {
                [only] => only,
                _ => names.iter().position(|n| *n == "value").ok_or_else(|| ImportError::AmbiguousColumn {
                    path: shown.clone(),
                    available: available.clone(),
                })?,
            }
        }
    };
    let column_name = names[index].to_string();
    let ts_name = ts_index.map(|i| names[i].to_string());
    let mut values = Vec::new();
    let mut timestamps = Vec::new();
    let mut seconds: Option<bool> = None;
    let mut previous: Option<(i64, String)> = None;
    for record in reader.records() {
        let record = record.map_err(|e| unreadable(&e))?;
        let line = record.position().map_or(0, |p| p.line());
        let field = record.get(index).unwrap_or("");
        match field.parse::<f64>() {
            Ok(v) if v.is_finite() => values.push(v),
            _ => {
                return Err(ImportError::NotANumber {
                    path: shown,
                    line,
                    column: column_name,
                    value: field.to_string(),
                })
            }
        }
        if let (Some(ts_index), Some(ts_name)) = (ts_index, &ts_name) {
            let text = record.get(ts_index).unwrap_or("");
            let Some(ms) = parse_timestamp(text, &mut seconds) else {
                return Err(ImportError::BadTimestamp {
                    path: shown,
                    line,
                    column: ts_name.clone(),
                    value: text.to_string(),
                });
            };
            if let Some((before, before_text)) = &previous {
                if ms <= *before {
                    return Err(ImportError::NotIncreasing {
                        path: shown,
                        line,
                        column: ts_name.clone(),
                        value: text.to_string(),
                        previous: before_text.clone(),
                    });
                }
            }
            previous = Some((ms, text.to_string()));
            timestamps.push(ms);
        }
    }
    if values.is_empty() {
        return Err(ImportError::Empty { path: shown });
    }
    Ok(CsvSeries { column: column_name, values, timestamps: ts_name.map(|name| (name, timestamps)) })
}

/// One timestamp as Unix milliseconds, `None` when it is not one. `seconds` is the file's
/// numeric unit, fixed by its first number.
fn parse_timestamp(text: &str, seconds: &mut Option<bool>) -> Option<i64> {
    let ms = if let Ok(number) = text.parse::<f64>() {
        if !number.is_finite() {
            return None;
        }
        let in_seconds = *seconds.get_or_insert(number.abs() < SECONDS_BELOW);
        (if in_seconds { number * 1000.0 } else { number }).round()
    } else if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        t.timestamp_millis() as f64
    } else {
        let naive = ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"]
            .iter()
            .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
            .or_else(|| NaiveDate::parse_from_str(text, "%Y-%m-%d").ok().and_then(|d| d.and_hms_opt(0, 0, 0)))?;
        naive.and_utc().timestamp_millis() as f64
    };
    (0.0..=MAX_TS_MS as f64).contains(&ms).then_some(ms as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        std::io::Write::write_all(&mut f, text.as_bytes()).expect("write");
        f
    }

    #[test]
    fn the_value_column_is_chosen_when_there_are_several() {
        let f = write("timestamp,value\n2020-01-01,1.5\n2020-01-02,-2\n");
        assert_eq!(read_csv_column(f.path(), None).expect("reads"), vec![1.5, -2.0]);
    }

    #[test]
    fn a_named_column_is_read_and_a_missing_one_is_named_in_the_error() {
        let f = write("a,b\n1,2\n3,4\n");
        assert_eq!(read_csv_column(f.path(), Some("b")).expect("reads"), vec![2.0, 4.0]);
        let err = read_csv_column(f.path(), Some("c")).expect_err("no column c").to_string();
        assert!(err.contains("\"c\"") && err.contains("a, b"), "{err}");
        let err = read_csv_column(f.path(), None).expect_err("ambiguous").to_string();
        assert!(err.contains("--column"), "{err}");
    }

    #[test]
    fn non_numeric_and_non_finite_values_are_refused_with_their_line() {
        for bad in ["abc", "NaN", "inf", ""] {
            let f = write(&format!("t,value\n0,1\n1,{bad}\n"));
            let err = read_csv_column(f.path(), None).expect_err("bad value").to_string();
            assert!(err.contains("line 3"), "{bad}: {err}");
        }
    }

    #[test]
    fn an_empty_file_and_a_ragged_row_are_refused() {
        let f = write("value\n");
        assert!(matches!(read_csv_column(f.path(), None), Err(ImportError::Empty { .. })));
        let f = write("a,value\n1,2\n3\n");
        assert!(matches!(read_csv_column(f.path(), None), Err(ImportError::Unreadable { .. })));
    }

    #[test]
    fn a_series_reads_values_with_their_timestamps_in_every_accepted_format() {
        let cases = [
            ("1767225600,1\n1767225601.5,2\n", vec![1_767_225_600_000, 1_767_225_601_500]),
            ("1767225600000,1\n1767225600001,2\n", vec![1_767_225_600_000, 1_767_225_600_001]),
            ("2026-01-01T00:00:00Z,1\n2026-01-01T02:00:00+01:00,2\n", vec![1_767_225_600_000, 1_767_229_200_000]),
            ("2026-01-01 00:00:00,1\n2026-01-01 00:00:00.250,2\n", vec![1_767_225_600_000, 1_767_225_600_250]),
            ("2026-01-01,1\n2026-01-02T00:00:00,2\n", vec![1_767_225_600_000, 1_767_312_000_000]),
        ];
        for (rows, expected) in cases {
            let f = write(&format!("timestamp,value\n{rows}"));
            let series = read_csv_series(f.path(), None, None).unwrap_or_else(|e| panic!("{rows}: {e}"));
            assert_eq!(series.values, vec![1.0, 2.0]);
            assert_eq!(series.timestamps, Some(("timestamp".to_string(), expected)), "{rows}");
        }
    }

    #[test]
    fn the_value_column_is_the_one_beside_the_timestamps_and_no_timestamp_column_is_fine() {
        let f = write("time,temp\n1767225600,20.5\n1767225660,21\n");
        let series = read_csv_series(f.path(), None, Some("time")).expect("reads");
        assert_eq!((series.column.as_str(), series.values.clone()), ("temp", vec![20.5, 21.0]));
        let f = write("temp\n20.5\n21\n");
        let series = read_csv_series(f.path(), None, None).expect("reads");
        assert_eq!((series.values, series.timestamps), (vec![20.5, 21.0], None));
        let err = read_csv_series(f.path(), None, Some("ts")).expect_err("no ts column").to_string();
        assert!(err.contains("no column named \"ts\""), "{err}");
    }

    #[test]
    fn bad_and_non_increasing_timestamps_are_refused_with_their_line() {
        for (rows, needle) in [
            ("2026-01-01 00:00:00,1\nyesterday,2\n", "\"yesterday\" is not a timestamp"),
            ("1767225600,1\n1767225600,2\n", "not after"),
            ("1767225600,1\n1767225500,2\n", "not after"),
            ("1767225600,1\n-5,2\n", "not a timestamp"),
            ("1767225600,1\n,2\n", "not a timestamp"),
        ] {
            let f = write(&format!("timestamp,value\n{rows}"));
            let err = read_csv_series(f.path(), None, None).expect_err(rows).to_string();
            assert!(err.contains("line 3") && err.contains(needle), "{rows}: {err}");
        }
    }
}
