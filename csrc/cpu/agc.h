// Adaptive gradient clipping (unit-wise, AGC) over many tensors on the CPU.
#pragma once
#include <cstdint>

#include "../gradfast/dtype.h"
#include "../gradfast/norm_math.h"

namespace gradfast::cpu {

// For every tensor t (n of them, all of dtype dt): params[t] and grads[t] hold numels[t]
// elements each, in units of unit_sizes[t] consecutive elements (numels[t] is a multiple
// of unit_sizes[t]; unit_sizes[t] > 0 when numels[t] > 0). Each unit of grads[t] is clipped
// as in agc_math.h, using norms of order (kind, p) of the unit in params[t] and grads[t].
// *clipped_out receives the number of units that were scaled. Work boundaries depend on the
// data only, so results are bitwise identical for any thread count.
void agc(void* const* params, void* const* grads, const int64_t* numels,
         const int64_t* unit_sizes, int64_t n, DType dt, NormKind kind, double p,
         double clip_factor, double eps, int64_t* clipped_out, int num_threads);

}  // namespace gradfast::cpu
