//! Sanity check of the pretrained EfficientNet-Lite0 (not a test): load the converted ImageNet
//! weights with their 1000-class `_fc`, classify images (squished to 224×224, ImageNet
//! normalisation) and print the top-5 ImageNet classes of each. With `LITE0_ONNX=out.onnx` it also
//! exports the network (sigmoid probabilities of the 1000 classes) for checking with ONNX Runtime.
//!
//! ```text
//! scripts/convert-efficientnet-lite0 /tmp/lite0.safetensors
//! cargo run --release -p cls-models --example lite0_sanity -- /tmp/lite0.safetensors IMAGE...
//! ```

use anyhow::{bail, Context, Result};
use cls_models::{export_onnx, load_pretrained, Arch, ExportMeta, Net};
use tch::nn::VarStore;
use tch::vision::imagenet;
use tch::Device;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        bail!("usage: lite0_sanity WEIGHTS.safetensors IMAGE...");
    }
    let mut vs = VarStore::new(Device::Cpu);
    let net = Net::new(&vs.root(), &Arch::EfficientNetLite0, 1000, None);
    let report = load_pretrained(&mut vs, args[0].as_ref(), true)?;
    println!(
        "loaded {} backbone + {} classifier tensors; {} unused keys",
        report.loaded,
        report.classifier_loaded,
        report.unused.len()
    );
    for path in &args[1..] {
        let x = imagenet::load_image_and_resize224(path).with_context(|| format!("loading {path}"))?;
        let probs = tch::no_grad(|| net.forward_t(&x.unsqueeze(0), false).softmax(-1, tch::Kind::Float));
        let (p, idx) = probs.topk(5, -1, true, true);
        let p = Vec::<f32>::try_from(&p.view(-1))?;
        let idx = Vec::<i64>::try_from(&idx.view(-1))?;
        println!("{path}:");
        for (p, i) in p.iter().zip(&idx) {
            println!("  {i:4} {:5.1}%  {}", p * 100.0, imagenet::CLASSES[*i as usize]);
        }
    }
    if let Ok(out) = std::env::var("LITE0_ONNX") {
        let meta = ExportMeta {
            classes: imagenet::CLASSES.iter().map(|c| c.to_string()).collect(),
            height: 224,
            width: 224,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
            threshold: 0.5,
            thresholds: None,
            class_ids: None,
            extra: vec![],
        };
        export_onnx(&[(&net, &vs)], &Arch::EfficientNetLite0, &meta, out.as_ref())?;
        println!("wrote {out}");
    }
    Ok(())
}
