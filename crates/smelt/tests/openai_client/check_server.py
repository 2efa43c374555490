"""Drive a running `smelt serve` with the official OpenAI Python client.

Run by crates/smelt/tests/server.rs with OPENAI_BASE_URL / OPENAI_API_KEY / SMELT_MODEL_ID set.
Prints one line per check and exits non-zero on the first failure.
"""

import json
import os
import sys

import openai
from openai import OpenAI

client = OpenAI(base_url=os.environ["OPENAI_BASE_URL"], api_key=os.environ["OPENAI_API_KEY"], max_retries=0, timeout=300)
MODEL = os.environ["SMELT_MODEL_ID"]
ASK = [
    {"role": "system", "content": "Answer concisely."},
    {"role": "user", "content": "What is the capital of France?"},
]


def check(name, cond, detail=""):
    if not cond:
        print(f"FAIL {name}: {detail}", flush=True)
        sys.exit(1)
    print(f"ok   {name}", flush=True)


# models
models = client.models.list()
check("models.list", [m.id for m in models.data] == [MODEL], [m.id for m in models.data])

# chat, non-streaming
r = client.chat.completions.create(model=MODEL, messages=ASK, temperature=0, max_tokens=24)
text = r.choices[0].message.content
check("chat: answer", "Paris" in text, text)
check("chat: finish_reason", r.choices[0].finish_reason in ("stop", "length"), r.choices[0].finish_reason)
check("chat: usage", r.usage.prompt_tokens > 10 and r.usage.completion_tokens > 0
      and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, r.usage)

# the same system prompt again: its prefix is served from the cache
r2 = client.chat.completions.create(model=MODEL, messages=ASK[:1] + [{"role": "user", "content": "And of Italy?"}],
                                    temperature=0, max_tokens=8)
cached = r2.usage.prompt_tokens_details.cached_tokens
check("chat: cached prompt tokens reported", cached and cached >= 10, r2.usage)

# length finish
r = client.chat.completions.create(model=MODEL, messages=ASK, temperature=0, max_tokens=2)
check("chat: finish_reason length", r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 2, r)

# streaming with usage
stream = client.chat.completions.create(model=MODEL, messages=ASK, temperature=0, max_tokens=24, stream=True,
                                        stream_options={"include_usage": True})
pieces, finish, usage, roles = [], None, None, []
for chunk in stream:
    if chunk.usage is not None:
        usage = chunk.usage
    for c in chunk.choices:
        if c.delta.role:
            roles.append(c.delta.role)
        if c.delta.content:
            pieces.append(c.delta.content)
        if c.finish_reason:
            finish = c.finish_reason
streamed = "".join(pieces)
check("stream: same text as non-streaming", streamed == text, (streamed, text))
check("stream: role then finish", roles[:1] == ["assistant"] and finish in ("stop", "length"), (roles, finish))
check("stream: usage chunk", usage is not None and usage.completion_tokens > 0, usage)

# seed reproducibility with sampling on
a = client.chat.completions.create(model=MODEL, messages=ASK, temperature=0.9, seed=1234, max_tokens=16)
b = client.chat.completions.create(model=MODEL, messages=ASK, temperature=0.9, seed=1234, max_tokens=16)
check("seed: same output", a.choices[0].message.content == b.choices[0].message.content,
      (a.choices[0].message.content, b.choices[0].message.content))

# json_schema: the output parses and matches
schema = {"type": "object", "properties": {"city": {"type": "string"}, "population_millions": {"type": "number"}},
          "required": ["city", "population_millions"], "additionalProperties": False}
r = client.chat.completions.create(
    model=MODEL, temperature=0, max_tokens=64,
    messages=[{"role": "user", "content": "Give the capital of France and its population as JSON."}],
    response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema, "strict": True}})
doc = json.loads(r.choices[0].message.content)
check("json_schema: parses and matches", set(doc) == {"city", "population_millions"} and isinstance(doc["city"], str)
      and isinstance(doc["population_millions"], (int, float)), doc)
r = client.chat.completions.create(model=MODEL, temperature=0.8, seed=5, max_tokens=48,
                                   messages=[{"role": "user", "content": "Describe a cat as JSON."}],
                                   response_format={"type": "json_object"})
doc = json.loads(r.choices[0].message.content)
check("json_object: parses to an object", isinstance(doc, dict), doc)

# logprobs
r = client.chat.completions.create(model=MODEL, messages=ASK, temperature=0, max_tokens=5, logprobs=True, top_logprobs=3)
lp = r.choices[0].logprobs.content
check("logprobs: one entry per token", len(lp) == r.usage.completion_tokens, len(lp))
check("logprobs: top_logprobs sorted, chosen is best at temperature 0",
      all(len(t.top_logprobs) == 3 and t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob
          and abs(t.top_logprobs[0].logprob - t.logprob) < 1e-4 and t.logprob <= 0 for t in lp), lp)

# legacy completions
r = client.completions.create(model=MODEL, prompt="The capital of France is", temperature=0, max_tokens=4, logprobs=2)
check("completions: text", len(r.choices[0].text) > 0 and r.choices[0].logprobs.tokens, r)

# errors, in OpenAI's shape, raised as the client's exception types
try:
    client.chat.completions.create(model="no-such-model", messages=ASK)
    check("unknown model -> 404", False, "no error")
except openai.NotFoundError as e:
    check("unknown model -> 404", e.status_code == 404 and e.body.get("code") == "model_not_found", e.body)
try:
    client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=10_000_000)
    check("absurd max_tokens -> 400", False, "no error")
except openai.BadRequestError as e:
    check("absurd max_tokens -> 400", e.body.get("code") == "context_length_exceeded", e.body)
try:
    client.chat.completions.create(model=MODEL, messages=ASK, temperature=7)
    check("bad temperature -> 400", False, "no error")
except openai.BadRequestError as e:
    check("bad temperature -> 400", e.body.get("param") == "temperature", e.body)
bad = OpenAI(base_url=os.environ["OPENAI_BASE_URL"], api_key="wrong-key", max_retries=0)
try:
    bad.models.list()
    check("wrong api key -> 401", False, "no error")
except openai.AuthenticationError as e:
    check("wrong api key -> 401", e.status_code == 401, e.body)

print("all openai client checks passed", flush=True)
