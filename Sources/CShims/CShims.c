#include "CShims.h"
#include <sys/prctl.h>
#include <string.h>
#if defined(__SSE4_2__)
#include <nmmintrin.h>
#endif

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
