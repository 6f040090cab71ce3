//! Reading series from files. Every failure names the file, the line and the column, so
//! the CLI can print it as one line.
use std::path::Path;

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
}

/// Reads one numeric column of a CSV file with a header row.
///
/// `column` picks the column by name; without it, the only column, or else the column
/// named `value` (NAB's layout: `timestamp,value`), is used.
pub fn read_csv_column(path: &Path, column: Option<&str>) -> Result<Vec<f64>, ImportError> {
    let shown = path.display().to_string();
    let unreadable = |e: &dyn std::fmt::Display| ImportError::Unreadable { path: shown.clone(), reason: e.to_string() };
    let mut reader =
        csv::ReaderBuilder::new().has_headers(true).trim(csv::Trim::All).from_path(path).map_err(|e| unreadable(&e))?;
    let headers = reader.headers().map_err(|e| unreadable(&e))?.clone();
    let names: Vec<&str> = headers.iter().collect();
    let available = names.join(", ");
    let index = match column {
        Some(name) => names.iter().position(|n| *n == name).ok_or_else(|| ImportError::MissingColumn {
            path: shown.clone(),
            column: name.to_string(),
            available: available.clone(),
        })?,
        None if names.len() == 1 => 0,
        None => names
            .iter()
            .position(|n| *n == "value")
            .ok_or_else(|| ImportError::AmbiguousColumn { path: shown.clone(), available: available.clone() })?,
    };
    let column_name = names[index].to_string();
    let mut values = Vec::new();
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
    }
    if values.is_empty() {
        return Err(ImportError::Empty { path: shown });
    }
    Ok(values)
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
}
