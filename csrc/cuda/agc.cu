// Unit-wise adaptive gradient clipping (AGC) on the GPU: at most two launches per group,
// deterministic, no host sync, graph-replayable. The per-unit math is agc_math.h's, the
// norms norm_math.h's, the per-element scaling the CPU's (load_as_float, StoreAs), so the
// two back ends differ only in the summation order inside each unit norm.
//
// Launch 1 (agc_norm_kernel), a persistent grid over the work items of agc_table.h:
//   - group-mode items (units of at most kAgcGroupMaxUnit elements): each group of lanes of
//     a warp reduces one unit of the parameter and of the gradient (fixed lane stride, fixed
//     shuffle tree), lane 0 of the group computes the factor, and the group scales the unit
//     right away when it is clipped (its elements are read and written by the same lanes);
//   - slice-mode items: the block reduces one slice of the parameter and of the gradient
//     (chunk_loop.cuh's fixed ownership, block_reduce.cuh's fixed tree). A unit of one slice
//     is finished and scaled by the same block. A unit of several slices writes the slice's
//     two partials to the workspace; the block that completes the unit's last slice (a
//     per-unit counter bumped with atomicInc after a __threadfence, as multi_norm.cu does
//     per tensor) folds the unit's partials in a fixed order into its norms, its factor and
//     its clip flag, stored in the workspace. atomicInc's modulus wraps the counter back to 0.
//   - each block counts the units it clipped; the counts meet in a 64-bit integer
//     accumulator (integer atomicAdd: exact, order-independent), and the last block of the
//     grid (a grid counter, wrapping to 0 as well) moves the total to *clipped_out and zeroes
//     the accumulator. So the output needs no prior memset.
// Launch 2 (agc_scale_kernel), only when some unit spans several slices: a persistent grid
// over those units' slices scales the slices of clipped units by the stored factor.
//
// Every value depends on the data alone, never on which block ran when. The counters and the
// accumulator, the only workspace words read before being written, are zero again after
// every launch; flags, factors and partials are always written before they are read.
#include <cuda_runtime.h>

#include <stdexcept>

#include "../gradfast/agc_math.h"
#include "agc_table.h"
#include "chunk_loop.cuh"
#include "cuda_ops.h"
#include "device_guard.h"
#include "norm_phase.cuh"

namespace gradfast::cuda {
namespace {

constexpr int kAgcIlp = 2;  // 16-byte loads in flight per thread and pass (slice mode)
constexpr int kAgcWarps = kAgcBlock / 32;
static_assert(kAgcBlock % 32 == 0 && kAgcBlock >= 128, "read_chunk needs >= 64 threads");
static_assert(kAgcSliceElems <= (int64_t)1 << 30, "a slice length must fit an int");

using norm_detail::align16;

// Workspace layout, shared by agc_workspace_bytes and the launch:
//   [0, 4)       unsigned: blocks of launch 1 done (0 between launches)
//   [8, 16)      unsigned long long: clipped units counted so far (0 between launches)
//   [16, ..)     unsigned per big unit: slices done (0 between launches)
//   flags        unsigned per big unit: 1 when clipped (written by launch 1, read by 2)
//   factors      math type per big unit
//   part_p/g     math type per big-unit slice: partial norm accumulators
struct AgcWorkspace {
  static constexpr size_t kDoneOff = 16;
  size_t flags_off, factors_off, part_p_off, part_g_off, bytes;
  AgcWorkspace(int64_t n_big_units, int64_t n_big_items, size_t acc_size) {
    const size_t nbu = (size_t)n_big_units, nbi = (size_t)n_big_items;
    flags_off = align16(kDoneOff + sizeof(unsigned) * nbu);
    factors_off = align16(flags_off + sizeof(unsigned) * nbu);
    part_p_off = align16(factors_off + acc_size * nbu);
    part_g_off = align16(part_p_off + acc_size * nbi);
    bytes = align16(part_g_off + acc_size * nbi);
  }
};

template <typename T>
struct AgcArgs {
  using A = math_t<T>;
  AgcTable table;
  int64_t n_items;      // launch 1's index space
  int64_t n_big_items;  // launch 2's index space
  unsigned* blocks_done;
  unsigned long long* clipped_acc;
  unsigned* unit_done;  // [n_big_units]
  unsigned* flags;      // [n_big_units]
  A* factors;           // [n_big_units]
  A* part_p;            // [n_big_items]
  A* part_g;            // [n_big_items]
  long long* clipped_out;
  A p;
  double clip_factor, eps;
};

using norm_detail::arrive_last;

// This thread's accumulator over its elements of one slice (norm_phase.cuh's, with this
// kernel's block size and loads in flight).
template <NormKind K, typename T>
__device__ __forceinline__ math_t<T> slice_accumulate(const NormOp<K, math_t<T>>& op,
                                                      const T* base, int len) {
  return norm_detail::thread_accumulate<K, T, kAgcBlock, kAgcIlp>(op, base, len);
}

template <typename T>
__device__ __forceinline__ void scale_slice(T* base, int len, math_t<T> c) {
  update_chunk<T, kAgcBlock, kAgcIlp>(base, len,
                                      [c](T x) { return StoreAs<T>::from(load_math(x) * c); });
}

template <NormKind K, typename T>
__global__ void __launch_bounds__(kAgcBlock) agc_norm_kernel(AgcArgs<T> a) {
  using A = math_t<T>;
  using Count = unsigned long long;
  const NormOp<K, A> op{a.p};
  const auto combine = [](A x, A y) { return NormOp<K, A>::combine(x, y); };
  __shared__ A red_p[kAgcWarps], red_g[kAgcWarps];
  __shared__ Count red_count[kAgcWarps];
  __shared__ A s_factor;
  __shared__ int s_clipped;
  // Two flags: a slow thread may still read unit_last while thread 0 sets grid_last (there
  // are barriers in between today; the second flag keeps that from mattering).
  __shared__ bool unit_last, grid_last;
  const int tid = threadIdx.x;
  Count clipped = 0;  // units this thread found clipped (lane 0 of a group, or thread 0)

  for (int64_t item = blockIdx.x; item < a.n_items; item += gridDim.x) {
    // Everything up to the mode branch is block-uniform.
    const int64_t t = a.table.find(a.table.items_row(), item);
    const int64_t unit = a.table.unit(t);
    const AgcShape shape = agc_shape(unit);
    const int64_t local = item - a.table.first_item(t);
    const T* P = static_cast<const T*>(a.table.param(t));
    T* G = static_cast<T*>(a.table.grad(t));

    if (shape.group > 0) {
      // Group mode: `g` lanes per unit, `groups` units at a time, every lane of the block in
      // every round (the shuffles below need whole warps).
      const int g = (int)shape.group;
      const int groups = kAgcBlock / g;
      const int sub = tid & (g - 1), grp = tid / g;
      const int u_len = (int)unit;  // <= kAgcGroupMaxUnit
      const int64_t u_begin = local * shape.units_per_item;
      const int64_t u_left = a.table.units(t) - u_begin;
      const int64_t u_end = u_begin + (u_left < shape.units_per_item ? u_left
                                                                     : shape.units_per_item);
      for (int64_t base = u_begin; base < u_end; base += groups) {
        const int64_t u = base + grp;
        const bool active = u < u_end;
        const int64_t off = u * unit;
        A ap = op.identity(), ag = op.identity();
        if (active) {
#pragma unroll 4
          for (int i = sub; i < u_len; i += g) {
            ap = op.accumulate(ap, load_math(P[off + i]));
            ag = op.accumulate(ag, load_math(G[off + i]));
          }
        }
        for (int o = g / 2; o > 0; o /= 2) {
          ap = combine(ap, __shfl_down_sync(kFullMask, ap, o, g));
          ag = combine(ag, __shfl_down_sync(kFullMask, ag, o, g));
        }
        A factor = (A)1;
        int clip = 0;
        if (sub == 0 && active) {
          const AgcUnit<T> f = agc_unit<T>(round_to<T>(op.finalize(ap)),
                                           round_to<T>(op.finalize(ag)), a.clip_factor, a.eps);
          factor = f.factor;
          clip = f.clipped ? 1 : 0;
          clipped += (Count)clip;
        }
        factor = __shfl_sync(kFullMask, factor, 0, g);
        clip = __shfl_sync(kFullMask, clip, 0, g);
        if (active && clip) {
          // The same lanes read these elements above: no other thread touches them.
#pragma unroll 4
          for (int i = sub; i < u_len; i += g)
            G[off + i] = StoreAs<T>::from(load_math(G[off + i]) * factor);
        }
      }
      continue;
    }

    // Slice mode: slice `k` of unit `u`.
    const int64_t spu = shape.slices;
    const int64_t u = local / spu, k = local - u * spu;
    const int64_t start = u * unit + k * kAgcSliceElems;
    const int64_t left = unit - k * kAgcSliceElems;
    const int len = (int)(left < kAgcSliceElems ? left : kAgcSliceElems);
    const A ap = block_reduce<kAgcBlock>(slice_accumulate<K>(op, P + start, len), combine,
                                         op.identity(), red_p);
    const A ag = block_reduce<kAgcBlock>(slice_accumulate<K>(op, G + start, len), combine,
                                         op.identity(), red_g);
    if (spu == 1) {
      // The whole unit is this slice: finish it here. combine(identity, x) == x, so this is
      // the fold below with one partial.
      if (tid == 0) {
        const AgcUnit<T> f = agc_unit<T>(round_to<T>(op.finalize(ap)),
                                         round_to<T>(op.finalize(ag)), a.clip_factor, a.eps);
        s_factor = f.factor;
        s_clipped = f.clipped ? 1 : 0;
        clipped += (Count)s_clipped;
      }
      __syncthreads();
      // Thread 0 rewrites these only after the next item's block_reduce barriers, which every
      // thread reaches after these reads.
      const A factor = s_factor;
      if (s_clipped) scale_slice(G + start, len, factor);
      continue;
    }

    // A slice of a big unit: publish the partials; the unit's last slice folds them.
    const int64_t part = a.table.first_big_item(t) + local;
    const int64_t big_unit = a.table.first_big_unit(t) + u;
    if (tid == 0) {
      a.part_p[part] = ap;
      a.part_g[part] = ag;
    }
    if (!arrive_last(a.unit_done + big_unit, (unsigned)(spu - 1), &unit_last)) continue;
    // Fixed order: thread i folds slices i, i+Block, ... then the block tree. L2-only loads
    // (__ldcg): other blocks wrote these; never trust this SM's L1 for them.
    const int64_t first = a.table.first_big_item(t) + u * spu;
    A fp = op.identity(), fg = op.identity();
    for (int64_t j = tid; j < spu; j += kAgcBlock) {
      fp = op.combine(fp, __ldcg(a.part_p + first + j));
      fg = op.combine(fg, __ldcg(a.part_g + first + j));
    }
    fp = block_reduce<kAgcBlock>(fp, combine, op.identity(), red_p);
    fg = block_reduce<kAgcBlock>(fg, combine, op.identity(), red_g);
    if (tid == 0) {
      const AgcUnit<T> f = agc_unit<T>(round_to<T>(op.finalize(fp)),
                                       round_to<T>(op.finalize(fg)), a.clip_factor, a.eps);
      a.factors[big_unit] = f.factor;
      a.flags[big_unit] = f.clipped ? 1u : 0u;
      clipped += f.clipped ? 1 : 0;
    }
  }

  // The count: integer sums, exact in any order.
  clipped = block_reduce<kAgcBlock>(clipped, [](Count x, Count y) { return x + y; }, (Count)0,
                                    red_count);
  if (tid == 0 && clipped != 0) atomicAdd(a.clipped_acc, clipped);
  if (!arrive_last(a.blocks_done, gridDim.x - 1, &grid_last)) return;
  if (tid == 0) *a.clipped_out = (long long)atomicExch(a.clipped_acc, (Count)0);
}

template <typename T>
__global__ void __launch_bounds__(kAgcBlock) agc_scale_kernel(AgcArgs<T> a) {
  using A = math_t<T>;
  for (int64_t k = blockIdx.x; k < a.n_big_items; k += gridDim.x) {
    const int64_t t = a.table.find(a.table.big_items_row(), k);
    const int64_t unit = a.table.unit(t);
    const int64_t spu = agc_shape(unit).slices;
    const int64_t local = k - a.table.first_big_item(t);
    const int64_t u = local / spu, j = local - u * spu;
    const int64_t big_unit = a.table.first_big_unit(t) + u;
    if (a.flags[big_unit] == 0u) continue;  // block-uniform
    const A factor = a.factors[big_unit];
    const int64_t left = unit - j * kAgcSliceElems;
    const int len = (int)(left < kAgcSliceElems ? left : kAgcSliceElems);
    scale_slice(static_cast<T*>(a.table.grad(t)) + u * unit + j * kAgcSliceElems, len, factor);
  }
}

template <NormKind K, typename T>
void launch_agc(const AgcDeviceTable& tab, double p, double clip_factor, double eps,
                void* workspace, void* clipped_out, int device, cudaStream_t stream) {
  using A = math_t<T>;
  const AgcWorkspace ws(tab.n_big_units, tab.n_big_items, sizeof(A));
  char* w = static_cast<char*>(workspace);
  AgcArgs<T> a;
  a.table = AgcTable{tab.meta, tab.n};
  a.n_items = tab.n_items;
  a.n_big_items = tab.n_big_items;
  a.blocks_done = reinterpret_cast<unsigned*>(w);
  a.clipped_acc = reinterpret_cast<unsigned long long*>(w + 8);
  a.unit_done = reinterpret_cast<unsigned*>(w + AgcWorkspace::kDoneOff);
  a.flags = reinterpret_cast<unsigned*>(w + ws.flags_off);
  a.factors = reinterpret_cast<A*>(w + ws.factors_off);
  a.part_p = reinterpret_cast<A*>(w + ws.part_p_off);
  a.part_g = reinterpret_cast<A*>(w + ws.part_g_off);
  a.clipped_out = static_cast<long long*>(clipped_out);
  a.p = (A)p;
  a.clip_factor = clip_factor;
  a.eps = eps;
  // Launch 1 runs even with no items: its last block writes the count (0).
  constexpr auto norm_kernel = agc_norm_kernel<K, T>;
  const unsigned grid = persistent_grid<norm_kernel, kAgcBlock>(tab.n_items, device);
  norm_kernel<<<grid, kAgcBlock, 0, stream>>>(a);
  check(cudaGetLastError(), "agc norm launch");
  if (tab.n_big_items > 0) {
    constexpr auto scale_kernel = agc_scale_kernel<T>;
    const unsigned grid2 = persistent_grid<scale_kernel, kAgcBlock>(tab.n_big_items, device);
    scale_kernel<<<grid2, kAgcBlock, 0, stream>>>(a);
    check(cudaGetLastError(), "agc scale launch");
  }
}

}  // namespace

size_t agc_workspace_bytes(int64_t n_big_units, int64_t n_big_items, DType dt) {
  if (n_big_units < 0 || n_big_items < 0)
    throw std::invalid_argument("gradfast agc_workspace_bytes: negative sizes");
  return AgcWorkspace(n_big_units, n_big_items,
                      dt == DType::Float64 ? sizeof(double) : sizeof(float))
      .bytes;
}

void agc(const AgcDeviceTable& table, DType dt, NormKind kind, double p, double clip_factor,
         double eps, void* workspace, void* clipped_out, int device, intptr_t stream) {
  if (workspace == nullptr || clipped_out == nullptr)
    throw std::invalid_argument("gradfast agc: workspace and clipped_out are required");
  if (reinterpret_cast<uintptr_t>(workspace) % 16 != 0 ||
      reinterpret_cast<uintptr_t>(clipped_out) % 8 != 0)
    throw std::invalid_argument("gradfast agc: misaligned workspace or clipped_out");
  if (table.n < 0 || table.n_items < 0 || table.n_big_units < 0 || table.n_big_items < 0 ||
      table.n_big_items > table.n_items || (table.n > 0 && table.meta == nullptr))
    throw std::invalid_argument("gradfast agc: bad table");
  if ((int)kind < 0 || (int)kind > (int)NormKind::Lp || (int)dt < 0 ||
      (int)dt > (int)DType::BFloat16)
    throw std::invalid_argument("gradfast agc: unknown dtype or norm kind");
  DeviceGuard guard(device);
  const auto s = reinterpret_cast<cudaStream_t>(stream);
  GF_DISPATCH_DTYPE(dt, GF_DISPATCH_NORM(kind, launch_agc<kNorm, scalar_t>(
      table, p, clip_factor, eps, workspace, clipped_out, device, s)));
}

}  // namespace gradfast::cuda
