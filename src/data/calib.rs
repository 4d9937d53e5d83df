//! Calibration data: a dataset name (as `lmdeploy lite auto_awq --calib-dataset`) or a file, and
//! the token blocks drawn from it exactly as lmdeploy draws them (awq-reference §1.1,
//! `lmdeploy/lite/utils/calib_dataloader.py`), with CPython's RNG ([`PyRandom`]) seeded once:
//!
//! - joined (`wikitext2`, the extra bundled sets, any file): all documents joined with "\n\n",
//!   tokenized once (L tokens), then `n` times `i = randint(0, L - seqlen)`, window `[i, i+seqlen)`.
//! - per document (`c4`): per sample, draw `i = randint(0, docs - 1)` until document i tokenizes
//!   to at least `seqlen` tokens, then `j = randint(0, len - seqlen)`, window `[j, j+seqlen)`.
//!
//! `--calib-sampling autoawq` and `contiguous` replace these with AutoAWQ's construction and with
//! the evaluation text's ([`CalibSampling`]), so that a comparison with those tools (or a
//! calibration without sampling noise) is like for like.
//!
//! Given the same documents and the same token ids this reproduces lmdeploy's samples. The
//! bundled texts stand in for the HF datasets, which cannot be downloaded here, so the samples are
//! "same procedure, different corpus" relative to a real lmdeploy run.

use crate::data::build::{manifest, DatasetEntry, Sampling};
use crate::data::pyrandom::PyRandom;
use crate::data::textfile::{load_documents, py_strip};
use crate::data::tokenizer::Tokenizer;
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// How the blocks are drawn from the documents (`--calib-sampling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CalibSampling {
    /// lmdeploy's procedure for the dataset: random windows of the joined text (wikitext2 and
    /// files) or of random long-enough documents (c4), seeded.
    #[default]
    Lmdeploy,
    /// AutoAWQ's `get_calib_dataset`: documents in order (no shuffle), each stripped and
    /// tokenized, those over `seqlen` tokens skipped, the first `n_samples` kept ones
    /// concatenated and cut into `seqlen` blocks (fewer blocks than `n_samples`, remainder dropped).
    Autoawq,
    /// Documents joined with "\n\n", tokenized once, the first `n_samples` consecutive blocks:
    /// the construction of the evaluation text.
    Contiguous,
}

/// What to sample. lmdeploy's defaults: `wikitext2`, 128 samples, seqlen 2048, seed 0.
#[derive(Debug, Clone)]
pub struct CalibConfig {
    /// A bundled dataset name (see calib_data/manifest.json) or a path to a dataset file.
    pub dataset: String,
    pub sampling: CalibSampling,
    pub n_samples: usize,
    pub seqlen: usize,
    pub seed: u64,
    /// Where the bundled parquet files are (see [`default_data_dir`]).
    pub data_dir: PathBuf,
}

impl Default for CalibConfig {
    fn default() -> Self {
        CalibConfig {
            dataset: "wikitext2".into(),
            sampling: CalibSampling::Lmdeploy,
            n_samples: 128,
            seqlen: 2048,
            seed: 0,
            data_dir: default_data_dir(),
        }
    }
}

/// `$AWQC_CALIB_DIR`, else `<crate root>/calib_data/build`.
pub fn default_data_dir() -> PathBuf {
    match std::env::var_os("AWQC_CALIB_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/calib_data/build")),
    }
}

/// lmdeploy dataset names that are not bundled (their sources cannot be fetched here).
const NOT_BUNDLED: &[&str] =
    &["ptb", "pileval", "gsm8k", "neuralmagic_calibration", "open-platypus", "openwebtext"];

/// A resolved dataset: where it is and how to sample it.
#[derive(Debug, Clone)]
pub struct ResolvedDataset {
    pub path: PathBuf,
    pub sampling: Sampling,
    /// The manifest entry when it is a bundled dataset.
    pub bundled: Option<DatasetEntry>,
}

/// Where the dataset `name` is: a bundled name -> `data_dir/<name>.parquet`, else a file path.
pub fn resolve_dataset(name: &str, data_dir: &Path) -> Result<PathBuf> {
    Ok(resolve(name, data_dir)?.path)
}

/// [`resolve_dataset`] plus the sampling procedure that goes with the dataset.
pub fn resolve(name: &str, data_dir: &Path) -> Result<ResolvedDataset> {
    let m = manifest()?;
    let available = || {
        let names: Vec<&str> = m.datasets.iter().map(|d| d.name.as_str()).collect();
        format!("available: {}, or a path to a .parquet/.arrow/.jsonl/.txt file", names.join(", "))
    };
    if let Some(entry) = m.datasets.iter().find(|d| d.name == name) {
        let path = data_dir.join(entry.output_file());
        if !path.is_file() {
            return Err(Error::input(
                path.display(),
                format!("bundled dataset {name} is not built (run `awqc data build` or `make calib-data`)"),
            ));
        }
        return Ok(ResolvedDataset { path, sampling: entry.sampling, bundled: Some(entry.clone()) });
    }
    if NOT_BUNDLED.contains(&name) {
        return Err(Error::usage(format!(
            "calibration dataset {name}: not bundled (its source cannot be downloaded here); {}",
            available()
        )));
    }
    let path = PathBuf::from(name);
    if path.is_file() {
        return Ok(ResolvedDataset { path, sampling: Sampling::Joined, bundled: None });
    }
    Err(Error::usage(format!("calibration dataset {name}: no such dataset or file; {}", available())))
}

/// `cfg.n_samples` blocks of exactly `cfg.seqlen` tokens, drawn as lmdeploy does.
/// `n_samples == 0` returns no blocks without reading anything (data-free RTN).
pub fn sample_blocks(cfg: &CalibConfig, tok: &Tokenizer) -> Result<Vec<Vec<u32>>> {
    if cfg.n_samples == 0 {
        return Ok(Vec::new());
    }
    if cfg.seqlen == 0 {
        return Err(Error::usage("calibration seqlen must be at least 1"));
    }
    let ds = resolve(&cfg.dataset, &cfg.data_dir)?;
    let what = ds.path.display().to_string();
    let docs = load_documents(&ds.path)?;
    if let Some(entry) = &ds.bundled {
        if docs.len() != entry.documents {
            return Err(Error::input(
                &what,
                format!(
                    "{} documents, the manifest says {}: stale build (run `awqc data build`)",
                    docs.len(),
                    entry.documents
                ),
            ));
        }
    }
    match (cfg.sampling, ds.sampling) {
        (CalibSampling::Autoawq, _) => autoawq_blocks(&what, &docs, cfg.n_samples, cfg.seqlen, |d| tok.encode(d)),
        (CalibSampling::Contiguous, _) => {
            let tokens = tok.encode(&docs.join("\n\n"))?;
            contiguous_blocks(&what, &tokens, cfg.n_samples, cfg.seqlen)
        }
        (CalibSampling::Lmdeploy, Sampling::Joined) => {
            let tokens = tok.encode(&docs.join("\n\n"))?;
            let starts = joined_window_starts(&what, tokens.len(), cfg.n_samples, cfg.seqlen, cfg.seed)?;
            Ok(starts.into_iter().map(|i| tokens[i..i + cfg.seqlen].to_vec()).collect())
        }
        (CalibSampling::Lmdeploy, Sampling::PerDocument) => {
            // Tokens of the documents long enough to be picked; lengths of all seen.
            let mut long_docs: HashMap<usize, Vec<u32>> = HashMap::new();
            let mut lengths: HashMap<usize, usize> = HashMap::new();
            let picks = per_document_windows(&what, docs.len(), cfg.n_samples, cfg.seqlen, cfg.seed, |i| {
                if let Some(&n) = lengths.get(&i) {
                    return Ok(n);
                }
                let ids = tok.encode(&docs[i])?;
                let n = ids.len();
                lengths.insert(i, n);
                if n >= cfg.seqlen {
                    long_docs.insert(i, ids);
                }
                Ok(n)
            })?;
            picks
                .into_iter()
                .map(|(doc, j)| {
                    let ids = long_docs
                        .get(&doc)
                        .ok_or_else(|| Error::internal(format!("c4 sampling: document {doc} not cached")))?;
                    Ok(ids[j..j + cfg.seqlen].to_vec())
                })
                .collect()
        }
    }
}

/// AutoAWQ's `get_calib_dataset` on documents in order ([`CalibSampling::Autoawq`]): `encode`
/// tokenizes one stripped document (special tokens included, as `tokenizer.encode`).
pub fn autoawq_blocks(what: &str, docs: &[String], n_docs: usize, seqlen: usize, mut encode: impl FnMut(&str) -> Result<Vec<u32>>) -> Result<Vec<Vec<u32>>> {
    let mut cat: Vec<u32> = Vec::new();
    let mut kept = 0;
    for d in docs {
        if kept == n_docs {
            break;
        }
        let ids = encode(py_strip(d))?;
        if ids.len() > seqlen || ids.is_empty() {
            continue;
        }
        cat.extend_from_slice(&ids);
        kept += 1;
    }
    let blocks: Vec<Vec<u32>> = cat.chunks_exact(seqlen).map(|c| c.to_vec()).collect();
    if blocks.is_empty() {
        return Err(Error::input(
            what,
            format!("autoawq sampling: {kept} documents of at most {seqlen} tokens gave {} tokens, less than one block of {seqlen} (raise --calib-samples: it counts documents here)", cat.len()),
        ));
    }
    Ok(blocks)
}

/// The first `n` consecutive `seqlen` blocks of `tokens` ([`CalibSampling::Contiguous`]).
pub fn contiguous_blocks(what: &str, tokens: &[u32], n: usize, seqlen: usize) -> Result<Vec<Vec<u32>>> {
    if tokens.len() < n * seqlen {
        return Err(Error::input(
            what,
            format!("contiguous sampling: the joined text has {} tokens, fewer than {n} blocks of {seqlen}", tokens.len()),
        ));
    }
    Ok(tokens.chunks_exact(seqlen).take(n).map(|c| c.to_vec()).collect())
}

/// lmdeploy's wikitext2 window starts over a stream of `total` tokens.
pub fn joined_window_starts(
    what: &str,
    total: usize,
    n: usize,
    seqlen: usize,
    seed: u64,
) -> Result<Vec<usize>> {
    if total == 0 {
        return Err(Error::input(what, "the dataset tokenizes to no tokens"));
    }
    if total < seqlen {
        return Err(Error::input(
            what,
            format!("the dataset has only {total} tokens, fewer than one block of seqlen {seqlen}"),
        ));
    }
    let mut rng = PyRandom::new(seed);
    Ok((0..n).map(|_| rng.randint(0, (total - seqlen) as u64) as usize).collect())
}

/// lmdeploy's c4 picks: `(document, window start)` per sample. `len_of(i)` is the token count of
/// document i (the caller caches it). If a whole round of `n_docs` draws in a row finds nothing
/// long enough, every document is measured once: if none has `seqlen` tokens this is an error
/// (lmdeploy would loop forever). That check draws no random numbers, so picks stay identical.
pub fn per_document_windows(
    what: &str,
    n_docs: usize,
    n: usize,
    seqlen: usize,
    seed: u64,
    mut len_of: impl FnMut(usize) -> Result<usize>,
) -> Result<Vec<(usize, usize)>> {
    if n_docs == 0 {
        return Err(Error::input(what, "the dataset has no documents"));
    }
    let mut rng = PyRandom::new(seed);
    let mut checked = false;
    let mut picks = Vec::with_capacity(n);
    for _ in 0..n {
        let mut misses = 0usize;
        let (doc, len) = loop {
            let i = rng.randint(0, (n_docs - 1) as u64) as usize;
            let len = len_of(i)?;
            if len >= seqlen {
                break (i, len);
            }
            misses += 1;
            if misses >= n_docs && !checked {
                let mut longest = 0;
                for d in 0..n_docs {
                    longest = longest.max(len_of(d)?);
                    if longest >= seqlen {
                        break;
                    }
                }
                if longest < seqlen {
                    return Err(Error::input(
                        what,
                        format!("no document has seqlen {seqlen} tokens (the longest has {longest})"),
                    ));
                }
                checked = true;
            }
        };
        let j = rng.randint(0, (len - seqlen) as u64) as usize;
        picks.push((doc, j));
    }
    Ok(picks)
}

#[cfg(test)]
mod tests {
    use super::*;

    // python3 -c "import random; random.seed(0); print([random.randint(0, 1000 - 100) for _ in range(8)])"
    // python3 -c "import random; random.seed(3); print([random.randint(0, 64 - 16) for _ in range(5)])"
    #[test]
    fn joined_starts_match_python() {
        let s = joined_window_starts("t", 1000, 8, 100, 0).unwrap();
        assert_eq!(s, [864, 394, 776, 430, 41, 265, 523, 497]);
        let s = joined_window_starts("t", 64, 5, 16, 3).unwrap();
        assert_eq!(s, [15, 37, 34, 8, 23]);
        // Exactly one block: every start is 0.
        assert_eq!(joined_window_starts("t", 16, 3, 16, 0).unwrap(), [0, 0, 0]);
        let e = joined_window_starts("data.txt", 15, 1, 16, 0).unwrap_err();
        assert!(e.msg.contains("data.txt") && e.msg.contains("only 15 tokens"), "{}", e.msg);
    }

    // The c4 loop re-implemented in Python:
    // python3 -c "
    // import random
    // lens=[5, 120, 30, 300, 99, 100, 7, 250]; seqlen=100
    // random.seed(0); out=[]
    // for _ in range(6):
    //     while True:
    //         i=random.randint(0,len(lens)-1)
    //         if lens[i]>=seqlen: break
    //     j=random.randint(0,lens[i]-seqlen); out.append((i,j))
    // print(out)"
    #[test]
    fn per_document_picks_match_python() {
        let lens = [5usize, 120, 30, 300, 99, 100, 7, 250];
        let picks = per_document_windows("t", lens.len(), 6, 100, 0, |i| Ok(lens[i])).unwrap();
        assert_eq!(picks, [(7, 103), (7, 91), (3, 129), (1, 19), (1, 2), (5, 0)]);
    }

    #[test]
    fn per_document_guard_stops_instead_of_looping() {
        let lens = [5usize, 99, 30];
        let e = per_document_windows("c4.parquet", 3, 1, 100, 0, |i| Ok(lens[i])).unwrap_err();
        assert!(e.msg.contains("c4.parquet") && e.msg.contains("longest has 99"), "{}", e.msg);
        // One rare long document among many short ones is still found (the guard lets it be).
        let mut lens = vec![1usize; 50];
        lens[37] = 100;
        let picks = per_document_windows("t", 50, 3, 100, 0, |i| Ok(lens[i])).unwrap();
        assert_eq!(picks, [(37, 0), (37, 0), (37, 0)]);
    }

    #[test]
    fn unknown_and_unbundled_names_list_what_exists() {
        let dir = std::env::temp_dir();
        let e = resolve_dataset("ptb", &dir).unwrap_err();
        assert!(e.msg.contains("ptb") && e.msg.contains("not bundled"), "{}", e.msg);
        assert!(e.msg.contains("wikitext2, c4, tiny") && e.msg.contains("a path to a .parquet"), "{}", e.msg);
        let e = resolve_dataset("no-such-set", &dir).unwrap_err();
        assert!(e.msg.contains("no-such-set") && e.msg.contains("available: wikitext2"), "{}", e.msg);
        let empty = dir.join(format!("awqc-calib-empty-{}", std::process::id()));
        let e = resolve_dataset("c4", &empty).unwrap_err();
        assert!(e.msg.contains("c4.parquet") && e.msg.contains("awqc data build"), "{}", e.msg);
    }

    #[test]
    fn zero_samples_reads_nothing() {
        let json = crate::data::tokenizer::test_support::trained_tokenizer_json(&["abc"], 260);
        let p = crate::data::tokenizer::test_support::write_tmp("calib-tok.json", &json);
        let tok = Tokenizer::from_file(&p).unwrap();
        let cfg = CalibConfig { dataset: "does-not-exist".into(), n_samples: 0, ..CalibConfig::default() };
        assert!(sample_blocks(&cfg, &tok).unwrap().is_empty());
    }
}
