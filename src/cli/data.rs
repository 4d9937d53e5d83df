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
                let rows: Vec<_> = built
                    .iter()
                    .map(|b| json!({"name": b.name, "source": b.source.display().to_string(), "path": b.path.display().to_string(),
                        "documents": b.documents, "bytes": b.bytes, "sha256": b.sha256}))
                    .collect();
                crate::cli::print_json(&json!({"out": out.display().to_string(), "datasets": rows}));
            } else {
                println!("{:<14} {:>9} {:>10}  file", "dataset", "documents", "bytes");
                for b in &built {
                    println!("{:<14} {:>9} {:>10}  {}", b.name, b.documents, b.bytes, b.path.display());
                }
            }
        }
    }
    Ok(())
}
