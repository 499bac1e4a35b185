//! TEMPORARY local stand-in for `cls_core::preprocess` (not yet in core when this was written):
//! the same names and behaviour, to be replaced by `pub use cls_core::preprocess::*`.

use image::{ImageReader, RgbImage};
use std::path::Path;

#[derive(Debug, Clone)]
pub struct Preprocess {
    pub height: u32,
    pub width: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub max_pixels: u64,
}

impl Preprocess {
    pub fn imagenet(height: u32, width: u32) -> Self {
        Preprocess { height, width, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225], max_pixels: 100_000_000 }
    }
}

pub fn decode_file(path: &Path, max_pixels: u64) -> Result<RgbImage, String> {
    let open = || ImageReader::open(path).map_err(|e| e.to_string())?.with_guessed_format().map_err(|e| e.to_string());
    let (w, h) = open()?.into_dimensions().map_err(|e| e.to_string())?;
    if u64::from(w) * u64::from(h) > max_pixels {
        return Err(format!("{w}x{h} pixels is over the limit of {max_pixels}"));
    }
    Ok(open()?.decode().map_err(|e| e.to_string())?.to_rgb8())
}

pub fn squish(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    image::imageops::resize(img, width, height, image::imageops::FilterType::Triangle)
}

pub fn normalize_into(img: &RgbImage, mean: [f32; 3], std: [f32; 3], out: &mut [f32]) {
    let plane = (img.width() * img.height()) as usize;
    for (i, p) in img.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane + i] = (f32::from(p[c]) / 255.0 - mean[c]) / std[c];
        }
    }
}
