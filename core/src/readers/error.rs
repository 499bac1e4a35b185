//! The readers' error type. Every message names the file and, where there is one, the line
//! (`file:line`), the cell (`file:line:column`) or the entry (`file (annotations[3])`).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// A place in a source file: shown as `file`, `file:line`, `file:line:column` or
/// `file (entry)`. Lines and columns are 1-based.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loc {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// A named entry for formats without useful line numbers (COCO JSON, `.npy` arrays).
    pub entry: Option<Box<str>>,
}

impl Loc {
    /// The whole file.
    pub fn file(file: &Path) -> Self {
        Loc { file: file.to_path_buf(), line: None, column: None, entry: None }
    }

    /// One line of a text file.
    pub fn line(file: &Path, line: usize) -> Self {
        Loc { line: Some(line), ..Loc::file(file) }
    }

    /// One cell (line and column) of a table.
    pub fn cell(file: &Path, line: usize, column: usize) -> Self {
        Loc { line: Some(line), column: Some(column), ..Loc::file(file) }
    }

    /// A named entry of a structured file, e.g. `annotations[12]`.
    pub fn entry(file: &Path, entry: impl Into<String>) -> Self {
        Loc { entry: Some(entry.into().into_boxed_str()), ..Loc::file(file) }
    }
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(column) = self.column {
            write!(f, ":{column}")?;
        }
        if let Some(entry) = &self.entry {
            write!(f, " ({entry})")?;
        }
        Ok(())
    }
}

/// Everything that can go wrong while reading a dataset or an observed-label file.
#[derive(Debug, Error)]
pub enum DataError {
    #[error("cannot read {at}: {source}")]
    Io {
        at: Loc,
        #[source]
        source: io::Error,
    },
    #[error("{at}: empty: no {what}")]
    Empty { at: Loc, what: &'static str },
    #[error("{at}: bad JSON: {msg}")]
    Json { at: Loc, msg: String },
    #[error("{at}: unknown class '{class}'")]
    UnknownClass { at: Loc, class: String },
    #[error("{at}: image file {image} does not exist")]
    MissingImage { at: Loc, image: String },
    #[error("{at}: duplicate image '{id}' (first seen {first})")]
    DuplicateImage { at: Loc, id: String, first: String },
    #[error("{at}: expected {expected} columns, found {found}")]
    ColumnCount { at: Loc, expected: usize, found: usize },
    #[error("{at}: {msg}")]
    BadValue { at: Loc, msg: String },
    #[error("{at}: {msg}")]
    Malformed { at: Loc, msg: String },
    /// Not a problem of a file's content: an unsupported format or a missing option.
    #[error("{0}")]
    Usage(String),
}

impl DataError {
    pub(crate) fn io(file: &Path, source: io::Error) -> Self {
        DataError::Io { at: Loc::file(file), source }
    }

    pub(crate) fn malformed(at: Loc, msg: impl Into<String>) -> Self {
        DataError::Malformed { at, msg: msg.into() }
    }

    pub(crate) fn bad_value(at: Loc, msg: impl Into<String>) -> Self {
        DataError::BadValue { at, msg: msg.into() }
    }

    /// A `serde_json` error at `line` of `file` (for one-document files `line` is `err.line()`).
    pub(crate) fn json(file: &Path, line: usize, err: &serde_json::Error) -> Self {
        let text = err.to_string();
        // serde_json appends " at line L column C"; the location is ours to print.
        let msg = match text.rsplit_once(" at line ") {
            Some((head, _)) => head.to_string(),
            None => text,
        };
        let at = if err.column() > 0 { Loc::cell(file, line, err.column()) } else { Loc::line(file, line) };
        DataError::Json { at, msg }
    }
}
