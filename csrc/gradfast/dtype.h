// Storage dtypes understood by the native core, and exact conversions between them.
//
// The core never sees a torch header: Python passes a dtype code with each raw pointer.
// fp16/bf16 conversions are written once as bit manipulation so that the CPU loops and
// the CUDA kernels round identically (round-to-nearest-even, as torch does).
#pragma once
#include <cstdint>
#include <cstring>

#include "macros.h"

namespace gradfast {

enum class DType : int { Float32 = 0, Float64 = 1, Float16 = 2, BFloat16 = 3 };

inline const char* dtype_name(DType d) {
  switch (d) {
    case DType::Float32: return "float32";
    case DType::Float64: return "float64";
    case DType::Float16: return "float16";
    case DType::BFloat16: return "bfloat16";
  }
  return "unknown";
}

inline int dtype_size(DType d) {
  return d == DType::Float64 ? 8 : (d == DType::Float32 ? 4 : 2);
}

// Distinct storage types so templates can dispatch on them.
struct Half { uint16_t bits; };
struct BFloat16 { uint16_t bits; };

GF_HD uint32_t f32_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u; std::memcpy(&u, &f, 4); return u;
#endif
}
GF_HD float bits_f32(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f; std::memcpy(&f, &u, 4); return f;
#endif
}

GF_HD float half_to_float(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t man = h & 0x3ffu;
  if (exp == 0x1f) return bits_f32(sign | 0x7f800000u | (man << 13));  // inf / nan
  if (exp != 0) return bits_f32(sign | ((exp + 112u) << 23) | (man << 13));
  if (man == 0) return bits_f32(sign);
  // Subnormal half: value = man * 2^-24, exact in fp32.
  const float mag = (float)man * 5.9604644775390625e-08f;
  return sign ? -mag : mag;
}

GF_HD uint16_t float_to_half(float f) {
  const uint32_t u = f32_bits(f);
  const uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7fffffffu;
  if (a >= 0x7f800000u) return sign | (a > 0x7f800000u ? 0x7e00u : 0x7c00u);
  if (a >= 0x477ff000u) return sign | 0x7c00u;  // rounds to >= 65520: overflow to inf
  if (a < 0x38800000u) {                        // below the smallest normal half
    // Adding 0.5 in fp32 lets the FPU do round-to-nearest-even at the 2^-24 ulp.
    const float mag = bits_f32(a) + 0.5f;
    return sign | (uint16_t)(f32_bits(mag) - 0x3f000000u);
  }
  const uint32_t odd = (a >> 13) & 1u;
  return sign | (uint16_t)((a + 0xc8000fffu + odd) >> 13);
}

GF_HD float bf16_to_float(uint16_t b) { return bits_f32((uint32_t)b << 16); }

GF_HD uint16_t float_to_bf16(float f) {
  const uint32_t u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);  // quiet nan
  return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// Load a storage value into its math type (fp32 for 16/32-bit floats, fp64 for fp64).
GF_HD float load_as_float(float v) { return v; }
GF_HD float load_as_float(Half v) { return half_to_float(v.bits); }
GF_HD float load_as_float(BFloat16 v) { return bf16_to_float(v.bits); }
GF_HD double load_as_float(double v) { return v; }

template <typename T> struct StoreAs;
template <> struct StoreAs<float> { GF_HD static float from(float x) { return x; } };
template <> struct StoreAs<double> { GF_HD static double from(double x) { return x; } };
template <> struct StoreAs<Half> { GF_HD static Half from(float x) { return Half{float_to_half(x)}; } };
template <> struct StoreAs<BFloat16> { GF_HD static BFloat16 from(float x) { return BFloat16{float_to_bf16(x)}; } };

// The type math is done in for a storage type: fp32, except fp64 for fp64 (as torch's opmath).
template <typename T> struct MathType { using type = float; };
template <> struct MathType<double> { using type = double; };
template <typename T> using math_t = typename MathType<T>::type;

// Round a math value to storage precision and back (torch materialises intermediate
// results in the tensor dtype; matching that keeps overflow and rounding identical).
template <typename T>
GF_HD math_t<T> round_to(math_t<T> x) { return load_as_float(StoreAs<T>::from(x)); }

}  // namespace gradfast

// Expands BODY with `scalar_t` bound to the storage type of dtype code D.
#define GF_DISPATCH_DTYPE(D, ...)                                              \
  switch (D) {                                                                 \
    case ::gradfast::DType::Float32: { using scalar_t = float; __VA_ARGS__; break; }           \
    case ::gradfast::DType::Float64: { using scalar_t = double; __VA_ARGS__; break; }          \
    case ::gradfast::DType::Float16: { using scalar_t = ::gradfast::Half; __VA_ARGS__; break; } \
    case ::gradfast::DType::BFloat16: { using scalar_t = ::gradfast::BFloat16; __VA_ARGS__; break; } \
  }
