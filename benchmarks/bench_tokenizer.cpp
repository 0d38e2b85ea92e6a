// xcam::Tokenizer's encode speed on the zoo tokenizers: the 10,500 strings
// of the tests' corpus one at a time, and one long text (~512 to ~1,000
// tokens), against memcpy of the same bytes. benchmarks/tokenizer_bench.py
// times the `tokenizers` library on the same strings the same way
// (docs/tokenizer.md has both). The corpus is the tests' fixture
// (ctest -R zoo_tokenizer_fixtures writes it).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "xcam/tokenizer.h"

namespace {

const char* const kNames[] = {"qwen2", "bert", "wordlevel"};

std::string fixture_dir() {
  const char* env = std::getenv("XCAM_ZOO_MODELS");
  return std::string(env != nullptr ? env : XCAM_ZOO_MODELS) + "/tokenizer";
}

// The corpus strings of one tokenizer's fixture (encode lines only).
const std::vector<std::string>& corpus(const std::string& name) {
  static std::vector<std::vector<std::string>> cache(3);
  const size_t k = static_cast<size_t>(std::find(std::begin(kNames), std::end(kNames), name) - std::begin(kNames));
  if (cache[k].empty()) {
    std::ifstream in(fixture_dir() + "/" + name + ".jsonl");
    std::string line;
    while (std::getline(in, line)) {
      const auto j = nlohmann::json::parse(line);
      if (j.contains("offsets")) cache[k].push_back(j["text"].get<std::string>());
    }
  }
  return cache[k];
}

// The long text: the corpus's strings 100 on, joined by newlines, up to 1,000 bytes.
std::string long_text(const std::string& name) {
  const auto& c = corpus(name);
  std::string t;
  for (size_t i = 100; i < c.size() && t.size() < 1000; ++i) t += c[i] + "\n";
  return t;
}

// The zoo tokenizer of the benchmark's argument, or none (and the benchmark
// skipped) when its corpus is missing.
std::optional<xcam::Tokenizer> load(benchmark::State& state, const std::string& name) {
  if (corpus(name).empty()) {
    state.SkipWithError("no fixture: run `ctest -R zoo_tokenizer_fixtures` first");
    return std::nullopt;
  }
  return xcam::Tokenizer::from_file(std::string(XCAM_SOURCE_DIR) + "/zoo/models/tokenizers/" + name +
                                    "/tokenizer.json");
}

void BM_EncodeCorpus(benchmark::State& state) {
  const std::string name = kNames[state.range(0)];
  const auto tok = load(state, name);
  if (!tok) return;
  const auto& texts = corpus(name);
  size_t bytes = 0, tokens = 0;
  for (const auto& t : texts) bytes += t.size();
  for (auto _ : state) {
    tokens = 0;
    for (const auto& t : texts) tokens += tok->ids(t).size();
    benchmark::DoNotOptimize(tokens);
  }
  state.SetLabel(name);
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * bytes));
  state.counters["strings"] = benchmark::Counter(static_cast<double>(texts.size()),
                                                 benchmark::Counter::kIsIterationInvariantRate);
  state.counters["tokens"] = benchmark::Counter(static_cast<double>(tokens),
                                                benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_EncodeCorpus)->ArgName("tokenizer")->DenseRange(0, 2)->Unit(benchmark::kMillisecond);

void BM_EncodeLong(benchmark::State& state) {
  const std::string name = kNames[state.range(0)];
  const auto tok = load(state, name);
  if (!tok) return;
  const std::string text = long_text(name);
  size_t tokens = 0;
  for (auto _ : state) {
    tokens = tok->ids(text).size();
    benchmark::DoNotOptimize(tokens);
  }
  state.SetLabel(name);
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * text.size()));
  state.counters["tokens_per_text"] = static_cast<double>(tokens);
  state.counters["tokens"] = benchmark::Counter(static_cast<double>(tokens),
                                                benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_EncodeLong)->ArgName("tokenizer")->DenseRange(0, 2)->Unit(benchmark::kMicrosecond);

// memcpy of the long text's bytes: what the machine moves in the same time.
void BM_Memcpy(benchmark::State& state) {
  const std::string text = long_text(kNames[state.range(0)]);
  std::vector<char> dst(text.size() + 1);
  for (auto _ : state) {
    std::memcpy(dst.data(), text.data(), text.size());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * text.size()));
}
BENCHMARK(BM_Memcpy)->ArgName("tokenizer")->DenseRange(0, 2);

}  // namespace

BENCHMARK_MAIN();
