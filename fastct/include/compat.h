/* Small portable helpers for the hot loop: branch hints, prefetch, byte order, the keyed hash. */
#ifndef FASTCT_COMPAT_H
#define FASTCT_COMPAT_H
#include <stdint.h>
#include <string.h>

#ifndef FASTCT_DEBUG
#define FASTCT_DEBUG 0
#endif

#define FASTCT_LIKELY(x)   __builtin_expect(!!(x), 1)
#define FASTCT_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define FASTCT_PREFETCH_R(p) __builtin_prefetch((const void *)(p), 0, 3)
#define FASTCT_PREFETCH_W(p) __builtin_prefetch((const void *)(p), 1, 3)

/* Unaligned big-endian loads: packet bytes are read through these only, after a length check. */
static inline uint16_t fastct_be16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }
static inline uint32_t fastct_be32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline uint16_t fastct_le16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t fastct_le32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static inline uint64_t fastct_load64(const void *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline uint32_t fastct_load32(const void *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint32_t fastct_bswap32(uint32_t v) { return __builtin_bswap32(v); }
static inline uint16_t fastct_bswap16(uint16_t v) { return __builtin_bswap16(v); }

/* Keyed 64-bit hash of a 40-byte canonical tuple, wyhash-style: each step is a 64x64->128 multiply
 * folded back to 64 bits.  The four key words come from a per-table random seed, so a sender who
 * does not know the seed cannot aim tuples at one probe chain.  (crc32c would be faster but is
 * linear: colliding tuples can be built whatever its seed.) */
static inline uint64_t fastct_mum(uint64_t a, uint64_t b) {
    __uint128_t r = (__uint128_t)a * b;
    return (uint64_t)r ^ (uint64_t)(r >> 64);
}
static inline uint64_t fastct_hash5(uint64_t w0, uint64_t w1, uint64_t w2, uint64_t w3, uint64_t w4,
                                    const uint64_t *seed) {
    uint64_t a = fastct_mum(w0 ^ seed[0], w1 ^ seed[1]);
    uint64_t b = fastct_mum(w2 ^ seed[2], w3 ^ seed[3]);
    return fastct_mum(a ^ b ^ seed[1], w4 ^ seed[0] ^ 0x9e3779b97f4a7c15ULL);
}
#endif
