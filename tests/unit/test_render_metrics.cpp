// Rendering, metrics, .npy and YAML validation: numbers against independent
// computations, and bad input against the errors users should see.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <random>

#include "../common.h"
#include "xcam/error.h"
#include "xcam/experiment.h"
#include "xcam/image.h"
#include "xcam/io.h"
#include "xcam/metrics.h"
#include "xcam/render.h"

namespace {

std::vector<float> random_map(int h, int w, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(0.f, 1.f);
  std::vector<float> m(static_cast<size_t>(h) * w);
  for (auto& v : m) v = u(rng);
  return m;
}

cv::Mat random_image(int h, int w, unsigned seed) {
  cv::Mat im(h, w, CV_8UC3);
  cv::randu(im, cv::Scalar::all(0), cv::Scalar::all(256));
  (void)seed;
  return im;
}

// The overlay as the peer renderer computes it (OpenCV colormap of the
// truncated 8-bit map, BGR -> RGB, float blend), but rounded instead of
// truncated (SPEC section 4).
TEST(Render, OverlayMatchesIndependentComputation) {
  for (float alpha : {0.5f, 0.3f, 0.f}) {
    const int h = 37, w = 53;
    const auto map = random_map(h, w, 5);
    const cv::Mat img = random_image(h, w, 6);
    const auto r = xcam::render_overlay(img, map, alpha, xcam::Colormap::jet);
    cv::Mat m8(h, w, CV_8UC1);
    for (int i = 0; i < h * w; ++i) m8.data[i] = static_cast<uint8_t>(255.f * map[i]);
    cv::Mat heat_bgr, heat;
    cv::applyColorMap(m8, heat_bgr, cv::COLORMAP_JET);
    cv::cvtColor(heat_bgr, heat, cv::COLOR_BGR2RGB);
    int worst = 0;
    for (int i = 0; i < h * w * 3; ++i) {
      const float v = (1.f - alpha) * heat.data[i] + alpha * img.data[i];  // in float, as SPEC says
      const int expected = static_cast<int>(std::floor(v + 0.5f));
      worst = std::max(worst, std::abs(expected - r.overlay.data[i]));
      ASSERT_EQ(heat.data[i], r.heat.data[i]) << "pixel " << i / 3;
    }
    EXPECT_EQ(worst, 0) << "alpha " << alpha;
  }
  EXPECT_THROW(xcam::parse_colormap("rainbow"), xcam::Error);
}

TEST(Render, MapResizeMatchesOpenCvInterLinear) {
  const auto map = random_map(16, 16, 9);
  const cv::Mat img(100, 75, CV_8UC3, cv::Scalar::all(0));
  const auto out = xcam::map_at_image_size(map, 16, 16, img);
  cv::Mat src(16, 16, CV_32FC1, const_cast<float*>(map.data())), ref;
  cv::resize(src, ref, cv::Size(75, 100), 0, 0, cv::INTER_LINEAR);
  double err = 0;
  for (int i = 0; i < 100 * 75; ++i) err = std::max(err, double(std::abs(out[i] - ref.at<float>(i / 75, i % 75))));
  EXPECT_LT(err, 1e-4);
}

// The fast PNG writer: decoded by OpenCV's own PNG decoder (libpng, which
// checks every CRC and the zlib stream) to exactly the pixels written, for
// noise (the worst case for deflate), flat and gradient images, one-pixel
// and odd sizes, and a view into a larger image (rows not contiguous).
TEST(Render, FastPngDecodesToThePixelsWritten) {
  std::vector<cv::Mat> images;
  for (const auto& hw : std::vector<std::pair<int, int>>{{1, 1}, {1, 97}, {61, 1}, {37, 53}, {128, 128}, {316, 520}}) {
    cv::Mat noise(hw.first, hw.second, CV_8UC3);
    cv::randu(noise, cv::Scalar::all(0), cv::Scalar::all(256));
    images.push_back(noise);
  }
  images.emplace_back(50, 70, CV_8UC3, cv::Scalar(10, 200, 255));
  cv::Mat ramp(64, 300, CV_8UC3);
  for (int y = 0; y < ramp.rows; ++y)
    for (int x = 0; x < ramp.cols; ++x) ramp.at<cv::Vec3b>(y, x) = cv::Vec3b(x & 255, (x + y) & 255, (3 * y) & 255);
  images.push_back(ramp);
  images.push_back(ramp(cv::Rect(7, 5, 101, 33)));  // a view: its rows are not contiguous
  for (const auto& rgb : images) {
    const std::string png = xcam::encode_png_fast(rgb);
    const cv::Mat bgr = cv::imdecode(std::vector<uint8_t>(png.begin(), png.end()), cv::IMREAD_UNCHANGED);
    ASSERT_EQ(bgr.type(), CV_8UC3) << rgb.rows << " x " << rgb.cols;
    cv::Mat back;
    cv::cvtColor(bgr, back, cv::COLOR_BGR2RGB);
    ASSERT_EQ(back.size(), rgb.size());
    EXPECT_EQ(cv::norm(back, rgb, cv::NORM_INF), 0.0) << rgb.rows << " x " << rgb.cols;
  }
  // Smooth content compresses: the ramp to well under its 57,600 raw bytes.
  EXPECT_LT(xcam::encode_png_fast(ramp).size(), 57600u / 4);
  cv::Mat gray(4, 4, CV_8UC1, cv::Scalar(3));
  EXPECT_THROW(xcam::encode_png_fast(gray), xcam::Error);
}

// OpenCV's own reading of an image file, as RGB.
cv::Mat opencv_rgb(const std::string& file) {
  const cv::Mat bgr = cv::imread(file, cv::IMREAD_COLOR);
  cv::Mat rgb;
  if (!bgr.empty()) cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
  return rgb;
}

std::vector<uint8_t> file_bytes(const std::string& file) {
  std::ifstream in(file, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// load_rgb decodes JPEG with libjpeg itself where it can (core/src/image.cpp):
// the pixels must be OpenCV's, bit for bit, and what that path declines
// (EXIF orientation, corrupt data) must still come out as OpenCV reads it.
TEST(Image, JpegDecodesToOpenCvsPixels) {
  const xcam::test::TempDir dir("jpeg");
  std::vector<std::pair<std::string, bool>> files;  // file, whether libjpeg's path takes it
  for (const char* folder : {"zoo/data/reid/query", "zoo/data/reid/bounding_box_test"})
    for (const auto& e : std::filesystem::directory_iterator(xcam::test::source(folder)))
      if (e.path().extension() == ".jpg") files.emplace_back(e.path().string(), true);
  ASSERT_GT(files.size(), 200u);
  const auto noise = [&](int h, int w, int type) {
    cv::Mat m(h, w, type);
    cv::randu(m, cv::Scalar::all(0), cv::Scalar::all(256));
    cv::GaussianBlur(m, m, cv::Size(5, 5), 1.5);  // something a JPEG keeps
    return m;
  };
  const auto write = [&](const std::string& name, const cv::Mat& m, const std::vector<int>& params, bool fast) {
    ASSERT_TRUE(cv::imwrite(dir / name, m, params)) << name;
    files.emplace_back(dir / name, fast);
  };
  write("one.jpg", noise(1, 1, CV_8UC3), {}, true);
  write("odd.jpg", noise(37, 53, CV_8UC3), {cv::IMWRITE_JPEG_QUALITY, 70}, true);
  write("wide.jpg", noise(316, 520, CV_8UC3), {}, true);
  write("progressive.jpg", noise(99, 131, CV_8UC3), {cv::IMWRITE_JPEG_PROGRESSIVE, 1}, true);
  write("gray.jpg", noise(45, 67, CV_8UC1), {}, true);
  // EXIF orientation 6 (turn 90 degrees clockwise), which OpenCV applies: an
  // APP1 block after the start-of-image marker.
  auto exif = file_bytes(dir / "odd.jpg");
  const uint8_t app1[] = {0xFF, 0xE1, 0, 34, 'E', 'x', 'i', 'f', 0, 0, 'I', 'I', 42, 0, 8, 0, 0, 0, 1, 0,
                          0x12, 1, 3, 0, 1, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0};
  exif.insert(exif.begin() + 2, std::begin(app1), std::end(app1));
  std::ofstream(dir / "exif.jpg", std::ios::binary).write(reinterpret_cast<const char*>(exif.data()), exif.size());
  files.emplace_back(dir / "exif.jpg", false);
  // Cut short: libjpeg warns, OpenCV decodes what there is.
  const auto whole = file_bytes(dir / "wide.jpg");
  std::ofstream(dir / "cut.jpg", std::ios::binary).write(reinterpret_cast<const char*>(whole.data()),
                                                        static_cast<std::streamsize>(whole.size() * 3 / 5));
  files.emplace_back(dir / "cut.jpg", false);

  for (const auto& [file, fast] : files) {
    const cv::Mat want = opencv_rgb(file);
    ASSERT_FALSE(want.empty()) << file;
    const cv::Mat got = xcam::load_rgb(file);
    ASSERT_EQ(got.type(), CV_8UC3) << file;
    ASSERT_EQ(got.size(), want.size()) << file;
    EXPECT_EQ(cv::norm(got, want, cv::NORM_INF), 0.0) << file;
    const auto bytes = file_bytes(file);
    cv::Mat direct;
    EXPECT_EQ(xcam::detail::decode_jpeg(bytes.data(), bytes.size(), direct), fast) << file;
  }
  EXPECT_EQ(xcam::load_rgb(dir / "exif.jpg").size(), cv::Size(37, 53));  // turned: 53 rows of 37
}

// Re-ID retrieval scores against a float64 reference written another way:
// each kept gallery entry's rank counted (closer entries, and equal ones
// earlier in the gallery) instead of sorted.
struct ReferenceRetrieval {
  double mAP = 0, mINP = 0;
  std::vector<double> cmc;
  size_t valid = 0;
};

ReferenceRetrieval reference_retrieval(const std::vector<double>& d, const std::vector<int64_t>& qp,
                                       const std::vector<int64_t>& qc, const std::vector<int64_t>& gp,
                                       const std::vector<int64_t>& gc, size_t max_rank) {
  const size_t nq = qp.size(), ng = gp.size(), cut = std::min(max_rank, ng);
  ReferenceRetrieval r;
  r.cmc.assign(cut, 0.0);
  const auto kept = [&](size_t q, size_t j) { return gp[j] != -1 && !(gp[j] == qp[q] && gc[j] == qc[q]); };
  for (size_t q = 0; q < nq; ++q) {
    std::vector<size_t> positions;  // rank (0-based, among kept entries) of each match
    for (size_t j = 0; j < ng; ++j) {
      if (!kept(q, j) || gp[j] != qp[q]) continue;
      size_t pos = 0;
      for (size_t i = 0; i < ng; ++i)
        if (kept(q, i) && (d[q * ng + i] < d[q * ng + j] || (d[q * ng + i] == d[q * ng + j] && i < j))) ++pos;
      positions.push_back(pos);
    }
    if (positions.empty()) continue;
    std::sort(positions.begin(), positions.end());
    double ap = 0;
    for (size_t m = 0; m < positions.size(); ++m) ap += double(m + 1) / double(positions[m] + 1);
    r.mAP += ap / double(positions.size());
    r.mINP += double(positions.size()) / double(positions.back() + 1);
    for (size_t k = 0; k < cut; ++k) r.cmc[k] += positions.front() <= k ? 1.0 : 0.0;
    ++r.valid;
  }
  r.mAP /= double(r.valid);
  r.mINP /= double(r.valid);
  for (auto& c : r.cmc) c /= double(r.valid);
  return r;
}

TEST(Metrics, RetrievalScoresMatchAFloat64Reference) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 20; ++trial) {
    const size_t nq = 5 + rng() % 20, ng = 10 + rng() % 80;
    std::vector<int64_t> qp(nq), qc(nq), gp(ng), gc(ng);
    for (auto& p : qp) p = 1 + static_cast<int64_t>(rng() % 8);
    for (auto& c : qc) c = 1 + static_cast<int64_t>(rng() % 3);
    for (size_t j = 0; j < ng; ++j) {
      const int kind = static_cast<int>(rng() % 10);
      gp[j] = kind == 0 ? -1 : kind == 1 ? 0 : 1 + static_cast<int64_t>(rng() % 8);  // junk, distractor, identity
      gc[j] = 1 + static_cast<int64_t>(rng() % 3);
    }
    // Identity 9 only on the query's own camera: a query with no valid match.
    qp[0] = 9;
    qc[0] = 1;
    gp[0] = 9;
    gc[0] = 1;
    std::vector<double> d(nq * ng);
    for (auto& v : d) v = static_cast<double>(rng() % 12) * 0.25;  // few values: many ties
    const size_t max_rank = trial % 2 ? 50 : 5;
    const auto got = xcam::retrieval_scores(d, qp, qc, gp, gc, max_rank);
    const auto want = reference_retrieval(d, qp, qc, gp, gc, max_rank);
    ASSERT_GT(want.valid, 0u);
    EXPECT_EQ(got.valid_queries, want.valid);
    EXPECT_EQ(got.valid_queries + got.skipped_queries, nq);
    EXPECT_GE(got.skipped_queries, 1u);
    EXPECT_NEAR(got.mAP, want.mAP, 1e-12) << "trial " << trial;
    EXPECT_NEAR(got.mINP, want.mINP, 1e-12) << "trial " << trial;
    ASSERT_EQ(got.cmc.size(), want.cmc.size());
    for (size_t k = 0; k < want.cmc.size(); ++k) EXPECT_NEAR(got.cmc[k], want.cmc[k], 1e-12) << "rank " << k + 1;
  }
  // By hand: kept order wrong, match, distractor, match (a junk entry and a
  // same-camera match in between are dropped): AP = (1/2 + 2/4) / 2, INP = 2/4.
  const std::vector<double> d = {0.1, 0.2, 0.25, 0.3, 0.35, 0.4};
  const auto r = xcam::retrieval_scores(d, {5}, {1}, {7, 5, -1, 0, 5, 5}, {2, 2, 2, 3, 1, 3}, 50);
  EXPECT_DOUBLE_EQ(r.mAP, 0.5);
  EXPECT_DOUBLE_EQ(r.mINP, 0.5);
  EXPECT_DOUBLE_EQ(r.rank(1), 0.0);
  EXPECT_DOUBLE_EQ(r.rank(2), 1.0);
  EXPECT_DOUBLE_EQ(r.rank(10), 1.0);
  EXPECT_THROW(xcam::retrieval_scores({0.1}, {5}, {1}, {5}, {1}), xcam::Error);  // only a same-camera match
  EXPECT_THROW(xcam::retrieval_scores({0.1, 0.2}, {5}, {1}, {5}, {2}), xcam::Error);  // sizes disagree
}

TEST(Metrics, PointingGameToleranceScalesWithSmallImages) {
  EXPECT_DOUBLE_EQ(xcam::pointing_tolerance(224, 300), 15.0);
  EXPECT_NEAR(xcam::pointing_tolerance(128, 128), 15.0 * 128 / 224, 1e-12);
  const int H = 128, W = 128;
  const std::vector<xcam::Box> box{{"circle", 40, 40, 60, 60}};
  for (int dx : {0, 8, 9, -30}) {
    std::vector<float> map(H * W, 0.f);
    const int px = 59 + dx, py = 50;  // x1 exclusive: last pixel column is 59
    map[py * W + px] = 1.f;
    const auto r = xcam::pointing_game(map.data(), H, W, box);
    EXPECT_EQ(r.peak_x, px);
    EXPECT_EQ(r.hit, dx >= 0 && dx <= 8) << "dx " << dx;  // tolerance 8.57 px
  }
  std::vector<float> uniform(H * W, 1.f);
  EXPECT_NEAR(xcam::pointing_game(uniform.data(), H, W, box).energy, 400.0 / (128 * 128), 1e-12);
  EXPECT_FALSE(xcam::centre_point_hit(H, W, {{"x", 80, 80, 100, 100}}));
  EXPECT_TRUE(xcam::centre_point_hit(H, W, {{"x", 60, 60, 70, 70}}));
}

TEST(Metrics, ScoreIsMeanOverClasses) {
  xcam::PointingGame pg;
  pg.add("a", true);
  pg.add("a", true);
  pg.add("a", true);
  pg.add("a", false);
  pg.add("b", false);
  EXPECT_DOUBLE_EQ(pg.score(), (0.75 + 0.0) / 2);
  EXPECT_EQ(pg.total(), 5);
}

TEST(Metrics, BoxesFileErrorsNameTheEntry) {
  xcam::test::TempDir tmp("boxes");
  std::ofstream(tmp / "b.json") << R"({"images": {"x.png": [{"label": "cat", "box": [1, 2, 3]}]}})";
  try {
    xcam::read_boxes(tmp / "b.json");
    FAIL();
  } catch (const xcam::Error& e) {
    EXPECT_NE(std::string(e.what()).find("'x.png'"), std::string::npos) << e.what();
  }
  const auto boxes = xcam::read_boxes(xcam::test::source("zoo/data/shapes/boxes.json"));
  EXPECT_EQ(boxes.size(), 48u);
}

TEST(Io, NpyRoundTripAndPeerFiles) {
  xcam::test::TempDir tmp("npy");
  const auto map = random_map(7, 9, 3);
  xcam::write_npy(tmp / "m.npy", {7, 9}, map.data());
  const auto back = xcam::read_npy(tmp / "m.npy");
  EXPECT_EQ(back.shape, (std::vector<int64_t>{7, 9}));
  EXPECT_EQ(back.f32, map);
  // A file numpy wrote: int64 targets of the golden set.
  const auto t = xcam::read_npy(xcam::test::data("golden/shapes_targets.npy"));
  EXPECT_EQ(t.shape.size(), 1u);
  EXPECT_FALSE(t.i64.empty());
}

// -------------------------------------------------------------- YAML ----

std::string write_yaml(const xcam::test::TempDir& tmp, const std::string& text) {
  const auto p = tmp / "exp.yaml";
  std::ofstream(p) << text;
  return p;
}

std::string error_of(const std::string& path) {
  try {
    xcam::load_experiment(path);
  } catch (const xcam::Error& e) {
    return e.what();
  }
  return "";
}

TEST(Yaml, UnknownKeyNamesLineAndSuggestion) {
  xcam::test::TempDir tmp("yaml");
  const std::string models = xcam::test::source("zoo/models");
  const std::string images = xcam::test::source("zoo/data/shapes");
  const auto msg = error_of(write_yaml(tmp, "model: " + models + "/shapes_cnn_traced.pt\ninputs: " + images +
                                                "\nlayer: block4\n"));
  EXPECT_NE(msg.find("exp.yaml:3:"), std::string::npos) << msg;
  EXPECT_NE(msg.find("unknown key 'layer'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("did you mean 'layers'"), std::string::npos) << msg;

  const auto nested = error_of(write_yaml(tmp, "model: m.pt\ninputs: " + images +
                                                   "\noutputs:\n  dir: x\n  colourmap: jet\n"));
  EXPECT_NE(nested.find(":5:"), std::string::npos) << nested;
  EXPECT_NE(nested.find("did you mean 'colormap'"), std::string::npos) << nested;
}

TEST(Yaml, SyntaxTypesAndMissingThings) {
  xcam::test::TempDir tmp("yaml");
  const std::string images = xcam::test::source("zoo/data/shapes");
  EXPECT_NE(error_of(write_yaml(tmp, "model: [unclosed\n")).find("invalid YAML"), std::string::npos);
  EXPECT_NE(error_of(write_yaml(tmp, "inputs: " + images + "\n")).find("missing key 'model'"), std::string::npos);
  EXPECT_NE(error_of(write_yaml(tmp, "model: m.pt\ninputs: " + images + "\nbatch_size: many\n"))
                .find("exp.yaml:3: key 'batch_size' must be a positive integer"),
            std::string::npos);
  EXPECT_NE(error_of(write_yaml(tmp, "model: m.pt\ninputs: nothing/*.png\n")).find("matches no file"),
            std::string::npos);
  EXPECT_NE(error_of(write_yaml(tmp, "model: m.pt\ninputs: " + images + "\ntargets: annotated\n"))
                .find("needs inputs.boxes"),
            std::string::npos);
  EXPECT_NE(error_of(write_yaml(tmp, "model: m.pt\ninputs: " + images + "\nmethods: [gradkam]\n"))
                .find("method 'gradkam' is not available"),
            std::string::npos);
}

// plugin_options keep their YAML types (numbers, booleans, lists, nested
// mappings; quoted scalars stay strings); the attention block is read and
// checked.
TEST(Yaml, PluginOptionsAreTypedAndAttentionIsRead) {
  xcam::test::TempDir tmp("yaml");
  const std::string images = xcam::test::source("zoo/data/shapes");
  const auto path = write_yaml(tmp, "model: m.pt\ninputs: " + images +
                                        "\nplugin_options:\n  k: 3\n  ratio: 0.25\n  flag: true\n  quoted: \"3\"\n"
                                        "  name: probability\n  list: [1, two]\n  nested: {a: ~, b: [false]}\n"
                                        "attention: {patch: [16, 8], prefix: 2, head_fusion: max, discard_ratio: 0.9}\n");
  const auto cfg = xcam::load_experiment(path);
  const auto j = nlohmann::json::parse(cfg.explainer.plugin_options);
  EXPECT_EQ(j, nlohmann::json::parse(R"({"k": 3, "ratio": 0.25, "flag": true, "quoted": "3", "name": "probability",
                                         "list": [1, "two"], "nested": {"a": null, "b": [false]}})"))
      << j.dump();
  const auto crops = xcam::load_experiment(
      write_yaml(tmp, "model: m.pt\ninputs: " + images + "\ncrops: {grid: [2, 3], overlap: 0.5}\n"));
  EXPECT_EQ(crops.explainer.crops.rows, 2);
  EXPECT_EQ(crops.explainer.crops.cols, 3);
  EXPECT_DOUBLE_EQ(crops.explainer.crops.overlap, 0.5);
  EXPECT_EQ(xcam::method_label(crops.explainer), "gradcam+crops2x3o0.5");
  const auto both = error_of(
      write_yaml(tmp, "model: m.pt\ninputs: " + images + "\naug_smooth: true\ncrops: {grid: [2, 2]}\n"));
  EXPECT_NE(both.find("choose one of them"), std::string::npos) << both;
  const auto& a = cfg.explainer.attention;
  EXPECT_EQ(a.patch_h, 16);
  EXPECT_EQ(a.patch_w, 8);
  EXPECT_EQ(a.prefix, 2);
  EXPECT_EQ(a.head_fusion, "max");
  EXPECT_DOUBLE_EQ(a.discard_ratio, 0.9);
  const auto bad = error_of(write_yaml(tmp, "model: m.pt\ninputs: " + images + "\nattention: {head_fusion: median}\n"));
  EXPECT_NE(bad.find("exp.yaml:3: key 'head_fusion' must be mean, max or min"), std::string::npos) << bad;
  const auto ratio = error_of(write_yaml(tmp, "model: m.pt\ninputs: " + images + "\nattention: {discard_ratio: 1}\n"));
  EXPECT_NE(ratio.find("key 'discard_ratio' must be in [0, 1)"), std::string::npos) << ratio;
}

TEST(Yaml, ManifestInputs) {
  xcam::test::TempDir tmp("yaml");
  std::ofstream(tmp / "m.jsonl") << R"({"image": "a.png", "id": "q1", "images": {"reference": "sub/r.png"}, )"
                                 << R"("text": "hi", "targets": "top2", "camera": 3})" << "\n";
  const auto cfg = xcam::load_experiment(write_yaml(tmp, "model: m.pt\ninputs: {manifest: m.jsonl}\n"));
  ASSERT_EQ(cfg.samples.size(), 1u);
  const auto& sp = cfg.samples[0];
  EXPECT_EQ(sp.image, tmp / "a.png");
  EXPECT_EQ(sp.id, "q1");
  EXPECT_EQ(sp.images.at("reference"), tmp / "sub/r.png");
  EXPECT_EQ(sp.text, "hi");
  EXPECT_EQ(sp.targets, std::vector<std::string>{"top2"});
  EXPECT_EQ(sp.meta.at("camera"), "3");
  EXPECT_EQ(cfg.images, std::vector<std::string>{tmp / "a.png"});
  std::ofstream(tmp / "dup.jsonl") << R"({"image": "a.png", "id": "x"})" << "\n" << R"({"image": "b.png", "id": "x"})";
  const auto dup = error_of(write_yaml(tmp, "model: m.pt\ninputs: {manifest: dup.jsonl}\n"));
  EXPECT_NE(dup.find("dup.jsonl:2: id 'x' is used twice"), std::string::npos) << dup;
  const auto both = error_of(write_yaml(tmp, "model: m.pt\ninputs: {manifest: m.jsonl, images: '*.png'}\n"));
  EXPECT_NE(both.find("images or a manifest, not both"), std::string::npos) << both;
}

TEST(Yaml, ShippedConfigsParse) {
  const auto cfg = xcam::load_experiment(xcam::test::source("configs/shapes_demo.yaml"));
  EXPECT_EQ(cfg.images.size(), 48u);
  EXPECT_FALSE(cfg.boxes.empty());
  EXPECT_EQ(cfg.explainer.height, 128);
}

}  // namespace
