// lowbit CUDA integer kernels (device functions). cuda_kernels.py prepends this file to the
// CUDA source TVM generates; each TIR kernel of cuda_kernels.py is a launch shell whose body
// is one call of a function below, so the kernels are compiled by nvcc into the same cubin.
//
// lowbit_gemm_u8s8_<BM>x<BN>_<WM>x<WN>_s<S>: y[m, n] = f32(sum_k x_u8[m, k] * w_i8[n, k] - corr[n]) * scale[n]
//   + bias[n], with w in the VNNI packing [Np/16, K/4, 16, 4] (pack.py). Tensor cores:
//   mma.sync m16n8k32 u8 x s8 -> s32; A through ldmatrix, B as 32-bit words straight from the
//   packed layout; 64-deep k tiles, cp.async multi-stage pipeline, XOR-swizzled shared memory.
//   Needs K % 16 == 0 (zero-filled tail).
// lowbit_w4a16_gemv_<MR>_v<VEC>_u<U>_s<S>: y[m, n] = sum_k x[m, k] * (nib(w[k/2, n]) - 8) * s[k/g, n] + bias[n]
//   for M = MR <= 4 rows, one launch: split-K over warps and blocks, 8 or 16 columns (bytes) per
//   thread, the first block of a column tile stores bias + its sum, the others add with fp32
//   atomics. Needs N % 8 == 0.
// lowbit_w4a16_gemm: the same for any M: 64x64 tiles, weights decoded into shared memory.
// lowbit_w4a16_gemm_tc: the same for any M on tensor cores (sm_80+, mma.sync m16n8k16 f16, x
//   rounded to fp16, fp32 sums scaled per group). Needs g % 32 == 0.
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

template <int BK>
__device__ __forceinline__ int lowbit_swz(int r) {   // A: 16-byte granule XOR of row r
  return BK == 64 ? ((r >> 1) & 3) : (r & 7);          // rows of 64 B (2 a line) or 128 B
}

template <int BM, int BN, int WARPS_M, int WARPS_N, int STAGES, int BK>
__device__ __forceinline__ int lowbit_gemm_u8s8_impl(
    const unsigned char* __restrict__ x, const signed char* __restrict__ w,
    const int* __restrict__ corr, const float* __restrict__ scale,
    const float* __restrict__ bias, float* __restrict__ y, unsigned char* __restrict__ smem,
    int M, int N, int K) {
  static_assert(BK == 64 || BK == 128, "BK: bytes of k per stage");
  constexpr int GA = BK / 16;                  // 16-byte granules per A row
  constexpr int THREADS = WARPS_M * WARPS_N * 32;
  constexpr int WTM = BM / WARPS_M, WTN = BN / WARPS_N;
  constexpr int MT = WTM / 16, NT = WTN / 8;
  static_assert(WTM % 16 == 0 && WTN % 8 == 0 && BN % 16 == 0, "tile shape");
  // smem: STAGES * (BM + BN) * BK bytes (the shell's dynamic shared memory)
  unsigned char (*sA)[BM * BK] = reinterpret_cast<unsigned char (*)[BM * BK]>(smem);
  unsigned char (*sB)[BN * BK] =
      reinterpret_cast<unsigned char (*)[BN * BK]>(smem + STAGES * BM * BK);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp / WARPS_N, wn = warp % WARPS_N;
  const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
  const int K4 = K >> 2, KT = (K + BK - 1) / BK;
  const int NB_ALL = (N + 15) >> 4;            // 16-row blocks in the packed weight

  auto load = [&](int stage, int kt) {
    const int k0 = kt * BK;
    // A: BM rows x GA granules of 16 B; granule g of row r stored at g ^ lowbit_swz(r)
#pragma unroll
    for (int c = tid; c < BM * GA; c += THREADS) {
      int r = c / GA, g = c % GA;
      int gm = m0 + r, gk = k0 + g * 16;
      bool ok = gm < M && gk < K;
      const unsigned char* src = ok ? x + (size_t)gm * K + gk : x;
      lowbit_cp_async16(&sA[stage][r * BK + ((g ^ lowbit_swz<BK>(r)) << 4)], src, ok);
    }
    // B: BN/16 blocks x BK/4 k4 x 4 granules; granule g of (nb, k4) at g ^ (((k4 >> 1) & 1) * 2)
#pragma unroll
    for (int c = tid; c < BN * BK / 16; c += THREADS) {
      int nb = c / BK, k4 = (c >> 2) % (BK / 4), g = c & 3;
      int gnb = (n0 >> 4) + nb, gk4 = (k0 >> 2) + k4;
      bool ok = gnb < NB_ALL && gk4 < K4;
      const signed char* src = ok ? w + ((size_t)gnb * K4 + gk4) * 64 + g * 16 : w;
      lowbit_cp_async16(&sB[stage][nb * (16 * BK) + k4 * 64 + ((g ^ (((k4 >> 1) & 1) << 1)) << 4)],
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
    for (int ks = 0; ks < BK / 32; ++ks) {
      unsigned af[MT][4], bf[NT][2];
#pragma unroll
      for (int i = 0; i < MT; ++i) {
        int r = wm * WTM + i * 16 + (lane & 15);
        int g = ks * 2 + (lane >> 4);
        unsigned addr = (unsigned)__cvta_generic_to_shared(a_s + r * BK + ((g ^ lowbit_swz<BK>(r)) << 4));
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
          bf[j][h] = *reinterpret_cast<const unsigned*>(b_s + nb * (16 * BK) + k4 * 64 + pg * 16 +
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
  // epilogue: c0,c1 at (g4, 2 t4 + {0,1}), c2,c3 at (g4 + 8, ...); n is even, so with N even
  // the pair is one aligned 8-byte store
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
        float v0 = (float)(acc[i][j][2 * h] - c0) * s0 + b0;
        float v1 = (float)(acc[i][j][2 * h + 1] - c1) * s1 + b1;
        if ((N & 1) == 0 && n + 1 < N) {
          *reinterpret_cast<float2*>(row + n) = make_float2(v0, v1);
        } else {
          if (n < N) row[n] = v0;
          if (n + 1 < N) row[n + 1] = v1;
        }
      }
    }
  }
  return 0;
}

// Device functions lowbit_gemm_u8s8_<BM>x<BN>_<WM>x<WN>_s<STAGES>[_k<BK>](x, w, corr, scale, bias, y,
// smem, M, N, K) wrapping the template above are generated by cuda_kernels.py for the
// configurations a build calls (one line each, appended to this file).

// ---- int4 weight-only ----------------------------------------------------------------------
// y = bias: the first launch of the BCQ GEMVs (the int4 GEMV below stores the bias itself)
__device__ int lowbit_w4a16_init(const float* __restrict__ bias, float* __restrict__ y, int M,
                                 int N) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < M * N) y[i] = bias[i % N];
  return 0;
}

// ---- int4 weight-only GEMV (M <= 4): one launch, no y = bias kernel -------------------------
// Split-K partial sums of one column tile are combined without a pre-initialised y: the first
// block of a tile to finish (ticket 0 of its counter) stores bias + its sum, then raises bit 16
// of the counter (release); the others wait for that bit (acquire; the first block is already
// running, so this cannot deadlock) and add with fp32 atomics; the last one resets the counter
// to 0. The counters are zero when the module loads and every launch leaves them at zero, so
// launches of one module must not run concurrently on several streams.
#ifndef LOWBIT_GEMV_SEMS
#define LOWBIT_GEMV_SEMS 65536
#endif
__device__ unsigned lowbit_gemv_sem[LOWBIT_GEMV_SEMS];   // one per column tile (blockIdx.x)
#define LOWBIT_GEMV_XS 2048                              // floats of x a block stages

// 0.5 + q/32 from the byte q << 3 selected by sel = 0x7044 | (i << 8): one PRMT (bits 0x3F
// above it: exponent 2^-1, q in the top 4 mantissa bits)
__device__ __forceinline__ float lowbit_q32(unsigned v, unsigned sel) {
  return __int_as_float(__byte_perm(v, 0x3F000000u, sel));
}

// Block: 4 warps on one tile of 32 * VEC columns (VEC = 8 or 16 bytes, i.e. columns, per thread
// and row). The K/2 byte rows (one row = 2 k, one byte per column) are cut into batches of U
// rows; blockIdx.y takes an equal share of a tile's batches (within one), its warps equal
// shares of those. Each thread streams its own bytes through an S-stage cp.async ring in shared
// memory (S - 1 batches in flight while one is computed; no barrier: a thread reads only what
// it copied). Per group: part = sum_k x_k * (0.5 + q_k / 32) (one PRMT and one FMA per weight;
// a mask and a shift per 8 weights), sx = sum_k x_k, then acc += (32 part - 24 sx) * scale =
// sum_k x_k (q_k - 8) * scale. The first batches are in flight while x of the block's k range
// is staged in shared memory.
template <int VEC>
__device__ __forceinline__ void lowbit_gemv_cp(unsigned char* smem, const unsigned char* gmem) {
  unsigned s = (unsigned)__cvta_generic_to_shared(smem);
  if constexpr (VEC == 16)
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem));
  else
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8;\n" ::"r"(s), "l"(gmem));
}

template <int MR, int VEC, int U, int S>
__device__ __forceinline__ int lowbit_w4a16_gemv_impl(
    const float* __restrict__ x, const unsigned char* __restrict__ w,
    const float* __restrict__ scale, const float* __restrict__ bias, float* __restrict__ y,
    int N, int K, int group) {
  constexpr int WORDS = VEC / 4, TILE = 32 * VEC, WARPS = 4, THREADS = 32 * WARPS;
  constexpr int RING = S * U * THREADS * VEC, XSB = LOWBIT_GEMV_XS * 4;
  constexpr int RED = WARPS * MR * TILE * 4;
  constexpr int SMB = RING + XSB > RED ? RING + XSB : RED;
  __shared__ __align__(16) unsigned char smem[SMB];
  __shared__ unsigned ticket;
  float* xs = reinterpret_cast<float*>(smem + RING);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int n = blockIdx.x * TILE + lane * VEC;
  const int bpg = (group >> 1) / U, T = (K >> 1) / U;       // batches per group, per tile
  const int bb0 = (int)((long long)blockIdx.y * T / gridDim.y);
  const int nb = (int)((long long)(blockIdx.y + 1) * T / gridDim.y) - bb0;
  const int wb0 = bb0 + warp * nb / WARPS, tot = bb0 + (warp + 1) * nb / WARPS - wb0;
  const int rbeg = bb0 * U, nk = 2 * nb * U;                 // k of this block: nk % 4 == 0
  const bool active = n < N && tot > 0;
  unsigned char* mine = smem + tid * VEC;                    // slot s, row u: + (s U + u) THREADS VEC
  const unsigned char* src = w + (size_t)wb0 * U * N + n;
  int issued = active ? 0 : tot, slot_in = 0;
  auto issue = [&]() {
    if (issued < tot) {
#pragma unroll
      for (int u = 0; u < U; ++u)
        lowbit_gemv_cp<VEC>(mine + (slot_in * U + u) * THREADS * VEC, src + (size_t)u * N);
      src += (size_t)U * N;
      ++issued;
      if (++slot_in == S) slot_in = 0;
    }
    asm volatile("cp.async.commit_group;\n" ::);
  };
#pragma unroll
  for (int j = 0; j < S - 1; ++j) issue();                   // in flight while x is staged
  const int bpg0 = bpg > 0 ? bpg : 1;
  int bi = wb0 % bpg0, g = wb0 / bpg0;
  float sc[VEC];
  auto load_scales = [&]() {
    const float4* sp = reinterpret_cast<const float4*>(scale + (size_t)g * N + n);
#pragma unroll
    for (int q = 0; q < VEC / 4; ++q) {
      float4 s4 = __ldg(sp + q);
      sc[4 * q] = s4.x; sc[4 * q + 1] = s4.y; sc[4 * q + 2] = s4.z; sc[4 * q + 3] = s4.w;
    }
  };
  if (active) load_scales();
  for (int i = tid; i < MR * (nk >> 2); i += THREADS) {
    int m = i / (nk >> 2), j = i - m * (nk >> 2);
    reinterpret_cast<float4*>(xs + m * nk)[j] =
        __ldg(reinterpret_cast<const float4*>(x + (size_t)m * K + 2 * rbeg) + j);
  }
  __syncthreads();
  float acc[MR][VEC];
#pragma unroll
  for (int m = 0; m < MR; ++m)
#pragma unroll
    for (int c = 0; c < VEC; ++c) acc[m][c] = 0.f;
  if (active) {
    float part[MR][VEC], sx[MR];
    int slot = 0;
    const float* xr = xs + 2 * (wb0 * U - rbeg);
    for (int j = 0; j < tot; ++j) {
      issue();
      asm volatile("cp.async.wait_group %0;\n" ::"n"(S - 1));
      if (bi == 0 || j == 0) {                               // a group starts
#pragma unroll
        for (int m = 0; m < MR; ++m) {
          sx[m] = 0.f;
#pragma unroll
          for (int c = 0; c < VEC; ++c) part[m][c] = 0.f;
        }
        if (j > 0) load_scales();
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        unsigned v[WORDS];
        const unsigned char* rp = mine + (slot * U + u) * THREADS * VEC;
        if constexpr (VEC == 16) {
          uint4 q = *reinterpret_cast<const uint4*>(rp);
          v[0] = q.x; v[1] = q.y; v[2] = q.z; v[3] = q.w;
        } else {
          uint2 q = *reinterpret_cast<const uint2*>(rp);
          v[0] = q.x; v[1] = q.y;
        }
        float2 xx[MR];
#pragma unroll
        for (int m = 0; m < MR; ++m) {
          xx[m] = *reinterpret_cast<const float2*>(xr + m * nk + 2 * u);
          sx[m] += xx[m].x + xx[m].y;
        }
#pragma unroll
        for (int wi = 0; wi < WORDS; ++wi) {
          const unsigned lo = (v[wi] << 3) & 0x78787878u, hi = (v[wi] >> 1) & 0x78787878u;
#pragma unroll
          for (int c = 0; c < 4; ++c) {
            const float fl = lowbit_q32(lo, 0x7044u | (c << 8));
            const float fh = lowbit_q32(hi, 0x7044u | (c << 8));
#pragma unroll
            for (int m = 0; m < MR; ++m) {
              part[m][wi * 4 + c] = fmaf(xx[m].x, fl, part[m][wi * 4 + c]);
              part[m][wi * 4 + c] = fmaf(xx[m].y, fh, part[m][wi * 4 + c]);
            }
          }
        }
      }
      xr += 2 * U;
      if (++slot == S) slot = 0;
      if (++bi == bpg || j + 1 == tot) {                     // the group (or the range) ends
#pragma unroll
        for (int m = 0; m < MR; ++m)
#pragma unroll
          for (int c = 0; c < VEC; ++c)
            acc[m][c] = fmaf(fmaf(part[m][c], 32.f, -24.f * sx[m]), sc[c], acc[m][c]);
        if (bi == bpg) { bi = 0; ++g; }
      }
    }
    asm volatile("cp.async.wait_group 0;\n" ::);
  }
  __syncthreads();                         // ring and x no longer read: red[warp][m][col]
  float* red = reinterpret_cast<float*>(smem);
#pragma unroll
  for (int m = 0; m < MR; ++m)
#pragma unroll
    for (int q = 0; q < VEC / 4; ++q)
      reinterpret_cast<float4*>(red + (warp * MR + m) * TILE + lane * VEC)[q] =
          make_float4(acc[m][4 * q], acc[m][4 * q + 1], acc[m][4 * q + 2], acc[m][4 * q + 3]);
  const bool split = gridDim.y > 1;
  unsigned* sem = lowbit_gemv_sem + blockIdx.x;
  if (split && threadIdx.x == 0) ticket = atomicAdd(sem, 1u);
  __syncthreads();
  const bool first = !split || ticket == 0;
  if (!first) {                            // wait until the first block has stored y
    if (threadIdx.x == 0) {
      unsigned s;
      while (true) {
        asm volatile("ld.acquire.gpu.u32 %0, [%1];" : "=r"(s) : "l"(sem) : "memory");
        if (s & 0x10000u) break;
        __nanosleep(32);
      }
    }
    __syncthreads();
  }
  for (int i = threadIdx.x; i < MR * TILE; i += THREADS) {
    const int m = i / TILE, col = i - m * TILE, gn = blockIdx.x * TILE + col;
    float v = red[m * TILE + col];
#pragma unroll
    for (int wp = 1; wp < WARPS; ++wp) v += red[(wp * MR + m) * TILE + col];
    if (gn < N) {
      if (first) y[(size_t)m * N + gn] = v + bias[gn];
      else atomicAdd(y + (size_t)m * N + gn, v);
    }
  }
  if (split) {
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
      if (first) {
        atomicAdd(sem, 0x10000u);          // release: y holds bias + the first sum
      } else if (atomicAdd(sem, 1u) == 0x10000u + 2u * gridDim.y - 2u) {
        atomicExch(sem, 0u);               // the last of the 2 * splits - 1 increments
      }
    }
  }
  return 0;
}

// Device functions lowbit_w4a16_gemv_<MR>_v<VEC>_u<U>_s<S>(x, w, s, bias, y, N, K, g) are
// generated by cuda_kernels.py for the configurations a build calls.

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

// any M, tensor cores (sm_80+): the same y, 64x64 output tile, 4 warps (2 x 2, 32x32 each),
// mma.sync m16n8k16 f16 x f16 -> f32. k tiles of 32 (16 byte rows), register-prefetched one
// tile ahead into a double-buffered shared memory: x converted to fp16 as it is stored
// (xs[m][k]), weights decoded to fp16 (q - 8, exact: 0x6400 | q is 1024 + q) and stored
// ws[k][n] (B fragments through ldmatrix.trans). The scale is applied to the fp32 sums of each
// group (part, reset per group): acc += part * s[k/g, n]. Split-K over blockIdx.z (kchunk
// inputs each, a multiple of g): with gridDim.z > 1 the sums are added to y with fp32 atomics
// (y set to the bias by lowbit_w4a16_init first), else stored with the bias. Needs g % 32 == 0,
// K % g == 0, N % 8 == 0. Numerics: x rounded to fp16 (|x| must stay below 65504), products
// exact, fp32 sums.
__device__ __forceinline__ unsigned lowbit_h2_sub1032(unsigned v) {   // two halves 1024+q -> q-8
  unsigned r;
  asm("sub.f16x2 %0, %1, %2;\n" : "=r"(r) : "r"(v), "r"(0x64086408u));
  return r;
}
__device__ int lowbit_w4a16_gemm_tc(const float* __restrict__ x,
                                    const unsigned char* __restrict__ w,
                                    const float* __restrict__ scale,
                                    const float* __restrict__ bias, float* __restrict__ y, int M,
                                    int N, int K, int group, int kchunk) {
  constexpr int XS = 40, WS = 72;                    // padded row strides (halves)
  __shared__ __align__(16) unsigned short xs[2][64 * XS];
  __shared__ __align__(16) unsigned short ws[2][32 * WS];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = (warp >> 1) * 32, wn = (warp & 1) * 32;
  const int m0 = blockIdx.y * 64, n0 = blockIdx.x * 64;
  // loaders: x: 4 float4 a thread (rows tid/8 + 16 i, k 4 (tid%8)); w: 8 bytes (row tid/8, 8 cols)
  const int xr = tid >> 3, xk = (tid & 7) * 4, wr = tid >> 3, wc = (tid & 7) * 8;
  float4 xv[4];
  uint2 wv;
  auto load = [&](int k0) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      int gm = m0 + xr + 16 * i;
      xv[i] = gm < M ? *reinterpret_cast<const float4*>(x + (size_t)gm * K + k0 + xk)
                     : make_float4(0.f, 0.f, 0.f, 0.f);
    }
    int gn = n0 + wc;
    wv = gn < N ? *reinterpret_cast<const uint2*>(w + (size_t)((k0 >> 1) + wr) * N + gn)
                : make_uint2(0x88888888u, 0x88888888u);   // q = 8: zero weights
  };
  auto store = [&](int st) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      uint2 v;
      asm("cvt.rn.f16x2.f32 %0, %1, %2;\n" : "=r"(v.x) : "f"(xv[i].y), "f"(xv[i].x));
      asm("cvt.rn.f16x2.f32 %0, %1, %2;\n" : "=r"(v.y) : "f"(xv[i].w), "f"(xv[i].z));
      *reinterpret_cast<uint2*>(&xs[st][(xr + 16 * i) * XS + xk]) = v;
    }
    unsigned lo[4], hi[4];
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      unsigned v = j ? wv.y : wv.x;
#pragma unroll
      for (int h = 0; h < 2; ++h) {                  // bytes 2h, 2h+1 -> one half2
        unsigned t = __byte_perm(v, 0u, h ? 0x4342 : 0x4140);
        lo[2 * j + h] = lowbit_h2_sub1032((t & 0x000F000Fu) | 0x64006400u);
        hi[2 * j + h] = lowbit_h2_sub1032(((t >> 4) & 0x000F000Fu) | 0x64006400u);
      }
    }
    *reinterpret_cast<uint4*>(&ws[st][(2 * wr) * WS + wc]) = make_uint4(lo[0], lo[1], lo[2], lo[3]);
    *reinterpret_cast<uint4*>(&ws[st][(2 * wr + 1) * WS + wc]) =
        make_uint4(hi[0], hi[1], hi[2], hi[3]);
  };
  float acc[2][4][4] = {}, part[2][4][4] = {};
  const int kb = blockIdx.z * kchunk, tiles = (min(K, kb + kchunk) - kb) / 32;
  const int per_group = group / 32;
  load(kb);
  store(0);
  __syncthreads();
  for (int t = 0; t < tiles; ++t) {
    const int st = t & 1;
    if (t + 1 < tiles) load(kb + (t + 1) * 32);
#pragma unroll
    for (int kk = 0; kk < 32; kk += 16) {
      unsigned a[2][4], b[4][2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        unsigned addr = (unsigned)__cvta_generic_to_shared(
            &xs[st][(wm + 16 * i + (lane & 15)) * XS + kk + (lane >> 4) * 8]);
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(a[i][0]), "=r"(a[i][1]), "=r"(a[i][2]), "=r"(a[i][3]) : "r"(addr));
      }
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        unsigned addr = (unsigned)__cvta_generic_to_shared(
            &ws[st][(kk + (lane & 7) + ((lane >> 3) & 1) * 8) * WS + wn + 16 * j + (lane >> 4) * 8]);
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(b[2 * j][0]), "=r"(b[2 * j][1]), "=r"(b[2 * j + 1][0]),
                       "=r"(b[2 * j + 1][1]) : "r"(addr));
      }
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
          asm volatile(
              "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
              "{%8,%9}, {%0,%1,%2,%3};\n"
              : "+f"(part[i][j][0]), "+f"(part[i][j][1]), "+f"(part[i][j][2]),
                "+f"(part[i][j][3])
              : "r"(a[i][0]), "r"(a[i][1]), "r"(a[i][2]), "r"(a[i][3]), "r"(b[j][0]),
                "r"(b[j][1]));
    }
    if ((t + 1) % per_group == 0) {                  // end of a group: scale the fp32 sums
      const float* sg = scale + (size_t)((kb + t * 32) / group) * N;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        int n = n0 + wn + 8 * j + (lane & 3) * 2;
        float2 s = n < N ? *reinterpret_cast<const float2*>(sg + n) : make_float2(0.f, 0.f);
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          acc[i][j][0] = fmaf(part[i][j][0], s.x, acc[i][j][0]);
          acc[i][j][1] = fmaf(part[i][j][1], s.y, acc[i][j][1]);
          acc[i][j][2] = fmaf(part[i][j][2], s.x, acc[i][j][2]);
          acc[i][j][3] = fmaf(part[i][j][3], s.y, acc[i][j][3]);
#pragma unroll
          for (int c = 0; c < 4; ++c) part[i][j][c] = 0.f;
        }
      }
    }
    if (t + 1 < tiles) store(st ^ 1);
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      int n = n0 + wn + 8 * j + (lane & 3) * 2;
      if (n >= N) continue;
      float2 bb = gridDim.z == 1 ? *reinterpret_cast<const float2*>(bias + n)
                                 : make_float2(0.f, 0.f);
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        int m = m0 + wm + 16 * i + (lane >> 2) + 8 * h;
        if (m >= M) continue;
        float* yp = y + (size_t)m * N + n;
        if (gridDim.z == 1) {
          *reinterpret_cast<float2*>(yp) =
              make_float2(acc[i][j][2 * h] + bb.x, acc[i][j][2 * h + 1] + bb.y);
        } else {
          atomicAdd(yp, acc[i][j][2 * h]);
          atomicAdd(yp + 1, acc[i][j][2 * h + 1]);
        }
      }
    }
  return 0;
}

// ---- BCQ (binary-coding quantization) weight-only GEMV, LUT-GEMM style --------------------------
// lowbit_bcq_gemv_<MR>_q<Q>_c<COLS>_o<OFF>_p<PF>: y[m, n] += sum_k x[m, k] W'[n, k] for M = MR <= 4 rows,
//   W'[n, k] = sum_i alpha[n, k / g, i] B_i[n, k] (+ offset[n, k / g]), kernel layout (kernels/bcq.py)
//   planes [N/W, K/8, Q, W] u8, alpha [N/W, G, Q, W] f32, offset [N/W, G, W] f32.
// Block: a chunk of KC inputs (blockIdx.y) x 4 warps of COLS columns each (blockIdx.x). Per chunk
// the block builds in shared memory, per row m and per 4 inputs, the 16-entry table of every
// signed sum T[e] = sum_{j<4} (bit j of e ? +x : -x)[4 k4 + j] (LUT-GEMM). Lane L of a warp takes
// the plane bytes of input byte k8 = 32 j + L (j: step), so the tables are stored
// T[m][j][nibble][e][L]: each lane reads its own bank (no bank conflicts whatever the bytes).
// Per byte and plane: two lookups, one FMA with the plane's alpha (+ offset * sum of 8 x).
// At the end the COLS x MR sums are reduced across the 32 lanes (recursive halving shuffles)
// and added to y with fp32 atomics (y set to the bias by lowbit_w4a16_init first).
// PF: the plane bytes of the next step are loaded before this step's lookups (double buffer).
// Needs K % 8 == 0, g % 8 == 0, COLS dividing W.
// recursive halving of a[0 .. 2 O) over lanes: lane L keeps the half selected by L & O,
// adds its partner's (shfl_xor O); after O = 1 it holds the sum of column L % (2 O_first)
template <int O>
__device__ __forceinline__ void lowbit_halve(float* a, int lane) {
  const bool up = (lane & O) != 0;
#pragma unroll
  for (int i = 0; i < O; ++i) {
    float keep = up ? a[i + O] : a[i];
    float send = up ? a[i] : a[i + O];
    a[i] = keep + __shfl_xor_sync(0xffffffffu, send, O);
  }
  if constexpr (O > 1) lowbit_halve<O / 2>(a, lane);
}

// acc[c] += offset[c] * xs for the COLS columns of one row (the offset term of both BCQ GEMVs)
template <int COLS>
__device__ __forceinline__ void lowbit_bcq_offset(float* acc, const float* __restrict__ op,
                                                  float xs) {
#pragma unroll
  for (int q4 = 0; q4 < COLS / 4; ++q4) {
    const float4 o4 = __ldg(reinterpret_cast<const float4*>(op + q4 * 4));
    acc[q4 * 4 + 0] = fmaf(o4.x, xs, acc[q4 * 4 + 0]);
    acc[q4 * 4 + 1] = fmaf(o4.y, xs, acc[q4 * 4 + 1]);
    acc[q4 * 4 + 2] = fmaf(o4.z, xs, acc[q4 * 4 + 2]);
    acc[q4 * 4 + 3] = fmaf(o4.w, xs, acc[q4 * 4 + 3]);
  }
}

template <int MR, int Q, int COLS, bool OFF, bool PF>
__device__ __forceinline__ int lowbit_bcq_gemv_impl(
    const float* __restrict__ x, const unsigned char* __restrict__ planes,
    const float* __restrict__ alpha, const float* __restrict__ offset, float* __restrict__ y,
    float* __restrict__ lut, int N, int NP, int K, int group, int W, int KC) {
  static_assert(COLS == 16 || COLS == 32, "COLS: 16 or 32 columns per warp");
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nthreads = blockDim.x;
  const int KB = K >> 3, G = K / group, NBLK = NP / W;
  const int k0 = blockIdx.y * KC, kend = min(K, k0 + KC);
  const int steps = (KC + 255) >> 8;
  // ---- tables: MR * steps * 2 * 16 * 32 floats; one unit = the 16 entries of 4 inputs for
  // one lane (one float4 of x, 16 conflict-free stores)
  const int units = MR * steps * 64;
  for (int u = threadIdx.x; u < units; u += nthreads) {
    const int L = u & 31, s = (u >> 5) & 1, j = (u >> 6) % steps, m = (u >> 6) / steps;
    const int k = k0 + (j * 32 + L) * 8 + s * 4;
    float4 xx = make_float4(0.f, 0.f, 0.f, 0.f);
    if (k < kend) xx = __ldg(reinterpret_cast<const float4*>(x + (size_t)m * K + k));
    const float lo[4] = {-xx.x - xx.y, xx.x - xx.y, -xx.x + xx.y, xx.x + xx.y};
    const float hi[4] = {-xx.z - xx.w, xx.z - xx.w, -xx.z + xx.w, xx.z + xx.w};
    float* dst = lut + (size_t)((m * steps + j) * 2 + s) * 512 + L;
#pragma unroll
    for (int e = 0; e < 16; ++e) dst[e * 32] = (k < kend) ? lo[e & 3] + hi[e >> 2] : 0.f;
  }
  __syncthreads();
  const int n0 = (blockIdx.x * (nthreads >> 5) + warp) * COLS;   // first column of this warp
  if (n0 >= NP) return 0;
  const int b = n0 / W, l0 = n0 % W;
  float acc[MR][COLS];
#pragma unroll
  for (int m = 0; m < MR; ++m)
#pragma unroll
    for (int c = 0; c < COLS; ++c) acc[m][c] = 0.f;
  uint4 pv[Q][COLS / 16], nx[Q][COLS / 16];
  auto load_planes = [&](uint4 (&dst)[Q][COLS / 16], int k8) {
    const unsigned char* pp = planes + ((size_t)b * KB + k8) * Q * W + l0;
#pragma unroll
    for (int i = 0; i < Q; ++i)
#pragma unroll
      for (int h = 0; h < COLS / 16; ++h)
        dst[i][h] = __ldg(reinterpret_cast<const uint4*>(pp + i * W + h * 16));
  };
  if (PF && (k0 >> 3) + lane < (kend >> 3)) load_planes(nx, (k0 >> 3) + lane);
  for (int j = 0; j < steps; ++j) {
    const int k8 = (k0 >> 3) + j * 32 + lane;
    if (k8 * 8 >= kend) break;      // lanes only: no __syncwarp inside the loop
    const int g = (k8 * 8) / group;
    if constexpr (PF) {
#pragma unroll
      for (int i = 0; i < Q; ++i)
#pragma unroll
        for (int h = 0; h < COLS / 16; ++h) pv[i][h] = nx[i][h];
      if ((k8 + 32) * 8 < kend && j + 1 < steps) load_planes(nx, k8 + 32);   // next step's bytes
    } else {
      load_planes(pv, k8);
    }
    const float* t0 = lut + (size_t)j * 1024 + lane;          // + m * steps * 1024
    const float* ap = alpha + ((size_t)b * G + g) * Q * W + l0;
#pragma unroll
    for (int i = 0; i < Q; ++i) {
#pragma unroll
      for (int h = 0; h < COLS / 16; ++h) {
        unsigned wv[4] = {pv[i][h].x, pv[i][h].y, pv[i][h].z, pv[i][h].w};
#pragma unroll
        for (int q4 = 0; q4 < 4; ++q4) {
          float4 a4 = __ldg(reinterpret_cast<const float4*>(ap + i * W + h * 16 + q4 * 4));
          float av[4] = {a4.x, a4.y, a4.z, a4.w};
#pragma unroll
          for (int c = 0; c < 4; ++c) {
            unsigned byte = (wv[q4] >> (8 * c)) & 0xFFu;
            const int col = h * 16 + q4 * 4 + c;
#pragma unroll
            for (int m = 0; m < MR; ++m) {
              const float* tm = t0 + (size_t)m * steps * 1024;
              float v = tm[(byte & 15u) << 5] + tm[512 + ((byte >> 4) << 5)];
              acc[m][col] = fmaf(av[c], v, acc[m][col]);
            }
          }
        }
      }
    }
    if constexpr (OFF) {
      const float* op = offset + ((size_t)b * G + g) * W + l0;
#pragma unroll
      for (int m = 0; m < MR; ++m) {
        const float* tm = t0 + (size_t)m * steps * 1024;
        float xs = tm[15 << 5] + tm[512 + (15 << 5)];      // sum of the lane's 8 inputs
        lowbit_bcq_offset<COLS>(acc[m], op, xs);
      }
    }
  }
  // ---- reduce over the 32 lanes: recursive halving, then lane L holds column L % COLS
#pragma unroll
  for (int m = 0; m < MR; ++m) {
    lowbit_halve<COLS / 2>(acc[m], lane);
    if (COLS == 16) acc[m][0] += __shfl_xor_sync(0xffffffffu, acc[m][0], 16);
    const int n = b * W + l0 + (lane & (COLS - 1));
    if (lane < COLS && n < N) atomicAdd(y + (size_t)m * N + n, acc[m][0]);
  }
  (void)NBLK;
  return 0;
}

// lowbit_bcq_t256_<MR>_q<Q>_o<OFF>: the same GEMV for MR <= 2 rows with 256-entry tables, one
// lookup per plane byte instead of two. Block: 8 warps x 32 columns, KC = 512 inputs (two steps
// of 32 plane bytes per lane). Lane L of step j takes input byte k8 = 32 j + L and its table
// T[m][e][j][L] = sum_{b<8} (bit b of e ? +x : -x)[8 k8 + b] (64 KiB per row m): the byte offset
// of entry e is e*256 + j*128 + 4L, which one PRMT builds from the plane byte and the lane's
// offset, so a plane byte costs PRMT + LDS + FFMA. Each lane reads only its own bank. Needs
// W % 32 == 0 (64-column blocks), K % 8 == 0, g % 8 == 0; the table must be the only dynamic
// shared memory of the launch (it is checked against the extern symbol).
extern __shared__ __align__(16) unsigned char lowbit_dyn_smem[];

template <int MR, int Q, bool OFF>
__device__ __forceinline__ int lowbit_bcq_t256_impl(
    const float* __restrict__ x, const unsigned char* __restrict__ planes,
    const float* __restrict__ alpha, const float* __restrict__ offset, float* __restrict__ y,
    const unsigned char* lut, int N, int NP, int K, int group, int W) {
  static_assert(MR >= 1 && MR <= 2, "MR: 1 or 2 rows (64 KiB of tables per row)");
  constexpr int COLS = 32, KC = 512;
  if (lut != lowbit_dyn_smem) __trap();            // the offsets below assume the table at 0
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nthreads = blockDim.x;
  const int KB = K >> 3, G = K / group;
  const int k0 = blockIdx.y * KC, kend = min(K, k0 + KC);
  // ---- tables: unit (m, j, L, quarter qq) = 16 low-nibble sums x 4 high-nibble sums
  for (int u = threadIdx.x; u < MR * 2 * 32 * 4; u += nthreads) {
    const int L = u & 31, qq = (u >> 5) & 3, j = (u >> 7) & 1, m = u >> 8;
    const int k = k0 + (j * 32 + L) * 8;
    float4 xa = make_float4(0.f, 0.f, 0.f, 0.f), xb = xa;
    if (k < kend) {
      xa = __ldg(reinterpret_cast<const float4*>(x + (size_t)m * K + k));
      xb = __ldg(reinterpret_cast<const float4*>(x + (size_t)m * K + k + 4));
    }
    float lo[16];
#pragma unroll
    for (int e = 0; e < 16; ++e)
      lo[e] = ((e & 1) ? xa.x : -xa.x) + ((e & 2) ? xa.y : -xa.y) + ((e & 4) ? xa.z : -xa.z) +
              ((e & 8) ? xa.w : -xa.w);
    float* dst = reinterpret_cast<float*>(lowbit_dyn_smem) + (size_t)m * 16384 + j * 32 + L;
#pragma unroll
    for (int h = 0; h < 4; ++h) {
      const int eh = qq * 4 + h;
      const float hv = ((eh & 1) ? xb.x : -xb.x) + ((eh & 2) ? xb.y : -xb.y) +
                       ((eh & 4) ? xb.z : -xb.z) + ((eh & 8) ? xb.w : -xb.w);
#pragma unroll
      for (int l = 0; l < 16; ++l) dst[(eh * 16 + l) * 64] = lo[l] + hv;
    }
  }
  __syncthreads();
  const int n0 = (blockIdx.x * (nthreads >> 5) + warp) * COLS;
  if (n0 >= NP) return 0;
  const int b = n0 / W, l0 = n0 % W;
  float acc[MR][COLS];
#pragma unroll
  for (int m = 0; m < MR; ++m)
#pragma unroll
    for (int c = 0; c < COLS; ++c) acc[m][c] = 0.f;
#pragma unroll
  for (int j = 0; j < 2; ++j) {
    const int k8 = (k0 >> 3) + j * 32 + lane;
    if (k8 * 8 >= kend) break;      // lanes only: no __syncwarp inside the loop
    const int g = (k8 * 8) / group;
    const unsigned ofs = j * 128 + lane * 4;
    uint4 pv[Q][2];
    const unsigned char* pp = planes + ((size_t)b * KB + k8) * Q * W + l0;
#pragma unroll
    for (int i = 0; i < Q; ++i)
#pragma unroll
      for (int h = 0; h < 2; ++h) pv[i][h] = __ldg(reinterpret_cast<const uint4*>(pp + i * W + h * 16));
    const float* ap = alpha + ((size_t)b * G + g) * Q * W + l0;
#pragma unroll
    for (int i = 0; i < Q; ++i) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const unsigned wv[4] = {pv[i][h].x, pv[i][h].y, pv[i][h].z, pv[i][h].w};
#pragma unroll
        for (int q4 = 0; q4 < 4; ++q4) {
          const float4 a4 = __ldg(reinterpret_cast<const float4*>(ap + i * W + h * 16 + q4 * 4));
          const float av[4] = {a4.x, a4.y, a4.z, a4.w};
#pragma unroll
          for (int c = 0; c < 4; ++c) {
            // byte 0 <- the lane's offset, byte 1 <- plane byte c, bytes 2, 3 <- 0
            const unsigned off = __byte_perm(wv[q4], ofs, 0x5504u + 16u * c);
            const int col = h * 16 + q4 * 4 + c;
#pragma unroll
            for (int m = 0; m < MR; ++m) {
              const float v = *reinterpret_cast<const float*>(lowbit_dyn_smem + m * 65536 + off);
              acc[m][col] = fmaf(av[c], v, acc[m][col]);
            }
          }
        }
      }
    }
    if constexpr (OFF) {
      const float* op = offset + ((size_t)b * G + g) * W + l0;
#pragma unroll
      for (int m = 0; m < MR; ++m) {   // entry 255: the sum of the lane's 8 inputs
        const float xs = *reinterpret_cast<const float*>(lowbit_dyn_smem + m * 65536 + 255 * 256 + ofs);
        lowbit_bcq_offset<COLS>(acc[m], op, xs);
      }
    }
  }
#pragma unroll
  for (int m = 0; m < MR; ++m) {
    lowbit_halve<COLS / 2>(acc[m], lane);
    const int n = b * W + l0 + lane;
    if (n < N) atomicAdd(y + (size_t)m * N + n, acc[m][0]);
  }
  return 0;
}

// Device functions lowbit_bcq_gemv_<MR>_q<Q>_c<COLS>_o<OFF>_p<PF>(x, planes, alpha, offset, y, lut, N,
// NP, K, group, W, KC) are generated by cuda_kernels.py for the configurations a build calls.
#endif  // LOWBIT_CUDA_KERNELS
