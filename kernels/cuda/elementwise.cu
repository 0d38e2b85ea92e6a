// CUDA element-wise maps (LayerCAM, HiResCAM, Grad-CAM element-wise): the
// twin of cpu/elementwise.cpp.
#include "common.cuh"
#include "reduce.cuh"
#include "xcam/kernels/elementwise.h"

namespace xcam::kernels {
namespace cuda_detail {
namespace {

// The per-element terms of elementwise.h (SPEC section 2).
template <ElementwiseMethod M, typename T>
struct ElementwiseTerm {
  const T* activations;
  const T* gradients;
  int64_t hw;
  __device__ __forceinline__ float operator()(int64_t bk, int64_t s) const {
    const float a = to_float(activations[bk * hw + s]);
    const float g = to_float(gradients[bk * hw + s]);
    return elementwise_term<M>(g, a);
  }
};

template <ElementwiseMethod M, typename T>
void run(const void* activations, const void* gradients, CamShape shape, float* cam, const CudaContext& ctx) {
  const ElementwiseTerm<M, T> term{static_cast<const T*>(activations), static_cast<const T*>(gradients),
                                   shape.height * shape.width};
  channel_sum<Finish::relu_keep_nan>(term, shape, cam, ctx);
}

}  // namespace
}  // namespace cuda_detail

void elementwise_cam_cuda(const void* activations, const void* gradients, DType dtype, CamShape shape,
                          ElementwiseMethod method, float* cam, const CudaContext& ctx) {
  using namespace cuda_detail;
  with_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    switch (method) {
      case ElementwiseMethod::layercam:
        run<ElementwiseMethod::layercam, T>(activations, gradients, shape, cam, ctx);
        return;
      case ElementwiseMethod::hirescam:
        run<ElementwiseMethod::hirescam, T>(activations, gradients, shape, cam, ctx);
        return;
      case ElementwiseMethod::gradcam_elementwise:
        run<ElementwiseMethod::gradcam_elementwise, T>(activations, gradients, shape, cam, ctx);
        return;
    }
    throw std::invalid_argument("elementwise_cam_cuda: unknown method");
  });
}

}  // namespace xcam::kernels
