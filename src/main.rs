//! The `awqc` command: parse the command line, run one subcommand, map errors to exit codes
//! (see `awqc::error::ErrorKind`).

use clap::Parser;

fn main() {
    let cli = awqc::cli::Cli::parse();
    awqc::progress::set_quiet(cli.json || cli.quiet);
    match awqc::cli::run(cli) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("awqc: error: {e}");
            std::process::exit(e.exit_code());
        }
    }
}
