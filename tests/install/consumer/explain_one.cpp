// A program outside xcam's source tree, built against an installed xcam
// (find_package(xcam) or pkg-config xcam): explains one image with the C++
// API and writes the map (float32 .npy, the model's input size).
//
//   explain_one MODEL IMAGE LAYER OUT.npy
#include <xcam/error.h>
#include <xcam/explainer.h>
#include <xcam/image.h>
#include <xcam/io.h>
#include <xcam/version.h>

#include <iostream>

int main(int argc, char** argv) {
  if (argc != 5) {
    std::cerr << "usage: explain_one MODEL IMAGE LAYER OUT.npy\n";
    return 2;
  }
  try {
    xcam::set_threads(1);
    xcam::ExplainerOptions o;
    o.model = argv[1];
    o.layers = {argv[3]};
    o.height = o.width = 128;
    o.mean = std::array<float, 3>{0.485f, 0.456f, 0.406f};
    o.std = std::array<float, 3>{0.229f, 0.224f, 0.225f};
    xcam::Explainer explainer(o);  // the cnn plugin, from the installed plugins
    const auto maps = explainer.explain({xcam::load_rgb(argv[2])}, {"image"});
    const auto& m = maps.at(0);
    xcam::write_npy(argv[4], {m.height, m.width}, m.map.data());
    std::cout << "xcam " << xcam::version() << ": class " << m.target_index << ", " << m.height << " x " << m.width
              << " map in " << argv[4] << "\n";
  } catch (const xcam::Error& e) {
    std::cerr << "explain_one: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
