// Counter-based noise shared by the C++ kernels.
//
// This header implements, step for step, the specification in
// vsc_kernels/_philox.py (read that docstring first):
//
//   * Philox4x32-10 with the Random123 constants. Key (k0, k1) = the 64-bit
//     seed split into its low and high words; counter (c0, c1, c2, c3) =
//     (q_lo, q_hi, offset_lo, offset_hi), q = 64-bit index of a group of four.
//   * A rows x d tensor takes, for element (r, i), lane i % 4 of the call with
//     q = r * ceil(d / 4) + i / 4.
//   * 24-bit uniforms k = x >> 8; Laplace by the inverse CDF with the 1e-6
//     clamp; Gaussian by Box-Muller on the lane pairs (0, 1) and (2, 3).
//
// The raw 32-bit outputs are bit-identical to the Python specification; the
// float math follows the same order of operations, so the noise agrees up to
// the last bit of the log/sin/cos used (about one ulp). float64 uses libm;
// float32 uses the branch-free log/sincos in namespace math below (evaluated
// in float64, correctly rounded to float32 on all but one of the inputs the
// noise can produce), which lets the noise loops vectorize.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace vsc {
namespace philox {

constexpr int kRounds = 10;
constexpr int kLanes = 4;
constexpr uint32_t kM0 = 0xD2511F53u;  // multiplier applied to c0
constexpr uint32_t kM1 = 0xCD9E8D57u;  // multiplier applied to c2
constexpr uint32_t kW0 = 0x9E3779B9u;  // key bump (golden ratio)
constexpr uint32_t kW1 = 0xBB67AE85u;  // key bump (sqrt(3) - 1)
constexpr double kLaplaceLogClamp = 1e-6;
constexpr double kTwoPi = 2.0 * 3.14159265358979323846;  // == 2.0 * math.pi
constexpr double kInv2Pow24 = 1.0 / 16777216.0;          // 2**-24, exact
constexpr int32_t kTwoPow24i = 16777216;

// The 64-bit seed and the 64-bit stream offset, split into 32-bit words.
struct Stream {
  uint32_t k0, k1;  // key: low and high words of the seed
  uint32_t o0, o1;  // counter words 2 and 3: low and high words of the offset
};

inline Stream make_stream(int64_t seed, int64_t offset) {
  const uint64_t s = static_cast<uint64_t>(seed);
  const uint64_t o = static_cast<uint64_t>(offset);
  return Stream{static_cast<uint32_t>(s), static_cast<uint32_t>(s >> 32),
                static_cast<uint32_t>(o), static_cast<uint32_t>(o >> 32)};
}

// Number of Philox calls (groups of four columns) per row of width d.
inline int64_t groups_per_row(int64_t d) { return (d + kLanes - 1) / kLanes; }

// One Philox4x32-10 call: the four outputs of counter (q, offset) under key.
inline void philox4x32_10(uint64_t q, const Stream& st, uint32_t out[4]) {
  uint32_t c0 = static_cast<uint32_t>(q);
  uint32_t c1 = static_cast<uint32_t>(q >> 32);
  uint32_t c2 = st.o0;
  uint32_t c3 = st.o1;
  uint32_t k0 = st.k0;
  uint32_t k1 = st.k1;
#pragma GCC unroll 10
  for (int round = 0; round < kRounds; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(c0) * kM0;
    const uint64_t p1 = static_cast<uint64_t>(c2) * kM1;
    const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
    const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(p1);
    c3 = static_cast<uint32_t>(p0);
    c0 = n0;
    c2 = n2;
    k0 += kW0;
    k1 += kW1;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

// Raw outputs of `ngroups` consecutive calls starting at counter q0:
// out[4 g + lane] = lane of call q0 + g. Written as a plain loop over the
// groups so that the compiler can vectorize across calls.
inline void philox_block(uint64_t q0, int64_t ngroups, const Stream& st,
                         uint32_t* __restrict out) {
  for (int64_t g = 0; g < ngroups; ++g) {
    philox4x32_10(q0 + static_cast<uint64_t>(g), st, out + 4 * g);
  }
}

// ---------------------------------------------------------------------------
// Elementary functions used by the noise, per compute type.
//
// float64: the libm functions. float32: log, sin and cos evaluated in float64
// with plain arithmetic (no table, no branch, no libm call) so that loops over
// a block vectorize; the float64 value (relative error below 1e-13) rounded to
// float32 is the correctly rounded result except in rare near-midpoint cases,
// i.e. within one ulp of any faithful float32 libm (torch's included).
namespace math {

constexpr double kLn2 = 0.69314718055994530942;
constexpr double kTwoOverPi = 0.63661977236758134308;
constexpr double kPiOver2Hi = 1.5707963267341256e+00;  // first 33 bits of pi/2
constexpr double kPiOver2Lo = 6.0771005065061922e-11;  // pi/2 - kPiOver2Hi
constexpr double kRoundMagic = 6755399441055744.0;      // 1.5 * 2**52

// log(x) for a positive normal finite float x (the noise only takes such x).
// x = 2**e * m with m in [sqrt(1/2), sqrt(2)); log m = 2 atanh(f), f = (m-1)/(m+1),
// |f| <= 0.1716, summed to f**15 (truncation below 4e-14 relative).
inline double log_f32_as_f64(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  const uint32_t kSqrtHalfBits = 0x3F3504F3u;  // float bits of sqrt(1/2)
  const int32_t shifted = static_cast<int32_t>(bits - kSqrtHalfBits);
  const int32_t e = shifted >> 23;  // arithmetic shift: floor division
  const uint32_t m_bits = (static_cast<uint32_t>(shifted) & 0x007FFFFFu) + kSqrtHalfBits;
  float m_f;
  std::memcpy(&m_f, &m_bits, sizeof m_f);
  const double m = static_cast<double>(m_f);
  const double f = (m - 1.0) / (m + 1.0);
  const double s = f * f;
  const double p =
      1.0 + s * (1.0 / 3 + s * (1.0 / 5 + s * (1.0 / 7 + s * (1.0 / 9 + s * (1.0 / 11 +
      s * (1.0 / 13 + s * (1.0 / 15)))))));
  return static_cast<double>(e) * kLn2 + 2.0 * f * p;
}

// sin and cos of a float theta with |theta| < 2**20, evaluated in float64:
// theta = q pi/2 + r with |r| <= pi/4 (two-part pi/2, exact products for these q),
// Taylor series of sin r and cos r to r**17 and r**16 (truncation below 1e-17).
inline void sincos_f32_as_f64(float theta, double* sin_out, double* cos_out) {
  const double t = static_cast<double>(theta);
  const double qd = (t * kTwoOverPi + kRoundMagic) - kRoundMagic;  // round to nearest
  const double r = (t - qd * kPiOver2Hi) - qd * kPiOver2Lo;
  const double r2 = r * r;
  const double sr = r + r * r2 * (-1.0 / 6 + r2 * (1.0 / 120 + r2 * (-1.0 / 5040 +
      r2 * (1.0 / 362880 + r2 * (-1.0 / 39916800 + r2 * (1.0 / 6227020800.0 +
      r2 * (-1.0 / 1307674368000.0 + r2 * (1.0 / 355687428096000.0))))))));
  const double cr = 1.0 + r2 * (-1.0 / 2 + r2 * (1.0 / 24 + r2 * (-1.0 / 720 +
      r2 * (1.0 / 40320 + r2 * (-1.0 / 3628800 + r2 * (1.0 / 479001600 +
      r2 * (-1.0 / 87178291200.0 + r2 * (1.0 / 20922789888000.0))))))));
  const int32_t q = static_cast<int32_t>(qd) & 3;
  const double s_abs = (q & 1) ? cr : sr;  // sin: q=0 sr, 1 cr, 2 -sr, 3 -cr
  const double c_abs = (q & 1) ? sr : cr;  // cos: q=0 cr, 1 -sr, 2 -cr, 3 sr
  *sin_out = (q & 2) ? -s_abs : s_abs;
  *cos_out = ((q + 1) & 2) ? -c_abs : c_abs;
}

template <typename T>
struct Ops;

template <>
struct Ops<double> {
  static double log(double x) { return std::log(x); }
  static void sincos(double theta, double* s, double* c) {
    *s = std::sin(theta);
    *c = std::cos(theta);
  }
};

template <>
struct Ops<float> {
  static float log(float x) { return static_cast<float>(log_f32_as_f64(x)); }
  static void sincos(float theta, float* s, float* c) {
    double sd, cd;
    sincos_f32_as_f64(theta, &sd, &cd);
    *s = static_cast<float>(sd);
    *c = static_cast<float>(cd);
  }
};

}  // namespace math

// Standard Laplace noise from one raw output (inverse CDF, Appendix B):
// m = 2k - 2**24 + 1 (odd), eps = -sign(m) log(max((2**24 - |m|) 2**-24, 1e-6)).
template <typename T>
inline T laplace_from_bits(uint32_t x) {
  // 32-bit integers suffice (|m| < 2**24) and keep the int -> float conversion vectorizable.
  const int32_t k = static_cast<int32_t>(x >> 8);
  const int32_t m = 2 * k - kTwoPow24i + 1;
  const int32_t abs_m = m < 0 ? -m : m;
  const T v = static_cast<T>(kTwoPow24i - abs_m) * static_cast<T>(kInv2Pow24);
  const T clamp = static_cast<T>(kLaplaceLogClamp);
  const T l = math::Ops<T>::log(v < clamp ? clamp : v);
  return m > 0 ? -l : l;  // -sign(m) * log(...); m is never 0
}

// Standard normal pair from the raw outputs of lanes (a, b) = (0, 1) or (2, 3):
// u1 = (k_a + 1) 2**-24, u2 = k_b 2**-24, r = sqrt(-2 log u1), theta = 2 pi u2.
template <typename T>
inline void gaussian_pair_from_bits(uint32_t xa, uint32_t xb, T* even, T* odd) {
  const T u1 = static_cast<T>(static_cast<int32_t>(xa >> 8) + 1) * static_cast<T>(kInv2Pow24);
  const T u2 = static_cast<T>(static_cast<int32_t>(xb >> 8)) * static_cast<T>(kInv2Pow24);
  const T radius = std::sqrt(static_cast<T>(-2.0) * math::Ops<T>::log(u1));
  const T theta = static_cast<T>(kTwoPi) * u2;
  T sin_theta, cos_theta;
  math::Ops<T>::sincos(theta, &sin_theta, &cos_theta);
  *even = radius * cos_theta;
  *odd = radius * sin_theta;
}

// Noise for a block of n4 = 4 * ngroups raw outputs (from philox_block).
template <typename T>
inline void laplace_block(const uint32_t* __restrict x, int64_t n4, T* __restrict eps) {
  for (int64_t k = 0; k < n4; ++k) eps[k] = laplace_from_bits<T>(x[k]);
}

template <typename T>
inline void gaussian_block(const uint32_t* __restrict x, int64_t n4, T* __restrict eps) {
  for (int64_t k = 0; k < n4; k += 2) gaussian_pair_from_bits<T>(x[k], x[k + 1], &eps[k], &eps[k + 1]);
}

}  // namespace philox
}  // namespace vsc
