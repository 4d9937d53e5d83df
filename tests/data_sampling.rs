//! Text data end to end on the real fixtures: the bundled parquet build, the pinned evaluation
//! text, the SmolLM2 tokenizer (chunked encoding == whole-string encoding) and lmdeploy's
//! calibration sampling, with the expected indices computed by a Python re-implementation.
//!
//! Fixtures: `$AWQC_FIXTURES` (default `<crate>/fixtures`): `text/*.utf8` and
//! `smollm2-hf/tokenizer.json` (or `$AWQC_TEST_TOKENIZER`). Missing fixtures fail the test.

use awqc::data::build::{build_calib_data, manifest, sha256_hex};
use awqc::data::calib::{per_document_windows, sample_blocks, CalibConfig, CalibSampling};
use awqc::data::eval_text::{eval_text, raw_text, windows};
use awqc::data::textfile::{load_documents, split_documents};
use awqc::data::tokenizer::{split_for_encoding, ChunkRule, Tokenizer};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn fixtures() -> PathBuf {
    match std::env::var_os("AWQC_FIXTURES") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures")),
    }
}

fn fixture(rel: &str) -> PathBuf {
    let p = fixtures().join(rel);
    assert!(p.exists(), "{}: missing test fixture; run `make fixtures`", p.display());
    p
}

fn text_dir() -> PathBuf {
    fixture("text")
}

/// The real SmolLM2 tokenizer directory (tokenizer.json + tokenizer_config.json).
fn smollm2_dir() -> PathBuf {
    match std::env::var_os("AWQC_TEST_TOKENIZER") {
        Some(p) if !p.is_empty() => {
            let p = PathBuf::from(p);
            assert!(p.is_file(), "{}: AWQC_TEST_TOKENIZER does not exist", p.display());
            p.parent().map(Path::to_path_buf).unwrap_or_default()
        }
        _ => fixture("smollm2-hf/tokenizer.json").parent().unwrap().to_path_buf(),
    }
}

fn smollm2() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| Tokenizer::from_model_dir(&smollm2_dir()).unwrap())
}

/// Reference encoding: the `tokenizers` crate on the whole string in one call.
fn whole_encoding(tokenizer_json: &[u8], text: &str) -> Vec<u32> {
    let t = tokenizers::Tokenizer::from_bytes(tokenizer_json).unwrap();
    t.encode(text, true).unwrap().get_ids().to_vec()
}

/// Pre-tokenizer pieces of `text` (byte-level characters), independent of the vocabulary.
fn pieces(tokenizer_json: &[u8], text: &str) -> Vec<String> {
    use tokenizers::PreTokenizer;
    let t = tokenizers::Tokenizer::from_bytes(tokenizer_json).unwrap();
    let mut pre = tokenizers::PreTokenizedString::from(text);
    t.get_pre_tokenizer().unwrap().pre_tokenize(&mut pre).unwrap();
    pre.get_splits(tokenizers::OffsetReferential::Original, tokenizers::OffsetType::Byte)
        .into_iter()
        .map(|(p, _, _)| p.to_string())
        .collect()
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("awqc-data-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The bundled datasets built once into a temporary directory.
fn built_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = tmpdir("built");
        build_calib_data(&text_dir(), &d).unwrap();
        d
    })
}

#[test]
fn calib_data_build_is_deterministic_and_matches_manifest() {
    let a = tmpdir("build-a");
    let b = tmpdir("build-b");
    let built_a = build_calib_data(&text_dir(), &a).unwrap();
    let built_b = build_calib_data(&text_dir(), &b).unwrap();
    let m = manifest().unwrap();
    assert_eq!(built_a.len(), m.datasets.len());
    for ((x, y), entry) in built_a.iter().zip(&built_b).zip(&m.datasets) {
        let bytes = std::fs::read(&x.path).unwrap();
        assert_eq!(bytes, std::fs::read(&y.path).unwrap(), "{} differs between builds", x.name);
        assert_eq!(x.sha256, sha256_hex(&bytes));
        assert_eq!(x.path.file_name().unwrap().to_str().unwrap(), format!("{}.parquet", entry.name));
        // The parquet rows are exactly the documents of the source text.
        let rows = load_documents(&x.path).unwrap();
        let src = std::fs::read_to_string(text_dir().join(&entry.source_file)).unwrap();
        assert_eq!(rows, split_documents("src", &src).unwrap(), "{}", x.name);
        assert_eq!(rows.len(), entry.documents, "{}", x.name);
        eprintln!("{:>13}: {:>6} docs, {:>8} bytes, sha256 {}", x.name, x.documents, x.bytes, x.sha256);
    }
    // The wikitext2 rows joined are the pinned evaluation text.
    let wiki = load_documents(&a.join("wikitext2.parquet")).unwrap();
    assert_eq!(wiki.join("\n\n"), eval_text(&fixture("text/wiki.utf8")).unwrap());
    std::fs::remove_dir_all(&a).unwrap();
    std::fs::remove_dir_all(&b).unwrap();
}

#[test]
fn manifest_sha_mismatch_is_refused() {
    let src = tmpdir("sha-src");
    for f in std::fs::read_dir(text_dir()).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, src.join(f.file_name().unwrap())).unwrap();
    }
    // One changed byte in c4.utf8 (a space becomes an underscore: still valid UTF-8).
    let c4 = src.join("c4.utf8");
    let mut bytes = std::fs::read(&c4).unwrap();
    let pos = bytes.iter().position(|&b| b == b' ').unwrap();
    bytes[pos] = b'_';
    std::fs::write(&c4, &bytes).unwrap();
    let out = src.join("out");
    let e = build_calib_data(&src, &out).unwrap_err();
    assert!(e.msg.starts_with(&c4.display().to_string()), "{}", e.msg);
    assert!(e.msg.contains("does not match calib_data/manifest.json"), "{}", e.msg);
    assert!(!out.exists(), "nothing is written when a source fails its check");
    std::fs::remove_dir_all(&src).unwrap();
}

// Expected values from a Python re-implementation of the same rules:
// python3 -c "
// t=open('fixtures/text/wiki.utf8',encoding='utf-8').read(); arts=[]; cur=None
// for l in t.split('\n'):
//     if l.startswith('<doc ') and l.endswith('>'): cur=[]
//     elif l=='</doc>': arts.append('\n'.join(cur).strip()); cur=None
//     elif cur is not None: cur.append(l)
// j='\n\n'.join(arts); print(len(arts), len(j), len(j.encode()))"   -> 2349 1834858 1839852
#[test]
fn pinned_eval_text_from_wiki() {
    let wiki = fixture("text/wiki.utf8");
    let text = eval_text(&wiki).unwrap();
    assert_eq!((text.chars().count(), text.len()), (1_834_858, 1_839_852));
    assert_eq!(load_documents(&wiki).unwrap().len(), 2349);
    assert!(text.starts_with(
        "2007 European Parliament election in Romania\n\nRomania elected its members of the European Parliament"
    ));
    assert!(!text.lines().any(|l| l.starts_with("<doc") || l == "</doc>"));
    assert_eq!(text, text.trim());
    assert_eq!(raw_text(&wiki).unwrap().len(), 2_093_275);
}

#[test]
fn smollm2_tokenizer_facts() {
    let tok = smollm2();
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!((tok.bos_id(), tok.eos_id()), (Some(1), Some(2)));
    assert!(tok.chat_template().is_some_and(|t| t.contains("<|im_start|>")));
    assert_eq!(tok.chunk_rule(), Some(ChunkRule::Gpt2));
    // add_bos_token is false: no BOS; individual digits; exact round trip.
    let s = "Hello world! 2024\n\n<|im_start|>user";
    let ids = tok.encode(s).unwrap();
    assert_ne!(ids[0], 1);
    assert!(ids.contains(&1), "special token <|im_start|> is matched in text: {ids:?}");
    assert_eq!(tok.decode(&ids).unwrap(), s);
    let digits = tok.encode("2024").unwrap();
    assert_eq!(digits.len(), 4);
}

/// Chunked encoding equals one-call encoding on every bundled text, for the real tokenizer.
#[test]
fn smollm2_chunked_encoding_equals_whole_on_all_texts() {
    let json = std::fs::read(smollm2_dir().join("tokenizer.json")).unwrap();
    let tok = smollm2();
    for entry in manifest().unwrap().datasets {
        let docs = load_documents(&text_dir().join(&entry.source_file)).unwrap();
        let text = docs.join("\n\n");
        let chunks = split_for_encoding(&text, ChunkRule::Gpt2, 64 * 1024);
        assert!(chunks.len() > 2, "{}: only {} chunks, chunking not exercised", entry.name, chunks.len());
        let t0 = std::time::Instant::now();
        let ours = tok.encode(&text).unwrap();
        let t_ours = t0.elapsed();
        let t0 = std::time::Instant::now();
        let whole = whole_encoding(&json, &text);
        let t_whole = t0.elapsed();
        assert_eq!(ours.len(), whole.len(), "{}", entry.name);
        assert!(ours == whole, "{}: chunked and whole encodings differ", entry.name);
        eprintln!(
            "{:>13}: {:>7} tokens, {:>3} chunks, chunked {:?}, whole {:?}",
            entry.name,
            ours.len(),
            chunks.len(),
            t_ours,
            t_whole
        );
    }
}

// The Split patterns of Llama-3 and Qwen2 tokenizer.json files. The ASCII-alnum cut rule is
// checked on the SmolLM2 vocabulary with those pre-tokenizers (byte-level BPE works with any
// split). Punctuation before "\n\n" must not be a cut there: ` ?[^\s\p{L}\p{N}]+[\r\n]*`.
#[test]
fn llama3_and_qwen2_split_rules_keep_encoding_identical() {
    const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    let base: serde_json::Value =
        serde_json::from_slice(&std::fs::read(smollm2_dir().join("tokenizer.json")).unwrap()).unwrap();
    let wiki = eval_text(&fixture("text/wiki.utf8")).unwrap();
    let code = load_documents(&fixture("text/code.utf8")).unwrap().join("\n\n");
    let dir = tmpdir("split");
    for (name, pattern) in [("llama3", LLAMA3), ("qwen2", QWEN2)] {
        let mut j = base.clone();
        j["normalizer"] = serde_json::json!({"type": "NFC"});
        j["pre_tokenizer"] = serde_json::json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]});
        let bytes = serde_json::to_vec(&j).unwrap();
        let p = dir.join(format!("{name}.json"));
        std::fs::write(&p, &bytes).unwrap();
        let tok = Tokenizer::from_file(&p).unwrap();
        assert_eq!(tok.chunk_rule(), Some(ChunkRule::AsciiAlnum), "{name}");
        for (what, text) in [("wiki", &wiki), ("code", &code)] {
            assert!(split_for_encoding(text, ChunkRule::AsciiAlnum, 64 * 1024).len() > 2);
            assert!(tok.encode(text).unwrap() == whole_encoding(&bytes, text), "{name} on {what}");
        }
        // The weaker GPT-2 rule would be wrong here: "x.\n\nY" pre-tokenizes differently cut.
        let whole = pieces(&bytes, "Some words.\n\nNext");
        assert_eq!(whole[2], ".\u{10a}\u{10a}", "{name}: {whole:?}"); // byte-level "\n" is U+010A
        assert_ne!(whole, [pieces(&bytes, "Some words."), pieces(&bytes, "\n\nNext")].concat(), "{name}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

// python3 -c "import random; L=458532; random.seed(0); print([random.randint(0, L - 512) for _ in range(8)])"
#[test]
fn wikitext2_sampling_matches_lmdeploy_indices() {
    let tok = smollm2();
    let tokens = tok.encode(&eval_text(&fixture("text/wiki.utf8")).unwrap()).unwrap();
    assert_eq!(tokens.len(), 458_532, "SmolLM2 token count of the pinned text changed");
    let cfg = CalibConfig {
        dataset: "wikitext2".into(),
        sampling: CalibSampling::Lmdeploy,
        n_samples: 8,
        seqlen: 512,
        seed: 0,
        data_dir: built_dir().to_path_buf(),
    };
    let blocks = sample_blocks(&cfg, tok).unwrap();
    let starts = [442720usize, 201979, 397386, 220500, 21225, 135746, 268055, 254766];
    assert_eq!(blocks.len(), 8);
    for (b, &s) in blocks.iter().zip(&starts) {
        assert_eq!(&b[..], &tokens[s..s + 512]);
    }
    // And the evaluation windows of the same stream: non-overlapping, tail dropped.
    let w = windows(&tokens, 2048, None);
    assert_eq!(w.len(), 458_532 / 2048);
    assert_eq!(w[1], &tokens[2048..4096]);
}

// Document token counts (SmolLM2, no BOS) dumped from Rust, then the lmdeploy c4 loop in Python:
// python3 -c "
// import random, json; lens=json.load(open('/tmp/c4lens.json')); random.seed(0); out=[]
// for _ in range(8):
//     while True:
//         i=random.randint(0,len(lens)-1)
//         if lens[i]>=512: break
//     j=random.randint(0,lens[i]-512); out.append((i,j))
// print(out)"
#[test]
fn c4_sampling_matches_lmdeploy_indices() {
    let tok = smollm2();
    let docs = load_documents(&fixture("text/c4.utf8")).unwrap();
    let lens: Vec<usize> = docs.iter().map(|d| tok.encode(d).unwrap().len()).collect();
    assert_eq!(lens.len(), 584);
    assert_eq!(lens.iter().sum::<usize>(), 301_853, "SmolLM2 token count of c4 changed");
    assert_eq!(lens.iter().filter(|&&n| n >= 512).count(), 167);
    let picks = per_document_windows("c4", docs.len(), 8, 512, 0, |i| Ok(lens[i])).unwrap();
    let want = [(223, 4134), (142, 288), (97, 513), (103, 90), (444, 647), (561, 28), (1, 78), (64, 97)];
    assert_eq!(picks, want);
    let cfg = CalibConfig {
        dataset: "c4".into(),
        sampling: CalibSampling::Lmdeploy,
        n_samples: 8,
        seqlen: 512,
        seed: 0,
        data_dir: built_dir().to_path_buf(),
    };
    let blocks = sample_blocks(&cfg, tok).unwrap();
    for (b, &(doc, j)) in blocks.iter().zip(&want) {
        let ids = tok.encode(&docs[doc]).unwrap();
        assert_eq!(&b[..], &ids[j..j + 512]);
    }
    // No c4 document has 10000 tokens: an error naming the longest, not an endless loop.
    let e = sample_blocks(&CalibConfig { seqlen: 10_000, n_samples: 1, ..cfg }, tok).unwrap_err();
    assert!(e.msg.contains("longest has 6957"), "{}", e.msg);
}

#[test]
fn a_file_path_is_a_dataset_sampled_like_wikitext2() {
    let tok = smollm2();
    let dir = tmpdir("custom");
    let p = dir.join("mine.jsonl");
    let docs: Vec<String> = (0..200).map(|i| format!("Document {i} talks about topic {}.", i % 7)).collect();
    let lines: Vec<String> = docs.iter().map(|d| serde_json::json!({ "text": d }).to_string()).collect();
    std::fs::write(&p, lines.join("\n")).unwrap();
    let cfg = CalibConfig {
        dataset: p.display().to_string(),
        sampling: CalibSampling::Lmdeploy,
        n_samples: 5,
        seqlen: 64,
        seed: 0,
        data_dir: built_dir().to_path_buf(),
    };
    let blocks = sample_blocks(&cfg, tok).unwrap();
    let tokens = tok.encode(&docs.join("\n\n")).unwrap();
    let starts = awqc::data::calib::joined_window_starts("t", tokens.len(), 5, 64, 0).unwrap();
    for (b, &s) in blocks.iter().zip(&starts) {
        assert_eq!(&b[..], &tokens[s..s + 64]);
    }
    // Too little text for one block: the error says how many tokens there are.
    let e = sample_blocks(&CalibConfig { seqlen: tokens.len() + 1, ..cfg }, tok).unwrap_err();
    assert!(e.msg.contains(&format!("only {} tokens", tokens.len())), "{}", e.msg);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--calib-sampling autoawq` and `contiguous` on the bundled c4 against the blocks that AutoAWQ's
/// `get_calib_dataset` loop and the contiguous construction give in Python with transformers'
/// tokenizer (tests/fixtures/calib_sampling/c4-smollm2.json, made by
/// scripts/make-calib-fixtures.sh).
#[test]
fn autoawq_and_contiguous_sampling_match_the_python_reference() {
    let tok = smollm2();
    let path = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/calib_sampling/c4-smollm2.json"));
    let fx: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let docs = load_documents(&fixture("text/c4.utf8")).unwrap();
    assert_eq!(fx["documents"].as_u64(), Some(docs.len() as u64), "the fixture was made from another c4 text");
    let cases = fx["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 3);
    for case in cases {
        let sampling = match case["sampling"].as_str().unwrap() {
            "autoawq" => CalibSampling::Autoawq,
            "contiguous" => CalibSampling::Contiguous,
            other => panic!("unknown sampling {other}"),
        };
        let (n, seqlen) = (case["n_samples"].as_u64().unwrap() as usize, case["seqlen"].as_u64().unwrap() as usize);
        let want: Vec<Vec<u32>> = serde_json::from_value(case["blocks"].clone()).unwrap();
        assert!(!want.is_empty() && want.iter().all(|b| b.len() == seqlen));
        let cfg = CalibConfig { dataset: "c4".into(), sampling, n_samples: n, seqlen, seed: 0, data_dir: built_dir().to_path_buf() };
        let got = sample_blocks(&cfg, tok).unwrap();
        assert_eq!(got.len(), want.len(), "{sampling:?} n={n} seqlen={seqlen}: block count");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(g == w, "{sampling:?} n={n} seqlen={seqlen}: block {i} differs");
        }
        if sampling == CalibSampling::Autoawq {
            // AutoAWQ's under-sampling: n documents of at most seqlen tokens give fewer blocks.
            assert!(got.len() < n);
            // The seed plays no part.
            assert_eq!(sample_blocks(&CalibConfig { seed: 7, ..cfg.clone() }, tok).unwrap(), got);
        }
    }
    // Not enough text: errors that say how much there is.
    let cfg = CalibConfig { dataset: "c4".into(), sampling: CalibSampling::Contiguous, n_samples: 100_000, seqlen: 512, seed: 0, data_dir: built_dir().to_path_buf() };
    let e = sample_blocks(&cfg, tok).unwrap_err();
    assert!(e.msg.contains("contiguous sampling") && e.msg.contains("fewer than 100000 blocks"), "{}", e.msg);
    let e = sample_blocks(&CalibConfig { sampling: CalibSampling::Autoawq, n_samples: 1, seqlen: 100_000, ..cfg }, tok).unwrap_err();
    assert!(e.msg.contains("less than one block") && e.msg.contains("--calib-samples"), "{}", e.msg);
}
