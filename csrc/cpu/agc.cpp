// Unit-wise adaptive gradient clipping on the CPU.
//
// Units up to one chunk long are processed whole, several to a task: both norms, the
// factor and the scaling in one visit while the unit is in cache. Longer units (large
// biases, wide rows) are split into chunks: chunk partials in parallel, a serial fold per
// unit in chunk order, then the scaling in parallel. Task boundaries are fixed by the
// data, never by the thread count.
#include <algorithm>
#include <vector>

#include "../gradfast/agc_math.h"
#include "../gradfast/tensor_list.h"
#include "agc.h"
#include "cpu_kernels.h"
#include "thread_pool.h"

namespace gradfast::cpu {
namespace {

struct UnitRun {  // whole units [u0, u1) of tensor t
  int64_t t, u0, u1;
};

struct BigChunk {  // elements [start, start + len) of tensor t, inside big unit `unit`
  int64_t t, start, len, unit;
};

struct BigUnit {  // unit of tensor t starting at element start, with chunks [c0, c1)
  int64_t t, start, c0, c1;
};

template <NormKind K, typename T>
void run(void* const* params, void* const* grads, const int64_t* numels,
         const int64_t* unit_sizes, int64_t n, DType dt, double p, double clip_factor,
         double eps, int64_t* clipped_out, int num_threads) {
  using A = math_t<T>;
  const NormOp<K, A> op{(A)p};
  const CpuKernels& k = best_kernels();
  const NormKind kind = K;
  const int64_t esize = sizeof(T);

  std::vector<UnitRun> runs;
  std::vector<BigChunk> chunks;
  std::vector<BigUnit> bigs;
  for (int64_t t = 0; t < n; ++t) {
    const int64_t numel = numels[t], unit = unit_sizes[t];
    if (numel == 0 || unit <= 0) continue;
    const int64_t units = numel / unit;
    if (unit <= kChunkElems) {
      const int64_t per = std::max<int64_t>(1, kChunkElems / unit);
      for (int64_t u = 0; u < units; u += per) runs.push_back({t, u, std::min(units, u + per)});
    } else {
      for (int64_t u = 0; u < units; ++u) {
        const int64_t start = u * unit;
        const int64_t c0 = (int64_t)chunks.size();
        for (int64_t off = 0; off < unit; off += kChunkElems) {
          chunks.push_back({t, start + off, std::min(kChunkElems, unit - off),
                            (int64_t)bigs.size()});
        }
        bigs.push_back({t, start, c0, (int64_t)chunks.size()});
      }
    }
  }

  auto at = [esize](void* base, int64_t elem) {
    return static_cast<void*>(static_cast<char*>(base) + elem * esize);
  };
  auto unit_norm = [&](A acc) { return round_to<T>(op.finalize(acc)); };

  // Phase 1: whole small units, and the partial norms of big units' chunks.
  const int64_t n_runs = (int64_t)runs.size(), n_chunks = (int64_t)chunks.size();
  std::vector<int64_t> run_clipped(n_runs, 0);
  std::vector<double> part_p(n_chunks), part_g(n_chunks);
  parallel_for(n_runs + n_chunks, num_threads, [&](int64_t task) {
    if (task < n_runs) {
      const UnitRun& r = runs[task];
      const int64_t unit = unit_sizes[r.t];
      int64_t clipped = 0;
      for (int64_t u = r.u0; u < r.u1; ++u) {
        void* pu = at(params[r.t], u * unit);
        void* gu = at(grads[r.t], u * unit);
        const A pn = unit_norm((A)k.norm_range(pu, unit, dt, kind, p));
        const A gn = unit_norm((A)k.norm_range(gu, unit, dt, kind, p));
        const AgcUnit<T> f = agc_unit<T>(pn, gn, clip_factor, eps);
        if (f.clipped) {
          k.scale_range(gu, unit, dt, (double)f.factor);
          ++clipped;
        }
      }
      run_clipped[task] = clipped;
    } else {
      const BigChunk& c = chunks[task - n_runs];
      part_p[task - n_runs] = k.norm_range(at(params[c.t], c.start), c.len, dt, kind, p);
      part_g[task - n_runs] = k.norm_range(at(grads[c.t], c.start), c.len, dt, kind, p);
    }
  });

  // Phase 2: fold big units' partials in chunk order.
  int64_t clipped = 0;
  for (int64_t r = 0; r < n_runs; ++r) clipped += run_clipped[r];
  std::vector<AgcUnit<T>> big_factor(bigs.size());
  for (size_t b = 0; b < bigs.size(); ++b) {
    A ap = op.identity(), ag = op.identity();
    for (int64_t c = bigs[b].c0; c < bigs[b].c1; ++c) {
      ap = op.combine(ap, (A)part_p[c]);
      ag = op.combine(ag, (A)part_g[c]);
    }
    big_factor[b] = agc_unit<T>(unit_norm(ap), unit_norm(ag), clip_factor, eps);
    clipped += big_factor[b].clipped ? 1 : 0;
  }

  // Phase 3: scale the chunks of clipped big units.
  if (n_chunks > 0) {
    parallel_for(n_chunks, num_threads, [&](int64_t c) {
      const AgcUnit<T>& f = big_factor[chunks[c].unit];
      if (f.clipped) {
        k.scale_range(at(grads[chunks[c].t], chunks[c].start), chunks[c].len, dt,
                      (double)f.factor);
      }
    });
  }
  if (clipped_out) *clipped_out = clipped;
}

}  // namespace

void agc(void* const* params, void* const* grads, const int64_t* numels,
         const int64_t* unit_sizes, int64_t n, DType dt, NormKind kind, double p,
         double clip_factor, double eps, int64_t* clipped_out, int num_threads) {
  GF_DISPATCH_DTYPE(dt, GF_DISPATCH_NORM(kind, run<kNorm, scalar_t>(
      params, grads, numels, unit_sizes, n, dt, p, clip_factor, eps, clipped_out,
      num_threads)));
}

}  // namespace gradfast::cpu
