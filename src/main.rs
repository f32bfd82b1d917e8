//! The `data-export` binary: a thin shell over the library.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    data_export::telemetry::init();
    let cli = data_export::cli::Cli::parse();
    let result = match data_export::config::Config::from_env() {
        Ok(config) => data_export::cli::run(cli, config).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
