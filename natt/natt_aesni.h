/* natt_aesni.h: the AES that natt runs itself, on AES-NI and PCLMULQDQ, instead of through
 * libcrypto. Two places (README "Dependencies", SECURITY.md):
 *
 *  - outbound AES-CBC, several packets side by side (natt_cbc_encrypt_lanes): CBC encryption
 *    is serial within a packet, so one packet at a time keeps AES-NI's pipeline a quarter full;
 *  - AES-GCM and AES-GMAC (natt_gcm): a per-SA state of 240 to 304 octets (GHASH key powers,
 *    round keys) read in place, where a libcrypto provider context is about 1 KiB behind two
 *    pointers plus a parameter lookup by name per packet. With 100 000 SAs that state misses
 *    the cache on every packet; the smaller and more contiguous it is, the fewer lines the
 *    decap has to prefetch (natt_decap_serial).
 *
 * Constant time: AES rounds are AESENC instructions and the key schedule uses AESKEYGENASSIST
 * (no tables); GHASH multiplies with PCLMULQDQ (no tables); tags are compared by the caller
 * with CRYPTO_memcmp. Tests hold both against libcrypto through `cryptography` and the
 * published vectors, and the whole suite runs with and without this code (tests/conftest.py).
 * Where the CPU lacks the instructions the functions are stubs and natt uses libcrypto.
 */
#ifndef NATT_AESNI_H
#define NATT_AESNI_H

#include <stdint.h>
#include <string.h>
#include <openssl/crypto.h>

#define NATT_LANES 8            /* CBC chains encrypted side by side */
#define NATT_GCM_POWERS 4       /* H^1..H^4: GHASH reduces once per 4 blocks (natt_ghash) */
#define NATT_AES_RK_LEN 240     /* round keys: 16 octets * (14 rounds + 1) */
/* Per-SA state: GHASH key powers (GCM/GMAC only), then the round keys. */
#define NATT_AES_STATE_LEN (16 * NATT_GCM_POWERS + NATT_AES_RK_LEN)

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#define NATT_AES_TARGET __attribute__((target("aes,sse2")))
#define NATT_GCM_TARGET __attribute__((target("aes,pclmul,ssse3,sse2")))

static int natt_aesni_available(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("aes") != 0;
}

static int natt_gcm_available(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("aes") && __builtin_cpu_supports("pclmul")
        && __builtin_cpu_supports("ssse3");
}

/* FIPS-197 §5.2 key expansion into 16 * (rounds + 1) octets at rk; returns the rounds. */
NATT_AES_TARGET
static int natt_aesni_expand(const uint8_t *key, int key_len, uint8_t *rk) {
    uint32_t w[60], t, rcon = 1;
    int nk = key_len / 4, nr = nk + 6, i;
    __m128i v;
    memcpy(w, key, (size_t)key_len);
    for (i = nk; i < 4 * (nr + 1); i++) {
        t = w[i - 1];
        if (i % nk == 0 || (nk > 6 && i % nk == 4)) {
            /* word 1 in: word 0 out = SubWord(t), word 1 = RotWord(SubWord(t)) */
            v = _mm_aeskeygenassist_si128(_mm_set_epi32(0, 0, (int)t, 0), 0);
            if (i % nk == 0) {
                t = (uint32_t)_mm_cvtsi128_si32(_mm_srli_si128(v, 4)) ^ rcon;
                rcon = (rcon << 1) ^ ((rcon & 0x80) ? 0x11b : 0);
            } else {
                t = (uint32_t)_mm_cvtsi128_si32(v);
            }
        }
        w[i] = w[i - nk] ^ t;
    }
    memcpy(rk, w, (size_t)(16 * (nr + 1)));
    OPENSSL_cleanse(w, sizeof(w));
    return nr;
}

/* CBC-encrypt n packets in place: ct[k] holds nblk[k] blocks and is preceded by its IV.
   A lane that finishes takes the next packet; idle lanes encrypt a scratch block. */
NATT_AES_TARGET
static void natt_cbc_encrypt_lanes(const uint8_t *rkb, int nr, uint8_t *const *ct,
                                   const int32_t *nblk, int n) {
    __m128i rk[15], c[NATT_LANES], x[NATT_LANES];
    uint8_t sink[NATT_LANES][16];
    uint8_t *p[NATT_LANES];
    size_t stride[NATT_LANES];
    int32_t left[NATT_LANES], m, b;
    int l, r, q = 0;
    for (r = 0; r <= nr; r++)
        rk[r] = _mm_loadu_si128((const __m128i *)(rkb + 16 * r));
    for (l = 0; l < NATT_LANES; l++) {
        left[l] = 0;
        c[l] = _mm_setzero_si128();
    }
    for (;;) {
        m = INT32_MAX;
        for (l = 0; l < NATT_LANES; l++) {
            if (left[l] == 0) {
                while (q < n && nblk[q] <= 0)
                    q++;
                if (q < n) {
                    p[l] = ct[q];
                    stride[l] = 16;
                    left[l] = nblk[q];
                    c[l] = _mm_loadu_si128((const __m128i *)(ct[q] - 16));
                    q++;
                } else {
                    p[l] = sink[l];
                    stride[l] = 0;
                }
            }
            if (left[l] != 0 && left[l] < m)
                m = left[l];
        }
        if (m == INT32_MAX)
            break;
        for (b = 0; b < m; b++) {
            for (l = 0; l < NATT_LANES; l++)
                x[l] = _mm_xor_si128(_mm_xor_si128(_mm_loadu_si128((const __m128i *)p[l]), c[l]), rk[0]);
            for (r = 1; r < nr; r++)
                for (l = 0; l < NATT_LANES; l++)
                    x[l] = _mm_aesenc_si128(x[l], rk[r]);
            for (l = 0; l < NATT_LANES; l++) {
                c[l] = _mm_aesenclast_si128(x[l], rk[nr]);
                _mm_storeu_si128((__m128i *)p[l], c[l]);
                p[l] += stride[l];
            }
        }
        for (l = 0; l < NATT_LANES; l++)
            if (left[l] != 0)
                left[l] -= m;
    }
    OPENSSL_cleanse(rk, sizeof(rk));
    OPENSSL_cleanse(sink, sizeof(sink));
}

/* ---- AES-GCM (NIST SP 800-38D) with 96-bit nonces ----
 *
 * GHASH works on byte-reversed blocks: reversing a block's 16 octets puts the coefficient of
 * x^i (SP 800-38D §6.3: the leftmost bit is x^0) at bit 127 - i of a 128-bit integer. The
 * carry-less product of two such integers holds the coefficient of x^k at bit 254 - k; shifted
 * left by one, its high half is the low-degree half of the product in the same representation
 * and its low half L the part of degree >= 128. Since x^128 = x^7 + x^2 + x + 1 (mod P), L
 * folds back as L*(1 + x + x^2 + x^7), and multiplying by x^m is a right shift by m here; the
 * bits shifted out (degree >= 128 again) are D = (L << 127) ^ (L << 126) ^ (L << 121) modulo
 * 2^128, folded the same way with nothing left over (D sits in bits 121..127). So the result is
 * high ^ f(L ^ D) with f(Y) = Y ^ Y>>1 ^ Y>>2 ^ Y>>7. Being linear, the shift and the fold are
 * done once for a sum of products (Y ^ X1)*H^n ^ X2*H^(n-1) ^ ... ^ Xn*H, so a packet's blocks
 * go through in groups of up to NATT_GCM_POWERS with one reduction each. */

NATT_GCM_TARGET static inline __m128i natt_bswap128(__m128i x) {
    return _mm_shuffle_epi8(x, _mm_set_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
}

/* (lo, mid, hi) += a * b, carry-less; mid is the cross term, weight 2^64. */
NATT_GCM_TARGET static inline void natt_clmul_acc(__m128i a, __m128i b, __m128i *lo, __m128i *mid,
                                                  __m128i *hi) {
    *lo = _mm_xor_si128(*lo, _mm_clmulepi64_si128(a, b, 0x00));
    *hi = _mm_xor_si128(*hi, _mm_clmulepi64_si128(a, b, 0x11));
    *mid = _mm_xor_si128(*mid, _mm_xor_si128(_mm_clmulepi64_si128(a, b, 0x01),
                                             _mm_clmulepi64_si128(a, b, 0x10)));
}

/* XOR of Y >> 1, Y >> 2 and Y >> 7 as 128-bit shifts, plus Y itself. */
NATT_GCM_TARGET static inline __m128i natt_gf_fold(__m128i y) {
    __m128i out = _mm_xor_si128(_mm_slli_epi64(y, 63), _mm_xor_si128(_mm_slli_epi64(y, 62),
                                                                     _mm_slli_epi64(y, 57)));
    __m128i r = _mm_xor_si128(_mm_srli_epi64(y, 1), _mm_xor_si128(_mm_srli_epi64(y, 2),
                                                                  _mm_srli_epi64(y, 7)));
    return _mm_xor_si128(_mm_xor_si128(y, r), _mm_srli_si128(out, 8));
}

/* The product (lo, mid, hi) reduced modulo x^128 + x^7 + x^2 + x + 1 (see above). */
NATT_GCM_TARGET static inline __m128i natt_gf_reduce(__m128i lo, __m128i mid, __m128i hi) {
    __m128i clo, chi, l, h, d;
    lo = _mm_xor_si128(lo, _mm_slli_si128(mid, 8));
    hi = _mm_xor_si128(hi, _mm_srli_si128(mid, 8));
    /* the 256-bit hi:lo shifted left by one */
    clo = _mm_srli_epi64(lo, 63);
    chi = _mm_srli_epi64(hi, 63);
    l = _mm_or_si128(_mm_slli_epi64(lo, 1), _mm_slli_si128(clo, 8));
    h = _mm_or_si128(_mm_or_si128(_mm_slli_epi64(hi, 1), _mm_slli_si128(chi, 8)), _mm_srli_si128(clo, 8));
    d = _mm_xor_si128(_mm_slli_epi64(l, 63), _mm_xor_si128(_mm_slli_epi64(l, 62), _mm_slli_epi64(l, 57)));
    return _mm_xor_si128(h, natt_gf_fold(_mm_xor_si128(l, _mm_slli_si128(d, 8))));
}

/* GHASH in groups of NATT_GCM_POWERS blocks, each group one reduction. The caller knows how
   many blocks there are, so the first group takes the remainder and the last one ends with
   the length block; in a group of s blocks the j-th (from 1) is multiplied by H^(s - j + 1),
   the running value y being folded into the first. Scalars only: kept in registers. */
typedef struct {
    __m128i y, lo, mid, hi;
    int left;                   /* blocks left in this group: the next one takes H^left */
} natt_ghash;

NATT_GCM_TARGET static inline void natt_ghash_start(natt_ghash *g, size_t nblk) {
    g->y = g->lo = g->mid = g->hi = _mm_setzero_si128();
    g->left = (int)(nblk % NATT_GCM_POWERS);
    if (g->left == 0)
        g->left = NATT_GCM_POWERS;
}

/* One block, already byte-reversed. */
NATT_GCM_TARGET static inline void natt_ghash_rev(natt_ghash *g, const uint8_t *hp, __m128i v) {
    natt_clmul_acc(_mm_xor_si128(v, g->y), _mm_loadu_si128((const __m128i *)(hp + 16 * (g->left - 1))),
                   &g->lo, &g->mid, &g->hi);
    g->y = _mm_setzero_si128();
    if (--g->left == 0) {
        g->y = natt_gf_reduce(g->lo, g->mid, g->hi);
        g->lo = g->mid = g->hi = _mm_setzero_si128();
        g->left = NATT_GCM_POWERS;
    }
}

NATT_GCM_TARGET static inline void natt_ghash_block(natt_ghash *g, const uint8_t *hp, __m128i b) {
    natt_ghash_rev(g, hp, natt_bswap128(b));
}

/* n octets, the last block zero-padded (SP 800-38D §6.4). */
NATT_GCM_TARGET static inline void natt_ghash_bytes(natt_ghash *g, const uint8_t *hp, const uint8_t *p,
                                                    size_t n) {
    uint8_t b[16];
    for (; n >= 16; p += 16, n -= 16)
        natt_ghash_block(g, hp, _mm_loadu_si128((const __m128i *)p));
    if (n) {
        memset(b, 0, 16);
        memcpy(b, p, n);
        natt_ghash_block(g, hp, _mm_loadu_si128((const __m128i *)b));
    }
}

/* Encrypt the n (<= 8) blocks x in place; the round keys are read where they are kept, so no
   copy of them is left on the stack. */
NATT_GCM_TARGET static inline void natt_aes_blocks(const uint8_t *rk, int nr, __m128i *x, int n) {
    __m128i k = _mm_loadu_si128((const __m128i *)rk);
    int r, l;
    for (l = 0; l < n; l++)
        x[l] = _mm_xor_si128(x[l], k);
    for (r = 1; r < nr; r++) {
        k = _mm_loadu_si128((const __m128i *)(rk + 16 * r));
        for (l = 0; l < n; l++)
            x[l] = _mm_aesenc_si128(x[l], k);
    }
    k = _mm_loadu_si128((const __m128i *)(rk + 16 * nr));
    for (l = 0; l < n; l++)
        x[l] = _mm_aesenclast_si128(x[l], k);
}

/* Key an SA: round keys and H^1..H^NATT_GCM_POWERS into st (NATT_AES_STATE_LEN octets); returns the rounds. */
NATT_GCM_TARGET
static int natt_gcm_init(const uint8_t *key, int key_len, uint8_t *st) {
    int nr = natt_aesni_expand(key, key_len, st + 16 * NATT_GCM_POWERS), i;
    __m128i h = _mm_setzero_si128(), p, lo, mid, hi;
    natt_aes_blocks(st + 16 * NATT_GCM_POWERS, nr, &h, 1);      /* H = E(K, 0^128), §6.4 */
    h = natt_bswap128(h);
    p = h;
    for (i = 0; i < NATT_GCM_POWERS; i++) {
        _mm_storeu_si128((__m128i *)(st + 16 * i), p);
        lo = mid = hi = _mm_setzero_si128();
        natt_clmul_acc(p, h, &lo, &mid, &hi);
        p = natt_gf_reduce(lo, mid, hi);
    }
    return nr;
}

/* One GCM operation (SP 800-38D §7.1, §7.2 with a 96-bit IV: 4-octet salt ‖ 8-octet iv),
   encrypting when enc, else decrypting. The text is in[0, in_len) ‖ in2[0, in2_len) (in2_len <=
   NATT_GCM_IN2_MAX), written to out[0, in_len + in2_len); out may be in (in place). in2 is read
   as whole 16-octet blocks, zero after in2_len (natt_gcm_trailer builds one). Encap encrypts an
   ESP payload straight from the caller's packet and its trailer from in2, so the payload is
   never copied first (which would load it from memory before, not during, the AES rounds).
   The additional data is a1 ‖ a2 (a1 shorter than a block: the ESP header, RFC 4106 §5; a2 for
   RFC 4543's GMAC). Writes the whole 16-octet tag; the caller truncates it or compares it in
   constant time. */
#define NATT_GCM_IN2_MAX 32

/* 16 - k octets on from natt_gcm_mask + 16 - k: k ones then zeros, to cut a block to k octets. */
static const uint8_t natt_gcm_mask[32] = {
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};

/* PSHUFB masks, 16 octets on from + 16 - k: natt_gcm_shr moves a block's last k octets to its
   front, zeros after them; natt_gcm_shl moves its first 16 - k octets to its back, zeros before. */
static const uint8_t natt_gcm_shr[32] = {
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
    0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80};
static const uint8_t natt_gcm_shl[32] = {
    0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};

/* The ESP trailer (RFC 4303 §2.4: padding 1, 2, ..., pad_len, then next header) for natt_gcm's
   in2. AES-GCM pads to 4 octets, so pad_len <= 3; the store has room for up to 6: 16 octets in one store, zero after the
   trailer, so that natt_gcm's block load of it is forwarded from that store. */
NATT_GCM_TARGET static inline void natt_gcm_trailer(uint8_t *tr, int pad_len, uint8_t nh) {
    uint64_t w = 0x0807060504030201ULL & ((1ULL << (8 * pad_len)) - 1);
    w |= (uint64_t)pad_len << (8 * pad_len) | (uint64_t)nh << (8 * (pad_len + 1));
    _mm_storeu_si128((__m128i *)tr, _mm_cvtsi64_si128((long long)w));
}

NATT_GCM_TARGET
static void natt_gcm(const uint8_t *st, int nr, const uint8_t *salt, const uint8_t *iv, const uint8_t *a1,
                     size_t a1_len, const uint8_t *a2, size_t a2_len, const uint8_t *in, size_t in_len,
                     const uint8_t *in2, size_t in2_len, uint8_t *out, int enc, uint8_t *tag) {
    const uint8_t *hp = st, *rk = st + 16 * NATT_GCM_POWERS;
    const __m128i one = _mm_set_epi32(0, 0, 0, 1);
    __m128i ctr, ek0, ks[8], c, x, msr, msl, sv[4];
    natt_ghash g;
    /* t: the whole text when in is shorter than a block (then len <= 15 + NATT_GCM_IN2_MAX,
       one pass of the loop below), zero-padded to whole blocks */
    uint8_t b[16], t[16 + NATT_GCM_IN2_MAX + 16];
    size_t len = in_len + in2_len, i, k, l, r, o, a, q, m;
    uint32_t w0, w1, w2 = 0;
    int direct;

    /* J0 = salt ‖ IV ‖ 0^31 ‖ 1 (§7.1 step 2, RFC 4106 §4), put together in a register from
       4-octet loads. Encap has just written the IV as two 4-octet stores, and a load wider than
       the stores it reads from waits for them to reach the cache (a failed store-to-load
       forward). J0 and the AAD block had been loaded whole from buffers filled by memcpy:
       68 octets took 83-87 ns that way, 74-79 now, in a C loop over this function alone
       (BENCHMARKS.md, "GCM encap vs decap"). */
    memcpy(&w0, salt, 4);
    memcpy(&w1, iv, 4);
    memcpy(&w2, iv + 4, 4);
    ek0 = _mm_set_epi32(0x01000000, (int)w2, (int)w1, (int)w0);
    /* J0 reversed: its 32-bit counter (inc32, §6.2) is the low lane, so +1 is one add. */
    ctr = natt_bswap128(ek0);
    natt_aes_blocks(rk, nr, &ek0, 1);
    natt_ghash_start(&g, (a1_len + a2_len + 15) / 16 + (len + 15) / 16 + 1);
    if (a2_len == 0 && (a1_len == 8 || a1_len == 12)) {
        /* the ESP header, SPI ‖ [seq_hi ‖] seq (RFC 4106 §5), the same way */
        memcpy(&w0, a1, 4);
        memcpy(&w1, a1 + 4, 4);
        w2 = 0;
        if (a1_len == 12)
            memcpy(&w2, a1 + 8, 4);
        natt_ghash_block(&g, hp, _mm_set_epi32(0, (int)w2, (int)w1, (int)w0));
    } else if (a1_len + a2_len) {
        memset(b, 0, 16);
        k = a2_len < 16 - a1_len ? a2_len : 16 - a1_len;
        if (a1_len)
            memcpy(b, a1, a1_len);
        if (k)
            memcpy(b + a1_len, a2, k);
        natt_ghash_block(&g, hp, _mm_loadu_si128((const __m128i *)b));
        if (a2_len > k)
            natt_ghash_bytes(&g, hp, a2 + k, a2_len - k);
    }
    /* Eight counter blocks at a time (a fixed count keeps them in registers): whole groups
       straight from in, then the rest. With at least a block of in, the rest comes straight
       from in too, and the blocks from in's last part-block on are put together in registers:
       in's last 16 octets shifted down by 16 - a, a = in_len % 16, then in2's blocks shifted
       up by a. All of it is loaded before any store, as out may be in. With less (a short
       transport-mode payload), the rest is gathered in t. A copy in t is stored with wide
       moves and read back by blocks that straddle them, which waits for the stores to reach
       the cache (see J0 above): a 68-octet decryption took 70-72 ns that way against 65-67
       now, in a C loop over this function alone (BENCHMARKS.md, "GCM encap vs decap"). */
    a = in_len & 15;
    q = in_len - a;
    direct = in_len >= 16;
    msr = _mm_loadu_si128((const __m128i *)(natt_gcm_shr + 16 - a));
    msl = _mm_loadu_si128((const __m128i *)(natt_gcm_shl + 16 - a));
    sv[0] = direct ? _mm_loadu_si128((const __m128i *)(in + in_len - 16)) : _mm_setzero_si128();
    sv[1] = in2_len ? _mm_loadu_si128((const __m128i *)in2) : _mm_setzero_si128();
    sv[2] = in2_len > 16 ? _mm_loadu_si128((const __m128i *)(in2 + 16)) : _mm_setzero_si128();
    sv[3] = _mm_setzero_si128();
    for (i = 0, r = 0; i < len; i += r) {
        for (l = 0; l < 8; l++) {
            ctr = _mm_add_epi32(ctr, one);
            ks[l] = natt_bswap128(ctr);
        }
        natt_aes_blocks(rk, nr, ks, 8);
        if (i + 128 <= in_len) {
            r = 128;
            for (l = 0; l < 8; l++) {
                c = _mm_loadu_si128((const __m128i *)(in + i + 16 * l));
                x = _mm_xor_si128(c, ks[l]);
                _mm_storeu_si128((__m128i *)(out + i + 16 * l), x);
                natt_ghash_block(&g, hp, enc ? x : c);
            }
            continue;
        }
        if (!direct) {
            /* (i == 0: the only pass) gather the text before any of it is overwritten, and
               zeros after it, so that the last block loads whole and zero-padded */
            memcpy(t, in, in_len);
            if (in2_len)
                memcpy(t + in_len, in2, in2_len);
            memset(t + len, 0, 16);
        }
        r = len - i < 128 ? len - i : 128;
        for (l = 0; 16 * l < r; l++) {
            o = i + 16 * l;
            k = r - 16 * l < 16 ? r - 16 * l : 16;
            if (!direct) {
                c = _mm_loadu_si128((const __m128i *)(t + 16 * l));
            } else if (o + 16 <= q) {
                c = _mm_loadu_si128((const __m128i *)(in + o));
            } else {
                m = (o - q) >> 4;
                c = _mm_or_si128(_mm_shuffle_epi8(sv[m], msr), _mm_shuffle_epi8(sv[m + 1], msl));
            }
            x = _mm_xor_si128(c, ks[l]);
            if (k == 16) {
                _mm_storeu_si128((__m128i *)(out + o), x);
            } else {
                _mm_storeu_si128((__m128i *)b, x);
                memcpy(out + o, b, k);
                /* the ciphertext is hashed zero-padded */
                x = _mm_and_si128(x, _mm_loadu_si128((const __m128i *)(natt_gcm_mask + 16 - k)));
            }
            natt_ghash_block(&g, hp, enc ? x : c);
        }
    }
    /* len(A) ‖ len(C) in bits, 64 bits each, big-endian (§7.1 step 5); reversed, len(A) is
       the high half */
    natt_ghash_rev(&g, hp, _mm_set_epi64x((long long)(8 * (uint64_t)(a1_len + a2_len)),
                                          (long long)(8 * (uint64_t)len)));
    _mm_storeu_si128((__m128i *)tag, _mm_xor_si128(natt_bswap128(g.y), ek0));
}

#else
static int natt_aesni_available(void) { return 0; }
static int natt_gcm_available(void) { return 0; }
static int natt_aesni_expand(const uint8_t *key, int key_len, uint8_t *rk) { return 0; }
static void natt_cbc_encrypt_lanes(const uint8_t *rkb, int nr, uint8_t *const *ct,
                                   const int32_t *nblk, int n) { }
static int natt_gcm_init(const uint8_t *key, int key_len, uint8_t *st) { return 0; }
static void natt_gcm_trailer(uint8_t *tr, int pad_len, uint8_t nh) { }
static void natt_gcm(const uint8_t *st, int nr, const uint8_t *salt, const uint8_t *iv, const uint8_t *a1,
                     size_t a1_len, const uint8_t *a2, size_t a2_len, const uint8_t *in, size_t in_len,
                     const uint8_t *in2, size_t in2_len, uint8_t *out, int enc, uint8_t *tag) { }
#endif

#endif
