/* Small portable helpers for the hot loop: branch hints, prefetch, byte order, the keyed hash. */
#ifndef FASTCT_COMPAT_H
#define FASTCT_COMPAT_H
#include <stdint.h>
#include <string.h>
#include <time.h>
#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
#endif

#ifndef FASTCT_DEBUG
#define FASTCT_DEBUG 0
#endif

#define FASTCT_LIKELY(x)   __builtin_expect(!!(x), 1)
#define FASTCT_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define FASTCT_PREFETCH_R(p) __builtin_prefetch((const void *)(p), 0, 3)
#define FASTCT_PREFETCH_L2(p) __builtin_prefetch((const void *)(p), 0, 1)   /* into L2, not L1 */
#define FASTCT_PREFETCH_W(p) __builtin_prefetch((const void *)(p), 1, 3)

/* The clock of the optional per-stage timing (Engine.set_options(stage_clock=True)): cheap enough
 * to read three times per sub-batch.  The time-stamp counter on x86 (constant rate, not the core's
 * cycles), the virtual counter on arm64, else nanoseconds; callers calibrate it against wall time. */
static inline uint64_t fastct_ticks(void) {
#if defined(__x86_64__) || defined(__i386__)
    return __rdtsc();
#elif defined(__aarch64__)
    uint64_t v;
    __asm__ volatile("mrs %0, cntvct_el0" : "=r"(v));
    return v;
#else
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
#endif
}

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

/* The per-packet key functions are forced inline: with several callers (NAT's uniqueness checks
 * call them too) gcc otherwise makes them out-of-line calls, which cost the hot loop 8 % of its
 * instructions. */
#define FASTCT_HOT static inline __attribute__((always_inline))

/* The type of the answer to ICMP (proto 1) or ICMPv6 (58) type t (request <-> reply), 0xFF when it
 * has none.  The kernel inverts the type the same way when it builds a reply tuple. */
FASTCT_HOT uint8_t fastct_icmp_inverse_type(uint8_t proto, uint8_t t) {
    if (proto == 1) {
        switch (t) {
        case 8: return 0;   case 0: return 8;
        case 13: return 14; case 14: return 13;
        case 15: return 16; case 16: return 15;
        case 17: return 18; case 18: return 17;
        default: return 0xFF;
        }
    }
    switch (t) {
    case 128: return 129; case 129: return 128;
    case 139: return 140; case 140: return 139;
    default: return 0xFF;
    }
}

/* Key word of the reversed tuple (layout in fastct/_types.pxd, ct_entry): ports swapped, or for
 * ICMP/ICMPv6 the type inverted (id and code kept).  One function for packets and stored entries,
 * so a tuple and its reverse always hash alike. */
FASTCT_HOT uint64_t fastct_reverse_k4(uint64_t k4) {
    uint8_t proto = (uint8_t)(k4 >> 56);
    uint64_t upper = k4 & 0xFFFFFFFF00000000ULL;
    uint64_t sport = k4 & 0xFFFF, dport = (k4 >> 16) & 0xFFFF;
    if (proto == 1 || proto == 58) {
        uint8_t inv = fastct_icmp_inverse_type(proto, (uint8_t)(dport >> 8));
        if (inv == 0xFF)
            return k4;
        return upper | sport | ((((uint64_t)inv << 8) | (dport & 0xFF)) << 16);
    }
    return upper | dport | (sport << 16);
}

/* The direction-independent keyed hash of a tuple (k0-k3 the addresses, k4 its key word, rk4 the
 * reversed tuple's): the tuple is put in a fixed order first (lower address first; same address:
 * lower key word), so a packet and its reply hash alike. */
FASTCT_HOT uint64_t fastct_key_hash(uint64_t k0, uint64_t k1, uint64_t k2, uint64_t k3, uint64_t k4,
                                    uint64_t rk4, const uint64_t *seed) {
    /* Without branches: which way round a packet's tuple is, is its direction, a coin toss the
     * branch predictor cannot learn (masks, not ifs, so the compiler keeps it so). */
    uint64_t lt = (uint64_t)0 - (uint64_t)((k0 < k2) | ((k0 == k2) & (k1 < k3)));
    uint64_t eq = (uint64_t)0 - (uint64_t)((k0 == k2) & (k1 == k3));
    uint64_t lo4 = k4 < rk4 ? k4 : rk4;
    uint64_t w4 = (eq & lo4) | (~eq & ((lt & k4) | (~lt & rk4)));
    return fastct_hash5((lt & k0) | (~lt & k2), (lt & k1) | (~lt & k3),
                        (lt & k2) | (~lt & k0), (lt & k3) | (~lt & k1), w4, seed);
}

/* Which direction of the entry whose key bytes start at `e` the packet tuple (k[0..4], rk4 the
 * reversed key word) is: 0 original, 1 reply, -1 neither.  A connection with a translated reply
 * tuple (`nat`) is only ever its original here.  Branch-free for the same reason as the hash. */
FASTCT_HOT int fastct_match_dir(const void *e, const uint64_t *k, uint64_t rk4, int nat) {
    const uint8_t *b = (const uint8_t *)e;
    uint64_t e0 = fastct_load64(b), e1 = fastct_load64(b + 8), e2 = fastct_load64(b + 16);
    uint64_t e3 = fastct_load64(b + 24), e4 = fastct_load64(b + 32);
    int is_o = ((e0 ^ k[0]) | (e1 ^ k[1]) | (e2 ^ k[2]) | (e3 ^ k[3]) | (e4 ^ k[4])) == 0;
    int is_r = (((e0 ^ k[2]) | (e1 ^ k[3]) | (e2 ^ k[0]) | (e3 ^ k[1]) | (e4 ^ rk4)) == 0) & !nat;
    return (is_o | is_r) - 1 + (!is_o & is_r);
}
#endif
