// Multi-tensor operations on CUDA device memory: the GPU back end of gradfast.
//
// Plain C++ declarations (no CUDA or torch header), so the bindings compile with the host
// compiler. Every entry point takes the device index, makes it current for the call and
// restores the caller's device, and enqueues on the given stream (a cudaStream_t passed as
// an integer handle) without synchronising.
//
// A tensor list lives on the device as one int64 table, built and cached by Python:
//   meta[0, n)          data pointers
//   meta[n, 2n)         element counts
//   meta[2n, 3n+1)      first chunk of each tensor (prefix sums of ceil(numel/kChunkElems))
// so one launch covers any number of tensors; blocks find their tensor by binary search.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "../gradfast/dtype.h"
#include "../gradfast/norm_math.h"

namespace gradfast::cuda {

struct DeviceList {
  const int64_t* meta;  // device pointer to the table above
  int64_t n;            // tensors
  int64_t n_chunks;     // total chunks (meta[3n])
};

// Bytes of scratch multi_norm needs: completion counters, chunk partials and per-tensor
// norms. The workspace must be 16-byte aligned and zeroed once when allocated; every launch
// leaves all of it zeroed again, so launches replay inside a CUDA graph and one workspace
// (large enough for each) serves any lists in turn on one stream. Launches that may run
// concurrently (different streams) need different workspaces.
size_t norm_workspace_bytes(int64_t n_tensors, int64_t n_chunks, DType dt);

// Same outputs as cpu::multi_norm (all device pointers). One kernel launch: blocks write
// chunk partials, the last block to finish folds them in chunk order (deterministic, no
// floating-point atomics) into per-tensor norms, the total and the clip coefficient.
void multi_norm(const DeviceList& list, DType dt, NormKind kind, double p, void* workspace,
                void* per_tensor_out, void* total_out, void* coef_out, double max_norm,
                int device, intptr_t stream);

// x *= *coef (coef: device pointer to one math-type value). One launch. When *coef is
// exactly 1 (an inactive clip) no element is touched: x * 1 == x for every value.
void multi_scale(const DeviceList& list, DType dt, const void* coef, int device, intptr_t stream);

// x = clamp(x, lo, hi). One launch.
void multi_clamp(const DeviceList& list, DType dt, double lo, double hi, int device,
                 intptr_t stream);

// One adaptive-gradient-clipping group on the device: the table of agc_table.h (built by
// agc_build_table on the host and copied to the device) and its sizes.
struct AgcDeviceTable {
  const int64_t* meta;  // device pointer, kAgcTableRows * n + 2 int64
  int64_t n;            // tensors
  int64_t n_items;      // work items of the norm launch
  int64_t n_big_units;  // units of several slices
  int64_t n_big_items;  // their slices
};

// Bytes of scratch agc needs: counters, clip flags, factors and slice partials. It must be
// 16-byte aligned and zeroed once when allocated; every launch pair leaves the counters
// (the only part read before it is written) zeroed again, so launches replay inside a CUDA
// graph and one workspace (large enough for each) serves any groups in turn on one stream.
// Do not share it with multi_norm (whose scratch must all be zero), nor between streams.
size_t agc_workspace_bytes(int64_t n_big_units, int64_t n_big_items, DType dt);

// Same computation as cpu::agc (cpu/agc.h) on device memory: every unit of every gradient
// is clipped by agc_math.h's rule, with unit norms of order (kind, p) in the math type.
// *clipped_out (device int64) receives the number of clipped units. One launch computes the
// unit norms, factors and the count and scales every unit of at most one slice; a second
// launch, only when some unit spans several slices, scales those. No host sync, no
// allocation, no floating-point atomics: bitwise reproducible.
void agc(const AgcDeviceTable& table, DType dt, NormKind kind, double p, double clip_factor,
         double eps, void* workspace, void* clipped_out, int device, intptr_t stream);

// Devices the CUDA runtime linked into gradfast can see (0 without a driver; never throws).
int device_count();

// The architectures compiled into this build, e.g. "sm_80 sm_90 compute_120".
std::string compiled_archs();

}  // namespace gradfast::cuda
