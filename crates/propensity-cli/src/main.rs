use clap::Parser;
use propensity_cli::{Cli, LogFormat};
use tracing_subscriber::EnvFilter;

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    // The daemon and backfill log what they schedule; the other commands print results.
    let default = match cli.command {
        propensity_cli::Command::Daemon { .. } | propensity_cli::Command::Backfill { .. } => "info",
        _ => "warn",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    // Not locked for the whole command: the daemon's threads log to stderr too.
    let code = propensity_cli::execute(cli, &mut std::io::stdout(), &mut std::io::stderr());
    std::process::exit(code);
}
