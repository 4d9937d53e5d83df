#!/usr/bin/env python3
"""Render chat-template fixtures with transformers, for tests/chat_templates.rs.

Run by scripts/make-template-fixtures.sh inside a venv that has the pinned transformers and jinja2
(this script installs nothing). For each template it renders a fixed set of OpenAI-style
conversations through transformers' own `apply_chat_template(..., tokenize=False)` on a tokenizer
that carries the model's special tokens and the template, and writes
tests/fixtures/chat_templates/<name>.json: a list of

    {"name", "messages", "tools", "add_generation_prompt", "normalized", "expected"}

`messages` is the raw OpenAI request form (content null, content-part arrays, tool-call arguments
as JSON strings); `normalized` is what awqc's `normalize_messages` must turn it into (the rules
are restated in `normalize` below); `expected` is transformers' rendering of `normalized`.

    chat-template-fixtures.py --out-dir DIR TEMPLATE_NAME=FILE.jinja ...
    chat-template-fixtures.py --extract-gguf MODEL.gguf OUT.jinja   (tokenizer.chat_template)
"""
import argparse
import copy
import json
import os
import struct
import sys

# The special tokens each model's tokenizer_config.json declares; the template sees them, as
# apply_chat_template passes tokenizer.special_tokens_map. (Qwen2.5 has no BOS token.)
SPECIAL_TOKENS = {
    "smollm2": {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "unk_token": "<|endoftext|>", "pad_token": "<|im_end|>"},
    "qwen2.5": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
    # tests/fixtures/chat_templates/python-compat.jinja: a made-up template, no model.
    "python-compat": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
}

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_current_weather",
        "description": "Get the current weather in a given location",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["location"],
        },
    },
}
SEARCH_TOOL = {
    "type": "function",
    "function": {
        "name": "search_docs",
        "description": "Search the docs for a query & return <= 5 \"hits\" (it's fast)",
        "parameters": {
            "type": "object",
            "properties": {
                "query": {"type": "string"},
                "limit": {"type": "integer", "minimum": 1, "maximum": 5, "default": 3},
                "exact": {"type": "boolean"},
                "boost": {"type": "number", "default": 1.5},
            },
            "required": ["query"],
        },
    },
}


def call(cid, name, arguments):
    return {"id": cid, "type": "function", "function": {"name": name, "arguments": arguments}}


CASES = [
    {"name": "single_user", "messages": [{"role": "user", "content": "Hello!"}]},
    {
        "name": "system_multi_turn",
        "messages": [
            {"role": "system", "content": "You are a terse assistant."},
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "4."},
            {"role": "user", "content": "And times 3?"},
        ],
    },
    {
        "name": "no_system_multi_turn",
        "messages": [
            {"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": "Blue."},
            {"role": "user", "content": "Another one."},
        ],
    },
    {
        "name": "no_generation_prompt",
        "add_generation_prompt": False,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
        ],
    },
    {
        "name": "content_parts",
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "You answer "}, {"type": "text", "text": "in French."}]},
            {"role": "user", "content": [{"type": "text", "text": "Describe "}, {"type": "text", "text": "the sea.\n"}, {"type": "text", "text": "Briefly."}]},
        ],
    },
    {
        "name": "assistant_tool_calls",
        "tools": [WEATHER_TOOL],
        "messages": [
            {"role": "user", "content": "What's the weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [call("call_1", "get_current_weather", '{"location": "Paris, France", "unit": "celsius"}')]},
            {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 22, "condition": "sunny"}'},
        ],
    },
    {
        "name": "parallel_tool_results",
        "tools": [WEATHER_TOOL, SEARCH_TOOL],
        "messages": [
            {"role": "system", "content": "You can call tools."},
            {"role": "user", "content": "Weather in Oslo and Lima?"},
            {
                "role": "assistant",
                "content": "Let me check both.",
                "tool_calls": [
                    call("a", "get_current_weather", '{"location":"Oslo"}'),
                    call("b", "get_current_weather", '{"location": "Lima", "unit": "fahrenheit"}'),
                ],
            },
            {"role": "tool", "tool_call_id": "a", "content": "-3 C, snow"},
            {"role": "tool", "tool_call_id": "b", "content": "70 F, cloudy"},
            {"role": "assistant", "content": "Oslo: -3 C and snowing. Lima: 70 F and cloudy."},
            {"role": "user", "content": "Thanks!"},
        ],
    },
    {
        "name": "tool_result_without_tools",
        "messages": [
            {"role": "user", "content": "Look it up."},
            {"role": "assistant", "content": None, "tool_calls": [call("c9", "search_docs", "not json {")]},
            {"role": "tool", "tool_call_id": "c9", "content": "no results"},
        ],
    },
    {
        "name": "tools_declared_with_system",
        "tools": [WEATHER_TOOL, SEARCH_TOOL],
        "messages": [
            {"role": "system", "content": "You are a helpful assistant with tools."},
            {"role": "user", "content": "Find the install docs."},
        ],
    },
    {
        "name": "tools_declared_no_system",
        "tools": [SEARCH_TOOL],
        "messages": [{"role": "user", "content": "Search for 'quantization'."}],
    },
    {
        "name": "unicode",
        "tools": [WEATHER_TOOL],
        "messages": [
            {"role": "system", "content": "Réponds en français 🇫🇷."},
            {"role": "user", "content": "Quel temps fait-il à Zürich? 中文也可以 😀"},
            {"role": "assistant", "content": None, "tool_calls": [call("u1", "get_current_weather", '{"location": "Zürich, 瑞士 🏔️"}')]},
            {"role": "tool", "tool_call_id": "u1", "content": "Ensoleillé ☀️, 20 °C"},
            {"role": "assistant", "content": "Il fait beau à Zürich ☀️ (20 °C)."},
            {"role": "user", "content": "Merci — 谢谢!"},
        ],
    },
    {
        "name": "html_and_quotes",
        "tools": [SEARCH_TOOL],
        "messages": [
            {"role": "user", "content": "Is 1 < 2 && 3 > 2? Say \"yes\" or 'no'. <b>&amp;</b>"},
            {"role": "assistant", "content": None, "tool_calls": [call("h1", "search_docs", '{"query": "a < b && c > d \\"quoted\\" it\'s", "exact": true, "limit": 2, "boost": 0.25}')]},
            {"role": "tool", "tool_call_id": "h1", "content": "<result>\"ok\" & 'fine'</result>"},
        ],
    },
]


def normalize(messages):
    """What awqc's `normalize_messages` does (src/serve/template.rs), restated."""
    out = []
    for m in messages:
        has_calls = m.get("tool_calls") is not None
        n = {}
        for k, v in m.items():
            if k == "content":
                if v is None:
                    assert has_calls
                    v = ""
                elif isinstance(v, list):
                    assert all(p["type"] == "text" for p in v)
                    v = "".join(p["text"] for p in v)
            elif k == "tool_calls":
                if v is None:
                    continue
                calls = []
                for c in v:
                    c = copy.deepcopy(c)
                    args = c.get("function", {}).get("arguments")
                    if isinstance(args, str):
                        try:
                            decoded = json.loads(args)
                        except ValueError:
                            decoded = None
                        if isinstance(decoded, dict):
                            c["function"]["arguments"] = decoded
                    calls.append(c)
                v = calls
            elif v is None:
                continue
            n[k] = v
        n.setdefault("content", "")
        out.append(n)
    return out


def make_tokenizer(name, template):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    special = SPECIAL_TOKENS[name]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(special.values()))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=next(iter(vocab))))
    return PreTrainedTokenizerFast(tokenizer_object=backend, chat_template=template, **special)


def render_fixtures(name, template):
    tok = make_tokenizer(name, template)
    fixtures = []
    for case in CASES:
        agp = case.get("add_generation_prompt", True)
        tools = case.get("tools")
        normalized = normalize(case["messages"])
        expected = tok.apply_chat_template(
            copy.deepcopy(normalized), tools=copy.deepcopy(tools), add_generation_prompt=agp, tokenize=False
        )
        fixtures.append(
            {
                "name": case["name"],
                "messages": case["messages"],
                "tools": tools,
                "add_generation_prompt": agp,
                "normalized": normalized,
                "expected": expected,
            }
        )
    return fixtures


def gguf_chat_template(path):
    """tokenizer.chat_template from a GGUF file's metadata."""
    scalar = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
    with open(path, "rb") as f:
        def rd(fmt):
            fmt = "<" + fmt
            return struct.unpack(fmt, f.read(struct.calcsize(fmt)))

        def rstr():
            (n,) = rd("Q")
            return f.read(n).decode("utf-8")

        def skip(t):
            if t == 8:
                rstr()
            elif t == 9:
                et, n = rd("IQ")
                if et in scalar:
                    f.seek(n * struct.calcsize(scalar[et]), 1)
                else:
                    for _ in range(n):
                        skip(et)
            else:
                rd(scalar[t])

        if f.read(4) != b"GGUF":
            sys.exit(f"{path}: not a GGUF file")
        _version, _n_tensors, n_kv = rd("IQQ")
        for _ in range(n_kv):
            key = rstr()
            (t,) = rd("I")
            if key == "tokenizer.chat_template" and t == 8:
                return rstr()
            skip(t)
    sys.exit(f"{path}: no tokenizer.chat_template")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", default="tests/fixtures/chat_templates")
    ap.add_argument("--extract-gguf", nargs=2, metavar=("GGUF", "OUT"))
    ap.add_argument("templates", nargs="*", metavar="NAME=FILE")
    args = ap.parse_args()
    if args.extract_gguf:
        with open(args.extract_gguf[1], "w", encoding="utf-8") as f:
            f.write(gguf_chat_template(args.extract_gguf[0]))
        return
    import jinja2
    import transformers

    os.makedirs(args.out_dir, exist_ok=True)
    for spec in args.templates:
        name, path = spec.split("=", 1)
        with open(path, encoding="utf-8") as f:
            template = f.read()
        fixtures = render_fixtures(name, template)
        out = os.path.join(args.out_dir, f"{name}.json")
        with open(out, "w", encoding="utf-8") as f:
            json.dump(fixtures, f, ensure_ascii=False, indent=1)
            f.write("\n")
        print(f"{out}: {len(fixtures)} cases (transformers {transformers.__version__}, jinja2 {jinja2.__version__})")


if __name__ == "__main__":
    main()
