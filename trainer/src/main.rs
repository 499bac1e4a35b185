use clap::Parser;

/// cls-train: Co-Label Selection for multi-label learning with partial labels.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
}
