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

/// The shape of a `.npy` file, from its header (to tell which rows an `--observed` file covers
/// before reading it).
pub fn npy_shape(path: &Path) -> Result<Vec<u64>, DataError> {
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let npy = npyz::NpyFile::new(std::io::BufReader::new(file))
        .map_err(|e| DataError::malformed(Loc::entry(path, "header"), format!("not a readable .npy file: {e}")))?;
    Ok(npy.shape().to_vec())
}

/// Read an SPML observed-label `.npy` (with the `npyz` crate): a 2-D array of shape
/// `(n_images, n_classes)`, C or Fortran order, holding 1 (observed positive), 0 (unannotated)
/// or -1 (observed negative), of any float, integer or boolean dtype in either byte order.
pub fn read_observed_npy(path: &Path, n_images: usize, n_classes: usize) -> Result<Array2<i8>, DataError> {
    let header = || Loc::entry(path, "header");
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let npy = npyz::NpyFile::new(std::io::BufReader::new(file))
        .map_err(|e| DataError::malformed(header(), format!("not a readable .npy file: {e}")))?;
    let shape = npy.shape().to_vec();
    if shape != [n_images as u64, n_classes as u64] {
        return Err(DataError::malformed(
            header(),
            format!("shape {shape:?}, but the dataset has {n_images} images and {n_classes} classes"),
        ));
    }
    let fortran = npy.order() == npyz::Order::Fortran;
    let npyz::DType::Plain(dtype) = npy.dtype() else {
        return Err(DataError::malformed(header(), "a structured array; expected plain numbers"));
    };
    let count = n_images * n_classes;
    let values = numbers(npy, &dtype).map_err(|e| {
        let msg = if e.kind() == std::io::ErrorKind::UnexpectedEof {
            format!("truncated: the data ends before {count} values of '{dtype}'")
        } else {
            e.to_string()
        };
        DataError::malformed(Loc::file(path), msg)
    })?;
    let mut out = Array2::from_elem((n_images, n_classes), UNK);
    for (k, value) in values.into_iter().enumerate().take(count) {
        // Fortran order stores the matrix column by column.
        let (row, class) = if fortran { (k % n_images, k / n_images) } else { (k / n_classes, k % n_classes) };
        out[[row, class]] = if value == 1.0 {
            POS
        } else if value == 0.0 {
            UNK
        } else if value == -1.0 {
            NEG
        } else {
            return Err(DataError::bad_value(
                Loc::entry(path, format!("row {row}, class {class}")),
                format!("value {value} is not 1, 0 or -1"),
            ));
        };
    }
    Ok(out)
}

/// Every element of a plain numeric `.npy` as f64 (exact for the values that matter here).
fn numbers<R: std::io::Read>(npy: npyz::NpyFile<R>, dtype: &npyz::TypeStr) -> std::io::Result<Vec<f64>> {
    use npyz::TypeChar::{Bool, Float, Int, Uint};
    fn all<T: npyz::Deserialize, R: std::io::Read>(
        npy: npyz::NpyFile<R>,
        to_f64: impl Fn(T) -> f64,
    ) -> std::io::Result<Vec<f64>> {
        Ok(npy.into_vec::<T>()?.into_iter().map(to_f64).collect())
    }
    match (dtype.type_char(), dtype.size_field()) {
        (Float, 4) => all(npy, |v: f32| v as f64),
        (Float, 8) => all(npy, |v: f64| v),
        (Int, 1) => all(npy, |v: i8| v as f64),
        (Int, 2) => all(npy, |v: i16| v as f64),
        (Int, 4) => all(npy, |v: i32| v as f64),
        (Int, 8) => all(npy, |v: i64| v as f64),
        (Uint, 1) => all(npy, |v: u8| v as f64),
        (Uint, 2) => all(npy, |v: u16| v as f64),
        (Uint, 4) => all(npy, |v: u32| v as f64),
        (Uint, 8) => all(npy, |v: u64| v as f64),
        (Bool, 1) => all(npy, |v: bool| f64::from(u8::from(v))),
        _ => Err(std::io::Error::other(format!(
            "unsupported dtype '{dtype}' (expected a float, integer or boolean matrix)"
        ))),
    }
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
