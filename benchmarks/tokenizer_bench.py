#!/usr/bin/env python3
"""The `tokenizers` library's encode speed on the strings bench_tokenizer
times xcam::Tokenizer on: the tests' corpus (OUT/<name>.jsonl of
zoo/tokenizer_fixtures.py) one string at a time, and the same long text
(the corpus's strings 100 on, joined by newlines, up to 1,000 bytes).
One thread (RAYON_NUM_THREADS=1); `encode` pays Python's call per string,
`encode_batch` hands the library the whole list at once.

usage: .venv-hf/bin/python benchmarks/tokenizer_bench.py [FIXTURE_DIR]
       (default build/cpu-release/zoo-models/tokenizer)
"""
import json
import os
import sys
import time

os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

from tokenizers import Tokenizer  # noqa: E402


def best_of(f, min_time=1.0):
    """Fastest of the runs in min_time seconds (at least 3)."""
    best, spent, runs = float("inf"), 0.0, 0
    while spent < min_time or runs < 3:
        t0 = time.perf_counter()
        f()
        dt = time.perf_counter() - t0
        best, spent, runs = min(best, dt), spent + dt, runs + 1
    return best


def main() -> None:
    fixtures = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "build", "cpu-release", "zoo-models",
                                                                    "tokenizer")
    print(f"{'tokenizer':10} {'corpus encode':>22} {'corpus encode_batch':>22} {'long text (tokens)':>24}")
    for name in ["qwen2", "bert", "wordlevel"]:
        tok = Tokenizer.from_file(os.path.join(ROOT, "zoo", "models", "tokenizers", name, "tokenizer.json"))
        with open(os.path.join(fixtures, f"{name}.jsonl"), encoding="utf-8") as f:
            texts = [j["text"] for j in map(json.loads, f) if "offsets" in j]
        long_text = ""
        for t in texts[100:]:
            if len(long_text.encode("utf-8")) >= 1000:
                break
            long_text += t + "\n"
        nbytes = sum(len(t.encode("utf-8")) for t in texts)
        one = best_of(lambda: [tok.encode(t) for t in texts])
        batch = best_of(lambda: tok.encode_batch(texts))
        n_long = len(tok.encode(long_text).ids)
        lng = best_of(lambda: [tok.encode(long_text) for _ in range(100)]) / 100
        print(f"{name:10} {one * 1e3:8.1f} ms {nbytes / one / 2**20:6.2f} MiB/s "
              f"{batch * 1e3:8.1f} ms {nbytes / batch / 2**20:6.2f} MiB/s "
              f"{lng * 1e6:9.1f} us ({n_long} tokens)")


if __name__ == "__main__":
    main()
