//! Streaming CSV records with exact line numbers, in memory that does not grow with the file.
//!
//! The `csv` crate's own line counter points a record at the blank lines before it and cannot
//! be used as is; the feature-table reader counts lines from a table of every newline offset,
//! which costs memory in proportion to the file. Here a thin [`Read`] wrapper logs the offsets
//! of the newlines it hands to the parser and the stream pops them as records are consumed, so
//! the log never holds more than one read buffer's worth: a record's last line is one more than
//! the newlines before its terminator, its first line that less the newlines inside its
//! (quoted) fields.

use super::{DataError, Loc};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// The offsets of newlines read from the file but not yet passed by a record.
#[derive(Default)]
struct NewlineLog {
    /// Bytes handed out so far.
    offset: u64,
    /// Newline offsets handed out but not yet counted, ascending.
    pending: VecDeque<u64>,
    /// Newlines counted so far (all before the last position asked about).
    passed: usize,
}

impl NewlineLog {
    /// The 1-based line holding byte `at`; positions must be asked about in ascending order.
    fn line_of(&mut self, at: u64) -> usize {
        while self.pending.front().is_some_and(|&n| n < at) {
            self.pending.pop_front();
            self.passed += 1;
        }
        self.passed + 1
    }
}

/// A reader that logs newline offsets as the parser reads.
struct Logged<R> {
    inner: R,
    log: Rc<RefCell<NewlineLog>>,
}

impl<R: Read> Read for Logged<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut log = self.log.borrow_mut();
        let start = log.offset;
        for (i, _) in buf[..n].iter().enumerate().filter(|(_, &b)| b == b'\n') {
            log.pending.push_back(start + i as u64);
        }
        log.offset += n as u64;
        Ok(n)
    }
}

/// The records of a CSV file, one at a time: RFC 4180 quoting, `\n` or `\r\n` line ends, a
/// UTF-8 byte-order mark skipped, blank (or all-blank) records skipped, fields trimmed.
pub(crate) struct CsvStream {
    path: PathBuf,
    reader: csv::Reader<Logged<File>>,
    log: Rc<RefCell<NewlineLog>>,
    record: csv::ByteRecord,
    line: usize,
}

impl CsvStream {
    pub(crate) fn open(path: &Path) -> Result<Self, DataError> {
        let file = File::open(path).map_err(|e| DataError::io(path, e))?;
        let log = Rc::new(RefCell::new(NewlineLog::default()));
        let reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .buffer_capacity(1 << 16)
            .from_reader(Logged { inner: file, log: Rc::clone(&log) });
        Ok(CsvStream { path: path.to_path_buf(), reader, log, record: csv::ByteRecord::new(), line: 0 })
    }

    /// Advance to the next non-blank record; `false` at the end of the file. Invalid UTF-8 is an
    /// error at its line.
    pub(crate) fn next(&mut self) -> Result<bool, DataError> {
        loop {
            let more = self.reader.read_byte_record(&mut self.record);
            // The parser stops right after a record's terminator (or at the end of the file).
            let end = self.reader.position().byte();
            let last_line = self.log.borrow_mut().line_of(end.saturating_sub(1));
            match more {
                Ok(false) => return Ok(false),
                Ok(true) => {}
                Err(e) => {
                    return Err(match e.into_kind() {
                        csv::ErrorKind::Io(io) => DataError::io(&self.path, io),
                        other => DataError::malformed(Loc::line(&self.path, last_line), format!("{other:?}")),
                    })
                }
            }
            let inner_newlines: usize = self.record.iter().map(|f| f.iter().filter(|&&b| b == b'\n').count()).sum();
            self.line = last_line.saturating_sub(inner_newlines).max(1);
            if self.record.iter().all(|f| f.trim_ascii().is_empty()) {
                continue;
            }
            if let Some(col) = self.record.iter().position(|f| std::str::from_utf8(f).is_err()) {
                return Err(DataError::malformed(Loc::cell(&self.path, self.line, col + 1), "not valid UTF-8"));
            }
            return Ok(true);
        }
    }

    /// The 1-based line where the current record starts.
    pub(crate) fn line(&self) -> usize {
        self.line
    }

    /// The number of fields of the current record.
    pub(crate) fn len(&self) -> usize {
        self.record.len()
    }

    /// Field `i` of the current record, trimmed ("" past the end). The first field of the file
    /// loses a byte-order mark if the parser left one.
    pub(crate) fn get(&self, i: usize) -> &str {
        let text = self.record.get(i).and_then(|f| std::str::from_utf8(f).ok()).unwrap_or("");
        text.trim_start_matches('\u{feff}').trim()
    }

    /// The current record's fields, trimmed.
    pub(crate) fn fields(&self) -> Vec<String> {
        (0..self.len()).map(|i| self.get(i).to_string()).collect()
    }

    /// The current line as a location.
    pub(crate) fn at(&self) -> Loc {
        Loc::line(&self.path, self.line)
    }

    /// Column `col` (0-based) of the current line as a location.
    pub(crate) fn cell(&self, col: usize) -> Loc {
        Loc::cell(&self.path, self.line, col + 1)
    }
}
