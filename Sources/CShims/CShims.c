#define _GNU_SOURCE
#include "CShims.h"
#include <sys/prctl.h>
#include <string.h>
#if defined(__SSE4_2__)
#include <nmmintrin.h>
#endif

#ifndef DDP_TARGET_CPU
#define DDP_TARGET_CPU "native"
#endif

const char *ddp_build_target_cpu(void) { return DDP_TARGET_CPU; }

// The instruction sets the compiler may use for the target CPU, by their /proc/cpuinfo flags: those up
// to AVX-512's first five, which every kernel in use names. Newer ones (VNNI, BF16, FP16, GFNI, VAES...)
// are left out: a kernel older than the CPU leaves their names out of /proc/cpuinfo, and the check would
// then refuse a native build on the host that built it. A rank that meets one missing dies of SIGILL,
// which the launcher explains.
const char *ddp_build_cpu_flags(void) {
    return ""
#if defined(__SSE4_2__)
        " sse4_2"
#endif
#if defined(__POPCNT__)
        " popcnt"
#endif
#if defined(__AVX__)
        " avx"
#endif
#if defined(__AVX2__)
        " avx2"
#endif
#if defined(__FMA__)
        " fma"
#endif
#if defined(__F16C__)
        " f16c"
#endif
#if defined(__BMI__)
        " bmi1"
#endif
#if defined(__BMI2__)
        " bmi2"
#endif
#if defined(__MOVBE__)
        " movbe"
#endif
#if defined(__AVX512F__)
        " avx512f"
#endif
#if defined(__AVX512VL__)
        " avx512vl"
#endif
#if defined(__AVX512BW__)
        " avx512bw"
#endif
#if defined(__AVX512DQ__)
        " avx512dq"
#endif
#if defined(__AVX512CD__)
        " avx512cd"
#endif
        ;
}

uint32_t ddp_crc32c(uint32_t crc, const void *data, size_t length) {
    const unsigned char *p = (const unsigned char *)data;
    crc = ~crc;
#if defined(__SSE4_2__)
    while (length >= 8) {
        uint64_t word;
        memcpy(&word, p, 8);
        crc = (uint32_t)_mm_crc32_u64(crc, word);
        p += 8;
        length -= 8;
    }
    while (length > 0) {
        crc = _mm_crc32_u8(crc, *p++);
        length--;
    }
#else
    while (length-- > 0) {
        crc ^= *p++;
        for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
    }
#endif
    return ~crc;
}

int ddp_set_parent_death_signal(int signal) {
    return prctl(PR_SET_PDEATHSIG, (unsigned long)signal, 0, 0, 0);
}

#include <malloc.h>
int ddp_fix_allocator_thresholds(int bytes) {
    int fixed = mallopt(M_MMAP_THRESHOLD, bytes) && mallopt(M_TRIM_THRESHOLD, bytes);
    malloc_trim(0);
    return fixed;
}
size_t ddp_mapped_allocation_bytes(void) { return mallinfo2().hblkhd; }
size_t ddp_free_allocation_bytes(void) { return mallinfo2().fordblks; }

int ddp_set_thread_name(const char *name) {
    return prctl(PR_SET_NAME, (unsigned long)name, 0, 0, 0);
}

#include <sched.h>

int ddp_set_affinity(const int *cpus, int count) {
    cpu_set_t set;
    CPU_ZERO(&set);
    for (int i = 0; i < count; i++) {
        if (cpus[i] >= 0 && cpus[i] < CPU_SETSIZE) CPU_SET(cpus[i], &set);
    }
    return sched_setaffinity(0, sizeof(set), &set);
}

int ddp_get_affinity(int *cpus, int capacity) {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof(set), &set) != 0) return -1;
    int n = 0;
    for (int c = 0; c < CPU_SETSIZE && n < capacity; c++) {
        if (CPU_ISSET(c, &set)) cpus[n++] = c;
    }
    return n;
}

#if defined(__x86_64__)
#include <immintrin.h>
#endif

void ddp_copy_streaming(void *dst, const void *src, size_t n) {
#if defined(__x86_64__) && defined(__AVX__)
    unsigned char *d = (unsigned char *)dst;
    const unsigned char *s = (const unsigned char *)src;
    size_t head = (32 - ((uintptr_t)d & 31)) & 31;
    if (head > n) head = n;
    memcpy(d, s, head);
    d += head; s += head; n -= head;
    while (n >= 128) {
        __m256i a = _mm256_loadu_si256((const __m256i *)s), b = _mm256_loadu_si256((const __m256i *)(s + 32));
        __m256i c = _mm256_loadu_si256((const __m256i *)(s + 64)), e = _mm256_loadu_si256((const __m256i *)(s + 96));
        _mm256_stream_si256((__m256i *)d, a); _mm256_stream_si256((__m256i *)(d + 32), b);
        _mm256_stream_si256((__m256i *)(d + 64), c); _mm256_stream_si256((__m256i *)(d + 96), e);
        d += 128; s += 128; n -= 128;
    }
    while (n >= 32) {
        _mm256_stream_si256((__m256i *)d, _mm256_loadu_si256((const __m256i *)s));
        d += 32; s += 32; n -= 32;
    }
    memcpy(d, s, n);
    _mm_sfence();
#else
    memcpy(dst, src, n);
    __atomic_thread_fence(__ATOMIC_RELEASE);
#endif
}

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <limits.h>
#include <time.h>
int ddp_futex_wait(uint32_t *word, uint32_t expected, int milliseconds) {
    struct timespec timeout = { milliseconds / 1000, (long)(milliseconds % 1000) * 1000000L };
    return (int)syscall(SYS_futex, word, FUTEX_WAIT, expected, &timeout, NULL, 0);
}

int ddp_futex_wake(uint32_t *word) {
    return (int)syscall(SYS_futex, word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}
