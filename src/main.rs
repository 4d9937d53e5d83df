//! The `awqc` command: parse the command line, run one subcommand, map errors to exit codes
//! (see `awqc::error::ErrorKind`).

use clap::Parser;

/// glibc: serve every allocation up to 32 MiB from the heap and keep up to 64 MiB of freed heap
/// instead of returning it to the kernel. By default glibc maps large blocks fresh (and unmaps them
/// on free) until its adaptive threshold has grown; a long prompt's step allocates tens of MiB
/// of activations per layer, and the page faults and zeroing of fresh pages on one thread cost a
/// fifth of the prefill time (BENCHMARKS.md). The same values glibc's own adaptation reaches,
/// set from the start.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator() {
    extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
    }
    const M_TRIM_THRESHOLD: i32 = -1;
    const M_MMAP_THRESHOLD: i32 = -3;
    // SAFETY: mallopt only changes glibc's allocator parameters; called before any thread starts.
    unsafe {
        mallopt(M_MMAP_THRESHOLD, 32 << 20);
        mallopt(M_TRIM_THRESHOLD, 64 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

fn main() {
    tune_allocator();
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
