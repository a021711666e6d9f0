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
// so clip + Adam is two launches per group; clip_adam_step below (opt-in) does both in one.
#pragma once
#include <cstddef>
#include <cstdint>

#include "../gradfast/adam_math.h"
#include "../gradfast/dtype.h"
#include "cuda_ops.h"

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
               const AdamFlags& flags, const StepControl& control, long long* skipped_counter,
               void* workspace, int device, intptr_t stream);

// One-launch global-norm clip + Adam step (clip_adam.cu), for a step whose every grad is in
// this one (device, dtype) group: `grads` is the multi_norm table of the group's grads (the
// same tensors, in the same order, as the grad row of `list`).
//
// One cooperative persistent kernel: phase 1 is multi_norm's norm_phase (same chunking,
// partials and fold order, so *total_out, in the grads' dtype, and *coef_out, optional, get
// the bits multi_norm gives), a grid-wide barrier, then phase 2 is the Adam update of
// adam_step (same per-element code, step-count protocol and skip decision), with the clip
// and skip decision read from the total phase 1 wrote: control.total_norm and total_dtype
// are ignored and replaced by total_out and dt.
//
// Falls back to the two launches (multi_norm, then adam_step, on the same outputs and
// workspaces) when `cooperative` is false, when the device cannot launch cooperative
// kernels, or when the cooperative launch returns an error. Returns the number of launches
// that ran: 1 (the cooperative kernel) or 2 (the fallback). No host sync, no allocation;
// both workspaces (norm_workspace_bytes, adam_workspace_bytes) are zeroed once when
// allocated and left zeroed by every call, so calls replay inside a CUDA graph.
int clip_adam_step(const DeviceList& grads, const AdamDeviceList& list, DType dt,
                   NormKind kind, double p, void* norm_workspace, void* total_out,
                   void* coef_out, const AdamHyper& hyper, const AdamFlags& flags,
                   const StepControl& control, long long* skipped_counter,
                   void* adam_workspace, bool cooperative, int device, intptr_t stream);

}  // namespace gradfast::cuda
