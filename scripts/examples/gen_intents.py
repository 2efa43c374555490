#!/usr/bin/env python3
"""Intent + slot extraction data for the LoRA worked example (docs/FINETUNE.md).

Customer messages of an online shop -> one JSON object with the intent and its slots, e.g.
  "hey, where is my order 48213?"  ->  {"intent": "track_order", "order_id": "48213"}

Writes prompt/completion JSONL (with a short system prompt) — train and a held-out test set drawn
with different seeds, so test messages are new combinations of phrasing and values:

  python3 scripts/examples/gen_intents.py --out examples/intents [--train 300] [--test 100] [--seed 1]

Standard library only.
"""

import argparse
import json
import random
from pathlib import Path

SYSTEM = "Extract the intent and slots from the customer message. Reply with JSON only."

PRODUCTS = ["running shoes", "rain jacket", "yoga mat", "coffee grinder", "desk lamp", "backpack",
            "wool socks", "water bottle", "headphones", "phone case", "winter gloves", "tea kettle"]
SIZES = ["XS", "S", "M", "L", "XL"]
CITIES = ["Lyon", "Berlin", "Madrid", "Leeds", "Porto", "Vienna", "Krakow", "Ghent", "Turin", "Oslo"]
REASONS = ["too small", "too big", "damaged", "wrong colour", "not as described", "arrived late"]

OPEN = ["", "hi, ", "hello! ", "hey, ", "good morning, ", "quick question: ", "excuse me, "]
CLOSE = ["", " thanks", " thank you!", " please", " asap", "?"]

INTENTS = {
    "track_order": [
        "where is my order {order_id}", "can you track order {order_id} for me",
        "order {order_id} hasn't arrived yet, where is it", "what's the status of order #{order_id}",
        "has {order_id} shipped",
    ],
    "cancel_order": [
        "please cancel order {order_id}", "I want to cancel my order {order_id}",
        "cancel #{order_id}, I changed my mind", "can I still cancel order {order_id}",
    ],
    "return_item": [
        "I want to return the {product} from order {order_id}, it is {reason}",
        "the {product} in order {order_id} is {reason}, how do I send it back",
        "return request: {product}, order {order_id}, {reason}",
    ],
    "change_address": [
        "please ship order {order_id} to {city} instead", "change the delivery city of {order_id} to {city}",
        "I moved to {city}, can order {order_id} go there",
    ],
    "check_stock": [
        "do you have the {product} in size {size}", "is the {product} available in {size}",
        "any {product} left in {size}", "when will the {product} be back in size {size}",
    ],
    "refund_status": [
        "where is my refund for order {order_id}", "did you refund order {order_id} yet",
        "I returned order {order_id} two weeks ago, no money yet",
    ],
}

SLOTS = {
    "track_order": ["order_id"], "cancel_order": ["order_id"], "return_item": ["order_id", "product", "reason"],
    "change_address": ["order_id", "city"], "check_stock": ["product", "size"], "refund_status": ["order_id"],
}


def sample(rng: random.Random) -> dict:
    intent = rng.choice(sorted(INTENTS))
    values = {
        "order_id": str(rng.randint(10000, 99999)), "product": rng.choice(PRODUCTS), "size": rng.choice(SIZES),
        "city": rng.choice(CITIES), "reason": rng.choice(REASONS),
    }
    text = rng.choice(OPEN) + rng.choice(INTENTS[intent]).format(**values) + rng.choice(CLOSE)
    if rng.random() < 0.3:
        text = text[0].upper() + text[1:]
    answer = {"intent": intent}
    for s in SLOTS[intent]:
        answer[s] = values[s]
    return {"system": SYSTEM, "prompt": text, "completion": json.dumps(answer)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="examples/intents")
    ap.add_argument("--train", type=int, default=300)
    ap.add_argument("--test", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    train_rng, test_rng = random.Random(a.seed), random.Random(a.seed + 1_000_003)
    train = [sample(train_rng) for _ in range(a.train)]
    seen = {r["prompt"] for r in train}
    test = []
    while len(test) < a.test:
        r = sample(test_rng)
        if r["prompt"] not in seen:  # held out: no test message appears in training
            test.append(r)
    for name, rows in [("train.jsonl", train), ("test.jsonl", test)]:
        with (out / name).open("w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    print(f"wrote {len(train)} training and {len(test)} test records to {out}")


if __name__ == "__main__":
    main()
