//! build(), MethodConfig, Reduction, the τ tables.

use super::common::*;
use cls_trainer::methods::*;
use tch::{Device, Kind, Tensor};

// ---------- registry, configuration, τ tables ----------

#[test]
fn build_knows_every_method_and_rejects_the_rest() {
    for method in MethodName::all() {
        let name = method.as_str();
        assert_eq!(name.parse::<MethodName>().unwrap(), *method);
        let m = build(name, &MethodConfig::default(), 10, 4, Device::Cpu).unwrap();
        assert_eq!(m.name(), name);
        let two = ["cls", "cls-h", "cls-l", "clc", "co-teaching", "co-teaching-plus", "jocor"].contains(&name);
        assert_eq!(m.num_networks(), if two { 2 } else { 1 }, "{name}");
    }
    let err = build("cls-x", &MethodConfig::default(), 10, 4, Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("cls-x") && err.contains("co-teaching-plus"), "{err}");
    let bad = MethodConfig { tau_h: 1.5, ..MethodConfig::default() };
    let err = build("cls", &bad, 10, 4, Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("tau_h"), "{err}");
    assert!(build("role", &MethodConfig::default(), 0, 4, Device::Cpu).is_err());
}

#[test]
fn reduction_parses_and_serialises_lowercase() {
    assert_eq!("sum".parse::<Reduction>().unwrap(), Reduction::Sum);
    assert_eq!("Mean".parse::<Reduction>().unwrap(), Reduction::Mean);
    assert!("avg".parse::<Reduction>().is_err());
    assert_eq!(serde_json::to_string(&Reduction::Mean).unwrap(), "\"mean\"");
    let cfg = MethodConfig { reduction: Reduction::Mean, ll_delta: Some(0.1), ..MethodConfig::default() };
    let back: MethodConfig = serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
    assert_eq!(back, cfg);
    let partial: MethodConfig = serde_json::from_str(r#"{"tau_h": 0.02}"#).unwrap();
    assert_eq!(partial.tau_h, 0.02);
    assert_eq!(partial.tau_l, 0.06);
    assert_eq!(partial.e_k, 10.0);
}

#[test]
fn paper_tau_table_and_auto_tau() {
    assert_eq!(default_tau("VOC2007", "0.75"), Some((0.002, 0.02)));
    assert_eq!(default_tau("voc", "single"), Some((0.005, 0.02)));
    assert_eq!(default_tau("coco2014", "0.5"), Some((0.010, 0.06)));
    assert_eq!(default_tau("COCO", "0.25"), Some((0.012, 0.06)));
    assert_eq!(default_tau("nus-wide", "0.50"), Some((0.012, 0.06)));
    assert_eq!(default_tau("nuswide", "single"), Some((0.020, 0.06)));
    assert_eq!(default_tau("corel5k", "single"), None);
    assert_eq!(default_tau("coco", "0.6"), None);
    assert_eq!(default_tau("coco", "full"), None);
    // τ_l and EM's α follow the family whatever the protocol column (labels as given included).
    for partial in ["given", "full", "entry:0.3", "0.6"] {
        assert_eq!(default_tau("voc", partial), None);
    }
    assert_eq!(paper_tau_l("VOCdevkit/VOC2007"), Some(0.02));
    assert_eq!(paper_tau_l("coco2014"), Some(0.06));
    assert_eq!(paper_tau_l("nus-wide"), Some(0.06));
    assert_eq!(paper_tau_l("corel5k"), None);
    assert_eq!((paper_em_alpha("VOC2012"), paper_em_alpha("coco"), paper_em_alpha("mine")), (0.2, 0.1, 0.1));
    // h = (k − k_obs)/(C − k_obs): (2.9 − 1)/(80 − 1) = 0.02405; τ_h = h/2.
    close(auto_tau_h(2.9, 1.0, 80.0), 1.9 / 79.0 / 2.0, "COCO single");
    assert_eq!(auto_tau_h(1.0, 2.0, 80.0), 0.0);
    assert_eq!(auto_tau_h(3.0, 3.0, 3.0), 0.0);
    assert_eq!(auto_tau_h(70.0, 0.0, 60.0), 0.5);
}

#[test]
fn half_precision_logits_are_computed_in_f32() {
    let mut rng = Lcg(77);
    let (x, y) = (rng.logits(4, 6), rng.labels(4, 6));
    for name in ["an", "asl", "hill", "epr"] {
        let mut m = build(name, &MethodConfig::default(), 4, 6, Device::Cpu).unwrap();
        let (yt, it) = (t(&y), Tensor::arange(4, (Kind::Int64, Device::Cpu)));
        let ctx = StepCtx { y: &yt, indices: &it, epoch: 0, lr: 1e-3 };
        // The quantised logits are exact in bf16, so the losses agree to f32 precision.
        let full = m.step(&[t(&x)], &ctx);
        let half = m.step(&[t(&x).to_kind(Kind::BFloat16)], &ctx);
        assert_eq!(half.loss.kind(), Kind::Float);
        close(vec_f(&half.loss)[0], vec_f(&full.loss)[0], name);
    }
}
