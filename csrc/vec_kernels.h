// The vectorized CPU kernels (see csrc/cpu_kernels.h for how they are built and chosen).
//
// Included by csrc/cpu_kernels_{avx512,avx2,default}.cpp only, after every ATen / c10 /
// standard header (compiled for the baseline instruction set) and after the
// instruction-set pragma and <ATen/cpu/vec/vec.h>. Everything here has internal linkage
// (anonymous namespace), so the three builds never share a symbol; the one exported
// name is the table getter at the end, named by VSC_KERNELS_GETTER.
//
// threshold_sample
//   Work is split into tasks (row m, chunk of <= 1024 columns: whole rows up to d = 1024,
//   so a task reads and writes its J sample rows as one contiguous run); a task loads mu
//   and the noise scale w * exp(logb) of its chunk once and loops over the J samples of
//   row m. Per sample row it draws the Philox outputs of the chunk (AVX-512: 16 calls per
//   vector, two vectors' rounds interleaved; AVX2: 8), turns them into noise, then runs
//   the threshold (or the gradient accumulation) as one vector loop; the backward
//   prefetches the next sample row of grad_z while it processes one. (Streaming stores
//   for a large z were tried: 30 ms slower per 335 MB z here, unlike elbo_select's
//   gradient, which is written without compute in between.)
//   Laplace noise (the default base) is computed on the Philox registers before they are
//   transposed into column order, with an inlined float32 log (laplace_from_raw: exponent
//   split + Cephes' minimax polynomial, at most 0.82 ulp from the exact log on every input
//   the noise can produce); the AVX-512 and AVX2 builds run the same operations and draw
//   bit-identical Laplace noise. Gaussian noise uses SLEEF's 1-ulp vectorized log and
//   sincos (the ones torch uses on the same machine). The portable build keeps the scalar,
//   correctly rounded log/sin/cos of csrc/philox.h. The raw 32-bit outputs are the
//   spec's (vsc_kernels/_philox.py) on every build, and the noise of the builds agrees to
//   one float32 ulp (Laplace: equal to torch.log's result on ~96% of the entries).
//
// Non-finite policy (vsc_kernels/__init__.py): the zero branch of the threshold is taken
// only where |delta| <= lam, and there z is (mu - mu) + (logb - logb): +0.0 for finite
// inputs, NaN where mu or logb is not finite. So NaN/inf in mu or logb never become a
// zero; a NaN delta takes the active branch and stays NaN. The forward reports any lam
// entry that is negative, NaN or inf (the caller raises ValueError).

namespace vsc {
namespace cpu {
namespace {

using at::vec::Vectorized;
using VecF = Vectorized<float>;

constexpr int64_t kMaxChunk = 1024;   // columns per task at most (a multiple of 4)
constexpr int64_t kMinChunk = 32;     // smallest chunk when columns are split for threads
constexpr int64_t kPad = 64;          // buffers hold whole 16-call Philox blocks
constexpr int64_t kBuf = kMaxChunk + kPad;
constexpr int64_t kMinWorkPerThread = 16384;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---------------------------------------------------------------------------------------
// Element types.

template <typename S>
struct DtypeOf;
template <>
struct DtypeOf<float> { static constexpr Dtype value = Dtype::kFloat; };
template <>
struct DtypeOf<double> { static constexpr Dtype value = Dtype::kDouble; };
template <>
struct DtypeOf<c10::Half> { static constexpr Dtype value = Dtype::kHalf; };
template <>
struct DtypeOf<c10::BFloat16> { static constexpr Dtype value = Dtype::kBFloat16; };

// out[k] = src[k * stride] converted to T (stride 0: one value repeated).
template <typename S, typename T>
inline void gather(const S* __restrict src, int64_t stride, int64_t n, T* __restrict out) {
  if (stride == 1) {
    for (int64_t k = 0; k < n; ++k) out[k] = static_cast<T>(src[k]);
  } else if (stride == 0) {
    const T v = static_cast<T>(src[0]);
    for (int64_t k = 0; k < n; ++k) out[k] = v;
  } else {
    for (int64_t k = 0; k < n; ++k) out[k] = static_cast<T>(src[k * stride]);
  }
}

template <typename T>
inline void gather_any(const void* base, Dtype dtype, int64_t offset, int64_t stride, int64_t n,
                       T* out) {
  switch (dtype) {
    case Dtype::kFloat:
      gather(static_cast<const float*>(base) + offset, stride, n, out);
      break;
    case Dtype::kDouble:
      gather(static_cast<const double*>(base) + offset, stride, n, out);
      break;
    case Dtype::kHalf:
      gather(static_cast<const c10::Half*>(base) + offset, stride, n, out);
      break;
    case Dtype::kBFloat16:
      gather(static_cast<const c10::BFloat16*>(base) + offset, stride, n, out);
      break;
  }
}

template <typename T, typename S>
inline void store_row(const T* __restrict src, int64_t n, S* __restrict out) {
  for (int64_t k = 0; k < n; ++k) out[k] = static_cast<S>(src[k]);
}

// Non-temporal (streaming) stores for outputs far larger than the caches (written once,
// not read back by the kernel): they skip the read-for-ownership and the cache fill of
// a regular store. Filling a fresh 251 MB buffer (first-touch page faults included):
// 120 ms against 140 ms for memset; elbo_select's backward about 6% faster (A/B, 4 of
// 5 pairs, one thread). Smaller outputs keep regular stores, so that a consumer finds
// them in cache.
constexpr int64_t kStreamMinBytes = int64_t{16} << 20;

// v to p (p aligned to the vector size) with a streaming store where the build has one.
template <typename T>
inline void store_stream(T* p, const Vectorized<T>& v) {
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<T, float>) {
    _mm512_stream_ps(p, v);
  } else {
    _mm512_stream_pd(p, v);
  }
#elif defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<T, float>) {
    _mm256_stream_ps(p, v);
  } else {
    _mm256_stream_pd(p, v);
  }
#else
  v.store(p);
#endif
}

template <typename T>
inline bool vector_aligned(const T* p) {
  return reinterpret_cast<uintptr_t>(p) % sizeof(Vectorized<T>) == 0;
}

// Orders this thread's streaming stores before whatever follows (they are weakly ordered).
inline void stream_fence() {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  _mm_sfence();
#endif
}

// ---------------------------------------------------------------------------------------
// Philox4x32-10 on blocks of consecutive counters (vsc_kernels/_philox.py):
// out[4 g + lane] = lane of the call at counter q0 + g, for g < round_up(ngroups, V),
// V = 16 (AVX-512), 8 (AVX2) or 1 (portable; the scalar csrc/philox.h).
//
// philox_simd_map applies `map` to the four lane-major registers (c0..c3 of V calls)
// before they are transposed into column order, so an element-wise transform of the
// raw outputs (the Laplace noise) runs on registers and is stored once.
//
// laplace_from_raw: the standard Laplace noise of philox::laplace_from_bits, with
// log(v) for the exact v = (2**24 - |m|) 2**-24 in [2**-24, 1) (clamped to 1e-6)
// inlined: v = 2**e m' with m' in [sqrt(1/2), sqrt(2)), x = m' - 1 (exact), and
// log(1 + x) = x - x**2/2 + x**3 P(x) with the 9-term minimax P of Cephes' logf, e ln 2
// added in two parts. Checked on all 2**24 inputs the noise can take: at most 0.82 ulp
// from the exact log (SLEEF's u10 logf, torch.log here: 0.91 ulp), equal to SLEEF's
// result on 96% of them and one ulp apart on the rest. sign(m) is bit 31 of the raw
// output (m > 0 iff k >= 2**23), so eps = log(v) with that bit flipped (log(v) < 0).

// Float bit patterns of the Laplace conversion: sqrt(1/2), 24 << 23 (a factor 2**-24),
// 1e-6f (the clamp), and the differences laplace_from_raw uses.
constexpr int32_t kSqrtHalfBits = 0x3F3504F3;
constexpr int32_t kScaleAndSqrtHalfBits = (24 << 23) + kSqrtHalfBits;
constexpr int32_t kClampMinusSqrtHalfBits = 0x358637BD - kSqrtHalfBits;

// The ten round keys of st, each broadcast to every lane of a register (set1).
template <typename Reg, typename Set1>
inline void round_keys(const philox::Stream& st, Reg* key0, Reg* key1, const Set1& set1) {
  uint32_t k0 = st.k0, k1 = st.k1;
  for (int r = 0; r < philox::kRounds; ++r) {
    key0[r] = set1(static_cast<int>(k0));
    key1[r] = set1(static_cast<int>(k1));
    k0 += philox::kW0;
    k1 += philox::kW1;
  }
}

#if defined(CPU_CAPABILITY_AVX512)
constexpr int64_t kPhiloxLanes = 16;

// 32 x 32 -> 64-bit products of the even and the odd lanes; each masked dword swap
// moves one half of a product into place (hi: the even lanes take the upper dword of
// `even`; lo: the odd lanes take the lower dword of `odd`).
inline void mulhilo(__m512i a, __m512i m, __m512i& hi, __m512i& lo) {
  const __m512i even = _mm512_mul_epu32(a, m);
  const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), m);
  hi = _mm512_mask_shuffle_epi32(odd, 0x5555, even, _MM_PERM_CDAB);
  lo = _mm512_mask_shuffle_epi32(even, 0xAAAA, odd, _MM_PERM_CDAB);
}

inline __m512i xor3(__m512i a, __m512i b, __m512i c) {
  return _mm512_ternarylogic_epi32(a, b, c, 0x96);
}

// NB blocks of 16 calls from counter q (their rounds interleaved: the rounds of one
// block are a serial chain of multiplies), mapped and stored at out, out + 64, ...
template <int NB, typename Map>
inline void philox_blocks(uint64_t q, const philox::Stream& st, const __m512i* key0,
                          const __m512i* key1, uint32_t* __restrict out, const Map& map) {
  const __m512i m0 = _mm512_set1_epi32(static_cast<int>(philox::kM0));
  const __m512i m1 = _mm512_set1_epi32(static_cast<int>(philox::kM1));
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  __m512i c0[NB], c1[NB], c2[NB], c3[NB];
#pragma GCC unroll 2
  for (int b = 0; b < NB; ++b) {
    const uint64_t qb = q + static_cast<uint64_t>(16 * b);
    c0[b] = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(qb))), iota);
    c1[b] = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(qb >> 32)));
    // a lane whose low word wrapped carries into the high word
    const __mmask16 carry = _mm512_cmplt_epu32_mask(c0[b], iota);
    c1[b] = _mm512_mask_add_epi32(c1[b], carry, c1[b], _mm512_set1_epi32(1));
    c2[b] = _mm512_set1_epi32(static_cast<int>(st.o0));
    c3[b] = _mm512_set1_epi32(static_cast<int>(st.o1));
  }
#pragma GCC unroll 10
  for (int r = 0; r < philox::kRounds; ++r) {
#pragma GCC unroll 2
    for (int b = 0; b < NB; ++b) {
      __m512i hi0, lo0, hi1, lo1;
      mulhilo(c0[b], m0, hi0, lo0);
      mulhilo(c2[b], m1, hi1, lo1);
      c0[b] = xor3(hi1, c1[b], key0[r]);
      c2[b] = xor3(hi0, c3[b], key1[r]);
      c1[b] = lo1;
      c3[b] = lo0;
    }
  }
#pragma GCC unroll 2
  for (int b = 0; b < NB; ++b) {
    map(c0[b], c1[b], c2[b], c3[b]);
    // lane-major (c0..c3 of 16 calls) -> column order (4 outputs of call 0, call 1, ...)
    const __m512i t0 = _mm512_unpacklo_epi32(c0[b], c1[b]);
    const __m512i t1 = _mm512_unpackhi_epi32(c0[b], c1[b]);
    const __m512i t2 = _mm512_unpacklo_epi32(c2[b], c3[b]);
    const __m512i t3 = _mm512_unpackhi_epi32(c2[b], c3[b]);
    const __m512i u0 = _mm512_unpacklo_epi64(t0, t2);  // 128-bit lane L: call 4L
    const __m512i u1 = _mm512_unpackhi_epi64(t0, t2);  // call 4L + 1
    const __m512i u2 = _mm512_unpacklo_epi64(t1, t3);  // call 4L + 2
    const __m512i u3 = _mm512_unpackhi_epi64(t1, t3);  // call 4L + 3
    const __m512i a = _mm512_shuffle_i32x4(u0, u1, _MM_SHUFFLE(1, 0, 1, 0));
    const __m512i bb = _mm512_shuffle_i32x4(u2, u3, _MM_SHUFFLE(1, 0, 1, 0));
    const __m512i c = _mm512_shuffle_i32x4(u0, u1, _MM_SHUFFLE(3, 2, 3, 2));
    const __m512i d = _mm512_shuffle_i32x4(u2, u3, _MM_SHUFFLE(3, 2, 3, 2));
    uint32_t* o = out + 64 * b;
    _mm512_storeu_si512(o, _mm512_shuffle_i32x4(a, bb, _MM_SHUFFLE(2, 0, 2, 0)));
    _mm512_storeu_si512(o + 16, _mm512_shuffle_i32x4(a, bb, _MM_SHUFFLE(3, 1, 3, 1)));
    _mm512_storeu_si512(o + 32, _mm512_shuffle_i32x4(c, d, _MM_SHUFFLE(2, 0, 2, 0)));
    _mm512_storeu_si512(o + 48, _mm512_shuffle_i32x4(c, d, _MM_SHUFFLE(3, 1, 3, 1)));
  }
}

template <typename Map>
inline void philox_simd_map(uint64_t q0, int64_t ngroups, const philox::Stream& st,
                            uint32_t* __restrict out, const Map& map) {
  __m512i key0[philox::kRounds], key1[philox::kRounds];
  round_keys(st, key0, key1, [](int k) { return _mm512_set1_epi32(k); });
  int64_t g = 0;
  for (; g + kPhiloxLanes < ngroups; g += 2 * kPhiloxLanes) {
    philox_blocks<2>(q0 + static_cast<uint64_t>(g), st, key0, key1, out + 4 * g, map);
  }
  if (g < ngroups) {
    philox_blocks<1>(q0 + static_cast<uint64_t>(g), st, key0, key1, out + 4 * g, map);
  }
}

#elif defined(CPU_CAPABILITY_AVX2)
constexpr int64_t kPhiloxLanes = 8;

inline void mulhilo(__m256i a, __m256i m, __m256i& hi, __m256i& lo) {
  const __m256i even = _mm256_mul_epu32(a, m);
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
  lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
}

template <typename Map>
inline void philox_simd_map(uint64_t q0, int64_t ngroups, const philox::Stream& st,
                            uint32_t* __restrict out, const Map& map) {
  const __m256i m0 = _mm256_set1_epi32(static_cast<int>(philox::kM0));
  const __m256i m1 = _mm256_set1_epi32(static_cast<int>(philox::kM1));
  const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  // unsigned a < b as signed compare after flipping the sign bits
  const __m256i flip = _mm256_set1_epi32(static_cast<int>(0x80000000u));
  __m256i key0[philox::kRounds], key1[philox::kRounds];
  round_keys(st, key0, key1, [](int k) { return _mm256_set1_epi32(k); });
  for (int64_t g = 0; g < ngroups; g += kPhiloxLanes) {
    const uint64_t q = q0 + static_cast<uint64_t>(g);
    __m256i c0 = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(q))),
                                  iota);
    __m256i c1 = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(q >> 32)));
    const __m256i carry = _mm256_cmpgt_epi32(_mm256_xor_si256(iota, flip),
                                             _mm256_xor_si256(c0, flip));  // c0 < iota
    c1 = _mm256_sub_epi32(c1, carry);  // carry lanes are -1
    __m256i c2 = _mm256_set1_epi32(static_cast<int>(st.o0));
    __m256i c3 = _mm256_set1_epi32(static_cast<int>(st.o1));
    for (int r = 0; r < philox::kRounds; ++r) {
      __m256i hi0, lo0, hi1, lo1;
      mulhilo(c0, m0, hi0, lo0);
      mulhilo(c2, m1, hi1, lo1);
      c0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), key0[r]);
      c2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), key1[r]);
      c1 = lo1;
      c3 = lo0;
    }
    map(c0, c1, c2, c3);
    const __m256i t0 = _mm256_unpacklo_epi32(c0, c1);
    const __m256i t1 = _mm256_unpackhi_epi32(c0, c1);
    const __m256i t2 = _mm256_unpacklo_epi32(c2, c3);
    const __m256i t3 = _mm256_unpackhi_epi32(c2, c3);
    const __m256i u0 = _mm256_unpacklo_epi64(t0, t2);  // 128-bit lane L: call 4L
    const __m256i u1 = _mm256_unpackhi_epi64(t0, t2);
    const __m256i u2 = _mm256_unpacklo_epi64(t1, t3);
    const __m256i u3 = _mm256_unpackhi_epi64(t1, t3);
    uint32_t* o = out + 4 * g;
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(o), _mm256_permute2x128_si256(u0, u1, 0x20));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 8),
                        _mm256_permute2x128_si256(u2, u3, 0x20));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 16),
                        _mm256_permute2x128_si256(u0, u1, 0x31));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 24),
                        _mm256_permute2x128_si256(u2, u3, 0x31));
  }
}

#else
constexpr int64_t kPhiloxLanes = 1;
#endif

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#define VSC_SIMD_NOISE 1

// laplace_from_raw, written once for both instruction sets: VSC_MM(op) names the
// intrinsic _mm512_op / _mm256_op, VSC_SI(op) the integer-register one (_mm512_op_si512
// / _mm256_op_si256). The same operations in the same order on 16 or 8 lanes, so the
// AVX-512 and AVX2 builds draw bit-identical noise.
#if defined(CPU_CAPABILITY_AVX512)
using SimdI = __m512i;
using SimdF = __m512;
#define VSC_MM(op) _mm512_##op
#define VSC_SI(op) _mm512_##op##_si512
#define VSC_CAST_TO_INT _mm512_castps_si512
#define VSC_CAST_TO_FLOAT _mm512_castsi512_ps
#else
using SimdI = __m256i;
using SimdF = __m256;
#define VSC_MM(op) _mm256_##op
#define VSC_SI(op) _mm256_##op##_si256
#define VSC_CAST_TO_INT _mm256_castps_si256
#define VSC_CAST_TO_FLOAT _mm256_castsi256_ps
#endif

inline SimdI laplace_from_raw(SimdI raw) {
  const SimdI two24 = VSC_MM(set1_epi32)(philox::kTwoPow24i);
  const SimdI m = VSC_MM(sub_epi32)(VSC_MM(slli_epi32)(VSC_MM(srli_epi32)(raw, 8), 1),
                                    VSC_MM(set1_epi32)(philox::kTwoPow24i - 1));
  const SimdI n = VSC_MM(sub_epi32)(two24, VSC_MM(abs_epi32)(m));
  // bits(v) - bits(sqrt(1/2)) with v = max(n 2**-24, 1e-6): positive floats order as their
  // bits, and n 2**-24 (n >= 1: normal) is float(n) with the exponent lowered by 24.
  const SimdI shifted = VSC_MM(max_epi32)(
      VSC_MM(sub_epi32)(VSC_CAST_TO_INT(VSC_MM(cvtepi32_ps)(n)),
                        VSC_MM(set1_epi32)(kScaleAndSqrtHalfBits)),
      VSC_MM(set1_epi32)(kClampMinusSqrtHalfBits));
  const SimdI sqrt_half = VSC_MM(set1_epi32)(kSqrtHalfBits);
  const SimdF e = VSC_MM(cvtepi32_ps)(VSC_MM(srai_epi32)(shifted, 23));
  const SimdF x = VSC_MM(sub_ps)(
      VSC_CAST_TO_FLOAT(VSC_MM(add_epi32)(
          VSC_SI(and)(shifted, VSC_MM(set1_epi32)(0x007FFFFF)), sqrt_half)),
      VSC_MM(set1_ps)(1.0f));
  const SimdF x2 = VSC_MM(mul_ps)(x, x);
  SimdF p = VSC_MM(set1_ps)(7.0376836292e-2f);
#pragma GCC unroll 8
  for (const float c : {-1.1514610310e-1f, 1.1676998740e-1f, -1.2420140846e-1f,
                        1.4249322787e-1f, -1.6668057665e-1f, 2.0000714765e-1f,
                        -2.4999993993e-1f, 3.3333331174e-1f}) {
    p = VSC_MM(fmadd_ps)(p, x, VSC_MM(set1_ps)(c));
  }
  SimdF y = VSC_MM(mul_ps)(VSC_MM(mul_ps)(x, x2), p);
  y = VSC_MM(fmadd_ps)(e, VSC_MM(set1_ps)(-2.12194440e-4f), y);
  y = VSC_MM(fnmadd_ps)(VSC_MM(set1_ps)(0.5f), x2, y);
  const SimdF l = VSC_MM(fmadd_ps)(e, VSC_MM(set1_ps)(0.693359375f), VSC_MM(add_ps)(x, y));
  return VSC_SI(xor)(VSC_CAST_TO_INT(l),
                     VSC_SI(and)(raw, VSC_MM(set1_epi32)(static_cast<int>(0x80000000u))));
}

#undef VSC_MM
#undef VSC_SI
#undef VSC_CAST_TO_INT
#undef VSC_CAST_TO_FLOAT

inline void philox_simd(uint64_t q0, int64_t ngroups, const philox::Stream& st,
                        uint32_t* __restrict out) {
  philox_simd_map(q0, ngroups, st, out, [](auto&, auto&, auto&, auto&) {});
}

// Laplace noise of `ngroups` calls from counter q0 straight into eps (column order).
inline void philox_laplace(uint64_t q0, int64_t ngroups, const philox::Stream& st,
                           float* __restrict eps) {
  philox_simd_map(q0, ngroups, st, reinterpret_cast<uint32_t*>(eps),
                  [](auto& c0, auto& c1, auto& c2, auto& c3) {
                    c0 = laplace_from_raw(c0);
                    c1 = laplace_from_raw(c1);
                    c2 = laplace_from_raw(c2);
                    c3 = laplace_from_raw(c3);
                  });
}
#else
inline void philox_simd(uint64_t q0, int64_t ngroups, const philox::Stream& st, uint32_t* out) {
  philox::philox_block(q0, ngroups, st, out);
}
#endif

#if defined(CPU_CAPABILITY_AVX512)
inline void sincos_block(const float* theta, int64_t n, float* s, float* c) {
  for (int64_t k = 0; k < n; k += 16) {
    const Sleef___m512_2 r = Sleef_sincosf16_u10(_mm512_loadu_ps(theta + k));
    _mm512_storeu_ps(s + k, r.x);
    _mm512_storeu_ps(c + k, r.y);
  }
}
#elif defined(CPU_CAPABILITY_AVX2)
inline void sincos_block(const float* theta, int64_t n, float* s, float* c) {
  for (int64_t k = 0; k < n; k += 8) {
    const Sleef___m256_2 r = Sleef_sincosf8_u10(_mm256_loadu_ps(theta + k));
    _mm256_storeu_ps(s + k, r.x);
    _mm256_storeu_ps(c + k, r.y);
  }
}
#endif

// Standard noise of `ngroups` Philox calls from counter q0 into eps[0, 4 ngroups)
// (float32; entries up to the next whole Philox block are scratch).
struct NoiseScratch {
  alignas(64) uint32_t bits[kBuf];
  alignas(64) float a[kBuf];
  alignas(64) float b[kBuf];
  alignas(64) float c[kBuf];
  alignas(64) float e[kBuf];
};

inline void draw_noise(int base, uint64_t q0, int64_t ngroups, const philox::Stream& st,
                       NoiseScratch& w, float* __restrict eps) {
#if defined(VSC_SIMD_NOISE)
  if (base == 0) {
    philox_laplace(q0, ngroups, st, eps);
    return;
  }
  philox_simd(q0, ngroups, st, w.bits);
  const int64_t n4 = ceil_div(ngroups, kPhiloxLanes) * kPhiloxLanes * philox::kLanes;
  const uint32_t* bits = w.bits;
  // Gaussian: Box-Muller on the lane pairs; u1 = (k_a + 1) 2**-24, u2 = k_b 2**-24.
  const int64_t pairs = n4 / 2;
  float* u1 = w.a;
  float* u2 = w.b;
  for (int64_t i = 0; i < pairs; ++i) {
    u1[i] = static_cast<float>(static_cast<int32_t>(bits[2 * i] >> 8) + 1) *
            static_cast<float>(philox::kInv2Pow24);
    u2[i] = static_cast<float>(static_cast<int32_t>(bits[2 * i + 1] >> 8)) *
            static_cast<float>(philox::kInv2Pow24);
  }
  const VecF minus_two(-2.0f), two_pi(static_cast<float>(philox::kTwoPi));
  float* radius = w.c;
  for (int64_t i = 0; i < pairs; i += VecF::size()) {
    (minus_two * VecF::loadu(u1 + i).log()).sqrt().store(radius + i);
    (two_pi * VecF::loadu(u2 + i)).store(u2 + i);  // theta, in place
  }
  float* sin_t = w.a;  // u1 is no longer needed
  float* cos_t = w.e;
  sincos_block(u2, pairs, sin_t, cos_t);
  for (int64_t i = 0; i < pairs; ++i) {
    eps[2 * i] = radius[i] * cos_t[i];
    eps[2 * i + 1] = radius[i] * sin_t[i];
  }
#else
  philox_simd(q0, ngroups, st, w.bits);
  if (base == 0) {
    philox::laplace_block<float>(w.bits, ngroups * philox::kLanes, eps);
  } else {
    philox::gaussian_block<float>(w.bits, ngroups * philox::kLanes, eps);
  }
#endif
}

inline void draw_noise(int base, uint64_t q0, int64_t ngroups, const philox::Stream& st,
                       NoiseScratch& w, double* __restrict eps) {
  philox_simd(q0, ngroups, st, w.bits);
  if (base == 0) {
    philox::laplace_block<double>(w.bits, ngroups * philox::kLanes, eps);
  } else {
    philox::gaussian_block<double>(w.bits, ngroups * philox::kLanes, eps);
  }
}

// ---------------------------------------------------------------------------------------
// threshold_sample

struct Plan {
  int64_t chunk = kMaxChunk, nchunks = 0, ntasks = 0, grain = 1;
};

Plan make_plan(int64_t M, int64_t J, int64_t d) {
  Plan plan;
  if (M <= 0 || d <= 0 || J <= 0) return plan;
  const int64_t nthreads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t want_per_row = ceil_div(4 * nthreads, M);  // few rows: cut columns finer
  int64_t chunk = kMaxChunk;
  if (want_per_row > 1) {
    chunk = ceil_div(ceil_div(d, want_per_row), 4) * 4;
    chunk = std::min(kMaxChunk, std::max(kMinChunk, chunk));
  }
  plan.chunk = chunk;
  plan.nchunks = ceil_div(d, chunk);
  plan.ntasks = M * plan.nchunks;
  const int64_t work_per_task = std::max<int64_t>(1, J * std::min(chunk, d));
  plan.grain = std::max<int64_t>(1, kMinWorkPerThread / work_per_task);
  return plan;
}

inline philox::Stream stream_of(const ThresholdArgs& a) {
  return philox::Stream{a.k0, a.k1, a.o0, a.o1};
}

// Per-task column terms: mu, the noise multiplier w * scale, and the value of the zero
// branch, (mu - mu) + (logb - logb) (0, or NaN where mu or logb is not finite).
template <typename S, typename T>
inline void load_columns(const ThresholdArgs& a, int64_t m, int64_t i0, int64_t n, T* mu_w,
                         T* ws, T* zero) {
  const S* mu_row = static_cast<const S*>(a.mu) + m * a.mu_s0 + i0 * a.mu_s1;
  const S* lb_row = static_cast<const S*>(a.logb) + m * a.lb_s0 + i0 * a.lb_s1;
  alignas(64) T lb[kBuf];
  gather(mu_row, a.mu_s1, n, mu_w);
  gather(lb_row, a.lb_s1, n, lb);
  const T warmup = static_cast<T>(a.warmup);
  const T half = static_cast<T>(0.5);
  using V = Vectorized<T>;
  for (int64_t k = 0; k < n; k += V::size()) {
    const int64_t c = std::min<int64_t>(V::size(), n - k);
    const V l = V::loadu(lb + k, c);
    const V mu = V::loadu(mu_w + k, c);
    const V scale = a.base == 0 ? l.exp() : (V(half) * l).exp();
    (V(warmup) * scale).store(ws + k, c);
    ((mu - mu) + (l - l)).store(zero + k, c);
  }
}

// Reads row (m, j) of the lam view into buf; returns false if an entry is negative,
// NaN or inf.
template <typename T>
inline bool load_lam(const ThresholdArgs& a, int64_t m, int64_t j, int64_t i0, int64_t n,
                     T* __restrict buf) {
  const T* src = static_cast<const T*>(a.lam) + m * a.lam_sm + j * a.lam_sj + i0 * a.lam_sd;
  gather(src, a.lam_sd, n, buf);
  bool ok = true;
  for (int64_t k = 0; k < n; ++k) {
    ok &= (buf[k] >= T(0)) & (buf[k] < std::numeric_limits<T>::infinity());
  }
  return ok;
}

template <typename S, typename T>
bool threshold_forward_impl(const ThresholdArgs& a) {
  using V = Vectorized<T>;
  const int64_t M = a.M, J = a.J, d = a.d;
  const Plan plan = make_plan(M, J, d);
  if (plan.ntasks == 0) return true;
  const philox::Stream st = stream_of(a);
  const uint64_t groups = static_cast<uint64_t>(philox::groups_per_row(d));
  S* z_p = static_cast<S*>(a.z);
  const int64_t block = J * d;  // the elements of z of one row m
  const bool prefault = M * block * static_cast<int64_t>(sizeof(S)) >= kPrefaultMinBytes;
  std::atomic<bool> lam_ok{true};
  at::parallel_for(0, plan.ntasks, plan.grain, [&](int64_t t_begin, int64_t t_end) {
    // This range's tasks write the rows m of z from t_begin's to t_end - 1's, in order.
    WritePrefault pages(z_p + t_begin / plan.nchunks * block,
                        z_p + ((t_end - 1) / plan.nchunks + 1) * block, prefault);
    NoiseScratch scratch;
    alignas(64) T eps[kBuf];
    alignas(64) T mu_w[kBuf];
    alignas(64) T ws[kBuf];
    alignas(64) T zero[kBuf];
    alignas(64) T lam_buf[kBuf];
    alignas(64) T out[kBuf];
    bool ok = true;
    if (!a.lam_is_tensor) std::fill(lam_buf, lam_buf + kBuf, static_cast<T>(a.lam_value));
    for (int64_t t = t_begin; t < t_end; ++t) {
      const int64_t m = t / plan.nchunks;
      const int64_t i0 = (t % plan.nchunks) * plan.chunk;
      const int64_t n = std::min(plan.chunk, d - i0);
      const int64_t ngroups = ceil_div(n, philox::kLanes);
      pages.before(z_p + (m + 1) * block);
      load_columns<S, T>(a, m, i0, n, mu_w, ws, zero);
      const bool lam_per_sample = a.lam_is_tensor && a.lam_sj != 0;
      if (a.lam_is_tensor && !lam_per_sample) ok &= load_lam<T>(a, m, 0, i0, n, lam_buf);
      for (int64_t j = 0; j < J; ++j) {
        const int64_t r = m * J + j;
        draw_noise(a.base, static_cast<uint64_t>(r) * groups + static_cast<uint64_t>(i0 / 4),
                   ngroups, st, scratch, eps);
        if (lam_per_sample) ok &= load_lam<T>(a, m, j, i0, n, lam_buf);
        S* z_row = z_p + r * d + i0;
        T* dst = std::is_same_v<S, T> ? reinterpret_cast<T*>(z_row) : out;
        const V sign_bit(static_cast<T>(-0.0));
        for (int64_t k = 0; k < n; k += V::size()) {
          const int64_t c = std::min<int64_t>(V::size(), n - k);
          const V delta = V::loadu(ws + k, c) * V::loadu(eps + k, c);
          const V s = V::loadu(mu_w + k, c) + delta;
          const V lam = V::loadu(lam_buf + k, c);
          // s - sign(delta) lam (delta != 0 on the active branch; lam >= 0)
          const V shifted = s - (lam | (delta & sign_bit));
          const V z = V::blendv(shifted, V::loadu(zero + k, c), delta.abs() <= lam);
          z.store(dst + k, c);
        }
        if (!std::is_same_v<S, T>) store_row(out, n, z_row);
      }
    }
    if (!ok) lam_ok.store(false, std::memory_order_relaxed);
  });
  return lam_ok.load();
}

// Per-element KL (reference.kl_divergence) summed over d.
template <typename S, typename T>
void threshold_kl_impl(const ThresholdArgs& a, void* kl_out) {
  using V = Vectorized<T>;
  const int64_t M = a.M, d = a.d;
  T* kl = static_cast<T*>(kl_out);
  if (M == 0) return;
  const T b0 = static_cast<T>(a.prior_scale);
  const T two_b0 = static_cast<T>(2.0 * a.prior_scale);
  const T log_b0 = std::log(b0);
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(d, 1));
  at::parallel_for(0, M, grain, [&](int64_t m_begin, int64_t m_end) {
    alignas(64) T mu_b[kBuf];
    alignas(64) T lb_b[kBuf];
    alignas(64) T part[V::size()];
    for (int64_t m = m_begin; m < m_end; ++m) {
      double acc = 0.0;
      for (int64_t i0 = 0; i0 < d; i0 += kMaxChunk) {
        const int64_t n = std::min(kMaxChunk, d - i0);
        gather(static_cast<const S*>(a.mu) + m * a.mu_s0 + i0 * a.mu_s1, a.mu_s1, n, mu_b);
        gather(static_cast<const S*>(a.logb) + m * a.lb_s0 + i0 * a.lb_s1, a.lb_s1, n, lb_b);
        V sum(T(0));
        for (int64_t k = 0; k < n; k += V::size()) {
          const int64_t c = std::min<int64_t>(V::size(), n - k);
          const V mu = V::loadu(mu_b + k, c);
          const V lb = V::loadu(lb_b + k, c);
          V e;
          if (a.base == 0) {
            const V ab = mu.abs();
            const V b = lb.exp();
            e = ((ab / V(b0) + (b * (V(T(0)) - ab / b).exp()) / V(b0)) + (V(log_b0) - lb)) - V(T(1));
          } else {
            e = ((mu * mu + lb.exp()) / V(two_b0) + V(T(0.5)) * (V(log_b0) - lb)) - V(T(0.5));
          }
          if (c < V::size()) e = V::set(V(T(0)), e, c);
          sum = sum + e;
        }
        sum.store(part);
        for (int64_t l = 0; l < V::size(); ++l) acc += static_cast<double>(part[l]);
      }
      kl[m] = static_cast<T>(acc);
    }
  });
}

template <typename S, typename T, int kEstimator, bool kGradLam>
void threshold_backward_impl(const ThresholdArgs& a) {
  using V = Vectorized<T>;
  const int64_t M = a.M, J = a.J, d = a.d;
  const Plan plan = make_plan(M, std::max<int64_t>(J, 1), d);
  if (plan.ntasks == 0) return;
  const philox::Stream st = stream_of(a);
  const uint64_t groups = static_cast<uint64_t>(philox::groups_per_row(d));
  S* gmu_p = static_cast<S*>(a.grad_mu);
  S* glb_p = static_cast<S*>(a.grad_logb);
  T* glam_p = static_cast<T*>(a.grad_lam);
  const T* gkl_p = static_cast<const T*>(a.grad_kl);
  const bool g_direct = a.gz_dtype == DtypeOf<T>::value && a.gz_s2 == 1;
  const T b0 = static_cast<T>(a.prior_scale);
  const T two_b0 = static_cast<T>(2.0 * a.prior_scale);
  const int64_t block = J * d;  // the elements of grad_lam of one row m
  const bool prefault =
      kGradLam && M * block * static_cast<int64_t>(sizeof(T)) >= kPrefaultMinBytes;
  at::parallel_for(0, plan.ntasks, plan.grain, [&](int64_t t_begin, int64_t t_end) {
    WritePrefault pages(prefault ? glam_p + t_begin / plan.nchunks * block : nullptr,
                        prefault ? glam_p + ((t_end - 1) / plan.nchunks + 1) * block : nullptr,
                        prefault);
    NoiseScratch scratch;
    alignas(64) T eps[kBuf];
    alignas(64) T mu_w[kBuf];
    alignas(64) T ws[kBuf];
    alignas(64) T zero[kBuf];
    alignas(64) T lam_buf[kBuf];
    alignas(64) T g_buf[kBuf];
    alignas(64) T acc_mu[kBuf];
    alignas(64) T acc_lb[kBuf];
    alignas(64) T lb_b[kBuf];
    if (!a.lam_is_tensor) std::fill(lam_buf, lam_buf + kBuf, static_cast<T>(a.lam_value));
    const V one(T(1)), zero_v(T(0)), sign_bit(static_cast<T>(-0.0));
    const V ds_scale(a.base == 0 ? T(1) : T(0.5));
    for (int64_t t = t_begin; t < t_end; ++t) {
      const int64_t m = t / plan.nchunks;
      const int64_t i0 = (t % plan.nchunks) * plan.chunk;
      const int64_t n = std::min(plan.chunk, d - i0);
      const int64_t ngroups = ceil_div(n, philox::kLanes);
      if (kGradLam) pages.before(glam_p + (m + 1) * block);
      load_columns<S, T>(a, m, i0, n, mu_w, ws, zero);
      std::fill(acc_mu, acc_mu + n, T(0));
      std::fill(acc_lb, acc_lb + n, T(0));
      const bool lam_per_sample = a.lam_is_tensor && a.lam_sj != 0;
      if (a.lam_is_tensor && !lam_per_sample) load_lam<T>(a, m, 0, i0, n, lam_buf);
      for (int64_t j = 0; j < J; ++j) {
        const int64_t r = m * J + j;
        draw_noise(a.base, static_cast<uint64_t>(r) * groups + static_cast<uint64_t>(i0 / 4),
                   ngroups, st, scratch, eps);
        if (lam_per_sample) load_lam<T>(a, m, j, i0, n, lam_buf);
        const int64_t g_off = m * a.gz_s0 + j * a.gz_s1 + i0 * a.gz_s2;
        const T* g_row;
        if (g_direct) {
          g_row = static_cast<const T*>(a.grad_z) + g_off;
        } else {
          gather_any(a.grad_z, a.gz_dtype, g_off, a.gz_s2, n, g_buf);
          g_row = g_buf;
        }
        T* glam_row = kGradLam ? glam_p + r * d + i0 : nullptr;
        // grad_z of the next sample row (this task's, else the next task's first), fetched
        // while this one is processed: the rows of a task lie d apart.
        const char* g_next = nullptr;
        if (g_direct) {
          if (j + 1 < J) {
            g_next = reinterpret_cast<const char*>(g_row + a.gz_s1);
          } else if (t + 1 < t_end) {
            const int64_t m1 = (t + 1) / plan.nchunks;
            const int64_t i1 = ((t + 1) % plan.nchunks) * plan.chunk;
            g_next = reinterpret_cast<const char*>(static_cast<const T*>(a.grad_z) +
                                                   m1 * a.gz_s0 + i1 * a.gz_s2);
          }
        }
        for (int64_t k = 0; k < n; k += V::size()) {
          const int64_t c = std::min<int64_t>(V::size(), n - k);
          if (g_next != nullptr) {
            for (int64_t b = 0; b < static_cast<int64_t>(V::size() * sizeof(T)); b += 64) {
              __builtin_prefetch(g_next + k * static_cast<int64_t>(sizeof(T)) + b);
            }
          }
          const V delta = V::loadu(ws + k, c) * V::loadu(eps + k, c);
          const V inactive = delta.abs() <= V::loadu(lam_buf + k, c);
          const V act = V::blendv(one, zero_v, inactive);  // 1 on the active branch (NaN too)
          const V g = V::loadu(g_row + k, c);
          const V ds = ds_scale * delta;
          V mu_acc = V::loadu(acc_mu + k, c);
          V lb_acc = V::loadu(acc_lb + k, c);
          if (kEstimator == 0) {         // straight, eq. (4)
            mu_acc = mu_acc + g;
            lb_acc = lb_acc + g * ds;
          } else if (kEstimator == 1) {  // subgradient
            const V ga = g * act;
            mu_acc = mu_acc + ga;
            lb_acc = lb_acc + ga * ds;
          } else {                       // straight_shift
            mu_acc = mu_acc + g * (one + act);
            lb_acc = lb_acc + g * ds;
          }
          mu_acc.store(acc_mu + k, c);
          lb_acc.store(acc_lb + k, c);
          if (kGradLam) {
            // -g sign(delta) a: delta != 0 on the active branch; a NaN delta stays NaN
            V gl = (zero_v - g) ^ (delta & sign_bit);
            gl = V::blendv(gl, delta, delta.isnan());
            (gl * act).store(glam_row + k, c);
          }
        }
      }
      S* gmu_row = gmu_p + m * d + i0;
      S* glb_row = glb_p + m * d + i0;
      if (gkl_p != nullptr) {
        gather(static_cast<const S*>(a.logb) + m * a.lb_s0 + i0 * a.lb_s1, a.lb_s1, n, lb_b);
        const V gkl(gkl_p[m]);
        for (int64_t k = 0; k < n; k += V::size()) {
          const int64_t c = std::min<int64_t>(V::size(), n - k);
          const V mu = V::loadu(mu_w + k, c);
          const V lb = V::loadu(lb_b + k, c);
          V d_mu, d_lb;
          if (a.base == 0) {
            const V ab = mu.abs();
            const V b = lb.exp();
            const V decay = (zero_v - ab / b).exp();
            const V sgn = (one & (mu > zero_v)) - (one & (mu < zero_v));
            d_mu = (sgn * (one - decay)) / V(b0);
            d_lb = (decay * (b + ab)) / V(b0) - one;
          } else {
            d_mu = mu / V(b0);
            d_lb = lb.exp() / V(two_b0) - V(T(0.5));
          }
          (V::loadu(acc_mu + k, c) + gkl * d_mu).store(acc_mu + k, c);
          (V::loadu(acc_lb + k, c) + gkl * d_lb).store(acc_lb + k, c);
        }
      }
      store_row(acc_mu, n, gmu_row);
      store_row(acc_lb, n, glb_row);
    }
  });
}

template <typename S, typename T>
void threshold_backward_dispatch(const ThresholdArgs& a) {
  const bool grad_lam = a.grad_lam != nullptr;
  switch (a.estimator * 2 + (grad_lam ? 1 : 0)) {
    case 0: threshold_backward_impl<S, T, 0, false>(a); break;
    case 1: threshold_backward_impl<S, T, 0, true>(a); break;
    case 2: threshold_backward_impl<S, T, 1, false>(a); break;
    case 3: threshold_backward_impl<S, T, 1, true>(a); break;
    case 4: threshold_backward_impl<S, T, 2, false>(a); break;
    default: threshold_backward_impl<S, T, 2, true>(a); break;
  }
}

bool threshold_forward(const ThresholdArgs& a) {
  switch (a.dtype) {
    case Dtype::kFloat: return threshold_forward_impl<float, float>(a);
    case Dtype::kDouble: return threshold_forward_impl<double, double>(a);
    case Dtype::kHalf: return threshold_forward_impl<c10::Half, float>(a);
    default: return threshold_forward_impl<c10::BFloat16, float>(a);
  }
}

void threshold_kl(const ThresholdArgs& a, void* kl) {
  switch (a.dtype) {
    case Dtype::kFloat: threshold_kl_impl<float, float>(a, kl); break;
    case Dtype::kDouble: threshold_kl_impl<double, double>(a, kl); break;
    case Dtype::kHalf: threshold_kl_impl<c10::Half, float>(a, kl); break;
    default: threshold_kl_impl<c10::BFloat16, float>(a, kl); break;
  }
}

void threshold_backward(const ThresholdArgs& a) {
  switch (a.dtype) {
    case Dtype::kFloat: threshold_backward_dispatch<float, float>(a); break;
    case Dtype::kDouble: threshold_backward_dispatch<double, double>(a); break;
    case Dtype::kHalf: threshold_backward_dispatch<c10::Half, float>(a); break;
    default: threshold_backward_dispatch<c10::BFloat16, float>(a); break;
  }
}

// ---------------------------------------------------------------------------------------
// elbo_select: E[b, j] = sum_f (x_hat[b, j, f] - x[b, f])^2 and its backward.

constexpr int64_t kElboChunk = 1024;   // columns converted at a time for 16-bit x_hat
constexpr int64_t kElboMinWork = 32768;

// sum_f (h[f] - x[f])^2 over n columns, partial sums in vector lanes.
template <typename T>
inline Vectorized<T> sq_err_acc(const T* __restrict h, const T* __restrict x, int64_t n,
                                Vectorized<T> acc0, Vectorized<T>& acc1) {
  using V = Vectorized<T>;
  constexpr int64_t W = V::size();
  int64_t f = 0;
  for (; f + 2 * W <= n; f += 2 * W) {
    const V d0 = V::loadu(h + f) - V::loadu(x + f);
    const V d1 = V::loadu(h + f + W) - V::loadu(x + f + W);
    acc0 = acc0 + d0 * d0;
    acc1 = acc1 + d1 * d1;
  }
  for (; f < n; f += W) {
    const int64_t c = std::min<int64_t>(W, n - f);
    const V dd = V::loadu(h + f, c) - V::loadu(x + f, c);
    acc0 = acc0 + V::set(V(T(0)), dd * dd, c);
  }
  return acc0;
}

template <typename T>
inline T lanes_sum(const Vectorized<T>& v) {
  alignas(64) T part[Vectorized<T>::size()];
  v.store(part);
  T total = T(0);
  for (int64_t l = 0; l < Vectorized<T>::size(); ++l) total += part[l];
  return total;
}

template <typename S, typename T>
void elbo_forward_impl(const SquaredErrorArgs& a) {
  using V = Vectorized<T>;
  const int64_t B = a.B, J = a.J, F = a.F;
  const S* h = static_cast<const S*>(a.x_hat);
  const T* x = static_cast<const T*>(a.x);
  T* e = static_cast<T*>(a.out);
  const int64_t grain = std::max<int64_t>(1, kElboMinWork / std::max<int64_t>(F, 1));
  at::parallel_for(0, B * J, grain, [&](int64_t begin, int64_t end) {
    alignas(64) T conv[kElboChunk];
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / J, j = r - b * J;
      const S* hr = h + b * a.xh_sb + j * a.xh_sj;
      const T* xr = x + b * F;
      V acc0(T(0)), acc1(T(0));
      if constexpr (std::is_same_v<S, T>) {
        acc0 = sq_err_acc<T>(hr, xr, F, acc0, acc1);
      } else {
        for (int64_t f0 = 0; f0 < F; f0 += kElboChunk) {
          const int64_t n = std::min(kElboChunk, F - f0);
          gather(hr + f0, 1, n, conv);
          acc0 = sq_err_acc<T>(conv, xr + f0, n, acc0, acc1);
        }
      }
      e[r] = lanes_sum<T>(acc0 + acc1);
    }
  });
}

template <typename S, typename T>
void elbo_backward_impl(const SquaredErrorArgs& a) {
  using V = Vectorized<T>;
  const int64_t B = a.B, J = a.J, F = a.F;
  const S* h = static_cast<const S*>(a.x_hat);
  const T* x = static_cast<const T*>(a.x);
  const T* g = static_cast<const T*>(a.g);
  S* out = static_cast<S*>(a.grad_x_hat);
  T* grad_x = static_cast<T*>(a.grad_x);
  const int64_t chunk = std::min<int64_t>(F, kElboChunk);
  const int64_t n_chunks = ceil_div(F, chunk);
  const int64_t grain = std::max<int64_t>(1, kElboMinWork / std::max<int64_t>(J * chunk, 1));
  const int64_t out_bytes = B * J * F * static_cast<int64_t>(sizeof(S));
  // Every sample written (avg, IWAE): the output's pages are mapped in batches ahead of
  // the writes, and then regular stores beat streaming ones (the zeroed pages are in
  // cache): fwd+bwd at (512, 10, 12288) avg, one thread, 185 ms -> 150 ms with streaming
  // stores, 131-137 ms without. Under max only the selected samples are written, the
  // rest stay unmapped zero pages, and large rows are streamed.
  const bool prefault = a.every_sample && out_bytes >= kPrefaultMinBytes;
  const bool stream = std::is_same_v<S, T> && out_bytes >= kStreamMinBytes && !prefault;
  const int64_t block = J * F;  // the elements of the output of one row b
  at::parallel_for(0, B * n_chunks, grain, [&](int64_t begin, int64_t end) {
    WritePrefault pages(out + begin / n_chunks * block, out + ((end - 1) / n_chunks + 1) * block,
                        prefault);
    alignas(64) T acc[kElboChunk];
    alignas(64) T conv[kElboChunk];
    alignas(64) T vals[kElboChunk];
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / n_chunks;
      const int64_t f0 = (t - b * n_chunks) * chunk;
      const int64_t n = std::min<int64_t>(chunk, F - f0);
      const T* xr = x + b * F + f0;
      pages.before(out + (b + 1) * block);
      if (grad_x) std::fill(acc, acc + n, T(0));
      for (int64_t j = 0; j < J; ++j) {
        const T gg = g[b * J + j];
        S* o = out + (b * J + j) * F + f0;
        // Unselected samples (method="max"): the output is zero-filled (zeroed_output,
        // untouched pages cost nothing) and x_hat is not read.
        if (gg == T(0)) continue;
        const bool stream_row = stream && vector_aligned(reinterpret_cast<T*>(o));
        const S* hr = h + b * a.xh_sb + j * a.xh_sj + f0;
        const T* hv;
        if constexpr (std::is_same_v<S, T>) {
          hv = hr;
        } else {
          gather(hr, 1, n, conv);
          hv = conv;
        }
        T* dst = std::is_same_v<S, T> ? reinterpret_cast<T*>(o) : vals;
        const V two_g(T(2) * gg);
        for (int64_t f = 0; f < n; f += V::size()) {
          const int64_t c = std::min<int64_t>(V::size(), n - f);
          const V v = two_g * (V::loadu(hv + f, c) - V::loadu(xr + f, c));
          if (stream_row && c == V::size()) {
            store_stream(dst + f, v);
          } else {
            v.store(dst + f, c);
          }
          if (grad_x) (V::loadu(acc + f, c) + v).store(acc + f, c);
        }
        if (!std::is_same_v<S, T>) store_row(vals, n, o);
      }
      if (grad_x) {
        T* gx = grad_x + b * F + f0;
        for (int64_t f = 0; f < n; ++f) gx[f] = -acc[f];
      }
    }
    if (stream) stream_fence();
  });
}

void elbo_squared_error(const SquaredErrorArgs& a) {
  if (a.compute_double) {
    switch (a.xh_dtype) {
      case Dtype::kFloat: elbo_forward_impl<float, double>(a); break;
      case Dtype::kDouble: elbo_forward_impl<double, double>(a); break;
      case Dtype::kHalf: elbo_forward_impl<c10::Half, double>(a); break;
      default: elbo_forward_impl<c10::BFloat16, double>(a); break;
    }
    return;
  }
  switch (a.xh_dtype) {
    case Dtype::kFloat: elbo_forward_impl<float, float>(a); break;
    case Dtype::kDouble: elbo_forward_impl<double, float>(a); break;
    case Dtype::kHalf: elbo_forward_impl<c10::Half, float>(a); break;
    default: elbo_forward_impl<c10::BFloat16, float>(a); break;
  }
}

void elbo_backward(const SquaredErrorArgs& a) {
  if (a.compute_double) {
    switch (a.xh_dtype) {
      case Dtype::kFloat: elbo_backward_impl<float, double>(a); break;
      case Dtype::kDouble: elbo_backward_impl<double, double>(a); break;
      case Dtype::kHalf: elbo_backward_impl<c10::Half, double>(a); break;
      default: elbo_backward_impl<c10::BFloat16, double>(a); break;
    }
    return;
  }
  switch (a.xh_dtype) {
    case Dtype::kFloat: elbo_backward_impl<float, float>(a); break;
    case Dtype::kDouble: elbo_backward_impl<double, float>(a); break;
    case Dtype::kHalf: elbo_backward_impl<c10::Half, float>(a); break;
    default: elbo_backward_impl<c10::BFloat16, float>(a); break;
  }
}

// ---------------------------------------------------------------------------------------
// Non-zeros of sparse codes.

// Entries of the idx / val buffers that collect_nonzeros may write past the count it
// returns: buffers for a row of n values hold n + kCollectSlack entries.
constexpr int64_t kCollectSlack = 16;

// The non-zeros of row[0, n) in ascending order, as collect_nonzeros_scalar
// (csrc/nonzeros.h) collects them: AVX-512 compresses 16 entries at a time into registers
// (the register form of vcompress, not the slow memory form) and stores whole vectors;
// the rest (and other builds) go through the branch-free scalar loop.
inline int64_t collect_nonzeros(const float* __restrict row, int64_t n, int32_t* __restrict idx,
                                float* __restrict val) {
  int64_t count = 0, k = 0;
#if defined(CPU_CAPABILITY_AVX512)
  __m512i pos = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i step = _mm512_set1_epi32(16);
  for (; k + 16 <= n; k += 16) {
    const __m512 v = _mm512_loadu_ps(row + k);
    const __mmask16 m = _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_NEQ_UQ);
    _mm512_storeu_ps(val + count, _mm512_maskz_compress_ps(m, v));
    _mm512_storeu_si512(idx + count, _mm512_maskz_compress_epi32(m, pos));
    count += __builtin_popcount(static_cast<unsigned>(m));
    pos = _mm512_add_epi32(pos, step);
  }
#endif
  return count + collect_nonzeros_scalar(row, n, 1, idx + count, val + count, k);
}

// The same for a strided row of any element type, converted to T.
template <typename S, typename T>
inline int64_t collect_nonzeros(const S* row, int64_t n, int64_t stride, int32_t* idx, T* val) {
  if constexpr (std::is_same_v<S, float> && std::is_same_v<T, float>) {
    if (stride == 1) return collect_nonzeros(row, n, idx, val);
  }
  return collect_nonzeros_scalar(row, n, stride, idx, val);
}

// out (d, D) = z^T g for z (N, d) and g (N, D) contiguous float32, over z's non-zeros:
// out[k, f] = sum over n ascending of z[n, k] g[n, f], added one by one from 0 (the
// rounding of csrc/sparse_decode.cpp's scalar loop, which this replaces for float32), or
// from out's values with accumulate (so calls on consecutive blocks of rows add up to
// the call on all of them, bit for bit).
// Threads own blocks of k. Rows are taken in blocks of kRowBlock: the block's non-zeros
// (in the thread's columns) are collected row by row, then counting-sorted by k (rows stay
// ascending). The columns f are then taken in chunks whose rows of g (block x chunk) stay
// in L2, and each out[k, chunk] is updated once per block: kTileVecs vectors held in
// registers while the block's entries of column k add their rows of g to them. So out is
// read and written once per block and chunk, not once per non-zero.
void sparse_grad_t_f32(const float* z, const float* g, int64_t N, int64_t d, int64_t D,
                       float* out, bool accumulate) {
  using V = VecF;
  constexpr int64_t kTileVecs = 8;
  constexpr int64_t kTileCols = kTileVecs * V::size();
  constexpr int64_t kRowBlock = 512;
  constexpr int64_t kPrefetchAhead = 2;
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t k_block = std::max<int64_t>(16, ceil_div(d, threads));
  const int64_t n_block = std::min<int64_t>(kRowBlock, std::max<int64_t>(N, 1));
  // columns per chunk: the block's rows of g in ~256 KB, whole register tiles
  const int64_t chunk = std::max<int64_t>(
      kTileCols, (int64_t{256} << 10) / (4 * n_block) / kTileCols * kTileCols);
  at::parallel_for(0, ceil_div(d, k_block), 1, [&](int64_t kb_begin, int64_t kb_end) {
    std::vector<int32_t> coo_k, entry_row;
    std::vector<float> coo_v, entry_val;
    std::vector<int64_t> row_end(static_cast<size_t>(n_block));
    std::vector<float> packed(static_cast<size_t>(n_block * std::min(chunk, D)));
    for (int64_t kb = kb_begin; kb < kb_end; ++kb) {
      const int64_t k0 = kb * k_block, kw = std::min(k_block, d - k0);
      if (!accumulate) std::fill(out + k0 * D, out + (k0 + kw) * D, 0.0f);
      std::vector<int64_t> offset(static_cast<size_t>(kw + 1)), fill(static_cast<size_t>(kw));
      for (int64_t n0 = 0; n0 < N; n0 += n_block) {
        const int64_t nb = std::min(n_block, N - n0);
        int64_t nnz = 0;
        for (int64_t i = 0; i < nb; ++i) {
          const size_t need = static_cast<size_t>(nnz + kw + kCollectSlack);
          if (coo_k.size() < need) {
            const size_t grown = std::max(need, 2 * coo_k.size());
            coo_k.resize(grown);
            coo_v.resize(grown);
          }
          nnz += collect_nonzeros(z + (n0 + i) * d + k0, kw, coo_k.data() + nnz,
                                  coo_v.data() + nnz);
          row_end[i] = nnz;
        }
        if (nnz == 0) continue;
        if (entry_row.size() < static_cast<size_t>(nnz)) {
          entry_row.resize(coo_k.size());
          entry_val.resize(coo_k.size());
        }
        std::fill(offset.begin(), offset.end(), 0);
        for (int64_t e = 0; e < nnz; ++e) ++offset[coo_k[e] + 1];
        for (int64_t k = 0; k < kw; ++k) offset[k + 1] += offset[k];
        std::copy(offset.begin(), offset.end() - 1, fill.begin());
        for (int64_t i = 0, e = 0; i < nb; ++i) {
          for (; e < row_end[i]; ++e) {
            const int64_t pos = fill[coo_k[e]]++;
            entry_row[pos] = static_cast<int32_t>(i);
            entry_val[pos] = coo_v[e];
          }
        }
        for (int64_t c0 = 0; c0 < D; c0 += chunk) {
          const int64_t cw = std::min(chunk, D - c0);
          // the block's rows of g over the chunk, packed (rows cw apart: g's own rows, D
          // apart, alias in the cache when D is a multiple of 1024)
          for (int64_t i = 0; i < nb; ++i) {
            std::copy(g + (n0 + i) * D + c0, g + (n0 + i) * D + c0 + cw, packed.data() + i * cw);
          }
          for (int64_t k = 0; k < kw; ++k) {
            const int64_t e0 = offset[k], e1 = offset[k + 1];
            if (e0 == e1) continue;
            float* o = out + (k0 + k) * D + c0;
            if (k + kPrefetchAhead < kw) {  // out's rows are far apart: fetch ahead
              const float* next = o + kPrefetchAhead * D;
              for (int64_t f = 0; f < cw; f += 16) __builtin_prefetch(next + f, 1);
            }
            int64_t f0 = 0;
            for (; f0 + kTileCols <= cw; f0 += kTileCols) {
              V acc[kTileVecs];
              for (int64_t t = 0; t < kTileVecs; ++t) acc[t] = V::loadu(o + f0 + t * V::size());
              for (int64_t e = e0; e < e1; ++e) {
                const V v(entry_val[e]);
                const float* gr = packed.data() + entry_row[e] * cw + f0;
                for (int64_t t = 0; t < kTileVecs; ++t) {
                  acc[t] = acc[t] + v * V::loadu(gr + t * V::size());
                }
              }
              for (int64_t t = 0; t < kTileVecs; ++t) acc[t].store(o + f0 + t * V::size());
            }
            for (; f0 < cw; f0 += V::size()) {
              const int64_t c = std::min<int64_t>(V::size(), cw - f0);
              V acc = V::loadu(o + f0, c);
              for (int64_t e = e0; e < e1; ++e) {
                acc = acc + V(entry_val[e]) * V::loadu(packed.data() + entry_row[e] * cw + f0, c);
              }
              acc.store(o + f0, c);
            }
          }
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------------------
// linear_elbo rows (see LinearArgs).

// rec[0:n] = sum over i ascending of val[i] * dense[col[i] * n, + n), added from zero:
// tiles of kRowTileVecs vectors stay in registers over all of the row's non-zeros and
// are stored once (rather than loading and storing the whole sum every few non-zeros).
// The same sums as linear_rows_blocked's per column.
constexpr int64_t kRowTileVecs = 8;

template <typename T, typename I>
inline void sparse_row(T* __restrict rec, int64_t n, const T* __restrict dense,
                       const I* __restrict col, const T* __restrict val, int64_t count) {
  using V = Vectorized<T>;
  constexpr int64_t kWidth = kRowTileVecs * V::size();
  int64_t f0 = 0;
  for (; f0 + kWidth <= n; f0 += kWidth) {
    V acc[kRowTileVecs];
    for (int64_t t = 0; t < kRowTileVecs; ++t) acc[t] = V(T(0));
    for (int64_t i = 0; i < count; ++i) {
      const V v(val[i]);
      const T* s = dense + static_cast<int64_t>(col[i]) * n + f0;
      for (int64_t t = 0; t < kRowTileVecs; ++t) {
        acc[t] = acc[t] + v * V::loadu(s + t * V::size());
      }
    }
    for (int64_t t = 0; t < kRowTileVecs; ++t) acc[t].store(rec + f0 + t * V::size());
  }
  for (; f0 < n; f0 += V::size()) {  // the last columns, a vector at a time
    const int64_t c = std::min<int64_t>(V::size(), n - f0);
    V acc(T(0));
    for (int64_t i = 0; i < count; ++i) {
      acc = acc + V(val[i]) * V::loadu(dense + static_cast<int64_t>(col[i]) * n + f0, c);
    }
    acc.store(rec + f0, c);
  }
}

// Sparse codes against an A^T larger than the L2 cache: reading a whole row of A^T per
// non-zero (the row-wise path below) streams A^T from memory again for every sample row.
// Here the D columns are processed in tiles of kTile, with A^T copied tile-major (a tile,
// d x kTile, is contiguous), and the rows in blocks of kBlockRows: the block's non-zeros
// are collected once (row by row, k ascending), then for each tile every row of the block
// sums its non-zeros' rows of the tile in registers (kTile columns) and reduces them at
// once. The tile is read from L2/L3 once per block, and nothing but the row's result is
// stored. Same sums as the row-wise path: rec[f] = sum over k ascending of z_k A^T[k, f];
// the squared norm is reduced per tile (lanes_sum) and the tiles' sums added in order.
constexpr int64_t kBlockRows = 256;
constexpr int64_t kTile = 64;
constexpr int64_t kAhead = 8;  // entries: idx holds kCollectSlack >= kAhead more

template <typename S, typename T>
void linear_rows_blocked(const LinearArgs& a) {
  using V = Vectorized<T>;
  constexpr int64_t kTileVecs = kTile / V::size();
  const int64_t d = a.d, D = a.D;
  const S* z = static_cast<const S*>(a.z);
  const T* x = static_cast<const T*>(a.x);
  const T* At = static_cast<const T*>(a.At);
  T* norms = static_cast<T*>(a.norms);
  const T* g = static_cast<const T*>(a.g);
  T* residual = static_cast<T*>(a.residual);
  const int64_t n_blocks = ceil_div(a.rows, kBlockRows);
  // A^T copied tile-major, tiles[t][k][0, kTile): the rows of one tile are contiguous
  // (one pass over A^T, once per call).
  const int64_t n_tiles = ceil_div(D, kTile);
  std::vector<T> tiles(static_cast<size_t>(n_tiles * d * kTile));
  at::parallel_for(0, n_tiles, 1, [&](int64_t t_begin, int64_t t_end) {
    for (int64_t t = t_begin; t < t_end; ++t) {
      const int64_t f0 = t * kTile, tw = std::min(kTile, D - f0);
      for (int64_t k = 0; k < d; ++k) {
        std::copy(At + k * D + f0, At + k * D + f0 + tw, tiles.data() + (t * d + k) * kTile);
      }
    }
  });
  at::parallel_for(0, n_blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<int32_t> idx;
    std::vector<T> val;
    std::vector<int64_t> row_start(static_cast<size_t>(kBlockRows + 1));
    std::vector<T> partial(static_cast<size_t>(kBlockRows));
    std::vector<int64_t> xrow(static_cast<size_t>(kBlockRows));
    alignas(64) T rec[kTile];
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t r0 = blk * kBlockRows;
      const int64_t n = std::min(kBlockRows, a.rows - r0);
      int64_t nnz = 0;
      for (int64_t i = 0; i < n; ++i) {
        const int64_t row = a.row0 + r0 + i;
        const int64_t b = a.sel != nullptr ? row : row / a.J;
        const int64_t j = a.sel != nullptr ? a.sel[row] : row - b * a.J;
        xrow[i] = b;
        const size_t need = static_cast<size_t>(nnz + d + kCollectSlack);
        if (idx.size() < need) {
          idx.resize(std::max(need, 2 * idx.size()));
          val.resize(idx.size());
        }
        row_start[i] = nnz;
        nnz += collect_nonzeros<S, T>(z + b * a.z_sb + j * a.z_sj, d, a.z_sd, idx.data() + nnz,
                                      val.data() + nnz);
      }
      row_start[n] = nnz;
      std::fill(partial.begin(), partial.begin() + n, T(0));
      for (int64_t f0 = 0; f0 < D; f0 += kTile) {
        const int64_t tw = std::min(kTile, D - f0);
        const T* tile = tiles.data() + (f0 / kTile) * d * kTile;
        for (int64_t i = 0; i < n; ++i) {
          const int64_t e0 = row_start[i], e1 = row_start[i + 1];
          V acc[kTileVecs];
          for (int64_t t = 0; t < kTileVecs; ++t) acc[t] = V(T(0));
          for (int64_t e = e0; e < e1; ++e) {
            // the tile's rows are picked at random: fetch a later entry's row ahead
            const T* ahead = tile + static_cast<int64_t>(idx[e + kAhead]) * kTile;
            for (int64_t l = 0; l < kTile * int64_t(sizeof(T)); l += 64) {
              __builtin_prefetch(reinterpret_cast<const char*>(ahead) + l);
            }
            const V v(val[e]);
            const T* s = tile + static_cast<int64_t>(idx[e]) * kTile;
            for (int64_t t = 0; t < kTileVecs; ++t) acc[t] = acc[t] + v * V::loadu(s + t * V::size());
          }
          for (int64_t t = 0; t < kTileVecs; ++t) acc[t].store(rec + t * V::size());
          const T* xr = x + xrow[i] * D + f0;
          if (norms != nullptr) {
            V acc0(T(0)), acc1(T(0));
            acc0 = sq_err_acc<T>(rec, xr, tw, acc0, acc1);
            partial[i] += lanes_sum<T>(acc0 + acc1);
          } else {
            const V gr(g[r0 + i]);
            T* out = residual + (r0 + i) * D + f0;
            for (int64_t f = 0; f < tw; f += V::size()) {
              const int64_t c = std::min<int64_t>(V::size(), tw - f);
              ((V::loadu(xr + f, c) - V::loadu(rec + f, c)) * gr).store(out + f, c);
            }
          }
        }
      }
      if (norms != nullptr) {
        for (int64_t i = 0; i < n; ++i) norms[r0 + i] = partial[i];
      }
    }
  });
}

template <typename S, typename T>
void linear_rows_impl(const LinearArgs& a) {
  using V = Vectorized<T>;
  const int64_t d = a.d, D = a.D;
  if (a.rec == nullptr && d * D * static_cast<int64_t>(sizeof(T)) > (int64_t{1} << 20)) {
    linear_rows_blocked<S, T>(a);
    return;
  }
  const S* z = static_cast<const S*>(a.z);
  const T* x = static_cast<const T*>(a.x);
  const T* At = static_cast<const T*>(a.At);
  const T* rec = static_cast<const T*>(a.rec);
  T* norms = static_cast<T*>(a.norms);
  const T* g = static_cast<const T*>(a.g);
  T* residual = static_cast<T*>(a.residual);
  const int64_t per_row = rec != nullptr ? D : std::max<int64_t>(D, d);
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 14) / std::max<int64_t>(per_row, 1));
  at::parallel_for(0, a.rows, grain, [&](int64_t begin, int64_t end) {
    std::vector<T> acc_buf(rec != nullptr ? 0 : static_cast<size_t>(D));
    std::vector<int32_t> col(rec != nullptr ? 0 : static_cast<size_t>(d + kCollectSlack));
    std::vector<T> val(rec != nullptr ? 0 : static_cast<size_t>(d + kCollectSlack));
    for (int64_t r = begin; r < end; ++r) {
      const int64_t row = a.row0 + r;
      const int64_t b = a.sel != nullptr ? row : row / a.J;
      const int64_t j = a.sel != nullptr ? a.sel[row] : row - b * a.J;
      const T* xr = x + b * D;
      const T* rr;
      if (rec != nullptr) {
        rr = rec + r * D;
      } else {
        const int64_t count = collect_nonzeros<S, T>(z + b * a.z_sb + j * a.z_sj, d, a.z_sd,
                                                     col.data(), val.data());
        sparse_row<T>(acc_buf.data(), D, At, col.data(), val.data(), count);
        rr = acc_buf.data();
      }
      if (norms != nullptr) {
        V acc0(T(0)), acc1(T(0));
        acc0 = sq_err_acc<T>(rr, xr, D, acc0, acc1);
        norms[r] = lanes_sum<T>(acc0 + acc1);
      } else {
        const V gr(g[r]);
        T* out = residual + r * D;
        for (int64_t f = 0; f < D; f += V::size()) {
          const int64_t c = std::min<int64_t>(V::size(), D - f);
          ((V::loadu(xr + f, c) - V::loadu(rr + f, c)) * gr).store(out + f, c);
        }
      }
    }
  });
}

void linear_rows(const LinearArgs& a) {
  if (a.compute_double) {
    switch (a.z_dtype) {
      case Dtype::kDouble: linear_rows_impl<double, double>(a); break;
      case Dtype::kFloat: linear_rows_impl<float, double>(a); break;
      case Dtype::kHalf: linear_rows_impl<c10::Half, double>(a); break;
      default: linear_rows_impl<c10::BFloat16, double>(a); break;
    }
    return;
  }
  switch (a.z_dtype) {
    case Dtype::kFloat: linear_rows_impl<float, float>(a); break;
    case Dtype::kDouble: linear_rows_impl<double, float>(a); break;
    case Dtype::kHalf: linear_rows_impl<c10::Half, float>(a); break;
    default: linear_rows_impl<c10::BFloat16, float>(a); break;
  }
}

const Kernels kTable = {
    VSC_KERNELS_NAME,
    &threshold_forward,
    &threshold_kl,
    &threshold_backward,
    &elbo_squared_error,
    &elbo_backward,
    &linear_rows,
    &sparse_grad_t_f32,
};

}  // namespace

const Kernels* VSC_KERNELS_GETTER() { return &kTable; }

}  // namespace cpu
}  // namespace vsc
