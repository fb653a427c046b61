# cython: language_level=3
"""The libcrypto (OpenSSL >= 3.0) calls the fast path uses, one block per header.

Only what ``natt/_fastpath.pyx`` needs is declared. Every function is
``nogil``: the batch kernels call them with the GIL released. Opaque types
are declared as empty structs so that only pointers to them can be held.
"""

cdef extern from "openssl/types.h" nogil:
    ctypedef struct OSSL_LIB_CTX:
        pass
    ctypedef struct EVP_CIPHER:
        pass
    ctypedef struct EVP_CIPHER_CTX:
        pass
    ctypedef struct EVP_MD:
        pass
    ctypedef struct EVP_MD_CTX:
        pass
    ctypedef struct ENGINE:
        pass


cdef extern from "openssl/evp.h" nogil:
    enum:
        EVP_MAX_MD_SIZE
        EVP_MAX_BLOCK_LENGTH
        EVP_CTRL_AEAD_SET_IVLEN
        EVP_CTRL_AEAD_GET_TAG
        EVP_CTRL_AEAD_SET_TAG

    # Algorithm fetching (OpenSSL 3 provider API); a NULL libctx means the default one.
    EVP_CIPHER *EVP_CIPHER_fetch(OSSL_LIB_CTX *libctx, const char *algorithm, const char *properties)
    void EVP_CIPHER_free(EVP_CIPHER *cipher)
    EVP_MD *EVP_MD_fetch(OSSL_LIB_CTX *libctx, const char *algorithm, const char *properties)
    void EVP_MD_free(EVP_MD *md)
    int EVP_MD_get_size(const EVP_MD *md)
    int EVP_MD_get_block_size(const EVP_MD *md)

    # Symmetric ciphers. A context is keyed once (EVP_CipherInit_ex with cipher and key);
    # per packet only the IV is set (cipher and key NULL, enc -1 = unchanged).
    EVP_CIPHER_CTX *EVP_CIPHER_CTX_new()
    void EVP_CIPHER_CTX_free(EVP_CIPHER_CTX *ctx)
    int EVP_CIPHER_CTX_copy(EVP_CIPHER_CTX *out, const EVP_CIPHER_CTX *inp)
    int EVP_CIPHER_CTX_set_padding(EVP_CIPHER_CTX *ctx, int pad)
    int EVP_CIPHER_CTX_ctrl(EVP_CIPHER_CTX *ctx, int type, int arg, void *ptr)
    int EVP_CipherInit_ex(EVP_CIPHER_CTX *ctx, const EVP_CIPHER *cipher, ENGINE *impl,
                          const unsigned char *key, const unsigned char *iv, int enc)
    int EVP_CipherUpdate(EVP_CIPHER_CTX *ctx, unsigned char *out, int *outl,
                         const unsigned char *inp, int inl)
    int EVP_CipherFinal_ex(EVP_CIPHER_CTX *ctx, unsigned char *outm, int *outl)

    # Message digests, for HMAC with precomputed inner/outer states (RFC 2104 §2).
    EVP_MD_CTX *EVP_MD_CTX_new()
    void EVP_MD_CTX_free(EVP_MD_CTX *ctx)
    int EVP_MD_CTX_copy_ex(EVP_MD_CTX *out, const EVP_MD_CTX *inp)
    int EVP_DigestInit_ex(EVP_MD_CTX *ctx, const EVP_MD *type, ENGINE *impl)
    int EVP_DigestUpdate(EVP_MD_CTX *ctx, const void *d, size_t cnt)
    int EVP_DigestFinal_ex(EVP_MD_CTX *ctx, unsigned char *md, unsigned int *s)


cdef extern from "openssl/crypto.h" nogil:
    int CRYPTO_memcmp(const void *a, const void *b, size_t length)
    void OPENSSL_cleanse(void *ptr, size_t length)


cdef extern from "openssl/rand.h" nogil:
    int RAND_bytes(unsigned char *buf, int num)


cdef extern from "openssl/err.h" nogil:
    void ERR_clear_error()
    unsigned long ERR_peek_last_error()
