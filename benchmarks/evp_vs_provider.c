/* How much of a small AES-128-GCM decrypt is OpenSSL 3's EVP layer, and what prefetching the
 * provider context buys with many SAs: the measurements behind natt/_fastpath.pyx's "AEAD
 * through the provider" (BENCHMARKS.md, "Where the time goes").
 *
 *   cc -O2 -o /tmp/evp_vs_provider benchmarks/evp_vs_provider.c $(pkg-config --cflags --libs libcrypto)
 *   /tmp/evp_vs_provider 1        # one SA (context)
 *   /tmp/evp_vs_provider 100000   # 100 000 SAs, packets in random SA order
 *
 * Each line is one round over 100 000 ESP-like records (SPI|seq AAD, 8-octet IV, 64-octet payload,
 * 16-octet tag), in ns per record, and how many tags verified (must be 100000):
 *   evp          EVP_CIPHER_CTX_ctrl(SET_IV_INV) + EVP_DecryptUpdate x2 + ctrl(SET_TAG) + Final
 *                (the baseline of `natt bench`);
 *   prov-ivinv   the same calls made directly on the provider's functions (OSSL_PARAMs for IV, tag);
 *   prov-nonce   the provider's decrypt_init with the whole nonce instead of the IV parameter
 *                (what natt does);
 *   prov+pf      prov-nonce, prefetching the next records' provider contexts 6 records ahead.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <openssl/core_dispatch.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/provider.h>
#include <openssl/rand.h>

#define N 100000
#define PL 64
#define KEYLEN 20 /* AES-128 key, then the 4-octet salt (RFC 4106 §8.1) */

typedef struct { uint8_t esp[16 + PL + 16]; } rec_t;

static OSSL_FUNC_cipher_newctx_fn *f_newctx;
static OSSL_FUNC_cipher_decrypt_init_fn *f_dinit;
static OSSL_FUNC_cipher_update_fn *f_update;
static OSSL_FUNC_cipher_final_fn *f_final;
static OSSL_FUNC_cipher_set_ctx_params_fn *f_set;

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int name_in(const char *names, const char *want)
{
    size_t wl = strlen(want);
    for (const char *p = names;;) {
        const char *e = strchr(p, ':');
        size_t l = e ? (size_t)(e - p) : strlen(p);
        if (l == wl && strncasecmp(p, want, l) == 0)
            return 1;
        if (e == NULL)
            return 0;
        p = e + 1;
    }
}

static int resolve(const EVP_CIPHER *c, void **provctx)
{
    const OSSL_PROVIDER *prov = EVP_CIPHER_get0_provider(c);
    int no_cache = 0;
    const OSSL_ALGORITHM *algs = OSSL_PROVIDER_query_operation(prov, OSSL_OP_CIPHER, &no_cache);

    for (const OSSL_ALGORITHM *a = algs; a != NULL && a->algorithm_names != NULL; a++) {
        if (!name_in(a->algorithm_names, EVP_CIPHER_get0_name(c)))
            continue;
        for (const OSSL_DISPATCH *d = a->implementation; d->function_id != 0; d++) {
            switch (d->function_id) {
            case OSSL_FUNC_CIPHER_NEWCTX: f_newctx = (OSSL_FUNC_cipher_newctx_fn *)d->function; break;
            case OSSL_FUNC_CIPHER_DECRYPT_INIT: f_dinit = (OSSL_FUNC_cipher_decrypt_init_fn *)d->function; break;
            case OSSL_FUNC_CIPHER_UPDATE: f_update = (OSSL_FUNC_cipher_update_fn *)d->function; break;
            case OSSL_FUNC_CIPHER_FINAL: f_final = (OSSL_FUNC_cipher_final_fn *)d->function; break;
            case OSSL_FUNC_CIPHER_SET_CTX_PARAMS: f_set = (OSSL_FUNC_cipher_set_ctx_params_fn *)d->function; break;
            }
        }
        break;
    }
    OSSL_PROVIDER_unquery_operation(prov, OSSL_OP_CIPHER, algs);
    *provctx = OSSL_PROVIDER_get0_provider_ctx(prov);
    return f_newctx && f_dinit && f_update && f_final && f_set;
}

static int dec_evp(EVP_CIPHER_CTX *ctx, const rec_t *r, uint8_t *dst)
{
    int outl, finl;
    return EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IV_INV, 8, (void *)(r->esp + 8)) == 1
        && EVP_DecryptUpdate(ctx, NULL, &outl, r->esp, 8) == 1
        && EVP_DecryptUpdate(ctx, dst, &outl, r->esp + 16, PL) == 1
        && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, 16, (void *)(r->esp + 16 + PL)) == 1
        && EVP_DecryptFinal_ex(ctx, dst + outl, &finl) == 1;
}

static int dec_prov_ivinv(void *a, const rec_t *r, uint8_t *dst)
{
    size_t outl, finl;
    OSSL_PARAM iv[2] = { OSSL_PARAM_octet_string(OSSL_CIPHER_PARAM_AEAD_TLS1_SET_IV_INV, (void *)(r->esp + 8), 8),
                         OSSL_PARAM_END };
    OSSL_PARAM tag[2] = { OSSL_PARAM_octet_string(OSSL_CIPHER_PARAM_AEAD_TAG, (void *)(r->esp + 16 + PL), 16),
                          OSSL_PARAM_END };
    /* The provider checks outsize >= inl even for AAD. */
    return f_set(a, iv) == 1 && f_update(a, NULL, &outl, 8, r->esp, 8) == 1
        && f_update(a, dst, &outl, PL, r->esp + 16, PL) == 1 && f_set(a, tag) == 1
        && f_final(a, dst + outl, &finl, 0) == 1;
}

static int dec_prov_nonce(void *a, const uint8_t *salt, const rec_t *r, uint8_t *dst)
{
    size_t outl, finl;
    uint8_t nonce[12];
    OSSL_PARAM tag[2] = { OSSL_PARAM_octet_string(OSSL_CIPHER_PARAM_AEAD_TAG, (void *)(r->esp + 16 + PL), 16),
                          OSSL_PARAM_END };
    memcpy(nonce, salt, 4);
    memcpy(nonce + 4, r->esp + 8, 8);
    return f_dinit(a, NULL, 0, nonce, 12, NULL) == 1 && f_update(a, NULL, &outl, 8, r->esp, 8) == 1
        && f_update(a, dst, &outl, PL, r->esp + 16, PL) == 1 && f_set(a, tag) == 1
        && f_final(a, dst + outl, &finl, 0) == 1;
}

int main(int argc, char **argv)
{
    int nsa = argc > 1 ? atoi(argv[1]) : 1;
    EVP_CIPHER *c = EVP_CIPHER_fetch(NULL, "AES-128-GCM", NULL);
    void *provctx;
    uint8_t *keys, *out;
    EVP_CIPHER_CTX **ectx;
    void **pctx;
    rec_t *rec;
    int *sa;

    if (nsa < 1 || c == NULL || !resolve(c, &provctx)) {
        fprintf(stderr, "usage: %s N_SAS (needs libcrypto >= 3.0 with AES-128-GCM)\n", argv[0]);
        return 2;
    }
    keys = malloc((size_t)nsa * KEYLEN);
    ectx = malloc(sizeof *ectx * (size_t)nsa);
    pctx = malloc(sizeof *pctx * (size_t)nsa);
    rec = malloc(sizeof *rec * N);
    sa = malloc(sizeof *sa * N);
    out = malloc((size_t)N * PL);
    RAND_bytes(keys, nsa * KEYLEN);
    for (int j = 0; j < nsa; j++) {
        const uint8_t *k = keys + (size_t)j * KEYLEN;
        OSSL_PARAM fixed[2] = { OSSL_PARAM_octet_string(OSSL_CIPHER_PARAM_AEAD_TLS1_IV_FIXED, (void *)(k + 16), 4),
                                OSSL_PARAM_END };
        ectx[j] = EVP_CIPHER_CTX_new();
        EVP_DecryptInit_ex2(ectx[j], c, k, NULL, NULL);
        EVP_CIPHER_CTX_ctrl(ectx[j], EVP_CTRL_GCM_SET_IV_FIXED, 4, (void *)(k + 16));
        pctx[j] = f_newctx(provctx);
        f_dinit(pctx[j], k, 16, NULL, 0, NULL);
        f_set(pctx[j], fixed); /* for prov-ivinv; prov-nonce overrides it with the whole nonce */
    }
    srand(1);
    for (int i = 0; i < N; i++) {
        EVP_CIPHER_CTX *e = EVP_CIPHER_CTX_new();
        const uint8_t *k;
        uint8_t nonce[12], pt[PL];
        int l;

        sa[i] = nsa == 1 ? 0 : rand() % nsa;
        k = keys + (size_t)sa[i] * KEYLEN;
        RAND_bytes(rec[i].esp, 16);
        RAND_bytes(pt, PL);
        memcpy(nonce, k + 16, 4);
        memcpy(nonce + 4, rec[i].esp + 8, 8);
        EVP_EncryptInit_ex2(e, c, k, nonce, NULL);
        EVP_EncryptUpdate(e, NULL, &l, rec[i].esp, 8);
        EVP_EncryptUpdate(e, rec[i].esp + 16, &l, pt, PL);
        EVP_EncryptFinal_ex(e, rec[i].esp + 16 + PL, &l);
        EVP_CIPHER_CTX_ctrl(e, EVP_CTRL_AEAD_GET_TAG, 16, rec[i].esp + 16 + PL);
        EVP_CIPHER_CTX_free(e);
    }
    for (int round = 0; round < 5; round++) {
        double t0 = now(), t1, t2, t3, t4;
        int ok[4] = { 0, 0, 0, 0 };

        for (int i = 0; i < N; i++)
            ok[0] += dec_evp(ectx[sa[i]], &rec[i], out + (size_t)i * PL);
        t1 = now();
        for (int i = 0; i < N; i++)
            ok[1] += dec_prov_ivinv(pctx[sa[i]], &rec[i], out + (size_t)i * PL);
        t2 = now();
        for (int i = 0; i < N; i++)
            ok[2] += dec_prov_nonce(pctx[sa[i]], keys + (size_t)sa[i] * KEYLEN + 16, &rec[i], out + (size_t)i * PL);
        t3 = now();
        for (int i = 0; i < N; i++) {
            if (i + 6 < N)
                for (int o = 0; o < 1024; o += 64)
                    __builtin_prefetch((const char *)pctx[sa[i + 6]] + o, 1, 3);
            ok[3] += dec_prov_nonce(pctx[sa[i]], keys + (size_t)sa[i] * KEYLEN + 16, &rec[i], out + (size_t)i * PL);
        }
        t4 = now();
        printf("%d SA(s): evp %.0f ns (%d)  prov-ivinv %.0f ns (%d)  prov-nonce %.0f ns (%d)  prov+pf %.0f ns (%d)\n",
               nsa, (t1 - t0) / N * 1e9, ok[0], (t2 - t1) / N * 1e9, ok[1], (t3 - t2) / N * 1e9, ok[2],
               (t4 - t3) / N * 1e9, ok[3]);
    }
    return 0;
}
