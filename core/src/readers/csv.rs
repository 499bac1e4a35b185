//! CSV feature tables (the Mulan/MEKA-style sets such as `scene`): a header row, then one row
//! per sample of numeric feature columns and 0/1 label columns. Fields are split on `,` and
//! trimmed; quoting is not supported (numeric tables do not need it), though quotes around
//! header names are stripped.

use super::{file_stem_str, label_space, parent_name, read_lines, short_name, DataError, Loc};
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
    let lines = read_lines(path)?;
    let Some(((header_line, header), rows)) = lines.split_first() else {
        return Err(DataError::Empty { at: Loc::file(path), what: "header row" });
    };
    let header: Vec<String> = header.split(',').map(|h| h.trim().trim_matches('"').to_string()).collect();
    let width = header.len();
    let label_cols = label_columns(&header, &labels, &Loc::line(path, *header_line))?;
    let label_set: HashSet<usize> = label_cols.iter().copied().collect();
    let feature_cols: Vec<usize> = (0..width).filter(|c| !label_set.contains(c)).collect();
    if rows.is_empty() {
        return Err(DataError::Empty { at: Loc::file(path), what: "data rows after the header" });
    }

    let mut features = Array2::<f32>::zeros((rows.len(), feature_cols.len()));
    let mut targets = Array2::from_elem((rows.len(), label_cols.len()), NEG);
    for (row, (line, text)) in rows.iter().enumerate() {
        let fields: Vec<&str> = text.split(',').map(str::trim).collect();
        if fields.len() != width {
            return Err(DataError::ColumnCount { at: Loc::line(path, *line), expected: width, found: fields.len() });
        }
        let number = |col: usize| -> Result<f64, DataError> {
            let at = Loc::cell(path, *line, col + 1);
            let value: f64 = fields[col].parse().map_err(|_| {
                DataError::bad_value(at.clone(), format!("'{}' ({}) is not a number", fields[col], header[col]))
            })?;
            if !value.is_finite() {
                return Err(DataError::bad_value(at, format!("'{}' ({}) is not finite", fields[col], header[col])));
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
                    format!("label value '{}' ({}) is not 0 or 1", fields[col], header[col]),
                ));
            };
        }
    }

    let names = label_cols.iter().map(|&c| header[c].clone()).collect();
    let classes = label_space(names, Loc::line(path, *header_line))?;
    Ok(Dataset {
        name: short_name(&[&parent_name(path), file_stem_str(path)]),
        classes,
        samples: (0..rows.len()).map(|i| Sample { id: i.to_string(), path: PathBuf::new() }).collect(),
        targets,
        features: Some(features),
    })
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
