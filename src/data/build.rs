//! The bundled calibration datasets: `calib_data/build/<name>.parquet`, built from the exllamav3
//! text files in `fixtures/text/` and checked against `calib_data/manifest.json`.
//!
//! Each parquet file holds one row per document in a single `text` column, as HF `datasets`
//! stores a text dataset, so the loaders read it exactly like a downloaded one. The build is
//! deterministic (same sources -> byte-identical files) and refuses sources whose sha256 differs
//! from the manifest.

use crate::bail_input;
use crate::data::textfile::{read_utf8, split_documents, TEXT_COLUMN};
use crate::error::{Error, IoContext, Result};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The manifest, embedded at compile time.
pub const MANIFEST_JSON: &str = include_str!("../../calib_data/manifest.json");
const MANIFEST_NAME: &str = "calib_data/manifest.json";

#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub origin: String,
    pub datasets: Vec<DatasetEntry>,
}

/// How calibration windows are drawn from a dataset (lmdeploy's two procedures).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sampling {
    /// wikitext2 / ptb: join all documents with "\n\n", tokenize once, random windows.
    Joined,
    /// c4: random documents with at least `seqlen` tokens, a random window in each.
    PerDocument,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DatasetEntry {
    /// awqc's name for it (`--calib-dataset NAME`); the output is `NAME.parquet`.
    pub name: String,
    /// The lmdeploy `--calib-dataset` name it stands in for, if any.
    pub lmdeploy_name: Option<String>,
    /// File name in the fixtures text directory.
    pub source_file: String,
    pub source_sha256: String,
    pub source_bytes: u64,
    /// Rows in the built parquet.
    pub documents: usize,
    pub sampling: Sampling,
    pub description: String,
}

impl DatasetEntry {
    pub fn output_file(&self) -> String {
        format!("{}.parquet", self.name)
    }
}

/// The embedded manifest, parsed.
pub fn manifest() -> Result<Manifest> {
    serde_json::from_str(MANIFEST_JSON)
        .map_err(|e| Error::internal(format!("{MANIFEST_NAME} (embedded): {e}")))
}

/// What one build step produced.
#[derive(Debug, Clone)]
pub struct BuiltDataset {
    pub name: String,
    pub source: PathBuf,
    pub path: PathBuf,
    pub documents: usize,
    /// Size and sha256 of the written parquet file.
    pub bytes: u64,
    pub sha256: String,
}

/// Build every dataset of the embedded manifest from `src_dir` into `out_dir`.
pub fn build_calib_data(src_dir: &Path, out_dir: &Path) -> Result<Vec<BuiltDataset>> {
    build_with_manifest(&manifest()?, src_dir, out_dir)
}

/// Build the datasets of `manifest`. All sources are read and verified before anything is
/// written; each parquet file is written atomically (temporary sibling, then rename).
pub fn build_with_manifest(manifest: &Manifest, src_dir: &Path, out_dir: &Path) -> Result<Vec<BuiltDataset>> {
    let mut prepared = Vec::new();
    for entry in &manifest.datasets {
        let source = src_dir.join(&entry.source_file);
        if !source.is_file() {
            bail_input!(source.display(), "missing calibration source (run `make fixtures`)");
        }
        let bytes = std::fs::read(&source).at(source.display())?;
        let sha = sha256_hex(&bytes);
        if sha != entry.source_sha256 {
            bail_input!(
                source.display(),
                "sha256 {sha} does not match {} (expected {} for dataset {}); the file changed or is not the exllamav3 1.6.5 one",
                MANIFEST_NAME,
                entry.source_sha256,
                entry.name
            );
        }
        drop(bytes);
        let docs = split_documents(&source.display().to_string(), &read_utf8(&source)?)?;
        if docs.len() != entry.documents {
            return Err(Error::internal(format!(
                "{}: {} documents, but {MANIFEST_NAME} says {} for dataset {}",
                source.display(),
                docs.len(),
                entry.documents,
                entry.name
            )));
        }
        prepared.push((entry, source, docs));
    }
    std::fs::create_dir_all(out_dir).at(out_dir.display())?;
    let mut built = Vec::new();
    for (entry, source, docs) in prepared {
        let path = out_dir.join(entry.output_file());
        let bytes = documents_to_parquet(&docs).map_err(|e| e.context(path.display()))?;
        crate::fsutil::write_file_atomic(&path, &bytes)?;
        built.push(BuiltDataset {
            name: entry.name.clone(),
            source,
            path,
            documents: docs.len(),
            bytes: bytes.len() as u64,
            sha256: sha256_hex(&bytes),
        });
    }
    Ok(built)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Encode documents as a HF-style text parquet: one nullable utf8 column `text`, one row per
/// document, zstd, no dictionary (text rarely repeats), the HF `datasets` features in the schema
/// metadata. Deterministic for a given parquet crate version.
pub fn documents_to_parquet(docs: &[String]) -> Result<Vec<u8>> {
    use arrow::array::StringArray;
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::record_batch::RecordBatch;
    use parquet::arrow::ArrowWriter;
    use parquet::basic::{Compression, ZstdLevel};
    use parquet::file::properties::WriterProperties;

    let hf_features = format!(
        r#"{{"info": {{"features": {{"{TEXT_COLUMN}": {{"dtype": "string", "_type": "Value"}}}}}}}}"#
    );
    let schema = Arc::new(Schema::new_with_metadata(
        vec![Field::new(TEXT_COLUMN, DataType::Utf8, true)],
        [("huggingface".to_string(), hf_features)].into_iter().collect::<std::collections::HashMap<_, _>>(),
    ));
    // i32 offsets: a single array holds at most 2 GiB of text.
    let total: usize = docs.iter().map(String::len).sum();
    if total > i32::MAX as usize {
        return Err(Error::usage(format!("{total} bytes of text is too large for one parquet string array")));
    }
    let array = StringArray::from_iter_values(docs.iter());
    let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(array)])
        .map_err(|e| Error::internal(format!("building the record batch: {e}")))?;
    let level = ZstdLevel::try_new(3).map_err(|e| Error::internal(e.to_string()))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_dictionary_enabled(false)
        .build();
    let perr = |e: parquet::errors::ParquetError| Error::internal(format!("writing parquet: {e}"));
    let mut out = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut out, schema, Some(props)).map_err(perr)?;
    writer.write(&batch).map_err(perr)?;
    writer.close().map_err(perr)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::textfile::load_documents;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("awqc-build-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn embedded_manifest_parses_and_names_lmdeploy_datasets() {
        let m = manifest().unwrap();
        let names: Vec<&str> = m.datasets.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["wikitext2", "c4", "tiny", "code", "technical", "multilingual"]);
        let c4 = &m.datasets[1];
        assert_eq!((c4.lmdeploy_name.as_deref(), c4.sampling), (Some("c4"), Sampling::PerDocument));
        assert!(m.datasets.iter().all(|d| d.source_sha256.len() == 64));
    }

    fn toy_manifest(src: &Path, text: &str) -> Manifest {
        std::fs::write(src.join("toy.utf8"), text).unwrap();
        Manifest {
            format: 1,
            origin: "test".into(),
            datasets: vec![DatasetEntry {
                name: "toy".into(),
                lmdeploy_name: None,
                source_file: "toy.utf8".into(),
                source_sha256: sha256_hex(text.as_bytes()),
                source_bytes: text.len() as u64,
                documents: 3,
                sampling: Sampling::Joined,
                description: String::new(),
            }],
        }
    }

    #[test]
    fn build_round_trips_and_is_deterministic() {
        let dir = tmpdir("rt");
        let text = "first line é\n\n  second, indented\nthird \u{1F600}\n";
        let m = toy_manifest(&dir, text);
        let out = dir.join("out");
        let a = build_with_manifest(&m, &dir, &out).unwrap();
        let bytes_a = std::fs::read(&a[0].path).unwrap();
        let b = build_with_manifest(&m, &dir, &out).unwrap();
        assert_eq!(std::fs::read(&b[0].path).unwrap(), bytes_a);
        assert_eq!(a[0].sha256, sha256_hex(&bytes_a));
        assert_eq!(&bytes_a[..4], b"PAR1");
        let docs = load_documents(&a[0].path).unwrap();
        assert_eq!(docs, vec!["first line é", "  second, indented", "third \u{1F600}"]);
        // No temporary files are left next to the output.
        let names: Vec<_> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("toy.parquet")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sha_mismatch_is_refused_before_writing() {
        let dir = tmpdir("sha");
        let mut m = toy_manifest(&dir, "a\nb\nc\n");
        m.datasets[0].source_sha256 = "0".repeat(64);
        let out = dir.join("out");
        let e = build_with_manifest(&m, &dir, &out).unwrap_err();
        assert_eq!(e.kind, crate::error::ErrorKind::Input);
        assert!(e.msg.contains("toy.utf8") && e.msg.contains("does not match"), "{}", e.msg);
        assert!(!out.exists(), "nothing may be written when a source is wrong");
        std::fs::remove_file(dir.join("toy.utf8")).unwrap();
        let e = build_with_manifest(&m, &dir, &out).unwrap_err();
        assert!(e.msg.contains("make fixtures"), "{}", e.msg);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn parquet_with_another_column_names_the_columns() {
        use arrow::array::{Int32Array, StringArray};
        use arrow::datatypes::{DataType, Field, Schema};
        let dir = tmpdir("cols");
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int32, false),
            Field::new("content", DataType::Utf8, false),
        ]));
        let batch = arrow::record_batch::RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int32Array::from(vec![1])), Arc::new(StringArray::from(vec!["x"]))],
        )
        .unwrap();
        let p = dir.join("d.parquet");
        let mut w =
            parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&p).unwrap(), schema, None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let e = load_documents(&p).unwrap_err();
        assert!(e.msg.starts_with(&p.display().to_string()), "{}", e.msg);
        assert!(e.msg.contains("no \"text\" column (columns: id (Int32), content (Utf8))"), "{}", e.msg);
        std::fs::write(&p, b"PAR1 not really").unwrap();
        assert!(load_documents(&p).unwrap_err().msg.contains("not a readable parquet file"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn arrow_ipc_stream_with_large_utf8_and_nulls_loads() {
        use arrow::array::LargeStringArray;
        use arrow::datatypes::{DataType, Field, Schema};
        let dir = tmpdir("ipc");
        let schema = Arc::new(Schema::new(vec![Field::new("text", DataType::LargeUtf8, true)]));
        let p = dir.join("data-00000-of-00001.arrow");
        let mut w =
            arrow::ipc::writer::StreamWriter::try_new(std::fs::File::create(&p).unwrap(), &schema).unwrap();
        for rows in [vec![Some("one"), None, Some("")], vec![Some("two")]] {
            let b = arrow::record_batch::RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(LargeStringArray::from(rows))],
            )
            .unwrap();
            w.write(&b).unwrap();
        }
        w.finish().unwrap();
        // Nulls are skipped, empty rows kept (as "\n\n".join would keep them).
        assert_eq!(load_documents(&p).unwrap(), vec!["one", "", "two"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
