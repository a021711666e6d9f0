// The fused Adam/AdamW step on CUDA device memory (plain C++ declarations, no CUDA or torch
// header, so the bindings compile with the host compiler).
//
// One (device, dtype) group of tensors is described by one int64 table in device memory,
// built and cached by Python (gradfast/_tensor_lists.py AdamDeviceList):
//   meta[0n, 1n)   param pointers          meta[4n, 5n)   max_exp_avg_sq pointers (0 if unused)
//   meta[1n, 2n)   grad pointers           meta[5n, 6n)   step pointers (fp32 0-d tensors)
//   meta[2n, 3n)   exp_avg pointers        meta[6n, 7n)   element counts
//   meta[3n, 4n)   exp_avg_sq pointers     meta[7n, 8n+1) first tile of each tensor
// A tile is kAdamTileElems elements; every tensor owns max(1, ceil(numel / kAdamTileElems))
// tiles (an empty tensor owns one, which updates only its step). One block per tile.
//
// The update is one launch per group and never synchronises with the host: the lr (when a
// tensor), the GradScaler scale and found_inf, the global grad norm (for clipping and
// skipping) and each tensor's step count are read from device memory by every block. The
// step count is incremented on the device: each block reads the old count when it starts,
// and the block that finishes a tensor's last tile (per-tensor completion counters in a
// workspace, zeroed once and left zeroed by every launch) writes the incremented count.
// With clipping, the global norm comes from a separate, earlier launch (cuda::multi_norm),
// so clip + Adam is two launches per group.
#pragma once
#include <cstddef>
#include <cstdint>

#include "../gradfast/adam_math.h"
#include "../gradfast/dtype.h"

namespace gradfast::cuda {

constexpr int64_t kAdamTileElems = 4096;
constexpr int kAdamMetaRows = 8;

struct AdamDeviceList {
  const int64_t* meta;  // device pointer to the table above
  int64_t n;            // tensors
  int64_t n_tiles;      // total tiles (meta[8n])
};

// Bytes of the zeroed workspace one launch over n tensors needs (completion counters).
size_t adam_workspace_bytes(int64_t n_tensors);

// One fused step over the group. skipped_counter (device int64, may be null) is incremented
// when the step is skipped (found_inf, or a non-finite norm with skip_nonfinite).
void adam_step(const AdamDeviceList& list, DType dt, const AdamHyper& hyper,
               const AdamFlags& flags, const AdamControl& control, long long* skipped_counter,
               void* workspace, int device, intptr_t stream);

}  // namespace gradfast::cuda
