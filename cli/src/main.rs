use clap::Parser;

use basalt_cli::args::{Cli, Command};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("basalt: cannot start: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let r = rt.block_on(async {
        match &cli.command {
            Command::Up(a) => basalt_cli::up::up(a).await,
            _ => basalt_cli::commands::run(&cli)
                .await
                .map(|p| basalt_cli::commands::print(&cli, &p)),
        }
    });
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("basalt: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
