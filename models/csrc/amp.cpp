// The one libtorch call tch does not expose: choose bfloat16 as the CUDA autocast dtype
// (libtorch's default is float16). cls_models::cuda_autocast then runs CUDA ops in bf16 as PyTorch's
// torch.autocast("cuda", dtype=torch.bfloat16) does.
#include <ATen/autocast_mode.h>

extern "C" int cls_set_cuda_autocast_bf16() {
  try {
    at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
    return 0;
  } catch (...) {
    return 1;
  }
}

// Autocast on CUDA on and off around a forward pass, through the per-device calls (PyTorch's
// `torch.autocast("cuda")`). tch::autocast uses at::autocast::is_enabled / set_enabled, which
// libtorch 2.11 deprecates with a warning on every call: several lines per training step.
// Enter returns the previous state (0/1), or -1 when libtorch refused; exit restores it.
extern "C" int cls_cuda_autocast_enter(int enabled) {
  try {
    const bool prev = at::autocast::is_autocast_enabled(at::kCUDA);
    at::autocast::set_autocast_enabled(at::kCUDA, enabled != 0);
    at::autocast::increment_nesting();
    return prev ? 1 : 0;
  } catch (...) {
    return -1;
  }
}

extern "C" int cls_cuda_autocast_exit(int prev) {
  try {
    if (at::autocast::decrement_nesting() == 0) {
      at::autocast::clear_cache();
    }
    at::autocast::set_autocast_enabled(at::kCUDA, prev != 0);
    return 0;
  } catch (...) {
    return 1;
  }
}
