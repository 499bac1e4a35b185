//! Image files → normalised CHW `f32` tensors, the same way for the trainer and for `cls-infer`.
//!
//! Pipeline (method.md, "Paper defaults"): decode anything the `image` crate reads to RGB8,
//! **squish** (resize to the target size without keeping the aspect ratio), then
//! `(x/255 − mean)/std` per channel with the ImageNet mean/std, laid out CHW.
//!
//! Decisions:
//! - Alpha is dropped, not composited (RGBA → RGB keeps the colour channels as stored, as PIL's
//!   `convert("RGB")` does). 16-bit images are scaled to 8 bits; grayscale is replicated to
//!   three channels; CMYK JPEGs are converted by the decoder. EXIF orientation is not applied
//!   (PIL's `open().convert("RGB")` does not either).
//! - Image size is checked from the header before any pixel buffer is allocated: more than
//!   `max_pixels` pixels is [`ImageError::TooLarge`] (default: PIL's decompression-bomb limit).
//! - Resizing is `fast_image_resize` bilinear convolution, whose kernel widens when shrinking
//!   (antialiased), like PIL's `resize(..., BILINEAR)`.

use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
use image::{DynamicImage, ImageDecoder, ImageReader, Limits, RgbImage};
use std::cell::RefCell;
use std::io::Cursor;
use std::path::{Path, PathBuf};

/// ImageNet channel means (RGB), for inputs scaled to [0, 1].
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations (RGB).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// PIL's `Image.MAX_IMAGE_PIXELS` (decompression-bomb limit).
pub const DEFAULT_MAX_PIXELS: u64 = 178_956_970;

/// Why an image could not be loaded. Every message starts with the file's path
/// (`<memory>` for [`decode_rgb8`] on bytes).
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{}: cannot read: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: cannot decode: {msg}", path.display())]
    Decode { path: PathBuf, msg: String },
    #[error("{}: image is {w}×{h} = {} pixels, more than the limit of {max}", path.display(), *w as u64 * *h as u64)]
    TooLarge { path: PathBuf, w: u32, h: u32, max: u64 },
    #[error("{}: empty file or zero-sized image", path.display())]
    Empty { path: PathBuf },
    #[error("{}: not an image in a supported format (JPEG, PNG, BMP, WebP, TIFF, GIF): {msg}", path.display())]
    Unsupported { path: PathBuf, msg: String },
}

impl ImageError {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            ImageError::Io { path, .. }
            | ImageError::Decode { path, .. }
            | ImageError::TooLarge { path, .. }
            | ImageError::Empty { path }
            | ImageError::Unsupported { path, .. } => path,
        }
    }
}

/// Decode an encoded image held in memory to RGB8, refusing more than `max_pixels` pixels
/// before decoding them.
pub fn decode_rgb8(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, ImageError> {
    decode_named(bytes, max_pixels, Path::new("<memory>"))
}

/// Read and decode an image file to RGB8 (see [`decode_rgb8`]).
pub fn decode_file(path: impl AsRef<Path>, max_pixels: u64) -> Result<RgbImage, ImageError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| ImageError::Io { path: path.to_path_buf(), source })?;
    decode_named(&bytes, max_pixels, path)
}

fn decode_named(bytes: &[u8], max_pixels: u64, path: &Path) -> Result<RgbImage, ImageError> {
    let p = || path.to_path_buf();
    if bytes.is_empty() {
        return Err(ImageError::Empty { path: p() });
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|source| ImageError::Io { path: p(), source })?;
    if reader.format().is_none() {
        let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
        let msg = format!("unrecognised signature {}", head.join(" "));
        return Err(ImageError::Unsupported { path: p(), msg });
    }
    if reader.format() == Some(image::ImageFormat::Jpeg) && !jpeg_has_end(bytes) {
        // zune-jpeg pads a cut-off scan with grey instead of failing; PIL refuses ("image file
        // is truncated"), and so do we: a silently half-grey training image is worse.
        let msg = "truncated JPEG: no end-of-image marker after the last scan".to_string();
        return Err(ImageError::Decode { path: p(), msg });
    }
    // The output buffer of a max_pixels image with 16-bit RGBA needs 8 bytes a pixel.
    let mut limits = Limits::default();
    limits.max_alloc = Some(max_pixels.saturating_mul(8).max(512 << 20));
    reader.limits(limits);
    let decoder = match reader.into_decoder() {
        Ok(d) => d,
        Err(e @ image::ImageError::Limits(_)) => return Err(over_limit(bytes, max_pixels, path, e)),
        Err(e) => return Err(from_image_error(e, path)),
    };
    let (w, h) = decoder.dimensions();
    check_size(w, h, max_pixels, path)?;
    let img = DynamicImage::from_decoder(decoder).map_err(|e| match e {
        image::ImageError::Limits(_) => over_limit(bytes, max_pixels, path, e),
        e => from_image_error(e, path),
    })?;
    Ok(img.into_rgb8())
}

/// Whether a JPEG has an end-of-image marker (FF D9) after the start of its last scan
/// (FF DA). Entropy-coded data stuffs every FF with 00, so neither marker occurs inside it;
/// an EXIF thumbnail's markers come before the main image's scans.
fn jpeg_has_end(bytes: &[u8]) -> bool {
    let last_sos = bytes.windows(2).rposition(|w| w == [0xff, 0xda]);
    let from = last_sos.unwrap_or(0);
    bytes[from..].windows(2).any(|w| w == [0xff, 0xd9])
}

fn check_size(w: u32, h: u32, max_pixels: u64, path: &Path) -> Result<(), ImageError> {
    if w == 0 || h == 0 {
        return Err(ImageError::Empty { path: path.to_path_buf() });
    }
    if w as u64 * h as u64 > max_pixels {
        return Err(ImageError::TooLarge { path: path.to_path_buf(), w, h, max: max_pixels });
    }
    Ok(())
}

/// A decoder refused on its own memory limit: report the size when the header tells it.
fn over_limit(bytes: &[u8], max_pixels: u64, path: &Path, e: image::ImageError) -> ImageError {
    let dims = ImageReader::new(Cursor::new(bytes)).with_guessed_format().ok().and_then(|mut r| {
        r.no_limits();
        r.into_dimensions().ok()
    });
    match dims {
        Some((w, h)) => match check_size(w, h, max_pixels, path) {
            Err(err) => err,
            Ok(()) => ImageError::Decode { path: path.to_path_buf(), msg: e.to_string() },
        },
        None => ImageError::Decode { path: path.to_path_buf(), msg: e.to_string() },
    }
}

fn from_image_error(e: image::ImageError, path: &Path) -> ImageError {
    let path = path.to_path_buf();
    match e {
        image::ImageError::Unsupported(u) => ImageError::Unsupported { path, msg: u.to_string() },
        // Reading from memory, an I/O error means the data ended early.
        other => ImageError::Decode { path, msg: other.to_string() },
    }
}

thread_local! {
    /// One resizer per thread keeps its scratch buffers between images.
    static RESIZER: RefCell<Resizer> = RefCell::new(Resizer::new());
}

/// Resize to exactly `width × height` (no aspect preservation), bilinear.
///
/// Zero-sized source or target gives a black (or empty) image rather than an error.
pub fn squish(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let mut dst = RgbImage::new(width, height);
    if width == 0 || height == 0 || img.width() == 0 || img.height() == 0 {
        return dst;
    }
    if img.dimensions() == (width, height) {
        return img.clone();
    }
    let opts = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    RESIZER.with(|r| {
        r.borrow_mut().resize(img, &mut dst, &opts).expect("RGB8 to RGB8 resize of non-empty images cannot fail")
    });
    dst
}

/// Per-channel lookup table: `lut[c][v] = (v/255 − mean[c]) / std[c]`.
fn lut(mean: [f32; 3], std: [f32; 3]) -> [[f32; 256]; 3] {
    let mut t = [[0f32; 256]; 3];
    for (c, row) in t.iter_mut().enumerate() {
        for (v, x) in row.iter_mut().enumerate() {
            *x = (v as f32 / 255.0 - mean[c]) / std[c];
        }
    }
    t
}

/// HWC `u8` → CHW `f32`, `(x/255 − mean)/std` per channel.
///
/// # Panics
/// If `out.len() != 3 · width · height` (a caller bug, not bad input).
pub fn normalize_into(img: &RgbImage, mean: [f32; 3], std: [f32; 3], out: &mut [f32]) {
    let (w, h) = (img.width() as usize, img.height() as usize);
    crop_flip_normalize(img.as_raw(), h, w, 0, 0, h, w, false, mean, std, out);
}

/// Crop `crop_h × crop_w` at (`top`, `left`) out of an HWC RGB8 buffer of `src_h × src_w`,
/// mirror it left–right if `flip`, and normalise into `out` (CHW, `3 · crop_h · crop_w`).
/// The trainer's augmentation from its uint8 cache (method.md: random 224 crop + flip).
///
/// # Panics
/// If the crop leaves the source or a buffer has the wrong length (caller bugs).
#[allow(clippy::too_many_arguments)]
pub fn crop_flip_normalize(
    src: &[u8],
    src_h: usize,
    src_w: usize,
    top: usize,
    left: usize,
    crop_h: usize,
    crop_w: usize,
    flip: bool,
    mean: [f32; 3],
    std: [f32; 3],
    out: &mut [f32],
) {
    assert_eq!(src.len(), 3 * src_h * src_w, "source buffer is not {src_h}×{src_w}×3");
    assert!(
        top + crop_h <= src_h && left + crop_w <= src_w,
        "crop {crop_h}×{crop_w} at ({top}, {left}) leaves the {src_h}×{src_w} source"
    );
    assert_eq!(out.len(), 3 * crop_h * crop_w, "output buffer is not 3×{crop_h}×{crop_w}");
    let t = lut(mean, std);
    let plane = crop_h * crop_w;
    let (r_out, rest) = out.split_at_mut(plane);
    let (g_out, b_out) = rest.split_at_mut(plane);
    for y in 0..crop_h {
        let row = &src[((top + y) * src_w + left) * 3..][..crop_w * 3];
        let o = y * crop_w;
        for x in 0..crop_w {
            let sx = if flip { crop_w - 1 - x } else { x };
            let px = &row[sx * 3..sx * 3 + 3];
            r_out[o + x] = t[0][px[0] as usize];
            g_out[o + x] = t[1][px[1] as usize];
            b_out[o + x] = t[2][px[2] as usize];
        }
    }
}

/// The evaluation-time preprocessing of a model: target size, normalisation, size limit.
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocess {
    pub height: u32,
    pub width: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub max_pixels: u64,
}

impl Preprocess {
    /// `height × width` with ImageNet mean/std and PIL's pixel limit.
    pub fn imagenet(height: u32, width: u32) -> Self {
        Preprocess { height, width, mean: IMAGENET_MEAN, std: IMAGENET_STD, max_pixels: DEFAULT_MAX_PIXELS }
    }

    /// Number of `f32` in one image's tensor: `3 · height · width`.
    pub fn tensor_len(&self) -> usize {
        3 * self.height as usize * self.width as usize
    }

    /// Decode and squish to `width × height`.
    pub fn load_rgb(&self, path: impl AsRef<Path>) -> Result<RgbImage, ImageError> {
        let img = decode_file(path, self.max_pixels)?;
        Ok(squish(&img, self.width, self.height))
    }

    /// Decode, squish and normalise: a CHW tensor of [`Self::tensor_len`] values.
    pub fn load(&self, path: impl AsRef<Path>) -> Result<Vec<f32>, ImageError> {
        let mut out = vec![0f32; self.tensor_len()];
        self.load_into(path, &mut out)?;
        Ok(out)
    }

    /// [`Self::load`] into a slice of a batch buffer (`out.len()` must be `tensor_len()`).
    pub fn load_into(&self, path: impl AsRef<Path>, out: &mut [f32]) -> Result<(), ImageError> {
        let img = self.load_rgb(path)?;
        normalize_into(&img, self.mean, self.std, out);
        Ok(())
    }
}
