// at::Tensor dispatch of the kernels: checks, then the CPU kernel or, for
// CUDA tensors in a CUDA build (XCAM_WITH_CUDA), the CUDA twin on the current
// stream with LibTorch's caching allocator for temporaries.
#include "xcam/kernels/dispatch.h"

#include <c10/util/Exception.h>

#include "xcam/kernels/gradcam.h"
#include "xcam/kernels/normalize_resize.h"
#include "xcam/kernels/overlay.h"
#include "xcam/kernels/scorecam.h"
#include "xcam/kernels/weighted_sum.h"

#if defined(XCAM_WITH_CUDA)
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#endif

namespace xcam::kernels {

namespace {

DType dtype_of(const at::Tensor& t, const char* what) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::f32;
    case at::kHalf: return DType::f16;
    case at::kBFloat16: return DType::bf16;
    default:
      TORCH_CHECK(false, what, " must be float32, float16 or bfloat16, got ", t.scalar_type());
  }
  return DType::f32;
}

CamShape shape_of(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.dim() == 4, what, " must be B x K x h x w, got ", t.sizes());
  TORCH_CHECK(t.numel() > 0, what, " is empty: ", t.sizes());
  return {t.size(0), t.size(1), t.size(2), t.size(3)};
}

void check_pair(const at::Tensor& a, const at::Tensor& g) {
  TORCH_CHECK(a.sizes() == g.sizes(), "activations ", a.sizes(), " and gradients ", g.sizes(), " differ in shape");
  TORCH_CHECK(a.scalar_type() == g.scalar_type(), "activations (", a.scalar_type(), ") and gradients (",
              g.scalar_type(), ") differ in dtype");
  TORCH_CHECK(a.device() == g.device(), "activations and gradients are on different devices");
}

void check_size(int64_t h, int64_t w) { TORCH_CHECK(h > 0 && w > 0, "output size must be positive, got ", h, " x ", w); }

at::TensorOptions f32(const at::Tensor& like) { return like.options().dtype(at::kFloat); }

#if defined(XCAM_WITH_CUDA)
void* cuda_alloc(size_t bytes, void*) { return c10::cuda::CUDACachingAllocator::raw_alloc(bytes); }
void cuda_free(void* p, void*) { c10::cuda::CUDACachingAllocator::raw_delete(p); }
CudaContext cuda_context(const at::Tensor& t) {
  CudaContext ctx;
  ctx.stream = at::cuda::getCurrentCUDAStream(t.device().index()).stream();
  ctx.allocator.allocate = &cuda_alloc;
  ctx.allocator.release = &cuda_free;
  return ctx;
}
#define XCAM_ON_CUDA(t) (t).is_cuda()
#else
#define XCAM_ON_CUDA(t) false
#endif

// Runs `cpu()` for CPU tensors, `gpu(ctx)` for CUDA ones.
template <typename Cpu, typename Gpu>
void run(const at::Tensor& t, Cpu&& cpu, Gpu&& gpu) {
#if defined(XCAM_WITH_CUDA)
  if (t.is_cuda()) {
    const c10::cuda::CUDAGuard guard(t.device());
    gpu(cuda_context(t));
    return;
  }
#else
  (void)gpu;
#endif
  TORCH_CHECK(t.device().is_cpu(), "tensor on ", t.device(), " but this build has CPU kernels only");
  cpu();
}

}  // namespace

bool cuda_kernels_built() {
#if defined(XCAM_WITH_CUDA)
  return true;
#else
  return false;
#endif
}

MapOutput gradcam(const at::Tensor& activations, const at::Tensor& gradients, int64_t out_h, int64_t out_w) {
  check_pair(activations, gradients);
  const CamShape s = shape_of(activations, "activations");
  const DType dt = dtype_of(activations, "activations");
  check_size(out_h, out_w);
  const auto a = activations.contiguous(), g = gradients.contiguous();
  MapOutput r;
  r.map = at::empty({s.batch, out_h, out_w}, f32(a));
  r.lowres = at::empty({s.batch, s.height, s.width}, f32(a));
  auto status = at::empty({s.batch}, a.options().dtype(at::kByte));
  run(
      a,
      [&] {
        gradcam_cpu(a.data_ptr(), g.data_ptr(), dt, s, out_h, out_w, r.lowres.data_ptr<float>(),
                    r.map.data_ptr<float>(), status.data_ptr<uint8_t>());
      },
      [&](const CudaContext& ctx) {
        gradcam_cuda(a.data_ptr(), g.data_ptr(), dt, s, out_h, out_w, r.lowres.data_ptr<float>(),
                     r.map.data_ptr<float>(), status.data_ptr<uint8_t>(), ctx);
      });
  r.status = status.cpu();
  return r;
}

at::Tensor channel_weights(const at::Tensor& activations, const at::Tensor& gradients, WeightMethod method) {
  check_pair(activations, gradients);
  const CamShape s = shape_of(activations, "activations");
  const DType dt = dtype_of(activations, "activations");
  const auto a = activations.contiguous(), g = gradients.contiguous();
  auto w = at::empty({s.batch, s.channels}, f32(a));
  run(
      a, [&] { channel_weights_cpu(a.data_ptr(), g.data_ptr(), dt, s, method, w.data_ptr<float>()); },
      [&](const CudaContext& ctx) {
        channel_weights_cuda(a.data_ptr(), g.data_ptr(), dt, s, method, w.data_ptr<float>(), ctx);
      });
  return w;
}

at::Tensor weighted_sum_relu(const at::Tensor& activations, const at::Tensor& weights) {
  const CamShape s = shape_of(activations, "activations");
  const DType dt = dtype_of(activations, "activations");
  TORCH_CHECK(weights.dim() == 2 && weights.size(0) == s.batch && weights.size(1) == s.channels,
              "weights must be B x K = ", s.batch, " x ", s.channels, ", got ", weights.sizes());
  TORCH_CHECK(weights.device() == activations.device(), "weights and activations are on different devices");
  const auto a = activations.contiguous();
  const auto w = weights.to(at::kFloat).contiguous();
  auto cam = at::empty({s.batch, s.height, s.width}, f32(a));
  run(
      a, [&] { weighted_sum_relu_cpu(a.data_ptr(), dt, s, w.data_ptr<float>(), cam.data_ptr<float>()); },
      [&](const CudaContext& ctx) {
        weighted_sum_relu_cuda(a.data_ptr(), dt, s, w.data_ptr<float>(), cam.data_ptr<float>(), ctx);
      });
  return cam;
}

at::Tensor elementwise_cam(const at::Tensor& activations, const at::Tensor& gradients, ElementwiseMethod method) {
  check_pair(activations, gradients);
  const CamShape s = shape_of(activations, "activations");
  const DType dt = dtype_of(activations, "activations");
  const auto a = activations.contiguous(), g = gradients.contiguous();
  auto cam = at::empty({s.batch, s.height, s.width}, f32(a));
  run(
      a, [&] { elementwise_cam_cpu(a.data_ptr(), g.data_ptr(), dt, s, method, cam.data_ptr<float>()); },
      [&](const CudaContext& ctx) {
        elementwise_cam_cuda(a.data_ptr(), g.data_ptr(), dt, s, method, cam.data_ptr<float>(), ctx);
      });
  return cam;
}

at::Tensor minmax_normalize(const at::Tensor& maps, at::Tensor* status) {
  TORCH_CHECK(maps.dim() >= 2 && maps.numel() > 0, "maps must be B x ..., got ", maps.sizes());
  auto out = maps.to(at::kFloat).contiguous().clone();
  const int64_t B = out.size(0), n = out.numel() / B;
  auto st = at::empty({B}, out.options().dtype(at::kByte));
  run(
      out, [&] { minmax_normalize_cpu(out.data_ptr<float>(), B, n, st.data_ptr<uint8_t>()); },
      [&](const CudaContext& ctx) { minmax_normalize_cuda(out.data_ptr<float>(), B, n, st.data_ptr<uint8_t>(), ctx); });
  if (status) *status = st.cpu();
  return out;
}

MapOutput normalize_resize(const at::Tensor& cam, int64_t out_h, int64_t out_w) {
  TORCH_CHECK(cam.dim() == 3 && cam.numel() > 0, "map must be B x h x w, got ", cam.sizes());
  check_size(out_h, out_w);
  MapOutput r;
  r.lowres = cam.to(at::kFloat).contiguous().clone();
  r.map = at::empty({cam.size(0), out_h, out_w}, f32(cam));
  auto status = at::empty({cam.size(0)}, cam.options().dtype(at::kByte));
  run(
      cam,
      [&] {
        normalize_resize_cpu(r.lowres.data_ptr<float>(), cam.size(0), cam.size(1), cam.size(2),
                             r.map.data_ptr<float>(), out_h, out_w, status.data_ptr<uint8_t>());
      },
      [&](const CudaContext& ctx) {
        normalize_resize_cuda(r.lowres.data_ptr<float>(), cam.size(0), cam.size(1), cam.size(2),
                              r.map.data_ptr<float>(), out_h, out_w, status.data_ptr<uint8_t>(), ctx);
      });
  r.status = status.cpu();
  return r;
}

at::Tensor resize_bilinear(const at::Tensor& maps, int64_t out_h, int64_t out_w, bool align_corners) {
  TORCH_CHECK(maps.dim() == 3 && maps.numel() > 0, "maps must be B x h x w, got ", maps.sizes());
  check_size(out_h, out_w);
  const auto in = maps.to(at::kFloat).contiguous();
  auto out = at::empty({in.size(0), out_h, out_w}, f32(in));
  run(
      in,
      [&] {
        resize_bilinear_cpu(in.data_ptr<float>(), in.size(0), in.size(1), in.size(2), out.data_ptr<float>(), out_h,
                            out_w, align_corners);
      },
      [&](const CudaContext& ctx) {
        resize_bilinear_cuda(in.data_ptr<float>(), in.size(0), in.size(1), in.size(2), out.data_ptr<float>(), out_h,
                             out_w, align_corners, ctx);
      });
  return out;
}

MapOutput aggregate_layers(const std::vector<at::Tensor>& lowres, int64_t out_h, int64_t out_w) {
  TORCH_CHECK(!lowres.empty(), "aggregate_layers needs at least one layer");
  check_size(out_h, out_w);
  std::vector<at::Tensor> maps;
  std::vector<const float*> ptrs;
  std::vector<int64_t> hs, ws;
  for (const auto& m : lowres) {
    TORCH_CHECK(m.dim() == 3 && m.size(0) == lowres[0].size(0), "every layer map must be B x h x w with the same B");
    TORCH_CHECK(m.size(1) > 0 && m.size(2) > 0, "layer map ", maps.size(), " is empty: ", m.sizes());
    TORCH_CHECK(m.device() == lowres[0].device(), "layer maps are on different devices");
    maps.push_back(m.to(at::kFloat).contiguous());
    ptrs.push_back(maps.back().data_ptr<float>());
    hs.push_back(m.size(1));
    ws.push_back(m.size(2));
  }
  const int64_t B = maps[0].size(0), L = static_cast<int64_t>(maps.size());
  MapOutput r;
  r.map = at::empty({B, out_h, out_w}, f32(maps[0]));
  auto status = at::empty({B}, maps[0].options().dtype(at::kByte));
  run(
      maps[0],
      [&] {
        aggregate_layers_cpu(ptrs.data(), hs.data(), ws.data(), L, B, out_h, out_w, r.map.data_ptr<float>(),
                             status.data_ptr<uint8_t>());
      },
      [&](const CudaContext& ctx) {
        aggregate_layers_cuda(ptrs.data(), hs.data(), ws.data(), L, B, out_h, out_w, r.map.data_ptr<float>(),
                              status.data_ptr<uint8_t>(), ctx);
      });
  r.status = status.cpu();
  return r;
}

at::Tensor scorecam_masks(const at::Tensor& activations, int64_t k0, int64_t k1, const at::Tensor& input) {
  TORCH_CHECK(activations.dim() == 3, "activations must be K x h x w (one sample), got ", activations.sizes());
  TORCH_CHECK(input.dim() == 3, "input must be C x H x W (one sample), got ", input.sizes());
  TORCH_CHECK(activations.size(1) > 0 && activations.size(2) > 0, "activations have an empty h x w plane: ",
              activations.sizes());
  TORCH_CHECK(0 <= k0 && k0 < k1 && k1 <= activations.size(0), "channel range [", k0, ", ", k1,
              ") is outside 0..", activations.size(0));
  TORCH_CHECK(activations.device() == input.device(), "activations and input are on different devices");
  const DType dt = dtype_of(activations, "activations");
  const auto a = activations.contiguous();
  const auto in = input.to(at::kFloat).contiguous();
  const int64_t C = in.size(0), H = in.size(1), W = in.size(2);
  auto out = at::empty({k1 - k0, C, H, W}, f32(in));
  run(
      a,
      [&] {
        scorecam_masks_cpu(a.data_ptr(), dt, a.size(0), a.size(1), a.size(2), k0, k1, in.data_ptr<float>(), C, H, W,
                           out.data_ptr<float>());
      },
      [&](const CudaContext& ctx) {
        scorecam_masks_cuda(a.data_ptr(), dt, a.size(0), a.size(1), a.size(2), k0, k1, in.data_ptr<float>(), C, H,
                            W, out.data_ptr<float>(), ctx);
      });
  return out;
}

at::Tensor colormap_overlay(const at::Tensor& map, const at::Tensor& image, const at::Tensor& lut, float image_weight,
                            at::Tensor* heat) {
  TORCH_CHECK(map.dim() == 2, "map must be H x W, got ", map.sizes());
  TORCH_CHECK(image.dim() == 3 && image.size(0) == map.size(0) && image.size(1) == map.size(1) && image.size(2) == 3 &&
                  image.scalar_type() == at::kByte,
              "image must be H x W x 3 uint8 matching the map, got ", image.sizes(), " ", image.scalar_type());
  TORCH_CHECK(lut.numel() == 768 && lut.scalar_type() == at::kByte, "lut must be 256 x 3 uint8");
  TORCH_CHECK(image_weight >= 0.f && image_weight <= 1.f, "image weight must be in [0, 1], got ", image_weight);
  const auto m = map.to(at::kFloat).contiguous(), im = image.contiguous(), l = lut.to(map.device()).contiguous();
  auto out = at::empty_like(im);
  at::Tensor h = heat ? at::empty_like(im) : at::Tensor();
  uint8_t* hp = heat ? h.data_ptr<uint8_t>() : nullptr;
  run(
      m,
      [&] {
        colormap_overlay_cpu(m.data_ptr<float>(), im.data_ptr<uint8_t>(), m.size(0), m.size(1), l.data_ptr<uint8_t>(),
                             image_weight, hp, out.data_ptr<uint8_t>());
      },
      [&](const CudaContext& ctx) {
        colormap_overlay_cuda(m.data_ptr<float>(), im.data_ptr<uint8_t>(), m.size(0), m.size(1), l.data_ptr<uint8_t>(),
                              image_weight, hp, out.data_ptr<uint8_t>(), ctx);
      });
  if (heat) *heat = h;
  return out;
}

}  // namespace xcam::kernels
