// The fused SGD step on CUDA device memory (plain C++ declarations, no CUDA or torch header,
// so the bindings compile with the host compiler).
//
// One (device, dtype) group of tensors is described by one int64 table in device memory,
// built and cached by Python:
//   meta[0n, 1n)   param pointers          meta[3n, 4n)   first-step flag pointers (int32,
//   meta[1n, 2n)   grad pointers                          0 if the tensor has history)
//   meta[2n, 3n)   momentum buffer         meta[4n, 5n)   element counts
//                  pointers (0 if unused)  meta[5n, 6n+1) first tile of each tensor
// A tile is kSgdTileElems elements; every tensor owns max(1, ceil(numel / kSgdTileElems))
// tiles (an empty tensor owns one, which only clears its flag). One block per tile.
//
// The update is one launch per group and never synchronises with the host: the lr (when a
// tensor), the GradScaler scale and found_inf, the global grad norm (clipping and skipping)
// and each tensor's first-step flag are read from device memory by every block. A flag is
// cleared on the device by the block that finishes the tensor's last tile (per-tensor
// completion counters in a workspace, zeroed once and left zeroed by every launch, as
// adam_cuda.h's step counts), so every block of the tensor has read it first. A skipped
// step leaves the flags set. With clipping, the global norm comes from a separate, earlier
// launch (cuda::multi_norm): clip + SGD is two launches per group.
#pragma once
#include <cstddef>
#include <cstdint>

#include "../gradfast/dtype.h"
#include "../gradfast/sgd_math.h"
#include "../gradfast/step_control.h"

namespace gradfast::cuda {

constexpr int64_t kSgdTileElems = 4096;
constexpr int kSgdMetaRows = 6;

struct SgdDeviceList {
  const int64_t* meta;  // device pointer to the table above
  int64_t n;            // tensors
  int64_t n_tiles;      // total tiles (meta[6n])
};

// Bytes of the zeroed workspace one launch over n tensors needs (completion counters).
size_t sgd_workspace_bytes(int64_t n_tensors);

// One fused step over the group. skipped_counter (device int64, may be null) is incremented
// when the step is skipped (found_inf, or a non-finite norm with skip_nonfinite).
void sgd_step(const SgdDeviceList& list, DType dt, const SgdHyper& hyper,
              const SgdFlags& flags, const StepControl& control, long long* skipped_counter,
              void* workspace, int device, intptr_t stream);

}  // namespace gradfast::cuda
