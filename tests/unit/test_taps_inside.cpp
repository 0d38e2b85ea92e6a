// Taps wherever a value flows, on tiny attention models made at test time by
// zoo/attention_models.py (traced and scripted, with float64 references from
// a separate reimplementation): ops inside a module's forward (the attention
// probabilities, timm-style and Hugging-Face-style), tuple elements
// (nn.MultiheadAttention's weights), module inputs, parallel branches that
// are each their own autograd leaf, and the errors for what cannot be tapped.
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/script.h>

#include "../common.h"
#include "xcam/error.h"
#include "xcam/io.h"
#include "xcam/model.h"

namespace {

using xcam::Model;
using xcam::TapPoint;
using xcam::TappedForward;

std::string zoo(const std::string& name) { return xcam::test::models("attention/" + name); }

at::Tensor npy(const std::string& name) {
  const auto a = xcam::read_npy(zoo(name));
  return torch::from_blob(const_cast<float*>(a.f32.data()), a.shape, torch::kFloat32).clone();
}

double max_abs(const at::Tensor& a, const at::Tensor& b) { return (a - b).abs().max().item<double>(); }
double rel_norm(const at::Tensor& a, const at::Tensor& b) {
  return ((a.to(torch::kFloat64) - b.to(torch::kFloat64)).norm() / b.to(torch::kFloat64).norm()).item<double>();
}

Model load(const std::string& name) {
  const auto path = zoo(name + ".pt");
  if (!xcam::test::file_exists(path)) ADD_FAILURE() << "missing " << path << " (the zoo fixture did not run)";
  return Model::load(path);
}

std::string error_of(Model& m, const std::string& tap) {
  try {
    TappedForward tf(m, {tap});
  } catch (const xcam::Error& e) {
    return e.what();
  }
  return "(accepted)";
}

TEST(TapSyntax, ParsesEveryForm) {
  auto t = xcam::parse_tap("encoder.blocks.3.attn@1/softmax#2");
  EXPECT_EQ(t.path, "encoder.blocks.3.attn");
  EXPECT_EQ(t.call, 1);
  EXPECT_EQ(t.part, TapPoint::Part::op);
  EXPECT_EQ(t.op, "softmax");
  EXPECT_EQ(t.occurrence, 2);
  EXPECT_EQ(t.index, -1);
  t = xcam::parse_tap("a.b/aten::_native_multi_head_attention[1]");
  EXPECT_EQ(t.op, "_native_multi_head_attention");
  EXPECT_EQ(t.index, 1);
  EXPECT_EQ(t.occurrence, -1);
  t = xcam::parse_tap("attn[1]");
  EXPECT_EQ(t.part, TapPoint::Part::element);
  EXPECT_EQ(t.index, 1);
  EXPECT_EQ(t.call, -1);
  t = xcam::parse_tap("enc@0:in1");
  EXPECT_EQ(t.part, TapPoint::Part::input);
  EXPECT_EQ(t.index, 1);
  EXPECT_EQ(t.call, 0);
  t = xcam::parse_tap("layer4");
  EXPECT_EQ(t.part, TapPoint::Part::output);
  for (const char* bad : {"attn[x]", "attn:out", "attn/softmax#a", "attn/", "attn@1x", "a[1]b", "/softmax"})
    EXPECT_THROW(xcam::parse_tap(bad), xcam::Error) << bad;
}

// Two ways of writing attention, each traced and scripted.
class AttentionProbabilities : public ::testing::TestWithParam<std::string> {};

TEST_P(AttentionProbabilities, TappedInsideTheModuleEqualFloat64WithTheirGradients) {
  Model m = load(GetParam());
  const auto x = npy("taps_input.npy");
  const std::string kind = GetParam().substr(0, GetParam().rfind('_'));
  TappedForward tf(m, {"encoder.blocks.1.attn/softmax", "encoder.blocks.0.attn/softmax"});
  const auto r = tf.run({x});
  at::Tensor plain;
  {
    torch::NoGradGuard g;
    plain = m.module().forward({x}).toTensor();
  }
  EXPECT_EQ(max_abs(r.output.toTensor(), plain), 0.0);
  // One chain: block 0 is the leaf, block 1 downstream of it.
  EXPECT_EQ(tf.leaves(), (std::vector<bool>{false, true}));
  for (int b = 0; b < 2; ++b)
    EXPECT_LT(max_abs(r.taps[1 - b], npy(kind + "_probs" + std::to_string(b) + ".npy")), 1e-5) << "block " << b;
  const auto y = r.output.toTensor().select(1, 3).sum();
  const auto g = torch::autograd::grad({y}, r.taps);
  for (int b = 0; b < 2; ++b)
    EXPECT_LT(rel_norm(g[1 - b], npy(kind + "_grad" + std::to_string(b) + ".npy")), 1e-4) << "block " << b;
}

INSTANTIATE_TEST_SUITE_P(Styles, AttentionProbabilities,
                         ::testing::Values("vit_timm_traced", "vit_timm_scripted", "vit_hf_traced", "vit_hf_scripted"),
                         [](const auto& info) { return info.param; });

TEST(TupleElements, MultiheadAttentionWeightsAreElementOne) {
  // Scripted: the module returns (output, weights); element [1] is the
  // per-head probabilities, and element [0] what the block adds to x.
  Model s = load("mha_scripted");
  const auto x = npy("taps_input.npy");
  TappedForward tf(s, {"encoder.blocks.0.attn.attn[1]", "encoder.blocks.1.attn.attn[1]",
                       "encoder.blocks.1.attn.attn[0]", "encoder.blocks.1.attn"});
  const auto r = tf.run({x}, /*record_grad=*/false);
  EXPECT_LT(max_abs(r.taps[0], npy("mha_probs0.npy")), 1e-5);
  EXPECT_LT(max_abs(r.taps[1], npy("mha_probs1.npy")), 1e-5);
  EXPECT_EQ(max_abs(r.taps[2], r.taps[3]), 0.0);
  {
    torch::NoGradGuard g;
    EXPECT_EQ(max_abs(r.output.toTensor(), s.module().forward({x}).toTensor()), 0.0);
  }
  // Traced, the unused weights are pruned from the module's outputs; the
  // softmax inside it gives them, (B * heads) x N x N, with exact gradients.
  Model t = load("mha_traced");
  TappedForward tt(t, {"encoder.blocks.1.attn.attn/softmax"});
  const auto rt = tt.run({x});
  const auto probs = rt.taps[0].view({2, 4, 17, 17});
  EXPECT_LT(max_abs(probs, npy("mha_probs1.npy")), 1e-5);
  const auto g = torch::autograd::grad({rt.output.toTensor().select(1, 3).sum()}, rt.taps)[0];
  EXPECT_LT(rel_norm(g.view({2, 4, 17, 17}), npy("mha_grad1.npy")), 1e-4);
  EXPECT_NE(error_of(t, "encoder.blocks.1.attn.attn[1]").find("not a tuple"), std::string::npos);
}

TEST(ModuleInputs, InputIsWhatTheModuleReceives) {
  for (const std::string v : {"traced", "scripted"}) {
    Model m = load("vit_timm_" + v);
    TappedForward tf(m, {"encoder.blocks.1.attn:in", "encoder.blocks.1.norm1", "encoder.blocks.1.mlp.0:in0",
                         "encoder.blocks.1.norm2"});
    const auto r = tf.run({npy("taps_input.npy")}, false);
    EXPECT_EQ(max_abs(r.taps[0], r.taps[1]), 0.0) << v;
    EXPECT_EQ(max_abs(r.taps[2], r.taps[3]), 0.0) << v;
    EXPECT_NE(error_of(m, "encoder.blocks.1.attn:in1").find("takes 1 argument(s)"), std::string::npos) << v;
  }
}

TEST(ParallelBranches, EachBranchIsItsOwnLeafWithExactGradients) {
  const auto q = npy("taps_input.npy"), ref = npy("taps_reference.npy");
  for (const std::string v : {"traced", "scripted"}) {
    Model m = load("siamese_" + v);
    TappedForward two(m, {"enc@0", "enc@1"});
    EXPECT_EQ(two.leaves(), (std::vector<bool>{true, true})) << v;
    TappedForward tf(m, {"enc@0", "enc@1", "enc.blocks.1.attn@1/softmax"});
    // The query branch starts at enc@0; on the reference branch the softmax
    // inside its block 1 runs before enc@1's output: that one is the leaf.
    EXPECT_EQ(tf.leaves(), (std::vector<bool>{true, false, true})) << v;
    const auto r = tf.run({q, ref});
    const auto g = torch::autograd::grad({r.output.toTensor().sum()}, {r.taps[0], r.taps[1]});
    EXPECT_LT(rel_norm(g[0], npy("siamese_grad_q.npy")), 1e-4) << v;
    EXPECT_LT(rel_norm(g[1], npy("siamese_grad_r.npy")), 1e-4) << v;
  }
}

TEST(TapErrors, SayWhatIsWrongAndWhatToDo) {
  Model b = load("branchy_scripted");
  const auto branchy = error_of(b, "encoder.blocks.0.attn/softmax");
  EXPECT_NE(branchy.find("run in an if or a loop"), std::string::npos) << branchy;
  Model m = load("vit_timm_scripted");
  const auto twice = error_of(m, "encoder.blocks.0.attn/matmul");
  EXPECT_NE(twice.find("runs 2 'matmul' ops; say which with 'encoder.blocks.0.attn/matmul#0' to '#1'"),
            std::string::npos)
      << twice;
  const auto typo = error_of(m, "encoder.blocks.0.attn/softmx");
  EXPECT_NE(typo.find("did you mean 'softmax'"), std::string::npos) << typo;
  EXPECT_NE(typo.find("xcam layers"), std::string::npos) << typo;
  const auto past = error_of(m, "encoder.blocks.0.attn/matmul#2");
  EXPECT_NE(past.find("use '#0' to '#1'"), std::string::npos) << past;
  const auto not_tuple = error_of(m, "encoder.blocks.0.attn[0]");
  EXPECT_NE(not_tuple.find("not a tuple"), std::string::npos) << not_tuple;
  // The second call of a module called once.
  const auto call = error_of(m, "encoder.blocks.0.attn@1/softmax");
  EXPECT_NE(call.find("runs 1 time(s)"), std::string::npos) << call;
}

}  // namespace
