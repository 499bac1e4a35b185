use clap::Parser;

/// cls-infer: tag image folders with an exported CLS model (ONNX Runtime).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
}
