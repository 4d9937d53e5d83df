"""Reference token blocks for `--calib-sampling autoawq` and `contiguous` (tests/data_sampling.rs).

Run by scripts/make-calib-fixtures.sh in a venv with pinned transformers. The autoawq blocks follow
AutoAWQ's awq/utils/calib_data.py::get_calib_dataset (HEAD 88e4c76) line by line, with the
dataset's documents in file order instead of a `datasets` shuffle (which awqc cannot reproduce);
the contiguous blocks are the evaluation text's construction. Documents are read as awqc reads a
plain-text file: one per non-blank line.

usage: calib-sampling-fixtures.py TOKENIZER_DIR TEXT_FILE OUT_JSON
"""
import json
import sys

from transformers import AutoTokenizer


def documents(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    lines = [l[:-1] if l.endswith("\r") else l for l in text.split("\n")]
    if any(l.startswith("<doc ") for l in lines):
        raise SystemExit(f"{path}: wikiextractor dumps are not handled here")
    return [l for l in lines if l.strip()]


def autoawq(tokenizer, docs, n_samples, max_seq_len):
    # get_calib_dataset, the loop over `dataset` (a list of documents here).
    samples = []
    kept = []
    n_run = 0
    for i, data in enumerate(docs):
        line = data
        line = line.strip()
        line_encoded = tokenizer.encode(line)
        if len(line_encoded) > max_seq_len:
            continue
        sample = line_encoded
        if len(sample) == 0:
            continue
        samples.append(sample)
        kept.append(i)
        n_run += 1
        if n_run == n_samples:
            break
    cat_samples = [t for s in samples for t in s]
    n_split = len(cat_samples) // max_seq_len
    return kept, [cat_samples[i * max_seq_len:(i + 1) * max_seq_len] for i in range(n_split)]


def contiguous(tokenizer, docs, n, seqlen):
    ids = tokenizer.encode("\n\n".join(docs))
    return [ids[i * seqlen:(i + 1) * seqlen] for i in range(n)]


def main():
    tok_dir, text, out = sys.argv[1:4]
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    docs = documents(text)
    cases = []
    for n, seqlen in [(16, 256), (40, 512)]:
        kept, blocks = autoawq(tokenizer, docs, n, seqlen)
        cases.append({"sampling": "autoawq", "n_samples": n, "seqlen": seqlen, "kept_documents": kept, "blocks": blocks})
    cases.append({"sampling": "contiguous", "n_samples": 3, "seqlen": 256, "blocks": contiguous(tokenizer, docs, 3, 256)})
    import transformers
    doc = {
        "made_by": "scripts/make-calib-fixtures.sh (scripts/calib-sampling-fixtures.py)",
        "transformers": transformers.__version__,
        "tokenizer": tok_dir,
        "text": text,
        "documents": len(docs),
        "cases": cases,
    }
    with open(out, "w", encoding="utf-8") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
