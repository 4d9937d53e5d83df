"""The course's function-calling client, as README shows it: two tools, "Compute (3+5)*2", every
call executed and its result sent back, until an answer without calls.

    python scripts/tools-client.py [--base-url http://127.0.0.1:23333/v1] [--tool-choice auto]
        [--question TEXT] [--system TEXT] [--temperature T --top-p P --seed N]

Needs `pip install openai` (scripts/serve-client-tests.sh's venv out/venv-clients has it).
"""
import argparse
import json

from openai import OpenAI

p = argparse.ArgumentParser()
p.add_argument("--base-url", default="http://127.0.0.1:23333/v1")
p.add_argument("--api-key", default="none")
p.add_argument("--tool-choice", default="auto")
p.add_argument("--max-turns", type=int, default=4)
# For trying other phrasings and sampling (BENCHMARKS.md); the defaults are the course's scenario.
p.add_argument("--question", default="Compute (3+5)*2")
p.add_argument("--system", help="a system message before the question")
p.add_argument("--temperature", type=float, default=0.0)
p.add_argument("--top-p", type=float, default=1.0)
p.add_argument("--seed", type=int)
a = p.parse_args()

client = OpenAI(base_url=a.base_url, api_key=a.api_key)
model = client.models.list().data[0].id
tools = [
    {"type": "function", "function": {"name": "add", "description": "Add two integers.",
        "parameters": {"type": "object", "properties": {"a": {"type": "int"}, "b": {"type": "int"}}, "required": ["a", "b"]}}},
    {"type": "function", "function": {"name": "mul", "description": "Multiply two integers.",
        "parameters": {"type": "object", "properties": {"a": {"type": "int"}, "b": {"type": "int"}}, "required": ["a", "b"]}}},
]
funcs = {"add": lambda a, b: a + b, "mul": lambda a, b: a * b}
messages = ([{"role": "system", "content": a.system}] if a.system else []) + [{"role": "user", "content": a.question}]
for _ in range(a.max_turns):
    r = client.chat.completions.create(model=model, messages=messages, tools=tools,
                                       tool_choice=a.tool_choice, temperature=a.temperature, top_p=a.top_p,
                                       seed=a.seed, max_tokens=128)
    msg = r.choices[0].message
    print(f"finish_reason={r.choices[0].finish_reason}")
    if not msg.tool_calls:
        print(f"answer: {msg.content}")
        break
    messages.append(msg)  # the assistant message with its tool_calls, as the client got it
    for call in msg.tool_calls:
        args = json.loads(call.function.arguments)
        result = funcs[call.function.name](**args)
        print(f"  {call.id}: {call.function.name}({call.function.arguments}) = {result}")
        messages.append({"role": "tool", "tool_call_id": call.id, "content": str(result)})
