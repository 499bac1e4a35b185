//! Helpers for the end-to-end tests: locate the release binaries, generate small datasets.

use std::path::{Path, PathBuf};

/// `target/<profile>/<name>`, next to the test executable's `deps/` folder.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
    let p = dir.join(name);
    assert!(p.exists(), "{} not built: run `cargo build --release` first (scripts/test does)", p.display());
    p
}

/// A tiny deterministic generator (no dependency on the crates under test).
pub struct Lcg(pub u64);
impl Lcg {
    pub fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A learnable feature table: 4 labels, label j on when feature j (plus noise) is high.
pub fn write_csv(path: &Path, n: usize, seed: u64) {
    let mut r = Lcg(seed);
    let mut s = String::from("f0,f1,f2,f3,f4,f5,f6,f7,a,b,c,d\n");
    for _ in 0..n {
        let f: Vec<f64> = (0..8).map(|_| r.next()).collect();
        let mut labels: Vec<u8> = (0..4).map(|j| u8::from(f[j] + 0.2 * r.next() > 0.7)).collect();
        if labels.iter().all(|&l| l == 0) {
            labels[0] = 1;
        }
        let row: Vec<String> = f.iter().map(|v| format!("{v:.5}")).chain(labels.iter().map(u8::to_string)).collect();
        s += &(row.join(",") + "\n");
    }
    std::fs::write(path, s).unwrap();
}

/// A small image dataset: coloured squares on grey, classes "red", "green", "blue" by the
/// squares present: PNGs in `dir/<name>/` and the JSONL manifest `dir/<name>.jsonl`.
pub fn write_images(dir: &Path, n: usize, seed: u64, name: &str) -> PathBuf {
    let mut r = Lcg(seed);
    std::fs::create_dir_all(dir.join(name)).unwrap();
    let mut manifest = String::new();
    for i in 0..n {
        let mut img = image::RgbImage::from_pixel(40, 40, image::Rgb([128, 128, 128]));
        let mut labels = Vec::new();
        for (c, cname) in ["red", "green", "blue"].iter().enumerate() {
            if r.next() < 0.45 || (c == 2 && labels.is_empty()) {
                labels.push(format!("\"{cname}\""));
                let (x0, y0) = ((r.next() * 28.0) as u32, (r.next() * 28.0) as u32);
                let mut px = [40u8, 40, 40];
                px[c] = 230;
                for y in y0..y0 + 12 {
                    for x in x0..x0 + 12 {
                        img.put_pixel(x, y, image::Rgb(px));
                    }
                }
            }
        }
        let file = format!("{name}/{i:03}.png");
        img.save(dir.join(&file)).unwrap();
        manifest += &format!("{{\"image\": \"{file}\", \"labels\": [{}]}}\n", labels.join(", "));
    }
    let m = dir.join(format!("{name}.jsonl"));
    std::fs::write(&m, manifest).unwrap();
    m
}

/// The project's Python (the `.venv` that scripts/setup makes, with onnx and onnxruntime).
pub fn venv_python() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(p.exists(), "{} missing: run scripts/setup", p.display());
    p
}
