// The re-ID plugin (plugins/reid) on the zoo's PromptSG-shaped model and its
// committed test split (zoo/data/reid), against zoo/reid_fixtures.py's
// float64 references, and on a timm and a Hugging Face ViT it was not made
// for.
#include <gtest/gtest.h>
#include <torch/script.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <numeric>

#include "../common.h"
#include "../unit/explain_util.h"
#include "xcam/error.h"
#include "xcam/explainer.h"
#include "xcam/image.h"
#include "xcam/io.h"

namespace fs = std::filesystem;

namespace {

std::string fixture(const std::string& f) { return xcam::test::models("reid/" + f); }
std::string data(const std::string& f) { return xcam::test::source("zoo/data/reid/" + f); }
std::string reid_plugin() { return xcam::test::binary("plugins/reid/libxcam_plugin_reid.so"); }
std::string zoo_model() { return xcam::test::source("zoo/models/reid_promptsg_traced.pt"); }

xcam::ExplainerOptions options(const std::string& model = zoo_model(), const nlohmann::json& plugin_options = {}) {
  xcam::ExplainerOptions o;
  o.model = model;
  o.plugin = reid_plugin();
  o.plugin_options = plugin_options.is_null() ? "{}" : plugin_options.dump();
  o.height = 128;
  o.width = 64;
  o.layers = {"vit_last"};
  return o;
}

struct Pair {
  std::string query, gallery;
};
std::vector<Pair> pairs() {
  std::vector<Pair> out;
  for (const auto& p : nlohmann::json::parse(std::ifstream(fixture("pairs.json"))))
    out.push_back({p.at("query").get<std::string>(), p.at("gallery").get<std::string>()});
  return out;
}

xcam::SampleInput sample(const std::string& id, const std::string& image, const std::string& reference = "") {
  xcam::SampleInput s;
  s.id = id;
  s.image = xcam::load_rgb(data(image));
  if (!reference.empty()) s.images["reference"] = xcam::load_rgb(data(reference));
  return s;
}

// Row p of a P x 8 x 4 reference.
std::vector<float> row(const xcam::NpyArray& a, size_t p) {
  const size_t n = static_cast<size_t>(a.shape.at(1) * a.shape.at(2));
  return std::vector<float>(a.f32.begin() + static_cast<std::ptrdiff_t>(p * n),
                            a.f32.begin() + static_cast<std::ptrdiff_t>((p + 1) * n));
}

// A low-resolution reference as the runtime draws it: bilinear to H x W
// (half-pixel centres), then min-max normalised.
std::vector<float> at_input_size(const std::vector<float>& grid, int64_t h, int64_t w, int64_t H, int64_t W) {
  auto g = torch::tensor(grid).view({1, 1, h, w});
  auto m = torch::upsample_bilinear2d(g, {H, W}, false).view({H * W});
  m = (m - m.min()) / (m.max() - m.min());
  return std::vector<float>(m.data_ptr<float>(), m.data_ptr<float>() + H * W);
}

const xcam::MapResult& map_of(const std::vector<xcam::MapResult>& maps, const std::string& id, const std::string& on) {
  for (const auto& m : maps)
    if (m.image_id == id && m.on == on) return m;
  throw std::runtime_error("no map of " + id + " on " + on);
}

// The pairs explained in one batch: the map on the query and the map on the
// gallery image come from one stacked pass, each equal to the float64
// Grad-CAM of the cosine similarity with the other side detached.
TEST(Reid, SimilarityMapsOnBothImagesFromOnePassLikeFloat64) {
  xcam::Explainer ex(options());
  EXPECT_EQ(ex.layers(), std::vector<std::string>{"vit.vision_model.encoder.layers.3"});
  const auto ps = pairs();
  std::vector<xcam::SampleInput> in;
  for (size_t p = 0; p < ps.size(); ++p) in.push_back(sample("p" + std::to_string(p), ps[p].query, ps[p].gallery));
  const auto maps = ex.explain(in);
  ASSERT_EQ(maps.size(), 2 * ps.size());
  const auto cq = xcam::read_npy(fixture("promptsg_cam_q.npy")), cr = xcam::read_npy(fixture("promptsg_cam_r.npy"));
  const auto& low = ex.last_lowres();
  ASSERT_EQ(low.size(), 1u);
  ASSERT_EQ(low[0].height, 8);
  ASSERT_EQ(low[0].width, 4);
  for (size_t p = 0; p < ps.size(); ++p) {
    const std::string id = "p" + std::to_string(p);
    const std::vector<float> mine(low[0].per_rank[0].begin() + static_cast<std::ptrdiff_t>(p * 32),
                                  low[0].per_rank[0].begin() + static_cast<std::ptrdiff_t>((p + 1) * 32));
    EXPECT_LT(xcam::test::max_abs_diff(mine, row(cq, p), 0), 1e-4) << id;
    const auto& on_ref = map_of(maps, id, "reference");
    EXPECT_EQ(on_ref.target_label, "similarity");
    EXPECT_LT(xcam::test::max_abs_diff(on_ref.map, at_input_size(row(cr, p), 8, 4, 128, 64), 0), 1e-4) << id;
    EXPECT_GT(xcam::test::max_abs_diff(map_of(maps, id, "image").map, on_ref.map, 0), 0.1) << id;
    EXPECT_NEAR(map_of(maps, id, "image").score, std::stod(on_ref.meta.at("similarity")), 1e-5);
  }
  // The different-identity pair is less similar than every same-identity one.
  for (size_t p = 0; p + 1 < ps.size(); ++p)
    EXPECT_GT(map_of(maps, "p" + std::to_string(p), "image").score, map_of(maps, "p3", "image").score);
}

// Without maps on the reference, the reference is embedded once in prepare()
// and the query's map is the same; a perturbation method then runs, and is
// refused with the stacked pass.
TEST(Reid, ReferenceMapsOffGiveTheSameQueryMap) {
  const auto p = pairs().at(0);
  const std::vector<xcam::SampleInput> in{sample("q", p.query, p.gallery)};
  xcam::Explainer both(options());
  const auto stacked = both.explain(in);
  xcam::Explainer one(options(zoo_model(), {{"reference_maps", false}}));
  const auto alone = one.explain(in);
  ASSERT_EQ(alone.size(), 1u);
  EXPECT_LT(xcam::test::max_abs_diff(alone[0].map, map_of(stacked, "q", "image").map, 0), 1e-5);
  EXPECT_NEAR(alone[0].score, map_of(stacked, "q", "image").score, 1e-6);

  auto o = options();
  o.method = "scorecam";
  xcam::Explainer refused(o);
  try {
    refused.explain(in);
    FAIL() << "scorecam ran on a stacked pass";
  } catch (const xcam::Error& e) {
    EXPECT_NE(std::string(e.what()).find("perturbs the image"), std::string::npos) << e.what();
  }
  o.plugin_options = R"({"reference_maps": false})";
  xcam::Explainer scorecam(o);
  const auto sc = scorecam.explain(in);
  ASSERT_EQ(sc.size(), 1u);
  EXPECT_NEAR(sc[0].score, alone[0].score, 1e-6);
}

// The MIM map: the learned prompt's cross-attention over the 8 x 4 patches
// (B x heads x 1 x 32), heads averaged, no gradients.
TEST(Reid, MimAttentionIsThePromptsAttentionOverThePatches) {
  auto o = options();
  o.method = "attention";
  o.layers = {"mim_attention"};
  xcam::Explainer ex(o);
  EXPECT_EQ(ex.layers(), std::vector<std::string>{"mim.softmax"});
  const auto ps = pairs();
  std::vector<xcam::SampleInput> in;
  for (size_t p = 0; p < ps.size(); ++p) in.push_back(sample("p" + std::to_string(p), ps[p].query));
  const auto maps = ex.explain(in);
  ASSERT_EQ(maps.size(), ps.size());
  const auto ref = xcam::read_npy(fixture("promptsg_mim.npy"));
  const auto& low = ex.last_lowres().at(0).per_rank.at(0);
  for (size_t p = 0; p < ps.size(); ++p)
    EXPECT_LT(xcam::test::max_abs_diff(std::vector<float>(low.begin() + static_cast<std::ptrdiff_t>(32 * p),
                                                          low.begin() + static_cast<std::ptrdiff_t>(32 * (p + 1))),
                                       row(ref, p), 0),
              1e-5)
        << p;
}

// A query alone: top1 is the classifier's best identity (its weight read
// from the model), the map that identity's float64 Grad-CAM; norm explains
// the embedding's length; similarity needs a reference.
TEST(Reid, IdentityAndNormTargetsWithoutAReference) {
  xcam::Explainer ex(options());
  const auto ps = pairs();
  const auto ids = nlohmann::json::parse(std::ifstream(fixture("promptsg_identity.json")));
  const auto ref = xcam::read_npy(fixture("promptsg_cam_id.npy"));
  for (size_t p = 0; p < ps.size(); ++p) {
    const auto maps = ex.explain(std::vector<xcam::SampleInput>{sample("q", ps[p].query)});
    ASSERT_EQ(maps.size(), 1u);
    EXPECT_EQ(maps[0].target_label, "id" + std::to_string(ids[p].get<int>()));
    EXPECT_EQ(maps[0].target.kind, "class");
    EXPECT_GT(maps[0].score, 0.0);
    EXPECT_LT(maps[0].score, 1.0);
    EXPECT_LT(xcam::test::max_abs_diff(ex.last_lowres()[0].per_rank[0], row(ref, p), 0), 1e-4) << p;
  }
  auto s = sample("q", ps[0].query);
  s.requests = {"norm", "top3"};
  const auto maps = ex.explain(std::vector<xcam::SampleInput>{s});
  ASSERT_EQ(maps.size(), 4u);
  EXPECT_EQ(maps[0].target_label, "norm");
  EXPECT_NEAR(maps[0].score, std::stod(maps[0].meta.at("embedding_norm")), 1e-4);
  EXPECT_EQ(maps[1].target_label, "id" + std::to_string(ids[0].get<int>()));
  s.requests = {"similarity"};
  try {
    ex.explain(std::vector<xcam::SampleInput>{s});
    FAIL() << "similarity without a reference";
  } catch (const xcam::Error& e) {
    EXPECT_NE(std::string(e.what()).find("sample 'q': target 'similarity' needs a reference image"), std::string::npos)
        << e.what();
  }
}

// timm's vit_small (scripted) and transformers' ViTModel under a wrapper
// (traced): the last block and the attention taps come from each model's
// naming, the 8 x 4 grid after one CLS token from the input and patch size;
// the norm's Grad-CAM equals the float64 one.
TEST(Reid, ForeignViTsTakeTheirLayersAndGeometryFromTheModel) {
  for (const auto& [file, last, attn0] :
       {std::tuple{"timm_vit_small.pt", "blocks.11", "blocks.0.attn/softmax"},
        std::tuple{"hf_vit.pt", "vit.encoder.layer.3", "vit.encoder.layer.0.attention.attention/softmax"}}) {
    auto o = options(fixture(file));
    o.layers = {};
    o.targets = {"norm"};
    xcam::Explainer ex(o);
    EXPECT_EQ(ex.layers(), std::vector<std::string>{last});
    const auto maps = ex.explain(std::vector<xcam::SampleInput>{sample("q", pairs()[0].query)});
    ASSERT_EQ(maps.size(), 1u);
    const auto ref = xcam::read_npy(fixture(std::string(file).replace(std::string(file).find(".pt"), 3, "_cam.npy")));
    EXPECT_LT(xcam::test::max_abs_diff(ex.last_lowres()[0].per_rank[0], ref.f32, 0), 1e-4) << file;

    o.layers = {"vit_attention.0"};
    o.method = "attention";
    xcam::Explainer attention(o);
    EXPECT_EQ(attention.layers(), std::vector<std::string>{attn0});
    EXPECT_EQ(attention.explain(std::vector<xcam::SampleInput>{sample("q", pairs()[0].query)}).size(), 1u);

    // A wrong patch size: the tokens do not make the grid, and the error says so.
    auto bad = options(fixture(file), {{"patch", 8}});
    bad.targets = {"norm"};
    xcam::Explainer wrong(bad);
    try {
      wrong.explain(std::vector<xcam::SampleInput>{sample("q", pairs()[0].query)});
      FAIL() << file;
    } catch (const xcam::Error& e) {
      EXPECT_NE(std::string(e.what()).find("has 33 tokens; a 128 x 64 input in 8 x 8 patches makes a 16 x 8 grid"),
                std::string::npos)
          << e.what();
    }
  }
}

// A CNN backbone (torchvision's resnet18, its 1000 logits standing for the
// embedding) through the same plugin: 4-d taps need no token layout, and the
// stacked pass's map on the gallery image is the map the swapped pair gives
// on its query (and the other way round).
TEST(Reid, CnnBackboneThroughFourDimensionalTaps) {
  auto o = options(xcam::test::models("resnet18_traced.pt"));
  o.layers = {"layer4"};
  o.height = 128;
  o.width = 64;
  xcam::Explainer ex(o);
  const auto p = pairs().at(0);
  const auto forward = ex.explain(std::vector<xcam::SampleInput>{sample("qg", p.query, p.gallery)});
  const auto swapped = ex.explain(std::vector<xcam::SampleInput>{sample("gq", p.gallery, p.query)});
  ASSERT_EQ(forward.size(), 2u);
  ASSERT_EQ(swapped.size(), 2u);
  EXPECT_LT(xcam::test::max_abs_diff(map_of(forward, "qg", "reference").map, map_of(swapped, "gq", "image").map, 0),
            1e-5);
  EXPECT_LT(xcam::test::max_abs_diff(map_of(forward, "qg", "image").map, map_of(swapped, "gq", "reference").map, 0),
            1e-5);
  EXPECT_NEAR(map_of(forward, "qg", "image").score, map_of(swapped, "gq", "image").score, 1e-5);
  EXPECT_GT(xcam::test::max_abs_diff(map_of(forward, "qg", "image").map, map_of(forward, "qg", "reference").map, 0),
            0.1);
}

// The Market-1501 protocol written independently of the plugin's: per
// query, the gallery sorted by distance (stable), same identity and camera
// and junk dropped; AP from the match positions, INP from the last.
struct Protocol {
  double mAP = 0, mINP = 0, r1 = 0, r5 = 0, r10 = 0;
};
Protocol protocol(const at::Tensor& dist, const std::vector<int64_t>& qp, const std::vector<int64_t>& qc,
                  const std::vector<int64_t>& gp, const std::vector<int64_t>& gc) {
  Protocol out;
  int valid = 0;
  for (int64_t i = 0; i < dist.size(0); ++i) {
    const auto order = std::get<1>(dist[i].sort(/*stable=*/true, 0, false));
    std::vector<int> hits;
    for (int64_t k = 0; k < order.size(0); ++k) {
      const auto j = order[k].item<int64_t>();
      if (gp[j] == -1 || (gp[j] == qp[i] && gc[j] == qc[i])) continue;
      hits.push_back(gp[j] == qp[i]);
    }
    const int n = std::accumulate(hits.begin(), hits.end(), 0);
    if (n == 0) continue;
    ++valid;
    double ap = 0;
    int seen = 0, last = 0, first = -1;
    for (size_t k = 0; k < hits.size(); ++k)
      if (hits[k]) {
        ap += double(++seen) / double(k + 1);
        last = int(k);
        if (first < 0) first = int(k);
      }
    out.mAP += ap / n;
    out.mINP += double(n) / (last + 1);
    out.r1 += first < 1;
    out.r5 += first < 5;
    out.r10 += first < 10;
  }
  for (double* v : {&out.mAP, &out.mINP, &out.r1, &out.r5, &out.r10}) *v /= valid;
  return out;
}

std::vector<std::string> images_in(const std::string& folder) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(data(folder))) out.push_back(e.path().string());
  std::sort(out.begin(), out.end());
  return out;
}

// `xcam explain --task evaluate` over the committed split: its metrics equal
// the protocol above on embeddings the test computes itself, in float64
// distances; the ranking and panels of the first queries are written.
TEST(Reid, EvaluateTaskMatchesTheProtocolOnTheSameEmbeddings) {
  xcam::test::TempDir tmp("reid_eval");
  const auto queries = images_in("query"), gallery = images_in("bounding_box_test");
  std::string cmd = xcam::test::xcam_cmd() + "explain --plugin " + reid_plugin() + " --model " + zoo_model() +
                    " --size 128 64 --layer vit_last --out " + (tmp / "o") +
                    " --task '{\"name\": \"evaluate\", \"gallery\": \"" + data("bounding_box_test") +
                    "\", \"show\": 2, \"top_k\": 3, \"batch\": 50}'";
  for (const auto& q : queries) cmd += " " + q;
  const auto r = xcam::test::run_command(cmd);
  ASSERT_EQ(r.status, 0) << r.output;
  const auto metrics = nlohmann::json::parse(std::ifstream(tmp / "o/task.json")).at("metrics");

  auto model = torch::jit::load(zoo_model());
  model.eval();
  xcam::Preprocess pre;
  pre.height = 128;
  pre.width = 64;
  pre.mean = {0.48145466f, 0.4578275f, 0.40821073f};
  pre.std = {0.26862954f, 0.26130258f, 0.27577711f};
  auto embed = [&](const std::vector<std::string>& files) {
    std::vector<float> nchw;
    for (const auto& f : files) xcam::preprocess_into(xcam::load_rgb(f), pre, nchw);
    torch::NoGradGuard no_grad;
    const auto x = torch::from_blob(nchw.data(), {int64_t(files.size()), 3, 128, 64}, torch::kFloat32);
    return model.forward({x}).toTensor().to(torch::kDouble);
  };
  const auto q = embed(queries), g = embed(gallery);
  const auto dist = torch::cdist(q, g).pow(2);
  // PPPP_cC...: the identity before the first '_', the camera between 'c' and 's'.
  auto ids = [](const std::vector<std::string>& files, std::vector<int64_t>& pid, std::vector<int64_t>& cam) {
    for (const auto& f : files) {
      const std::string base = fs::path(f).filename().string();
      const size_t u = base.find("_c"), s = base.find('s', u);
      ASSERT_TRUE(u != std::string::npos && s != std::string::npos) << base;
      pid.push_back(std::stoll(base.substr(0, u)));
      cam.push_back(std::stoll(base.substr(u + 2, s - u - 2)));
    }
  };
  std::vector<int64_t> qp, qc, gp, gc;
  ids(queries, qp, qc);
  ids(gallery, gp, gc);
  const auto ref = protocol(dist, qp, qc, gp, gc);
  EXPECT_NEAR(metrics.at("mAP").get<double>(), ref.mAP, 1e-6);
  EXPECT_NEAR(metrics.at("mINP").get<double>(), ref.mINP, 1e-6);
  EXPECT_NEAR(metrics.at("rank1").get<double>(), ref.r1, 1e-6);
  EXPECT_NEAR(metrics.at("rank5").get<double>(), ref.r5, 1e-6);
  EXPECT_NEAR(metrics.at("rank10").get<double>(), ref.r10, 1e-6);
  EXPECT_GT(ref.mAP, 0.6);  // the zoo model has learnt the identities

  // The first query's ranking: the closest valid gallery image first, each
  // marked by identity; panels for the first two queries only.
  const auto doc = nlohmann::json::parse(std::ifstream(tmp / "o/retrieval.json"));
  const auto& first = doc.at("ranking").at(0);
  int64_t best = -1;
  for (int64_t j = 0; j < dist.size(1); ++j)
    if (gp[j] != -1 && !(gp[j] == qp[0] && gc[j] == qc[0]) &&
        (best < 0 || dist[0][j].item<double>() < dist[0][best].item<double>()))
      best = j;
  EXPECT_EQ(first.at("top").at(0).at("gallery"), fs::path(gallery[best]).stem().string());
  EXPECT_EQ(first.at("top").at(0).at("match"), gp[best] == qp[0]);
  EXPECT_EQ(first.at("top").size(), 3u);
  const std::string q0 = fs::path(queries[0]).stem().string(), q2 = fs::path(queries[2]).stem().string();
  EXPECT_TRUE(fs::exists(tmp / ("o/ranked_" + q0 + ".png")));
  EXPECT_FALSE(fs::exists(tmp / ("o/ranked_" + q2 + ".png")));
  const auto panel = xcam::load_rgb(tmp / ("o/ranked_" + q0 + ".png"));
  EXPECT_GT(panel.cols, 4 * 64);  // the query and its three gallery images

  // Names that are not Market-1501's: evaluate says what it needs; search ranks.
  fs::create_directories(tmp / "plain");
  fs::copy_file(queries[0], tmp / "plain/walker.jpg");
  const auto refused = xcam::test::run_command(
      xcam::test::xcam_cmd() + "explain --plugin " + reid_plugin() + " --model " + zoo_model() +
      " --size 128 64 --out " + (tmp / "e") + " --task '{\"name\": \"evaluate\", \"gallery\": \"" +
      data("bounding_box_test") + "\"}' " + (tmp / "plain/walker.jpg"));
  EXPECT_NE(refused.status, 0);
  EXPECT_NE(refused.output.find("task evaluate needs Market-1501 file names"), std::string::npos) << refused.output;
  EXPECT_NE(refused.output.find("'walker' is not one"), std::string::npos) << refused.output;
  const auto search = xcam::test::run_command(
      xcam::test::xcam_cmd() + "explain --plugin " + reid_plugin() + " --model " + zoo_model() +
      " --size 128 64 --out " + (tmp / "s") + " --task '{\"name\": \"search\", \"gallery\": \"" +
      data("bounding_box_test") + "\", \"top_k\": 2}' " + (tmp / "plain/walker.jpg"));
  ASSERT_EQ(search.status, 0) << search.output;
  // Without identities nothing is excluded: the closest image of all, the
  // query's own identity on its own camera included.
  const auto found = nlohmann::json::parse(std::ifstream(tmp / "s/search.json")).at("ranking").at(0).at("top");
  EXPECT_EQ(found.at(0).at("gallery"), fs::path(gallery[dist[0].argmin().item<int64_t>()]).stem().string());
  EXPECT_FALSE(found.at(0).contains("match"));
  EXPECT_TRUE(fs::exists(tmp / "s/ranked_walker.png"));
}

// Localisation on held-out same-identity pairs (every query with the first
// gallery image of its identity on another camera): the map's energy lies on
// the person (zoo/reid_data.py's part masks) above a uniform map's share, for
// Grad-CAM at vit_last and for the MIM's attention (benchmarks/
// reid_localisation.py gives the table of every method and layer type).
TEST(Reid, SimilarityMapsLieOnThePerson) {
  const auto queries = images_in("query"), gallery = images_in("bounding_box_test");
  std::vector<xcam::SampleInput> in;
  std::vector<cv::Mat> masks;
  for (const auto& q : queries) {
    const std::string qname = fs::path(q).filename().string();
    const std::string pid = qname.substr(0, 4), cam = qname.substr(5, 2);
    std::string match;
    for (const auto& g : gallery) {
      const std::string gname = fs::path(g).filename().string();
      if (match.empty() && gname.substr(0, 4) == pid && gname.substr(5, 2) != cam) match = gname;
    }
    ASSERT_FALSE(match.empty()) << qname;
    in.push_back(sample(qname, "query/" + qname, "bounding_box_test/" + match));
    masks.push_back(xcam::load_rgb(data("masks/query/" + fs::path(qname).stem().string() + ".png")));
  }
  for (const auto& [method, layer, margin] : {std::tuple{"gradcam", "vit_last", 0.08},
                                              std::tuple{"attention", "mim_attention", 0.12}}) {
    auto o = options();
    o.method = method;
    o.layers = {layer};
    xcam::Explainer ex(o);
    const auto maps = ex.explain(in);
    double inside = 0, uniform = 0;
    for (size_t i = 0; i < in.size(); ++i) {
      const auto& m = map_of(maps, in[i].id, "image");
      const cv::Mat& mask = masks[i];
      ASSERT_EQ(mask.rows, m.height);
      double e = 0, total = 0, area = 0;
      for (int y = 0; y < mask.rows; ++y)
        for (int x = 0; x < mask.cols; ++x) {
          const int part = mask.at<cv::Vec3b>(y, x)[0];
          const bool person = part >= 1 && part <= 5;  // head, hat, torso, legs, bag
          const float v = m.map[size_t(y) * mask.cols + x];
          e += person ? v : 0;
          total += v;
          area += person;
        }
      inside += e / total;
      uniform += area / (mask.rows * mask.cols);
    }
    inside /= double(in.size());
    uniform /= double(in.size());
    EXPECT_GT(inside, uniform + margin) << method << " at " << layer;
  }
}

}  // namespace
