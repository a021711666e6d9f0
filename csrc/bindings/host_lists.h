// Python lists of raw pointers (ints) as the pointer arrays the CPU kernels take.
#pragma once
#include <cstdint>
#include <vector>

namespace gradfast::bindings {

template <typename P>
std::vector<P*> as_ptrs(const std::vector<intptr_t>& v) {
  std::vector<P*> out;
  out.reserve(v.size());
  for (intptr_t x : v) out.push_back(reinterpret_cast<P*>(x));
  return out;
}

}  // namespace gradfast::bindings
