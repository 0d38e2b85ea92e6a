// The perturbed forwards' convolutions on oneDNN; see onednn_convs.h.
#include "onednn_convs.h"

#include <torch/csrc/jit/ir/alias_analysis.h>
#include <torch/csrc/jit/ir/constants.h>
#include <torch/csrc/jit/ir/ir.h>
#include <torch/library.h>
#include <torch/script.h>

#include <algorithm>
#include <vector>

#if defined(XCAM_WITH_ONEDNN)
#include <dnnl.hpp>
#if DNNL_VERSION_MAJOR != 2
#undef XCAM_WITH_ONEDNN  // written against the v2 C++ API; v3 reshaped the descriptors
#endif
#endif

#if defined(XCAM_WITH_ONEDNN)
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <tuple>
#include <unordered_map>
#endif

namespace xcam::onednn {

#if defined(XCAM_WITH_ONEDNN)

namespace {

using dnnl::memory;
using Dims = memory::dims;
using Tag = memory::format_tag;
constexpr auto kF32 = memory::data_type::f32;
// Channels per block of oneDNN's blocked layout: the vector width of the
// machine's kernels, 16 floats with AVX-512 (nChw16c), 8 without (nChw8c).
// A layout the kernels do not vectorise over sends oneDNN to its reference
// convolution, hundreds of times slower (seen: Score-CAM on resnet18, 5.8 s
// with AVX-512, 42 min on an AVX2 machine with nChw16c).
const bool kWide = __builtin_cpu_supports("avx512f");
const int64_t kBlock = kWide ? 16 : 8;
const memory::format_tag kBlocked = kWide ? memory::format_tag::nChw16c : memory::format_tag::nChw8c;

const dnnl::engine& cpu_engine() {
  static const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// ---------------------------------------------------------------- layouts ---
// A 4-D tensor is NCHW; a 5-D one is the blocked layout N x C/B x H x W x B (B = kBlock).

Dims logical_dims(const at::Tensor& t) {
  if (t.dim() == 5) return {t.size(0), t.size(1) * kBlock, t.size(2), t.size(3)};
  return {t.size(0), t.size(1), t.size(2), t.size(3)};
}

memory::desc layout_desc(const at::Tensor& t) {
  return memory::desc(logical_dims(t), kF32, t.dim() == 5 ? kBlocked : Tag::nchw);
}

memory wrap(const at::Tensor& t) { return memory(layout_desc(t), cpu_engine(), t.data_ptr()); }

void reorder(const memory& from, const memory& to) {
  dnnl::stream stream(cpu_engine());
  dnnl::reorder(from, to).execute(stream, const_cast<memory&>(from), const_cast<memory&>(to));
  stream.wait();
}

at::Tensor to_nchw(const at::Tensor& t) {
  if (t.dim() != 5) return t.contiguous();
  const Dims d = logical_dims(t);
  at::Tensor out = at::empty(at::IntArrayRef(d.data(), d.size()), t.options());
  reorder(wrap(t.contiguous()), wrap(out));
  return out;
}

at::Tensor to_blocked(const at::Tensor& nchw) {
  at::Tensor out = at::empty({nchw.size(0), nchw.size(1) / kBlock, nchw.size(2), nchw.size(3), kBlock}, nchw.options());
  reorder(wrap(nchw.contiguous()), wrap(out));
  return out;
}

// A per-thread buffer of at least `md`'s size, reused call after call: fresh
// buffers of tens of MB would cost more in page faults than the reorders
// that fill them.
void* scratch(int slot, const memory::desc& md) {
  thread_local std::vector<float> bufs[3];
  auto& buf = bufs[slot];
  const size_t n = (md.get_size() + sizeof(float) - 1) / sizeof(float);
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

// `m` itself when it has the layout `want`, else its copy in scratch `slot`.
memory in_layout(const memory& m, const memory::desc& want, int slot, dnnl::stream& stream) {
  if (m.get_desc() == want) return m;
  memory copy(want, cpu_engine(), scratch(slot, want));
  dnnl::reorder(m, copy).execute(stream, const_cast<memory&>(m), copy);
  return copy;
}

// Where a kernel writes `md` for the output `user`: `user` itself when the
// layouts agree, else scratch `slot` (then copied out by to_user).
memory staging(const memory& user, const memory::desc& md, int slot) {
  return md == user.get_desc() ? user : memory(md, cpu_engine(), scratch(slot, md));
}

void to_user(memory& staged, memory& user, dnnl::stream& stream) {
  if (staged.get_data_handle() != user.get_data_handle()) dnnl::reorder(staged, user).execute(stream, staged, user);
}

// A new output tensor of logical NCHW dims `d`, in the blocked layout or NCHW.
at::Tensor empty_output(const Dims& d, bool blocked, const at::TensorOptions& options) {
  if (blocked) return at::empty({d[0], d[1] / kBlock, d[2], d[3], kBlock}, options);
  return at::empty(at::IntArrayRef(d.data(), d.size()), options);
}

// The user-managed scratchpad a primitive asks for, from scratch slot 2.
void add_scratchpad(std::unordered_map<int, memory>& args, const dnnl::primitive_desc& pd) {
  const memory::desc md = pd.scratchpad_desc();
  if (md.get_size() > 0) args.emplace(DNNL_ARG_SCRATCHPAD, memory(md, cpu_engine(), scratch(2, md)));
}

// ------------------------------------------------------------------ plans ---

struct ConvParams {
  std::vector<int64_t> stride, padding, dilation;
  int64_t groups = 1;
  bool winograd = false, relu = false, residual = false, blocked_out = false;
  auto key() const { return std::make_tuple(stride, padding, dilation, groups, winograd, relu, residual, blocked_out); }
};

Dims weight_dims(const at::Tensor& w, int64_t groups) {
  if (groups == 1) return {w.size(0), w.size(1), w.size(2), w.size(3)};
  return {groups, w.size(0) / groups, w.size(1), w.size(2), w.size(3)};
}

// The primitive descriptor of `w` convolving `src` (logical NCHW dims), or
// none when oneDNN has no implementation (Winograd: for this shape or CPU).
std::optional<dnnl::convolution_forward::primitive_desc> make_pd(const Dims& src, const at::Tensor& w,
                                                                 bool has_bias, const ConvParams& p) {
  Dims dst{src[0], w.size(0), 0, 0}, strides, pad, dil;
  for (int i = 0; i < 2; ++i) {
    const int64_t k = w.size(2 + i);
    dst[2 + i] = (src[2 + i] + 2 * p.padding[i] - p.dilation[i] * (k - 1) - 1) / p.stride[i] + 1;
    strides.push_back(p.stride[i]);
    pad.push_back(p.padding[i]);
    dil.push_back(p.dilation[i] - 1);  // oneDNN counts the gaps
  }
  if (dst[2] <= 0 || dst[3] <= 0) return std::nullopt;
  const memory::desc src_md(src, kF32, Tag::any), w_md(weight_dims(w, p.groups), kF32, Tag::any);
  const memory::desc dst_md(dst, kF32, p.blocked_out ? kBlocked : Tag::any);
  const memory::desc b_md = has_bias ? memory::desc({w.size(0)}, kF32, Tag::x) : memory::desc();
  dnnl::post_ops ops;
  if (p.residual) ops.append_sum(1.f);
  if (p.relu) ops.append_eltwise(1.f, dnnl::algorithm::eltwise_relu, 0.f, 0.f);
  dnnl::primitive_attr attr;
  attr.set_post_ops(ops);
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);  // per-thread scratchpads: safe to run from several threads
  const auto alg = p.winograd ? dnnl::algorithm::convolution_winograd : dnnl::algorithm::convolution_direct;
  try {
    const dnnl::convolution_forward::desc d(dnnl::prop_kind::forward_inference, alg, src_md, w_md, b_md, dst_md,
                                            strides, dil, pad, pad);
    return dnnl::convolution_forward::primitive_desc(d, attr, cpu_engine());
  } catch (const dnnl::error&) {
    return std::nullopt;  // dnnl_unimplemented
  }
}

// A convolution for one weight, input shape and layout, and parameters, with
// the weights reordered once into the layout the kernel wants. `weight` keeps
// the graph's constant alive, so its address (the key) cannot be reused by
// another tensor while the plan is cached.
struct Plan {
  at::Tensor weight, bias;
  bool ok = false;
  dnnl::convolution_forward::primitive_desc pd;
  dnnl::convolution_forward conv;
  memory weights, bias_mem;
};

class PlanCache {
 public:
  // Plans of weights that only this cache still holds (their graph is gone)
  // are dropped whenever a new plan is made.
  const Plan& get(const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& x, const ConvParams& p) {
    Key key{weight.unsafeGetTensorImpl(), x.sizes().vec(), p.key()};
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = plans_.find(key);
    if (it != plans_.end()) return it->second;
    drop_unused();
    Plan& plan = plans_[key];
    plan.weight = weight;
    auto pd = make_pd(logical_dims(x), weight, bias.defined(), p);
    if (!pd && p.winograd) {  // no Winograd kernel for this shape: direct
      ConvParams direct = p;
      direct.winograd = false;
      pd = make_pd(logical_dims(x), weight, bias.defined(), direct);
    }
    if (!pd) return plan;
    plan.pd = *pd;
    plan.conv = dnnl::convolution_forward(plan.pd);
    plan.weights = transformed(weight, p.groups, plan.pd.weights_desc());
    if (bias.defined()) {
      plan.bias = bias.contiguous();
      plan.bias_mem = memory(plan.pd.bias_desc(), cpu_engine(), plan.bias.data_ptr());
    }
    plan.ok = true;
    return plan;
  }

  void release_unused() {
    std::lock_guard<std::mutex> lock(mutex_);
    drop_unused();
  }

  CacheStats stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    CacheStats st;
    st.plans = plans_.size();
    for (const auto& [w, copies] : transformed_)
      for (const auto& m : copies) st.weight_bytes += m.get_desc().get_size();
    return st;
  }

 private:
  // Drops the plans of weights that only the plans themselves still hold
  // (their graph is gone), and the transformed weights no plan uses.
  void drop_unused() {
    std::map<const void*, size_t> held;
    for (const auto& [key, plan] : plans_) ++held[plan.weight.unsafeGetTensorImpl()];
    for (auto q = plans_.begin(); q != plans_.end();) {
      const at::Tensor& w = q->second.weight;
      q = w.use_count() <= held[w.unsafeGetTensorImpl()] ? plans_.erase(q) : std::next(q);
    }
    std::set<const void*> used;
    for (const auto& [key, plan] : plans_) used.insert(plan.weight.unsafeGetTensorImpl());
    for (auto q = transformed_.begin(); q != transformed_.end();) q = used.count(q->first) ? std::next(q) : transformed_.erase(q);
  }

  // `weight` in the layout `md`, transformed once for all the plans that
  // want it (one per batch size, say; Winograd's transform of a 512 x 512 x 3
  // x 3 weight takes ~60 ms).
  // Keyed by the weight's address: only called for the weight of a plan
  // being made, and dropped with its weight's last plan, so never stale.
  memory transformed(const at::Tensor& weight, int64_t groups, const memory::desc& md) {
    auto& known = transformed_[weight.unsafeGetTensorImpl()];
    for (const auto& m : known)
      if (m.get_desc() == md) return m;
    const at::Tensor w = weight.contiguous();
    const memory user({weight_dims(w, groups), kF32, groups == 1 ? Tag::oihw : Tag::goihw}, cpu_engine(),
                      w.data_ptr());
    memory m(md, cpu_engine());
    reorder(user, m);
    known.push_back(m);
    return m;
  }

  using Key = std::tuple<const void*, std::vector<int64_t>, decltype(ConvParams{}.key())>;
  std::mutex mutex_;
  std::map<Key, Plan> plans_;
  std::map<const void*, std::vector<memory>> transformed_;
};

PlanCache& plan_cache() {
  static PlanCache cache;
  return cache;
}

// ---------------------------------------------------------------- the op ---

at::Tensor conv2d_onednn(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias_opt,
                         at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                         bool winograd, bool relu, const c10::optional<at::Tensor>& residual_opt,
                         bool residual_inplace, bool blocked_out) {
  const at::Tensor bias = bias_opt.has_value() ? *bias_opt : at::Tensor();
  const at::Tensor residual = residual_opt.has_value() ? *residual_opt : at::Tensor();
  blocked_out = blocked_out && weight.size(0) % kBlock == 0;
  ConvParams p{stride.vec(), padding.vec(), dilation.vec(), groups, winograd, relu, residual.defined(), blocked_out};

  const auto fallback = [&] {
    at::Tensor y = at::conv2d(to_nchw(input), weight, bias, stride, padding, dilation, groups);
    if (residual.defined()) y = y + to_nchw(residual);
    if (relu) y = y.relu();
    return blocked_out ? to_blocked(y) : y;
  };
  const bool eligible = input.device().is_cpu() && input.scalar_type() == at::kFloat &&
                        (input.dim() == 4 || input.dim() == 5) && weight.dim() == 4 &&
                        weight.scalar_type() == at::kFloat && weight.device().is_cpu() && stride.size() == 2 &&
                        padding.size() == 2 && dilation.size() == 2 &&
                        (!residual.defined() || residual.scalar_type() == at::kFloat);
  if (!eligible) return fallback();
  const at::Tensor x = input.contiguous();
  const Plan& plan = plan_cache().get(weight, bias, x, p);
  if (!plan.ok) return fallback();
  const memory::desc dst_md = plan.pd.dst_desc();
  const Dims out_dims = dst_md.dims();
  if (residual.defined() && logical_dims(residual) != out_dims) return fallback();  // broadcast addition

  const auto& engine = cpu_engine();
  dnnl::stream stream(engine);
  const memory src = in_layout(wrap(x), plan.pd.src_desc(), 0, stream);
  // The output: the residual's own buffer when the graph allows it (its
  // other readers ran before) and it has the layout the kernel writes; else
  // a new tensor, written directly when the kernel writes its layout.
  const bool reuse = residual.defined() && residual_inplace && residual.is_contiguous() &&
                     layout_desc(residual) == dst_md && residual.dim() == (blocked_out ? 5 : 4);
  const at::Tensor out = reuse ? residual : empty_output(out_dims, blocked_out, x.options());
  memory user_dst = wrap(out);
  memory dst = staging(user_dst, dst_md, 1);
  if (residual.defined() && !out.is_same(residual)) {  // the sum post-op adds the convolution onto what dst holds
    if (dst.get_data_handle() == out.data_ptr() && residual.sizes() == out.sizes()) {
      out.copy_(residual);  // same layout: a parallel copy
    } else {
      memory res = wrap(residual.contiguous());
      dnnl::reorder(res, dst).execute(stream, res, dst);
    }
  }
  std::unordered_map<int, memory> args{{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, plan.weights}, {DNNL_ARG_DST, dst}};
  if (plan.bias.defined()) args.emplace(DNNL_ARG_BIAS, plan.bias_mem);
  add_scratchpad(args, plan.pd);
  plan.conv.execute(stream, args);
  to_user(dst, user_dst, stream);
  stream.wait();
  return out;
}

// at::max_pool2d(input, kernel_size, stride, padding) (no dilation, floor
// mode) on the blocked layout, for a pooling between chained convolutions.
at::Tensor max_pool2d_onednn(const at::Tensor& input, at::IntArrayRef kernel, at::IntArrayRef stride,
                             at::IntArrayRef padding, bool blocked_out) {
  const bool eligible = input.device().is_cpu() && input.scalar_type() == at::kFloat &&
                        (input.dim() == 5 || (input.dim() == 4 && input.size(1) % kBlock == 0)) &&
                        kernel.size() == 2 && stride.size() == 2 && padding.size() == 2;
  if (!eligible) {
    const at::Tensor y = at::max_pool2d(to_nchw(input), kernel, stride, padding);
    return blocked_out && y.size(1) % kBlock == 0 ? to_blocked(y) : y;
  }
  const Dims src_dims = logical_dims(input);
  Dims dst_dims{src_dims[0], src_dims[1], 0, 0};
  for (int i = 0; i < 2; ++i) dst_dims[2 + i] = (src_dims[2 + i] + 2 * padding[i] - kernel[i]) / stride[i] + 1;
  const memory::desc src_md(src_dims, kF32, kBlocked), dst_md(dst_dims, kF32, kBlocked);
  const auto& engine = cpu_engine();
  dnnl::stream stream(engine);
  const at::Tensor x = input.contiguous();
  const memory src = in_layout(wrap(x), src_md, 0, stream);
  const at::Tensor out = empty_output(dst_dims, blocked_out, x.options());
  memory user_dst = wrap(out);
  memory dst = staging(user_dst, dst_md, 1);
  const Dims pad{padding[0], padding[1]};
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  const dnnl::pooling_forward::primitive_desc pd(
      dnnl::pooling_forward::desc(dnnl::prop_kind::forward_inference, dnnl::algorithm::pooling_max, src_md, dst_md,
                                  {stride[0], stride[1]}, {kernel[0], kernel[1]}, pad, pad),
      attr, engine);
  std::unordered_map<int, memory> args{{DNNL_ARG_SRC, src}, {DNNL_ARG_DST, dst}};
  add_scratchpad(args, pd);
  dnnl::pooling_forward(pd).execute(stream, args);
  to_user(dst, user_dst, stream);
  stream.wait();
  return out;
}

}  // namespace

TORCH_LIBRARY(xcam, m) {
  m.def(
      "conv2d_onednn(Tensor input, Tensor weight, Tensor? bias, int[] stride, int[] padding, int[] dilation, "
      "int groups, bool winograd, bool relu, Tensor? residual, bool residual_inplace, bool blocked_out) -> Tensor",
      &conv2d_onednn);
  m.def(
      "max_pool2d_onednn(Tensor input, int[] kernel_size, int[] stride, int[] padding, bool blocked_out) -> Tensor",
      &max_pool2d_onednn);
}

bool available() { return true; }

void release_unused() { plan_cache().release_unused(); }
CacheStats cache_stats() { return plan_cache().stats(); }

// ------------------------------------------------------------------ pass ---

namespace {

using torch::jit::Node;
using torch::jit::Value;

constexpr size_t kInput = 0, kRelu = 8, kResidual = 9, kResidualInplace = 10, kBlockedOut = 11;
constexpr size_t kPoolBlockedOut = 4;

const c10::Symbol& conv_op() {
  static const auto op = c10::Symbol::fromQualString("xcam::conv2d_onednn");
  return op;
}

const c10::Symbol& pool_op() {
  static const auto op = c10::Symbol::fromQualString("xcam::max_pool2d_onednn");
  return op;
}

bool is_ours(const Node* n) { return n->kind() == conv_op() || n->kind() == pool_op(); }

// A max pooling that reads one of our outputs, on the blocked layout too.
Node* replace_max_pool(torch::jit::Graph& graph, Node* n) {
  using torch::jit::toIValue;
  if (!n->matches("aten::max_pool2d(Tensor self, int[2] kernel_size, int[2] stride=[], int[2] padding=0, "
                  "int[2] dilation=1, bool ceil_mode=False) -> Tensor") ||
      !is_ours(n->input(0)->node()))
    return nullptr;
  const auto kernel = toIValue(n->input(1));
  const auto stride = toIValue(n->input(2));
  const auto padding = toIValue(n->input(3));
  const auto dilation = toIValue(n->input(4));
  const auto ceil = toIValue(n->input(5));
  if (!kernel || !stride || !padding || !dilation || !ceil || !ceil->isBool() || ceil->toBool()) return nullptr;
  const auto k = kernel->toIntVector(), d = dilation->toIntVector(), p = padding->toIntVector();
  auto st = stride->toIntVector();
  if (st.empty()) st = k;  // PyTorch: stride defaults to the kernel size
  if (k.size() != 2 || st.size() != 2 || p.size() != 2 || d != std::vector<int64_t>{1, 1}) return nullptr;
  torch::jit::WithInsertPoint guard(n);
  Node* call = graph.create(pool_op(), {n->input(0), graph.insertConstant(k), graph.insertConstant(st),
                                        graph.insertConstant(p), graph.insertConstant(false)});
  call->insertBefore(n);
  call->output()->setType(n->output()->type());
  n->output()->replaceAllUsesWith(call->output());
  n->destroy();
  return call;
}

// The replacement of one convolution node, or nullptr when it is not ours to take.
Node* replace_convolution(torch::jit::Graph& graph, Node* n, bool winograd, RewriteStats& stats) {
  using torch::jit::toIValue;
  const bool full = n->kind() == c10::aten::_convolution;
  if (!full && !n->matches("aten::conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
                           "int[2] dilation, int groups) -> Tensor"))
    return nullptr;  // the string-padding overload
  const auto weight = toIValue(n->input(1));
  const auto bias = toIValue(n->input(2));
  const auto stride = toIValue(n->input(3));
  const auto padding = toIValue(n->input(4));
  const auto dilation = toIValue(n->input(5));
  const auto groups = toIValue(n->input(full ? 8 : 6));
  if (!weight || !weight->isTensor() || !bias || !(bias->isTensor() || bias->isNone()) || !stride || !padding ||
      !dilation || !groups || !groups->isInt())
    return nullptr;
  if (full) {
    const auto transposed = toIValue(n->input(6));
    if (!transposed || !transposed->isBool() || transposed->toBool()) return nullptr;
  }
  const at::Tensor w = weight->toTensor();
  if (w.dim() != 4 || w.scalar_type() != at::kFloat || !w.device().is_cpu()) return nullptr;
  if (bias->isTensor() && bias->toTensor().scalar_type() != at::kFloat) return nullptr;
  ConvParams p{stride->toIntVector(), padding->toIntVector(), dilation->toIntVector(), groups->toInt()};
  if (p.stride.size() != 2 || p.padding.size() != 2 || p.dilation.size() != 2) return nullptr;

  // Winograd where oneDNN accepts the convolution (acceptance depends on the
  // channels and the CPU, not on the batch or image size: one probe decides)
  // and where it pays: with fewer than 32 input or output channels its
  // transforms cost more than they save (the shapes CNN's 3->16 and 16->32
  // layers: 28.2 and 8.9 ms on Winograd against 12.5 and 6.9 ms direct, 32
  // images of 128 x 128; 32->64: 3.0 against 5.5 ms).
  p.winograd = winograd && w.size(2) == 3 && w.size(3) == 3 && p.stride == std::vector<int64_t>{1, 1} &&
               p.dilation == std::vector<int64_t>{1, 1} && p.groups == 1 && std::min(w.size(0), w.size(1)) >= 32 &&
               make_pd({32, w.size(1), 28, 28}, w, bias->isTensor(), p).has_value();

  torch::jit::WithInsertPoint guard(n);
  Value* none = graph.insertConstant(c10::IValue());
  Node* call = graph.create(conv_op(), {n->input(0), n->input(1), n->input(2), n->input(3), n->input(4), n->input(5),
                                        graph.insertConstant(p.groups), graph.insertConstant(p.winograd),
                                        graph.insertConstant(false), none, graph.insertConstant(false),
                                        graph.insertConstant(false)});
  call->insertBefore(n);
  call->output()->setType(n->output()->type());
  n->output()->replaceAllUsesWith(call->output());
  n->destroy();
  ++stats.convolutions;
  stats.winograd += p.winograd;
  return call;
}

// The only user of `v`, or nullptr.
Node* sole_user(Value* v) { return v->uses().size() == 1 ? v->uses()[0].user : nullptr; }

void set_flag(torch::jit::Graph& graph, Node* call, size_t index, bool value) {
  torch::jit::WithInsertPoint guard(call);
  call->replaceInput(index, graph.insertConstant(value));
}

// Folds `call`'s output + other (alpha 1) into the convolution.
bool fuse_add(const std::shared_ptr<torch::jit::Graph>& graph, Node* call) {
  Node* add = sole_user(call->output());
  if (!add) return false;
  const bool inplace = add->matches("aten::add_.Tensor(Tensor(a!) self, Tensor other, *, Scalar alpha=1) -> Tensor(a!)");
  if (!inplace && !add->matches("aten::add.Tensor(Tensor self, Tensor other, *, Scalar alpha=1) -> Tensor"))
    return false;
  // In place, the convolution's output must be the one written to.
  if (inplace && add->input(0) != call->output()) return false;
  const auto alpha = torch::jit::toIValue(add->input(2));
  if (!alpha || !((alpha->isInt() && alpha->toInt() == 1) || (alpha->isDouble() && alpha->toDouble() == 1.0)))
    return false;
  Value* other = add->input(0) == call->output() ? add->input(1) : add->input(0);
  if (other == call->output()) return false;
  // The residual must exist before the convolution runs: move the convolution
  // down to just after the residual's definition when it comes later (a
  // ResNet's downsample branch), if no write in between forbids it.
  Node* def = other->node();
  if (def->kind() != c10::prim::Param) {
    if (def->owningBlock() != call->owningBlock()) return false;
    if (call->isBefore(def)) {
      torch::jit::AliasDb alias(graph);
      if (!alias.moveAfterTopologicallyValid(call, def)) return false;
    }
  }
  call->replaceInput(kResidual, other);
  add->output()->replaceAllUsesWith(call->output());
  add->destroy();
  return true;
}

bool fuse_relu(torch::jit::Graph& graph, Node* call) {
  Node* relu = sole_user(call->output());
  if (!relu || (relu->kind() != c10::aten::relu && relu->kind() != c10::aten::relu_)) return false;
  set_flag(graph, call, kRelu, true);
  relu->output()->replaceAllUsesWith(call->output());
  relu->destroy();
  return true;
}

}  // namespace

RewriteStats rewrite_convolutions(const std::shared_ptr<torch::jit::Graph>& graph, bool winograd) {
  RewriteStats stats;
  std::vector<Node*> convs, calls;
  for (Node* n : graph->nodes())  // a frozen graph is inlined: convolutions are not inside sub-blocks
    if (n->kind() == c10::aten::conv2d || n->kind() == c10::aten::_convolution) convs.push_back(n);
  for (Node* n : convs)
    if (Node* call = replace_convolution(*graph, n, winograd, stats)) calls.push_back(call);
  for (Node* call : calls) {
    if (fuse_add(graph, call)) ++stats.fused_add;
    if (fuse_relu(*graph, call)) ++stats.fused_relu;
  }
  std::vector<Node*> pools;
  for (Node* n : graph->nodes())
    if (n->kind() == c10::aten::max_pool2d) pools.push_back(n);
  for (Node* n : pools)
    if (Node* call = replace_max_pool(*graph, n)) calls.push_back(call);

  for (Node* call : calls) {
    // Blocked output where every reader is one of ours, as input or residual.
    const auto& uses = call->output()->uses();
    const bool chained = !uses.empty() && std::all_of(uses.begin(), uses.end(), [](const torch::jit::Use& u) {
      return u.user->kind() == pool_op() ? u.offset == kInput
                                         : is_ours(u.user) && (u.offset == kInput || u.offset == kResidual);
    });
    const int64_t channels = call->kind() == conv_op() ? torch::jit::toIValue(call->input(1))->toTensor().size(0)
                                                       : -1;  // a pooling keeps its input's channels
    const bool divisible = channels < 0 ? true : channels % kBlock == 0;
    if (chained && divisible) {
      set_flag(*graph, call, call->kind() == conv_op() ? kBlockedOut : kPoolBlockedOut, true);
      ++stats.blocked;
    }
    // The residual's buffer becomes the output when the residual is a fresh
    // tensor of ours that nothing reads after this convolution.
    if (call->kind() == conv_op()) {
      Value* res = call->input(kResidual);
      const bool fresh = is_ours(res->node());
      const bool last = std::all_of(res->uses().begin(), res->uses().end(), [&](const torch::jit::Use& u) {
        return u.user == call || u.user->isBefore(call);
      });
      if (fresh && last) set_flag(*graph, call, kResidualInplace, true);
    }
  }
  return stats;
}

#else  // !XCAM_WITH_ONEDNN

bool available() { return false; }
void release_unused() {}
CacheStats cache_stats() { return {}; }
RewriteStats rewrite_convolutions(const std::shared_ptr<torch::jit::Graph>&, bool) { return {}; }

#endif

}  // namespace xcam::onednn
