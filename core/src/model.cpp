// Model loading and layer taps by TorchScript graph rewriting.
//
// The forward graph is copied; calls into the modules on the way to a tapped
// path (and helper methods on self, like torchvision's _forward_impl) are
// inlined one level at a time until every tapped module's call sits in the
// copy, then its output is returned as an extra output, and the calls that
// remain are inlined whole (one interpreter, autograd op by op). The model's
// own methods and types are never modified, so shared module types stay
// intact.
#include "xcam/model.h"

#include <torch/csrc/jit/api/function_impl.h>
#include <torch/csrc/jit/ir/ir.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>
#include <torch/csrc/jit/passes/inliner.h>
#include <torch/csrc/jit/runtime/graph_executor.h>
#include <torch/csrc/jit/runtime/interpreter.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
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

namespace {

bool all_digits(const std::string& s) { return !s.empty() && std::all_of(s.begin(), s.end(), ::isdigit); }

constexpr const char* kTapSyntax =
    "expected PATH[@CALL] followed by nothing, [ELEMENT], :in[ARG] or /OP[#OCCURRENCE], "
    "e.g. 'layer4', 'enc@1', 'attn[1]', 'blocks.3.attn:in', 'blocks.3.attn/softmax#0'";

// "NAME#J" -> (NAME, J); J = -1 without '#'.
std::pair<std::string, int> split_occurrence(const std::string& text, const std::string& s) {
  const auto hash = s.find('#');
  if (hash == std::string::npos) return {s, -1};
  const std::string idx = s.substr(hash + 1);
  XCAM_CHECK(all_digits(idx), "layer '{}': '#{}' is not an occurrence number; {}", text, idx, kTapSyntax);
  return {s.substr(0, hash), std::stoi(idx)};
}

}  // namespace

TapPoint parse_tap(const std::string& text) {
  TapPoint t;
  t.text = text;
  std::string rest = text;
  if (const auto slash = rest.find('/'); slash != std::string::npos) {
    std::string op = rest.substr(slash + 1);
    if (!op.empty() && op.back() == ']') {  // one output of an op with several
      const auto open = op.rfind('[');
      const std::string idx = open == std::string::npos ? "" : op.substr(open + 1, op.size() - open - 2);
      XCAM_CHECK(all_digits(idx), "layer '{}': '[{}' is not an output index; {}", text, idx, kTapSyntax);
      t.index = std::stoi(idx);
      op = op.substr(0, open);
    } else {
      t.index = -1;
    }
    std::tie(t.op, t.occurrence) = split_occurrence(text, op);
    if (t.op.rfind("aten::", 0) == 0) t.op = t.op.substr(6);
    XCAM_CHECK(!t.op.empty() && t.op.find_first_of("/[]:@") == std::string::npos,
               "layer '{}': '{}' is not an op name; {}", text, op, kTapSyntax);
    t.part = TapPoint::Part::op;
    rest = rest.substr(0, slash);
  } else if (!rest.empty() && rest.back() == ']') {
    const auto open = rest.rfind('[');
    const std::string idx = open == std::string::npos ? "" : rest.substr(open + 1, rest.size() - open - 2);
    XCAM_CHECK(all_digits(idx), "layer '{}': '[{}' is not a tuple element index; {}", text, idx, kTapSyntax);
    t.part = TapPoint::Part::element;
    t.index = std::stoi(idx);
    rest = rest.substr(0, open);
  } else if (const auto colon = rest.find(':'); colon != std::string::npos) {
    const std::string what = rest.substr(colon + 1);
    XCAM_CHECK(what.rfind("in", 0) == 0 && (what.size() == 2 || all_digits(what.substr(2))),
               "layer '{}': ':{}' is not a module input (':in', ':in1', ...); {}", text, what, kTapSyntax);
    t.part = TapPoint::Part::input;
    t.index = what.size() == 2 ? 0 : std::stoi(what.substr(2));
    rest = rest.substr(0, colon);
  }
  const auto at = rest.rfind('@');
  t.path = rest.substr(0, at);
  if (at != std::string::npos) {
    const std::string idx = rest.substr(at + 1);
    XCAM_CHECK(all_digits(idx), "layer '{}': expected 'path@N' with N the 0-based call index, found '@{}'", text,
               idx);
    t.call = std::stoi(idx);
  }
  XCAM_CHECK(!t.path.empty(), "empty layer name in '{}'; give a dotted module path such as 'layer4'", text);
  XCAM_CHECK(t.path.find_first_of("[]:#/") == std::string::npos, "layer '{}': {}", text, kTapSyntax);
  return t;
}

Model Model::load(const std::string& path, const std::string& device) {
  XCAM_CHECK(fs::exists(path), "model '{}' does not exist; give the path of a TorchScript file (.pt)", path);
  XCAM_CHECK(fs::is_regular_file(path), "model '{}' is not a file; give the path of a TorchScript file (.pt)",
             path);
  {
    std::ifstream probe(path, std::ios::binary);
    char byte = 0;
    XCAM_CHECK(probe.is_open(),
               "model '{}' cannot be read ({}); make it readable by this user (chmod a+r) or copy it somewhere "
               "readable",
               path, std::strerror(errno));
    XCAM_CHECK(static_cast<bool>(probe.read(&byte, 1)),
               "model '{}' is empty (0 bytes); export it again with torch.jit.trace or torch.jit.script and "
               "torch.jit.save",
               path);
  }
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

// What a node is called in an op tap: an aten op without its namespace
// ("softmax"), or the name of a TorchScript function it calls (a scripted
// F.softmax is a call of the function "softmax"); "" for anything else.
std::string op_name(Node* n) {
  if (n->kind().is_aten()) return n->kind().toUnqualString();
  if (n->kind() == prim::CallFunction)
    if (auto fn = n->input(0)->type()->cast<c10::FunctionType>()) return fn->function()->name();
  return "";
}

// The op's kind as `xcam layers --ops` shows it.
std::string op_kind(Node* n) {
  if (n->kind() == prim::CallFunction)
    if (auto fn = n->input(0)->type()->cast<c10::FunctionType>())
      return "call " + fn->function()->qualname().qualifiedName();
  return n->kind().toQualString();
}

// Every value computed from `sources` in `graph` (a node inside an if or a
// loop counts as reading what any node in its blocks reads).
std::set<Value*> downstream_of(Graph& graph, const std::vector<Value*>& sources) {
  std::set<Value*> reached(sources.begin(), sources.end());
  std::function<bool(Node*)> reads = [&](Node* n) {
    for (Value* in : n->inputs())
      if (reached.count(in)) return true;
    for (auto* b : n->blocks())
      for (Node* m : b->nodes())
        if (reads(m)) return true;
    return false;
  };
  for (Node* n : graph.nodes())
    if (!reached.empty() && reads(n)) reached.insert(n->outputs().begin(), n->outputs().end());
  return reached;
}

}  // namespace

struct TappedForward::Impl {
  Model* model = nullptr;
  std::vector<TapPoint> taps;
  std::shared_ptr<Graph> graph;  // forward with the taps as extra outputs
  std::unique_ptr<torch::jit::Code> code;
  std::vector<size_t> tap_slot;  // request index -> slot in the returned tuple (after the output)
  std::vector<bool> leaf;        // request index -> an autograd leaf of its own
  // request index -> forward with that tap's value taken from an extra input
  std::map<size_t, std::unique_ptr<torch::jit::Code>> replacing;
  Graph* work = nullptr;  // the graph path_of reads
  // Half-precision weights (a bfloat16 VLM): the module calls left in the
  // graph run unoptimised. LibTorch 1.13's differentiable subgraphs give
  // softmax(x, dtype=float32) of a bfloat16 x a float32 gradient, which the
  // next bfloat16 matmul's backward refuses.
  bool unoptimised = false;

  std::map<std::string, torch::jit::Module> modules;
  std::unordered_map<Value*, std::optional<std::string>> path_cache;
  // Output of an inlined call of a tapped module -> that call's arguments.
  std::unordered_multimap<Value*, std::vector<Value*>> inlined_args;

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

  // The tapped module paths; an unknown one is refused with the closest names.
  std::set<std::string> wanted_paths() {
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
    return wanted;
  }

  // Inlines, one level at a time, the calls of modules on the way to a
  // tapped path (and helper methods on them). Returns the values that are
  // the outputs of inlined calls of tapped modules, with their paths.
  std::unordered_multimap<Value*, std::string> inline_on_the_way(Graph& graph, const std::set<std::string>& wanted) {
    auto on_the_way = [&](const std::string& p) {
      for (const auto& w : wanted)
        if (p.empty() || w.compare(0, p.size() + 1, p + ".") == 0) return true;
      return false;
    };

    std::unordered_multimap<Value*, std::string> tagged;
    for (bool progress = true; progress;) {
      progress = false;
      for (Node* n : graph.nodes()) {
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
        std::vector<std::vector<Value*>> carried_args;
        for (auto [b, e] = inlined_args.equal_range(n->output(0)); b != e; ++b) carried_args.push_back(b->second);
        inlined_args.erase(n->output(0));
        if (tapped_call) {
          carried.push_back(*p);
          carried_args.emplace_back(n->inputs().begin() + 1, n->inputs().end());
        }
        auto& fn = torch::jit::toGraphFunction(modules.at(*p).get_method(method).function());
        // The callee's own graph, one level deep (the two-argument overload would
        // take its optimized, fully inlined graph and lose deeper modules).
        const auto outs = torch::jit::inlineCallTo(n, &fn, fn.graph().get());
        path_cache.clear();
        for (const auto& c : carried) tagged.emplace(outs.at(0), c);
        for (auto& a : carried_args) inlined_args.emplace(outs.at(0), std::move(a));
        progress = true;
        break;
      }
    }
    return tagged;
  }

  // Op taps: the tapped module's call inlined now, one level, and the nodes
  // it brought in, per (path, call) once.
  std::map<std::pair<std::string, size_t>, std::vector<Node*>> inline_op_calls(
      Graph& graph, std::map<std::string, std::vector<Value*>>& calls, const std::vector<size_t>& call_of) {
    std::map<std::pair<std::string, size_t>, std::vector<Node*>> bodies;
    for (size_t i = 0; i < taps.size(); ++i) {
      const auto& t = taps[i];
      if (t.part != TapPoint::Part::op || bodies.count({t.path, call_of[i]})) continue;
      Value*& out = calls[t.path][call_of[i]];
      Node* call = out->node();
      XCAM_CHECK(call->kind() == prim::CallMethod,
                 "layer '{}' in {}: the ops inside '{}' cannot be tapped together with a module inside it; tap "
                 "them in separate runs",
                 t.text, model->path(), t.path);
      std::set<Node*> before(graph.nodes().begin(), graph.nodes().end());
      before.erase(call);
      auto& fn = torch::jit::toGraphFunction(modules.at(t.path).get_method(call->s(attr::name)).function());
      out = torch::jit::inlineCallTo(call, &fn, fn.graph().get()).at(0);
      path_cache.clear();
      auto& body = bodies[{t.path, call_of[i]}];
      for (Node* n : graph.nodes())
        if (!before.count(n)) body.push_back(n);
    }
    return bodies;
  }

  // A copy of forward with the calls on the way to the taps inlined; the value
  // of each requested tap, in request order.
  std::vector<Value*> inline_taps(const std::shared_ptr<Graph>& graph) {
    work = graph.get();
    path_cache.clear();
    inlined_args.clear();
    const std::set<std::string> wanted = wanted_paths();
    const auto tagged = inline_on_the_way(*graph, wanted);

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
    std::vector<size_t> call_of;  // per request: which occurrence
    for (const auto& t : taps) call_of.push_back(occurrence(t, calls[t.path], *graph));

    const auto bodies = inline_op_calls(*graph, calls, call_of);

    std::vector<Value*> chosen;
    std::unordered_map<Value*, std::vector<Value*>> unpacked;
    for (size_t i = 0; i < taps.size(); ++i) {
      const auto& t = taps[i];
      Value* call_out = calls[t.path][call_of[i]];
      Value* val = call_out;
      if (t.part == TapPoint::Part::element) {
        val = element_of(*graph, call_out, t, unpacked);
      } else if (t.part == TapPoint::Part::input) {
        Node* call = call_out->node();
        std::vector<Value*> args;
        if (call->kind() == prim::CallMethod)
          args.assign(call->inputs().begin() + 1, call->inputs().end());
        else if (auto it = inlined_args.find(call_out); it != inlined_args.end())
          args = it->second;
        XCAM_CHECK(t.index < static_cast<int>(args.size()),
                   "layer '{}': module '{}' takes {} argument(s) in {}; use ':in' to ':in{}'", t.text, t.path,
                   args.size(), model->path(), args.empty() ? 0 : args.size() - 1);
        val = args[t.index];
      } else if (t.part == TapPoint::Part::op) {
        val = op_value(bodies.at({t.path, call_of[i]}), t);
      }
      check_tensor(val, t);
      chosen.push_back(val);
    }
    return chosen;
  }

  // Which occurrence of `t.path` a tap reads; a clear error when there is none.
  size_t occurrence(const TapPoint& t, const std::vector<Value*>& v, Graph& graph) const {
    if (v.empty()) {
      const bool nested =
          std::any_of(graph.nodes().begin(), graph.nodes().end(), [](Node* n) { return !n->blocks().empty(); });
      XCAM_THROW("layer '{}' in {} is not called at the top level of forward{}; tap a module that "
                 "forward runs unconditionally (`xcam layers {}` lists the tappable ones)",
                 t.path, model->path(), nested ? " (it may run inside an if or a loop)" : "", model->path());
    }
    XCAM_CHECK(t.call < static_cast<int>(v.size()),
               "layer '{}': module '{}' runs {} time(s) in forward of {}; use '{}@0' to '{}@{}'", t.text, t.path,
               v.size(), model->path(), t.path, t.path, v.size() - 1);
    return t.call < 0 ? v.size() - 1 : static_cast<size_t>(t.call);
  }

  void check_tensor(Value* val, const TapPoint& t) const {
    if (val->type()->isSubtypeOf(*c10::TensorType::get())) return;
    if (auto tuple = val->type()->cast<c10::TupleType>())
      XCAM_THROW("layer '{}' in {} is a tuple {}; tap one of its elements, '{}[0]' to '{}[{}]'", t.text,
                 model->path(), val->type()->repr_str(), t.text, t.text, tuple->elements().size() - 1);
    XCAM_THROW("layer '{}' in {} is a {}, not a tensor; tap one of its submodules instead", t.text, model->path(),
               val->type()->repr_str());
  }

  // Element t.index of the tuple `tuple`: the tuple is unpacked where it is
  // made and rebuilt from its elements, so that what reads it afterwards
  // reads the tapped element (and its autograd leaf).
  Value* element_of(Graph& graph, Value* tuple, const TapPoint& t,
                       std::unordered_map<Value*, std::vector<Value*>>& unpacked) const {
    auto type = tuple->type()->cast<c10::TupleType>();
    XCAM_CHECK(type != nullptr, "layer '{}': module '{}' returns {}, not a tuple, in {}; drop '[{}]'", t.text, t.path,
               tuple->type()->repr_str(), model->path(), t.index);
    const size_t n = type->elements().size();
    XCAM_CHECK(static_cast<size_t>(t.index) < n, "layer '{}': module '{}' returns a tuple of {} in {}; use '[0]' to '[{}]'",
               t.text, t.path, n, model->path(), n - 1);
    auto& elems = unpacked[tuple];
    if (elems.empty()) {
      torch::jit::WithInsertPoint guard(tuple->node()->next());
      Node* unpack = graph.insertNode(graph.createTupleUnpack(tuple));
      Node* rebuilt = graph.insertNode(graph.createTuple(unpack->outputs(), type->name() ? type : nullptr));
      tuple->replaceAllUsesAfterNodeWith(rebuilt, rebuilt->output());
      elems.assign(unpack->outputs().begin(), unpack->outputs().end());
    }
    Value* element = elems[t.index];
    // An Optional[Tensor] element (nn.MultiheadAttention's weights) is read
    // as a tensor; run() refuses it when it is None.
    if (auto opt = element->type()->cast<c10::OptionalType>();
        opt && opt->getElementType()->isSubtypeOf(*c10::TensorType::get())) {
      torch::jit::WithInsertPoint guard(element->node()->next()->next());
      element = graph.insertUncheckedCast(element, c10::TensorType::get());
    }
    return element;
  }

  // The output of op t.op (occurrence t.occurrence) among a module's inlined nodes.
  Value* op_value(const std::vector<Node*>& body, const TapPoint& t) const {
    std::vector<Node*> found;
    std::set<std::string> names;
    int nested = 0;
    std::function<void(Node*, bool)> visit = [&](Node* n, bool inside) {
      const std::string name = op_name(n);
      if (name == t.op && inside) ++nested;
      if (name == t.op && !inside) found.push_back(n);
      if (!inside && !name.empty()) names.insert(name);
      for (auto* b : n->blocks())
        for (Node* m : b->nodes()) visit(m, true);
    };
    for (Node* n : body) visit(n, false);
    const std::string ops_hint = fmt::format("(`xcam layers {} --ops {}` lists them)", model->path(), t.path);
    XCAM_CHECK(!found.empty() || nested == 0,
               "layer '{}': the {} op(s) named '{}' inside '{}' run in an if or a loop of its forward, where no "
               "single value can be tapped; tap the module's output or another op {}",
               t.text, nested, t.op, t.path, ops_hint);
    if (found.empty()) {
      const auto near = closest_names(t.op, std::vector<std::string>(names.begin(), names.end()));
      XCAM_THROW("layer '{}': no op '{}' in the forward of '{}' in {}; {}{}", t.text, t.op, t.path, model->path(),
                 near.empty() ? "" : fmt::format("did you mean '{}'? ", fmt::join(near, "', '")), ops_hint);
    }
    XCAM_CHECK(t.occurrence >= 0 || found.size() == 1,
               "layer '{}': '{}' runs {} '{}' ops; say which with '{}/{}#0' to '#{}' {}", t.text, t.path, found.size(),
               t.op, t.path, t.op, found.size() - 1, ops_hint);
    XCAM_CHECK(t.occurrence < static_cast<int>(found.size()),
               "layer '{}': '{}' runs {} '{}' op(s); use '#0' to '#{}'", t.text, t.path, found.size(), t.op,
               found.size() - 1);
    Node* n = found[t.occurrence < 0 ? 0 : t.occurrence];
    const size_t outs = n->outputs().size();
    XCAM_CHECK(outs == 1 || t.index >= 0, "layer '{}': op '{}' has {} outputs; say which with '{}[0]' to '{}[{}]'",
               t.text, t.op, outs, t.text, t.text, outs - 1);
    XCAM_CHECK(t.index < static_cast<int>(outs), "layer '{}': op '{}' has {} output(s); use '[0]' to '[{}]'", t.text,
               t.op, outs, outs - 1);
    return n->output(std::max(0, t.index));
  }

  // detach(v), then requires_grad_ when v is floating point (an integer or
  // boolean tap, which `xcam layers --ops` may list, stays a plain value).
  static Value* make_leaf(Graph& graph, Value* v) {
    Value* detached = graph.insert(aten::detach, {v});
    Value* is_float = graph.insert(aten::is_floating_point, {detached});
    Node* branch = graph.insertNode(graph.create(prim::If, {is_float}, 1));
    branch->output()->setType(detached->type());
    torch::jit::Block* then_block = branch->addBlock();
    torch::jit::Block* else_block = branch->addBlock();
    {
      torch::jit::WithInsertPoint guard(then_block);
      then_block->registerOutput(graph.insert(aten::requires_grad_, {detached}));
    }
    else_block->registerOutput(detached);
    return branch->output();
  }

  void build() {
    for (const auto& p : model->module().parameters())
      unoptimised = unoptimised || p.scalar_type() == at::kBFloat16 || p.scalar_type() == at::kHalf;
    graph = model->module().get_method("forward").graph()->copy();
    const std::vector<Value*> chosen = inline_taps(graph);

    // Unique tapped values in graph order. A value that no earlier leaf leads
    // to becomes a leaf itself: on one chain only the earliest, on parallel
    // branches (a query and a reference through one encoder) one each.
    std::vector<Value*> order = chosen;
    std::sort(order.begin(), order.end());
    order.erase(std::unique(order.begin(), order.end()), order.end());
    std::sort(order.begin(), order.end(), [](Value* a, Value* b) { return a->node()->isBefore(b->node()); });
    std::vector<Value*> leaf_values;
    for (Value* v : order)
      if (!downstream_of(*graph, leaf_values).count(v)) leaf_values.push_back(v);
    std::unordered_map<Value*, Value*> exposed;
    for (Value* v : order) {
      torch::jit::WithInsertPoint guard(v->node()->next());
      Value* out = v;
      if (std::find(leaf_values.begin(), leaf_values.end(), v) != leaf_values.end()) out = make_leaf(*graph, v);
      // Downstream code reads a copy, so in-place ops after the tap (ReLU with
      // inplace=True, residual +=) leave the tapped value intact.
      Value* copy = graph->insert(aten::clone, {out});
      v->replaceAllUsesAfterNodeWith(copy->node(), copy);
      exposed[v] = out;
    }
    for (Value* v : chosen)
      leaf.push_back(std::find(leaf_values.begin(), leaf_values.end(), v) != leaf_values.end());

    std::vector<Value*> returned{graph->outputs()[0]};
    for (Value* v : order) returned.push_back(exposed.at(v));
    for (Value* v : chosen) tap_slot.push_back(std::find(order.begin(), order.end(), v) - order.begin() + 1);
    {
      torch::jit::WithInsertPoint guard(graph->return_node());
      Node* tuple = graph->insertNode(graph->createTuple(returned));
      graph->eraseOutput(0);
      graph->registerOutput(tuple->output());
    }
    // Every call left is inlined too: a submodule's call would run on its
    // own graph executor, which under autograd records the module as one
    // differentiable graph whose backward replays a gradient graph in the
    // interpreter (for the re-ID zoo model, half of the backward's time
    // after vit_last). Inlined, each op records its own autograd node.
    torch::jit::Inline(*graph);
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
    torch::jit::Inline(*g);  // the calls that remain, as in build()
    torch::jit::EliminateDeadCode(g);
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

std::vector<bool> TappedForward::leaves() const { return impl_->leaf; }

std::string TappedForward::graph_text() const { return impl_->graph->toString(); }

c10::IValue TappedForward::run_replacing(const std::vector<c10::IValue>& inputs, size_t tap,
                                        const at::Tensor& value, bool record_grad) {
  XCAM_CHECK(tap < impl_->taps.size(), "tap index {} out of range ({} taps)", tap, impl_->taps.size());
  auto& code = impl_->replacing_code(tap);
  torch::jit::Stack stack;
  stack.reserve(inputs.size() + 2);
  stack.emplace_back(impl_->model->module()._ivalue());
  for (const auto& i : inputs) stack.push_back(i);
  stack.emplace_back(value);
  c10::AutoGradMode grad(record_grad);
  std::optional<torch::jit::GraphOptimizerEnabledGuard> plain;
  if (impl_->unoptimised) plain.emplace(false);
  torch::jit::InterpreterState state(code);
  state.run(stack);
  return stack.back();
}

void TappedForward::warm_replacing(size_t tap) {
  XCAM_CHECK(tap < impl_->taps.size(), "tap index {} out of range ({} taps)", tap, impl_->taps.size());
  impl_->replacing_code(tap);
}

TappedForward::Result TappedForward::run(const std::vector<c10::IValue>& inputs, bool record_grad) {
  torch::jit::Stack stack;
  stack.reserve(inputs.size() + 1);
  stack.emplace_back(impl_->model->module()._ivalue());
  for (const auto& i : inputs) stack.push_back(i);
  {
    c10::AutoGradMode grad(record_grad);
    std::optional<torch::jit::GraphOptimizerEnabledGuard> plain;
    if (impl_->unoptimised) plain.emplace(false);
    torch::jit::InterpreterState state(*impl_->code);
    state.run(stack);
  }
  const auto elems = stack.back().toTupleRef().elements();
  Result r;
  r.output = elems[0];
  for (size_t i = 0; i < impl_->tap_slot.size(); ++i) {
    const auto& v = elems[impl_->tap_slot[i]];
    XCAM_CHECK(v.isTensor(), "layer '{}' in {} is None in this run (nn.MultiheadAttention returns its weights only "
               "when called with need_weights=True); tap the softmax inside the attention instead",
               impl_->taps[i].text, impl_->model->path());
    r.taps.push_back(v.toTensor());
  }
  return r;
}

}  // namespace xcam

// ------------------------------------------------------------ inspection ----

#include "xcam/inspect.h"
#include "xcam/plugin.h"
#include "xcam/plugin_loader.h"

namespace xcam {

namespace {

// The forward inputs the listings feed: a random image, or what the
// plugin's prepare() makes of one. Plugin errors are re-raised as the host's
// before the plugin's library is closed.
std::vector<c10::IValue> probe_inputs(Model& model, const ProbeInput& in) {
  torch::manual_seed(0);
  if (in.plugin.empty()) {
    const auto& schema = model.module().get_method("forward").function().getSchema();
    std::vector<std::string> args;
    for (size_t i = 1; i < schema.arguments().size(); ++i)
      if (!schema.arguments()[i].default_value()) args.push_back(schema.arguments()[i].name());
    XCAM_CHECK(args.size() == 1,
               "model {} takes {} inputs in forward({}); without a plugin `xcam layers` feeds one image tensor, so "
               "name the plugin that builds its inputs: --plugin NAME",
               model.path(), args.size(), fmt::join(args, ", "));
    return {torch::randn({1, 3, in.height, in.width})};
  }
  const auto lib = find_plugin(in.plugin, plugin_search_path(in.plugin_dirs));
  const auto& d = lib->descriptor();
  std::unique_ptr<ArchPlugin, void (*)(ArchPlugin*)> plugin(d.create(plugin_host(), in.plugin_options.c_str()),
                                                           d.destroy);
  XCAM_CHECK(plugin != nullptr, "plugin '{}' refused its options {}", lib->file(), in.plugin_options);
  try {
    auto pre = plugin->preprocess();
    if (in.height > 0) pre.height = in.height;
    if (in.width > 0) pre.width = in.width;
    Batch b;
    b.ids = {"probe"};
    b.samples = {Sample{"probe", {}, in.text, {}, {}}};
    if (!in.text_only) {
      b.images = torch::randn({1, 3, pre.height, pre.width});
      b.samples[0].images["image"] = b.images[0];
    }
    plugin->prepare(model.module(), b);
    return b.inputs;
  } catch (const c10::Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Error(fmt::format("plugin '{}' could not feed {}: {}", in.plugin, model.path(), e.what()), __FILE__,
                __LINE__);
  }
}

// The model's forward on the probe input with `taps`, or a one-line error
// when the model cannot be fed that way.
std::vector<at::Tensor> probe_shapes(Model& model, const std::vector<std::string>& taps, const ProbeInput& in) {
  const auto inputs = probe_inputs(model, in);
  TappedForward all(model, taps);
  try {
    return all.run(inputs, /*record_grad=*/false).taps;
  } catch (const c10::Error& e) {
    std::string why = e.what_without_backtrace();
    XCAM_THROW("model {} fails on the probe input ({}): {}; give the size it expects with --size H W, or the "
               "plugin that feeds it with --plugin",
               model.path(), in.plugin.empty() ? fmt::format("a random 1 x 3 x {} x {} image", in.height, in.width)
                                               : "made by plugin " + in.plugin,
               why.substr(0, why.find('\n')));
  }
}

// The number of elements of the tuple module `path` returns (0: not a tuple).
size_t tuple_size(Model& model, const std::string& path) {
  size_t n = 0;
  for (; n < 64; ++n) {
    try {
      TappedForward probe(model, {path + "[" + std::to_string(n) + "]"});
    } catch (const Error&) {
      break;
    }
  }
  return n;
}

}  // namespace

std::vector<LayerInfo> list_layers(const std::string& model_path, const ProbeInput& in) {
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
      out.push_back(std::move(info));
    } catch (const Error& e) {
      std::string why = e.what();
      const size_t elements = tuple_size(model, item.name);
      info.shape = elements > 0 ? fmt::format("a tuple of {}:", elements) : "not tappable: " + why.substr(0, why.find(';'));
      out.push_back(info);
      // A module that returns a tuple: a row per element, tappable as `path[k]`.
      for (size_t k = 0; k < elements; ++k) {
        LayerInfo el;
        el.path = fmt::format("{}[{}]", item.name, k);
        el.type = "  (element)";
        el.tappable = true;
        ok.push_back(el.path);
        out.push_back(std::move(el));
      }
    }
  }
  if (!ok.empty()) {
    const auto shapes = probe_shapes(model, ok, in);
    size_t k = 0;
    for (auto& info : out)
      if (info.tappable) info.shape = c10::str(shapes[k++].sizes());
  }
  // Call counts: tap each tappable path at increasing indices until refused.
  for (auto& info : out) {
    if (!info.tappable) continue;
    const auto t = parse_tap(info.path);
    info.calls = 1;
    for (int i = 1; i < 64; ++i) {
      try {
        TappedForward probe(model, {t.path + "@" + std::to_string(i) + info.path.substr(t.path.size())});
        info.calls = i + 1;
      } catch (const Error&) {
        break;
      }
    }
  }
  return out;
}

std::vector<LayerInfo> list_ops(const std::string& model_path, const std::string& module_path, const ProbeInput& in) {
  Model model = Model::load(model_path);
  std::optional<torch::jit::Module> owner;
  for (const auto& item : model.module().named_modules())
    if (item.name == module_path) owner = item.value;
  if (!owner) {
    const auto near = closest_names(module_path, model.module_paths());
    XCAM_THROW("module '{}' not found in {}; {}(`xcam layers {}` lists all)", module_path, model_path,
               near.empty() ? "" : fmt::format("did you mean '{}'? ", fmt::join(near, "', '")), model_path);
  }
  // The module's own forward, as a tap inlines it: its aten ops in order.
  const auto graph = owner->get_method("forward").graph();
  std::map<std::string, int> total, seen;
  for (Node* n : graph->nodes())
    if (!op_name(n).empty()) ++total[op_name(n)];
  std::vector<LayerInfo> out;
  std::vector<std::string> ok;
  std::function<void(torch::jit::Block*, bool)> visit = [&](torch::jit::Block* block, bool nested) {
    for (Node* n : block->nodes()) {
      const std::string name = op_name(n);
      if (!name.empty()) {
        LayerInfo info;
        info.type = op_kind(n);
        info.calls = 1;
        if (nested) {
          info.path = module_path + "/" + name;
          info.shape = "not tappable: inside an if or a loop";
        } else {
          const int j = seen[name]++;
          info.path = module_path + "/" + name + (total[name] > 1 ? "#" + std::to_string(j) : "");
          for (size_t k = 0; k < n->outputs().size(); ++k) {
            LayerInfo o = info;
            if (n->outputs().size() > 1) o.path += fmt::format("[{}]", k);
            o.tappable = n->output(k)->type()->isSubtypeOf(*c10::TensorType::get());
            if (o.tappable)
              ok.push_back(o.path);
            else
              o.shape = "not a tensor: " + n->output(k)->type()->repr_str();
            out.push_back(std::move(o));
          }
          if (n->outputs().empty()) {
            info.shape = "no output";
            out.push_back(std::move(info));
          }
          continue;
        }
        out.push_back(std::move(info));
      }
      for (auto* b : n->blocks()) visit(b, true);
    }
  };
  visit(graph->block(), false);
  if (!ok.empty()) {
    const auto shapes = probe_shapes(model, ok, in);
    size_t k = 0;
    for (auto& info : out)
      if (info.tappable) info.shape = c10::str(shapes[k++].sizes());
  }
  return out;
}

}  // namespace xcam
