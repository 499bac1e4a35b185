//! Image files → normalised CHW `f32` tensors, the same way for the trainer and for `cls-infer`.
//!
//! Pipeline (method.md, "Paper defaults"): decode anything the `image` crate reads to RGB8,
//! **squish** (resize to the target size without keeping the aspect ratio), then
//! `(x/255 − mean)/std` per channel with the ImageNet mean/std, laid out CHW.
//!
//! Decisions:
//! - Alpha is dropped, not composited (RGBA → RGB keeps the colour channels as stored, as PIL's
//!   `convert("RGB")` does). 16-bit images are scaled to 8 bits; grayscale is replicated to
//!   three channels; CMYK JPEGs are converted by the decoder.
//! - EXIF orientation (JPEG, PNG, WebP, TIFF) is applied by [`decode_and_squish`] (and so by
//!   [`Preprocess`] unless `exif_orientation` is off), the one function training and tagging both
//!   call: a photo taken sideways is seen upright, as every viewer shows it (what PIL's
//!   `ImageOps.exif_transpose` does). It is applied to the squished image (a 90° orientation
//!   squishes to the transposed size first), so it costs next to nothing. [`decode_file`] and
//!   [`decode_rgb8`] return the pixels as stored.
//! - Image size is checked from the header before any pixel buffer is allocated: more than
//!   `max_pixels` pixels is [`ImageError::TooLarge`] (default: PIL's decompression-bomb limit).
//! - Only regular files are read (a FIFO would block, a device never end); a file larger than any
//!   image within `max_pixels` could be is refused unread.
//! - Memory: decoders across the whole process share one budget ([`decode_budget`]). Each decode
//!   reserves what it will hold (estimated from the header: the encoded bytes in memory, the
//!   decoded pixels and the decoder's working memory, the RGB8 copy) before allocating it, and
//!   waits while the others use the budget; an image that needs more than the whole budget waits
//!   until it can have all of it, alone. So decoding holds at most max(budget, one image) at once
//!   however many threads decode: a folder of decompression bombs no longer multiplies the
//!   per-image limit by the number of threads.
//! - Resizing is `fast_image_resize` bilinear convolution, whose kernel widens when shrinking
//!   (antialiased), like PIL's `resize(..., BILINEAR)`.

use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
use image::metadata::Orientation;
use image::{ColorType, DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};
use std::cell::RefCell;
use std::fs::File;
use std::io::{BufRead, BufReader, Cursor, Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, OnceLock};

/// ImageNet channel means (RGB), for inputs scaled to [0, 1].
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations (RGB).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// PIL's `Image.MAX_IMAGE_PIXELS` (decompression-bomb limit).
pub const DEFAULT_MAX_PIXELS: u64 = 178_956_970;
/// The memory all decoders of the process may hold at once (see the module's doc), in bytes.
pub const DECODE_BUDGET: u64 = 1 << 30;

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
    #[error("{}: not a regular file ({kind})", path.display())]
    NotAFile { path: PathBuf, kind: &'static str },
    #[error("{}: the file is {bytes} bytes, more than an image within the limit of {max_pixels} pixels can take", path.display())]
    FileTooLarge { path: PathBuf, bytes: u64, max_pixels: u64 },
}

impl ImageError {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            ImageError::Io { path, .. }
            | ImageError::Decode { path, .. }
            | ImageError::TooLarge { path, .. }
            | ImageError::Empty { path }
            | ImageError::Unsupported { path, .. }
            | ImageError::NotAFile { path, .. }
            | ImageError::FileTooLarge { path, .. } => path,
        }
    }
}

/// Parse an image size written `HxW` (or `S` for S×S), each side in `1..=max_side`: the one
/// spelling of `--size`, `--resize`, `--crop` and `--eval-size` in both binaries.
///
/// ```
/// use cls_core::preprocess::parse_size;
/// assert_eq!(parse_size("224x192", 4096).unwrap(), (224, 192));
/// assert_eq!(parse_size(" 32X32 ", 4096).unwrap(), (32, 32));
/// assert_eq!(parse_size("224", 4096).unwrap(), (224, 224));
/// for bad in ["0x10", "10x", "x", "-1x2", "4097x1", "axb", ""] {
///     assert!(parse_size(bad, 4096).is_err(), "{bad}");
/// }
/// ```
pub fn parse_size(text: &str, max_side: u32) -> anyhow::Result<(u32, u32)> {
    let side = |s: &str| match s.trim().parse::<u32>() {
        Ok(v) if (1..=max_side).contains(&v) => Ok(v),
        _ => Err(anyhow::anyhow!("{text:?}: expected HxW (or S for a square), each side 1 to {max_side}")),
    };
    match text.trim().split_once(['x', 'X']) {
        Some((h, w)) => Ok((side(h)?, side(w)?)),
        None => side(text).map(|s| (s, s)),
    }
}

/// Decode an encoded image held in memory to RGB8, refusing more than `max_pixels` pixels
/// before decoding them.
pub fn decode_rgb8(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, ImageError> {
    decode_named(bytes, max_pixels, Path::new("<memory>")).map(|(img, _)| img)
}

/// Read and decode an image file to RGB8 (see [`decode_rgb8`]), within the process's
/// [`decode_budget`] while decoding. The pixels as stored: EXIF orientation is not applied.
pub fn decode_file(path: impl AsRef<Path>, max_pixels: u64) -> Result<RgbImage, ImageError> {
    decode_file_held(path.as_ref(), max_pixels).map(|(img, _, _held)| img)
}

/// The one way both binaries turn an image file into pixels: decode (within the
/// [`decode_budget`], refusing more than `max_pixels`), squish to `width × height`, and, when
/// `exif_orientation`, turn it upright as its EXIF orientation says. The trainer's cache and
/// cls-infer both call this (cls-infer through [`Preprocess`]).
pub fn decode_and_squish(
    path: impl AsRef<Path>,
    max_pixels: u64,
    width: u32,
    height: u32,
    exif_orientation: bool,
) -> Result<RgbImage, ImageError> {
    let path = path.as_ref();
    let (img, orientation, _held) = decode_file_held(path, max_pixels)?;
    upright_squish(&img, orientation, exif_orientation, width, height, path)
}

/// [`decode_and_squish`] for an image held in memory (a tar member; `name` for messages).
pub fn decode_bytes_and_squish(
    bytes: &[u8],
    name: &Path,
    max_pixels: u64,
    width: u32,
    height: u32,
    exif_orientation: bool,
) -> Result<RgbImage, ImageError> {
    let (img, orientation, _held) = decode_bytes_held(bytes, max_pixels, name)?;
    upright_squish(&img, orientation, exif_orientation, width, height, name)
}

/// Whether an orientation swaps width and height.
fn transposes(o: Orientation) -> bool {
    matches!(
        o,
        Orientation::Rotate90 | Orientation::Rotate270 | Orientation::Rotate90FlipH | Orientation::Rotate270FlipH
    )
}

/// Squish `img` (as stored) so that, turned by `orientation` (when `apply`), it is
/// `width × height`, and turn it.
fn upright_squish(
    img: &RgbImage,
    orientation: Orientation,
    apply: bool,
    width: u32,
    height: u32,
    path: &Path,
) -> Result<RgbImage, ImageError> {
    let orientation = if apply { orientation } else { Orientation::NoTransforms };
    let (w, h) = if transposes(orientation) { (height, width) } else { (width, height) };
    let small = try_squish(img, w, h)
        .map_err(|e| ImageError::Decode { path: path.to_path_buf(), msg: format!("cannot resize: {e}") })?;
    if orientation == Orientation::NoTransforms {
        return Ok(small);
    }
    let mut turned = DynamicImage::ImageRgb8(small);
    turned.apply_orientation(orientation);
    Ok(turned.into_rgb8())
}

/// The file extensions of the formats this build of the `image` crate decodes (lower case).
pub fn image_extensions() -> &'static [&'static str] {
    static EXTENSIONS: OnceLock<Vec<&'static str>> = OnceLock::new();
    EXTENSIONS.get_or_init(|| {
        ImageFormat::all()
            .filter(|f| f.reading_enabled() && f.can_read())
            .flat_map(|f| f.extensions_str().iter().copied())
            .collect()
    })
}

/// A share of memory that the holders of a [`MemoryBudget`] may use together.
///
/// A holder must not wait, while it holds a reservation, for work that may itself reserve (such
/// as a rayon join inside a decoder, which could run another decode on the same thread): that
/// work could wait for this very reservation. Nothing in the decoders used here does.
#[derive(Debug)]
pub struct MemoryBudget {
    total: u64,
    state: Mutex<BudgetState>,
    changed: Condvar,
}

#[derive(Debug)]
struct BudgetState {
    used: u64,
    /// Tickets: reservations are granted in the order they were asked for, so a large one is not
    /// starved by a stream of small ones.
    next: u64,
    serving: u64,
}

/// Memory reserved from a [`MemoryBudget`], given back when dropped.
#[derive(Debug)]
pub struct Reservation<'a> {
    budget: &'a MemoryBudget,
    bytes: u64,
}

impl MemoryBudget {
    pub const fn new(total: u64) -> MemoryBudget {
        MemoryBudget {
            total: if total == 0 { 1 } else { total },
            state: Mutex::new(BudgetState { used: 0, next: 0, serving: 0 }),
            changed: Condvar::new(),
        }
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// Bytes reserved now.
    pub fn in_use(&self) -> u64 {
        self.lock().used
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BudgetState> {
        // The state is a few counters, consistent whenever the lock is released.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reserve `bytes`, waiting (in turn) until they are free. More than the whole budget waits
    /// until nothing else is reserved and takes all of it.
    pub fn reserve(&self, bytes: u64) -> Reservation<'_> {
        let bytes = bytes.min(self.total);
        let mut s = self.lock();
        let ticket = s.next;
        s.next += 1;
        while !(s.serving == ticket && s.used + bytes <= self.total) {
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.used += bytes;
        s.serving += 1;
        drop(s);
        // The next ticket may fit too.
        self.changed.notify_all();
        Reservation { budget: self, bytes }
    }
}

impl Reservation<'_> {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut s = self.budget.lock();
        s.used -= self.bytes;
        drop(s);
        self.budget.changed.notify_all();
    }
}

/// The budget every [`decode_file`] (and [`Preprocess`] load) of the process shares:
/// [`DECODE_BUDGET`] bytes.
pub fn decode_budget() -> &'static MemoryBudget {
    static BUDGET: MemoryBudget = MemoryBudget::new(DECODE_BUDGET);
    &BUDGET
}

/// The largest file that can hold an image of `max_pixels` pixels: 8 bytes a pixel (16-bit RGBA,
/// uncompressed), plus room for metadata.
fn max_file_bytes(max_pixels: u64) -> u64 {
    max_pixels.saturating_mul(8).saturating_add(64 << 20)
}

/// Open `path` if it is a regular file (after following symbolic links), with its length.
fn open_regular(path: &Path) -> Result<(File, u64), ImageError> {
    let io = |source| ImageError::Io { path: path.to_path_buf(), source };
    let kind = crate::fsio::kind_name;
    // Checked before opening: opening a FIFO blocks until something writes to it.
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() {
        return Err(ImageError::NotAFile { path: path.to_path_buf(), kind: kind(meta.file_type()) });
    }
    let file = File::open(path).map_err(io)?;
    // And again for what was opened, should the name have changed meanwhile.
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(ImageError::NotAFile { path: path.to_path_buf(), kind: kind(meta.file_type()) });
    }
    Ok((file, meta.len()))
}

/// Width, height and component count from a JPEG's frame header, skipping the segments before it
/// without reading them (and, as decoders do, stray bytes between segments). `None` when there is
/// no frame header before the first scan: then no decoder can allocate the image either.
fn jpeg_frame(r: &mut BufReader<File>) -> Option<(u32, u32, u32)> {
    let mut two = [0u8; 2];
    r.read_exact(&mut two).ok()?;
    if two != [0xff, 0xd8] {
        return None;
    }
    let mut byte = [0u8; 1];
    loop {
        r.read_exact(&mut byte).ok()?;
        if byte[0] != 0xff {
            continue;
        }
        let mut marker = 0xff;
        while marker == 0xff {
            r.read_exact(&mut byte).ok()?;
            marker = byte[0];
        }
        match marker {
            0x00 | 0x01 | 0xd0..=0xd8 => continue,
            0xd9 | 0xda => return None,
            _ => {}
        }
        r.read_exact(&mut two).ok()?;
        let len = u16::from_be_bytes(two);
        if len < 2 {
            return None;
        }
        if (0xc0..=0xcf).contains(&marker) && !matches!(marker, 0xc4 | 0xc8 | 0xcc) {
            let mut frame = [0u8; 6];
            r.read_exact(&mut frame).ok()?;
            let h = u16::from_be_bytes([frame[1], frame[2]]) as u32;
            let w = u16::from_be_bytes([frame[3], frame[4]]) as u32;
            return Some((w, h, frame[5] as u32));
        }
        r.seek_relative(i64::from(len) - 2).ok()?;
    }
}

/// The per-decode limits: the output buffer of a `max_pixels` image with 16-bit RGBA needs 8
/// bytes a pixel.
fn limits(max_pixels: u64) -> Limits {
    let mut limits = Limits::default();
    limits.max_alloc = Some(max_pixels.saturating_mul(8).max(512 << 20));
    limits
}

/// [`decode_file`], also returning the image's EXIF orientation and the budget reservation that
/// covers the image (hold it while the image is processed further, e.g. resized).
fn decode_file_held(path: &Path, max_pixels: u64) -> Result<(RgbImage, Orientation, Reservation<'static>), ImageError> {
    let p = || path.to_path_buf();
    let io = |source| ImageError::Io { path: p(), source };
    let (file, len) = open_regular(path)?;
    if len == 0 {
        return Err(ImageError::Empty { path: p() });
    }
    if len > max_file_bytes(max_pixels) {
        return Err(ImageError::FileTooLarge { path: p(), bytes: len, max_pixels });
    }
    let mut reader = BufReader::with_capacity(64 << 10, file);
    let head = reader.fill_buf().map_err(io)?;
    let Ok(format) = image::guess_format(head) else {
        let bytes: Vec<String> = head.iter().take(8).map(|b| format!("{b:02x}")).collect();
        let msg = format!("unrecognised signature {}", bytes.join(" "));
        return Err(ImageError::Unsupported { path: p(), msg });
    };
    let budget = decode_budget();
    if format == ImageFormat::Jpeg {
        // Decoded from memory (the decoder copies the whole file in anyway): the file twice, the
        // pixels, up to 2 bytes a pixel and component of working memory (progressive JPEGs keep
        // every coefficient), the RGB copy of a grey or CMYK image.
        let need = match jpeg_frame(&mut reader) {
            Some((w, h, c)) if w > 0 && h > 0 => {
                check_size(w, h, max_pixels, path)?;
                let px = w as u64 * h as u64;
                let c = u64::from(c.clamp(1, 4));
                let pixels = px * (c.max(3) + 2 * c) + if c == 3 { 0 } else { 3 * px };
                len.saturating_mul(2).saturating_add(pixels)
            }
            // A height of 0 (given later, in a DNL segment): as large as the limit allows.
            Some(_) => u64::MAX,
            None => len.saturating_mul(2),
        };
        let held = budget.reserve(need);
        reader.rewind().map_err(io)?;
        let mut bytes = Vec::new();
        bytes.try_reserve_exact(len as usize).map_err(|e| ImageError::Decode { path: p(), msg: e.to_string() })?;
        reader.read_to_end(&mut bytes).map_err(io)?;
        let (img, orientation) = decode_named(&bytes, max_pixels, path)?;
        return Ok((img, orientation, held));
    }
    // Other formats decode straight from the file: the header first, then what it announces.
    let mut image_reader = ImageReader::with_format(reader, format);
    image_reader.limits(limits(max_pixels));
    let refused = |e: image::ImageError| match e {
        image::ImageError::Limits(_) => over_limit(max_pixels, path, e, || {
            let mut r = ImageReader::open(path).ok()?.with_guessed_format().ok()?;
            r.no_limits();
            r.into_dimensions().ok()
        }),
        e => from_image_error(e, path),
    };
    let mut decoder = image_reader.into_decoder().map_err(refused)?;
    let (w, h) = decoder.dimensions();
    check_size(w, h, max_pixels, path)?;
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let px = w as u64 * h as u64;
    let rgb_copy = if decoder.color_type() == ColorType::Rgb8 { 0 } else { px.saturating_mul(3) };
    // The pixels, as much again for the decoder's own buffers, the RGB copy, and the file's
    // bytes for formats whose decoders read whole chunks (WebP).
    let held = budget.reserve(len.saturating_add(decoder.total_bytes().saturating_mul(2)).saturating_add(rgb_copy));
    let img = DynamicImage::from_decoder(decoder).map_err(refused)?;
    Ok((img.into_rgb8(), orientation, held))
}

/// Decode an encoded image held in memory (`name` for messages, e.g. a tar member), within the
/// process's [`decode_budget`] like a file: the encoded bytes are the caller's, the pixels are
/// reserved from the header before they are allocated.
fn decode_bytes_held(
    bytes: &[u8],
    max_pixels: u64,
    name: &Path,
) -> Result<(RgbImage, Orientation, Reservation<'static>), ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty { path: name.to_path_buf() });
    }
    // The header alone (without limits: the size is checked here), then what it announces: the
    // pixels, the decoder's working memory, the RGB copy.
    let dims = ImageReader::new(Cursor::new(bytes)).with_guessed_format().ok().and_then(|mut r| {
        r.no_limits();
        r.into_dimensions().ok()
    });
    let need = match dims {
        Some((w, h)) => {
            check_size(w, h, max_pixels, name)?;
            (w as u64 * h as u64).saturating_mul(12)
        }
        None => 0, // not decodable: `decode_named` says why
    };
    let held = decode_budget().reserve(need);
    let (img, orientation) = decode_named(bytes, max_pixels, name)?;
    Ok((img, orientation, held))
}

fn decode_named(bytes: &[u8], max_pixels: u64, path: &Path) -> Result<(RgbImage, Orientation), ImageError> {
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
    reader.limits(limits(max_pixels));
    let refused = |e: image::ImageError| match e {
        image::ImageError::Limits(_) => over_limit(max_pixels, path, e, || {
            let mut r = ImageReader::new(Cursor::new(bytes)).with_guessed_format().ok()?;
            r.no_limits();
            r.into_dimensions().ok()
        }),
        e => from_image_error(e, path),
    };
    let mut decoder = reader.into_decoder().map_err(refused)?;
    let (w, h) = decoder.dimensions();
    check_size(w, h, max_pixels, path)?;
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let img = DynamicImage::from_decoder(decoder).map_err(refused)?;
    Ok((img.into_rgb8(), orientation))
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

/// A decoder refused on its own memory limit: report the size when the header (read again
/// without limits by `dims`) tells it.
fn over_limit(
    max_pixels: u64,
    path: &Path,
    e: image::ImageError,
    dims: impl FnOnce() -> Option<(u32, u32)>,
) -> ImageError {
    match dims() {
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
#[allow(clippy::expect_used)] // fast_image_resize only fails on mismatched pixel types; both are RGB8.
pub fn squish(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    try_squish(img, width, height).expect("RGB8 to RGB8 resize of non-empty images cannot fail")
}

/// [`squish`], with the resizer's error (never seen for RGB8 images) as a value.
fn try_squish(img: &RgbImage, width: u32, height: u32) -> Result<RgbImage, fast_image_resize::ResizeError> {
    let mut dst = RgbImage::new(width, height);
    if width == 0 || height == 0 || img.width() == 0 || img.height() == 0 {
        return Ok(dst);
    }
    if img.dimensions() == (width, height) {
        return Ok(img.clone());
    }
    let opts = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    RESIZER.with(|r| r.borrow_mut().resize(img, &mut dst, &opts))?;
    Ok(dst)
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

/// The evaluation-time preprocessing of a model: target size, normalisation, size limit, EXIF
/// orientation.
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocess {
    pub height: u32,
    pub width: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub max_pixels: u64,
    /// Turn images upright as their EXIF orientation says (see [`decode_and_squish`]).
    pub exif_orientation: bool,
}

impl Preprocess {
    /// `height × width` with ImageNet mean/std, PIL's pixel limit and EXIF orientation applied.
    pub fn imagenet(height: u32, width: u32) -> Self {
        Preprocess {
            height,
            width,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
            max_pixels: DEFAULT_MAX_PIXELS,
            exif_orientation: true,
        }
    }

    /// Number of `f32` in one image's tensor: `3 · height · width`.
    pub fn tensor_len(&self) -> usize {
        3 * self.height as usize * self.width as usize
    }

    /// Decode, squish to `width × height` and turn upright ([`decode_and_squish`]).
    pub fn load_rgb(&self, path: impl AsRef<Path>) -> Result<RgbImage, ImageError> {
        decode_and_squish(path, self.max_pixels, self.width, self.height, self.exif_orientation)
    }

    /// [`Self::load_into`] for an image held in memory (`name` for messages).
    pub fn load_bytes_into(&self, bytes: &[u8], name: &Path, out: &mut [f32]) -> Result<(), ImageError> {
        let img =
            decode_bytes_and_squish(bytes, name, self.max_pixels, self.width, self.height, self.exif_orientation)?;
        normalize_into(&img, self.mean, self.std, out);
        Ok(())
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
