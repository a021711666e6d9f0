// cudasim's cooperative groups: the grid barrier of a cooperative launch (cuda_runtime.h).
#pragma once
#include "cuda_runtime.h"

namespace gfsim {
void grid_sync(const char* file, int line);  // aborts outside a cooperative launch
}  // namespace gfsim

namespace cooperative_groups {

class grid_group {
 public:
  // The caller's line is not known here; the grid barrier's own line stands for it (one
  // grid.sync per kernel in gradfast).
  void sync() const { gfsim::grid_sync(__FILE__, __LINE__); }
  unsigned long long size() const {
    return (unsigned long long)gridDim.x * gridDim.y * gridDim.z * blockDim.x * blockDim.y *
           blockDim.z;
  }
};

inline grid_group this_grid() { return grid_group(); }

}  // namespace cooperative_groups
