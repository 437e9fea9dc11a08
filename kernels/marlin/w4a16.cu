// W4A16 GEMM for few activation rows (M <= 64), Marlin-style, for sm_80+ (written for Hopper, sm_90).
//
//   out[M, N] = x[M, K] @ W^T,   W[n, k] = (q[n, k] - zero[g, n]) * scale[g, n],   g = k / group
//
// Why this shape of kernel (kernels/NOTES.md has the measurements that led here): for decode-sized M the
// time is the time to read the 4-bit weight, so everything below serves one aim, keep many weight bytes
// in flight and spend ~2 instructions per weight once they arrive.
//   1. The weight is repacked offline (kernels/marlin/__init__.py, `repack`) so that the 32-bit word a
//      thread reads holds exactly the 8 codes of its mma.sync B fragments for one k16 step and 16
//      columns: no shuffles, no shared-memory transposes, no ldmatrix for the weight.
//   2. Global -> shared copies are cp.async (16 bytes per instruction, no registers, asynchronous) into a
//      kStages-deep ring, so kStages - 1 K tiles are being fetched while one is computed. (A variant that
//      loaded codes straight into registers, with no barrier in the loop, was slower: NOTES.md.)
//   3. Codes become 16-bit floats by one LOP3 per pair: (word & 0x000F000F) | MAGIC puts a code under the
//      exponent of 1024 (fp16 0x6400) or 128 (bf16 0x4300), which reads as MAGIC + code, exactly.
//      (MAGIC + code) - (MAGIC + zero) = code - zero is exact for integer zeros, and one multiply by the
//      scale rounds once, so the weight equals QuantLinear.dequantized_weight(dtype) bit for bit.
//   4. mma.sync.m16n8k16 with fp32 accumulators: activations are operand A (ldmatrix from a swizzled
//      shared tile), the dequantized weight operand B straight from registers.
//   5. K can be split over gridDim.y for parallelism when N / 64 blocks would leave SMs idle. Each slice
//      writes its fp32 partial sums to a workspace; the last slice of a column tile to finish (a counter
//      per tile) adds them up in slice order and writes the output: one launch, no zeroing, no cast.
//   6. A decode step's neighbours of a linear layer come along, so they launch nothing of their own: on the
//      way in, RMSNorm (x * weight; the 1/rms factor, known only once the whole row has gone by, scales
//      the output) or SiLU(gate) * up; on the way out, a residual added to the result.
//
// Thread block: 4 warps, 64 output columns (16 per warp), all M rows (M_TILES x 16; rows past M are
// computed but never stored), K in tiles of 64. Each warp computes its own 16 columns over the block's
// whole K slice, so warps never exchange partial sums.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "w4a16.h"

// W4A16_PROBE is for kernels/limits.py only, which builds a second copy of the extension to time the kernel's
// parts apart: 1 keeps the copies, waits and barriers and drops the dequantization and MMAs; 2 keeps the math
// and drops every copy after the ring's first fill (later tiles reuse what the ring holds). Their outputs mean
// nothing. Either build has the bf16 plain instantiations only. The real build leaves it 0.
#ifndef W4A16_PROBE
#define W4A16_PROBE 0
#endif

namespace marlin_w4a16 {

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kTileN = 16 * kWarps;   // 64 output columns per block, 16 per warp (two n8 MMA tiles)
constexpr int kSubK = 64;             // K of one repacked code tile: four k16 MMA steps, 2 KB per block
constexpr int kWordsPerSub = kTileN * kSubK / 8;  // 512 int32 words
// A pipeline stage holds SUB code tiles (K tile = 64 SUB). SUB = 2 halves the per-stage work that does
// not scale with the codes (wait, barrier, addresses, scale loads) per weight.
// cp.async ring depth: kStages - 1 stages in flight while one is computed; decode is bound by bytes in
// flight, so the few-row kernels, whose activation tiles are small, take a deeper ring.
template <int M_TILES, int SUB> __host__ __device__ constexpr int stages_for() {
  return SUB == 1 ? (M_TILES <= 2 ? 6 : 4) : (M_TILES <= 2 ? 4 : 3);
}

// ---------------------------------------------------------------------------------------------------
// Per-dtype constants: the exponent pattern that turns a 4-bit code into MAGIC + code (two per register),
// and the conversions the epilogue needs.
template <typename T> struct Dtype;
template <> struct Dtype<half> {
  using T2 = half2;
  static constexpr uint32_t kMagic2 = 0x64006400u;  // fp16 1024.0 in both halves: ulp 1 up to 2048
  static constexpr bool kHighNibblesInPlace = true;          // see dequant_word
  static constexpr uint32_t kMagic2Sixteenth = 0x54005400u;  // 64.0 = MAGIC / 16
  static constexpr uint32_t kSixteenth2 = 0x2C002C00u;       // 1 / 16
  static __device__ __forceinline__ T2 pack(float a, float b) { return __floats2half2_rn(a, b); }
  static __device__ __forceinline__ T2 broadcast(half v) { return __half2half2(v); }
  static __device__ __forceinline__ float2 to_float2(T2 v) { return __half22float2(v); }
};
template <> struct Dtype<__nv_bfloat16> {
  using T2 = __nv_bfloat162;
  static constexpr uint32_t kMagic2 = 0x43004300u;  // bf16 128.0 in both halves: ulp 1 up to 256
  static constexpr bool kHighNibblesInPlace = false;
  static __device__ __forceinline__ T2 pack(float a, float b) { return __floats2bfloat162_rn(a, b); }
  static __device__ __forceinline__ T2 broadcast(__nv_bfloat16 v) { return __bfloat162bfloat162(v); }
  static __device__ __forceinline__ float2 to_float2(T2 v) { return __bfloat1622float2(v); }
};

template <typename T2> __device__ __forceinline__ uint32_t as_u32(T2 v) { return *reinterpret_cast<uint32_t*>(&v); }
template <typename T2> __device__ __forceinline__ T2 as_t2(uint32_t v) { return *reinterpret_cast<T2*>(&v); }

// ---------------------------------------------------------------------------------------------------
// PTX wrappers. Each is one instruction; inline asm because CUDA C++ has no intrinsic for them (cp.async
// with zero-fill, ldmatrix) or because the compiler would otherwise split them (lop3 with two constants).
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared, bypassing L1 (.cg): the weight is read once, caching it in L1 only evicts
// the activations and scales that every block re-reads.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_addr(smem)), "l"(gmem));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// (a & b) | c in one instruction; 0xEA is the truth table of that expression for LOP3.
__device__ __forceinline__ uint32_t lop3_and_or(uint32_t a, uint32_t b, uint32_t c) {
  uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;\n" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
}

// Four 8x8 b16 matrices from shared memory: the A fragment of one m16k16 MMA step. Lane l gives the
// address of row (l % 16), 8-column half (l / 16): lanes 0-7 matrix 0 (rows 0-7, k 0-7), 8-15 matrix 1
// (rows 8-15, k 0-7), 16-23 matrix 2 (rows 0-7, k 8-15), 24-31 matrix 3 (rows 8-15, k 8-15): exactly
// the a0..a7 order of mma.m16n8k16.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&a)[4], uint32_t smem_address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(a[0]), "=r"(a[1]), "=r"(a[2]), "=r"(a[3])
               : "r"(smem_address));
}

template <typename T>
__device__ __forceinline__ void mma_16816(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]);
template <>
__device__ __forceinline__ void mma_16816<half>(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&c)[4], const uint32_t (&a)[4],
                                                         const uint32_t (&b)[2]) {
  asm(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// ---------------------------------------------------------------------------------------------------
// Dequantization of one word = the B fragments of one k16 step for the warp's two n8 tiles.
// Nibble layout of the word (written by `repack`), lane l, r = l / 4, c = l % 4, k0 = 2c:
//   nibble 0: (n = r,     k0)    nibble 4: (n = r,     k0 + 1)   -> tile 0, register b0
//   nibble 1: (n = r,     k0+8)  nibble 5: (n = r,     k0 + 9)   -> tile 0, register b1
//   nibble 2: (n = r + 8, k0)    nibble 6: (n = r + 8, k0 + 1)   -> tile 1, register b0
//   nibble 3: (n = r + 8, k0+8)  nibble 7: (n = r + 8, k0 + 9)   -> tile 1, register b1
// so nibbles j and j + 4 sit 16 bits apart: one LOP3 per register pair.
//   even j: ((w >> 4j) & 0x000F000F) | MAGIC = MAGIC + q, then (MAGIC + q) - (MAGIC + z)     (HSUB2)
//   odd j, fp16: (w >> 4(j - 1)) & 0x00F000F0 | MAGIC = MAGIC + 16 q: bits 4-7 are still mantissa under fp16's
//           10-bit field, so this saves a shift; then (MAGIC + 16 q) / 16 - (MAGIC / 16 + z) in one HFMA2.
//           (bf16 has 7 mantissa bits, bit 7 is its exponent's: it shifts for every pair.)
// Every value on the way is an integer the 16-bit type holds exactly (MAGIC + 16 q <= 1264 in fp16), so each
// form gives q - z exactly; one multiply by the scale then rounds once.
template <typename T>
struct GroupConstants {  // of one group and one n8 tile: the lane's column's scale and zero, broadcast
  typename Dtype<T>::T2 scale, magic_zero, neg_magic16_zero;  // s, MAGIC + z, -(MAGIC / 16 + z) (fp16 only)
};

template <typename T>
__device__ __forceinline__ GroupConstants<T> group_constants(T scale, T zero) {
  using T2 = typename Dtype<T>::T2;
  const T2 z = Dtype<T>::broadcast(zero);
  GroupConstants<T> g{Dtype<T>::broadcast(scale), __hadd2(z, as_t2<T2>(Dtype<T>::kMagic2)), {}};  // exact: integer z
  if constexpr (Dtype<T>::kHighNibblesInPlace) g.neg_magic16_zero = __hneg2(__hadd2(z, as_t2<T2>(Dtype<T>::kMagic2Sixteenth)));
  return g;
}

// The register pair of nibbles j + 1 and j + 5 (odd), from `w` = word >> 4j.
template <typename T>
__device__ __forceinline__ uint32_t odd_pair(uint32_t w, const GroupConstants<T>& g) {
  using T2 = typename Dtype<T>::T2;
  if constexpr (Dtype<T>::kHighNibblesInPlace) {
    const T2 v = as_t2<T2>(lop3_and_or(w, 0x00F000F0u, Dtype<T>::kMagic2));
    return as_u32(__hmul2(__hfma2(v, as_t2<T2>(Dtype<T>::kSixteenth2), g.neg_magic16_zero), g.scale));
  } else {
    const T2 v = as_t2<T2>(lop3_and_or(w >> 4, 0x000F000Fu, Dtype<T>::kMagic2));
    return as_u32(__hmul2(__hsub2(v, g.magic_zero), g.scale));
  }
}

template <typename T>
__device__ __forceinline__ void dequant_word(uint32_t word, const GroupConstants<T> (&g)[2], uint32_t (&b)[2][2]) {
  using T2 = typename Dtype<T>::T2;
  const uint32_t high = word >> 8;
  const T2 v0 = as_t2<T2>(lop3_and_or(word, 0x000F000Fu, Dtype<T>::kMagic2));
  const T2 v2 = as_t2<T2>(lop3_and_or(high, 0x000F000Fu, Dtype<T>::kMagic2));
  b[0][0] = as_u32(__hmul2(__hsub2(v0, g[0].magic_zero), g[0].scale));
  b[0][1] = odd_pair<T>(word, g[0]);
  b[1][0] = as_u32(__hmul2(__hsub2(v2, g[1].magic_zero), g[1].scale));
  b[1][1] = odd_pair<T>(high, g[1]);
}

// ---------------------------------------------------------------------------------------------------
// Everything one launch needs (the launcher fills it from Problem, w4a16.h).
template <typename T>
struct Args {
  const T* x;               // [M, x_stride]: the layer's input, or with kSiluMul the gate half (up at x + K)
  const uint32_t* qweight;
  const T* scales;
  const T* zeros;
  const T* aux;             // kRmsNorm: the norm's weight [K] (aux_stride 0); kSiluMul: x + K; else unused
  const T* residual;        // [M, N] added to the output, or null
  T* out;
  float* partials;          // splits > 1: [slices, M, N] partial sums, then [slices, N / 64, M] row sums of x^2
  int* locks;
  int M, N, K, group, tiles_per_split, x_stride, aux_stride;
  float eps;
};
// A template parameter, not a runtime flag: built with a runtime flag, the plain kernel itself was slower
// (kernels/marlin/NOTES.md, fourth version).
enum Prologue : int { kPlain = 0, kRmsNorm = 1, kSiluMul = 2 };

// ---------------------------------------------------------------------------------------------------
// Prologue on one 16-byte chunk (8 values) of the activation tile that this thread copied itself, once its
// copy has landed and before the barrier that publishes the tile: x * weight for RMSNorm (returns the chunk's
// sum of squares, for the 1/rms factor the epilogue applies), silu(gate) * up for an MLP's down projection.
// fp32 arithmetic, one rounding back to 16 bits per value.
template <typename T, int PROLOGUE>
__device__ __forceinline__ float prologue_chunk(T* x_chunk, const T* aux_chunk) {
  using T2 = typename Dtype<T>::T2;
  uint4 xv = *reinterpret_cast<const uint4*>(x_chunk);
  const uint4 av = *reinterpret_cast<const uint4*>(aux_chunk);
  T2* xp = reinterpret_cast<T2*>(&xv);
  const T2* ap = reinterpret_cast<const T2*>(&av);
  float sq = 0.f;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 v = Dtype<T>::to_float2(xp[i]), w = Dtype<T>::to_float2(ap[i]);
    if (PROLOGUE == kRmsNorm) {
      sq += v.x * v.x + v.y * v.y;
      xp[i] = Dtype<T>::pack(v.x * w.x, v.y * w.y);
    } else {  // silu(g) = g / (1 + e^-g)
      xp[i] = Dtype<T>::pack(__fdividef(v.x, 1.f + __expf(-v.x)) * w.x, __fdividef(v.y, 1.f + __expf(-v.y)) * w.y);
    }
  }
  *reinterpret_cast<uint4*>(x_chunk) = xv;
  return sq;
}

// ---------------------------------------------------------------------------------------------------
// Epilogue. Accumulator layout of m16n8: c0, c1 at (row lane/4, cols 2(lane%4) + 0/1),
// c2, c3 at row + 8. One K slice (gridDim.y == 1): finish and store. Several: every slice stores its fp32
// partial sums in its own part of `partials` [slices, M, N] (and, for RMSNorm, its rows' sums of squares);
// the slice that finishes last for this column tile (counted in locks[blockIdx.x]) adds the parts in slice
// order, so the result does not depend on timing, finishes and stores, and sets the counter back to zero.
// Finishing = times 1/rms of the row (RMSNorm) plus the residual, in fp32, then one rounding.
template <typename T, int PROLOGUE>
__device__ __forceinline__ typename Dtype<T>::T2 finish(const Args<T>& a, float v0, float v1, float sum_sq, int row,
                                                        int n) {
  if (PROLOGUE == kRmsNorm) {
    const float inv_rms = rsqrtf(sum_sq / a.K + a.eps);
    v0 *= inv_rms;
    v1 *= inv_rms;
  }
  if (a.residual != nullptr) {
    const float2 r = Dtype<T>::to_float2(*reinterpret_cast<const typename Dtype<T>::T2*>(a.residual + (size_t)row * a.N + n));
    v0 += r.x;
    v1 += r.y;
  }
  return Dtype<T>::pack(v0, v1);
}

template <typename T, int M_TILES, int PROLOGUE>
__device__ __forceinline__ void store_output(const Args<T>& a, const float (&acc)[M_TILES][2][4],
                                             const float* row_sq) {
  using T2 = typename Dtype<T>::T2;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int M = a.M, N = a.N;
  const int n_block = blockIdx.x * kTileN;
  const bool split = gridDim.y > 1;
  float* part = a.partials + (size_t)blockIdx.y * M * N;
#pragma unroll
  for (int mt = 0; mt < M_TILES; ++mt) {
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
      const int n = n_block + warp * 16 + nt * 8 + 2 * (lane % 4);
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = mt * 16 + lane / 4 + 8 * h;
        if (row >= M) continue;
        const float v0 = acc[mt][nt][2 * h], v1 = acc[mt][nt][2 * h + 1];
        // row_sq has one entry per row only with RMSNorm (a single one otherwise): read it only then
        if (split)
          *reinterpret_cast<float2*>(part + (size_t)row * N + n) = make_float2(v0, v1);
        else
          *reinterpret_cast<T2*>(a.out + (size_t)row * N + n) =
              finish<T, PROLOGUE>(a, v0, v1, PROLOGUE == kRmsNorm ? row_sq[row] : 0.f, row, n);
      }
    }
  }
  if (!split) return;
  // Row sums of squares of this slice, per column tile: every tile's blocks compute the same values, but
  // each writes its own copy, so no two blocks write one address.
  float* slice_sq = a.partials + (size_t)gridDim.y * M * N;
  if (PROLOGUE == kRmsNorm && threadIdx.x < M)
    slice_sq[((size_t)blockIdx.y * gridDim.x + blockIdx.x) * M + threadIdx.x] = row_sq[threadIdx.x];
  __shared__ bool last;
  __threadfence();  // this thread's partial sums are visible device-wide before the counter moves
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(a.locks + blockIdx.x, 1) == (int)gridDim.y - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  // The last slice adds the parts, four columns per item. Loads from L2 cost a round trip each when one waits for
  // the next, so each thread requests kChunk slices of kPass items before adding any of them (the third and
  // fourth versions loaded one value at a time: M = 16 and 64 paid for it, NOTES.md).
  constexpr int kQuads = kTileN / 4;
  constexpr int kItems = M_TILES * 16 * kQuads / kThreads;  // per thread, at most (rows past M skip)
  constexpr int kPass = kItems < 4 ? kItems : 4;            // items added up together
  constexpr int kChunk = 8 / kPass;                          // slices requested together: <= 8 loads in flight
  const int slices = gridDim.y;
#pragma unroll
  for (int j0 = 0; j0 < kItems; j0 += kPass) {
    float4 sum[kPass];
    float sum_sq[kPass];
#pragma unroll
    for (int j = 0; j < kPass; ++j) sum[j] = make_float4(0.f, 0.f, 0.f, 0.f), sum_sq[j] = 0.f;
    for (int y0 = 0; y0 < slices; y0 += kChunk) {
      float4 v[kPass][kChunk];
      float q[kPass][kChunk];
#pragma unroll
      for (int j = 0; j < kPass; ++j) {
        const int i = threadIdx.x + (j0 + j) * kThreads, row = i / kQuads, n = n_block + 4 * (i % kQuads);
#pragma unroll
        for (int u = 0; u < kChunk; ++u) {  // .cg: from L2, where the other blocks' stores are
          const bool live = j0 + j < kItems && row < M && y0 + u < slices;
          v[j][u] = live ? __ldcg(reinterpret_cast<const float4*>(a.partials + ((size_t)(y0 + u) * M + row) * N + n))
                         : make_float4(0.f, 0.f, 0.f, 0.f);
          if (PROLOGUE == kRmsNorm)
            q[j][u] = live ? __ldcg(slice_sq + ((size_t)(y0 + u) * gridDim.x + blockIdx.x) * M + row) : 0.f;
        }
      }
#pragma unroll
      for (int j = 0; j < kPass; ++j)
#pragma unroll
        for (int u = 0; u < kChunk; ++u) {  // in slice order: the result does not depend on timing
          if (y0 + u >= slices) continue;
          sum[j].x += v[j][u].x, sum[j].y += v[j][u].y, sum[j].z += v[j][u].z, sum[j].w += v[j][u].w;
          if (PROLOGUE == kRmsNorm) sum_sq[j] += q[j][u];
        }
    }
#pragma unroll
    for (int j = 0; j < kPass; ++j) {
      const int i = threadIdx.x + (j0 + j) * kThreads, row = i / kQuads, n = n_block + 4 * (i % kQuads);
      if (j0 + j >= kItems || row >= M) continue;
      T2 pair[2] = {finish<T, PROLOGUE>(a, sum[j].x, sum[j].y, sum_sq[j], row, n),
                    finish<T, PROLOGUE>(a, sum[j].z, sum[j].w, sum_sq[j], row, n + 2)};
      *reinterpret_cast<uint2*>(a.out + (size_t)row * N + n) = *reinterpret_cast<uint2*>(pair);
    }
  }
  if (threadIdx.x == 0) a.locks[blockIdx.x] = 0;
}

// ---------------------------------------------------------------------------------------------------
// Shared memory of one block, carved from dynamic shared memory (a deep ring of SUB = 2 stages needs
// more than the 48 KB a static array may take). The activation tile is swizzled: row r's 16-byte chunk c
// is stored at chunk c ^ (r % 8). Rows are 128 or 256 bytes, so without it the 8 row addresses of one
// ldmatrix matrix would all hit the same banks (an 8-way conflict); with it they cover all 32 banks.
// Rows M..16 M_TILES - 1 of the tile are never written: row i of an MMA's result depends on row i of A
// only, and the epilogue stores rows < M only, so whatever those rows hold never reaches the output.
// With a prologue, a second tile of the same layout (kAux, allocated only then) receives the norm's weight
// or the up half, chunk for chunk beside the activations it transforms.
template <typename T, int M_TILES, int SUB>
struct SharedLayout {
  static constexpr int kStages = stages_for<M_TILES, SUB>();
  static constexpr int kTileK = kSubK * SUB;
  static constexpr int kGroupsMax = 2 * SUB;               // group 32: two groups per 64 of K
  static constexpr int kWords = kStages * SUB * kWordsPerSub;          // codes, thread t's 4 words at 4t
  static constexpr int kX = kStages * M_TILES * 16 * kTileK;            // activations
  static constexpr int kScales = kStages * kGroupsMax * kTileN;         // scales, then as many zeros
  static constexpr int kBytes = 4 * kWords + sizeof(T) * (kX + 2 * kScales);
  static constexpr int kAuxBytes = sizeof(T) * kX;
  // 16-byte activation chunks per row of a stage, and per thread at most (all 16 M_TILES rows)
  static constexpr int kChunksPerRow = kTileK / 8;
  static constexpr int kChunksPerThread = M_TILES * 16 * kChunksPerRow / kThreads;
};

// GROUP_STEPS: k16 MMA steps per quantization group inside one stage (2 for group 32, 4 for 64, and kTileK / 16
// when a group spans the whole stage or more). A template parameter so that the scale loads sit at fixed
// steps of the unrolled loop; as a runtime value they were tested at every step (fourth version's SASS).
template <typename T, int M_TILES, int SUB, int GROUP_STEPS, int PROLOGUE>
__global__ void __launch_bounds__(kThreads) w4a16_kernel(const Args<T> a) {
  using T2 = typename Dtype<T>::T2;
  using L = SharedLayout<T, M_TILES, SUB>;
  constexpr int kStages = L::kStages, kTileK = L::kTileK, kRows = M_TILES * 16, kCpr = L::kChunksPerRow;
  constexpr int kSteps = kTileK / 16, kGroupsPerStage = kSteps / GROUP_STEPS;
  static_assert(kSteps % GROUP_STEPS == 0 && kGroupsPerStage <= L::kGroupsMax, "a group tiles the stage");
  extern __shared__ __align__(16) unsigned char smem[];
  uint32_t* sm_w = reinterpret_cast<uint32_t*>(smem);                    // [stage][sub][512]
  T* sm_x = reinterpret_cast<T*>(sm_w + L::kWords);                      // [stage][row][kTileK]
  T* sm_s = sm_x + L::kX;                                                // [stage][group slot][64]
  T* sm_z = sm_s + L::kScales;
  T* sm_aux = sm_z + L::kScales;                                         // like sm_x, with a prologue only
  constexpr bool kNorm = PROLOGUE == kRmsNorm;
  __shared__ float sm_row_sq[kNorm ? kRows : 1];                         // RMSNorm: sum of x^2 per row

  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int M = a.M, N = a.N, K = a.K, group = a.group;
  const int n_block = blockIdx.x * kTileN;
  const int tiles_k = K / kTileK;
  const int tile_begin = blockIdx.y * a.tiles_per_split;
  const int tile_end = min(tile_begin + a.tiles_per_split, tiles_k);
  const int n_tiles = tile_end - tile_begin;  // >= 1: the launcher sizes the grid

  // Issue the cp.async copies of K tile `tile` into ring slot `stage`. Every thread issues its own
  // copies; the caller commits them as one group.
  auto load_tile = [&](int stage, int tile) {
    // (a) codes: thread t copies its own 16 bytes of each code tile = its 4 fragment words for 4 MMA
    //     steps. Global layout [K/64][N/16][32 lanes][4 words]: a block's 2 KB per code tile are contiguous.
#pragma unroll
    for (int u = 0; u < SUB; ++u)
      cp_async16(sm_w + (stage * SUB + u) * kWordsPerSub + threadIdx.x * 4,
                 a.qweight + (size_t)(tile * SUB + u) * (8 * (size_t)N) + (size_t)blockIdx.x * kWordsPerSub +
                     threadIdx.x * 4);
    // (b) activations: kCpr chunks of 16 bytes per row, only the M real rows; thread t always takes the
    //     same chunks (the prologue below relies on that), and with a prologue their aux chunks too.
    for (int i = threadIdx.x; i < M * kCpr; i += kThreads) {
      const int row = i / kCpr, chunk = i % kCpr;
      const int at = (stage * kRows + row) * kTileK + (chunk ^ (row % 8)) * 8;
      const size_t k = (size_t)tile * kTileK + chunk * 8;
      cp_async16(sm_x + at, a.x + (size_t)row * a.x_stride + k);
      if (PROLOGUE != kPlain) cp_async16(sm_aux + at, a.aux + (size_t)row * a.aux_stride + k);
    }
    // (c) scales and zeros, transposed offline to [groups, N] so the block's 64 columns are 128
    //     contiguous bytes: 8 chunks per group row and tensor. They are tiny and stay in L2.
    constexpr int chunks = kGroupsPerStage * (kTileN / 8);
    if (threadIdx.x < 2 * chunks) {
      const bool is_zero = threadIdx.x >= chunks;
      const int i = threadIdx.x % chunks, r = i / (kTileN / 8), chunk = i % (kTileN / 8);
      const int g = tile * kTileK / group + r;
      cp_async16((is_zero ? sm_z : sm_s) + (stage * L::kGroupsMax + r) * kTileN + chunk * 8,
                 (is_zero ? a.zeros : a.scales) + (size_t)g * N + n_block + chunk * 8);
    }
  };

  float acc[M_TILES][2][4];
#pragma unroll
  for (int mt = 0; mt < M_TILES; ++mt)
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[mt][nt][i] = 0.f;
  // RMSNorm: sum of x^2 over each of this thread's chunks (one row each), in slots only this thread touches
  // (shared memory rather than registers: an array of up to 8 live floats cost the 64-row kernels 50 registers)
  __shared__ float sm_chunk_sq[kNorm ? L::kChunksPerThread * kThreads : 1];
  if (kNorm)
    for (int j = 0; j < L::kChunksPerThread; ++j) sm_chunk_sq[j * kThreads + threadIdx.x] = 0.f;

  // Prologue: fill kStages - 1 slots. A group is committed even when there is no tile left to load, so
  // that the group count, and hence the wait below, stays uniform.
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < n_tiles) load_tile(s, tile_begin + s);
    cp_async_commit();
  }

  const int col = warp * 16 + lane / 4;  // this lane's column in tile 0 (tile 1: col + 8), block-relative
  // The lane's ldmatrix address in a stage, per MMA step, as a byte offset from the stage's tile: row lane % 16,
  // chunk 2 step + lane / 16, swizzled by XOR with row % 8. Steps 4..7 are steps 0..3 plus 8 chunks (the XOR
  // touches the low three bits only), and row tile mt adds 16 rows: constants, so four registers hold them all.
  constexpr int kOffsets = kSteps < 4 ? kSteps : 4;
  uint32_t x_offset[kOffsets];
#pragma unroll
  for (int step = 0; step < kOffsets; ++step)
    x_offset[step] = ((lane % 16) * kTileK + ((2 * step + lane / 16) ^ (lane % 8)) * 8) * sizeof(T);
  const uint32_t sm_x_address = smem_addr(sm_x);

  int stage = 0, next_stage = kStages - 1;  // ring slots of tile t and of tile t + kStages - 1
  for (int t = 0; t < n_tiles; ++t) {
    // Wait for this thread's copies of tile t (at most kStages - 2 newer groups may still be in flight),
    // then a barrier so every thread's copies are visible and every warp is done with slot
    // (t - 1) % kStages, which the prefetch below overwrites.
    cp_async_wait<kStages - 2>();
    if (PROLOGUE != kPlain) {  // this thread's own chunks have landed: transform them before the barrier
      for (int i = threadIdx.x; i < M * kCpr; i += kThreads) {
        const int row = i / kCpr, chunk = i % kCpr;
        const int at = (stage * kRows + row) * kTileK + (chunk ^ (row % 8)) * 8;
        const float sq = prologue_chunk<T, PROLOGUE>(sm_x + at, sm_aux + at);
        if (kNorm) sm_chunk_sq[i] += sq;  // slot j * kThreads + threadIdx.x, j = i / kThreads
      }
    }
    __syncthreads();
    if (W4A16_PROBE != 2 && t + kStages - 1 < n_tiles) load_tile(next_stage, tile_begin + t + kStages - 1);
    cp_async_commit();
    if constexpr (W4A16_PROBE != 1) {
      // This stage's codes: one 16-byte shared load per code tile (conflict-free: consecutive lanes,
      // consecutive chunks).
      uint32_t word[4 * SUB];
#pragma unroll
      for (int u = 0; u < SUB; ++u) {
        const uint4 w = *reinterpret_cast<const uint4*>(sm_w + (stage * SUB + u) * kWordsPerSub + threadIdx.x * 4);
        word[4 * u] = w.x; word[4 * u + 1] = w.y; word[4 * u + 2] = w.z; word[4 * u + 3] = w.w;
      }
      const uint32_t stage_x = sm_x_address + stage * (kRows * kTileK * sizeof(T));
      const T* stage_s = sm_s + stage * L::kGroupsMax * kTileN + col;
      const T* stage_z = sm_z + stage * L::kGroupsMax * kTileN + col;
      GroupConstants<T> g[2];  // the current group's, for the lane's two columns
#pragma unroll
      for (int step = 0; step < kSteps; ++step) {
        if (step % GROUP_STEPS == 0) {  // first step of a group: its scales and zeros
#pragma unroll
          for (int nt = 0; nt < 2; ++nt) {
            const int at = (step / GROUP_STEPS) * kTileN + 8 * nt;
            g[nt] = group_constants<T>(stage_s[at], stage_z[at]);
          }
        }
        uint32_t b[2][2];
        dequant_word<T>(word[step], g, b);
#pragma unroll
        for (int mt = 0; mt < M_TILES; ++mt) {
          uint32_t am[4];
          ldmatrix_x4(am, stage_x + x_offset[step % 4] + (step / 4) * 8 * 8 * sizeof(T) + mt * 16 * kTileK * sizeof(T));
          mma_16816<T>(acc[mt][0], am, b[0]);
          mma_16816<T>(acc[mt][1], am, b[1]);
        }
      }
    }
    stage = stage == kStages - 1 ? 0 : stage + 1;
    next_stage = next_stage == kStages - 1 ? 0 : next_stage + 1;
  }
  cp_async_wait<0>();  // nothing useful is pending, but leave no copy in flight at exit

  if (kNorm) {  // the kCpr threads of a row are adjacent lanes of one warp: add theirs up
    for (int j = 0; j < L::kChunksPerThread; ++j) {  // every lane takes part in the shuffles
      float v = sm_chunk_sq[j * kThreads + threadIdx.x];
#pragma unroll
      for (int offset = kCpr / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
      const int i = threadIdx.x + j * kThreads;
      if (i % kCpr == 0 && i < M * kCpr) sm_row_sq[i / kCpr] = v;
    }
    __syncthreads();
  }
  store_output<T, M_TILES, PROLOGUE>(a, acc, sm_row_sq);
}

// ---------------------------------------------------------------------------------------------------
// K tiles per slice for `splits` slices of tiles_k tiles, and the grid that leaves no slice empty.
static dim3 grid_for(const Problem& p, int tile_k, int* tiles_per_split) {
  const int tiles_k = p.K / tile_k;
  *tiles_per_split = (tiles_k + p.splits - 1) / p.splits;
  return dim3(p.N / kTileN, (tiles_k + *tiles_per_split - 1) / *tiles_per_split);
}

template <typename T, int M_TILES, int SUB, int GROUP_STEPS, int PROLOGUE>
static cudaError_t launch_kernel(const Problem& p, cudaStream_t stream) {
  using L = SharedLayout<T, M_TILES, SUB>;
  auto kernel = w4a16_kernel<T, M_TILES, SUB, GROUP_STEPS, PROLOGUE>;
  const int bytes = L::kBytes + (PROLOGUE != kPlain ? L::kAuxBytes : 0);
  // Above 48 KB of dynamic shared memory a kernel must opt in; cheap, so done at every launch.
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (err != cudaSuccess) return err;
  if (p.resident_blocks != nullptr)
    return cudaOccupancyMaxActiveBlocksPerMultiprocessor(p.resident_blocks, kernel, kThreads, bytes);
  Args<T> a;
  const T* x = static_cast<const T*>(p.x);
  a.x = x;
  a.qweight = static_cast<const uint32_t*>(p.qweight);
  a.scales = static_cast<const T*>(p.scales);
  a.zeros = static_cast<const T*>(p.zeros);
  a.aux = PROLOGUE == kRmsNorm ? static_cast<const T*>(p.norm_weight) : PROLOGUE == kSiluMul ? x + p.K : nullptr;
  a.residual = static_cast<const T*>(p.residual);
  a.out = static_cast<T*>(p.out);
  a.partials = p.workspace;
  a.locks = p.locks;
  a.M = p.M, a.N = p.N, a.K = p.K, a.group = p.group;
  a.x_stride = PROLOGUE == kSiluMul ? 2 * p.K : p.K;
  a.aux_stride = PROLOGUE == kSiluMul ? 2 * p.K : 0;
  a.eps = p.eps;
  const dim3 grid = grid_for(p, L::kTileK, &a.tiles_per_split);
  kernel<<<grid, kThreads, bytes, stream>>>(a);
  return cudaGetLastError();
}

template <typename T, int M_TILES, int SUB, int GROUP_STEPS>
static cudaError_t launch_prologue(const Problem& p, cudaStream_t stream) {
  if constexpr (W4A16_PROBE == 0) {
    if (p.norm_weight) return launch_kernel<T, M_TILES, SUB, GROUP_STEPS, kRmsNorm>(p, stream);
    if (p.silu_mul) return launch_kernel<T, M_TILES, SUB, GROUP_STEPS, kSiluMul>(p, stream);
  } else if (p.norm_weight || p.silu_mul) {
    return cudaErrorInvalidValue;
  }
  return launch_kernel<T, M_TILES, SUB, GROUP_STEPS, kPlain>(p, stream);
}

template <typename T, int M_TILES, int SUB>
static cudaError_t launch_tiles(const Problem& p, cudaStream_t stream) {
  // MMA steps per group within a stage: group 32 -> 2, 64 -> 4, a group of a whole stage or more -> all of them
  // (launch_w4a16 has checked that the group is 32 or a multiple of 64, and k_tile_for that 128 fits it).
  if (p.group == 32) return launch_prologue<T, M_TILES, SUB, 2>(p, stream);
  if constexpr (SUB == 1) return launch_prologue<T, M_TILES, SUB, 4>(p, stream);
  else return p.group == 64 ? launch_prologue<T, M_TILES, SUB, 4>(p, stream) : launch_prologue<T, M_TILES, SUB, 8>(p, stream);
}

template <typename T, int SUB>
static cudaError_t launch_rows(const Problem& p, cudaStream_t stream) {
  switch ((p.M + 15) / 16) {  // one instantiation per 16-row MMA tile count: accumulators stay in registers
    case 1: return launch_tiles<T, 1, SUB>(p, stream);
    case 2: return launch_tiles<T, 2, SUB>(p, stream);
    case 3: return launch_tiles<T, 3, SUB>(p, stream);
    case 4: return launch_tiles<T, 4, SUB>(p, stream);
    default: return cudaErrorInvalidValue;
  }
}

template <typename T>
static cudaError_t launch_typed(const Problem& p, int k_tile, cudaStream_t stream) {
  return k_tile == 128 ? launch_rows<T, 2>(p, stream) : launch_rows<T, 1>(p, stream);
}

int k_tile_for(int K, int group) {
  // A stage of 128 needs K % 128 == 0 and groups that tile it (32, 64) or that it tiles (multiples of 128).
  return K % 128 == 0 && (group <= 64 || group % 128 == 0) ? 128 : 64;
}

size_t workspace_floats(int M, int N, int splits) {
  return splits > 1 ? (size_t)splits * M * N + (size_t)splits * (N / kTileN) * M : 0;
}

cudaError_t launch_w4a16(const Problem& p, cudaStream_t stream) {
  // The binding checks all of this with readable messages; this is the last line of defence for
  // other callers.
  const int group = p.group;
  const bool group_ok = group == 32 || (group > 0 && group % kSubK == 0);
  const int k_tile = p.k_tile == 0 ? k_tile_for(p.K, group) : p.k_tile;
  const bool k_tile_ok = k_tile == 64 || (k_tile == 128 && k_tile_for(p.K, group) == 128);
  if (p.M < 1 || p.M > 64 || p.N <= 0 || p.N % kTileN || p.K <= 0 || p.K % kSubK || !group_ok || p.K % group ||
      p.splits < 1 || !k_tile_ok || (p.norm_weight && p.silu_mul) ||
      (p.splits > 1 && (p.workspace == nullptr || p.locks == nullptr)))
    return cudaErrorInvalidValue;
#if W4A16_PROBE
  return p.bf16 ? launch_typed<__nv_bfloat16>(p, k_tile, stream) : cudaErrorInvalidValue;
#else
  return p.bf16 ? launch_typed<__nv_bfloat16>(p, k_tile, stream) : launch_typed<half>(p, k_tile, stream);
#endif
}

}  // namespace marlin_w4a16
