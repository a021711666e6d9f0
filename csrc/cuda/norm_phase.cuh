// The device side of the deterministic multi-tensor norm (see multi_norm.cu for the
// algorithm), shared by the norm kernel (multi_norm.cu) and the one-launch clip + Adam
// kernel (clip_adam.cu): both run norm_phase() below, the same code with the same block
// size, chunking, partials and fold order, so they produce the same bits. The AGC kernels
// (agc.cu) use its per-thread accumulation and last-arrival counter too.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "chunk_loop.cuh"
#include "cuda_ops.h"

namespace gradfast::cuda::norm_detail {

constexpr int kNormBlock = 512;  // 16 warps: enough threads per chunk for 4 x 16 B in flight
constexpr int kNormIlp = 4;

inline size_t align16(size_t x) { return (x + 15) & ~(size_t)15; }

// Workspace layout, shared by norm_workspace_bytes and the launches so they never disagree:
//   [0, 4(n+1))   unsigned counters: chunks done per tensor [n], blocks done [1]
//   partials      one math-type accumulator per chunk (only multi-chunk tensors use theirs)
//   norms         per-tensor norms when the caller asks for none (the total needs them)
struct NormWorkspace {
  size_t partials_off, norms_off, bytes;
  NormWorkspace(int64_t n, int64_t n_chunks, size_t acc_size) {
    partials_off = align16(sizeof(unsigned) * (size_t)(n + 1));
    norms_off = align16(partials_off + acc_size * (size_t)n_chunks);
    bytes = align16(norms_off + acc_size * (size_t)n);
  }
};

template <typename T>
struct NormArgs {
  using A = math_t<T>;
  MetaTable table;
  int64_t n_chunks;
  unsigned* tensor_done;  // [n], all 0 between launches
  unsigned* blocks_done;  // [1], 0 between launches
  A* partials;            // [n_chunks]
  A* norms;               // [n]: the caller's per_tensor_out, or workspace
  bool norms_are_scratch; // norms is workspace: zero it after use
  T* total_out;
  A* coef_out;            // may be null
  A p;
  double max_norm;
};

// The arguments of one norm over `list` (host side; the workspace layout above).
template <typename T>
NormArgs<T> make_norm_args(const DeviceList& list, double p, void* workspace,
                           void* per_tensor_out, void* total_out, void* coef_out,
                           double max_norm) {
  using A = math_t<T>;
  const NormWorkspace ws(list.n, list.n_chunks, sizeof(A));
  char* w = static_cast<char*>(workspace);
  NormArgs<T> a;
  a.table = MetaTable{list.meta, list.n};
  a.n_chunks = list.n_chunks;
  a.tensor_done = reinterpret_cast<unsigned*>(w);
  a.blocks_done = a.tensor_done + list.n;
  a.partials = reinterpret_cast<A*>(w + ws.partials_off);
  a.norms_are_scratch = per_tensor_out == nullptr;
  a.norms = a.norms_are_scratch ? reinterpret_cast<A*>(w + ws.norms_off)
                                : static_cast<A*>(per_tensor_out);
  a.total_out = static_cast<T*>(total_out);
  a.coef_out = static_cast<A*>(coef_out);
  a.p = (A)p;
  a.max_norm = max_norm;
  return a;
}

// This thread's accumulator over its elements of one chunk: one accumulator per vector lane
// (independent dependency chains), folded by a fixed tree at the end.
// (Block and Ilp: the caller's block size and loads in flight; the AGC kernel uses its own.)
template <NormKind K, typename T, int Block = kNormBlock, int Ilp = kNormIlp>
__device__ __forceinline__ math_t<T> thread_accumulate(const NormOp<K, math_t<T>>& op,
                                                       const T* base, int len) {
  using A = math_t<T>;
  constexpr int V = Vec16<T>::kN;
  A acc[V];
#pragma unroll
  for (int e = 0; e < V; ++e) acc[e] = op.identity();
  read_chunk<T, Block, Ilp>(
      base, len, [&](int e, T x) { acc[e] = op.accumulate(acc[e], load_math(x)); });
#pragma unroll
  for (int w = V / 2; w > 0; w /= 2) {
#pragma unroll
    for (int e = 0; e < w; ++e) acc[e] = op.combine(acc[e], acc[e + w]);
  }
  return acc[0];
}

// Thread 0 bumps `counter` (mod `last`+1) after making this block's earlier global writes
// visible, and tells the whole block whether it was the last of `last`+1 arrivals. The
// fences on both sides order the other blocks' writes before this block's reads of them.
__device__ __forceinline__ bool arrive_last(unsigned* counter, unsigned last, bool* flag) {
  if (threadIdx.x == 0) {
    __threadfence();
    *flag = atomicInc(counter, last) == last;  // wraps to 0 on the last arrival
    __threadfence();
  }
  __syncthreads();
  return *flag;
}

// The whole norm, run by every block of a grid of kNormBlock threads (any grid size: the
// result does not depend on it). Every block returns; when the last one returns, the
// per-tensor norms, *total_out and *coef_out are written and the workspace is zeroed again.
// A block's return does not mean the total is written: a caller that reads it in the same
// kernel needs a grid-wide barrier first (clip_adam.cu).
template <NormKind K, typename T>
__device__ __forceinline__ void norm_phase(const NormArgs<T>& a) {
  using A = math_t<T>;
  const NormOp<K, A> op{a.p};
  const auto combine = [](A x, A y) { return NormOp<K, A>::combine(x, y); };
  __shared__ A red[kNormBlock / 32];
  // Two flags: a slow thread may still read tensor_last while thread 0 sets grid_last.
  __shared__ bool tensor_last, grid_last;
  const int tid = threadIdx.x;

  for_each_chunk(a.table, a.n_chunks, [&](int64_t c, const ChunkRef& ch) {
    const T* base = static_cast<const T*>(a.table.ptr(ch.tensor)) + ch.start;
    const A part =
        block_reduce<kNormBlock>(thread_accumulate<K>(op, base, ch.len), combine,
                                 op.identity(), red);
    const int64_t n_own = ch.end - ch.first;  // block-uniform, like everything below
    if (n_own == 1) {
      // combine(identity, part) == part exactly, so this equals the general path's result.
      if (tid == 0) a.norms[ch.tensor] = round_to<T>(op.finalize(part));
      return;
    }
    if (tid == 0) a.partials[c] = part;
    if (!arrive_last(a.tensor_done + ch.tensor, (unsigned)(n_own - 1), &tensor_last)) return;
    // Fixed order: thread i folds chunks first+i, first+i+Block, ... then the block tree.
    // L2-only loads (__ldcg): other blocks wrote these; never trust this SM's L1 for them.
    A acc = op.identity();
    for (int64_t k = ch.first + tid; k < ch.end; k += kNormBlock) {
      acc = op.combine(acc, __ldcg(a.partials + k));
      a.partials[k] = (A)0;  // the last reader leaves the workspace zeroed
    }
    acc = block_reduce<kNormBlock>(acc, combine, op.identity(), red);
    if (tid == 0) a.norms[ch.tensor] = round_to<T>(op.finalize(acc));
  });

  if (!arrive_last(a.blocks_done, gridDim.x - 1, &grid_last)) return;

  // The last block: every tensor's norm is written. Fold them in a fixed order.
  const A empty_norm = round_to<T>(op.finalize(op.identity()));
  A acc = op.identity();
  for (int64_t t = tid; t < a.table.n; t += kNormBlock) {
    A norm;
    if (a.table.first_chunk(t) == a.table.first_chunk(t + 1)) {
      norm = empty_norm;  // no elements, no chunk: nobody else wrote it
      if (!a.norms_are_scratch) a.norms[t] = norm;
    } else {
      norm = __ldcg(a.norms + t);
      if (a.norms_are_scratch) a.norms[t] = (A)0;
    }
    acc = fold_tensor_norms(op, acc, norm);
  }
  acc = block_reduce<kNormBlock>(acc, combine, op.identity(), red);
  if (tid == 0) {
    const A total = round_to<T>(op.finalize(acc));
    *a.total_out = StoreAs<T>::from(total);
    if (a.coef_out) *a.coef_out = clip_coefficient<T>(total, a.max_norm);
  }
}

}  // namespace gradfast::cuda::norm_detail
