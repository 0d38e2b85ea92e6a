#!/usr/bin/env bash
# Remakes the BERT attention-pattern zoo: a tiny transformers BertModel (2 layers x 4
# heads, width 64, random init) trained on synthetic bracketed text so that three of its
# heads carry known patterns (previous token, matching bracket, [CLS]), exported with
# torch.jit.trace (zoo/bert_model.py, 2-5 min on one CPU thread). Writes zoo/models/bert/:
# bert_patterns_traced.pt, bert.json (config, designed heads, measured patterns, trace
# check) and attention_fixture.json (held-out texts, float64 attentions of one). The
# tokenizer is the committed zoo/models/tokenizers/bert/tokenizer.json.
#
# usage: zoo/bert_zoo.sh [STEPS]   (default 3000)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
steps="${1:-3000}"
"$repo/zoo/setup_hf_venv.sh" >/dev/null
"$repo/.venv-hf/bin/python" "$repo/zoo/bert_model.py" --out-models "$repo/zoo/models/bert" --steps "$steps" --threads 1
echo "bert zoo: zoo/models/bert ($(du -sh "$repo/zoo/models/bert" | cut -f1))"
