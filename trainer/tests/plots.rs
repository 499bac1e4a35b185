//! The run's plots draw what `metrics.jsonl` says: a real (tiny) run, then every plotted point
//! checked against the line of its epoch, read independently from the file.

use cls_trainer::config::TrainConfig;
use cls_trainer::{launch, plots, runlog};
use serde_json::Value;

fn write_csv(path: &std::path::Path, n: usize) {
    let mut s = String::from("f0,f1,f2,f3,f4,f5,f6,f7,a,b,c,d\n");
    let mut x = 12345u64;
    let mut next = || {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (x >> 11) as f64 / (1u64 << 53) as f64
    };
    for _ in 0..n {
        let f: Vec<f64> = (0..8).map(|_| next()).collect();
        let mut labels: Vec<u8> = (0..4).map(|j| u8::from(f[j] > 0.55)).collect();
        if labels.iter().all(|&l| l == 0) {
            labels[0] = 1;
        }
        let row: Vec<String> = f.iter().map(|v| format!("{v:.5}")).chain(labels.iter().map(u8::to_string)).collect();
        s += &(row.join(",") + "\n");
    }
    std::fs::write(path, s).unwrap();
}

#[test]
fn plotted_series_match_metrics_jsonl_epoch_by_epoch() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("train.csv");
    write_csv(&data, 160);
    let run = tmp.path().join("run");
    let cfg = TrainConfig {
        data: Some(data),
        label_columns: Some(4),
        epochs: 4,
        batch_size: 32,
        lr: 0.01,
        tau_h: Some("0.2".into()),
        e_k: 1.0,
        partial: "0.5".into(),
        mlp_hidden: 16,
        threads: Some(1),
        run_dir: Some(run.clone()),
        cache_dir: Some(tmp.path().join("cache")),
        ..TrainConfig::default()
    };
    launch::start(cfg).unwrap();
    assert!(run.join("plots/selection.png").is_file() && run.join("plots/val_map.png").is_file());

    let lines: Vec<Value> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let by_epoch =
        |e: f64| lines.iter().find(|l| l["epoch"].as_f64() == Some(e)).expect("a line for each plotted epoch");
    assert!(lines[0]["selection"].as_array().unwrap().is_empty(), "epoch 1 selects nothing");
    let log = runlog::read(&run).unwrap();

    let sel = plots::selection_series(&log);
    assert_eq!(sel.len(), 4, "precision and recall of two networks");
    for (i, s) in sel.iter().enumerate() {
        let (net, key) = (i / 2, if i % 2 == 0 { "precision" } else { "recall" });
        let expected: Vec<(f64, f64)> = lines
            .iter()
            .filter_map(|l| Some((l["epoch"].as_f64()?, 100.0 * l["selection"].get(net)?[key].as_f64()?)))
            .collect();
        assert_eq!(s.points, expected, "{}", s.name);
        assert!(!s.points.is_empty() && s.points[0].0 == 2.0, "{}: the first point is epoch 2's", s.name);
        for &(x, y) in &s.points {
            assert_eq!(y, 100.0 * by_epoch(x)["selection"][net][key].as_f64().unwrap());
        }
    }
    let maps = plots::val_map_series(&log);
    assert_eq!(maps.len(), 2);
    for (k, m) in maps.iter().enumerate() {
        assert_eq!(m.points.len(), 4);
        for &(x, y) in &m.points {
            assert_eq!(y, 100.0 * by_epoch(x)["val"][k]["mAP"].as_f64().unwrap());
        }
    }
}
