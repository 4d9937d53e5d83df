//! The `awqc` command: parse the command line, run one subcommand, map errors to exit codes
//! (see `awqc::error::ErrorKind`).

use clap::Parser;

fn main() {
    let cli = match awqc::cli::Cli::try_parse() {
        Ok(c) => c,
        // --help and --version print as clap formats them; a bad flag is one `awqc: error:` line
        // (clap's message up to its usage hint, without its own "error: " prefix) and exit
        // code 2, like every other usage error.
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            let text = e.to_string();
            let msg: Vec<&str> = text.lines().take_while(|l| !l.trim().is_empty()).map(str::trim).collect();
            eprintln!("awqc: error: {}", msg.join(" ").trim_start_matches("error: "));
            std::process::exit(2);
        }
    };
    awqc::progress::set_quiet(cli.json || cli.quiet);
    match awqc::cli::run(cli) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("awqc: error: {e}");
            std::process::exit(e.exit_code());
        }
    }
}
