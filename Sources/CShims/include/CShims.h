// Tiny C helpers that Swift cannot express directly. Nothing else belongs here.
#ifndef SWIFT_DDP_CSHIMS_H
#define SWIFT_DDP_CSHIMS_H
#include <stddef.h>
#include <stdint.h>

// CRC-32C (Castagnoli) of `length` bytes, continuing from `crc` (start with 0). Uses the SSE4.2
// crc32 instruction when the compiler targets it, a table otherwise.
uint32_t ddp_crc32c(uint32_t crc, const void *data, size_t length);

// The CPU this build was compiled for (SWIFT_DDP_TARGET_CPU, "native" by default). The C shims and
// the kernels are compiled for the same CPU (Package.swift).
const char *ddp_build_target_cpu(void);
// The /proc/cpuinfo flags of the instruction sets this build was compiled to use (up to AVX-512F, VL,
// BW, DQ and CD: the names every Linux kernel in use knows), space-separated.
const char *ddp_build_cpu_flags(void);

// prctl(PR_SET_PDEATHSIG, signal): the kernel sends `signal` to this process when its parent dies.
int ddp_set_parent_death_signal(int signal);

// prctl(PR_SET_NAME, name): names the calling thread (15 bytes kept) for top -H, gdb and perf.
int ddp_set_thread_name(const char *name);

// mallopt(M_MMAP_THRESHOLD, bytes) and mallopt(M_TRIM_THRESHOLD, bytes) (malloc.h is not in Swift's
// Glibc module): fixed thresholds, which glibc then stops adjusting, then malloc_trim(0) to hand back
// what the heap's top kept under the old ones. Returns 1 on success.
int ddp_fix_allocator_thresholds(int bytes);
// mallinfo2().hblkhd: bytes glibc holds in blocks mapped one by one (handed back to the kernel on free).
size_t ddp_mapped_allocation_bytes(void);
// Bytes free inside malloc's arenas, their tops included (mallinfo2().fordblks, summed over arenas).
size_t ddp_free_allocation_bytes(void);

#endif

#ifndef SWIFT_DDP_CSHIMS_AFFINITY
#define SWIFT_DDP_CSHIMS_AFFINITY
// sched_setaffinity(0, ...) to exactly `count` CPUs (the CPU_SET macros are not visible to Swift).
int ddp_set_affinity(const int *cpus, int count);
// sched_getaffinity(0, ...): writes up to `capacity` CPU numbers, returns how many (or -1).
int ddp_get_affinity(int *cpus, int capacity);
#endif

#ifndef SWIFT_DDP_CSHIMS_SHARED
#define SWIFT_DDP_CSHIMS_SHARED
// Atomics on words in memory shared between processes (Swift's Atomic lives only inside a Swift value).
static inline uint64_t ddp_load_acquire_u64(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void ddp_store_release_u64(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline void ddp_store_seq_cst_u64(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_SEQ_CST); }
static inline uint64_t ddp_load_seq_cst_u64(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
static inline uint32_t ddp_load_seq_cst_u32(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
static inline void ddp_store_seq_cst_u32(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_SEQ_CST); }
static inline uint32_t ddp_exchange_seq_cst_u32(uint32_t *p, uint32_t v) { return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }
static inline uint32_t ddp_fetch_add_seq_cst_u32(uint32_t *p, uint32_t v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
// futex(FUTEX_WAIT) on a word of a shared mapping: sleeps while *word == expected, at most `milliseconds`
// (returns 0 when woken, -1 with errno EAGAIN, ETIMEDOUT or EINTR otherwise); futex(FUTEX_WAKE) wakes
// every sleeper on the word. Not the private variants: the sleepers are other processes.
int ddp_futex_wait(uint32_t *word, uint32_t expected, int milliseconds);
int ddp_futex_wake(uint32_t *word);
// memcpy whose 32-byte-aligned middle is written with non-temporal stores (to memory, not this core's
// cache), then sfence, so a store after it cannot be seen before the bytes. Plain stores without AVX.
void ddp_copy_streaming(void *dst, const void *src, size_t n);
#endif

#ifndef SWIFT_DDP_CSHIMS_VECTOR
#define SWIFT_DDP_CSHIMS_VECTOR
// Imported by Swift as SIMD16<Float>. Swift's SIMD squareRoot() is 16 scalar square roots, each with
// a call to sqrtf on the NaN path (errno); clang's elementwise builtin is one vsqrtps (correctly
// rounded, so the same bits).
typedef float ddp_float16 __attribute__((ext_vector_type(16)));
static inline ddp_float16 ddp_sqrt16(ddp_float16 x) { return __builtin_elementwise_sqrt(x); }
// Lane-wise maximum and minimum as (a < b ? b : a) and (b < a ? b : a), one vmaxps / vminps per
// register (a NaN in a is kept, as the compare says). Swift's own select on a SIMD16 mask, outside
// the loops where it folds, is legalized 4 lanes at a time through packed masks: vectorExp out of
// line ran on xmm halves, a fifth of the attention's time.
static inline ddp_float16 ddp_max16(ddp_float16 a, ddp_float16 b) { return a < b ? b : a; }
static inline ddp_float16 ddp_min16(ddp_float16 a, ddp_float16 b) { return b < a ? b : a; }
// The shuffles of an 8 x 8 transpose on 8-float vectors, one instruction each (vunpcklps, vunpckhps,
// vshufps, vperm2f128): Swift builds a SIMD8 from picked lanes with one insert per lane.
typedef float ddp_float8 __attribute__((ext_vector_type(8)));
static inline ddp_float8 ddp_interleave_low8(ddp_float8 a, ddp_float8 b) { return __builtin_shufflevector(a, b, 0, 8, 1, 9, 4, 12, 5, 13); }
static inline ddp_float8 ddp_interleave_high8(ddp_float8 a, ddp_float8 b) { return __builtin_shufflevector(a, b, 2, 10, 3, 11, 6, 14, 7, 15); }
static inline ddp_float8 ddp_pairs_front8(ddp_float8 a, ddp_float8 b) { return __builtin_shufflevector(a, b, 0, 1, 8, 9, 4, 5, 12, 13); }
static inline ddp_float8 ddp_pairs_back8(ddp_float8 a, ddp_float8 b) { return __builtin_shufflevector(a, b, 2, 3, 10, 11, 6, 7, 14, 15); }
static inline ddp_float8 ddp_low_halves8(ddp_float8 a, ddp_float8 b) { return __builtin_shufflevector(a, b, 0, 1, 2, 3, 8, 9, 10, 11); }
static inline ddp_float8 ddp_high_halves8(ddp_float8 a, ddp_float8 b) { return __builtin_shufflevector(a, b, 4, 5, 6, 7, 12, 13, 14, 15); }
// x with its lanes from `count` on replaced by `fill` (the tail of a causal row).
static inline ddp_float16 ddp_first_lanes16(ddp_float16 x, int count, float fill) {
    typedef int ddp_int16 __attribute__((ext_vector_type(16)));
    const ddp_int16 lane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    return lane < count ? x : (ddp_float16)fill;
}
// Swift has no prefetch: a hint to bring the line holding p into L2 (prefetcht1), for data read after
// a long computation that would push it out of L1 again.
static inline void ddp_prefetch_l2(const void *p) { __builtin_prefetch(p, 0, 2); }
// A hint to bring the line holding p in for writing (prefetchw): a tile about to be stored.
static inline void ddp_prefetch_write(const void *p) { __builtin_prefetch(p, 1, 3); }
// A hint to bring the line holding p into L1 (prefetcht0): rows of A a few k ahead of the micro-kernel.
static inline void ddp_prefetch_l1(const void *p) { __builtin_prefetch(p, 0, 3); }
#endif
