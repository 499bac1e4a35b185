// The one libtorch call tch does not expose: choose bfloat16 as the CUDA autocast dtype
// (libtorch's default is float16). tch::autocast then runs CUDA ops in bf16 as PyTorch's
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
