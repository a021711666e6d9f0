// Multi-tensor norm on the GPU in one kernel launch, deterministic and graph-replayable.
//
// A persistent grid walks the chunks. For each chunk a block computes its partial
// accumulator (fixed per-thread order, fixed block tree). Then:
//   - a tensor of one chunk gets its norm from that partial directly;
//   - otherwise the partial goes to workspace partials[c], and the block that completes the
//     tensor's last chunk (counted with atomicInc on the tensor's counter, after a
//     __threadfence: the classic threadFenceReduction pattern) folds the tensor's partials
//     with a fixed strided-then-tree order into its norm;
//   - the last block of the grid to finish (a grid counter) folds the per-tensor norms,
//     again in a fixed order, into the total and the clip coefficient, and also writes the
//     norms of tensors with no elements (they own no chunk, so no other block sees them).
// Every value is a function of the data alone, never of which block finished when. Each
// launch leaves the whole workspace zeroed, as it found it: the counters wrap back to 0 by
// atomicInc's own modulus, and every scratch value is zeroed by the thread that reads it
// last. So there is no memset and no host sync, launches replay inside a CUDA graph, and one
// workspace serves any sequence of lists of any sizes on one stream (each list's layout
// overlaps the others'). Launches that may run concurrently must not share a workspace.
#include <cuda_runtime.h>

#include <stdexcept>

#include "chunk_loop.cuh"
#include "cuda_ops.h"
#include "device_guard.h"

namespace gradfast::cuda {
namespace {

constexpr int kNormBlock = 512;  // 16 warps: enough threads per chunk for 4 x 16 B in flight
constexpr int kNormIlp = 4;

size_t align16(size_t x) { return (x + 15) & ~(size_t)15; }

// Workspace layout, shared by norm_workspace_bytes and the launch so the two never disagree:
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

// This thread's accumulator over its elements of one chunk: one accumulator per vector lane
// (independent dependency chains), folded by a fixed tree at the end.
template <NormKind K, typename T>
__device__ __forceinline__ math_t<T> thread_accumulate(const NormOp<K, math_t<T>>& op,
                                                       const T* base, int len) {
  using A = math_t<T>;
  constexpr int V = Vec16<T>::kN;
  A acc[V];
#pragma unroll
  for (int e = 0; e < V; ++e) acc[e] = op.identity();
  read_chunk<T, kNormBlock, kNormIlp>(
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

template <NormKind K, typename T>
__global__ void __launch_bounds__(kNormBlock) multi_norm_kernel(NormArgs<T> a) {
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

template <NormKind K, typename T>
void launch_norm(const DeviceList& list, double p, void* workspace, void* per_tensor_out,
                 void* total_out, void* coef_out, double max_norm, int device,
                 cudaStream_t stream) {
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
  constexpr auto kernel = multi_norm_kernel<K, T>;
  const unsigned grid = persistent_grid<kernel, kNormBlock>(list.n_chunks, device);
  kernel<<<grid, kNormBlock, 0, stream>>>(a);
  check(cudaGetLastError(), "multi_norm launch");
}

}  // namespace

size_t norm_workspace_bytes(int64_t n_tensors, int64_t n_chunks, DType dt) {
  return NormWorkspace(n_tensors, n_chunks, dt == DType::Float64 ? sizeof(double) : sizeof(float))
      .bytes;
}

void multi_norm(const DeviceList& list, DType dt, NormKind kind, double p, void* workspace,
                void* per_tensor_out, void* total_out, void* coef_out, double max_norm,
                int device, intptr_t stream) {
  if (workspace == nullptr || total_out == nullptr)
    throw std::invalid_argument("gradfast multi_norm: workspace and total_out are required");
  if (reinterpret_cast<uintptr_t>(workspace) % 16 != 0)
    throw std::invalid_argument("gradfast multi_norm: workspace must be 16-byte aligned");
  if (list.n < 0 || list.n_chunks < 0 || (list.n_chunks > 0 && list.meta == nullptr))
    throw std::invalid_argument("gradfast multi_norm: bad tensor list");
  if ((int)kind < 0 || (int)kind > (int)NormKind::Lp || (int)dt < 0 ||
      (int)dt > (int)DType::BFloat16)
    throw std::invalid_argument("gradfast multi_norm: unknown dtype or norm kind");
  DeviceGuard guard(device);
  const auto s = reinterpret_cast<cudaStream_t>(stream);
  GF_DISPATCH_DTYPE(dt, GF_DISPATCH_NORM(kind, launch_norm<kNorm, scalar_t>(
      list, p, workspace, per_tensor_out, total_out, coef_out, max_norm, device, s)));
}

}  // namespace gradfast::cuda
