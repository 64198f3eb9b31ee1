// lowbit CUDA integer kernels (device functions). cuda_kernels.py prepends this file to the
// CUDA source TVM generates; each TIR kernel of cuda_kernels.py is a launch shell whose body
// is one call of a function below, so the kernels are compiled by nvcc into the same cubin.
//
// lowbit_gemm_u8s8_<BM>x<BN>: y[m, n] = f32(sum_k x_u8[m, k] * w_i8[n, k] - corr[n]) * scale[n]
//   + bias[n], with w in the VNNI packing [Np/16, K/4, 16, 4] (pack.py). Tensor cores:
//   mma.sync m16n8k32 u8 x s8 -> s32; A through ldmatrix, B as 32-bit words straight from the
//   packed layout; 64-deep k tiles, cp.async multi-stage pipeline, XOR-swizzled shared memory.
//   Needs K % 16 == 0 (zero-filled tail).
// lowbit_w4a16_gemv_<MR>: y[m, n] = sum_k x[m, k] * (nib(w[k/2, n]) - 8) * s[k/g, n] + bias[n]
//   for M = MR <= 4 rows: split-K over warps and blocks, 8 columns (8 bytes) per thread,
//   fp32 atomics into y (set to bias by lowbit_w4a16_init first). Needs N % 8 == 0.
// lowbit_w4a16_gemm: the same for any M: 64x64 tiles, weights decoded into shared memory.
#ifndef LOWBIT_CUDA_KERNELS
#define LOWBIT_CUDA_KERNELS

__device__ __forceinline__ void lowbit_cp_async16(void* smem, const void* gmem, bool pred) {
  unsigned s = (unsigned)__cvta_generic_to_shared(smem);
  int n = pred ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(n));
}
__device__ __forceinline__ void lowbit_cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void lowbit_cp_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

template <int BM, int BN, int WARPS_M, int WARPS_N, int STAGES>
__device__ __forceinline__ int lowbit_gemm_u8s8_impl(
    const unsigned char* __restrict__ x, const signed char* __restrict__ w,
    const int* __restrict__ corr, const float* __restrict__ scale,
    const float* __restrict__ bias, float* __restrict__ y, int M, int N, int K) {
  constexpr int BK = 64;                       // bytes of k per stage
  constexpr int THREADS = WARPS_M * WARPS_N * 32;
  constexpr int WTM = BM / WARPS_M, WTN = BN / WARPS_N;
  constexpr int MT = WTM / 16, NT = WTN / 8;
  __shared__ __align__(128) unsigned char sA[STAGES][BM * BK];
  __shared__ __align__(128) unsigned char sB[STAGES][BN * BK];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp / WARPS_N, wn = warp % WARPS_N;
  const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
  const int K4 = K >> 2, KT = (K + BK - 1) / BK;
  const int NB_ALL = (N + 15) >> 4;            // 16-row blocks in the packed weight

  auto load = [&](int stage, int kt) {
    const int k0 = kt * BK;
    // A: BM rows x 4 granules of 16 B; granule g of row r stored at g ^ ((r >> 1) & 3)
#pragma unroll
    for (int c = tid; c < BM * 4; c += THREADS) {
      int r = c >> 2, g = c & 3;
      int gm = m0 + r, gk = k0 + g * 16;
      bool ok = gm < M && gk < K;
      const unsigned char* src = ok ? x + (size_t)gm * K + gk : x;
      lowbit_cp_async16(&sA[stage][r * BK + ((g ^ ((r >> 1) & 3)) << 4)], src, ok);
    }
    // B: BN/16 blocks x 16 k4 x 4 granules; granule g of (nb, k4) at g ^ (((k4 >> 1) & 1) * 2)
#pragma unroll
    for (int c = tid; c < BN * 4; c += THREADS) {
      int nb = c >> 6, k4 = (c >> 2) & 15, g = c & 3;
      int gnb = (n0 >> 4) + nb, gk4 = (k0 >> 2) + k4;
      bool ok = gnb < NB_ALL && gk4 < K4;
      const signed char* src = ok ? w + ((size_t)gnb * K4 + gk4) * 64 + g * 16 : w;
      lowbit_cp_async16(&sB[stage][nb * 1024 + k4 * 64 + ((g ^ (((k4 >> 1) & 1) << 1)) << 4)],
                        src, ok);
    }
  };

  int acc[MT][NT][4];
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int q = 0; q < 4; ++q) acc[i][j][q] = 0;

#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < KT) load(s, s);
    lowbit_cp_commit();
  }
  const int g4 = lane >> 2, t4 = lane & 3;
  for (int kt = 0; kt < KT; ++kt) {
    lowbit_cp_wait<STAGES - 2>();
    __syncthreads();
    if (kt + STAGES - 1 < KT) load((kt + STAGES - 1) % STAGES, kt + STAGES - 1);
    lowbit_cp_commit();
    const unsigned char* a_s = sA[kt % STAGES];
    const unsigned char* b_s = sB[kt % STAGES];
#pragma unroll
    for (int ks = 0; ks < 2; ++ks) {
      unsigned af[MT][4], bf[NT][2];
#pragma unroll
      for (int i = 0; i < MT; ++i) {
        int r = wm * WTM + i * 16 + (lane & 15);
        int g = ks * 2 + (lane >> 4);
        unsigned addr = (unsigned)__cvta_generic_to_shared(a_s + r * BK + ((g ^ ((r >> 1) & 3)) << 4));
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(af[i][0]), "=r"(af[i][1]), "=r"(af[i][2]), "=r"(af[i][3])
                     : "r"(addr));
      }
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        int n = wn * WTN + j * 8 + g4;           // column inside the tile
        int nb = n >> 4, nn = n & 15;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          int k4 = ks * 8 + h * 4 + t4;
          int g = nn >> 2, pg = g ^ (((k4 >> 1) & 1) << 1);
          bf[j][h] = *reinterpret_cast<const unsigned*>(b_s + nb * 1024 + k4 * 64 + pg * 16 +
                                                         (nn & 3) * 4);
        }
      }
#pragma unroll
      for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NT; ++j)
          asm volatile(
              "mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
              "{%8,%9}, {%0,%1,%2,%3};\n"
              : "+r"(acc[i][j][0]), "+r"(acc[i][j][1]), "+r"(acc[i][j][2]), "+r"(acc[i][j][3])
              : "r"(af[i][0]), "r"(af[i][1]), "r"(af[i][2]), "r"(af[i][3]), "r"(bf[j][0]),
                "r"(bf[j][1]));
    }
  }
  lowbit_cp_wait<0>();
  // epilogue: c0,c1 at (g4, 2 t4 + {0,1}), c2,c3 at (g4 + 8, ...)
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    int n = n0 + wn * WTN + j * 8 + t4 * 2;
    float s0 = 0.f, s1 = 0.f, b0 = 0.f, b1 = 0.f;
    int c0 = 0, c1 = 0;
    if (n < N) { s0 = scale[n]; b0 = bias[n]; c0 = corr[n]; }
    if (n + 1 < N) { s1 = scale[n + 1]; b1 = bias[n + 1]; c1 = corr[n + 1]; }
#pragma unroll
    for (int i = 0; i < MT; ++i) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        int m = m0 + wm * WTM + i * 16 + g4 + h * 8;
        if (m >= M) continue;
        float* row = y + (size_t)m * N;
        if (n < N) row[n] = (float)(acc[i][j][2 * h] - c0) * s0 + b0;
        if (n + 1 < N) row[n + 1] = (float)(acc[i][j][2 * h + 1] - c1) * s1 + b1;
      }
    }
  }
  return 0;
}

__device__ int lowbit_gemm_u8s8_128x128(const unsigned char* x, const signed char* w,
                                        const int* corr, const float* scale, const float* bias,
                                        float* y, int M, int N, int K) {
  return lowbit_gemm_u8s8_impl<128, 128, 2, 4, 3>(x, w, corr, scale, bias, y, M, N, K);
}
__device__ int lowbit_gemm_u8s8_64x64(const unsigned char* x, const signed char* w,
                                      const int* corr, const float* scale, const float* bias,
                                      float* y, int M, int N, int K) {
  return lowbit_gemm_u8s8_impl<64, 64, 2, 2, 4>(x, w, corr, scale, bias, y, M, N, K);
}

// ---- int4 weight-only ----------------------------------------------------------------------
// (q - 8) as float for the byte i of v (q < 16): 0x4B0000qq is 2^23 + q
__device__ __forceinline__ float lowbit_nib(unsigned v, int i) {
  return __int_as_float(__byte_perm(v, 0x4B000000u, 0x7650u | i)) - 8388616.0f;
}

__device__ int lowbit_w4a16_init(const float* __restrict__ bias, float* __restrict__ y, int M,
                                 int N) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < M * N) y[i] = bias[i % N];
  return 0;
}

// block: 4 warps on one 256-column tile; blockIdx.y: a range of groups of rows
template <int MR>
__device__ __forceinline__ int lowbit_w4a16_gemv_impl(
    const float* __restrict__ x, const unsigned char* __restrict__ w,
    const float* __restrict__ scale, float* __restrict__ y, int N, int K, int group,
    int groups_per_block) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int n = blockIdx.x * 256 + lane * 8;
  const int G = K / group, half = group >> 1;
  const int gbeg = blockIdx.y * groups_per_block;
  const int gend = min(G, gbeg + groups_per_block);
  float acc[MR][8];
#pragma unroll
  for (int m = 0; m < MR; ++m)
#pragma unroll
    for (int c = 0; c < 8; ++c) acc[m][c] = 0.f;
  if (n < N) {
    for (int gi = gbeg + warp; gi < gend; gi += 4) {
      float part[MR][8];
#pragma unroll
      for (int m = 0; m < MR; ++m)
#pragma unroll
        for (int c = 0; c < 8; ++c) part[m][c] = 0.f;
      const unsigned char* wp = w + (size_t)gi * half * N + n;
#pragma unroll 8
      for (int r = 0; r < half; ++r) {
        uint2 v = __ldg(reinterpret_cast<const uint2*>(wp + (size_t)r * N));
        unsigned lo0 = v.x & 0x0F0F0F0Fu, hi0 = (v.x >> 4) & 0x0F0F0F0Fu;
        unsigned lo1 = v.y & 0x0F0F0F0Fu, hi1 = (v.y >> 4) & 0x0F0F0F0Fu;
        int k = (gi * half + r) * 2;
#pragma unroll
        for (int m = 0; m < MR; ++m) {
          float x0 = __ldg(x + (size_t)m * K + k), x1 = __ldg(x + (size_t)m * K + k + 1);
#pragma unroll
          for (int c = 0; c < 4; ++c) {
            part[m][c] = fmaf(x0, lowbit_nib(lo0, c), part[m][c]);
            part[m][c] = fmaf(x1, lowbit_nib(hi0, c), part[m][c]);
            part[m][c + 4] = fmaf(x0, lowbit_nib(lo1, c), part[m][c + 4]);
            part[m][c + 4] = fmaf(x1, lowbit_nib(hi1, c), part[m][c + 4]);
          }
        }
      }
      const float4* sp = reinterpret_cast<const float4*>(scale + (size_t)gi * N + n);
      float4 sa = __ldg(sp), sb = __ldg(sp + 1);
      float s[8] = {sa.x, sa.y, sa.z, sa.w, sb.x, sb.y, sb.z, sb.w};
#pragma unroll
      for (int m = 0; m < MR; ++m)
#pragma unroll
        for (int c = 0; c < 8; ++c) acc[m][c] = fmaf(part[m][c], s[c], acc[m][c]);
    }
  }
  __shared__ float red[4][MR][256];
#pragma unroll
  for (int m = 0; m < MR; ++m)
#pragma unroll
    for (int c = 0; c < 8; ++c) red[warp][m][lane * 8 + c] = acc[m][c];
  __syncthreads();
  for (int i = threadIdx.x; i < MR * 256; i += 128) {
    int m = i / 256, col = i % 256;
    float v = red[0][m][col] + red[1][m][col] + red[2][m][col] + red[3][m][col];
    int gn = blockIdx.x * 256 + col;
    if (gn < N) atomicAdd(y + (size_t)m * N + gn, v);
  }
  return 0;
}

__device__ int lowbit_w4a16_gemv_1(const float* x, const unsigned char* w, const float* s,
                                   float* y, int N, int K, int g, int gpb) {
  return lowbit_w4a16_gemv_impl<1>(x, w, s, y, N, K, g, gpb);
}
__device__ int lowbit_w4a16_gemv_2(const float* x, const unsigned char* w, const float* s,
                                   float* y, int N, int K, int g, int gpb) {
  return lowbit_w4a16_gemv_impl<2>(x, w, s, y, N, K, g, gpb);
}
__device__ int lowbit_w4a16_gemv_4(const float* x, const unsigned char* w, const float* s,
                                   float* y, int N, int K, int g, int gpb) {
  return lowbit_w4a16_gemv_impl<4>(x, w, s, y, N, K, g, gpb);
}

// any M: 64x64 output tile, 256 threads (4x4 outputs each), k tiles of 32 (16 byte rows)
__device__ int lowbit_w4a16_gemm(const float* __restrict__ x, const unsigned char* __restrict__ w,
                                 const float* __restrict__ scale, const float* __restrict__ bias,
                                 float* __restrict__ y, int M, int N, int K, int group) {
  __shared__ float xs[32][64 + 4];   // [k][m]
  __shared__ float ws[32][64 + 4];   // [k][n]
  const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
  const int m0 = blockIdx.y * 64, n0 = blockIdx.x * 64;
  float acc[4][4] = {};
  for (int k0 = 0; k0 < K; k0 += 32) {
    for (int i = tid; i < 64 * 32; i += 256) {      // x tile, coalesced along k
      int r = i >> 5, kk = i & 31;
      int gm = m0 + r, gk = k0 + kk;
      xs[kk][r] = (gm < M && gk < K) ? x[(size_t)gm * K + gk] : 0.f;
    }
    for (int i = tid; i < 16 * 64; i += 256) {      // 16 byte rows x 64 columns
      int r = i >> 6, c = i & 63;
      int gk2 = (k0 >> 1) + r, gn = n0 + c;
      float lo = 0.f, hi = 0.f;
      if (gn < N && 2 * gk2 < K) {
        unsigned b = w[(size_t)gk2 * N + gn];
        float s = scale[(size_t)(2 * gk2 / group) * N + gn];
        lo = ((int)(b & 15u) - 8) * s;
        hi = ((int)(b >> 4) - 8) * s;
      }
      ws[2 * r][c] = lo;
      ws[2 * r + 1][c] = hi;
    }
    __syncthreads();
#pragma unroll 8
    for (int kk = 0; kk < 32; ++kk) {
      float a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = xs[kk][ty * 4 + i];
#pragma unroll
      for (int j = 0; j < 4; ++j) b[j] = ws[kk][tx * 4 + j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    int m = m0 + ty * 4 + i;
    if (m >= M) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      int n = n0 + tx * 4 + j;
      if (n < N) y[(size_t)m * N + n] = acc[i][j] + bias[n];
    }
  }
  return 0;
}
#endif  // LOWBIT_CUDA_KERNELS
