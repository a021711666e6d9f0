// The device table of one CUDA adaptive-gradient-clipping (AGC) group, the split of its
// units into work items, and the host-side builder of the table.
//
// Plain __host__ __device__ code with no CUDA header, so the host builder (bound to Python
// in every build) and the index math can be tested on the CPU exactly as the kernels run
// it (tests/test_health_agc.py walks both launches over the table the native code builds).
//
// A unit is unit_sizes[t] consecutive elements of tensor t (see cpu/agc.h). Each tensor is
// split into work items by the size of its units alone:
//   group mode (unit <= kAgcGroupMaxUnit): a group of `group` lanes of one warp (a power of
//     two, 1..32) reduces one unit at a time; an item is units_per_item whole units, a
//     multiple of the groups of a block. The unit's factor is found and applied inside the
//     item: nothing crosses blocks.
//   slice mode (larger units): an item is one slice of at most kAgcSliceElems consecutive
//     elements of one unit, reduced by a whole block. A unit of one slice is finished (and
//     scaled) by its block; a unit of several slices ("big unit") writes per-slice partials,
//     and the block finishing its last slice folds them in slice order into the unit's factor;
//     a second launch scales the slices of the big units that are clipped.
// Item boundaries depend on the unit size only, never on the grid, so every result is a
// function of the data alone.
//
// The table, int64 rows of n (n+1 for the prefix rows):
//   [0n, 1n)        parameter pointers
//   [1n, 2n)        gradient pointers
//   [2n, 3n)        unit sizes (elements per unit)
//   [3n, 4n)        units (numel / unit size; 0 for an empty tensor)
//   [4n, 5n)        first big unit of the tensor (prefix over the units of tensors of
//                   multi-slice units: their counters, flags and factors in the workspace)
//   [5n, 6n+1)      first item of each tensor (prefix sums of its item count)
//   [6n+1, 7n+2)    first big item of each tensor (prefix over the items of tensors of
//                   multi-slice units: their partials in the workspace, and the index
//                   space of the scaling launch)
#pragma once
#include <cstdint>
#include <stdexcept>
#include <vector>

#include "../gradfast/macros.h"
#include "table_search.h"

namespace gradfast::cuda {

constexpr int kAgcBlock = 256;                // threads per block, both launches
constexpr int64_t kAgcSliceElems = 8192;      // elements per slice (slice mode)
constexpr int64_t kAgcGroupMaxUnit = 2048;    // largest unit reduced by a group of lanes
constexpr int64_t kAgcLaneElems = 8;          // group mode: lanes per unit ~ unit / this
constexpr int64_t kAgcItemElems = 8192;       // group mode: elements per item, about
constexpr int kAgcTableRows = 7;              // 7n + 2 int64 in all

struct AgcShape {
  int64_t group;           // group mode: lanes per unit (1, 2, 4, .., 32); 0: slice mode
  int64_t units_per_item;  // group mode: units per item (a multiple of kAgcBlock / group)
  int64_t slices;          // slice mode: slices per unit (>= 1); 1 in group mode
};

// unit >= 1.
GF_HD AgcShape agc_shape(int64_t unit) {
  if (unit <= kAgcGroupMaxUnit) {
    int64_t g = 1;
    while (g < 32 && g * kAgcLaneElems < unit) g *= 2;
    const int64_t groups = kAgcBlock / g;
    int64_t rounds = kAgcItemElems / (unit * groups);
    if (rounds < 1) rounds = 1;
    return {g, groups * rounds, 1};
  }
  return {0, 1, (unit + kAgcSliceElems - 1) / kAgcSliceElems};
}

// Work items of a tensor of `units` units of `unit` elements (units >= 0, unit >= 1).
GF_HD int64_t agc_items(int64_t units, int64_t unit) {
  const AgcShape s = agc_shape(unit);
  if (s.group > 0) return (units + s.units_per_item - 1) / s.units_per_item;
  return units * s.slices;
}

// Whether the units of this size span several slices (partials, counters, second launch).
GF_HD bool agc_big(int64_t unit) { return unit > kAgcSliceElems; }

struct AgcTable {
  const int64_t* meta;  // the table above, in device memory (host memory in tests)
  int64_t n;

  GF_HD int64_t at(int64_t i) const { return table_at(meta, i); }
  GF_HD void* param(int64_t t) const { return reinterpret_cast<void*>((intptr_t)at(t)); }
  GF_HD void* grad(int64_t t) const { return reinterpret_cast<void*>((intptr_t)at(n + t)); }
  GF_HD int64_t unit(int64_t t) const { return at(2 * n + t); }
  GF_HD int64_t units(int64_t t) const { return at(3 * n + t); }
  GF_HD int64_t first_big_unit(int64_t t) const { return at(4 * n + t); }
  GF_HD int64_t first_item(int64_t t) const { return at(5 * n + t); }          // t in [0, n]
  GF_HD int64_t first_big_item(int64_t t) const { return at(6 * n + 1 + t); }  // t in [0, n]

  // Row offsets of the two prefix rows, for find().
  GF_HD int64_t items_row() const { return 5 * n; }
  GF_HD int64_t big_items_row() const { return 6 * n + 1; }

  // The tensor owning index c of a prefix row (table_search.h), for 0 <= c < row[n]: the
  // last t with row[t] <= c (tensors owning nothing are skipped). On the GPU every lane of
  // the warp must call it with the same c.
  GF_HD int64_t find(int64_t row, int64_t c) const { return owner_of(meta, row, n, c); }
};

// The table of a group and its sizes, built on the host.
struct AgcTableHost {
  std::vector<int64_t> meta;  // kAgcTableRows * n + 2 values
  int64_t n_items = 0;        // work items of the norm launch
  int64_t n_big_units = 0;    // units of several slices (workspace counters and factors)
  int64_t n_big_items = 0;    // their slices (workspace partials; the scaling launch)
};

// numels[t] must be a multiple of unit_sizes[t], and unit_sizes[t] >= 1 when numels[t] > 0.
inline AgcTableHost agc_build_table(const std::vector<int64_t>& params,
                                    const std::vector<int64_t>& grads,
                                    const std::vector<int64_t>& numels,
                                    const std::vector<int64_t>& unit_sizes) {
  const int64_t n = (int64_t)numels.size();
  if ((int64_t)params.size() != n || (int64_t)grads.size() != n ||
      (int64_t)unit_sizes.size() != n)
    throw std::invalid_argument("agc table: params, grads, numels and unit_sizes differ in length");
  AgcTableHost h;
  h.meta.assign((size_t)(kAgcTableRows * n + 2), 0);
  int64_t* m = h.meta.data();
  for (int64_t t = 0; t < n; ++t) {
    const int64_t numel = numels[t], unit = unit_sizes[t];
    if (numel < 0 || (numel > 0 && (unit < 1 || numel % unit != 0)))
      throw std::invalid_argument("agc table: numel must be a positive multiple of the unit size");
    const int64_t units = numel > 0 ? numel / unit : 0;
    if (units > 0 && agc_big(unit) && agc_shape(unit).slices > (int64_t)0xffffffffLL)
      throw std::invalid_argument("agc table: unit too large");  // counters are 32-bit
    const int64_t items = units > 0 ? agc_items(units, unit) : 0;
    const bool big = units > 0 && agc_big(unit);
    m[t] = params[t];
    m[n + t] = grads[t];
    m[2 * n + t] = unit > 0 ? unit : 1;
    m[3 * n + t] = units;
    m[4 * n + t] = h.n_big_units;
    m[5 * n + t] = h.n_items;
    m[6 * n + 1 + t] = h.n_big_items;
    h.n_items += items;
    if (big) {
      h.n_big_units += units;
      h.n_big_items += items;
    }
  }
  m[5 * n + n] = h.n_items;
  m[6 * n + 1 + n] = h.n_big_items;
  return h;
}

}  // namespace gradfast::cuda
