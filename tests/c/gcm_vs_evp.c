/* natt_gcm (natt/natt_aesni.h) against libcrypto's EVP AES-GCM on random cases: every key
 * size, texts of 0 to 2 000 octets, additional data split as natt splits it (a1 shorter than a
 * block, a2 of any length: GMAC), texts split in two parts (encap: payload, then trailer),
 * encryption out of place and decryption in place. Exit status 0: all equal; 1: a mismatch
 * (printed); 77: this CPU lacks AES-NI, PCLMULQDQ or SSSE3 (natt uses libcrypto there).
 * Built and run by tests/test_aesni.py, also under AddressSanitizer and UBSan. */
#include <stdio.h>
#include <stdlib.h>
#include <openssl/evp.h>
#include "natt_aesni.h"

static uint64_t rng_state = 0x4E415454;

static uint32_t rnd(void) {        /* xorshift64*: deterministic, libc-independent */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 0x2545F4914F6CDD1DULL) >> 32);
}

static void fill(uint8_t *p, size_t n) {
    while (n--)
        *p++ = (uint8_t)rnd();
}

static int evp_seal(const uint8_t *key, int key_len, const uint8_t *nonce, const uint8_t *aad, int aad_len,
                    const uint8_t *pt, int n, uint8_t *ct, uint8_t *tag) {
    const EVP_CIPHER *c = key_len == 16 ? EVP_aes_128_gcm() : key_len == 24 ? EVP_aes_192_gcm() : EVP_aes_256_gcm();
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int o, ok = ctx != NULL && EVP_EncryptInit_ex(ctx, c, NULL, key, nonce) == 1
        && (aad_len == 0 || EVP_EncryptUpdate(ctx, NULL, &o, aad, aad_len) == 1)
        && (n == 0 || EVP_EncryptUpdate(ctx, ct, &o, pt, n) == 1)
        && EVP_EncryptFinal_ex(ctx, ct + n, &o) == 1
        && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, 16, tag) == 1;
    EVP_CIPHER_CTX_free(ctx);
    return ok;
}

int main(int argc, char **argv) {
    static uint8_t aad[700], pt[2000], ct[2000], got[2000];
    uint8_t st[NATT_AES_STATE_LEN], key[32], nonce[12], tag[16], tag2[16], in2[NATT_GCM_IN2_MAX];
    long cases = argc > 1 ? atol(argv[1]) : 20000, it;
    int bad = 0;
    if (!natt_gcm_available()) {
        printf("no AES-NI/PCLMULQDQ/SSSE3\n");
        return 77;
    }
    for (it = 0; it < cases; it++) {
        int key_len = 16 + 8 * (int)(it % 3), nr;
        size_t n = rnd() % (it % 2 ? 2001 : 300), a1 = rnd() % 16, a2 = it % 4 == 0 ? rnd() % 600 : 0;
        size_t n2 = it % 5 == 0 ? rnd() % (NATT_GCM_IN2_MAX + 1) : 0;
        if (n2 > n)
            n2 = n;
        fill(key, sizeof(key));
        fill(nonce, sizeof(nonce));
        fill(pt, n);
        fill(aad, a1 + a2);
        nr = natt_gcm_init(key, key_len, st);
        if (!evp_seal(key, key_len, nonce, aad, (int)(a1 + a2), pt, (int)n, ct, tag)) {
            printf("EVP failed at case %ld\n", it);
            return 1;
        }
        memset(in2, 0, sizeof(in2));        /* natt_gcm reads in2 as zero-padded blocks */
        memcpy(in2, pt + n - n2, n2);
        natt_gcm(st, nr, nonce, nonce + 4, aad, a1, aad + a1, a2, pt, n - n2, in2, n2, got, 1, tag2);
        if (memcmp(ct, got, n) != 0 || memcmp(tag, tag2, 16) != 0) {
            printf("seal differs: case %ld, key %d, text %zu (+%zu), aad %zu + %zu\n", it, key_len, n - n2, n2, a1, a2);
            bad++;
        }
        memcpy(got, ct, n);
        natt_gcm(st, nr, nonce, nonce + 4, aad, a1, aad + a1, a2, got, n, NULL, 0, got, 0, tag2);
        if (memcmp(pt, got, n) != 0 || memcmp(tag, tag2, 16) != 0) {
            printf("open differs: case %ld, key %d, text %zu, aad %zu + %zu\n", it, key_len, n, a1, a2);
            bad++;
        }
        if (bad > 10)
            break;
    }
    printf("%ld cases, %d differ\n", it, bad);
    return bad != 0;
}
