//! `awqc data build`: turn the fetched exllamav3 text files into the bundled parquet datasets.

use crate::error::Result;
use serde_json::json;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub cmd: DataCmd,
}

#[derive(clap::Subcommand, Debug)]
pub enum DataCmd {
    /// Build calib_data/build/*.parquet from the text fixtures (sha256-checked against calib_data/manifest.json).
    Build {
        /// Directory holding wiki.utf8, c4.utf8, ...
        #[arg(long, default_value = "fixtures/text")]
        src: PathBuf,
        #[arg(long, default_value = "calib_data/build")]
        out: PathBuf,
    },
}

pub fn run(a: Args, json: bool) -> Result<()> {
    match a.cmd {
        DataCmd::Build { src, out } => {
            let built = crate::data::build::build_calib_data(&src, &out)?;
            if json {
                crate::cli::print_json(&json!({"out": out.display().to_string(), "datasets": built.len()}));
            } else {
                for b in &built {
                    println!("{b:?}");
                }
            }
        }
    }
    Ok(())
}
