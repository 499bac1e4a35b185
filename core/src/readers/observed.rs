//! Externally supplied observed-label files (method.md, "Partial-label protocols": published
//! splits can be reused): SPML's `.npy` matrices and the Hill/SPLC `name,i j k` text format.
//! Both return an images × classes `i8` matrix aligned with a dataset: `POS` for observed
//! positives, `UNK` for unannotated entries and `NEG` for observed negatives (`.npy` only).

use super::{file_name_str, file_stem_str, read_lines, DataError, Loc};
use crate::dataset::Dataset;
use crate::labels::{NEG, POS, UNK};
use ndarray::Array2;
use std::collections::HashMap;
use std::path::Path;

/// Read an SPML observed-label `.npy`: a C-order 2-D array of shape `(n_images, n_classes)`
/// holding 1 (observed positive), 0 (unannotated) or -1 (observed negative), stored as
/// `<f4`, `<f8`, `<i8`, `<i4`, `|u1`, `|i1` or `|b1`.
pub fn read_observed_npy(path: &Path, n_images: usize, n_classes: usize) -> Result<Array2<i8>, DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let header = npy::Header::parse(&bytes).map_err(|msg| DataError::malformed(Loc::entry(path, "header"), msg))?;
    if header.shape != [n_images, n_classes] {
        return Err(DataError::malformed(
            Loc::entry(path, "header"),
            format!("shape {:?}, but the dataset has {n_images} images and {n_classes} classes", header.shape),
        ));
    }
    let count = n_images * n_classes;
    let data = &bytes[header.data_offset..];
    let size = header.dtype.size();
    if data.len() / size < count {
        return Err(DataError::malformed(
            Loc::file(path),
            format!("truncated: {count} values of {size} bytes need {} bytes, found {}", count * size, data.len()),
        ));
    }
    let mut out = Array2::from_elem((n_images, n_classes), UNK);
    for (k, chunk) in data.chunks_exact(size).take(count).enumerate() {
        let value = header.dtype.value(chunk);
        out[[k / n_classes, k % n_classes]] = if value == 1.0 {
            POS
        } else if value == 0.0 {
            UNK
        } else if value == -1.0 {
            NEG
        } else {
            return Err(DataError::bad_value(
                Loc::entry(path, format!("row {}, class {}", k / n_classes, k % n_classes)),
                format!("value {value} is not 1, 0 or -1"),
            ));
        };
    }
    Ok(out)
}

/// Read a Hill/SPLC observed-label text file aligned with `dataset`: lines
/// `name,i j k` (an image, then the space-separated class indices of its observed positives).
///
/// An image is matched by `Sample.id`, else by file name, else by file stem (each only if it
/// names one image). Listed indices become `POS`, everything else `UNK`; images the file does
/// not mention stay all `UNK`. Unknown or ambiguous images, repeated images, non-numeric or
/// out-of-range indices and an empty file are errors naming `file:line`.
pub fn read_observed_txt(path: &Path, dataset: &Dataset) -> Result<Array2<i8>, DataError> {
    let lookup = ImageLookup::new(dataset);
    let n_classes = dataset.num_classes();
    let mut out = Array2::from_elem((dataset.len(), n_classes), UNK);
    let mut first_line: HashMap<usize, usize> = HashMap::new();
    let lines = read_lines(path)?;
    if lines.is_empty() {
        return Err(DataError::Empty { at: Loc::file(path), what: "lines" });
    }
    for (line, text) in lines {
        let at = Loc::line(path, line);
        let (name, indices) = text
            .rsplit_once(',')
            .ok_or_else(|| DataError::malformed(at.clone(), "expected 'name,i j k' (no comma)"))?;
        let name = name.trim();
        let row = lookup.find(name).map_err(|why| DataError::malformed(at.clone(), why))?;
        if let Some(first) = first_line.insert(row, line) {
            return Err(DataError::DuplicateImage { at, id: name.to_string(), first: format!("at line {first}") });
        }
        for token in indices.split_whitespace() {
            let class: usize = token
                .parse()
                .map_err(|_| DataError::bad_value(at.clone(), format!("class index '{token}' is not a number")))?;
            if class >= n_classes {
                return Err(DataError::bad_value(
                    at.clone(),
                    format!("class index {class} is out of range (the dataset has {n_classes} classes)"),
                ));
            }
            out[[row, class]] = POS;
        }
    }
    Ok(out)
}

/// Image name → row, by id, by file name and by file stem; `None` marks an ambiguous key.
struct ImageLookup {
    by_id: HashMap<String, usize>,
    by_file: HashMap<String, Option<usize>>,
    by_stem: HashMap<String, Option<usize>>,
}

impl ImageLookup {
    fn new(dataset: &Dataset) -> Self {
        let mut lookup = ImageLookup { by_id: HashMap::new(), by_file: HashMap::new(), by_stem: HashMap::new() };
        let add = |map: &mut HashMap<String, Option<usize>>, key: &str, row: usize| {
            if key.is_empty() {
                return;
            }
            let slot = map.entry(key.to_string()).or_insert(Some(row));
            if *slot != Some(row) {
                *slot = None;
            }
        };
        for (row, sample) in dataset.samples.iter().enumerate() {
            lookup.by_id.entry(sample.id.clone()).or_insert(row);
            let id_path = Path::new(&sample.id);
            for p in [id_path, sample.path.as_path()] {
                add(&mut lookup.by_file, file_name_str(p), row);
                add(&mut lookup.by_stem, file_stem_str(p), row);
            }
        }
        lookup
    }

    fn find(&self, name: &str) -> Result<usize, String> {
        if let Some(&row) = self.by_id.get(name) {
            return Ok(row);
        }
        let name_path = Path::new(name);
        for (map, key) in [(&self.by_file, file_name_str(name_path)), (&self.by_stem, file_stem_str(name_path))] {
            match map.get(key) {
                Some(Some(row)) => return Ok(*row),
                Some(None) => return Err(format!("image '{name}' matches several images of the dataset")),
                None => {}
            }
        }
        Err(format!("image '{name}' is not in the dataset"))
    }
}

/// The `.npy` header: magic, version, then a Python dict literal with `descr`,
/// `fortran_order` and `shape`.
mod npy {
    /// The element types accepted, all little-endian or single-byte.
    #[derive(Debug, Clone, Copy)]
    pub enum Dtype {
        F4,
        F8,
        I8,
        I4,
        U1,
        I1,
        B1,
    }

    impl Dtype {
        fn from_descr(descr: &str) -> Option<Self> {
            Some(match descr {
                "<f4" => Dtype::F4,
                "<f8" => Dtype::F8,
                "<i8" => Dtype::I8,
                "<i4" => Dtype::I4,
                "|u1" => Dtype::U1,
                "|i1" => Dtype::I1,
                "|b1" => Dtype::B1,
                _ => return None,
            })
        }

        pub fn size(self) -> usize {
            match self {
                Dtype::F8 | Dtype::I8 => 8,
                Dtype::F4 | Dtype::I4 => 4,
                Dtype::U1 | Dtype::I1 | Dtype::B1 => 1,
            }
        }

        /// One element (`c` holds exactly `size()` bytes) as f64, exact for the values that
        /// matter here.
        pub fn value(self, c: &[u8]) -> f64 {
            let four = || [c[0], c[1], c[2], c[3]];
            let eight = || [c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]];
            match self {
                Dtype::F4 => f32::from_le_bytes(four()) as f64,
                Dtype::F8 => f64::from_le_bytes(eight()),
                Dtype::I8 => i64::from_le_bytes(eight()) as f64,
                Dtype::I4 => i32::from_le_bytes(four()) as f64,
                Dtype::U1 | Dtype::B1 => c[0] as f64,
                Dtype::I1 => c[0] as i8 as f64,
            }
        }
    }

    pub struct Header {
        pub dtype: Dtype,
        pub shape: Vec<usize>,
        pub data_offset: usize,
    }

    impl Header {
        pub fn parse(bytes: &[u8]) -> Result<Header, String> {
            if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
                return Err("not a .npy file (bad magic)".into());
            }
            let (len, start) = match bytes[6] {
                1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
                2 | 3 if bytes.len() >= 12 => {
                    (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
                }
                v => return Err(format!("unsupported .npy version {v}")),
            };
            let dict = bytes.get(start..start + len).ok_or("header is truncated")?;
            let dict = std::str::from_utf8(dict).map_err(|_| "header is not text")?;

            let descr = quoted_value(dict, "descr").ok_or("header has no 'descr'")?;
            let dtype = Dtype::from_descr(descr)
                .ok_or_else(|| format!("unsupported dtype '{descr}' (supported: <f4 <f8 <i8 <i4 |u1 |i1 |b1)"))?;
            match raw_value(dict, "fortran_order") {
                Some(v) if v.starts_with("False") => {}
                Some(v) if v.starts_with("True") => return Err("Fortran-order arrays are not supported".into()),
                _ => return Err("header has no 'fortran_order'".into()),
            }
            let shape = raw_value(dict, "shape").ok_or("header has no 'shape'")?;
            let inner = shape.strip_prefix('(').and_then(|s| s.split(')').next()).ok_or("'shape' is not a tuple")?;
            let shape = inner
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| s.parse::<usize>().map_err(|_| format!("bad shape entry '{s}'")))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Header { dtype, shape, data_offset: start + len })
        }
    }

    /// The text after `'key':`, left-trimmed.
    fn raw_value<'a>(dict: &'a str, key: &str) -> Option<&'a str> {
        let at = dict.find(&format!("'{key}'"))?;
        let rest = dict[at + key.len() + 2..].trim_start().strip_prefix(':')?;
        Some(rest.trim_start())
    }

    /// A quoted string value: `'key': '<f4'` → `<f4`.
    fn quoted_value<'a>(dict: &'a str, key: &str) -> Option<&'a str> {
        let rest = raw_value(dict, key)?.strip_prefix('\'')?;
        rest.split('\'').next()
    }
}
