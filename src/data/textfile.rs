//! Document loaders: a text dataset on disk -> a list of documents (`Vec<String>`).
//!
//! One document is what a HF `datasets` row holds in its `text` column. Formats, by extension:
//! - `.parquet`: the `text` column (utf8 / large utf8 / utf8 view / dictionary of those), one
//!   document per row in file order. Empty rows are kept (HF wikitext has many, and lmdeploy's
//!   `"\n\n".join(rows)` keeps them); null rows are skipped.
//! - `.arrow`: a HF `datasets` cache file (Arrow IPC stream, or IPC file), same `text` column rules.
//! - `.jsonl`: one JSON object per line with a string `text` field (blank lines skipped).
//! - anything else is UTF-8 text: a wikiextractor dump (`<doc ...>` / `</doc>` lines around each
//!   article) gives one document per article, the marker lines removed and the article stripped
//!   of surrounding whitespace (Python `str.strip()`); any other text gives one document per
//!   non-blank line (the line as is, minus its `\n` / `\r\n`).

use crate::bail_input;
use crate::error::{catch_decoder_panic, Error, IoContext, Result};
use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, Schema};
use arrow::record_batch::RecordBatch;
use std::path::Path;

/// The column (parquet, arrow) or field (jsonl) that holds the text, as in HF datasets.
pub const TEXT_COLUMN: &str = "text";

/// Load every document of a dataset file. Errors (one line, naming the file): unreadable,
/// non-UTF-8 (with the byte offset), no `text` column or field, no documents at all.
pub fn load_documents(path: &Path) -> Result<Vec<String>> {
    let name = path.display();
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let docs = match ext.as_str() {
        "parquet" => catch_decoder_panic(&name.to_string(), || load_parquet(path))?,
        "arrow" => catch_decoder_panic(&name.to_string(), || load_arrow_ipc(path))?,
        "jsonl" => load_jsonl(path)?,
        _ => split_documents(&name.to_string(), &read_utf8(path)?)?,
    };
    if docs.iter().all(|d| d.is_empty()) {
        bail_input!(name, "no documents (the file is empty or holds only empty text)");
    }
    Ok(docs)
}

/// Read a whole file as UTF-8; a bad byte is reported with its offset and line.
pub fn read_utf8(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).at(path.display())?;
    String::from_utf8(bytes).map_err(|e| {
        let off = e.utf8_error().valid_up_to();
        let line = 1 + e.as_bytes()[..off].iter().filter(|&&b| b == b'\n').count();
        Error::input(path.display(), format!("not valid UTF-8 at byte offset {off} (line {line})"))
    })
}

/// Split plain text into documents: wikiextractor articles if the text has `<doc ...>` and
/// `</doc>` marker lines, else one document per non-blank line. `what` names the source in errors.
pub fn split_documents(what: &str, text: &str) -> Result<Vec<String>> {
    if is_wikiextractor(text) {
        wikiextractor_articles(what, text)
    } else {
        Ok(lines(text).filter(|l| !py_strip(l).is_empty()).map(str::to_string).collect())
    }
}

/// Lines without their terminators (`\n`, or `\r\n`).
fn lines(text: &str) -> impl Iterator<Item = &str> {
    text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l))
}

fn is_doc_open(line: &str) -> bool {
    (line.starts_with("<doc ") || line == "<doc>") && line.ends_with('>')
}

fn is_doc_close(line: &str) -> bool {
    line == "</doc>"
}

fn is_wikiextractor(text: &str) -> bool {
    let mut open = false;
    let mut close = false;
    for l in lines(text) {
        open |= is_doc_open(l);
        close |= is_doc_close(l);
        if open && close {
            return true;
        }
    }
    false
}

/// The articles of a wikiextractor dump, each stripped; empty articles are dropped. Markers must
/// pair up, and no text may sit outside an article (it would be silently lost otherwise).
fn wikiextractor_articles(what: &str, text: &str) -> Result<Vec<String>> {
    let mut docs = Vec::new();
    // Byte offset where the current article's body starts, and the line number of its `<doc>`.
    let mut current: Option<(usize, usize)> = None;
    let mut offset = 0usize;
    for (i, line) in text.split('\n').enumerate() {
        let line_no = i + 1;
        let start = offset;
        offset += line.len() + 1;
        let l = line.strip_suffix('\r').unwrap_or(line);
        if is_doc_open(l) {
            if let Some((_, open_line)) = current {
                bail_input!(what, "line {line_no}: <doc> inside the article opened at line {open_line}");
            }
            current = Some((offset.min(text.len()), line_no));
        } else if is_doc_close(l) {
            let Some((body, _)) = current.take() else {
                bail_input!(what, "line {line_no}: </doc> without a matching <doc>");
            };
            let article = py_strip(text.get(body..start).unwrap_or(""));
            if !article.is_empty() {
                docs.push(article.to_string());
            }
        } else if current.is_none() && !py_strip(l).is_empty() {
            bail_input!(what, "line {line_no}: text outside any <doc> ... </doc> article");
        }
    }
    if let Some((_, open_line)) = current {
        bail_input!(what, "the article opened at line {open_line} has no </doc>");
    }
    Ok(docs)
}

/// Python's `str.isspace()` (Unicode White_Space plus the ASCII separators U+001C..U+001F).
pub fn py_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.strip()` with no argument.
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(py_isspace)
}

fn load_jsonl(path: &Path) -> Result<Vec<String>> {
    let name = path.display();
    let text = read_utf8(path)?;
    let mut docs = Vec::new();
    for (i, line) in lines(&text).enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| Error::input(&name, format!("line {}: not valid JSON: {e}", i + 1)))?;
        let Some(obj) = value.as_object() else {
            bail_input!(name, "line {}: expected a JSON object with a \"{TEXT_COLUMN}\" field", i + 1);
        };
        match obj.get(TEXT_COLUMN) {
            Some(serde_json::Value::String(s)) => docs.push(s.clone()),
            Some(serde_json::Value::Null) => {}
            Some(other) => bail_input!(
                name,
                "line {}: field \"{TEXT_COLUMN}\" is {}, expected a string",
                i + 1,
                json_kind(other)
            ),
            None => {
                let fields: Vec<&str> = obj.keys().map(String::as_str).collect();
                bail_input!(
                    name,
                    "line {}: no \"{TEXT_COLUMN}\" field (fields: {})",
                    i + 1,
                    if fields.is_empty() { "none".to_string() } else { fields.join(", ") }
                );
            }
        }
    }
    Ok(docs)
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Index of the `text` column, or an error listing the columns that do exist.
fn text_column_index(what: &str, schema: &Schema) -> Result<usize> {
    schema.index_of(TEXT_COLUMN).map_err(|_| {
        let cols: Vec<String> =
            schema.fields().iter().map(|f| format!("{} ({})", f.name(), f.data_type())).collect();
        Error::input(
            what,
            format!(
                "no \"{TEXT_COLUMN}\" column (columns: {})",
                if cols.is_empty() { "none".to_string() } else { cols.join(", ") }
            ),
        )
    })
}

fn is_string_type(t: &DataType) -> bool {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        DataType::Dictionary(_, v) => {
            matches!(**v, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
        }
        _ => false,
    }
}

fn check_text_type(what: &str, schema: &Schema, idx: usize) -> Result<()> {
    let t = schema.field(idx).data_type();
    if !is_string_type(t) {
        bail_input!(what, "column \"{TEXT_COLUMN}\" has type {t}, expected a string column");
    }
    Ok(())
}

/// Append the non-null strings of one `text` column chunk.
fn push_strings(what: &str, col: &ArrayRef, docs: &mut Vec<String>) -> Result<()> {
    let col = match col.data_type() {
        DataType::Dictionary(..) => arrow::compute::cast(col, &DataType::LargeUtf8)
            .map_err(|e| Error::input(what, format!("column \"{TEXT_COLUMN}\": {e}")))?,
        _ => col.clone(),
    };
    match col.data_type() {
        DataType::Utf8 => docs.extend(col.as_string::<i32>().iter().flatten().map(str::to_string)),
        DataType::LargeUtf8 => docs.extend(col.as_string::<i64>().iter().flatten().map(str::to_string)),
        DataType::Utf8View => docs.extend(col.as_string_view().iter().flatten().map(str::to_string)),
        t => bail_input!(what, "column \"{TEXT_COLUMN}\" has type {t}, expected a string column"),
    }
    Ok(())
}

fn load_parquet(path: &Path) -> Result<Vec<String>> {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::arrow::ProjectionMask;
    let what = path.display().to_string();
    let file = std::fs::File::open(path).at(&what)?;
    let perr =
        |e: parquet::errors::ParquetError| Error::input(&what, format!("not a readable parquet file: {e}"));
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(perr)?;
    let idx = text_column_index(&what, builder.schema())?;
    check_text_type(&what, builder.schema(), idx)?;
    let mask = ProjectionMask::roots(builder.parquet_schema(), [idx]);
    let reader = builder.with_projection(mask).build().map_err(perr)?;
    let mut docs = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| Error::input(&what, format!("reading parquet rows: {e}")))?;
        push_text_column(&what, &batch, &mut docs)?;
    }
    Ok(docs)
}

fn push_text_column(what: &str, batch: &RecordBatch, docs: &mut Vec<String>) -> Result<()> {
    let Some(col) = batch.column_by_name(TEXT_COLUMN) else {
        bail_input!(what, "a record batch lacks the \"{TEXT_COLUMN}\" column");
    };
    push_strings(what, col, docs)
}

/// arrow-ipc's `FileReader` allocates each block at the size the footer declares before reading
/// it: check first that every block of the footer lies inside the file.
fn check_ipc_file_blocks(what: &str, file: &mut std::fs::File) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let len = file.metadata().at(what)?.len();
    let bad = |msg: String| Error::input(what, format!("not a readable Arrow IPC file: {msg}"));
    if len < 16 {
        return Err(bad(format!("{len} bytes is too short for an IPC file")));
    }
    let mut trailer = [0u8; 10];
    file.seek(SeekFrom::Start(len - 10)).at(what)?;
    file.read_exact(&mut trailer).at(what)?;
    let footer_len = arrow::ipc::reader::read_footer_length(trailer).map_err(|e| bad(e.to_string()))? as u64;
    if footer_len > len - 10 {
        return Err(bad(format!("footer length {footer_len} exceeds the file ({len} bytes)")));
    }
    let mut footer = vec![0u8; footer_len as usize];
    file.seek(SeekFrom::Start(len - 10 - footer_len)).at(what)?;
    file.read_exact(&mut footer).at(what)?;
    file.seek(SeekFrom::Start(0)).at(what)?;
    let footer = arrow::ipc::root_as_footer(&footer).map_err(|e| bad(format!("footer: {e}")))?;
    let blocks = footer.dictionaries().into_iter().flat_map(|v| v.iter()).chain(footer.recordBatches().into_iter().flat_map(|v| v.iter()));
    for b in blocks {
        let (off, meta, body) = (b.offset(), b.metaDataLength(), b.bodyLength());
        let end = u64::try_from(off)
            .ok()
            .zip(u64::try_from(meta).ok())
            .zip(u64::try_from(body).ok())
            .and_then(|((o, m), b)| o.checked_add(m)?.checked_add(b));
        if !matches!(end, Some(e) if e <= len) {
            return Err(bad(format!("a block (offset {off}, {meta} + {body} bytes) lies outside the file ({len} bytes)")));
        }
    }
    Ok(())
}

/// HF `datasets` cache files are Arrow IPC *streams*; plain IPC files (magic `ARROW1`) work too.
fn load_arrow_ipc(path: &Path) -> Result<Vec<String>> {
    use arrow::ipc::reader::{FileReader, StreamReader};
    let what = path.display().to_string();
    let mut file = std::fs::File::open(path).at(&what)?;
    let mut magic = [0u8; 6];
    let is_file_format = {
        use std::io::{Read, Seek};
        let n = file.read(&mut magic).at(&what)?;
        file.seek(std::io::SeekFrom::Start(0)).at(&what)?;
        n == 6 && &magic == b"ARROW1"
    };
    let aerr =
        |e: arrow::error::ArrowError| Error::input(&what, format!("not a readable Arrow IPC file: {e}"));
    let mut docs = Vec::new();
    let batches: Box<dyn Iterator<Item = std::result::Result<RecordBatch, arrow::error::ArrowError>>> =
        if is_file_format {
            check_ipc_file_blocks(&what, &mut file)?;
            let r = FileReader::try_new_buffered(file, None).map_err(aerr)?;
            let idx = text_column_index(&what, &r.schema())?;
            check_text_type(&what, &r.schema(), idx)?;
            Box::new(r)
        } else {
            let r = StreamReader::try_new_buffered(file, None).map_err(aerr)?;
            let idx = text_column_index(&what, &r.schema())?;
            check_text_type(&what, &r.schema(), idx)?;
            Box::new(r)
        };
    for batch in batches {
        let batch = batch.map_err(aerr)?;
        push_text_column(&what, &batch, &mut docs)?;
    }
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("awqc-textfile-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d.join(name)
    }

    #[test]
    fn wikiextractor_articles_are_stripped_and_markers_removed() {
        let text = "<doc id=\"1\" url=\"u\" title=\"A\">\nA\n\nFirst  body.\nMore.\n\n</doc>\n\
                    <doc id=\"2\" title=\"B\">\n \t\n</doc>\n<doc id=\"3\" title=\"C\">\r\nC\r\n\r\nx\r\n</doc>\r\n\n";
        let docs = split_documents("t", text).unwrap();
        // Article 2 is whitespace only and is dropped; CRLF files work too.
        assert_eq!(docs, vec!["A\n\nFirst  body.\nMore.", "C\r\n\r\nx"]);
    }

    #[test]
    fn wikiextractor_structure_errors_name_the_line() {
        let e = split_documents("f.txt", "<doc id=\"1\">\na\n<doc id=\"2\">\n</doc>\n</doc>\n").unwrap_err();
        assert!(e.msg.starts_with("f.txt: line 3: <doc> inside"), "{}", e.msg);
        let e = split_documents("f.txt", "<doc id=\"1\">\na\n</doc>\nstray\n<doc id=\"2\">\n</doc>\n")
            .unwrap_err();
        assert!(e.msg.contains("line 4: text outside"), "{}", e.msg);
        let e = split_documents("f.txt", "<doc id=\"1\">\na\n</doc>\n<doc id=\"2\">\nb\n").unwrap_err();
        assert!(e.msg.contains("opened at line 4 has no </doc>"), "{}", e.msg);
    }

    #[test]
    fn plain_text_is_one_document_per_non_blank_line() {
        let docs = split_documents("t", "  indented line\n\n \t \nsecond\r\nthird").unwrap();
        assert_eq!(docs, vec!["  indented line", "second", "third"]);
        // "<doc" inside code is not a wikiextractor marker.
        let docs = split_documents("t", "#include <doctest/doctest.h>\nint x;\n").unwrap();
        assert_eq!(docs.len(), 2);
    }

    #[test]
    fn py_strip_matches_python() {
        // python3 -c "print(repr('\x1c\u00a0 a b\u2003\x1f'.strip()))"  -> 'a b'
        assert_eq!(py_strip("\u{1c}\u{a0} a b\u{2003}\u{1f}"), "a b");
        assert_eq!(py_strip("\u{200b}x"), "\u{200b}x"); // zero-width space is not whitespace
    }

    #[test]
    fn non_utf8_and_empty_files_fail_with_file_name() {
        let p = tmp("bad.txt");
        std::fs::write(&p, b"ok line\nsecond \xff line\n").unwrap();
        let e = load_documents(&p).unwrap_err();
        assert!(e.msg.starts_with(&p.display().to_string()), "{}", e.msg);
        assert!(e.msg.contains("byte offset 15 (line 2)"), "{}", e.msg);

        let p = tmp("empty.txt");
        std::fs::write(&p, b"\n  \n\n").unwrap();
        let e = load_documents(&p).unwrap_err();
        assert!(e.msg.contains("no documents"), "{}", e.msg);

        let e = load_documents(&tmp("missing.txt")).unwrap_err();
        assert_eq!(e.kind, crate::error::ErrorKind::Io);
        assert!(e.msg.contains("missing.txt"), "{}", e.msg);
    }

    #[test]
    fn jsonl_reads_text_field_and_reports_missing_field() {
        let p = tmp("a.jsonl");
        std::fs::write(&p, "{\"text\": \"one\", \"id\": 1}\n\n{\"text\": \"two\\nlines\"}\n").unwrap();
        assert_eq!(load_documents(&p).unwrap(), vec!["one", "two\nlines"]);
        std::fs::write(&p, "{\"text\": \"one\"}\n{\"content\": \"x\", \"id\": 2}\n").unwrap();
        let e = load_documents(&p).unwrap_err();
        assert!(e.msg.contains("line 2: no \"text\" field (fields: content, id)"), "{}", e.msg);
        std::fs::write(&p, "{\"text\": 3}\n").unwrap();
        assert!(load_documents(&p).unwrap_err().msg.contains("is a number"));
        std::fs::write(&p, "not json\n").unwrap();
        assert!(load_documents(&p).unwrap_err().msg.contains("line 1: not valid JSON"));
    }
}
