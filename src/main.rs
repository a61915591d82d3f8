use clap::Parser;

fn main() -> std::process::ExitCode {
    wormvault::cli::run(wormvault::cli::Cli::parse())
}
