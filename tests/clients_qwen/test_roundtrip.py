"""The course's full function-calling round trip on Qwen2.5-Coder-0.5B-Instruct AWQ, `tool_choice`
"auto", greedy, non-streamed and streamed: the client asks "Compute (3+5)*2", executes whatever calls
it gets (each checked against the schema) and sends the results back, until an answer without
calls (at most MAX_TURNS turns). Qwen's template has native tool syntax (`<tool_call>`), so the
grammar is lazy: it switches on at the tag; bare JSON calls (ollama#12174) are parsed after the fact.

- `test_every_turn_is_well_formed`: the serving contract: every call parses and matches the schema,
  `finish_reason` is "tool_calls" exactly when there are calls, ids are unique, and the streamed
  conversation is the non-streamed one turn by turn (greedy decoding is deterministic).
- `test_final_answer_is_16`: the scenario's goal: add(3, 5), mul(8, 2), an answer containing 16.
  This depends on the model's reasoning, not on the server (see BENCHMARKS.md for what the 0.5B
  model does).

Each conversation is written to out/test-artifacts/tools-qwen-{mode}.json.
"""

import json
from pathlib import Path

import pytest

from clients_test_tools import QUESTION, TOOLS, check_call, stream_answer

ARTIFACTS = Path(__file__).resolve().parents[2] / "out/test-artifacts"
MAX_TURNS = 4
_runs = {}


def turn(client, server, messages, streamed):
    """One assistant turn: (content, [(id, name, arguments)], [finish reasons])."""
    if streamed:
        content, calls, finishes = stream_answer(client, server, messages, tool_choice="auto", max_tokens=256)
        return content, [(cid, name, args) for _, cid, name, args in calls], finishes
    r = client.chat.completions.create(model=server.model, messages=messages, tools=TOOLS, tool_choice="auto",
                                       temperature=0, max_tokens=256)
    c = r.choices[0]
    calls = [(tc.id, tc.function.name, tc.function.arguments) for tc in c.message.tool_calls or []]
    return c.message.content or "", calls, [c.finish_reason]


def conversation(client, server, streamed):
    """The whole conversation, run once per mode: {"messages", "turns", "called", "ids"}."""
    if streamed in _runs:
        return _runs[streamed]
    messages = [{"role": "user", "content": QUESTION}]
    turns, called, ids = [], [], []
    for _ in range(MAX_TURNS):
        content, calls, finishes = turn(client, server, messages, streamed)
        turns.append({"content": content, "tool_calls": [{"name": n, "arguments": a} for _, n, a in calls],
                      "finish_reasons": finishes})
        if not calls:
            break
        ids += [cid for cid, _, _ in calls]
        messages.append({"role": "assistant", "content": content or None, "tool_calls": [
            {"id": cid, "type": "function", "function": {"name": n, "arguments": a}} for cid, n, a in calls]})
        for cid, n, a in calls:
            r = check_call(n, a)
            called.append((n, json.loads(a), r))
            messages.append({"role": "tool", "tool_call_id": cid, "content": str(r)})
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    mode = "streamed" if streamed else "non-streamed"
    run = {"messages": messages, "turns": turns, "called": called, "ids": ids}
    (ARTIFACTS / f"tools-qwen-{mode}.json").write_text(json.dumps(run, indent=1))
    _runs[streamed] = run
    return run


def test_every_turn_is_well_formed(client, server):
    plain = conversation(client, server, False)
    streamed = conversation(client, server, True)
    for run in (plain, streamed):
        assert run["called"], f"no call in {run['turns']}"  # check_call already checked each one
        for t in run["turns"]:
            # An answer without calls ends on the stop token or at max_tokens.
            assert t["finish_reasons"] == ["tool_calls"] if t["tool_calls"] else t["finish_reasons"] in (["stop"], ["length"]), t
        assert len(set(run["ids"])) == len(run["ids"]), f"repeated ids {run['ids']}"
    strip = lambda run: [{k: v for k, v in t.items() if k != "finish_reasons"} for t in run["turns"]]
    assert strip(streamed) == strip(plain), "the streamed conversation differs from the non-streamed one"


@pytest.mark.parametrize("streamed", [False, True], ids=["non-streamed", "streamed"])
def test_final_answer_is_16(client, server, streamed):
    run = conversation(client, server, streamed)
    last = run["turns"][-1]
    assert not last["tool_calls"], f"still calling after {MAX_TURNS} turns: {run['called']}"
    assert 16 in [r for _, _, r in run["called"]], f"no call produced 16: {run['called']}"
    assert "16" in last["content"], f"final answer {last['content']!r}"
