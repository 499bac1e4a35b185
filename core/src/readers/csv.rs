//! CSV feature tables (the Mulan/MEKA-style sets such as `scene`): a header row, then one row
//! per sample of numeric feature columns and 0/1 label columns. Parsed by the `csv` crate (RFC
//! 4180 quoting, so a header name may hold a comma; a UTF-8 byte order mark is skipped); fields
//! are trimmed and blank lines skipped.

use super::{file_stem_str, label_space, parent_name, short_name, DataError, Loc};
use crate::dataset::{Dataset, Sample};
use crate::labels::{NEG, POS};
use ndarray::Array2;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Which columns of a CSV table are labels; all other columns are features.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelColumns {
    /// The last `n` columns.
    Last(usize),
    /// The columns with these header names, in this order (the class order).
    Names(Vec<String>),
}

/// Read a CSV feature table.
///
/// Class names come from the header of the label columns. Features go to `Dataset.features`
/// (f32, finite), labels to targets (1 → positive, 0 → negative). `Sample.id` is the 0-based
/// data row number, the path empty. The name is `<folder>-<stem>`, e.g. `scene-train`.
pub fn read_csv(path: &Path, labels: LabelColumns) -> Result<Dataset, DataError> {
    let (header_line, header, rows) = read_records(path)?;
    let width = header.len();
    let label_cols = label_columns(&header, &labels, &Loc::line(path, header_line))?;
    let label_set: HashSet<usize> = label_cols.iter().copied().collect();
    let feature_cols: Vec<usize> = (0..width).filter(|c| !label_set.contains(c)).collect();
    if rows.is_empty() {
        return Err(DataError::Empty { at: Loc::file(path), what: "data rows after the header" });
    }

    let mut features = Array2::<f32>::zeros((rows.len(), feature_cols.len()));
    let mut targets = Array2::from_elem((rows.len(), label_cols.len()), NEG);
    for (row, (line, fields)) in rows.iter().enumerate() {
        if fields.len() != width {
            return Err(DataError::ColumnCount { at: Loc::line(path, *line), expected: width, found: fields.len() });
        }
        let number = |col: usize| -> Result<f64, DataError> {
            let at = Loc::cell(path, *line, col + 1);
            let value: f64 = fields[col].parse().map_err(|_| {
                DataError::bad_value(at.clone(), format!("'{}' ({}) is not a number", &fields[col], header[col]))
            })?;
            if !value.is_finite() {
                return Err(DataError::bad_value(at, format!("'{}' ({}) is not finite", &fields[col], header[col])));
            }
            Ok(value)
        };
        for (j, &col) in feature_cols.iter().enumerate() {
            features[[row, j]] = number(col)? as f32;
        }
        for (j, &col) in label_cols.iter().enumerate() {
            let value = number(col)?;
            targets[[row, j]] = if value == 1.0 {
                POS
            } else if value == 0.0 {
                NEG
            } else {
                return Err(DataError::bad_value(
                    Loc::cell(path, *line, col + 1),
                    format!("label value '{}' ({}) is not 0 or 1", &fields[col], header[col]),
                ));
            };
        }
    }

    let names = label_cols.iter().map(|&c| header[c].clone()).collect();
    let classes = label_space(names, Loc::line(path, header_line))?;
    Ok(Dataset {
        name: short_name(&[&parent_name(path), file_stem_str(path)]),
        classes,
        samples: (0..rows.len()).map(|i| Sample { id: i.to_string(), path: PathBuf::new() }).collect(),
        targets,
        features: Some(features),
    })
}

/// The header's line number and names, and the data rows as (line number, trimmed fields).
type Records = (usize, Vec<String>, Vec<(usize, csv::StringRecord)>);

/// The header and the data rows, blank lines skipped.
fn read_records(path: &Path) -> Result<Records, DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    // The reader's own line counter skips blank lines; count from the byte offset instead.
    let newlines: Vec<usize> = bytes.iter().enumerate().filter(|(_, &b)| b == b'\n').map(|(i, _)| i).collect();
    let line_at = |pos: Option<&csv::Position>| {
        // A record's position may point at the blank lines before it: skip them.
        let mut at = pos.map_or(0, |p| p.byte() as usize);
        while bytes.get(at).is_some_and(|b| *b == b'\n' || *b == b'\r') {
            at += 1;
        }
        newlines.partition_point(|&n| n < at) + 1
    };
    let mut reader =
        csv::ReaderBuilder::new().has_headers(false).flexible(true).trim(csv::Trim::All).from_reader(&bytes[..]);
    let mut records = Vec::new();
    for result in reader.records() {
        let record = result.map_err(|e| {
            let line = line_at(e.position());
            match e.into_kind() {
                csv::ErrorKind::Io(io) => DataError::io(path, io),
                csv::ErrorKind::Utf8 { .. } => DataError::malformed(Loc::line(path, line), "not valid UTF-8"),
                other => DataError::malformed(Loc::line(path, line), format!("{other:?}")),
            }
        })?;
        if record.iter().all(str::is_empty) {
            continue;
        }
        records.push((line_at(record.position()), record));
    }
    let mut records = records.into_iter();
    let Some((header_line, header)) = records.next() else {
        return Err(DataError::Empty { at: Loc::file(path), what: "header row" });
    };
    let mut header: Vec<String> = header.iter().map(str::to_string).collect();
    if let Some(first) = header.first_mut() {
        // A byte order mark the reader left in the first name.
        *first = first.trim_start_matches('\u{feff}').to_string();
    }
    Ok((header_line, header, records.collect()))
}

/// The indices of the label columns, in class order; at least one column must stay a feature.
fn label_columns(header: &[String], labels: &LabelColumns, at: &Loc) -> Result<Vec<usize>, DataError> {
    let width = header.len();
    let cols: Vec<usize> = match labels {
        LabelColumns::Last(n) => {
            if *n == 0 || *n >= width {
                return Err(DataError::Usage(format!(
                    "{at}: cannot take the last {n} of {width} columns as labels (need 1 ≤ n < {width})"
                )));
            }
            (width - n..width).collect()
        }
        LabelColumns::Names(names) => {
            let mut cols = Vec::with_capacity(names.len());
            for name in names {
                let col = header.iter().position(|h| h == name).ok_or_else(|| {
                    DataError::malformed(at.clone(), format!("no column named '{name}' in the header"))
                })?;
                if cols.contains(&col) {
                    return Err(DataError::Usage(format!("{at}: label column '{name}' is given twice")));
                }
                cols.push(col);
            }
            if cols.is_empty() || cols.len() >= width {
                return Err(DataError::Usage(format!(
                    "{at}: {} label columns of {width}: need at least one label and one feature column",
                    cols.len()
                )));
            }
            cols
        }
    };
    Ok(cols)
}
