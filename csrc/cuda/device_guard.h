// RAII: make a device current for one call and restore the caller's device after, so
// gradfast's CUDA runtime never changes what torch (or the user) had selected.
#pragma once
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace gradfast::cuda {

inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("gradfast CUDA error in ") + what + ": " +
                             cudaGetErrorString(err));
}

class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    check(cudaGetDevice(&previous_), "cudaGetDevice");
    if (previous_ != device) check(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceGuard() {
    int now = -1;
    if (cudaGetDevice(&now) == cudaSuccess && now != previous_) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

}  // namespace gradfast::cuda
