//! Image decoding, squishing and normalisation.

use cls_core::preprocess::{
    crop_flip_normalize, decode_file, decode_rgb8, image_extensions, normalize_into, squish, ImageError, MemoryBudget,
    Preprocess, DEFAULT_MAX_PIXELS, IMAGENET_MEAN, IMAGENET_STD,
};
use image::{DynamicImage, ImageBuffer, ImageFormat, Luma, Rgb, RgbImage, Rgba};
use std::io::Cursor;

const MAX: u64 = DEFAULT_MAX_PIXELS;

fn encode(img: DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut buf = Cursor::new(Vec::new());
    img.write_to(&mut buf, format).unwrap();
    buf.into_inner()
}

/// A deterministic pattern with edges and texture (so JPEG truncation loses real data).
fn pattern(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| Rgb([(x * 7 + y * 3) as u8, (x ^ y) as u8 * 5, ((x * y) % 251) as u8]))
}

fn close(a: &[u8], b: &[u8], tol: i32) -> bool {
    a.iter().zip(b).all(|(&x, &y)| (x as i32 - y as i32).abs() <= tol)
}

#[test]
fn one_by_one_image_decodes_and_squishes() {
    let img = RgbImage::from_pixel(1, 1, Rgb([200, 10, 30]));
    let bytes = encode(img.into(), ImageFormat::Png);
    let rgb = decode_rgb8(&bytes, MAX).unwrap();
    assert_eq!(rgb.dimensions(), (1, 1));
    let big = squish(&rgb, 4, 3);
    assert_eq!(big.dimensions(), (4, 3));
    assert!(big.pixels().all(|p| p.0 == [200, 10, 30]));
    // And back down to 1×1.
    assert_eq!(squish(&big, 1, 1).get_pixel(0, 0).0, [200, 10, 30]);
}

#[test]
fn long_strip_squishes_without_keeping_aspect() {
    // 8000×10, brightness rising left to right.
    let img = RgbImage::from_fn(8000, 10, |x, _| {
        let v = (x * 255 / 7999) as u8;
        Rgb([v, v, v])
    });
    let out = squish(&img, 32, 32);
    assert_eq!(out.dimensions(), (32, 32));
    for y in 0..32 {
        for x in 1..32 {
            assert!(out.get_pixel(x, y)[0] >= out.get_pixel(x - 1, y)[0]);
        }
    }
    assert!(out.get_pixel(0, 16)[0] < 8 && out.get_pixel(31, 16)[0] > 247);
    // The transposed strip, too.
    assert_eq!(squish(&RgbImage::new(10, 8000), 7, 5).dimensions(), (7, 5));
}

#[test]
fn grayscale_is_replicated() {
    let img = ImageBuffer::<Luma<u8>, _>::from_fn(3, 2, |x, y| Luma([(40 * x + 100 * y) as u8]));
    let rgb = decode_rgb8(&encode(img.into(), ImageFormat::Png), MAX).unwrap();
    assert_eq!(rgb.get_pixel(2, 1).0, [180, 180, 180]);
    assert_eq!(rgb.get_pixel(1, 0).0, [40, 40, 40]);
}

#[test]
fn alpha_is_dropped_not_composited() {
    let img = ImageBuffer::<Rgba<u8>, _>::from_fn(2, 1, |x, _| {
        if x == 0 {
            Rgba([10, 20, 30, 0])
        } else {
            Rgba([200, 100, 50, 128])
        }
    });
    let rgb = decode_rgb8(&encode(img.into(), ImageFormat::Png), MAX).unwrap();
    assert_eq!(rgb.get_pixel(0, 0).0, [10, 20, 30]);
    assert_eq!(rgb.get_pixel(1, 0).0, [200, 100, 50]);
}

#[test]
fn sixteen_bit_png_is_scaled_to_eight_bits() {
    // 257 · v in 16 bits is exactly v in 8 bits.
    let img = ImageBuffer::<Rgb<u16>, _>::from_fn(2, 1, |x, _| {
        if x == 0 {
            Rgb([65535, 0, 257 * 100])
        } else {
            Rgb([257 * 7, 257 * 250, 257 * 128])
        }
    });
    let rgb = decode_rgb8(&encode(DynamicImage::ImageRgb16(img), ImageFormat::Png), MAX).unwrap();
    assert_eq!(rgb.get_pixel(0, 0).0, [255, 0, 100]);
    assert_eq!(rgb.get_pixel(1, 0).0, [7, 250, 128]);
}

/// A 16×8 CMYK JPEG written by Pillow 11 (Adobe APP14, inverted CMYK as Photoshop writes it):
/// left half C0 M255 Y255 K0 (red), right half C255 M255 Y0 K0 (blue). Made with
/// `Image.new('CMYK', (16, 8), (0, 255, 255, 0))`, `paste((255, 255, 0, 0), (8, 0, 16, 8))`,
/// `save(f, 'JPEG', quality=95)`; Pillow decodes it to (255, 0, 0) and (0, 0, 255).
const CMYK_JPEG: &str = "\
ffd8ffee000e41646f626500640000000000ffdb00430002010101010102010101020202020204030202020205040403\
04060506060605060606070908060709070606080b08090a0a0a0a0a06080b0c0b0a0c090a0a0affc000140800080010\
044311004d11005911004b1100ffc4001f0000010501010101010100000000000000000102030405060708090a0bffc4\
00b5100002010303020403050504040000017d01020300041105122131410613516107227114328191a1082342b1c115\
52d1f02433627282090a161718191a25262728292a3435363738393a434445464748494a535455565758595a63646566\
6768696a737475767778797a838485868788898a92939495969798999aa2a3a4a5a6a7a8a9aab2b3b4b5b6b7b8b9bac2\
c3c4c5c6c7c8c9cad2d3d4d5d6d7d8d9dae1e2e3e4e5e6e7e8e9eaf1f2f3f4f5f6f7f8f9faffda000e0443004d005900\
4b00003f00fdfcafe7febf9ffafdfcafe00e8afeff0028afffd9";

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

#[test]
fn cmyk_jpeg_decodes_to_the_right_colours() {
    let rgb = decode_rgb8(&unhex(CMYK_JPEG), MAX).unwrap();
    assert_eq!(rgb.dimensions(), (16, 8));
    assert!(close(&rgb.get_pixel(1, 1).0, &[255, 0, 0], 12), "{:?}", rgb.get_pixel(1, 1));
    assert!(close(&rgb.get_pixel(14, 6).0, &[0, 0, 255], 12), "{:?}", rgb.get_pixel(14, 6));
}

#[test]
fn every_enabled_format_decodes() {
    let img = RgbImage::from_fn(24, 16, |x, _| if x < 12 { Rgb([250, 0, 0]) } else { Rgb([0, 0, 250]) });
    for (format, tol) in [
        (ImageFormat::Png, 0),
        (ImageFormat::Bmp, 0),
        (ImageFormat::Tiff, 0),
        (ImageFormat::WebP, 0),
        (ImageFormat::Jpeg, 12),
        (ImageFormat::Gif, 12),
    ] {
        let rgb = decode_rgb8(&encode(img.clone().into(), format), MAX).unwrap_or_else(|e| panic!("{format:?}: {e}"));
        assert_eq!(rgb.dimensions(), (24, 16), "{format:?}");
        assert!(close(&rgb.get_pixel(2, 8).0, &[250, 0, 0], tol), "{format:?}");
        assert!(close(&rgb.get_pixel(21, 8).0, &[0, 0, 250], tol), "{format:?}");
    }
}

#[test]
fn broken_files_are_errors_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let jpeg = encode(pattern(64, 64).into(), ImageFormat::Jpeg);
    let cases = [
        write("truncated.jpg", &jpeg[..jpeg.len() / 2]),
        write("empty.jpg", b""),
        write("notes.jpg", b"this is a text file, not an image\n"),
        dir.path().join("missing.png"),
    ];
    let errs: Vec<ImageError> = cases
        .iter()
        .map(|p| match decode_file(p, MAX) {
            Ok(img) => panic!("{}: decoded to {:?}", p.display(), img.dimensions()),
            Err(e) => e,
        })
        .collect();
    assert!(matches!(errs[0], ImageError::Decode { .. }), "{}", errs[0]);
    assert!(matches!(errs[1], ImageError::Empty { .. }), "{}", errs[1]);
    assert!(matches!(errs[2], ImageError::Unsupported { .. }), "{}", errs[2]);
    assert!(matches!(errs[3], ImageError::Io { .. }), "{}", errs[3]);
    for (p, e) in cases.iter().zip(&errs) {
        assert_eq!(e.path(), p.as_path());
        assert!(e.to_string().starts_with(&p.display().to_string()), "{e}");
    }
    // The untruncated file is fine, and so is one with bytes after its end marker.
    assert_eq!(decode_rgb8(&jpeg, MAX).unwrap().dimensions(), (64, 64));
    let mut trailing = jpeg.clone();
    trailing.extend_from_slice(b"trailing bytes some writers append");
    assert_eq!(decode_rgb8(&trailing, MAX).unwrap().dimensions(), (64, 64));
    // Cut just before the end marker: still truncated.
    assert!(matches!(decode_rgb8(&jpeg[..jpeg.len() - 2], MAX), Err(ImageError::Decode { .. })));
}

/// CRC-32 (ISO-HDLC, as PNG uses), bit by bit.
fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
        }
    }
    !c
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

#[test]
fn huge_declared_size_is_refused_before_decoding() {
    assert_eq!(crc32(b"IEND"), 0xae42_6082); // the constant every PNG ends with
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB: 30 GB of pixels
    png_chunk(&mut png, b"IHDR", &ihdr);
    png_chunk(&mut png, b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
    png_chunk(&mut png, b"IEND", &[]);
    match decode_rgb8(&png, MAX) {
        Err(ImageError::TooLarge { w, h, max, .. }) => {
            assert_eq!((w, h, max), (100_000, 100_000, MAX))
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // The limit is inclusive: exactly max_pixels is fine, one fewer allowed pixel is not.
    let bytes = encode(pattern(100, 50).into(), ImageFormat::Png);
    assert!(decode_rgb8(&bytes, 5000).is_ok());
    assert!(matches!(decode_rgb8(&bytes, 4999), Err(ImageError::TooLarge { w: 100, h: 50, .. })));
}

#[test]
fn normalisation_matches_hand_computed_values() {
    // (x, y): (0,0) black, (1,0) white, (0,1) (51,102,204), (1,1) (255,0,128).
    let px = [[0, 0, 0], [255, 255, 255], [51, 102, 204], [255, 0, 128]];
    let img = RgbImage::from_fn(2, 2, |x, y| Rgb(px[(y * 2 + x) as usize]));
    let mut out = vec![0f32; 12];
    normalize_into(&img, [0.5, 0.5, 0.5], [0.5, 0.25, 1.0], &mut out);
    // R: (x/255 − 0.5)/0.5 over 0, 1, 0.2, 1; G: (x/255 − 0.5)/0.25 over 0, 1, 0.4, 0;
    // B: x/255 − 0.5 over 0, 1, 0.8, 128/255.
    let expected = [
        -1.0,
        1.0,
        -0.6,
        1.0, //
        -2.0,
        2.0,
        -0.4,
        -2.0, //
        -0.5,
        0.5,
        0.3,
        128.0 / 255.0 - 0.5,
    ];
    for (i, (a, b)) in out.iter().zip(expected).enumerate() {
        assert!((a - b).abs() < 1e-6, "index {i}: {a} vs {b}");
    }
}

#[test]
fn crop_and_flip_take_the_right_pixels() {
    // 4 rows × 5 columns; pixel (y, x) = (10y + x, 100 + 10y + x, 200 + y).
    let (h, w) = (4usize, 5usize);
    let mut src = Vec::new();
    for y in 0..h {
        for x in 0..w {
            src.extend_from_slice(&[(10 * y + x) as u8, (100 + 10 * y + x) as u8, (200 + y) as u8]);
        }
    }
    // mean 0, std 1/255 makes the output the raw pixel value.
    let (mean, std) = ([0.0; 3], [1.0 / 255.0; 3]);
    let mut out = vec![0f32; 3 * 2 * 3];
    crop_flip_normalize(&src, h, w, 1, 2, 2, 3, false, mean, std, &mut out);
    let r: Vec<i32> = out.iter().map(|v| v.round() as i32).collect();
    assert_eq!(r, [12, 13, 14, 22, 23, 24, 112, 113, 114, 122, 123, 124, 201, 201, 201, 202, 202, 202]);
    crop_flip_normalize(&src, h, w, 1, 2, 2, 3, true, mean, std, &mut out);
    let r: Vec<i32> = out.iter().map(|v| v.round() as i32).collect();
    assert_eq!(r, [14, 13, 12, 24, 23, 22, 114, 113, 112, 124, 123, 122, 201, 201, 201, 202, 202, 202]);
}

#[test]
fn preprocess_load_gives_a_normalised_chw_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("grey.png");
    RgbImage::from_pixel(7, 5, Rgb([128, 64, 32])).save(&path).unwrap();
    let pre = Preprocess::imagenet(4, 6);
    assert_eq!((pre.mean, pre.std, pre.max_pixels), (IMAGENET_MEAN, IMAGENET_STD, MAX));
    assert_eq!(pre.load_rgb(&path).unwrap().dimensions(), (6, 4));
    let t = pre.load(&path).unwrap();
    assert_eq!(t.len(), 3 * 4 * 6);
    for (c, v) in [128.0f32, 64.0, 32.0].into_iter().enumerate() {
        let want = (v / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
        assert!(t[c * 24..(c + 1) * 24].iter().all(|x| (x - want).abs() < 1e-5), "channel {c}");
    }
    let err = pre.load(dir.path().join("nope.png")).unwrap_err();
    assert!(matches!(err, ImageError::Io { .. }));
}

#[test]
fn files_decode_as_their_bytes_do() {
    // Files are decoded from the file (JPEG from memory); the result is the in-memory decode's.
    let dir = tempfile::tempdir().unwrap();
    let img = pattern(37, 23);
    let grey = DynamicImage::ImageLuma8(ImageBuffer::from_fn(9, 5, |x, y| Luma([(x * 20 + y) as u8])));
    let rgba = DynamicImage::ImageRgba8(ImageBuffer::from_fn(6, 4, |x, _| Rgba([x as u8 * 30, 1, 2, 128])));
    let cases = [
        (DynamicImage::from(img.clone()), ImageFormat::Png, "a.png"),
        (grey.clone(), ImageFormat::Png, "grey.png"),
        (rgba, ImageFormat::Png, "rgba.png"),
        (img.clone().into(), ImageFormat::Bmp, "a.bmp"),
        (img.clone().into(), ImageFormat::Tiff, "a.tif"),
        (img.clone().into(), ImageFormat::WebP, "a.webp"),
        (img.clone().into(), ImageFormat::Gif, "a.gif"),
        (img.clone().into(), ImageFormat::Jpeg, "a.jpg"),
        (grey, ImageFormat::Jpeg, "grey.jpg"),
    ];
    for (image, format, name) in cases {
        let bytes = encode(image, format);
        let path = dir.path().join(name);
        std::fs::write(&path, &bytes).unwrap();
        let from_file = decode_file(&path, MAX).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(from_file, decode_rgb8(&bytes, MAX).unwrap(), "{name}");
    }
    // The size check still comes before decoding, from a file too.
    let big = dir.path().join("big.jpg");
    std::fs::write(&big, encode(pattern(100, 50).into(), ImageFormat::Jpeg)).unwrap();
    assert!(matches!(decode_file(&big, 4999), Err(ImageError::TooLarge { w: 100, h: 50, .. })));
    let big = dir.path().join("big.png");
    std::fs::write(&big, encode(pattern(100, 50).into(), ImageFormat::Png)).unwrap();
    assert!(matches!(decode_file(&big, 4999), Err(ImageError::TooLarge { w: 100, h: 50, .. })));
}

#[test]
fn only_regular_files_of_a_possible_size_are_read() {
    let dir = tempfile::tempdir().unwrap();
    // A FIFO (opening it would wait for a writer) and an endless character device (/dev/zero's
    // numbers), made in the test's folder; each must be refused at once, not block or fill memory.
    let fifo = dir.path().join("x.jpg");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let zero = dir.path().join("z.png");
    let mut paths = vec![(fifo, "a FIFO")];
    if std::process::Command::new("mknod").arg(&zero).args(["c", "1", "5"]).status().is_ok_and(|s| s.success()) {
        paths.push((zero, "a character device"));
    }
    paths.push((dir.path().to_path_buf(), "a directory"));
    for (path, kind) in paths {
        let (tx, rx) = std::sync::mpsc::channel();
        let p = path.clone();
        std::thread::spawn(move || {
            let _ = tx.send(decode_file(&p, MAX).map(|_| ()));
        });
        match rx.recv_timeout(std::time::Duration::from_secs(20)) {
            Ok(Err(ImageError::NotAFile { kind: k, .. })) => assert_eq!(k, kind),
            Ok(other) => panic!("{}: {other:?}", path.display()),
            Err(_) => panic!("{}: decode_file did not return (blocked or reading forever)", path.display()),
        }
    }
    // A (sparse) file larger than any image within the limit could be is refused unread.
    let huge = dir.path().join("huge.png");
    std::fs::File::create(&huge).unwrap().set_len(100 << 20).unwrap();
    let err = decode_file(&huge, 1000).unwrap_err();
    assert!(matches!(err, ImageError::FileTooLarge { bytes, .. } if bytes == 100 << 20), "{err}");
}

#[test]
fn extensions_are_those_of_the_enabled_decoders() {
    let ext = image_extensions();
    for e in ["jpg", "jpeg", "png", "bmp", "webp", "tif", "tiff", "gif"] {
        assert!(ext.contains(&e), "{e} missing from {ext:?}");
    }
    // Formats this build cannot read are not listed.
    for e in ["dds", "pcx", "exr", "avif"] {
        assert!(!ext.contains(&e), "{e} in {ext:?}");
    }
}

#[test]
fn the_memory_budget_bounds_what_is_held_at_once() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let budget = MemoryBudget::new(100);
    let held = AtomicU64::new(0);
    let peak = AtomicU64::new(0);
    std::thread::scope(|s| {
        for i in 0..8u64 {
            let (budget, held, peak) = (&budget, &held, &peak);
            s.spawn(move || {
                for k in 0..50u64 {
                    // Sizes from 10 to 70; every 17th asks for more than the whole budget.
                    let want = if (i + k) % 17 == 0 { 1000 } else { 10 + (i * 7 + k * 3) % 61 };
                    let r = budget.reserve(want);
                    assert_eq!(r.bytes(), want.min(100));
                    let now = held.fetch_add(r.bytes(), Ordering::SeqCst) + r.bytes();
                    peak.fetch_max(now, Ordering::SeqCst);
                    std::thread::yield_now();
                    held.fetch_sub(r.bytes(), Ordering::SeqCst);
                }
            });
        }
    });
    let peak = peak.into_inner();
    assert!(peak <= 100, "held {peak} of a budget of 100 at once");
    assert!(peak > 70, "the budget was shared ({peak})");
    assert_eq!(budget.in_use(), 0);
}

/// A JPEG of `img` whose EXIF (an APP1 segment right after SOI) says `orientation` (1 to 8).
fn jpeg_with_orientation(img: &RgbImage, orientation: u16) -> Vec<u8> {
    let jpeg = {
        let mut buf = Cursor::new(Vec::new());
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, 95).encode_image(img).unwrap();
        buf.into_inner()
    };
    let mut exif = b"Exif\0\0MM\0\x2a\0\0\0\x08\0\x01".to_vec();
    exif.extend([0x01, 0x12, 0x00, 0x03, 0, 0, 0, 1]);
    exif.extend(orientation.to_be_bytes());
    exif.extend([0, 0, 0, 0, 0, 0]);
    let mut out = jpeg[..2].to_vec();
    out.extend([0xff, 0xe1]);
    out.extend(((exif.len() + 2) as u16).to_be_bytes());
    out.extend(exif);
    out.extend(&jpeg[2..]);
    out
}

#[test]
fn exif_orientation_turns_every_photo_upright() {
    use cls_core::preprocess::{decode_and_squish, decode_bytes_and_squish};
    use image::metadata::Orientation;
    use std::path::Path;
    // Four quadrants of different colours, 32 wide and 16 high (whole JPEG blocks): every
    // orientation gives a different picture.
    let upright = RgbImage::from_fn(32, 16, |x, y| match (x < 16, y < 8) {
        (true, true) => Rgb([230, 20, 20]),
        (false, true) => Rgb([20, 230, 20]),
        (true, false) => Rgb([20, 20, 230]),
        (false, false) => Rgb([230, 230, 20]),
    });
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("upright.jpg");
    std::fs::write(&plain, jpeg_with_orientation(&upright, 1)).unwrap();
    let want = decode_and_squish(&plain, MAX, 8, 4, true).unwrap();
    for value in 1..=8u8 {
        let o = Orientation::from_exif(value).unwrap();
        // Stored so that turning it by `o` shows the upright picture.
        let inverse = match o {
            Orientation::Rotate90 => Orientation::Rotate270,
            Orientation::Rotate270 => Orientation::Rotate90,
            other => other,
        };
        let mut stored = DynamicImage::ImageRgb8(upright.clone());
        stored.apply_orientation(inverse);
        let bytes = jpeg_with_orientation(&stored.to_rgb8(), value as u16);
        let file = dir.path().join(format!("o{value}.jpg"));
        std::fs::write(&file, &bytes).unwrap();
        let got = decode_and_squish(&file, MAX, 8, 4, true).unwrap();
        assert_eq!(got.dimensions(), (8, 4), "orientation {value}");
        assert!(
            close(got.as_raw(), want.as_raw(), 6),
            "orientation {value}: {:?} vs {:?}",
            got.as_raw(),
            want.as_raw()
        );
        // From memory (a tar member) the same.
        let mem = decode_bytes_and_squish(&bytes, Path::new("o.jpg"), MAX, 8, 4, true).unwrap();
        assert_eq!(mem, got, "orientation {value}");
        // Off: the pixels as stored, squished.
        let raw = decode_and_squish(&file, MAX, 8, 4, false).unwrap();
        let stored_squished = squish(&decode_file(&file, MAX).unwrap(), 8, 4);
        assert_eq!(raw, stored_squished, "orientation {value}");
        if value != 1 {
            assert!(!close(raw.as_raw(), want.as_raw(), 6), "orientation {value} changes the picture");
        }
        // Preprocess applies it by default.
        let pre = Preprocess { width: 8, height: 4, ..Preprocess::imagenet(4, 8) };
        assert!(pre.exif_orientation);
        assert_eq!(pre.load_rgb(&file).unwrap(), got);
    }
}
