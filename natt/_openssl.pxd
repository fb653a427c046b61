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
    ctypedef struct OSSL_PROVIDER:
        pass


cdef extern from "openssl/core.h" nogil:
    # The provider interface (provider-base(7)): what a provider's query_operation returns.
    ctypedef struct OSSL_DISPATCH:
        int function_id
        void (*function)() noexcept nogil
    ctypedef struct OSSL_ALGORITHM:
        const char *algorithm_names         # "NAME1:NAME2:..."
        const char *property_definition
        const OSSL_DISPATCH *implementation
        const char *algorithm_description
    ctypedef struct OSSL_PARAM:
        const char *key
        unsigned int data_type
        void *data
        size_t data_size
        size_t return_size
    enum:
        OSSL_PARAM_OCTET_STRING


cdef extern from "openssl/core_dispatch.h" nogil:
    enum:
        OSSL_OP_CIPHER
        OSSL_FUNC_CIPHER_NEWCTX
        OSSL_FUNC_CIPHER_ENCRYPT_INIT
        OSSL_FUNC_CIPHER_DECRYPT_INIT
        OSSL_FUNC_CIPHER_UPDATE
        OSSL_FUNC_CIPHER_FINAL
        OSSL_FUNC_CIPHER_FREECTX
        OSSL_FUNC_CIPHER_DUPCTX
        OSSL_FUNC_CIPHER_GET_CTX_PARAMS
        OSSL_FUNC_CIPHER_SET_CTX_PARAMS


cdef extern from "openssl/core_names.h" nogil:
    # AEAD context parameters (provider-cipher(7)).
    const char *OSSL_CIPHER_PARAM_AEAD_TAG


cdef extern from "openssl/params.h" nogil:
    const size_t OSSL_PARAM_UNMODIFIED


cdef extern from "openssl/provider.h" nogil:
    const OSSL_ALGORITHM *OSSL_PROVIDER_query_operation(const OSSL_PROVIDER *prov, int operation_id,
                                                        int *no_cache)
    void OSSL_PROVIDER_unquery_operation(const OSSL_PROVIDER *prov, int operation_id,
                                         const OSSL_ALGORITHM *algs)
    void *OSSL_PROVIDER_get0_provider_ctx(const OSSL_PROVIDER *prov)


cdef extern from "openssl/evp.h" nogil:
    enum:
        EVP_MAX_MD_SIZE

    # Algorithm fetching (OpenSSL 3 provider API); a NULL libctx means the default one.
    EVP_CIPHER *EVP_CIPHER_fetch(OSSL_LIB_CTX *libctx, const char *algorithm, const char *properties)
    void EVP_CIPHER_free(EVP_CIPHER *cipher)
    const OSSL_PROVIDER *EVP_CIPHER_get0_provider(const EVP_CIPHER *cipher)
    const char *EVP_CIPHER_get0_name(const EVP_CIPHER *cipher)
    int EVP_CIPHER_get_key_length(const EVP_CIPHER *cipher)
    EVP_MD *EVP_MD_fetch(OSSL_LIB_CTX *libctx, const char *algorithm, const char *properties)
    void EVP_MD_free(EVP_MD *md)
    int EVP_MD_get_block_size(const EVP_MD *md)

    # Symmetric ciphers. A context is keyed once (EVP_CipherInit_ex with cipher and key);
    # per packet only the IV is set (cipher and key NULL; enc 0 or 1 as keyed).
    EVP_CIPHER_CTX *EVP_CIPHER_CTX_new()
    void EVP_CIPHER_CTX_free(EVP_CIPHER_CTX *ctx)
    int EVP_CIPHER_CTX_copy(EVP_CIPHER_CTX *out, const EVP_CIPHER_CTX *inp)
    int EVP_CIPHER_CTX_set_padding(EVP_CIPHER_CTX *ctx, int pad)
    int EVP_CipherInit_ex(EVP_CIPHER_CTX *ctx, const EVP_CIPHER *cipher, ENGINE *impl,
                          const unsigned char *key, const unsigned char *iv, int enc)
    int EVP_CipherUpdate(EVP_CIPHER_CTX *ctx, unsigned char *out, int *outl,
                         const unsigned char *inp, int inl)

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
    const char *OpenSSL_version(int t)
    enum: OPENSSL_VERSION


cdef extern from "openssl/rand.h" nogil:
    int RAND_bytes(unsigned char *buf, int num)


cdef extern from "openssl/err.h" nogil:
    void ERR_clear_error()
