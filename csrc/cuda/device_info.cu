// What this build's CUDA runtime can see, without ever throwing on a machine with no driver.
#include <cuda_runtime.h>

#include <sstream>
#include <string>

#include "cuda_ops.h"

#ifndef GRADFAST_CUDA_ARCHS_STR
#define GRADFAST_CUDA_ARCHS_STR ""
#endif

namespace gradfast::cuda {

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return n;
}

std::string compiled_archs() {
  // CMake's list, passed comma-separated, e.g. "75-real,80-real,120" -> "sm_75 sm_80 sm_120+ptx".
  std::string in = GRADFAST_CUDA_ARCHS_STR, out, item;
  for (char& ch : in)
    if (ch == ';') ch = ',';
  std::stringstream ss(in);
  while (std::getline(ss, item, ',')) {
    if (item.empty()) continue;
    std::string arch = item, suffix = "+ptx";
    const auto dash = item.find('-');
    if (dash != std::string::npos) {
      arch = item.substr(0, dash);
      const std::string kind = item.substr(dash + 1);
      suffix = kind == "real" ? "" : (kind == "virtual" ? " (ptx only)" : "");
      if (kind == "virtual") { out += (out.empty() ? "" : " ") + ("compute_" + arch); continue; }
    }
    out += (out.empty() ? "" : " ") + ("sm_" + arch + suffix);
  }
  return out;
}

}  // namespace gradfast::cuda
