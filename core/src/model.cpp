// Model loading and layer taps by TorchScript graph rewriting.
//
// The forward graph is copied; calls into the modules on the way to a tapped
// path (and helper methods on self, like torchvision's _forward_impl) are
// inlined one level at a time until every tapped module's call sits in the
// copy, then its output is returned as an extra output. The model's own
// methods and types are never modified, so shared module types stay intact.
#include "xcam/model.h"

#include <torch/csrc/jit/api/function_impl.h>
#include <torch/csrc/jit/ir/ir.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>
#include <torch/csrc/jit/runtime/interpreter.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <unordered_map>

#include <fmt/ranges.h>

#include "xcam/error.h"

namespace xcam {

namespace fs = std::filesystem;
using torch::jit::Graph;
using torch::jit::Node;
using torch::jit::Value;
namespace prim = c10::prim;
namespace aten = c10::aten;
namespace attr = c10::attr;

TapPoint parse_tap(const std::string& text) {
  TapPoint t;
  t.text = text;
  const auto at = text.rfind('@');
  t.path = text.substr(0, at);
  if (at != std::string::npos) {
    const std::string idx = text.substr(at + 1);
    XCAM_CHECK(!idx.empty() && std::all_of(idx.begin(), idx.end(), ::isdigit),
               "layer '{}': expected 'path@N' with N the 0-based call index, found '@{}'", text, idx);
    t.call = std::stoi(idx);
  }
  XCAM_CHECK(!t.path.empty(), "empty layer name in '{}'; give a dotted module path such as 'layer4'", text);
  return t;
}

Model Model::load(const std::string& path, const std::string& device) {
  XCAM_CHECK(fs::exists(path), "model '{}' does not exist; give the path of a TorchScript file (.pt)", path);
  XCAM_CHECK(fs::is_regular_file(path), "model '{}' is not a file; give the path of a TorchScript file (.pt)",
             path);
  Model m;
  m.path_ = path;
  m.device_ = c10::Device(device);
  try {
    m.module_ = std::make_shared<torch::jit::Module>(torch::jit::load(path, m.device_));
  } catch (const c10::Error& e) {
    std::string why = e.what_without_backtrace();
    why = why.substr(0, why.find('\n'));
    XCAM_THROW("model '{}' is not a TorchScript archive ({}); export it with torch.jit.trace or "
               "torch.jit.script and save it with torch.jit.save",
               path, why);
  }
  m.module_->eval();
  for (auto p : m.module_->parameters()) p.set_requires_grad(false);
  return m;
}

std::vector<std::string> Model::module_paths() const {
  std::vector<std::string> out;
  for (const auto& item : module_->named_modules())
    if (!item.name.empty()) out.push_back(item.name);
  return out;
}

namespace {
// A call of the module itself: "forward", or "forwardN", which is how tracing
// records the second and later calls of one module.
bool is_forward(const std::string& method) {
  if (method.rfind("forward", 0) != 0) return false;
  return std::all_of(method.begin() + 7, method.end(), ::isdigit);
}
}  // namespace

struct TappedForward::Impl {
  Model* model = nullptr;
  std::vector<TapPoint> taps;
  std::shared_ptr<Graph> graph;  // forward with the taps as extra outputs
  std::unique_ptr<torch::jit::Code> code;
  std::vector<size_t> tap_slot;  // request index -> slot in the returned tuple (after the output)
  // request index -> forward with that tap's value taken from an extra input
  std::map<size_t, std::unique_ptr<torch::jit::Code>> replacing;
  Graph* work = nullptr;  // the graph path_of reads

  std::map<std::string, torch::jit::Module> modules;
  std::unordered_map<Value*, std::optional<std::string>> path_cache;

  // The module path a graph value denotes, if it is a chain of GetAttr on self.
  std::optional<std::string> path_of(Value* v) {
    if (v == work->inputs()[0]) return std::string();
    auto it = path_cache.find(v);
    if (it != path_cache.end()) return it->second;
    std::optional<std::string> result;
    Node* n = v->node();
    auto cls = v->type()->cast<c10::ClassType>();
    if (n->kind() == prim::GetAttr && cls && cls->is_module()) {
      if (auto parent = path_of(n->input(0))) {
        const std::string& name = n->s(attr::name);
        result = parent->empty() ? name : *parent + "." + name;
      }
    }
    path_cache[v] = result;
    return result;
  }

  // A copy of forward with the calls on the way to the taps inlined; the value
  // of each requested tap, in request order.
  std::vector<Value*> inline_taps(const std::shared_ptr<Graph>& graph) {
    work = graph.get();
    path_cache.clear();
    if (modules.empty())
      for (const auto& item : model->module().named_modules()) modules.emplace(item.name, item.value);

    std::set<std::string> wanted;
    for (const auto& t : taps) {
      if (!modules.count(t.path)) {
        std::vector<std::string> names;
        for (const auto& [name, m] : modules)
          if (!name.empty()) names.push_back(name);
        const auto near = closest_names(t.path, names);
        std::string hint = near.empty() ? "" : fmt::format("did you mean '{}'? ", fmt::join(near, "', '"));
        XCAM_THROW("layer '{}' not found in {}; {}(`xcam layers {}` lists all)", t.path, model->path(), hint,
                   model->path());
      }
      wanted.insert(t.path);
    }

    auto on_the_way = [&](const std::string& p) {
      for (const auto& w : wanted)
        if (p.empty() || w.compare(0, p.size() + 1, p + ".") == 0) return true;
      return false;
    };

    // Values that are the output of an inlined call to a tapped module.
    std::unordered_multimap<Value*, std::string> tagged;
    for (bool progress = true; progress;) {
      progress = false;
      for (Node* n : graph->nodes()) {
        if (n->kind() != prim::CallMethod) continue;
        const auto p = path_of(n->input(0));
        if (!p) continue;
        const std::string method = n->s(attr::name);
        const bool tapped_call = is_forward(method) && wanted.count(*p);
        const bool helper_on_tapped = !is_forward(method) && (wanted.count(*p) || on_the_way(*p));
        if (!on_the_way(*p) && !helper_on_tapped) continue;
        std::vector<std::string> carried;
        for (auto [b, e] = tagged.equal_range(n->output(0)); b != e; ++b) carried.push_back(b->second);
        tagged.erase(n->output(0));
        if (tapped_call) carried.push_back(*p);
        auto& fn = torch::jit::toGraphFunction(modules.at(*p).get_method(method).function());
        // The callee's own graph, one level deep (the two-argument overload would
        // take its optimized, fully inlined graph and lose deeper modules).
        const auto outs = torch::jit::inlineCallTo(n, &fn, fn.graph().get());
        path_cache.clear();
        for (const auto& c : carried) tagged.emplace(outs.at(0), c);
        progress = true;
        break;
      }
    }

    // Occurrences of each tapped module, in execution order.
    std::map<std::string, std::vector<Value*>> calls;
    for (Node* n : graph->nodes()) {
      for (Value* o : n->outputs()) {
        if (n->kind() == prim::CallMethod && is_forward(n->s(attr::name))) {
          const auto p = path_of(n->input(0));
          if (p && wanted.count(*p)) calls[*p].push_back(o);
        }
        for (auto [b, e] = tagged.equal_range(o); b != e; ++b) calls[b->second].push_back(o);
      }
    }

    std::vector<Value*> chosen;
    for (const auto& t : taps) {
      const auto& v = calls[t.path];
      if (v.empty()) {
        const bool nested = std::any_of(graph->nodes().begin(), graph->nodes().end(),
                                        [](Node* n) { return !n->blocks().empty(); });
        XCAM_THROW("layer '{}' in {} is not called at the top level of forward{}; tap a module that "
                   "forward runs unconditionally (`xcam layers {}` lists the tappable ones)",
                   t.path, model->path(), nested ? " (it may run inside an if or a loop)" : "",
                   model->path());
      }
      XCAM_CHECK(t.call < static_cast<int>(v.size()),
                 "layer '{}': module '{}' runs {} time(s) in forward of {}; use '{}@0' to '{}@{}'", t.text,
                 t.path, v.size(), model->path(), t.path, t.path, v.size() - 1);
      Value* val = t.call < 0 ? v.back() : v.at(t.call);
      XCAM_CHECK(val->type()->isSubtypeOf(*c10::TensorType::get()),
                 "layer '{}' in {} returns {}, not a tensor; tap one of its submodules instead", t.text,
                 model->path(), val->type()->repr_str());
      chosen.push_back(val);
    }
    return chosen;
  }

  void build() {
    graph = model->module().get_method("forward").graph()->copy();
    const std::vector<Value*> chosen = inline_taps(graph);

    // Unique tapped values in graph order; the first becomes the autograd leaf.
    std::vector<Value*> order = chosen;
    std::sort(order.begin(), order.end());
    order.erase(std::unique(order.begin(), order.end()), order.end());
    std::sort(order.begin(), order.end(), [](Value* a, Value* b) { return a->node()->isBefore(b->node()); });
    std::unordered_map<Value*, Value*> exposed;
    for (size_t i = 0; i < order.size(); ++i) {
      Value* v = order[i];
      torch::jit::WithInsertPoint guard(v->node()->next());
      Value* out = v;
      if (i == 0) {
        Value* detached = graph->insert(aten::detach, {v});
        out = graph->insert(aten::requires_grad_, {detached});
      }
      // Downstream code reads a copy, so in-place ops after the tap (ReLU with
      // inplace=True, residual +=) leave the tapped value intact.
      Value* copy = graph->insert(aten::clone, {out});
      v->replaceAllUsesAfterNodeWith(copy->node(), copy);
      exposed[v] = out;
    }

    std::vector<Value*> returned{graph->outputs()[0]};
    for (Value* v : order) returned.push_back(exposed.at(v));
    for (Value* v : chosen) tap_slot.push_back(std::find(order.begin(), order.end(), v) - order.begin() + 1);
    {
      torch::jit::WithInsertPoint guard(graph->return_node());
      Node* tuple = graph->insertNode(graph->createTuple(returned));
      graph->eraseOutput(0);
      graph->registerOutput(tuple->output());
    }
    code = std::make_unique<torch::jit::Code>(graph, "xcam_tapped_forward");
  }

  // Forward with request `i`'s tapped value read from a new last input, and
  // the computation only that value needed removed. Module calls count as
  // side effects for dead-code elimination, so unused ones are dropped here:
  // an eval-mode module's forward changes no state.
  torch::jit::Code& replacing_code(size_t i) {
    auto& slot = replacing[i];
    if (slot) return *slot;
    auto g = model->module().get_method("forward").graph()->copy();
    Value* tapped = inline_taps(g).at(i);
    Value* in = g->addInput("xcam_replacement")->setType(c10::TensorType::get());
    tapped->replaceAllUsesWith(in);
    for (bool changed = true; changed;) {
      changed = false;
      torch::jit::EliminateDeadCode(g);
      for (auto it = g->nodes().rbegin(); it != g->nodes().rend();) {
        Node* n = *it;
        ++it;
        if (n->kind() == prim::CallMethod && !n->hasUses()) {
          n->destroy();
          changed = true;
        }
      }
    }
    slot = std::make_unique<torch::jit::Code>(g, "xcam_replaced_forward");
    return *slot;
  }
};

TappedForward::TappedForward(Model& model, const std::vector<std::string>& taps) : impl_(new Impl) {
  XCAM_CHECK(!taps.empty(), "no layer to tap in {}; name one (`xcam layers {}` lists them)", model.path(),
             model.path());
  impl_->model = &model;
  for (const auto& t : taps) impl_->taps.push_back(parse_tap(t));
  impl_->build();
}

TappedForward::~TappedForward() = default;
TappedForward::TappedForward(TappedForward&&) noexcept = default;

const std::vector<TapPoint>& TappedForward::taps() const { return impl_->taps; }

std::string TappedForward::graph_text() const { return impl_->graph->toString(); }

c10::IValue TappedForward::run_replacing(const std::vector<c10::IValue>& inputs, size_t tap,
                                        const at::Tensor& value) {
  XCAM_CHECK(tap < impl_->taps.size(), "tap index {} out of range ({} taps)", tap, impl_->taps.size());
  auto& code = impl_->replacing_code(tap);
  torch::jit::Stack stack;
  stack.reserve(inputs.size() + 2);
  stack.emplace_back(impl_->model->module()._ivalue());
  for (const auto& i : inputs) stack.push_back(i);
  stack.emplace_back(value);
  c10::AutoGradMode grad(false);
  torch::jit::InterpreterState state(code);
  state.run(stack);
  return stack.back();
}

TappedForward::Result TappedForward::run(const std::vector<c10::IValue>& inputs, bool record_grad) {
  torch::jit::Stack stack;
  stack.reserve(inputs.size() + 1);
  stack.emplace_back(impl_->model->module()._ivalue());
  for (const auto& i : inputs) stack.push_back(i);
  {
    c10::AutoGradMode grad(record_grad);
    torch::jit::InterpreterState state(*impl_->code);
    state.run(stack);
  }
  const auto elems = stack.back().toTupleRef().elements();
  Result r;
  r.output = elems[0];
  for (size_t slot : impl_->tap_slot) r.taps.push_back(elems[slot].toTensor());
  return r;
}

}  // namespace xcam

// ------------------------------------------------------------ inspection ----

#include "xcam/inspect.h"

namespace xcam {

std::vector<LayerInfo> list_layers(const std::string& model_path, int64_t height, int64_t width) {
  Model model = Model::load(model_path);
  std::vector<LayerInfo> out;
  std::vector<std::string> ok;
  for (const auto& item : model.module().named_modules()) {
    if (item.name.empty()) continue;
    LayerInfo info;
    info.path = item.name;
    info.type = item.value.type()->name() ? item.value.type()->name()->name() : "?";
    try {
      TappedForward probe(model, {item.name});
      info.tappable = true;
      ok.push_back(item.name);
    } catch (const Error& e) {
      std::string why = e.what();
      const auto semi = why.find(';');
      info.shape = "not tappable: " + why.substr(0, semi);
    }
    out.push_back(std::move(info));
  }
  if (!ok.empty()) {
    TappedForward all(model, ok);
    torch::manual_seed(0);
    const auto r = all.run({torch::randn({1, 3, height, width})}, /*record_grad=*/false);
    size_t k = 0;
    for (auto& info : out)
      if (info.tappable) info.shape = c10::str(r.taps[k++].sizes());
  }
  // Call counts: tap each tappable path at increasing indices until refused.
  for (auto& info : out) {
    if (!info.tappable) continue;
    info.calls = 1;
    for (int i = 1; i < 64; ++i) {
      try {
        TappedForward probe(model, {info.path + "@" + std::to_string(i)});
        info.calls = i + 1;
      } catch (const Error&) {
        break;
      }
    }
  }
  return out;
}

}  // namespace xcam
