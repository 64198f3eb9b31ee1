// lowbit int8 GEMM for sm_90a (Hopper): wgmma + TMA + warp-specialised mbarrier pipeline.
// Issue 20, item 1: standalone (host launcher below; build: scripts/build_wgmma.py) and, for
// sm_90a targets, the TVM route (kernels/cuda.py shell_u8s8_wgmma calls the device entry points
// lowbit_wgmma_u8s8_<BM>x<BN>_s<S>; see docs/gpu.md "wgmma int8 GEMM (issue 20, item 1)").
//   nvcc -gencode=arch=compute_90a,code=sm_90a -O3 -shared -Xcompiler -fPIC
//
// Computes, like lowbit_gemm_u8s8_* in cuda_kernels.cu (same epilogue arithmetic):
//   y[m, n] = f32(sum_k x_u8[m, k] * w_s8[n, k] - corr[n]) * scale[n] + bias[n]      (fp32 y)
// x: [M, K] uint8 row-major, w: [N, K] int8 row-major (both K-major: the only major-ness
// wgmma accepts for 8-bit operands), corr: [N] int32, scale, bias: [N] fp32, y: [M, N] fp32.
// The int32 accumulation is exact; the epilogue rounds like the mma.sync kernel's.
//
// Weight layout: plain row-major [N, K] s8 here. The packed layout of the TVM path
// (VNNI [Np/16, K/4, 16, 4], pack.py) is NOT what TMA + wgmma want; wiring this kernel in
// means packing the weight for sm_90a as row-major [Np, K] (Np = N rounded up to the tile,
// i.e. the transpose of today's permute: w.reshape(Np/16, K/4, 16, 4).permute(0, 2, 1, 3) ->
// [Np, K]), chosen by the target at packing time, since the 128-byte swizzle is applied by
// the TMA unit on the way into shared memory, not stored in device memory.
//
// Design (configurations "<BM>x<BN>_s<STAGES>[_p]"; one CTA computes BM x BN output tiles
// tile = blockIdx.x, blockIdx.x + gridDim.x, ... (N fastest): one tile each on a grid of
// all tiles, or persistent ("_p": grid = min(tiles, SMs x CTAs per SM)), where the producer
// runs ahead into the next tile's k tiles while the consumers are in the epilogue):
// - BM = 128: 3 warpgroups (384 threads): warpgroup 0 is the producer (one elected thread
//   issues the TMA copies), warpgroups 1 and 2 are consumers, each owning 64 rows of the
//   tile (one wgmma m64nBNk32 per 32 bytes of k). setmaxnreg gives the producer 40
//   registers and the consumers 232 (128*40 + 256*232 = 64512 <= 65536; ptxas caps the
//   kernel at 168 = 65536/384 by __launch_bounds__(384, 1), so one CTA is resident per SM
//   and the re-balancing always finds the registers it asks for).
// - BM = 64: 2 warpgroups (256 threads), one consumer; __launch_bounds__(256, 2) (cap 128
//   registers), producer 40, consumer 216: two CTAs per SM, so one CTA's epilogue overlaps
//   the other's main loop, and small problems spread over twice as many CTAs.
// - k tiles of BK = 128 bytes (= 128 int8 = one 128-byte swizzle row), STAGES-deep ring of
//   shared-memory stages [A: BM x 128 B | B: BN x 128 B], each stage 1024-byte aligned (the
//   128B swizzle pattern repeats every 8 rows x 128 B = 1024 B; TMA and the wgmma descriptor
//   agree on it only when the base is 1024-aligned, base_offset = 0).
// - Per stage two mbarriers: full[s] (count 1: the producer's arrive.expect_tx; the TMA unit
//   completes the transaction bytes) and empty[s] (count 4 * consumer warpgroups: lane 0 of
//   every consumer warp arrives once the wgmma reading the stage has completed).
// - TMA: cp.async.bulk.tensor.2d, tensor maps (CUtensorMap, 128B swizzle, box 128 x rows)
//   passed by value as __grid_constant__ kernel parameters, built on the host by
//   cuTensorMapEncodeTiled (found through cudaGetDriverEntryPointByVersion: no -lcuda).
//   Out-of-bounds boxes (M, N not a multiple of the tile, K not of 128) are zero-filled by
//   the TMA unit and still count their full box bytes towards complete_tx; zeros add
//   nothing to the sums and the epilogue stores only m < M, n < N.
// - Epilogue straight from the wgmma accumulator registers (fragment layout below) to y,
//   8-byte stores; corr / scale / bias of the tile are loaded before its main loop and
//   staged through shared memory (per consumer warpgroup), not loaded per column pair.
//
// Shapes: any M, N >= 1; K >= 16 with K % 16 == 0 (TMA: global row stride a multiple of
// 16 bytes); x and w 16-byte aligned. Anything else is refused (return codes below).

#include <cuda.h>          // CUtensorMap and its enums only; the driver is reached at run time
#include <cuda_runtime.h>
#include <stdint.h>

namespace lbw {

constexpr int BK = 128;              // bytes (int8 elements) of k per stage: one swizzle row

// ---- shared memory, mbarriers ----------------------------------------------------------------
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
// The producer's arrival (count 1) that also announces how many bytes the TMA unit will
// deliver to this phase; the phase completes when both the arrival and the bytes are in.
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// Waits until the phase with the given parity has completed. A freshly initialised barrier
// is in phase 0, so waiting for parity 1 returns at once (the "previous" phase counts as
// complete): that is how the producer's first pass over the empty barriers does not block.
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  uint32_t done;
  do {
    asm volatile(
        "{\n.reg .pred p;\n"
        "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        "selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
  } while (!done);
}

// ---- TMA -------------------------------------------------------------------------------------
// 2-D tile copy global -> shared; c0 is the innermost coordinate (k, in bytes = elements), c1
// the row. Completion is signalled on the mbarrier as transaction bytes. A CTA launched
// without clusters is a cluster of one, so its shared::cta addresses are valid
// shared::cluster addresses.
__device__ __forceinline__ void tma_load_2d(uint32_t dst, const CUtensorMap* map, uint32_t bar,
                                            int c0, int c1) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%3, %4}], [%2];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(bar), "r"(c0), "r"(c1)
      : "memory");
}
__device__ __forceinline__ void tma_prefetch_desc(const CUtensorMap* map) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
}

// ---- wgmma -----------------------------------------------------------------------------------
// Shared-memory matrix descriptor (64 bit), for a K-major operand tile written by TMA with
// CU_TENSOR_MAP_SWIZZLE_128B: rows of 128 bytes (k), 16-byte chunks XOR-ed with (row % 8).
//   bits  0-13  start address >> 4 (shared window address of the first row of this wgmma's
//               operand, plus the k offset of this k32 step: 32 B per step, see below)
//   bits 16-29  leading dimension byte offset >> 4: unused for swizzled K-major layouts (the
//               whole k extent of one wgmma, 32 B, lies inside one 128-byte swizzle row);
//               set to 1 (16 B) as CUTLASS does
//   bits 32-45  stride dimension byte offset >> 4: distance between consecutive groups of 8
//               rows (8 x 128 B = 1024 B) -> 64
//   bits 49-51  base offset: 0, because every stage is 1024-byte aligned
//   bits 62-63  layout type: 1 = SWIZZLE_128B (2 = 64B, 3 = 32B, 0 = no swizzle)
// Stepping k by 32 bytes inside the 128-byte row is done by adding 32 >> 4 = 2 to the start
// address field: the hardware applies the swizzle XOR to the final address bits [4:6] from
// bits [7:9] (the row within the 1024-byte atom), exactly as TMA did when writing, so the
// offsets 0, 32, 64, 96 select the right 16-byte chunks. (Same scheme as CUTLASS's and
// DeepGEMM's K-major SW128 descriptors.) The field cannot carry: addresses < 228 KiB.
__device__ __forceinline__ uint64_t sw128_desc(uint32_t saddr) {
  uint64_t d = 0;
  d |= static_cast<uint64_t>((saddr & 0x3FFFF) >> 4);
  d |= static_cast<uint64_t>(16 >> 4) << 16;
  d |= static_cast<uint64_t>(1024 >> 4) << 32;
  d |= static_cast<uint64_t>(1) << 62;
  return d;
}

// Ordering of register accesses around the asynchronous wgmma:
// - wgmma.fence: before the first wgmma of a batch, orders this warpgroup's earlier register
//   accesses (the zero-initialisation of the accumulators, the previous epilogue) and shared
//   memory accesses before the wgmma reads them. Issued once per k tile before its 4 wgmmas;
//   consecutive wgmmas on the same accumulator need no fence between them.
// - wgmma.commit_group: closes the batch of wgmmas issued so far into one group.
// - wgmma.wait_group N: waits until at most N groups are pending. The accumulators must not
//   be touched while a group writing them is pending; wait_group 1 after committing tile t
//   means tile t-1's group is complete, so the stage it read can be handed back to the
//   producer, while tile t's wgmmas keep the tensor cores busy.
// - acc_fence: an empty asm that "reads and writes" every accumulator register, so that the
//   compiler neither moves accumulator accesses across the wgmma fence/wait instructions nor
//   keeps stale copies (the wgmma asm itself lists them as "+r").
__device__ __forceinline__ void wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
template <int R>
__device__ __forceinline__ void acc_fence(int (&d)[R]) {
#pragma unroll
  for (int i = 0; i < R; ++i) asm volatile("" : "+r"(d[i])::"memory");
}

// D[64 x BN] (+)= A[64 x 32] * B[32 x BN] (u8 x s8 -> s32), A and B from shared memory via the
// descriptors. scale-d (a predicate) = 1: D += A*B; the accumulators start at zero.
// Accumulator fragment (per thread t of the warpgroup: warp w = t / 32, lane l):
//   d[4 i + 2 h + e] = D[16 w + l / 4 + 8 h][8 i + 2 (l % 4) + e],  i < BN / 8, h, e in {0, 1}
template <int BN>
__device__ __forceinline__ void wgmma_u8s8(int (&d)[BN / 2], uint64_t da, uint64_t db);

template <>
__device__ __forceinline__ void wgmma_u8s8<64>(int (&d)[32], uint64_t da, uint64_t db) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k32.s32.u8.s8 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
      "}, %32, %33, p;\n}\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]), "+r"(d[4]), "+r"(d[5]), "+r"(d[6]), "+r"(d[7]),
        "+r"(d[8]), "+r"(d[9]), "+r"(d[10]), "+r"(d[11]), "+r"(d[12]), "+r"(d[13]), "+r"(d[14]), "+r"(d[15]),
        "+r"(d[16]), "+r"(d[17]), "+r"(d[18]), "+r"(d[19]), "+r"(d[20]), "+r"(d[21]), "+r"(d[22]), "+r"(d[23]),
        "+r"(d[24]), "+r"(d[25]), "+r"(d[26]), "+r"(d[27]), "+r"(d[28]), "+r"(d[29]), "+r"(d[30]), "+r"(d[31])
      : "l"(da), "l"(db), "r"(1));
}

template <>
__device__ __forceinline__ void wgmma_u8s8<128>(int (&d)[64], uint64_t da, uint64_t db) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k32.s32.u8.s8 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
      "}, %64, %65, p;\n}\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]), "+r"(d[4]), "+r"(d[5]), "+r"(d[6]), "+r"(d[7]),
        "+r"(d[8]), "+r"(d[9]), "+r"(d[10]), "+r"(d[11]), "+r"(d[12]), "+r"(d[13]), "+r"(d[14]), "+r"(d[15]),
        "+r"(d[16]), "+r"(d[17]), "+r"(d[18]), "+r"(d[19]), "+r"(d[20]), "+r"(d[21]), "+r"(d[22]), "+r"(d[23]),
        "+r"(d[24]), "+r"(d[25]), "+r"(d[26]), "+r"(d[27]), "+r"(d[28]), "+r"(d[29]), "+r"(d[30]), "+r"(d[31]),
        "+r"(d[32]), "+r"(d[33]), "+r"(d[34]), "+r"(d[35]), "+r"(d[36]), "+r"(d[37]), "+r"(d[38]), "+r"(d[39]),
        "+r"(d[40]), "+r"(d[41]), "+r"(d[42]), "+r"(d[43]), "+r"(d[44]), "+r"(d[45]), "+r"(d[46]), "+r"(d[47]),
        "+r"(d[48]), "+r"(d[49]), "+r"(d[50]), "+r"(d[51]), "+r"(d[52]), "+r"(d[53]), "+r"(d[54]), "+r"(d[55]),
        "+r"(d[56]), "+r"(d[57]), "+r"(d[58]), "+r"(d[59]), "+r"(d[60]), "+r"(d[61]), "+r"(d[62]), "+r"(d[63])
      : "l"(da), "l"(db), "r"(1));
}

template <>
__device__ __forceinline__ void wgmma_u8s8<192>(int (&d)[96], uint64_t da, uint64_t db) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %98, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n192k32.s32.u8.s8 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
      "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
      "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95"
      "}, %96, %97, p;\n}\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]), "+r"(d[4]), "+r"(d[5]), "+r"(d[6]), "+r"(d[7]),
        "+r"(d[8]), "+r"(d[9]), "+r"(d[10]), "+r"(d[11]), "+r"(d[12]), "+r"(d[13]), "+r"(d[14]), "+r"(d[15]),
        "+r"(d[16]), "+r"(d[17]), "+r"(d[18]), "+r"(d[19]), "+r"(d[20]), "+r"(d[21]), "+r"(d[22]), "+r"(d[23]),
        "+r"(d[24]), "+r"(d[25]), "+r"(d[26]), "+r"(d[27]), "+r"(d[28]), "+r"(d[29]), "+r"(d[30]), "+r"(d[31]),
        "+r"(d[32]), "+r"(d[33]), "+r"(d[34]), "+r"(d[35]), "+r"(d[36]), "+r"(d[37]), "+r"(d[38]), "+r"(d[39]),
        "+r"(d[40]), "+r"(d[41]), "+r"(d[42]), "+r"(d[43]), "+r"(d[44]), "+r"(d[45]), "+r"(d[46]), "+r"(d[47]),
        "+r"(d[48]), "+r"(d[49]), "+r"(d[50]), "+r"(d[51]), "+r"(d[52]), "+r"(d[53]), "+r"(d[54]), "+r"(d[55]),
        "+r"(d[56]), "+r"(d[57]), "+r"(d[58]), "+r"(d[59]), "+r"(d[60]), "+r"(d[61]), "+r"(d[62]), "+r"(d[63]),
        "+r"(d[64]), "+r"(d[65]), "+r"(d[66]), "+r"(d[67]), "+r"(d[68]), "+r"(d[69]), "+r"(d[70]), "+r"(d[71]),
        "+r"(d[72]), "+r"(d[73]), "+r"(d[74]), "+r"(d[75]), "+r"(d[76]), "+r"(d[77]), "+r"(d[78]), "+r"(d[79]),
        "+r"(d[80]), "+r"(d[81]), "+r"(d[82]), "+r"(d[83]), "+r"(d[84]), "+r"(d[85]), "+r"(d[86]), "+r"(d[87]),
        "+r"(d[88]), "+r"(d[89]), "+r"(d[90]), "+r"(d[91]), "+r"(d[92]), "+r"(d[93]), "+r"(d[94]), "+r"(d[95])
      : "l"(da), "l"(db), "r"(1));
}

template <>
__device__ __forceinline__ void wgmma_u8s8<256>(int (&d)[128], uint64_t da, uint64_t db) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k32.s32.u8.s8 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
      "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
      "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "
      "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "
      "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
      "}, %128, %129, p;\n}\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]), "+r"(d[4]), "+r"(d[5]), "+r"(d[6]), "+r"(d[7]),
        "+r"(d[8]), "+r"(d[9]), "+r"(d[10]), "+r"(d[11]), "+r"(d[12]), "+r"(d[13]), "+r"(d[14]), "+r"(d[15]),
        "+r"(d[16]), "+r"(d[17]), "+r"(d[18]), "+r"(d[19]), "+r"(d[20]), "+r"(d[21]), "+r"(d[22]), "+r"(d[23]),
        "+r"(d[24]), "+r"(d[25]), "+r"(d[26]), "+r"(d[27]), "+r"(d[28]), "+r"(d[29]), "+r"(d[30]), "+r"(d[31]),
        "+r"(d[32]), "+r"(d[33]), "+r"(d[34]), "+r"(d[35]), "+r"(d[36]), "+r"(d[37]), "+r"(d[38]), "+r"(d[39]),
        "+r"(d[40]), "+r"(d[41]), "+r"(d[42]), "+r"(d[43]), "+r"(d[44]), "+r"(d[45]), "+r"(d[46]), "+r"(d[47]),
        "+r"(d[48]), "+r"(d[49]), "+r"(d[50]), "+r"(d[51]), "+r"(d[52]), "+r"(d[53]), "+r"(d[54]), "+r"(d[55]),
        "+r"(d[56]), "+r"(d[57]), "+r"(d[58]), "+r"(d[59]), "+r"(d[60]), "+r"(d[61]), "+r"(d[62]), "+r"(d[63]),
        "+r"(d[64]), "+r"(d[65]), "+r"(d[66]), "+r"(d[67]), "+r"(d[68]), "+r"(d[69]), "+r"(d[70]), "+r"(d[71]),
        "+r"(d[72]), "+r"(d[73]), "+r"(d[74]), "+r"(d[75]), "+r"(d[76]), "+r"(d[77]), "+r"(d[78]), "+r"(d[79]),
        "+r"(d[80]), "+r"(d[81]), "+r"(d[82]), "+r"(d[83]), "+r"(d[84]), "+r"(d[85]), "+r"(d[86]), "+r"(d[87]),
        "+r"(d[88]), "+r"(d[89]), "+r"(d[90]), "+r"(d[91]), "+r"(d[92]), "+r"(d[93]), "+r"(d[94]), "+r"(d[95]),
        "+r"(d[96]), "+r"(d[97]), "+r"(d[98]), "+r"(d[99]), "+r"(d[100]), "+r"(d[101]), "+r"(d[102]), "+r"(d[103]),
        "+r"(d[104]), "+r"(d[105]), "+r"(d[106]), "+r"(d[107]), "+r"(d[108]), "+r"(d[109]), "+r"(d[110]), "+r"(d[111]),
        "+r"(d[112]), "+r"(d[113]), "+r"(d[114]), "+r"(d[115]), "+r"(d[116]), "+r"(d[117]), "+r"(d[118]), "+r"(d[119]),
        "+r"(d[120]), "+r"(d[121]), "+r"(d[122]), "+r"(d[123]), "+r"(d[124]), "+r"(d[125]), "+r"(d[126]), "+r"(d[127])
      : "l"(da), "l"(db), "r"(1));
}

// ---- the kernel ------------------------------------------------------------------------------
// A configuration: BM (64: one consumer warpgroup, 256 threads, two CTAs per SM; 128: two
// consumer warpgroups, 384 threads, one CTA per SM), BN, STAGES. The grid is a host choice:
// one CTA per tile, or persistent (at most MINB CTAs per SM, each walking tiles
// blockIdx.x, blockIdx.x + gridDim.x, ...); the kernel body is the same for both.
template <int BM_, int BN_, int STAGES_>
struct Cfg {
  static constexpr int BM = BM_, BN = BN_, STAGES = STAGES_;
  static constexpr int CONSUMERS = BM / 64;                    // consumer warpgroups
  static constexpr int THREADS = 128 * (1 + CONSUMERS);
  static constexpr int MINB = CONSUMERS == 1 ? 2 : 1;          // CTAs per SM (launch bounds)
  // registers per thread at launch: ptxas allocates the __launch_bounds__ cap for kernels
  // with setmaxnreg (168 for 384 x 1, 128 for 256 x 2; scripts/build_wgmma.py checks it);
  // the producer gives back down to PRODUCER_REGS, the consumers take the rest
  static constexpr int LAUNCH_REGS = (65536 / (THREADS * MINB)) & ~7;
  static constexpr int PRODUCER_REGS = 40;
  static constexpr int CONSUMER_REGS_RAW =
      ((LAUNCH_REGS * THREADS - 128 * PRODUCER_REGS) / (128 * CONSUMERS)) & ~7;
  static constexpr int CONSUMER_REGS = CONSUMER_REGS_RAW > 232 ? 232 : CONSUMER_REGS_RAW;
  static constexpr int A_BYTES = BM * BK;
  static constexpr int B_BYTES = BN * BK;
  static constexpr int STAGE_BYTES = A_BYTES + B_BYTES;        // multiple of 1024
  static constexpr int BAR_BYTES = 16 * STAGES;                // full[], empty[]
  static constexpr int PARAM_BYTES = CONSUMERS * 3 * BN * 4;   // corr, scale, bias per consumer
  static constexpr int SMEM = STAGES * STAGE_BYTES + BAR_BYTES + PARAM_BYTES + 1024;  // + align
  static_assert(STAGE_BYTES % 1024 == 0, "stages must stay 1024-byte aligned");
  static_assert(BM == 64 || BM == 128, "BM: 64 or 128");
  static_assert(BN % 64 == 0 && BN <= 256, "BN: TMA box rows <= 256");
  static_assert(128 * PRODUCER_REGS + 128 * CONSUMERS * CONSUMER_REGS <= LAUNCH_REGS * THREADS,
                "register split exceeds the CTA's allocation");
  static_assert(CONSUMER_REGS >= BN / 2 + 64, "too few consumer registers for the accumulators");
  static_assert(SMEM * MINB <= 228 * 1024 - 1024 * MINB && SMEM <= 227 * 1024, "shared memory");
};

__device__ __forceinline__ void named_bar(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// The kernel body as a device function, so that a TVM launch shell (kernels/cuda.py
// shell_u8s8_wgmma) can call it from the __global__ function TVM generates: tmx_p, tmw_p are
// generic addresses of the __grid_constant__ CUtensorMap parameters of the calling kernel,
// smem_raw its dynamic shared memory (Cfg::SMEM bytes). The caller must be a __global__
// function of Cfg::THREADS threads with __launch_bounds__(THREADS, MINB) (setmaxnreg), on a
// 1-D grid of any size >= 1 (tiles are walked with stride gridDim.x; N fastest).
template <int BM, int BN, int STAGES>
__device__ __forceinline__ void wgmma_u8s8_body(const CUtensorMap* tmx_p, const CUtensorMap* tmw_p,
                                                const int* __restrict__ corr,
                                                const float* __restrict__ scale,
                                                const float* __restrict__ bias,
                                                float* __restrict__ y, uint8_t* smem_raw, int M,
                                                int N, int K) {
  using C = Cfg<BM, BN, STAGES>;
  // 1024-byte aligned base (the dynamic window's alignment is not promised to be that large)
  const uint32_t raw = smem_u32(smem_raw);
  const uint32_t base = (raw + 1023u) & ~1023u;
  const uint32_t bars = base + STAGES * C::STAGE_BYTES;      // full[s] at bars + 8 s
  auto full = [&](int s) { return bars + 8u * s; };
  auto empty = [&](int s) { return bars + 8u * (STAGES + s); };
  auto stage_a = [&](int s) { return base + s * C::STAGE_BYTES; };
  auto stage_b = [&](int s) { return base + s * C::STAGE_BYTES + C::A_BYTES; };

  const int wg = threadIdx.x / 128;          // 0: producer, 1..CONSUMERS: consumers
  const int ktiles = (K + BK - 1) / BK;
  const int tiles_n = (N + BN - 1) / BN;
  const int tiles = tiles_n * ((M + BM - 1) / BM);

  if (threadIdx.x == 0) {
    tma_prefetch_desc(tmx_p);
    tma_prefetch_desc(tmw_p);
#pragma unroll
    for (int s = 0; s < STAGES; ++s) {
      mbar_init(full(s), 1);
      mbar_init(empty(s), 4 * C::CONSUMERS);
    }
    // make the initialised barriers visible to the async proxy (TMA) and the other threads
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();

  if (wg == 0) {
    // ---- producer warpgroup: all 4 warps give registers back, one thread issues TMA ----
    // It runs ahead over tile boundaries: while the consumers are in the epilogue of one
    // tile, the ring already fills with the next tile's k tiles (persistent grids).
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(C::PRODUCER_REGS));
    if (threadIdx.x == 0) {
      int it = 0;                                // k tiles issued so far (ring position)
      for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
        const int m0 = (tile / tiles_n) * BM, n0 = (tile % tiles_n) * BN;
        for (int t = 0; t < ktiles; ++t, ++it) {
          const int s = it % STAGES;
          const uint32_t phase = (it / STAGES) & 1;
          mbar_wait(empty(s), phase ^ 1);        // first pass (phase 0): returns at once
          mbar_arrive_expect_tx(full(s), C::STAGE_BYTES);
          tma_load_2d(stage_a(s), tmx_p, full(s), t * BK, m0);
          tma_load_2d(stage_b(s), tmw_p, full(s), t * BK, n0);
        }
      }
    }
  } else {
    // ---- consumer warpgroups: 64 rows each ----
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(C::CONSUMER_REGS));
    const int c = wg - 1;
    const int tid = threadIdx.x % 128, warp = tid / 32, lane = threadIdx.x % 32;
    // this warpgroup's copy of the tile's epilogue parameters (corr, scale, bias)
    const uint32_t par = bars + C::BAR_BYTES + c * 3 * BN * 4;
    int* corr_s = reinterpret_cast<int*>(smem_raw + (par - raw));
    float* scale_s = reinterpret_cast<float*>(corr_s + BN);
    float* bias_s = scale_s + BN;
    constexpr int PJ = (BN + 127) / 128;
    int it = 0;                                  // k tiles consumed so far (ring position)
    for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
      const int m0 = (tile / tiles_n) * BM, n0 = (tile % tiles_n) * BN;
      // The epilogue parameters are loaded now (unconditional loads, zeros past N) and kept
      // in registers over the main loop, which hides their latency; loading them inside the
      // epilogue serialises one global load round trip per 8 columns.
      int pc[PJ];
      float ps[PJ], pb[PJ];
#pragma unroll
      for (int j = 0; j < PJ; ++j) {
        const int col = tid + 128 * j, n = n0 + col;
        const bool ok = col < BN && n < N;
        pc[j] = ok ? corr[n] : 0;
        ps[j] = ok ? scale[n] : 0.f;
        pb[j] = ok ? bias[n] : 0.f;
      }
      int acc[BN / 2];
#pragma unroll
      for (int i = 0; i < BN / 2; ++i) acc[i] = 0;

      for (int t = 0; t < ktiles; ++t, ++it) {
        const int s = it % STAGES;
        mbar_wait(full(s), (it / STAGES) & 1);   // TMA bytes of this k tile have landed
        __syncwarp();                            // reconverge before the .aligned wgmma ops
        const uint64_t da = sw128_desc(stage_a(s) + c * 64 * BK);
        const uint64_t db = sw128_desc(stage_b(s));
        acc_fence(acc);
        wgmma_fence();
#pragma unroll
        for (int j = 0; j < BK / 32; ++j)        // 4 x k32; +2 = +32 bytes in the start field
          wgmma_u8s8<BN>(acc, da + 2 * j, db + 2 * j);
        wgmma_commit();
        wgmma_wait<1>();                         // the previous k tile's wgmmas are done
        acc_fence(acc);
        if (t > 0 && lane == 0) mbar_arrive(empty((it - 1) % STAGES));
      }
      wgmma_wait<0>();
      acc_fence(acc);
      if (lane == 0) mbar_arrive(empty((it - 1) % STAGES));   // the tile's last stage

      // parameters into shared memory: the first barrier keeps them from overwriting what
      // a slower warp of this warpgroup may still read in the previous tile's epilogue
      named_bar(1 + c, 128);
#pragma unroll
      for (int j = 0; j < PJ; ++j) {
        const int col = tid + 128 * j;
        if (col < BN) {
          corr_s[col] = pc[j];
          scale_s[col] = ps[j];
          bias_s[col] = pb[j];
        }
      }
      named_bar(1 + c, 128);

      // ---- epilogue: y = f32(acc - corr) * scale + bias, rows m < M, columns n < N ----
      const int r0 = m0 + c * 64 + warp * 16 + lane / 4;
      const bool vec = (N & 1) == 0;
#pragma unroll
      for (int i = 0; i < BN / 8; ++i) {
        const int jc = 8 * i + 2 * (lane % 4), n = n0 + jc;
        if (n >= N) continue;
        const bool two = n + 1 < N;
        const int2 cc = *reinterpret_cast<const int2*>(corr_s + jc);
        const float2 ss = *reinterpret_cast<const float2*>(scale_s + jc);
        const float2 bb = *reinterpret_cast<const float2*>(bias_s + jc);
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int m = r0 + 8 * h;
          if (m >= M) continue;
          const float v0 = (float)(acc[4 * i + 2 * h] - cc.x) * ss.x + bb.x;
          const float v1 = (float)(acc[4 * i + 2 * h + 1] - cc.y) * ss.y + bb.y;
          float* row = y + (size_t)m * N;
          if (vec && two) {
            *reinterpret_cast<float2*>(row + n) = make_float2(v0, v1);
          } else {
            row[n] = v0;
            if (two) row[n + 1] = v1;
          }
        }
      }
    }
  }
}

template <int BM, int BN, int STAGES>
__global__ void __launch_bounds__(Cfg<BM, BN, STAGES>::THREADS, Cfg<BM, BN, STAGES>::MINB)
    lowbit_wgmma_u8s8_kernel(const __grid_constant__ CUtensorMap tmx,
                             const __grid_constant__ CUtensorMap tmw,
                             const int* __restrict__ corr, const float* __restrict__ scale,
                             const float* __restrict__ bias, float* __restrict__ y, int M, int N,
                             int K) {
  extern __shared__ uint8_t smem_raw[];
  wgmma_u8s8_body<BM, BN, STAGES>(&tmx, &tmw, corr, scale, bias, y, smem_raw, M, N, K);
}

}  // namespace lbw

// Entry points of the TVM route (kernels/cuda.py shell_u8s8_wgmma), one per tile shape and
// ring depth (a persistent configuration "..._p" calls the same entry on a smaller grid):
// tmx / tmw are the integer generic addresses TVM's codegen passes for &tensormap_param.
#define LBW_TVM_ENTRY(BM, BN, S)                                                              \
  __device__ __forceinline__ int lowbit_wgmma_u8s8_##BM##x##BN##_s##S(                      \
      unsigned long long tmx, unsigned long long tmw, const int* corr, const float* scale,    \
      const float* bias, float* y, unsigned char* smem, int M, int N, int K) {                \
    lbw::wgmma_u8s8_body<BM, BN, S>(reinterpret_cast<const CUtensorMap*>(tmx),                \
                                    reinterpret_cast<const CUtensorMap*>(tmw), corr, scale,   \
                                    bias, y, smem, M, N, K);                                  \
    return 0;                                                                                 \
  }
#define LBW_CONFIG_LIST(X)                                                                    \
  X(128, 64, 4) X(128, 64, 6) X(128, 128, 4) X(128, 192, 4) X(128, 128, 6) X(128, 192, 5)    \
  X(128, 256, 3) X(64, 64, 6) X(64, 128, 4) X(64, 192, 3)
LBW_CONFIG_LIST(LBW_TVM_ENTRY)
#undef LBW_TVM_ENTRY

// The host launcher below is left out of the TVM route's source (which defines
// LOWBIT_WGMMA_DEVICE_ONLY: TVM builds the tensor maps and launches the kernel itself).
#ifndef LOWBIT_WGMMA_DEVICE_ONLY
namespace lbw {

// ---- host side -------------------------------------------------------------------------------
typedef CUresult (*EncodeTiledFn)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*,
                                  const cuuint64_t*, const cuuint64_t*, const cuuint32_t*,
                                  const cuuint32_t*, CUtensorMapInterleave, CUtensorMapSwizzle,
                                  CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

static EncodeTiledFn encode_fn() {
  static EncodeTiledFn fn = nullptr;
  static bool tried = false;
  if (!tried) {
    tried = true;
    void* p = nullptr;
    cudaDriverEntryPointQueryResult q;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault,
                                         &q) == cudaSuccess &&
        q == cudaDriverEntryPointSuccess)
      fn = reinterpret_cast<EncodeTiledFn>(p);
  }
  return fn;
}

// rows x K uint8 matrix, row-major; box BK x box_rows, 128B swizzle, zero fill out of bounds.
// A tensor map depends on (pointer, rows, K, box rows) only, so the last few are cached per
// host thread: repeated calls on the same buffers (a model's layers, a benchmark loop) skip
// cuTensorMapEncodeTiled, the largest part of this launcher's host work.
struct MapEntry {
  const void* ptr;
  int rows, K, box;
  CUtensorMap map;
};
constexpr int MAP_CACHE = 16;

static int make_map(CUtensorMap* map, const void* ptr, int rows, int K, int box_rows) {
  thread_local MapEntry cache[MAP_CACHE];
  thread_local int used = 0, next = 0;
  for (int i = 0; i < used; ++i) {
    const MapEntry& e = cache[i];
    if (e.ptr == ptr && e.rows == rows && e.K == K && e.box == box_rows) {
      *map = e.map;
      return 0;
    }
  }
  EncodeTiledFn enc = encode_fn();
  if (!enc) return 3;
  cuuint64_t dims[2] = {(cuuint64_t)K, (cuuint64_t)rows};
  cuuint64_t strides[1] = {(cuuint64_t)K};                    // bytes, of dim 1
  cuuint32_t box[2] = {(cuuint32_t)BK, (cuuint32_t)box_rows};
  cuuint32_t estr[2] = {1, 1};
  CUresult r = enc(map, CU_TENSOR_MAP_DATA_TYPE_UINT8, 2, const_cast<void*>(ptr), dims, strides,
                   box, estr, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                   CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) return 4;
  MapEntry& e = cache[next];
  e.ptr = ptr;
  e.rows = rows;
  e.K = K;
  e.box = box_rows;
  e.map = *map;
  next = (next + 1) % MAP_CACHE;
  if (used < MAP_CACHE) ++used;
  return 0;
}

// streaming multiprocessors of the current device (cached per device)
static int num_sms() {
  static int sms[64] = {0};
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) return 132;
  if (!sms[dev]) {
    int v = 0;
    if (cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || v < 1)
      v = 132;
    sms[dev] = v;
  }
  return sms[dev];
}

template <int BM, int BN, int STAGES, bool PERSIST>
static int launch(const void* x, const void* w, const int* corr, const float* scale,
                  const float* bias, float* y, int M, int N, int K, cudaStream_t stream) {
  using C = Cfg<BM, BN, STAGES>;
  CUtensorMap tmx, tmw;
  int rc = make_map(&tmx, x, M, K, BM);
  if (rc) return rc;
  rc = make_map(&tmw, w, N, K, BN);
  if (rc) return rc;
  auto kern = lowbit_wgmma_u8s8_kernel<BM, BN, STAGES>;
  static bool attr = false;   // per instance; benign race (same value written)
  if (!attr) {
    cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, C::SMEM);
    if (e != cudaSuccess) return 100 + (int)e;
    attr = true;
  }
  const long tiles = (long)((N + BN - 1) / BN) * ((M + BM - 1) / BM);
  long grid = tiles;
  if (PERSIST) {
    const long cap = (long)num_sms() * C::MINB;
    grid = tiles < cap ? tiles : cap;
  }
  kern<<<(unsigned)grid, C::THREADS, C::SMEM, stream>>>(tmx, tmw, corr, scale, bias, y, M, N, K);
  cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? 0 : 100 + (int)e;
}

struct ConfigEntry {
  const char* name;
  int bm, bn, stages, persistent, smem;
  int (*fn)(const void*, const void*, const int*, const float*, const float*, float*, int, int,
            int, cudaStream_t);
};
#define LBW_CFG(BM, BN, S) \
  {#BM "x" #BN "_s" #S, BM, BN, S, 0, Cfg<BM, BN, S>::SMEM, &launch<BM, BN, S, false>},
#define LBW_CFG_P(BM, BN, S) \
  {#BM "x" #BN "_s" #S "_p", BM, BN, S, 1, Cfg<BM, BN, S>::SMEM, &launch<BM, BN, S, true>},
// "<BM>x<BN>_s<stages>[_p]": _p = persistent grid (at most 1 CTA per SM for BM = 128, 2 for
// BM = 64). The first four are the configurations of the first H200 run (2026-12-03).
static const ConfigEntry CONFIGS[] = {
    LBW_CONFIG_LIST(LBW_CFG)
    LBW_CFG_P(128, 128, 4) LBW_CFG_P(128, 192, 4) LBW_CFG_P(128, 128, 6) LBW_CFG_P(128, 192, 5)
    LBW_CFG_P(128, 256, 3) LBW_CFG_P(64, 128, 4) LBW_CFG_P(64, 192, 3)
};
#undef LBW_CFG
#undef LBW_CFG_P
constexpr int NCONFIGS = sizeof(CONFIGS) / sizeof(CONFIGS[0]);

static int config_index(const char* name) {
  for (int i = 0; i < NCONFIGS; ++i) {
    const char* a = CONFIGS[i].name;
    const char* b = name;
    while (*a && *a == *b) ++a, ++b;
    if (!*a && !*b) return i;
  }
  return 0;
}

}  // namespace lbw

extern "C" {

// Number of kernel configurations and their names ("<BM>x<BN>_s<stages>[_p]").
int lowbit_wgmma_num_configs() { return lbw::NCONFIGS; }
const char* lowbit_wgmma_config_name(int i) {
  return (i >= 0 && i < lbw::NCONFIGS) ? lbw::CONFIGS[i].name : "";
}
// Dynamic shared memory of configuration i in bytes (-1: no such configuration).
int lowbit_wgmma_config_smem(int i) {
  return (i >= 0 && i < lbw::NCONFIGS) ? lbw::CONFIGS[i].smem : -1;
}
// Configuration used for config = -1: the rule of kernels/cuda.py default_wgmma (same
// thresholds; chosen from the H200 measurements of docs/gpu.md, wgmma section).
// Up to 128 output tiles of 64 x 64: 64x64_s6; up to 384: 64x128_s4; beyond: 128x192_s4_p.
int lowbit_wgmma_default_config(int M, int N, int K) {
  (void)K;
  const long t64 = (long)((M + 63) / 64) * ((N + 63) / 64);
  return lbw::config_index(t64 <= 128 ? "64x64_s6" : t64 <= 384 ? "64x128_s4" : "128x192_s4_p");
}

// y = f32(x_u8 @ w_s8^T - corr) * scale + bias, launched on `stream` (asynchronous).
// x: [M, K] u8, w: [N, K] s8, both row-major, device pointers, 16-byte aligned; corr [N] int32,
// scale, bias [N] fp32, y [M, N] fp32. config: index into the configurations, -1 = default.
// Returns 0 when launched, else:
//   1  bad shape: M, N < 1, K < 16 or K % 16 != 0 (pad K with zero columns in x and w)
//   2  x or w not 16-byte aligned (TMA)
//   3  cuTensorMapEncodeTiled not available from the driver
//   4  cuTensorMapEncodeTiled refused the tensor map
//   5  no such configuration
//   100 + cudaError_t  a CUDA runtime error (setting the smem attribute, or the launch)
int lowbit_wgmma_u8s8(const void* x, const void* w, const int* corr, const float* scale,
                      const float* bias, float* y, int M, int N, int K, int config,
                      cudaStream_t stream) {
  if (M < 1 || N < 1 || K < 16 || K % 16 != 0) return 1;
  if ((reinterpret_cast<uintptr_t>(x) | reinterpret_cast<uintptr_t>(w)) & 15) return 2;
  if (config < 0) config = lowbit_wgmma_default_config(M, N, K);
  if (config >= lbw::NCONFIGS) return 5;
  return lbw::CONFIGS[config].fn(x, w, corr, scale, bias, y, M, N, K, stream);
}

}  // extern "C"

#endif  // LOWBIT_WGMMA_DEVICE_ONLY
