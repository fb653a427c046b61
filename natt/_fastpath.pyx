# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The fast data path: C-level SA tables and batch kernels over OpenSSL libcrypto.

:class:`FastBackend` implements the :class:`natt._backend.Backend` protocol
with exactly the semantics of docs/semantics.md (the same as
``natt._reference``, which the tests compare it with packet for packet).

Layout
------
* Parser entries: a 65 536-entry port table (port → entry handle, framing).
* Inbound SAs: a chained hash table keyed by (entry handle, SPI); a chain
  may hold several SAs with the same key and different destination keys,
  the numerically largest matching ``dst_mask`` wins (semantics §1 step 6).
* Every SA (inbound and outbound) also sits in a slot array so a handle
  maps to it in O(1) (a Python dict gives handle → slot).
* Per SA: algorithms fetched once, one cipher context keyed once at add time
  (the *template*, never used for crypto; for AEADs a provider context, see
  "AEAD through the provider"), lazily made per-thread copies of it, HMAC
  inner/outer digest states fed with key ⊕ ipad / key ⊕ opad once
  (AES-GCM, AES-GMAC and outbound AES-CBC on AES-NI: round keys and GHASH
  key powers inside the SA instead of contexts, natt/natt_aesni.h),
  the anti-replay window (a ring bitmap of up to 65 536 bits), counters, ESN
  state and the outbound sequence number.

Concurrency
-----------
One ``pthread_mutex_t`` per backend. A batch holds it for its whole
duration (with the GIL released, but for a serial batch of a few short
packets, which keeps the GIL and only *tries* the mutex, falling back to
the released path if it is taken: ``natt_brief``); ``add_sa``/``remove_sa``/entries/counters
take it too, so a control call waits for the running batch and never frees
memory a batch could still reach (an SA is unlinked and freed only while
the mutex is held or after it is released by the remover). A reader-writer
lock would let two batches run at once, but batches also *write* per-SA
state (replay window, counters, outbound sequence number) and must see one
another's effects in call order, so they would need per-SA locks in the hot
loop; parallelism inside a batch (``threads=N``) is the intended way to use
several cores. Nobody ever waits for the mutex while holding the GIL, so
the GIL and the mutex cannot deadlock.

Batch arrays are checked once per call (dtypes, shapes, sizes); each packet's
offset, length and output slot are then read once, bounds-checked, and only
the checked copies are used, so a caller rewriting the index arrays while
the GIL is released gets ERROR statuses, never an out-of-bounds access.

``threads=N`` (clamped to ``FastBackend.max_threads``) runs on natt's own pool
of sleeping worker threads (see "worker pool" below for why not OpenMP) in two
phases (the results are identical to
``threads=None``, replay decisions and ESN inference included):

1. parallel, a chunk of 256 packets at a time: parse, classify and look up
   each packet (tables are read-only during a batch; packets that end before
   the SA lookup are finished here), then verify and decrypt it with
   per-thread contexts for the ``seq_hi`` the SA's window suggests at that
   moment (natt_chunk_decap);
2. serial, in packet order: the exact serial algorithm against the real
   window; a packet's crypto result is reused only if it was computed for
   the ``seq_hi`` the real window infers, else the crypto is redone here.
   The calling thread runs it chunk by chunk as soon as phase 1 has finished
   a chunk and every earlier one, and takes phase-1 chunks itself in
   between, so the phases overlap and a chunk's packets are still in cache.
"""

from libc.stdint cimport INT32_MAX, INT64_MAX, UINT32_MAX, UINT64_MAX, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t, uintptr_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcpy, memmove, memset, strchr, strlen

cimport numpy as cnp
import numpy as np

from natt._openssl cimport (
    CRYPTO_memcmp, ERR_clear_error, EVP_CIPHER, EVP_CIPHER_CTX, EVP_CIPHER_CTX_copy,
    EVP_CIPHER_CTX_free, EVP_CIPHER_CTX_new, EVP_CIPHER_CTX_set_padding,
    EVP_CIPHER_fetch, EVP_CIPHER_free, EVP_CipherInit_ex, EVP_CipherUpdate,
    EVP_DigestFinal_ex, EVP_DigestInit_ex,
    EVP_DigestUpdate, EVP_MAX_MD_SIZE, EVP_MD, EVP_MD_CTX, EVP_MD_CTX_copy_ex, EVP_MD_CTX_free,
    EVP_MD_CTX_new, EVP_MD_fetch, EVP_MD_free, EVP_MD_get_block_size,
    EVP_CIPHER_get0_name, EVP_CIPHER_get0_provider, EVP_CIPHER_get_key_length,
    OPENSSL_cleanse, OPENSSL_VERSION, OpenSSL_version, OSSL_ALGORITHM, OSSL_CIPHER_PARAM_AEAD_TAG,
    OSSL_DISPATCH,
    OSSL_FUNC_CIPHER_DECRYPT_INIT, OSSL_FUNC_CIPHER_DUPCTX, OSSL_FUNC_CIPHER_ENCRYPT_INIT,
    OSSL_FUNC_CIPHER_FINAL, OSSL_FUNC_CIPHER_FREECTX, OSSL_FUNC_CIPHER_GET_CTX_PARAMS,
    OSSL_FUNC_CIPHER_NEWCTX, OSSL_FUNC_CIPHER_SET_CTX_PARAMS, OSSL_FUNC_CIPHER_UPDATE,
    OSSL_OP_CIPHER, OSSL_PARAM, OSSL_PARAM_OCTET_STRING, OSSL_PARAM_UNMODIFIED, OSSL_PROVIDER,
    OSSL_PROVIDER_get0_provider_ctx, OSSL_PROVIDER_query_operation,
    OSSL_PROVIDER_unquery_operation, RAND_bytes,
)

from ._backend import COUNTER_NAMES, ESN_RESYNC_LIMIT, ESN_RESYNC_TRIGGER, BackendClosed, wipe_key
# Not from natt._batch, which imports this module: whichever of the two came first, the other
# found it half-initialised (natt._batch then silently took its pure-Python copy_segments).
from ._constants import ENCAP_OVERHEAD as _ENCAP_OVERHEAD, Status as _Status, UdpEncapType
from ._suites import Cipher as _Cipher, Mac as _Mac

cnp.import_array()

cdef extern from "<sched.h>" nogil:
    int sched_yield()
    int sched_getcpu()


cdef extern from "<strings.h>" nogil:
    int strncasecmp(const char *a, const char *b, size_t n)


cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_cond_t:
        pass
    ctypedef unsigned long pthread_t
    int pthread_mutex_init(pthread_mutex_t *m, const void *attr)
    int pthread_mutex_destroy(pthread_mutex_t *m)
    int pthread_mutex_lock(pthread_mutex_t *m)
    int pthread_mutex_trylock(pthread_mutex_t *m)
    int pthread_mutex_unlock(pthread_mutex_t *m)
    int pthread_cond_init(pthread_cond_t *c, const void *attr)
    int pthread_cond_wait(pthread_cond_t *c, pthread_mutex_t *m)
    int pthread_cond_broadcast(pthread_cond_t *c)
    int pthread_cond_signal(pthread_cond_t *c)
    int pthread_create(pthread_t *t, const void *attr, void *(*start)(void *) noexcept nogil, void *arg)
    int pthread_detach(pthread_t t)
    int pthread_atfork(void (*prepare)() noexcept nogil, void (*parent)() noexcept nogil,
                       void (*child)() noexcept nogil)


cdef extern from *:
    """
    static inline long natt_atomic_fetch_add(long *p, long v) { return __atomic_fetch_add(p, v, __ATOMIC_ACQ_REL); }
    static inline void natt_store_release(uint8_t *p, uint8_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    static inline uint8_t natt_load_acquire(const uint8_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline uint64_t natt_load_relaxed64(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
    static inline void natt_store_relaxed64(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
    static inline void natt_cpu_relax(void) {
    #if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
    #elif defined(__aarch64__)
        __asm__ __volatile__("yield");
    #endif
    }
    /* Move the calling thread off CPU ``cpu`` if it runs there and may run elsewhere: narrow
       its affinity for the migration, then give the old mask back (the thread stays where it
       was moved). 1 if it moved; 0 where sched_setaffinity is not there. natt_worker says why. */
    static int natt_move_off_cpu(int cpu) {
    #if defined(__linux__) && defined(CPU_COUNT)
        cpu_set_t old, mask;
        if (cpu < 0 || cpu >= CPU_SETSIZE || sched_getaffinity(0, sizeof old, &old) != 0)
            return 0;
        if (!CPU_ISSET(cpu, &old) || CPU_COUNT(&old) < 2)
            return 0;
        mask = old;
        CPU_CLR(cpu, &mask);
        if (sched_setaffinity(0, sizeof mask, &mask) != 0)
            return 0;
        sched_setaffinity(0, sizeof old, &old);
        return 1;
    #else
        (void)cpu;
        return 0;
    #endif
    }
    #define natt_prefetch_r(p) __builtin_prefetch((const void *)(p), 0, 3)
    #define natt_prefetch_w(p) __builtin_prefetch((const void *)(p), 1, 3)
    #include <openssl/crypto.h>
    /* Wipe the stack below the caller's frame, where the frames of its callees were. libcrypto's
       ChaCha20 leaves key words there, and a pool thread then sits idle with them for the
       life of the process, after the SA's own copies were cleansed (SECURITY.md). Not inlined,
       so that the area lies below the caller's frame; 16 KiB covers libcrypto's depth. */
    static __attribute__((noinline)) void natt_scrub_stack(void) {
        unsigned char area[16384];
        OPENSSL_cleanse(area, sizeof(area));
    }
    """
    long natt_atomic_fetch_add(long *p, long v) nogil
    void natt_store_release(uint8_t *p, uint8_t v) nogil
    uint8_t natt_load_acquire(const uint8_t *p) nogil
    uint64_t natt_load_relaxed64(const uint64_t *p) nogil
    void natt_store_relaxed64(uint64_t *p, uint64_t v) nogil
    void natt_cpu_relax() nogil
    int natt_move_off_cpu(int cpu) nogil
    void natt_prefetch_r(const void *p) nogil
    void natt_prefetch_w(const void *p) nogil
    void natt_scrub_stack() nogil



# natt's own AES on AES-NI (natt/natt_aesni.h says where and why): outbound AES-CBC several
# packets side by side, and AES-GCM/GMAC from a compact per-SA state.
cdef extern from "natt_aesni.h" nogil:
    enum:
        NATT_GCM_POWERS
        NATT_AES_STATE_LEN
    bint natt_aesni_available()
    bint natt_gcm_available()
    int natt_aesni_expand(const uint8_t *key, int key_len, uint8_t *rk)
    void natt_cbc_encrypt_lanes(const uint8_t *rkb, int nr, uint8_t * const *ct, const int32_t *nblk,
                                int n)
    int natt_gcm_init(const uint8_t *key, int key_len, uint8_t *st)
    void natt_gcm(const uint8_t *st, int nr, const uint8_t *salt, const uint8_t *iv, const uint8_t *a1,
                  size_t a1_len, const uint8_t *a2, size_t a2_len, const uint8_t *inp, size_t in_len,
                  const uint8_t *in2, size_t in2_len, uint8_t *out, int enc, uint8_t *tag)
    void natt_gcm_trailer(uint8_t *tr, int pad_len, uint8_t nh)


# SA structs and hash buckets in memory the kernel may back with huge pages (natt/natt_arena.h
# says why: the 100 000-SA decap is bound by TLB misses).
cdef extern from "natt_arena.h" nogil:
    ctypedef struct natt_arena:
        pthread_mutex_t m
    void natt_arena_init(natt_arena *a, size_t size)
    void *natt_arena_alloc(natt_arena *a)
    void natt_arena_free(natt_arena *a, void *p)
    size_t natt_arena_slabs(natt_arena *a)
    void *natt_table_alloc(size_t n)
    void natt_table_free(void *p, size_t n)


# SAs added while these are set use natt's own AES (outbound AES-CBC; AES-GCM and AES-GMAC),
# else libcrypto.
cdef bint natt_cbc_lanes = natt_aesni_available()
cdef bint natt_gcm_own = natt_gcm_available()


def _aesni(enabled: bool | None = None) -> bool:
    """Whether SAs added from now on run on natt's own AES-NI code where it exists (outbound
    AES-CBC, AES-GCM, AES-GMAC; the default where the CPU has AES-NI and PCLMULQDQ) rather
    than on libcrypto; with ``enabled``, set it first. For tests, which run both."""
    global natt_cbc_lanes, natt_gcm_own
    if enabled is not None:
        if enabled and not natt_aesni_available():
            raise RuntimeError("this CPU has no AES-NI")
        natt_cbc_lanes = bool(enabled)
        natt_gcm_own = bool(enabled) and natt_gcm_available()
    return natt_cbc_lanes or natt_gcm_own

# --------------------------------------------------------------------------- constants

cdef enum:
    NATT_MAX_THREADS = 16        # per-SA per-thread context slots; threads=N is clamped to it
    NATT_PREFETCH_MIN_SAS = 1024 # serial decap prefetches SA lookups from this many inbound SAs
    NATT_PREFETCH_AEAD_CTX = 1024  # octets of a provider AEAD context prefetched (natt_prefetch_ctx)
    NATT_IVPOOL = 4096           # octets of random IV material fetched per RAND_bytes call
    NATT_SEAL_COPY_MAX = 256     # AEAD encap: payloads up to this are copied, then encrypted in place
    NATT_CBC_GROUP = 32          # AES-NI CBC encap: packets framed, encrypted side by side, MACed
    NATT_SCRATCH_KEEP = 4 << 20  # octets of per-packet scratch always kept (FastBackend._scratch)
    NATT_SCRATCH_IDLE = 8        # calls using under a quarter of a larger scratch before it shrinks
    NATT_ENCAP_OVERHEAD = 128    # natt._constants.ENCAP_OVERHEAD (checked at import)
    NATT_CONT = 255              # parse status: an SA was found, the packet goes on
    NATT_GIL_HOLD_PACKETS = 4    # a serial batch this small may run with the GIL held (natt_brief)
    NATT_GIL_HOLD_OCTETS = 2048  # ... if its packets add up to no more octets than this
    NATT_LAYOUT_GIL_HOLD = 4096  # layout_slots lays out this many slots with the GIL held
    NATT_MAX_SLOT_EXTRA = 2147483647    # layout_slots' slot_extra: at most a segment's length

# natt.Status (fixed numbering, docs/semantics.md §1)
cdef enum:
    NATT_OK = 0
    NATT_NOT_ESP = 1
    NATT_IKE = 2
    NATT_KEEPALIVE = 3
    NATT_FRAGMENT = 4
    NATT_NO_SA = 5
    NATT_MALFORMED = 6
    NATT_AUTH_FAILED = 7
    NATT_REPLAY = 8
    NATT_DUMMY = 9
    NATT_PROTOCOL = 10
    NATT_SEQ_OVERFLOW = 11
    NATT_ERROR = 12

# natt._suites.Cipher / Mac values
cdef enum:
    NATT_CIPHER_NULL = 0
    NATT_CIPHER_AES_CBC = 1
    NATT_CIPHER_3DES_CBC = 2
    NATT_CIPHER_AES_GCM = 3
    NATT_CIPHER_CHACHA20_POLY1305 = 4
    NATT_CIPHER_AES_GMAC = 5
    NATT_MAC_NONE = 0
    NATT_MAC_HMAC_MD5_96 = 1
    NATT_MAC_HMAC_SHA1_96 = 2
    NATT_MAC_HMAC_SHA256_128 = 3
    NATT_MAC_HMAC_SHA384_192 = 4
    NATT_MAC_HMAC_SHA512_256 = 5

# Per-SA counters: "packets" and "bytes", which every packet updates, are natt_sa fields on the
# decap's hot line; the others, indices of natt_sa.ctr, follow them in
# natt._backend.COUNTER_NAMES order.
cdef enum:
    NATT_C_AUTH_FAILURES = 0
    NATT_C_REPLAYS = 1
    NATT_C_MALFORMED = 2
    NATT_C_DUMMY = 3
    NATT_C_PROTOCOL = 4
    NATT_C_SEQ_OVERFLOWS = 5
    NATT_C_ERRORS = 6
    NATT_C_ESN_RESYNCS = 7
    NATT_N_COUNTERS = 8

# RFC 4303 Appendix A3 (natt._backend.ESN_RESYNC_TRIGGER, ESN_RESYNC_LIMIT; checked at import).
cdef enum:
    NATT_ESN_RESYNC_TRIGGER = 64
    NATT_ESN_RESYNC_LIMIT = 4

# Results of the stateless crypto step (natt_open).
cdef enum:
    NATT_CR_NONE = 0     # not computed
    NATT_CR_OK = 1       # authenticated, trailer well formed
    NATT_CR_AUTH = 2     # ICV / tag mismatch
    NATT_CR_PAD = 3      # authenticated, trailer malformed (semantics §1 step 10)
    NATT_CR_ERR = 4      # crypto library failure

cdef enum:
    NATT_PROTO_TCP = 6
    NATT_PROTO_UDP = 17
    NATT_NH_IPV4 = 4     # RFC 2003
    NATT_NH_IPV6 = 41    # RFC 2473
    NATT_NH_NONE = 59    # RFC 4303 §2.6 dummy packet
    NATT_TUNNEL_TTL = 64
    NATT_MAX_IP_LEN = 65535
    NATT_ENCAP_IKE = 0   # UdpEncapType.IKE: legacy 8-octet non-IKE marker
    NATT_ENCAP_OTHER = 1


# --------------------------------------------------------------------------- C structures

# One AEAD implementation's provider functions (provider-cipher(7)), called directly rather
# than through EVP_Cipher*: see "AEAD through the provider" below for why.
ctypedef void *(*natt_newctx_fn)(void *provctx) noexcept nogil
ctypedef int (*natt_init_fn)(void *cctx, const uint8_t *key, size_t keylen, const uint8_t *iv,
                             size_t ivlen, const OSSL_PARAM *params) noexcept nogil
ctypedef int (*natt_update_fn)(void *cctx, uint8_t *out, size_t *outl, size_t outsize,
                               const uint8_t *inp, size_t inl) noexcept nogil
ctypedef int (*natt_final_fn)(void *cctx, uint8_t *out, size_t *outl, size_t outsize) noexcept nogil
ctypedef void (*natt_freectx_fn)(void *cctx) noexcept nogil
ctypedef void *(*natt_dupctx_fn)(void *cctx) noexcept nogil
ctypedef int (*natt_set_params_fn)(void *cctx, const OSSL_PARAM *params) noexcept nogil
ctypedef int (*natt_get_params_fn)(void *cctx, OSSL_PARAM *params) noexcept nogil

cdef struct natt_aead:
    EVP_CIPHER *cipher            # held for the process's lifetime: keeps the provider loaded
    void *provctx
    natt_newctx_fn newctx
    natt_init_fn einit
    natt_init_fn dinit
    natt_update_fn update
    natt_final_fn final
    natt_freectx_fn freectx
    natt_dupctx_fn dupctx
    natt_set_params_fn set_params
    natt_get_params_fn get_params
    size_t key_len


cdef union natt_cipher_state:
    # Which one: natt_sa.aes_rounds (0: libcrypto contexts)
    void *tctx[NATT_MAX_THREADS]  # per thread: a provider context (aead) or an EVP_CIPHER_CTX
    # natt's own AES (natt_aesni.h): GHASH key powers (GCM, GMAC), then the round keys at
    # 16 * NATT_GCM_POWERS; key material, wiped with the SA
    uint8_t aes[NATT_AES_STATE_LEN]


cdef struct natt_sa:
    # Field order is for the cache (an SA is allocated on a 64-octet boundary, natt_sa_new). An
    # AEAD decap touches line 0 (lookup key and per-packet parameters), line 1 (anti-replay
    # state and the counters of every packet) and the cipher state from line 2 on: thread 0's
    # context pointer, or natt's own AES state (240 octets for AES-128-GCM, to line 5). That
    # matters once there are more SAs than fit in the cache (BENCHMARKS.md, 100 000 SAs); an
    # HMAC SA also reads its two digest states from the cold end. Line 1 is what the serial
    # passes write per accepted packet. Besides it, a batch writes only a failed packet's
    # counter (``ctr``, cold) and, the first time a thread uses the SA, that thread's context
    # pointer (``cs.tctx[tid]``, natt_tctx), so the threads decrypting later packets (threaded
    # pipeline, phase 1) do not have the lines they read pulled away by phase 2's writes.
    # -- line 0: lookup (read-only during a batch), then the per-packet parameters
    natt_sa *hnext                # hash chain (inbound)
    int64_t entry_handle          # parser entry (inbound)
    uint32_t spi
    uint32_t dst_addr             # inbound lookup key
    uint32_t dst_mask
    uint32_t window
    uint8_t inbound
    uint8_t tunnel
    uint8_t esn
    uint8_t encap_ike             # outbound framing: write the non-IKE marker
    uint8_t cipher
    uint8_t mac
    uint8_t iv_len
    uint8_t icv_len
    uint8_t block
    uint8_t aes_rounds            # not 0: natt's own AES runs the cipher (``cs.aes``)
    uint8_t salt[4]               # AEAD nonce salt (RFC 4106 §4): key material, cleansed on free
    uint32_t nat_oa_src
    uint32_t nat_oa_dst
    const natt_aead *aead         # AEAD suites; NULL: the cipher runs through EVP contexts
    # -- line 1: what the serial passes read and write (64 octets). Anti-replay
    # (semantics §3): T = top; bit (s & bmask) of bitmap stands for number s, valid for s in
    # (top - window, top]; the ring has a power-of-two number of bits >= window (windows up
    # to 64 use the inline bitmap_word). ``top`` is stored and, by the threaded pipeline's
    # ESN guess, loaded with relaxed atomics (natt_chunk_decap).
    uint64_t bitmap_word
    uint64_t top
    uint64_t *bitmap
    uint32_t bmask                # ring of at most 65 536 bits
    uint32_t fail_run             # consecutive AUTH_FAILED packets (RFC 4303 Appendix A3.1)
    uint64_t packets              # COUNTER_NAMES "packets" and "bytes"
    uint64_t bytes
    int64_t handle
    uint64_t oseq                 # outbound: last sequence number sent
    # -- from line 2: read-only during a batch
    natt_cipher_state cs          # offset 128 on x86-64
    # -- cold for AEADs: failure counters, HMAC digest states, encap-only and control-plane state
    uint64_t ctr[NATT_N_COUNTERS]
    EVP_MD_CTX *inner             # HMAC: digest state after key ^ ipad (RFC 2104)
    EVP_MD_CTX *outer             # HMAC: digest state after key ^ opad
    uint32_t src_tunnel_addr
    uint32_t dst_tunnel_addr
    uint16_t encap_src_port
    uint16_t encap_dst_port
    # Outbound tunnel SAs: the outer DF bit (RFC 4301 §8.1, per SA), as two masks on octet 6 of
    # the IPv4 header, chosen once by add_sa: (inner octet 6 & df_keep) | df_set. "copy" is
    # (0x40, 0), "set" (0, 0x40), "clear" (0, 0).
    uint8_t df_keep
    uint8_t df_set
    int32_t slot
    EVP_CIPHER *evp_cipher        # control plane only
    EVP_MD *evp_md
    void *tmpl                    # keyed once (same kind as tctx); only copied, never used


# Every backend's SAs (one arena: the slabs fill up whichever backend adds SAs).
cdef natt_arena natt_sa_arena
natt_arena_init(&natt_sa_arena, sizeof(natt_sa))


def openssl_version() -> str:
    """The libcrypto this extension runs on, as it names itself (``OpenSSL_version``): the one
    loaded at run time, which need not be the one whose headers it was built with."""
    return OpenSSL_version(OPENSSL_VERSION).decode("ascii", "replace")


def _sa_arena_slabs() -> int:
    """2 MiB slabs the SA arena has mapped (tests: deleted SAs give their memory back)."""
    return natt_arena_slabs(&natt_sa_arena)


cdef struct natt_pkt:
    # Per-packet state of the kernels (on the stack in the serial decap, a ring of 16 there with
    # many SAs, the scratch array in the threaded pipeline and in encap). The segment and slot
    # pointers are taken once, right after their bounds check, and never re-read from the
    # caller's arrays, which the caller may rewrite while the kernel runs (SECURITY.md).
    const uint8_t *inp
    uint8_t *outp
    int64_t in_len
    uint64_t seq                  # encap: assigned sequence number
    natt_sa *sa
    int32_t ihl4
    int32_t esp_off
    int32_t esp_len
    int32_t payload_len
    uint32_t seql
    uint32_t seq_hi               # seq_hi the cached crypto result was computed with
    uint8_t status                # NATT_CONT: SA found; else final
    uint8_t bad_len               # semantics §1 step 7 failed
    uint8_t crypto                # NATT_CR_*
    uint8_t nh
    uint8_t done                  # first packet of a chunk: phase 1 is done with the chunk
    uint8_t tos                   # encap: the inner TOS / traffic class (natt_inner)


cdef struct natt_key:
    # The SA lookup key natt_decap_headers finds for a packet (kept apart from natt_pkt, whose
    # size the threaded decap's and encap's scratch arrays pay for per packet).
    int64_t entry
    uint32_t spi
    uint32_t dst
    uint64_t bucket               # natt_hash of (entry, spi), where the many-SA decap needs it


cdef struct natt_io:
    const uint8_t *data
    int64_t data_len
    const int64_t *off
    const int64_t *len
    int64_t n
    uint8_t *odata
    int64_t odata_len
    const int64_t *ooff
    int64_t *olen
    uint8_t *ostatus
    int64_t *osa
    uint64_t *oseq
    uint8_t *onh


cdef struct natt_ivpool:
    # Random octets for CBC IVs, drawn from libcrypto's DRBG 4 KiB at a time: one RAND_bytes
    # call costs about 1.7 us, the same as the rest of a small packet's encap. Each octet is
    # used once. ``fork_gen`` ties the pool to the process that filled it (see natt_fork_gen).
    uint64_t fork_gen
    int32_t pos
    uint8_t buf[NATT_IVPOOL]


cdef struct natt_state:
    pthread_mutex_t lock
    int64_t *port_handle          # port -> parser entry handle (0: none)
    uint8_t *port_type            # port -> UdpEncapType
    natt_sa **buckets
    uint64_t nbuckets             # power of two
    uint64_t n_inbound
    natt_sa **slots
    int32_t nslots
    int32_t *free_slots
    int32_t n_free
    natt_pkt *scratch
    int64_t scratch_cap
    int32_t scratch_idle          # consecutive calls that used under a quarter of the scratch
    EVP_MD_CTX *mdw[NATT_MAX_THREADS]   # per-thread HMAC work contexts
    natt_ivpool *ivpool[NATT_MAX_THREADS]   # per-thread CBC IV pools (lazily allocated)


# --------------------------------------------------------------------------- small helpers

cdef inline uint16_t natt_rd16(const uint8_t *p) noexcept nogil:
    return <uint16_t>((<uint16_t>p[0] << 8) | p[1])


cdef inline uint32_t natt_rd32(const uint8_t *p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline void natt_wr16(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = <uint8_t>(v >> 8)
    p[1] = <uint8_t>v


cdef inline void natt_wr32(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = <uint8_t>(v >> 24)
    p[1] = <uint8_t>(v >> 16)
    p[2] = <uint8_t>(v >> 8)
    p[3] = <uint8_t>v


cdef inline uint16_t natt_csum_fold(uint32_t s) noexcept nogil:
    """RFC 791/1071 header checksum from the plain sum ``s`` of a header's 16-bit words."""
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    return <uint16_t>(~s & 0xFFFF)


cdef inline void natt_copy_ip_header(uint8_t *h, const uint8_t *p, int32_t ihl4, uint8_t protocol,
                                     uint32_t total) noexcept nogil:
    """Copy the IPv4 header ``p`` to ``h`` with a new total length and protocol, and its checksum.

    The checksum is summed from ``p`` and the new values, not read back from ``h``: a wide load
    of octets just written by narrower stores waits for them to reach the cache (a failed
    store-to-load forward), and that read-back had 14.6 % of ``natt_encap_build``'s ``perf``
    samples in 64-octet AES-GCM encaps, on the one load (BENCHMARKS.md, "GCM encap vs decap")."""
    cdef uint32_t s = 0
    cdef int32_t k
    for k in range(0, ihl4 - 1, 2):
        s += natt_rd16(p + k)
    s = s - natt_rd16(p + 2) - natt_rd16(p + 8) - natt_rd16(p + 10) + total + ((<uint32_t>p[8] << 8) | protocol)
    memcpy(h, p, ihl4)
    natt_wr16(h + 2, total)
    h[9] = protocol
    natt_wr16(h + 10, natt_csum_fold(s))


cdef inline uint32_t natt_csum_update32(uint32_t hc, uint32_t old, uint32_t new) noexcept nogil:
    """RFC 1624 eqn. 3, HC' = ~(~HC + ~m + m'), for a 32-bit field (two 16-bit words)."""
    cdef uint32_t s = ~hc & 0xFFFF
    s += (~(old >> 16) & 0xFFFF) + ((new >> 16) & 0xFFFF)
    s += (~old & 0xFFFF) + (new & 0xFFFF)
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


cdef inline uint64_t natt_hash(int64_t entry, uint32_t spi, uint64_t mask) noexcept nogil:
    # Fibonacci hashing of the (entry, SPI) pair: SPIs may be sequential or random, and the
    # multiply spreads both over the high bits, which the fold brings down.
    cdef uint64_t x = (<uint64_t>spi) ^ ((<uint64_t>entry) << 32) ^ (<uint64_t>entry >> 32)
    x *= <uint64_t>0x9E3779B97F4A7C15
    return (x ^ (x >> 29)) & mask


# --------------------------------------------------------------------------- anti-replay (semantics §3)

cdef inline bint natt_infer_seq(uint64_t top, uint32_t window, bint esn, uint32_t seql,
                                uint64_t *seq) noexcept nogil:
    """Full sequence number of ``seql`` (RFC 4303 Appendix A); False if not representable."""
    cdef uint32_t tl, th, w1
    if not esn:
        seq[0] = seql
        return True
    tl = <uint32_t>top
    th = <uint32_t>(top >> 32)
    w1 = window - 1
    if tl >= w1:                                  # case A
        if seql >= tl - w1:
            seq[0] = (<uint64_t>th << 32) | seql
        elif th == UINT32_MAX:
            return False                          # seq_hi = Th + 1 does not fit
        else:
            seq[0] = (<uint64_t>(th + 1) << 32) | seql
    else:                                         # case B: the window spans a 2**32 boundary
        if seql >= <uint32_t>(tl - w1):
            if th == 0:
                return False                      # "below 0"
            seq[0] = (<uint64_t>(th - 1) << 32) | seql
        else:
            seq[0] = (<uint64_t>th << 32) | seql
    return True


cdef inline bint natt_is_replay(const natt_sa *sa, uint64_t seq) noexcept nogil:
    """Preliminary check (RFC 4303 §3.4.3): 0, left of the window, or already seen."""
    cdef uint64_t pos
    if seq == 0:
        return True
    if sa.top >= sa.window and seq <= sa.top - sa.window:
        return True
    if seq > sa.top:
        return False
    pos = seq & sa.bmask
    return (sa.bitmap[pos >> 6] >> (pos & 63)) & 1


cdef inline void natt_clear_bits(uint64_t *bm, uint64_t bmask, uint64_t start, uint64_t count) noexcept nogil:
    """Clear the ring positions of numbers start .. start+count-1 (count <= ring size)."""
    cdef uint64_t pos, b, take, m
    while count:
        pos = start & bmask
        b = pos & 63
        take = 64 - b
        if take > count:
            take = count
        m = (~(<uint64_t>0)) if take == 64 else (((<uint64_t>1 << take) - 1) << b)
        bm[pos >> 6] &= ~m
        start += take
        count -= take


cdef inline void natt_accept(natt_sa *sa, uint64_t seq) noexcept nogil:
    """Record an authenticated ``seq``: slide the window if it is new, mark its bit."""
    cdef uint64_t diff, pos
    if sa.window == 0:
        if seq > sa.top:
            natt_store_relaxed64(&sa.top, seq)
        return
    if seq > sa.top:
        diff = seq - sa.top
        if diff > sa.bmask:
            memset(sa.bitmap, 0, ((sa.bmask + 1) >> 6) * sizeof(uint64_t))
        else:
            natt_clear_bits(sa.bitmap, sa.bmask, sa.top + 1, diff)
        natt_store_relaxed64(&sa.top, seq)
    pos = seq & sa.bmask
    sa.bitmap[pos >> 6] |= (<uint64_t>1) << (pos & 63)


cdef void natt_ring_import(natt_sa *sa, const uint8_t[::1] bits) noexcept:
    """Set the ring bits of the numbers ``top - i`` whose bit ``i`` is set in ``bits``
    (little-endian octets); numbers below 0 wrap onto ring positions no live number uses."""
    cdef uint64_t i, pos
    for i in range(sa.window):
        if (bits[i >> 3] >> (i & 7)) & 1:
            pos = (sa.top - i) & sa.bmask
            sa.bitmap[pos >> 6] |= (<uint64_t>1) << (pos & 63)


cdef void natt_ring_export(const natt_sa *sa, uint8_t *out) noexcept nogil:
    """The inverse of natt_ring_import: bit ``i`` of ``out`` = ring bit of number ``top - i``;
    numbers <= 0 read as seen (they cannot arrive, and the reference keeps them set)."""
    cdef uint64_t i, pos
    for i in range(sa.window):
        pos = (sa.top - i) & sa.bmask
        if i >= sa.top or (sa.bitmap[pos >> 6] >> (pos & 63)) & 1:
            out[i >> 3] |= <uint8_t>(1 << (i & 7))


# --------------------------------------------------------------------------- crypto (stateless per packet)

# AEAD through the provider. For ChaCha20-Poly1305, and for AES-GCM and AES-GMAC where natt's
# own AES does not run them (natt_aesni.h: no AES-NI or PCLMULQDQ), the kernels call the
# provider's own cipher functions on provider contexts they created, the interface EVP_Cipher*
# is a wrapper of (provider-base(7), provider-cipher(7): OSSL_PROVIDER_query_operation,
# OSSL_PROVIDER_get0_provider_ctx; the same implementation, key schedule and tag check run).
# Why: at 64 octets OpenSSL 3.0's EVP layer (argument checks, ctrl -> OSSL_PARAM translation)
# costs about a quarter of the time per packet (a C loop over 64-octet AES-128-GCM packets:
# 268 ns through EVP, 194 ns calling the provider; natt's own figures in BENCHMARKS.md), and
# owning the provider context's address lets the serial decap prefetch it when there are many
# SAs (natt_decap_serial). CBC decryption stays on EVP, where HMAC dominates; CBC encryption
# runs on natt's own AES-NI lanes when it can (natt_on_lanes: a packet's blocks are serial, so
# the lanes are packets), else on EVP too.

cdef natt_aead natt_aeads[4]      # AES-128/192/256-GCM, ChaCha20-Poly1305; filled on first use


cdef bint natt_name_in(const char *names, const char *want) noexcept nogil:
    """Whether ``want`` is one of the colon-separated ``names`` (case-insensitive, as
    OpenSSL's algorithm names are)."""
    cdef size_t wl = strlen(want), l
    cdef const char *e
    while True:
        e = strchr(names, c':')
        l = <size_t>(e - names) if e != NULL else strlen(names)
        if l == wl and strncasecmp(names, want, l) == 0:
            return True
        if e == NULL:
            return False
        names = e + 1


cdef const natt_aead *natt_aead_get(int idx, const char *name) except NULL:
    """The provider functions of AEAD ``name``, resolved once per process (under the GIL)."""
    cdef natt_aead *a = &natt_aeads[idx]
    cdef natt_aead r
    cdef EVP_CIPHER *cipher
    cdef const OSSL_PROVIDER *prov
    cdef const OSSL_ALGORITHM *algs
    cdef const OSSL_ALGORITHM *alg
    cdef const OSSL_DISPATCH *d
    cdef int no_cache = 0
    if a.update != NULL:
        return a
    cipher = EVP_CIPHER_fetch(NULL, name, NULL)
    if cipher == NULL:
        raise RuntimeError(f"libcrypto has no {name.decode()} cipher")
    memset(&r, 0, sizeof(r))
    prov = EVP_CIPHER_get0_provider(cipher)
    algs = OSSL_PROVIDER_query_operation(prov, OSSL_OP_CIPHER, &no_cache) if prov != NULL else NULL
    alg = algs
    while alg != NULL and alg.algorithm_names != NULL:
        if natt_name_in(alg.algorithm_names, EVP_CIPHER_get0_name(cipher)):
            d = alg.implementation
            while d.function_id != 0:
                if d.function_id == OSSL_FUNC_CIPHER_NEWCTX:
                    r.newctx = <natt_newctx_fn>d.function
                elif d.function_id == OSSL_FUNC_CIPHER_ENCRYPT_INIT:
                    r.einit = <natt_init_fn>d.function
                elif d.function_id == OSSL_FUNC_CIPHER_DECRYPT_INIT:
                    r.dinit = <natt_init_fn>d.function
                elif d.function_id == OSSL_FUNC_CIPHER_UPDATE:
                    r.update = <natt_update_fn>d.function
                elif d.function_id == OSSL_FUNC_CIPHER_FINAL:
                    r.final = <natt_final_fn>d.function
                elif d.function_id == OSSL_FUNC_CIPHER_FREECTX:
                    r.freectx = <natt_freectx_fn>d.function
                elif d.function_id == OSSL_FUNC_CIPHER_DUPCTX:
                    r.dupctx = <natt_dupctx_fn>d.function
                elif d.function_id == OSSL_FUNC_CIPHER_SET_CTX_PARAMS:
                    r.set_params = <natt_set_params_fn>d.function
                elif d.function_id == OSSL_FUNC_CIPHER_GET_CTX_PARAMS:
                    r.get_params = <natt_get_params_fn>d.function
                d += 1
            break
        alg += 1
    if algs != NULL:
        OSSL_PROVIDER_unquery_operation(prov, OSSL_OP_CIPHER, algs)
    if (r.newctx == NULL or r.einit == NULL or r.dinit == NULL or r.update == NULL or r.final == NULL
            or r.freectx == NULL or r.dupctx == NULL or r.set_params == NULL or r.get_params == NULL):
        EVP_CIPHER_free(cipher)
        raise RuntimeError(f"libcrypto's provider of {name.decode()} lacks a cipher function natt needs")
    r.cipher = cipher
    r.provctx = OSSL_PROVIDER_get0_provider_ctx(prov)
    r.key_len = <size_t>EVP_CIPHER_get_key_length(cipher)
    a[0] = r
    return a


cdef inline void natt_octets(OSSL_PARAM *par, const char *key, const void *data, size_t n) noexcept nogil:
    """``par[0..1]`` = {key: octet string}, end marker (OSSL_PARAM_octet_string, inline)."""
    par[0].key = key
    par[0].data_type = OSSL_PARAM_OCTET_STRING
    par[0].data = <void *>data
    par[0].data_size = n
    par[0].return_size = OSSL_PARAM_UNMODIFIED
    par[1].key = NULL
    par[1].data_type = 0
    par[1].data = NULL
    par[1].data_size = 0
    par[1].return_size = 0


cdef inline void *natt_tctx(natt_sa *sa, int tid) noexcept nogil:
    """This thread's cipher context of ``sa`` (a provider context for AEADs, else an
    EVP_CIPHER_CTX), copied from the keyed template on first use.

    Only thread ``tid`` ever writes slot ``tid``; the template is only read (copied).
    """
    cdef void *c = sa.cs.tctx[tid]
    if c != NULL:
        return c
    if sa.aead == NULL:
        c = EVP_CIPHER_CTX_new()
        if c != NULL and EVP_CIPHER_CTX_copy(<EVP_CIPHER_CTX *>c, <EVP_CIPHER_CTX *>sa.tmpl) != 1:
            EVP_CIPHER_CTX_free(<EVP_CIPHER_CTX *>c)
            c = NULL
    else:
        c = sa.aead.dupctx(sa.tmpl)
    sa.cs.tctx[tid] = c
    return c


cdef inline bint natt_hmac(const natt_sa *sa, EVP_MD_CTX *w, const uint8_t *d, int32_t n,
                           bint esn, uint32_t seq_hi, uint8_t *mac) noexcept nogil:
    """HMAC (RFC 2104) of ``d`` ‖ [seq_hi] from the precomputed inner/outer states."""
    cdef uint8_t hi[4]
    cdef unsigned int ml = 0
    if EVP_MD_CTX_copy_ex(w, sa.inner) != 1 or EVP_DigestUpdate(w, d, n) != 1:
        return False
    if esn:
        # RFC 4303 §2.2.1 / §3.3.2.1: seq_hi is covered by the ICV but never sent.
        natt_wr32(hi, seq_hi)
        if EVP_DigestUpdate(w, hi, 4) != 1:
            return False
    if EVP_DigestFinal_ex(w, mac, &ml) != 1:
        return False
    if EVP_MD_CTX_copy_ex(w, sa.outer) != 1 or EVP_DigestUpdate(w, mac, ml) != 1:
        return False
    return EVP_DigestFinal_ex(w, mac, &ml) == 1


cdef inline int32_t natt_aad(const natt_sa *sa, const uint8_t *esp, uint32_t seq_hi, uint8_t *aad) noexcept nogil:
    """RFC 4106 §5 / RFC 7634 §2.1: SPI ‖ seql, or SPI ‖ seq_hi ‖ seql with ESN."""
    memcpy(aad, esp, 4)
    if sa.esn:
        natt_wr32(aad + 4, seq_hi)
        memcpy(aad + 8, esp + 4, 4)
        return 12
    memcpy(aad + 4, esp + 4, 4)
    return 8


cdef inline void natt_nonce(const natt_sa *sa, const uint8_t *esp, uint8_t *nonce) noexcept nogil:
    """RFC 4106 §4 / RFC 4543 §3.1 / RFC 7634 §2: nonce = salt ‖ IV."""
    memcpy(nonce, sa.salt, 4)
    memcpy(nonce + 4, esp + 8, 8)


cdef inline void natt_gcm_packet(const natt_sa *sa, const uint8_t *esp, uint32_t seq_hi, int32_t ct_len,
                                 const uint8_t *inp, int32_t in_len, const uint8_t *in2, uint8_t *out,
                                 int enc, uint8_t *tag) noexcept nogil:
    """One ESP packet through natt's own AES-GCM (``sa.cs.aes``): the ``ct_len`` octets of
    ``inp[:in_len]`` ‖ ``in2`` to ``out`` (natt_gcm says how it reads in2 and which overlaps
    are allowed), the whole tag to ``tag``. AES-GMAC (RFC 4543 §3) authenticates IV, payload
    and trailer as AAD and encrypts nothing."""
    cdef uint8_t aad[12]
    cdef int32_t aad_len = natt_aad(sa, esp, seq_hi, aad)
    # The nonce (RFC 4106 §4) goes in as its two parts: natt_gcm puts it together in a register.
    if sa.cipher == NATT_CIPHER_AES_GMAC:
        natt_gcm(sa.cs.aes, sa.aes_rounds, sa.salt, esp + 8, aad, aad_len, esp + 8, 8 + ct_len, NULL, 0, NULL,
                 0, NULL, enc, tag)
    else:
        natt_gcm(sa.cs.aes, sa.aes_rounds, sa.salt, esp + 8, aad, aad_len, NULL, 0, inp, in_len, in2,
                 ct_len - in_len, out, enc, tag)


cdef inline bint natt_aead_begin(const natt_sa *sa, natt_init_fn init, void *ctx, const uint8_t *esp,
                                 uint32_t seq_hi) noexcept nogil:
    """Start one AEAD packet on this thread's provider context: the nonce, then the AAD."""
    cdef uint8_t nonce[12]
    cdef uint8_t aad[12]
    cdef int32_t aad_len = natt_aad(sa, esp, seq_hi, aad)
    cdef size_t n = 0
    # Handing the provider the whole nonce (init without a key) is cheaper than the
    # fixed/invocation split of TLS1_IV_FIXED + TLS1_SET_IV_INV, which goes through OSSL_PARAM
    # name lookups: 199 -> 172 ns per 64-octet AES-128-GCM packet in a C loop over the provider
    # calls.
    natt_nonce(sa, esp, nonce)
    if init(ctx, NULL, 0, nonce, 12, NULL) != 1:
        return False
    # The provider checks outsize >= inl even when only absorbing AAD (out NULL).
    return sa.aead.update(ctx, NULL, &n, aad_len, aad, aad_len) == 1


cdef int natt_open(natt_sa *sa, int tid, EVP_MD_CTX *mdw, const uint8_t *esp, int32_t esp_len,
                   uint32_t seq_hi, uint8_t *dst, natt_pkt *pk) noexcept nogil:
    """Verify and decrypt one ESP packet (semantics §1 steps 9–10) into ``dst``.

    Stateless given ``seq_hi``: only this thread's contexts are touched. Sets
    ``pk.nh`` and ``pk.payload_len`` when the packet authenticates.
    """
    cdef int32_t iv_len = sa.iv_len, icv_len = sa.icv_len
    cdef int32_t ct_len = esp_len - 8 - iv_len - icv_len
    cdef const uint8_t *iv = esp + 8
    cdef const uint8_t *ct = iv + iv_len
    cdef const uint8_t *icv = esp + esp_len - icv_len
    cdef uint8_t mac[EVP_MAX_MD_SIZE]
    cdef int32_t k, pad_len
    cdef int outl = 0
    cdef size_t n = 0, n2 = 0
    cdef void *ctx = NULL
    cdef const natt_aead *a = sa.aead
    cdef OSSL_PARAM par[2]
    cdef int cipher = sa.cipher

    if cipher != NATT_CIPHER_NULL and sa.aes_rounds == 0:
        ctx = natt_tctx(sa, tid)
        if ctx == NULL:
            return NATT_CR_ERR
    if sa.aes_rounds:
        # AES-GCM or AES-GMAC (inbound SAs have no CBC on natt's AES)
        natt_gcm_packet(sa, esp, seq_hi, ct_len, ct, ct_len, NULL, dst, 0, mac)
        if cipher == NATT_CIPHER_AES_GMAC:
            memcpy(dst, ct, ct_len)
        if CRYPTO_memcmp(mac, icv, icv_len) != 0:
            return NATT_CR_AUTH
    elif a != NULL:
        if not natt_aead_begin(sa, a.dinit, ctx, esp, seq_hi):
            return NATT_CR_ERR
        if cipher == NATT_CIPHER_AES_GMAC:
            # RFC 4543 §3: IV, payload and trailer are AAD too; nothing is encrypted.
            if a.update(ctx, NULL, &n, iv_len + ct_len, iv, iv_len + ct_len) != 1:
                return NATT_CR_ERR
            memcpy(dst, ct, ct_len)
            n = 0
        elif a.update(ctx, dst, &n, ct_len, ct, ct_len) != 1:
            return NATT_CR_ERR
        natt_octets(par, OSSL_CIPHER_PARAM_AEAD_TAG, icv, icv_len)
        if a.set_params(ctx, par) != 1:
            return NATT_CR_ERR
        if a.final(ctx, dst + n, &n2, 0) != 1:
            return NATT_CR_AUTH
    else:
        if sa.mac != NATT_MAC_NONE:
            # RFC 4303 §3.4.4: verify the ICV first, in constant time, then decrypt.
            if not natt_hmac(sa, mdw, esp, esp_len - icv_len, sa.esn, seq_hi, mac):
                return NATT_CR_ERR
            if CRYPTO_memcmp(mac, icv, icv_len) != 0:
                return NATT_CR_AUTH
        if cipher == NATT_CIPHER_NULL:
            memcpy(dst, ct, ct_len)
        else:
            if EVP_CipherInit_ex(<EVP_CIPHER_CTX *>ctx, NULL, NULL, NULL, iv, 0) != 1:
                return NATT_CR_ERR
            if EVP_CipherUpdate(<EVP_CIPHER_CTX *>ctx, dst, &outl, ct, ct_len) != 1 or outl != ct_len:
                return NATT_CR_ERR
    # Trailer (RFC 4303 §2.4, default padding 1, 2, 3, ...).
    pad_len = dst[ct_len - 2]
    pk.nh = dst[ct_len - 1]
    if pad_len > ct_len - 2:
        return NATT_CR_PAD
    for k in range(pad_len):
        if dst[ct_len - 2 - pad_len + k] != <uint8_t>(k + 1):
            return NATT_CR_PAD
    pk.payload_len = ct_len - 2 - pad_len
    return NATT_CR_OK


cdef inline bint natt_seal_icv(const natt_sa *sa, EVP_MD_CTX *mdw, uint8_t *esp, int32_t auth_len,
                               uint32_t seq_hi) noexcept nogil:
    """Append the HMAC ICV of an encrypted non-AEAD packet (``auth_len``: ESP header to trailer)."""
    cdef uint8_t mac[EVP_MAX_MD_SIZE]
    if sa.mac != NATT_MAC_NONE:
        if not natt_hmac(sa, mdw, esp, auth_len, sa.esn, seq_hi, mac):
            return False
        memcpy(esp + auth_len, mac, sa.icv_len)
    return True


cdef bint natt_seal(natt_sa *sa, int tid, EVP_MD_CTX *mdw, uint8_t *esp, int32_t ct_len,
                    uint32_t seq_hi, const uint8_t *src, int32_t src_len) noexcept nogil:
    """Encrypt ``esp`` in place (header and IV written, plaintext trailer-padded at esp+8+iv)
    and append the ICV (semantics §2 steps 4–5).

    With ``src`` (AEADs that encrypt), the first ``src_len`` octets of plaintext are read from
    ``src`` instead, and only the trailer after them is in ``esp``: the payload is encrypted
    straight from the caller's packet, not copied into the output first.
    """
    cdef int32_t iv_len = sa.iv_len, icv_len = sa.icv_len
    cdef uint8_t *iv = esp + 8
    cdef uint8_t *ct = iv + iv_len
    cdef uint8_t *icv = ct + ct_len
    cdef int32_t k
    cdef int outl = 0
    cdef size_t n = 0, n2 = 0
    cdef void *ctx = NULL
    cdef const natt_aead *a = sa.aead
    cdef OSSL_PARAM par[2]
    cdef int cipher = sa.cipher
    cdef uint8_t tag[16]
    cdef uint8_t tr[16]

    if sa.aes_rounds:
        # AES-GCM or AES-GMAC (outbound CBC on natt's AES is encrypted by natt_encap_range)
        if src == NULL:
            natt_gcm_packet(sa, esp, seq_hi, ct_len, ct, ct_len, NULL, ct, 1, tag)
        else:
            # The trailer after the payload once more, as natt_gcm reads it (natt_gcm_trailer:
            # one store, not the byte stores of the one in ``esp``, which its ciphertext replaces).
            natt_gcm_trailer(tr, ct_len - 2 - src_len, ct[ct_len - 1])
            natt_gcm_packet(sa, esp, seq_hi, ct_len, src, src_len, tr, ct, 1, tag)
        # RFC 4106 §6: the ICV is the tag's first 8, 12 or 16 octets. Each length copied as a
        # constant: a variable-length memcpy inlined as ``rep movsq``, whose start-up cost had 3 %
        # of a 64-octet encap's ``perf`` samples.
        if icv_len == 16:
            memcpy(icv, tag, 16)
        elif icv_len == 12:
            memcpy(icv, tag, 12)
        else:
            memcpy(icv, tag, 8)
        return True
    if cipher != NATT_CIPHER_NULL:
        ctx = natt_tctx(sa, tid)
        if ctx == NULL:
            return False
    if a != NULL:
        if not natt_aead_begin(sa, a.einit, ctx, esp, seq_hi):
            return False
        if cipher == NATT_CIPHER_AES_GMAC:
            if a.update(ctx, NULL, &n, iv_len + ct_len, iv, iv_len + ct_len) != 1:
                return False
            n = 0
        else:
            if src != NULL and src_len <= NATT_SEAL_COPY_MAX:
                # A short payload costs less to copy than a second provider update call.
                memcpy(ct, src, src_len)
                src = NULL
            # GCM and ChaCha20-Poly1305 are stream modes: each update emits exactly its input.
            if src != NULL and a.update(ctx, ct, &n, src_len, src, src_len) != 1:
                return False
            k = src_len if src != NULL else 0
            if a.update(ctx, ct + k, &n, ct_len - k, ct + k, ct_len - k) != 1:
                return False
            n = ct_len
        if a.final(ctx, ct + n, &n2, 0) != 1:
            return False
        # A truncated GCM ICV is the leading octets of the tag (RFC 4106 §6).
        natt_octets(par, OSSL_CIPHER_PARAM_AEAD_TAG, icv, icv_len)
        return a.get_params(ctx, par) == 1
    if cipher != NATT_CIPHER_NULL:
        if EVP_CipherInit_ex(<EVP_CIPHER_CTX *>ctx, NULL, NULL, NULL, iv, 1) != 1:
            return False
        if EVP_CipherUpdate(<EVP_CIPHER_CTX *>ctx, ct, &outl, ct, ct_len) != 1 or outl != ct_len:
            return False
    return natt_seal_icv(sa, mdw, esp, 8 + iv_len + ct_len, seq_hi)


# --------------------------------------------------------------------------- worker pool

# ``threads=N`` runs on a process-wide pool of N-1 native worker threads plus the calling thread.
# A job is cut into chunks of NATT_CHUNK packets that threads claim with one atomic add. The
# caller works too and, once every chunk is claimed, waits only for the workers that actually
# joined the job; a worker that has not woken up yet (descheduled on a busy host) holds nothing
# up, and one that wakes late finds the job gone; one that wakes on the caller's CPU moves to
# another first (natt_worker). Workers sleep on a condition variable between
# jobs: no spinning that would steal the core a late worker needs (what OpenMP's default active
# wait does on an oversubscribed host, measured at ~20 ms per call on 10 000 packets). One job
# at a time: a second caller (another backend's batch) runs its job on its own thread, which
# gives the same results. After fork() the child starts with no workers (natt_after_fork_child).

cdef enum:
    NATT_CHUNK = 256

ctypedef void (*natt_chunk_fn)(natt_job *job, int64_t lo, int64_t hi, int tid) noexcept nogil

cdef struct natt_job:
    natt_chunk_fn fn
    natt_chunk_fn after   # or NULL: run by the caller on each chunk, in chunk order, after fn
    natt_state *st
    natt_io *io
    natt_sa *sa
    long nchunks
    long next          # next chunk to claim (atomic)
    long failed        # encap crypto failures (atomic)
    int active         # workers inside the job (under the pool mutex)
    int caller_cpu     # where the calling thread ran when it published the job, or -1

cdef struct natt_pool:
    pthread_mutex_t m
    pthread_cond_t work_cv          # workers wait for a job
    pthread_cond_t idle_cv          # the caller waits for its job's workers to leave
    natt_job *job                   # the running job, NULL when none
    uint64_t gen                    # bumped per job
    int want                        # worker tids 1..want may join the running job
    int nworkers                    # started workers, tids 1..nworkers
    long worker_chunks              # chunks the workers have run, ever (_pool_stats)
    long jobs                       # jobs offered to the workers, ever (_pool_stats)
    long moves                      # times a worker moved off the caller's CPU (_pool_stats)

cdef natt_pool natt_gpool


cdef inline int64_t natt_chunk_hi(int64_t lo, int64_t n) noexcept nogil:
    """End of the chunk starting at packet ``lo`` of ``n``."""
    return lo + NATT_CHUNK if lo + NATT_CHUNK < n else n


cdef long natt_job_work(natt_job *job, int tid) noexcept nogil:
    """Claim and run chunks of ``job`` until none is left; how many this thread ran."""
    cdef long c, done = 0
    cdef int64_t lo, n = job.io.n
    while True:
        c = natt_atomic_fetch_add(&job.next, 1)
        if c >= job.nchunks:
            return done
        done += 1
        lo = c * NATT_CHUNK
        job.fn(job, lo, natt_chunk_hi(lo, n), tid)
        if job.after != NULL:
            natt_store_release(&job.st.scratch[lo].done, 1)


cdef void natt_job_work_ordered(natt_job *job) noexcept nogil:
    """The caller's share of a job with an ``after`` step: it runs ``after`` on each chunk as
    soon as that chunk and every earlier one are through ``fn``, and claims ``fn`` chunks
    itself in between. So the in-order step overlaps the parallel one instead of following it
    (module docstring: phase 2 of chunk k runs while the workers are in phase 1 of later
    chunks), which takes the serial pass off the critical path of a 2-thread batch."""
    cdef long f = 0, c
    cdef int64_t n = job.io.n, lo
    cdef int spins
    while f < job.nchunks:
        lo = f * NATT_CHUNK
        if natt_load_acquire(&job.st.scratch[lo].done):
            job.after(job, lo, natt_chunk_hi(lo, n), 0)
            f += 1
            continue
        c = natt_atomic_fetch_add(&job.next, 1)
        if c < job.nchunks:
            lo = c * NATT_CHUNK
            job.fn(job, lo, natt_chunk_hi(lo, n), 0)
            job.st.scratch[lo].done = 1
            continue
        # Every chunk is claimed and a worker is still on chunk f: wait for it, politely
        # (a busy host may have descheduled that worker; yielding lets it run).
        spins = 0
        while not natt_load_acquire(&job.st.scratch[lo].done):
            spins += 1
            if spins < 64:
                natt_cpu_relax()
            else:
                sched_yield()


cdef void *natt_worker(void *arg) noexcept nogil:
    cdef int tid = <int><size_t>arg
    cdef natt_pool *pool = &natt_gpool
    cdef natt_job *job
    cdef uint64_t seen
    cdef long done
    cdef int moved, cpu
    pthread_mutex_lock(&pool.m)
    # natt_pool_run starts workers while it holds the mutex and publishes its job before it
    # lets go, so a new worker first sees the generation of the job that started it: one
    # behind, it joins that job instead of waiting for the next call (which left a process's
    # first threaded batch, such as a one-batch `natt decap --threads 2`, to one thread).
    seen = pool.gen - 1 if pool.job != NULL else pool.gen
    while True:
        while pool.gen == seen:
            pthread_cond_wait(&pool.work_cv, &pool.m)
        seen = pool.gen
        job = pool.job
        if job == NULL or tid > pool.want:
            continue
        cpu = job.caller_cpu
        if sched_getcpu() == cpu:
            # The kernel may wake a worker on the CPU of the thread that woke it (wake-affine;
            # a guest also avoids an idle vCPU the host has descheduled) and let it preempt
            # that thread: the batch then runs on one CPU while the other idles until the load
            # balancer notices, milliseconds later. On this 2-vCPU guest, threads=2 after a 2 ms
            # pause, 64-octet AES-GCM: the worker woke on the caller's CPU in 19 of 30 calls of
            # 1 024 to 8 192 packets and ran every chunk; threads=2 / None was 0.90-0.93 at
            # 4 096 and 8 192 packets, 1.01-1.09 and 1.11-1.53 with the move (BENCHMARKS.md,
            # "Small batches"). It moves before it joins: a move can wait for the host too, and
            # the caller must not wait for it.
            # ``cpu``, not job.caller_cpu: with the mutex let go, the caller may finish the job
            # without this worker and return, and the job on its stack is gone.
            pthread_mutex_unlock(&pool.m)
            moved = natt_move_off_cpu(cpu)
            pthread_mutex_lock(&pool.m)
            pool.moves += moved
            if pool.job == NULL or pool.gen != seen:    # that job is over (another may run)
                continue
        job.active += 1
        pthread_mutex_unlock(&pool.m)
        done = natt_job_work(job, tid)
        ERR_clear_error()
        natt_scrub_stack()
        pthread_mutex_lock(&pool.m)
        pool.worker_chunks += done
        job.active -= 1
        if job.active == 0:
            pthread_cond_signal(&pool.idle_cv)
    return NULL


cdef long natt_pool_run(natt_chunk_fn fn, natt_chunk_fn after, natt_state *st, natt_io *io, natt_sa *sa,
                        int nt) noexcept nogil:
    """Run ``fn`` over all packets of ``io`` on up to ``nt`` threads, then (overlapped, on the
    calling thread, in order) ``after`` if not NULL; returns job.failed. With ``after``,
    ``st.scratch`` must hold ``io.n`` packets (each chunk's first carries its ``done`` flag)."""
    cdef natt_job job
    cdef natt_pool *pool = &natt_gpool
    cdef pthread_t t
    cdef bint shared = False
    cdef long c
    job.fn = fn
    job.after = after
    job.st = st
    job.io = io
    job.sa = sa
    job.nchunks = <long>((io.n + NATT_CHUNK - 1) // NATT_CHUNK)
    job.next = 0
    job.failed = 0
    job.active = 0
    job.caller_cpu = sched_getcpu()
    if after != NULL:
        for c in range(job.nchunks):
            st.scratch[c * NATT_CHUNK].done = 0
    if nt > 1 and job.nchunks > 1:
        pthread_mutex_lock(&pool.m)
        if pool.job == NULL:
            while pool.nworkers < nt - 1:
                # A worker that cannot be started only means fewer helpers.
                if pthread_create(&t, NULL, natt_worker, <void *><size_t>(pool.nworkers + 1)) != 0:
                    break
                pthread_detach(t)
                pool.nworkers += 1
            pool.job = &job
            pool.want = nt - 1
            pool.gen += 1
            pool.jobs += 1
            pthread_cond_broadcast(&pool.work_cv)
            shared = True
        pthread_mutex_unlock(&pool.m)
    if after != NULL:
        natt_job_work_ordered(&job)
    else:
        natt_job_work(&job, 0)
    if shared:
        natt_scrub_stack()          # this thread decrypted chunks too
        pthread_mutex_lock(&pool.m)
        while job.active > 0:
            pthread_cond_wait(&pool.idle_cv, &pool.m)
        pool.job = NULL
        pthread_mutex_unlock(&pool.m)
    return job.failed


cdef void natt_pool_init() noexcept nogil:
    pthread_mutex_init(&natt_gpool.m, NULL)
    pthread_cond_init(&natt_gpool.work_cv, NULL)
    pthread_cond_init(&natt_gpool.idle_cv, NULL)
    natt_gpool.job = NULL
    natt_gpool.gen = 0
    natt_gpool.want = 0
    natt_gpool.nworkers = 0
    natt_gpool.worker_chunks = 0


natt_pool_init()


def _pool_stats() -> tuple[int, int, int, int]:
    """(workers started, chunks of NATT_CHUNK packets they have run, jobs offered to them, times
    a worker moved off the calling thread's CPU) in this process: whether ``threads=N`` calls are
    shared (tests)."""
    cdef long chunks, jobs, moves
    cdef int nworkers
    with nogil:
        pthread_mutex_lock(&natt_gpool.m)
        nworkers = natt_gpool.nworkers
        chunks = natt_gpool.worker_chunks
        jobs = natt_gpool.jobs
        moves = natt_gpool.moves
        pthread_mutex_unlock(&natt_gpool.m)
    return nworkers, chunks, jobs, moves


def _move_off_cpu(int cpu) -> bool:
    """Move the calling thread off CPU ``cpu`` as a pool worker does (tests)."""
    return natt_move_off_cpu(cpu) != 0


def _cpu() -> int:
    """The CPU the calling thread runs on, -1 if unknown (tests)."""
    return sched_getcpu()


# --------------------------------------------------------------------------- decap kernel

cdef inline bint natt_snapshot(const natt_io *io, int64_t i, int64_t extra, natt_pkt *pk) noexcept nogil:
    """Read segment ``i`` and its output slot once and check them against the buffers (the
    caller may have rewritten the index arrays after validation: then the packet gets ERROR,
    never a crash). Only the checked copies in ``pk`` are used afterwards."""
    cdef int64_t o = (<volatile int64_t *>io.off)[i]
    cdef int64_t n = (<volatile int64_t *>io.len)[i]
    cdef int64_t oo = (<volatile int64_t *>io.ooff)[i]
    if not (o >= 0 and n >= 0 and n <= io.data_len - o and oo >= 0 and n + extra <= io.odata_len - oo):
        return False
    pk.inp = io.data + o
    pk.outp = io.odata + oo
    pk.in_len = n
    return True


cdef inline void natt_put(natt_io *io, int64_t i, uint8_t status, int64_t sa, uint64_t seq,
                          uint8_t nh) noexcept nogil:
    io.ostatus[i] = status
    io.osa[i] = sa
    io.oseq[i] = seq
    io.onh[i] = nh


cdef inline void natt_copy_input(natt_io *io, int64_t i, const natt_pkt *pk) noexcept nogil:
    memcpy(pk.outp, pk.inp, pk.in_len)
    io.olen[i] = pk.in_len


cdef inline natt_sa *natt_lookup(const natt_state *st, int64_t entry, uint32_t spi, uint32_t dst) noexcept nogil:
    """Inbound SA for (entry, SPI) whose destination key matches ``dst``; largest mask wins."""
    cdef natt_sa *sa = st.buckets[natt_hash(entry, spi, st.nbuckets - 1)]
    cdef natt_sa *best = NULL
    while sa != NULL:
        if (sa.spi == spi and sa.entry_handle == entry
                and (dst & sa.dst_mask) == (sa.dst_addr & sa.dst_mask)
                and (best == NULL or sa.dst_mask > best.dst_mask)):
            best = sa
        sa = sa.hnext
    return best


cdef void natt_decap_headers(const natt_state *st, natt_io *io, int64_t i, natt_pkt *pk,
                             natt_key *key) noexcept nogil:
    """Semantics §1 steps 1–5 (stateless, no table but the ports'): packets that end here are
    finished (status, output); others get ``pk.status = NATT_CONT`` and their SA lookup key in
    ``key`` (``entry``, ``spi``, ``dst``) for natt_decap_lookup."""
    cdef const uint8_t *p
    cdef const uint8_t *u
    cdef int64_t n
    cdef int32_t ihl4, tl, ulen, esp_off, esp_len
    cdef uint16_t port
    cdef int64_t entry
    cdef uint8_t status

    pk.sa = NULL
    pk.crypto = NATT_CR_NONE
    pk.bad_len = 0
    if not natt_snapshot(io, i, 0, pk):
        pk.status = NATT_ERROR
        natt_put(io, i, NATT_ERROR, 0, 0, 0)
        io.olen[i] = 0
        return
    p = pk.inp
    n = pk.in_len
    status = NATT_CONT
    while True:                              # one pass; "break" = status decided
        if n < 20 or (p[0] >> 4) != 4:
            status = NATT_NOT_ESP
            break
        ihl4 = (p[0] & 15) * 4
        tl = natt_rd16(p + 2)
        if ihl4 < 20 or tl < ihl4 or tl > n:
            status = NATT_MALFORMED
            break
        if p[9] != NATT_PROTO_UDP:
            status = NATT_NOT_ESP
            break
        if (p[6] & 0x20) or (natt_rd16(p + 6) & 0x1FFF):
            status = NATT_FRAGMENT       # MF or an offset: a NIC does not reassemble
            break
        if tl - ihl4 < 8 or natt_rd16(p + ihl4 + 4) != tl - ihl4:
            status = NATT_MALFORMED
            break
        port = natt_rd16(p + ihl4 + 2)
        entry = st.port_handle[port]
        if entry == 0:
            status = NATT_NOT_ESP
            break
        u = p + ihl4 + 8
        ulen = tl - ihl4 - 8
        if ulen == 1 and u[0] == 0xFF:
            status = NATT_KEEPALIVE      # RFC 3948 §2.3
            break
        if st.port_type[port] == NATT_ENCAP_OTHER:
            if ulen == 0:
                status = NATT_MALFORMED
                break
            if ulen >= 4 and u[0] == 0 and u[1] == 0 and u[2] == 0 and u[3] == 0:
                status = NATT_IKE        # RFC 3948 §2.2 non-ESP marker
                break
            esp_off = ihl4 + 8
        else:
            if not (ulen > 16 and natt_rd32(u) == 0 and natt_rd32(u + 4) == 0):
                status = NATT_IKE
                break
            esp_off = ihl4 + 16
        esp_len = tl - esp_off
        if esp_len < 8:
            status = NATT_MALFORMED
            break
        key.entry = entry
        key.spi = natt_rd32(p + esp_off)
        key.dst = natt_rd32(p + 16)
        pk.ihl4 = ihl4
        pk.esp_off = esp_off
        pk.esp_len = esp_len
        pk.seql = natt_rd32(p + esp_off + 4)
        break
    pk.status = status
    if status != NATT_CONT:
        natt_put(io, i, status, 0, 0, 0)
        natt_copy_input(io, i, pk)


cdef inline void natt_decap_lookup(const natt_state *st, natt_io *io, int64_t i, natt_pkt *pk,
                                   const natt_key *key) noexcept nogil:
    """Semantics §1 steps 6–7 for a packet natt_decap_headers passed: its SA (else NO_SA,
    finished here) and the length check."""
    cdef natt_sa *sa = natt_lookup(st, key.entry, key.spi, key.dst)
    cdef int32_t ct_len
    if sa == NULL:
        pk.status = NATT_NO_SA
        natt_put(io, i, NATT_NO_SA, 0, pk.seql, 0)
        natt_copy_input(io, i, pk)
        return
    pk.sa = sa
    ct_len = pk.esp_len - 8 - sa.iv_len - sa.icv_len
    if ct_len < 2 or (sa.block > 1 and ct_len % sa.block != 0):
        pk.bad_len = 1


cdef inline void natt_decap_parse(const natt_state *st, natt_io *io, int64_t i, natt_pkt *pk) noexcept nogil:
    """Semantics §1 steps 1–7 (stateless). Packets that end before an SA is found are
    finished here (status, output); others get ``pk.status = NATT_CONT``."""
    cdef natt_key key
    natt_decap_headers(st, io, i, pk, &key)
    if pk.status == NATT_CONT:
        natt_decap_lookup(st, io, i, pk, &key)


cdef int natt_resync(natt_state *st, natt_sa *sa, natt_pkt *pk, uint8_t *dst, uint64_t *seq) noexcept nogil:
    """RFC 4303 Appendix A3.2: retry a packet that failed authentication as ``seq`` with the
    next NATT_ESN_RESYNC_LIMIT values of seq_hi above ``seq``'s (never past 2**32 - 1). The
    natt_open result of the last try; ``seq`` becomes the number that authenticated, if one did."""
    cdef uint32_t seq_hi = <uint32_t>(seq[0] >> 32)
    cdef int k, r = NATT_CR_AUTH
    for k in range(NATT_ESN_RESYNC_LIMIT):
        if seq_hi == UINT32_MAX:
            break
        seq_hi += 1
        r = natt_open(sa, 0, st.mdw[0], pk.inp + pk.esp_off, pk.esp_len, seq_hi, dst, pk)
        if r == NATT_CR_OK or r == NATT_CR_PAD:
            seq[0] = (<uint64_t>seq_hi << 32) | pk.seql
        if r != NATT_CR_AUTH:
            break
    return r


cdef void natt_decap_finish(natt_state *st, natt_io *io, int64_t i, natt_pkt *pk, bint cached) noexcept nogil:
    """Semantics §1 steps 6 (ESN inference) and 7–12 for a packet whose SA was found, in
    packet order against the real replay window; reuses ``pk``'s crypto result when it was
    computed for the same ``seq_hi``."""
    cdef natt_sa *sa = pk.sa
    cdef uint64_t seq = 0
    cdef bint ok
    cdef uint32_t seq_hi
    cdef int r
    cdef const uint8_t *p = pk.inp
    cdef uint8_t *o = pk.outp
    cdef int32_t dst_off = 0 if sa.tunnel else pk.ihl4
    cdef int32_t plen, off
    cdef uint8_t nh
    cdef uint32_t hc

    ok = natt_infer_seq(sa.top, sa.window, sa.esn, pk.seql, &seq)
    natt_put(io, i, NATT_OK, sa.handle, seq if ok else pk.seql, 0)
    if pk.bad_len:
        sa.ctr[NATT_C_MALFORMED] += 1
        io.ostatus[i] = NATT_MALFORMED
        natt_copy_input(io, i, pk)
        return
    if sa.window and (not ok or natt_is_replay(sa, seq)):
        sa.ctr[NATT_C_REPLAYS] += 1
        io.ostatus[i] = NATT_REPLAY
        natt_copy_input(io, i, pk)
        return
    seq_hi = <uint32_t>(seq >> 32)
    if cached and pk.crypto != NATT_CR_NONE and pk.seq_hi == seq_hi:
        r = pk.crypto
    else:
        r = natt_open(sa, 0, st.mdw[0], p + pk.esp_off, pk.esp_len, seq_hi, o + dst_off, pk)
    if r == NATT_CR_AUTH and sa.esn:
        # RFC 4303 Appendix A3: every NATT_ESN_RESYNC_TRIGGER-th consecutive failure is
        # retried with larger seq_hi values, in case 2**32 or more packets were lost.
        sa.fail_run += 1
        if sa.fail_run % NATT_ESN_RESYNC_TRIGGER == 0:
            r = natt_resync(st, sa, pk, o + dst_off, &seq)
            if r == NATT_CR_OK or r == NATT_CR_PAD:
                sa.ctr[NATT_C_ESN_RESYNCS] += 1
                io.oseq[i] = seq
    if r == NATT_CR_ERR:
        ERR_clear_error()
        sa.ctr[NATT_C_ERRORS] += 1
        io.ostatus[i] = NATT_ERROR
        natt_copy_input(io, i, pk)
        return
    if r == NATT_CR_AUTH:
        sa.ctr[NATT_C_AUTH_FAILURES] += 1
        io.ostatus[i] = NATT_AUTH_FAILED
        natt_copy_input(io, i, pk)
        return
    # Authenticated: the window moves now, whatever the trailer says (RFC 4303 §3.4.3).
    sa.fail_run = 0
    natt_accept(sa, seq)
    nh = pk.nh
    io.onh[i] = nh
    if r == NATT_CR_PAD:
        sa.ctr[NATT_C_MALFORMED] += 1
        io.ostatus[i] = NATT_MALFORMED
        natt_copy_input(io, i, pk)
        return
    if nh == NATT_NH_NONE:
        sa.packets += 1
        sa.ctr[NATT_C_DUMMY] += 1
        io.ostatus[i] = NATT_DUMMY
        io.olen[i] = 0
        return
    plen = pk.payload_len
    if sa.tunnel:
        if nh != NATT_NH_IPV4 and nh != NATT_NH_IPV6:
            sa.ctr[NATT_C_PROTOCOL] += 1
            io.ostatus[i] = NATT_PROTOCOL
            natt_copy_input(io, i, pk)
            return
        io.olen[i] = plen
    else:
        natt_copy_ip_header(o, p, pk.ihl4, nh, pk.ihl4 + plen)
        if sa.nat_oa_src or sa.nat_oa_dst:
            # Semantics §4 (RFC 3948 §3.1.2): the sender summed its pseudo-header with the
            # original addresses (NAT-OA); swap them for the received ones.
            off = -1
            if nh == NATT_PROTO_TCP and plen >= 18:
                off = 16
            elif nh == NATT_PROTO_UDP and plen >= 8:
                off = 6
            if off >= 0:
                hc = natt_rd16(o + pk.ihl4 + off)
                if not (nh == NATT_PROTO_UDP and hc == 0):   # RFC 768: 0 = no checksum
                    if sa.nat_oa_src:
                        hc = natt_csum_update32(hc, sa.nat_oa_src, natt_rd32(p + 12))
                    if sa.nat_oa_dst:
                        hc = natt_csum_update32(hc, sa.nat_oa_dst, natt_rd32(p + 16))
                    if nh == NATT_PROTO_UDP and hc == 0:
                        hc = 0xFFFF
                    natt_wr16(o + pk.ihl4 + off, hc)
        io.olen[i] = pk.ihl4 + plen
    sa.packets += 1
    sa.bytes += <uint64_t>io.olen[i]


cdef inline void natt_prefetch_aes(const natt_sa *sa, int n) noexcept nogil:
    """Start loading the first ``n`` octets of natt's own AES state of ``sa``."""
    cdef int k
    for k in range(0, n, 64):
        natt_prefetch_r(sa.cs.aes + k)


cdef inline void natt_prefetch_ctx(const natt_sa *sa) noexcept nogil:
    """Start loading the cipher state of ``sa`` a decap reads: natt's own AES-GCM state, else
    thread 0's cipher context (its SA struct must be cached)."""
    cdef const uint8_t *c
    cdef int k
    if sa.aes_rounds:
        natt_prefetch_aes(sa, 16 * (NATT_GCM_POWERS + sa.aes_rounds + 1))
        return
    c = <const uint8_t *>sa.cs.tctx[0]
    if c == NULL:
        return
    # A provider AEAD context holds the key schedule, the GHASH key powers and the IV and tag
    # state: about 1 KiB for AES-GCM in OpenSSL 3.0 (less for ChaCha20-Poly1305; a prefetch
    # past an allocation's end is harmless). For EVP contexts only the EVP_CIPHER_CTX itself
    # (184 octets) is reachable; its provider context is private to libcrypto.
    for k in range(0, NATT_PREFETCH_AEAD_CTX if sa.aead != NULL else 192, 64):
        natt_prefetch_w(c + k)


cdef inline void natt_prefetch_sa(const natt_sa *sa) noexcept nogil:
    """Start loading lines 0 to 2 of ``sa``, which every decap touches (natt_sa layout comment;
    line 1 is the one it writes)."""
    natt_prefetch_r(<const uint8_t *>sa)
    natt_prefetch_w(<const uint8_t *>sa + 64)
    natt_prefetch_r(<const uint8_t *>sa + 128)


cdef inline void natt_prefetch_ring_word(const natt_sa *sa, uint32_t seql) noexcept nogil:
    """With line 1 of ``sa`` cached: start loading the replay ring's word that natt_accept
    writes for ``seql`` (and usually clears from top + 1), where the ring is an allocation of
    its own (windows above 64). The ring index needs only the low 32 bits of the number."""
    if sa.bmask > 63:
        natt_prefetch_w(<const uint8_t *>&sa.bitmap[(seql & sa.bmask) >> 6])


cdef inline void natt_prefetch_lookup(const natt_sa *head, uint32_t spi, uint32_t seql,
                                      bint replay) noexcept nogil:
    """With bucket head ``head`` cached: start loading the cipher state of the SA with ``spi``,
    which is the head or, rarely (chains average 1.1 SAs, FastBackend._insert), the next one,
    and the next link the lookup will read; with ``replay``, the head's replay ring word for
    ``seql`` too (at 100 000 SAs, 64 octets, a window of 128 took 221 ns per packet without
    it and 133 with it, against 119 for a window of 64 in the same run: benchmarks/HISTORY.md,
    "The twenty-third session")."""
    if head.spi == spi or head.hnext == NULL:
        natt_prefetch_ctx(head)
        if replay:
            natt_prefetch_ring_word(head, seql)
        if head.hnext != NULL:
            natt_prefetch_w(<const uint8_t *>head.hnext)
    else:
        # Not the head: its line 2 is not cached, so the cipher state is taken to be natt's
        # own AES (the common case of a crowded table).
        natt_prefetch_sa(head.hnext)
        natt_prefetch_aes(head.hnext, NATT_AES_STATE_LEN)


cdef inline void natt_ring_fill(const natt_state *st, natt_io *io, int64_t k, natt_pkt *pk,
                                natt_key *key) noexcept nogil:
    """Parse packet ``k``'s headers into ``pk`` and ``key``; if it goes on to an SA lookup,
    note its hash bucket and start loading the bucket's slot."""
    natt_decap_headers(st, io, k, pk, key)
    if pk.status == NATT_CONT:
        key.bucket = natt_hash(key.entry, key.spi, st.nbuckets - 1)
        natt_prefetch_r(&st.buckets[key.bucket])


cdef inline natt_pkt *natt_pipe_pkt(natt_pkt *pkts, int64_t k, bint ring) noexcept nogil:
    """Packet ``k``'s state: in a ring of 16 (natt_decap_serial) or the scratch array."""
    return &pkts[k & 15] if ring else &pkts[k]


cdef inline void natt_pipe_start(const natt_state *st, natt_io *io, int64_t lo, int64_t hi,
                                 natt_pkt *pkts, bint ring, natt_key *keys) noexcept nogil:
    """Fill the look-ahead of natt_pipe_step for packets lo..hi-1 (``keys``: a ring of 16)."""
    cdef int64_t k
    for k in range(lo, lo + 12 if hi - lo > 12 else hi):
        natt_ring_fill(st, io, k, natt_pipe_pkt(pkts, k, ring), &keys[k & 15])


cdef inline natt_sa *natt_pipe_head(const natt_state *st, natt_pkt *pkts, int64_t k, int64_t hi,
                                    bint ring, const natt_key *keys) noexcept nogil:
    """The head of packet ``k``'s hash chain if ``k`` is a packet (below ``hi``) that goes on to
    an SA lookup, else NULL."""
    if k >= hi or natt_pipe_pkt(pkts, k, ring).status != NATT_CONT:
        return NULL
    return st.buckets[keys[k & 15].bucket]


cdef inline natt_pkt *natt_pipe_step(const natt_state *st, natt_io *io, int64_t i, int64_t hi,
                                     natt_pkt *pkts, bint ring, natt_key *keys,
                                     bint replay) noexcept nogil:
    """One step of the many-SA pipeline over packets ..hi-1: start the loads of packets i+4,
    i+8 and i+12 (natt_decap_serial), then look up packet i; its state, NATT_CONT if it goes on
    to the crypto. ``replay``: the caller checks the replay window too."""
    cdef int64_t k
    cdef natt_pkt *q
    cdef natt_sa *head
    k = i + 4
    head = natt_pipe_head(st, pkts, k, hi, ring, keys)
    if head != NULL:
        natt_prefetch_lookup(head, keys[k & 15].spi, natt_pipe_pkt(pkts, k, ring).seql, replay)
    head = natt_pipe_head(st, pkts, i + 8, hi, ring, keys)
    if head != NULL:
        natt_prefetch_sa(head)
    # In the ring, slot (i+12) & 15 last held packet i-4, finished.
    k = i + 12
    if k < hi:
        natt_ring_fill(st, io, k, natt_pipe_pkt(pkts, k, ring), &keys[k & 15])
    q = natt_pipe_pkt(pkts, i, ring)
    if q.status == NATT_CONT:
        natt_decap_lookup(st, io, i, q, &keys[i & 15])
    return q


cdef void natt_decap_serial(natt_state *st, natt_io *io) noexcept nogil:
    # With many SAs a decap is dominated by cache misses: the bucket array, the SA struct and
    # the SA's cipher state (BENCHMARKS.md, 100 000-SA case). Software-pipeline them: packet
    # i+12's headers are parsed (natt_decap_headers, into a ring of 16) and its bucket slot
    # prefetched, the chain head that slot points to at i+8, and at i+4 (the head now cached)
    # the cipher state of the SA with the packet's SPI; packet i then only has its lookup and
    # the rest to do. Measured at 100 000 SAs, 64-octet AES-GCM: bucket and SA only, 1.2-1.5
    # -> 1.0-1.2 us/packet; the rest, see BENCHMARKS.md. With few SAs everything is cached
    # anyway and the ring would be pure overhead, hence the threshold. The threaded pipeline
    # runs the same steps in its two phases (natt_chunk_decap, natt_chunk_finish).
    cdef int64_t i
    cdef natt_pkt ring[16]              # packet k at ring[k & 15]
    cdef natt_key keys[16]              # and its lookup key (when its status is NATT_CONT)
    cdef natt_pkt *pk
    cdef int64_t n = io.n
    cdef natt_pkt one
    if st.n_inbound < NATT_PREFETCH_MIN_SAS:
        for i in range(n):
            natt_decap_parse(st, io, i, &one)
            if one.status == NATT_CONT:
                natt_decap_finish(st, io, i, &one, False)
        return
    natt_pipe_start(st, io, 0, n, ring, True, keys)
    for i in range(n):
        pk = natt_pipe_step(st, io, i, n, ring, True, keys, True)
        if pk.status == NATT_CONT:
            natt_decap_finish(st, io, i, pk, False)


cdef void natt_chunk_decap(natt_job *job, int64_t lo, int64_t hi, int tid) noexcept nogil:
    """Phase 1 on packets lo..hi-1: parse, classify and look up each packet, then verify and
    decrypt it for the ``seq_hi`` its SA's window suggests now.

    Only a guess: phase 2 reuses the result if the real window (which moves as the calling
    thread finishes earlier chunks) infers the same ``seq_hi``, else redoes the crypto, so no
    decision depends on it. Without ESN the guess is 0 and always right; with ESN it reads
    ``top`` once per run of packets of one SA and follows the packets it guessed, as the
    serial pass would if all of them authenticate. Replays are decrypted too and rejected by
    phase 2: checking the window here would read the bitmap phase 2 is writing. With many
    SAs the lookups run through natt_decap_serial's pipeline, within the chunk."""
    cdef natt_state *st = job.st
    cdef int64_t i
    cdef natt_pkt *pk
    cdef natt_sa *sa
    cdef natt_sa *last = NULL
    cdef uint64_t top = 0, seq
    cdef natt_key keys[16]
    cdef bint pipe = st.n_inbound >= NATT_PREFETCH_MIN_SAS
    if pipe:
        natt_pipe_start(st, job.io, lo, hi, st.scratch, False, keys)
    for i in range(lo, hi):
        if pipe:
            pk = natt_pipe_step(st, job.io, i, hi, st.scratch, False, keys, False)
        else:
            pk = &st.scratch[i]
            natt_decap_parse(st, job.io, i, pk)
        if pk.status != NATT_CONT or pk.bad_len:
            continue
        sa = pk.sa
        seq = pk.seql
        if sa.esn:
            if sa != last:
                last = sa
                top = natt_load_relaxed64(&sa.top)
            if not natt_infer_seq(top, sa.window, True, pk.seql, &seq):
                continue
            if seq > top:
                top = seq
        pk.seq_hi = <uint32_t>(seq >> 32)
        pk.crypto = natt_open(sa, tid, st.mdw[tid], pk.inp + pk.esp_off, pk.esp_len,
                              pk.seq_hi, pk.outp + (0 if sa.tunnel else pk.ihl4), pk)


cdef void natt_chunk_finish(natt_job *job, int64_t lo, int64_t hi, int tid) noexcept nogil:
    """Phase 2 on packets lo..hi-1, in order. It reads and writes line 1 of each packet's SA
    (replay window, counters), which phase 1 did not touch; with many SAs those are misses in
    packet order, so start them 8 packets ahead, and the replay ring word 4 ahead, once line 1
    is in. Only within the chunk: phase 1 may still be writing the next one."""
    cdef int64_t i
    cdef natt_pkt *pk
    cdef natt_pkt *scratch = job.st.scratch
    cdef bint ahead = job.st.n_inbound >= NATT_PREFETCH_MIN_SAS
    for i in range(lo, hi):
        if ahead:
            if i + 8 < hi and scratch[i + 8].status == NATT_CONT:
                natt_prefetch_r(<const uint8_t *>scratch[i + 8].sa)
                natt_prefetch_w(<const uint8_t *>scratch[i + 8].sa + 64)
            if i + 4 < hi and scratch[i + 4].status == NATT_CONT:
                natt_prefetch_ring_word(scratch[i + 4].sa, scratch[i + 4].seql)
        pk = &scratch[i]
        if pk.status == NATT_CONT:
            natt_decap_finish(job.st, job.io, i, pk, True)


cdef void natt_decap_parallel(natt_state *st, natt_io *io, int nt) noexcept nogil:
    """The two phases of the module docstring: phase 1 on the worker pool and the calling
    thread, phase 2 on the calling thread, chunk by chunk as phase 1 completes them."""
    natt_pool_run(natt_chunk_decap, natt_chunk_finish, st, io, NULL, nt)
    ERR_clear_error()


# --------------------------------------------------------------------------- encap kernel

cdef inline bint natt_inner(const natt_sa *sa, const uint8_t *p, int64_t n, int32_t *hdr,
                            int32_t *plen, uint8_t *nh, uint8_t *tos) noexcept nogil:
    """Semantics §2 step 1: where the inner payload starts and how long it is."""
    cdef int32_t ihl4, tl
    if n >= 20 and (p[0] >> 4) == 4:
        ihl4 = (p[0] & 15) * 4
        tl = natt_rd16(p + 2)
        if ihl4 < 20 or tl < ihl4 or tl > n:
            return False
        tos[0] = p[1]
        if sa.tunnel:
            hdr[0] = 0
            plen[0] = tl
            nh[0] = NATT_NH_IPV4
        elif natt_rd16(p + 6) & 0x3FFF:
            # RFC 4303 §3.3.4: transport mode protects whole datagrams, never fragments (the
            # outer header would inherit MF/offset and the peer could not decap it).
            return False
        else:
            hdr[0] = ihl4
            plen[0] = tl - ihl4
            nh[0] = p[9]
        return True
    if sa.tunnel and n >= 40 and (p[0] >> 4) == 6:
        tl = 40 + natt_rd16(p + 4)
        if tl > n:
            return False
        hdr[0] = 0
        plen[0] = tl
        nh[0] = NATT_NH_IPV6
        tos[0] = <uint8_t>(((p[0] & 0x0F) << 4) | (p[1] >> 4))   # IPv6 traffic class
        return True
    return False


cdef inline int32_t natt_encap_len(const natt_sa *sa, int32_t hdr, int32_t plen, int32_t *ct_len) noexcept nogil:
    """Total length of the encapsulated packet (semantics §2 steps 3, 6, 7)."""
    # 4, 8 or 16 (suite blocks are 1, 8, 16): a power of two, so a mask, not a division
    cdef int32_t align = sa.block if sa.block > 4 else 4
    cdef int32_t pad = -(plen + 2) & (align - 1)
    ct_len[0] = plen + pad + 2
    return ((20 if sa.tunnel else hdr) + 8 + (8 if sa.encap_ike else 0)
            + 8 + sa.iv_len + ct_len[0] + sa.icv_len)


cdef void natt_encap_assign(natt_sa *sa, natt_io *io, natt_pkt *pkts, int64_t lo, int64_t hi) noexcept nogil:
    """Serial pass over packets lo..hi-1 (packet i's state in ``pkts[i - lo]``): statuses
    decided before crypto, and sequence numbers in packet order."""
    cdef int64_t i, n
    cdef natt_pkt *pk
    cdef const uint8_t *p
    cdef int32_t hdr = 0, plen = 0, ct_len = 0, total
    cdef uint8_t nh = 0, tos = 0
    cdef uint64_t limit = UINT64_MAX if sa.esn else UINT32_MAX
    for i in range(lo, hi):
        pk = &pkts[i - lo]
        pk.status = NATT_ERROR
        if not natt_snapshot(io, i, NATT_ENCAP_OVERHEAD, pk):
            natt_put(io, i, NATT_ERROR, 0, 0, 0)
            io.olen[i] = 0
            continue
        p = pk.inp
        n = pk.in_len
        pk.status = NATT_MALFORMED
        pk.crypto = NATT_CR_NONE
        if not natt_inner(sa, p, n, &hdr, &plen, &nh, &tos):
            sa.ctr[NATT_C_MALFORMED] += 1
            natt_put(io, i, NATT_MALFORMED, 0, 0, 0)
            natt_copy_input(io, i, pk)
            continue
        if sa.oseq == limit:
            # RFC 4303 §3.3.3: the counter never cycles.
            sa.ctr[NATT_C_SEQ_OVERFLOWS] += 1
            pk.status = NATT_SEQ_OVERFLOW
            natt_put(io, i, NATT_SEQ_OVERFLOW, 0, 0, 0)
            io.olen[i] = 0
            continue
        total = natt_encap_len(sa, hdr, plen, &ct_len)
        if total > NATT_MAX_IP_LEN:
            sa.ctr[NATT_C_MALFORMED] += 1
            natt_put(io, i, NATT_MALFORMED, 0, sa.oseq + 1, 0)
            natt_copy_input(io, i, pk)
            continue
        sa.oseq += 1
        sa.packets += 1
        sa.bytes += <uint64_t>n
        pk.status = NATT_OK
        pk.seq = sa.oseq
        # natt_encap_build writes the packet from these, not from a second parse: the caller
        # may rewrite the octets meanwhile (SECURITY.md), and the packet must be as long as
        # the olen given here, or its tail would be whatever the slot held before.
        pk.ihl4 = hdr
        pk.payload_len = plen
        pk.nh = nh
        pk.tos = tos
        natt_put(io, i, NATT_OK, sa.handle, sa.oseq, nh)
        io.olen[i] = total


# Bumped in a forked child: a pool filled before the fork must not hand the child the IVs the
# parent will also use (a CBC IV must be unpredictable, RFC 3602 §3; libcrypto's own DRBG
# reseeds after fork, our pools are refilled from it).
cdef uint64_t natt_fork_gen = 1


cdef void natt_after_fork_child() noexcept nogil:
    global natt_fork_gen
    natt_fork_gen += 1
    # Worker threads do not survive fork(), and the pool mutex may have been held by one;
    # so may the SA arena's, by a thread adding or deleting an SA.
    natt_pool_init()
    pthread_mutex_init(&natt_sa_arena.m, NULL)


pthread_atfork(NULL, NULL, natt_after_fork_child)


cdef inline bint natt_random_iv(natt_state *st, int tid, uint8_t *iv, int32_t n) noexcept nogil:
    """``n`` fresh random octets from this thread's pool (only thread ``tid`` touches it)."""
    cdef natt_ivpool *pool = st.ivpool[tid]
    if pool == NULL:
        pool = <natt_ivpool *>malloc(sizeof(natt_ivpool))
        if pool == NULL:
            return False
        pool.pos = NATT_IVPOOL
        st.ivpool[tid] = pool
    if pool.pos + n > NATT_IVPOOL or pool.fork_gen != natt_fork_gen:
        if RAND_bytes(pool.buf, NATT_IVPOOL) != 1:
            pool.pos = NATT_IVPOOL
            return False
        pool.pos = 0
        pool.fork_gen = natt_fork_gen
    memcpy(iv, pool.buf + pool.pos, n)
    OPENSSL_cleanse(pool.buf + pool.pos, n)    # a used IV never stays behind as a future one
    pool.pos += n
    return True


cdef inline bint natt_on_lanes(const natt_sa *sa) noexcept nogil:
    """Outbound AES-CBC on natt's AES-NI lanes: natt_encap_range encrypts groups of packets."""
    return sa.aes_rounds != 0 and sa.cipher == NATT_CIPHER_AES_CBC


cdef bint natt_encap_build(natt_state *st, natt_sa *sa, int tid, natt_pkt *pk) noexcept nogil:
    """Write a packet the assignment pass made OK into its output slot. False on a crypto
    library failure.

    With AES-NI CBC (natt_on_lanes) the ESP payload is left in plaintext, to be encrypted with
    other packets' and then MACed (natt_encap_range); ``pk.esp_off``/``pk.esp_len`` say where
    it is (ESP header to trailer, the octets the ICV covers).
    """
    cdef const uint8_t *p = pk.inp
    cdef uint8_t *o = pk.outp
    cdef int32_t hdr = pk.ihl4, plen = pk.payload_len, ct_len = 0, total, k, pad, ohdr, marker
    cdef uint8_t nh = pk.nh, tos = pk.tos
    cdef uint32_t df
    cdef uint64_t seq = pk.seq
    cdef uint8_t *esp
    cdef uint8_t *ct
    cdef bint direct
    total = natt_encap_len(sa, hdr, plen, &ct_len)
    ohdr = 20 if sa.tunnel else hdr
    marker = 8 if sa.encap_ike else 0
    esp = o + ohdr + 8 + marker
    natt_wr32(esp, sa.spi)
    natt_wr32(esp + 4, <uint32_t>seq)
    if sa.cipher == NATT_CIPHER_AES_GCM or sa.cipher == NATT_CIPHER_CHACHA20_POLY1305 or sa.cipher == NATT_CIPHER_AES_GMAC:
        # RFC 4106 §3.1: the IV only has to be unique under the key; the 64-bit seq is.
        natt_wr32(esp + 8, <uint32_t>(seq >> 32))
        natt_wr32(esp + 12, <uint32_t>seq)
    elif sa.iv_len:
        if not natt_random_iv(st, tid, esp + 8, sa.iv_len):     # RFC 3602 §3: unpredictable
            return False
    ct = esp + 8 + sa.iv_len
    # GCM/ChaCha20 encrypt the payload straight from the input (natt_seal); the others need
    # the plaintext in place (CBC, GMAC authenticates it unencrypted).
    direct = sa.cipher == NATT_CIPHER_AES_GCM or sa.cipher == NATT_CIPHER_CHACHA20_POLY1305
    if not direct:
        memcpy(ct, p + hdr, plen)
    pad = ct_len - 2 - plen
    for k in range(pad):
        ct[plen + k] = <uint8_t>(k + 1)
    ct[plen + pad] = <uint8_t>pad
    ct[plen + pad + 1] = nh
    pk.esp_off = ohdr + 8 + marker
    pk.esp_len = 8 + sa.iv_len + ct_len
    if not natt_on_lanes(sa) and not natt_seal(sa, tid, st.mdw[tid], esp, ct_len, <uint32_t>(seq >> 32),
                                               p + hdr if direct else NULL, plen):
        return False
    # UDP (RFC 3948 §2.1: checksum 0), then the legacy non-IKE marker if the SA's framing wants it.
    natt_wr16(o + ohdr, sa.encap_src_port)
    natt_wr16(o + ohdr + 2, sa.encap_dst_port)
    natt_wr16(o + ohdr + 4, total - ohdr)
    natt_wr16(o + ohdr + 6, 0)
    if marker:
        memset(o + ohdr + 8, 0, 8)
    if sa.tunnel:
        # DF as the SA says (RFC 4301 §8.1; semantics §2 step 7): "copy" keeps an inner IPv4
        # sender's path MTU discovery, and its packets atomic (RFC 6864); an inner IPv6 packet
        # has no DF to copy. The masks were chosen at add time: no per-packet string.
        df = <uint32_t>((p[6] & sa.df_keep if nh == NATT_NH_IPV4 else 0) | sa.df_set) << 8
        # Summed from the values, not read back (natt_copy_ip_header says why).
        o[0] = 0x45
        o[1] = tos
        natt_wr16(o + 2, total)
        natt_wr16(o + 4, <uint32_t>(seq & 0xFFFF))
        natt_wr16(o + 6, df)
        o[8] = NATT_TUNNEL_TTL
        o[9] = NATT_PROTO_UDP
        natt_wr32(o + 12, sa.src_tunnel_addr)
        natt_wr32(o + 16, sa.dst_tunnel_addr)
        natt_wr16(o + 10, natt_csum_fold(
            0x4500 + tos + total + <uint32_t>(seq & 0xFFFF) + df + ((NATT_TUNNEL_TTL << 8) | NATT_PROTO_UDP)
            + (sa.src_tunnel_addr >> 16) + (sa.src_tunnel_addr & 0xFFFF)
            + (sa.dst_tunnel_addr >> 16) + (sa.dst_tunnel_addr & 0xFFFF)))
    else:
        natt_copy_ip_header(o, p, hdr, NATT_PROTO_UDP, total)
    return True


cdef void natt_encap_fail(natt_sa *sa, natt_io *io, int64_t i, natt_pkt *pk) noexcept nogil:
    """Undo an OK the assignment pass counted, for a packet whose crypto failed. Its sequence
    number stays used: it may have reached the cipher as a nonce (semantics §2 step 2)."""
    pk.status = NATT_ERROR
    sa.packets -= 1
    sa.bytes -= <uint64_t>pk.in_len
    sa.ctr[NATT_C_ERRORS] += 1
    natt_put(io, i, NATT_ERROR, 0, 0, 0)
    natt_copy_input(io, i, pk)


cdef long natt_encap_range(natt_state *st, natt_sa *sa, int tid, natt_pkt *pkts, int64_t n) noexcept nogil:
    """Build the OK packets among the ``n`` of ``pkts`` on thread ``tid``; a packet whose crypto
    failed is marked NATT_CR_ERR (counted serially afterwards: counters are not shared between
    threads). Returns how many were."""
    cdef int64_t i, g, ge
    cdef natt_pkt *pk
    cdef long failed = 0
    cdef int m
    cdef uint8_t *ct[NATT_CBC_GROUP]
    cdef int32_t nblk[NATT_CBC_GROUP]
    cdef int32_t iv_len = sa.iv_len
    if not natt_on_lanes(sa):
        for i in range(n):
            pk = &pkts[i]
            if pk.status == NATT_OK and not natt_encap_build(st, sa, tid, pk):
                pk.crypto = NATT_CR_ERR
                failed += 1
        return failed
    g = 0
    while g < n:
        ge = n if n - g < NATT_CBC_GROUP else g + NATT_CBC_GROUP
        m = 0
        for i in range(g, ge):
            pk = &pkts[i]
            if pk.status != NATT_OK:
                continue
            if not natt_encap_build(st, sa, tid, pk):
                pk.crypto = NATT_CR_ERR
                failed += 1
                continue
            ct[m] = pk.outp + pk.esp_off + 8 + iv_len
            nblk[m] = (pk.esp_len - 8 - iv_len) >> 4
            m += 1
        natt_cbc_encrypt_lanes(sa.cs.aes + 16 * NATT_GCM_POWERS, sa.aes_rounds, ct, nblk, m)
        for i in range(g, ge):
            pk = &pkts[i]
            if pk.status == NATT_OK and pk.crypto != NATT_CR_ERR and not natt_seal_icv(
                    sa, st.mdw[tid], pk.outp + pk.esp_off, pk.esp_len, <uint32_t>(pk.seq >> 32)):
                pk.crypto = NATT_CR_ERR
                failed += 1
        g = ge
    return failed


cdef void natt_chunk_seal(natt_job *job, int64_t lo, int64_t hi, int tid) noexcept nogil:
    cdef long failed = natt_encap_range(job.st, job.sa, tid, job.st.scratch + lo, hi - lo)
    if failed:
        natt_atomic_fetch_add(&job.failed, failed)


cdef void natt_encap_fail_marked(natt_sa *sa, natt_io *io, natt_pkt *pkts, int64_t lo, int64_t hi) noexcept nogil:
    """natt_encap_fail for each packet of lo..hi-1 (state in ``pkts[i - lo]``) marked NATT_CR_ERR."""
    cdef int64_t i
    for i in range(lo, hi):
        if pkts[i - lo].status == NATT_OK and pkts[i - lo].crypto == NATT_CR_ERR:
            natt_encap_fail(sa, io, i, &pkts[i - lo])


cdef void natt_encap_run(natt_state *st, natt_sa *sa, natt_io *io, int nt) noexcept nogil:
    """Encap ``io`` with ``sa``. Serially (``nt`` 0), chunk by chunk through the first NATT_CHUNK
    entries of the scratch, which stay in L1: a per-packet scratch over the whole batch (72
    octets a packet, 7.2 MB for 100 000) was written and read back through memory, and that
    traffic made a 512-octet encap 1.2x its decap at 100 000 packets against 1.07x at 1 000
    (BENCHMARKS.md). Threads need the whole batch's: assignment runs before the parallel build."""
    cdef int64_t i, hi
    cdef long failed
    if nt <= 0:
        i = 0
        while i < io.n:
            hi = natt_chunk_hi(i, io.n)
            natt_encap_assign(sa, io, st.scratch, i, hi)
            if natt_encap_range(st, sa, 0, st.scratch, hi - i):
                natt_encap_fail_marked(sa, io, st.scratch, i, hi)
            i = hi
    else:
        natt_encap_assign(sa, io, st.scratch, 0, io.n)
        failed = natt_pool_run(natt_chunk_seal, NULL, st, io, sa, nt)
        if failed:
            natt_encap_fail_marked(sa, io, st.scratch, 0, io.n)
    ERR_clear_error()


# --------------------------------------------------------------------------- SA lifetime

cdef natt_sa *natt_sa_new() noexcept nogil:
    """A zeroed SA on a cache-line boundary (the natt_sa layout comment counts lines)."""
    cdef void *p = natt_arena_alloc(&natt_sa_arena)
    if p == NULL:
        return NULL
    memset(p, 0, sizeof(natt_sa))
    return <natt_sa *>p


cdef inline void natt_ctx_free(const natt_sa *sa, void *c) noexcept nogil:
    """Free one of ``sa``'s cipher contexts (``tmpl`` or a ``tctx``), of the kind ``sa.aead`` says."""
    if c == NULL:
        return
    if sa.aead != NULL:
        sa.aead.freectx(c)
    else:
        EVP_CIPHER_CTX_free(<EVP_CIPHER_CTX *>c)


cdef void natt_sa_free(natt_sa *sa) noexcept nogil:
    """Free an SA that no table references any more, wiping its key-derived state.

    The providers' freectx (directly for AEADs, through EVP_CIPHER_CTX_free otherwise) and
    EVP_MD_CTX_free cleanse the contexts (key schedules, HMAC pad states) before freeing
    them; the salt is ours to wipe.
    """
    cdef int t
    if sa == NULL:
        return
    if sa.aes_rounds == 0:          # else ``cs`` holds natt's AES state, not contexts
        for t in range(NATT_MAX_THREADS):
            natt_ctx_free(sa, sa.cs.tctx[t])
    natt_ctx_free(sa, sa.tmpl)
    if sa.inner != NULL:
        EVP_MD_CTX_free(sa.inner)
    if sa.outer != NULL:
        EVP_MD_CTX_free(sa.outer)
    if sa.evp_cipher != NULL:
        EVP_CIPHER_free(sa.evp_cipher)
    if sa.evp_md != NULL:
        EVP_MD_free(sa.evp_md)
    if sa.bitmap != &sa.bitmap_word:
        free(sa.bitmap)
    OPENSSL_cleanse(sa, sizeof(natt_sa))
    natt_arena_free(&natt_sa_arena, sa)


cdef const char *natt_cipher_name(int cipher, int key_len) noexcept:
    """libcrypto's name of an SA's cipher (fetched from the default provider)."""
    if cipher == NATT_CIPHER_AES_GCM or cipher == NATT_CIPHER_AES_GMAC:
        if key_len == 16:
            return b"AES-128-GCM"
        if key_len == 24:
            return b"AES-192-GCM"
        return b"AES-256-GCM"
    if cipher == NATT_CIPHER_AES_CBC:
        if key_len == 16:
            return b"AES-128-CBC"
        if key_len == 24:
            return b"AES-192-CBC"
        return b"AES-256-CBC"
    if cipher == NATT_CIPHER_3DES_CBC:
        return b"DES-EDE3-CBC"
    if cipher == NATT_CIPHER_CHACHA20_POLY1305:
        return b"ChaCha20-Poly1305"
    return NULL


cdef int natt_aead_index(int cipher, int key_len) noexcept:
    """Slot of natt_aeads for an AEAD cipher, or -1 for the ciphers that run through EVP."""
    if cipher == NATT_CIPHER_AES_GCM or cipher == NATT_CIPHER_AES_GMAC:
        return 0 if key_len == 16 else 1 if key_len == 24 else 2
    if cipher == NATT_CIPHER_CHACHA20_POLY1305:
        return 3
    return -1


cdef const char *natt_md_name(int mac) noexcept:
    """libcrypto's name of the digest behind an HMAC transform (RFC 2403, 2404, 4868)."""
    if mac == NATT_MAC_HMAC_MD5_96:
        return b"MD5"
    if mac == NATT_MAC_HMAC_SHA1_96:
        return b"SHA1"
    if mac == NATT_MAC_HMAC_SHA256_128:
        return b"SHA256"
    if mac == NATT_MAC_HMAC_SHA384_192:
        return b"SHA384"
    if mac == NATT_MAC_HMAC_SHA512_256:
        return b"SHA512"
    return NULL


cdef int natt_sa_key(natt_sa *sa, int enc_key_len, int auth_key_len, const uint8_t *key) except -1:
    """Fetch the algorithms and key the template contexts once per SA: OpenSSL 3's per-call
    fetch and key schedule would otherwise dominate a small packet's cost."""
    cdef const char *name = "cipher"   # set by each branch below that can fail; keeps gcc sure of it
    cdef uint8_t pad[128]
    cdef int block, k, enc = 0 if sa.inbound else 1
    cdef int aead_idx = natt_aead_index(sa.cipher, enc_key_len)
    cdef const natt_aead *a
    if (sa.cipher == NATT_CIPHER_AES_GCM or sa.cipher == NATT_CIPHER_AES_GMAC) and natt_gcm_own:
        sa.aes_rounds = <uint8_t>natt_gcm_init(key, enc_key_len, sa.cs.aes)
    elif aead_idx >= 0:
        name = natt_cipher_name(sa.cipher, enc_key_len)
        a = natt_aead_get(aead_idx, name)
        if <size_t>enc_key_len != a.key_len:
            raise RuntimeError(f"{name.decode()} takes a {a.key_len}-octet key")
        sa.tmpl = a.newctx(a.provctx)
        if sa.tmpl == NULL:
            raise MemoryError()
        sa.aead = a        # from here natt_sa_free frees tmpl with the provider's freectx
        if (a.dinit if sa.inbound else a.einit)(sa.tmpl, key, a.key_len, NULL, 0, NULL) != 1:
            raise RuntimeError(f"libcrypto could not key {name.decode()}")
    elif sa.cipher == NATT_CIPHER_AES_CBC and not sa.inbound and natt_cbc_lanes:
        sa.aes_rounds = <uint8_t>natt_aesni_expand(key, enc_key_len, sa.cs.aes + 16 * NATT_GCM_POWERS)
    elif sa.cipher != NATT_CIPHER_NULL:
        name = natt_cipher_name(sa.cipher, enc_key_len)
        sa.evp_cipher = EVP_CIPHER_fetch(NULL, name, NULL)
        if sa.evp_cipher == NULL:
            raise RuntimeError(f"libcrypto has no {name.decode()} cipher")
        sa.tmpl = EVP_CIPHER_CTX_new()
        if sa.tmpl == NULL:
            raise MemoryError()
        if EVP_CipherInit_ex(<EVP_CIPHER_CTX *>sa.tmpl, sa.evp_cipher, NULL, key, NULL, enc) != 1:
            raise RuntimeError(f"libcrypto could not key {name.decode()}")
        # ESP pads itself (RFC 4303 §2.4)
        EVP_CIPHER_CTX_set_padding(<EVP_CIPHER_CTX *>sa.tmpl, 0)
    if sa.cipher != NATT_CIPHER_NULL and sa.aes_rounds == 0:
        # Thread 0's context now, so a cipher whose contexts cannot be copied fails the add.
        if natt_tctx(sa, 0) == NULL:
            raise RuntimeError(f"libcrypto could not copy a {name.decode()} context")
    if sa.mac != NATT_MAC_NONE:
        name = natt_md_name(sa.mac)
        sa.evp_md = EVP_MD_fetch(NULL, name, NULL)
        if sa.evp_md == NULL:
            raise RuntimeError(f"libcrypto has no {name.decode()} digest")
        block = EVP_MD_get_block_size(sa.evp_md)
        if auth_key_len > block or block > 128:
            raise RuntimeError("HMAC key longer than the digest block")
        sa.inner = EVP_MD_CTX_new()
        sa.outer = EVP_MD_CTX_new()
        if sa.inner == NULL or sa.outer == NULL:
            raise MemoryError()
        # RFC 2104 §2: H(K ^ opad, H(K ^ ipad, text)); both pads are hashed once, here.
        try:
            for k in range(block):
                pad[k] = (key[enc_key_len + k] if k < auth_key_len else 0) ^ 0x36
            if EVP_DigestInit_ex(sa.inner, sa.evp_md, NULL) != 1 or EVP_DigestUpdate(sa.inner, pad, block) != 1:
                raise RuntimeError(f"libcrypto could not start {name.decode()}")
            for k in range(block):
                pad[k] = (key[enc_key_len + k] if k < auth_key_len else 0) ^ 0x5C
            if EVP_DigestInit_ex(sa.outer, sa.evp_md, NULL) != 1 or EVP_DigestUpdate(sa.outer, pad, block) != 1:
                raise RuntimeError(f"libcrypto could not start {name.decode()}")
        finally:
            OPENSSL_cleanse(pad, sizeof(pad))
    return 0


cdef inline uint64_t natt_u64(object v):
    return <uint64_t>int(v)


# --------------------------------------------------------------------------- numpy checks

cdef inline bint natt_overlap(const void *a, int64_t a_len, const void *b, int64_t b_len) noexcept nogil:
    """Whether the byte ranges [a, a + a_len) and [b, b + b_len) share an octet."""
    cdef uintptr_t x = <uintptr_t>a, y = <uintptr_t>b
    return a_len > 0 and b_len > 0 and x < y + <uintptr_t>b_len and y < x + <uintptr_t>a_len


cdef cnp.ndarray natt_arr(object a, str name, int typenum, int64_t n, bint writable, void **ptr, int64_t *size):
    """Check one 1-D C-contiguous array of ``typenum`` (and length ``n`` when n >= 0); returns it."""
    cdef cnp.ndarray arr
    if not cnp.PyArray_Check(a):
        raise ValueError(f"{name}: expected a numpy array, got {type(a).__name__}")
    arr = <cnp.ndarray>a
    if cnp.PyArray_TYPE(arr) != typenum or not cnp.PyArray_ISNOTSWAPPED(arr):    # '>i8' is NPY_INT64 too
        raise ValueError(f"{name}: wrong dtype {arr.dtype}")
    if cnp.PyArray_NDIM(arr) != 1 or not cnp.PyArray_IS_C_CONTIGUOUS(arr):
        raise ValueError(f"{name}: must be one-dimensional and C-contiguous")
    if not cnp.PyArray_ISALIGNED(arr):      # read through int64_t *: misaligned is undefined in C
        raise ValueError(f"{name}: not aligned to its dtype (np.frombuffer at an odd offset?); pass a copy")
    if writable and not cnp.PyArray_ISWRITEABLE(arr):
        raise ValueError(f"{name}: must be writable")
    size[0] = cnp.PyArray_DIM(arr, 0)
    if n >= 0 and size[0] != n:
        raise ValueError(f"{name}: has {size[0]} elements, the batch has {n} packets")
    ptr[0] = cnp.PyArray_DATA(arr)
    return arr


cdef tuple natt_setup_io(natt_io *io, object batch, object out):
    """Validate dtypes, shapes and sizes once per batch (segments are re-checked in the kernel).

    Returns the arrays ``io`` points into; the caller keeps that tuple until the kernel is
    done. Another Python thread may meanwhile rebind ``batch.data`` or grow ``out`` (which
    replaces its arrays): without these references the kernel would write into freed memory
    (SECURITY.md, "Concurrency")."""
    cdef void *ptr
    cdef int64_t size, n
    off = natt_arr(batch.offsets, "batch.offsets", cnp.NPY_INT64, -1, False, &ptr, &n)
    io.off = <const int64_t *>ptr
    io.n = n
    ln = natt_arr(batch.lengths, "batch.lengths", cnp.NPY_INT64, n, False, &ptr, &size)
    io.len = <const int64_t *>ptr
    data = natt_arr(batch.data, "batch.data", cnp.NPY_UINT8, -1, False, &ptr, &size)
    io.data = <const uint8_t *>ptr
    io.data_len = size
    odata = natt_arr(out.data, "out.data", cnp.NPY_UINT8, -1, True, &ptr, &size)
    io.odata = <uint8_t *>ptr
    io.odata_len = size
    ooff = natt_arr(out.offsets, "out.offsets", cnp.NPY_INT64, n, False, &ptr, &size)
    io.ooff = <const int64_t *>ptr
    olen = natt_arr(out.lengths, "out.lengths", cnp.NPY_INT64, n, True, &ptr, &size)
    io.olen = <int64_t *>ptr
    ostatus = natt_arr(out.status, "out.status", cnp.NPY_UINT8, n, True, &ptr, &size)
    io.ostatus = <uint8_t *>ptr
    osa = natt_arr(out.sa, "out.sa", cnp.NPY_INT64, n, True, &ptr, &size)
    io.osa = <int64_t *>ptr
    oseq = natt_arr(out.seq, "out.seq", cnp.NPY_UINT64, n, True, &ptr, &size)
    io.oseq = <uint64_t *>ptr
    onh = natt_arr(out.next_header, "out.next_header", cnp.NPY_UINT8, n, True, &ptr, &size)
    io.onh = <uint8_t *>ptr
    if natt_overlap(io.data, io.data_len, io.odata, io.odata_len):
        # Checked by layout_slots already; the kernels' memcpy from data to odata relies on it.
        raise ValueError("out.data: must not overlap the input buffer")
    return (off, ln, data, odata, ooff, olen, ostatus, osa, oseq, onh)


cdef inline int natt_threads(object threads) except -2:
    """0 for the serial kernel, else the number of native threads (clamped)."""
    cdef long t
    if threads is None:
        return 0
    t = threads
    if t < 1:
        raise ValueError(f"threads: expected None or a positive integer, got {threads!r}")
    return NATT_MAX_THREADS if t > NATT_MAX_THREADS else <int>t


# A threaded batch wakes the pool's workers and waits for the last one to finish, and a worker
# on an idle vCPU joins tens of microseconds late, or later when the host is busy: a batch of
# little work ran slower on threads than on one. On this 2-vCPU guest, 64-octet AES-GCM
# (128 octets of input a packet), threads=2 / None: 0.51-0.95 at 512 packets back to back and
# 0.70-0.77 after a 2 ms pause; at 1 024 packets 0.85-1.27 and 0.67-0.83; at 2 048 about 1.5
# and 0.9-1.0 (BENCHMARKS.md, "Small batches"). So a batch of less input than this runs
# serially, whatever ``threads`` says; the results are the same either way. The suites that
# cost more per octet (AES-CBC with HMAC: 4-5 times AES-GCM's) would pay from less.
cdef int64_t natt_share_min_octets = 262144


def _share_min_octets(value: int | None = None) -> int:
    """The input size under which a ``threads=N`` batch runs serially; set it with ``value``
    (tests set 0, so that their small batches still run the threaded pipelines)."""
    global natt_share_min_octets
    if value is not None:
        if value < 0:
            raise ValueError(f"expected 0 or more octets, got {value!r}")
        natt_share_min_octets = value
    return natt_share_min_octets


cdef inline int natt_threads_for(const natt_io *io, int nt) noexcept nogil:
    """``nt``, or 0 if the batch's input is under natt_share_min_octets. The lengths are only
    an estimate of the work here (the kernels check each one when they read it)."""
    cdef int64_t i, total = 0, m = natt_share_min_octets
    if nt <= 1 or m == 0:
        return nt
    for i in range(io.n):
        if io.len[i] > 0:
            total += io.len[i] if io.len[i] < m else m
            if total >= m:
                return nt
    return 0


cdef inline bint natt_brief(const natt_io *io) noexcept nogil:
    """Whether a serial batch is small enough to run with the GIL held.

    Releasing and retaking the GIL costs about 400 instructions, more than a 64-octet packet's
    whole decap, and a batch of one is the common case of a caller that receives a packet at a
    time (BENCHMARKS.md, "fixed cost"). 2 KiB holds the GIL for about 90 us at worst (3DES, the
    slowest suite, at 23 MB/s here by ``openssl speed``; AES-GCM takes about 1 us), a fiftieth of
    the interpreter's switch interval. The caller then only *tries* the mutex: a thread holding
    the GIL never waits for it (module docstring, "Concurrency")."""
    cdef int64_t i, total = 0, ln
    if io.n > NATT_GIL_HOLD_PACKETS:
        return False
    for i in range(io.n):
        ln = io.len[i]
        if ln < 0 or ln > NATT_GIL_HOLD_OCTETS:
            return False
        total += ln
    return total <= NATT_GIL_HOLD_OCTETS


# The kernels hard-code these numbers; refuse to load if the Python side ever changes them.
if (_ENCAP_OVERHEAD != NATT_ENCAP_OVERHEAD   # pragma: no cover - guards a silent mismatch
        or [int(c) for c in _Cipher] != [NATT_CIPHER_NULL, NATT_CIPHER_AES_CBC, NATT_CIPHER_3DES_CBC,
                                         NATT_CIPHER_AES_GCM, NATT_CIPHER_CHACHA20_POLY1305,
                                         NATT_CIPHER_AES_GMAC]
        or [m.name for m in _Mac][1:] != ["HMAC_MD5_96", "HMAC_SHA1_96", "HMAC_SHA256_128",
                                          "HMAC_SHA384_192", "HMAC_SHA512_256"]
        or [int(m) for m in _Mac] != [NATT_MAC_NONE, NATT_MAC_HMAC_MD5_96, NATT_MAC_HMAC_SHA1_96,
                                      NATT_MAC_HMAC_SHA256_128, NATT_MAC_HMAC_SHA384_192,
                                      NATT_MAC_HMAC_SHA512_256]
        or int(_Status.ERROR) != NATT_ERROR or int(_Status.SEQ_OVERFLOW) != NATT_SEQ_OVERFLOW
        or int(UdpEncapType.IKE) != NATT_ENCAP_IKE
        # counters(): natt_sa.packets, natt_sa.bytes, then natt_sa.ctr in NATT_C_* order
        or COUNTER_NAMES != ("packets", "bytes") + tuple(
            n for _, n in sorted([(NATT_C_AUTH_FAILURES, "auth_failures"), (NATT_C_REPLAYS, "replays"),
                                  (NATT_C_MALFORMED, "malformed"), (NATT_C_DUMMY, "dummy"),
                                  (NATT_C_PROTOCOL, "protocol"), (NATT_C_SEQ_OVERFLOWS, "seq_overflows"),
                                  (NATT_C_ERRORS, "errors"), (NATT_C_ESN_RESYNCS, "esn_resyncs")]))
        or (ESN_RESYNC_TRIGGER, ESN_RESYNC_LIMIT) != (NATT_ESN_RESYNC_TRIGGER, NATT_ESN_RESYNC_LIMIT)):
    raise ImportError("natt._fastpath was built against different natt constants")


# --------------------------------------------------------------------------- the backend

cdef class FastBackend:
    """Cython/OpenSSL implementation of the :class:`natt._backend.Backend` protocol.

    Safe to call from several Python threads at once (``thread_safe``): one
    mutex serialises batches against each other and against control calls
    (see the module docstring for why), always taken with the GIL released.
    """

    name = "fast"
    #: Offload need not serialise data-path calls: this backend locks itself.
    thread_safe = True
    #: Upper bound of ``threads=N`` (larger values are clamped).
    max_threads = NATT_MAX_THREADS

    cdef natt_state st
    # An instance dict, so tests (and tools) may wrap a method on one backend object.
    cdef dict __dict__
    cdef dict _slot_of        # SA handle -> slot
    cdef dict _keys           # SA handle -> the SaConfig.key bytearray, zeroed on removal
    cdef dict _entries        # parser entry handle -> port
    cdef bint _lock_ready
    # Set by close() under the mutex: a batch that gets the mutex afterwards runs nothing
    # (BackendClosed). add_entry/add_sa clear it: the backend itself may be filled again after
    # close() (Offload never does that: its close() is final and it checks before every add).
    cdef bint _closed

    def __cinit__(self) -> None:
        cdef int t
        memset(&self.st, 0, sizeof(natt_state))
        self._slot_of = {}
        self._keys = {}
        self._entries = {}
        if pthread_mutex_init(&self.st.lock, NULL) != 0:
            raise MemoryError()
        self._lock_ready = True
        self.st.port_handle = <int64_t *>calloc(65536, sizeof(int64_t))
        self.st.port_type = <uint8_t *>calloc(65536, sizeof(uint8_t))
        self.st.nbuckets = 1024
        self.st.buckets = <natt_sa **>natt_table_alloc(self.st.nbuckets * sizeof(natt_sa *))
        if self.st.port_handle == NULL or self.st.port_type == NULL or self.st.buckets == NULL:
            raise MemoryError()
        for t in range(NATT_MAX_THREADS):
            self.st.mdw[t] = EVP_MD_CTX_new()
            if self.st.mdw[t] == NULL:
                raise MemoryError()

    def __dealloc__(self) -> None:
        cdef int t
        self._drop_all()
        for t in range(NATT_MAX_THREADS):
            if self.st.mdw[t] != NULL:
                EVP_MD_CTX_free(self.st.mdw[t])
        free(self.st.port_handle)
        free(self.st.port_type)
        natt_table_free(self.st.buckets, self.st.nbuckets * sizeof(natt_sa *))
        free(self.st.slots)
        free(self.st.free_slots)
        free(self.st.scratch)
        for t in range(NATT_MAX_THREADS):
            if self.st.ivpool[t] != NULL:
                OPENSSL_cleanse(self.st.ivpool[t], sizeof(natt_ivpool))
                free(self.st.ivpool[t])
        if self._lock_ready:
            pthread_mutex_destroy(&self.st.lock)

    def __repr__(self) -> str:
        return f"FastBackend({len(self._slot_of)} SAs, {len(self._entries)} parser entries)"

    cdef inline void _lock(self) noexcept:
        # Never wait for the mutex while holding the GIL (see the module docstring).
        with nogil:
            pthread_mutex_lock(&self.st.lock)

    cdef inline void _unlock(self) noexcept:
        pthread_mutex_unlock(&self.st.lock)

    cdef void _drop_all(self) noexcept:
        """Free every SA; the caller holds the mutex or is the only owner."""
        cdef int32_t s
        if self.st.slots != NULL:
            for s in range(self.st.nslots):
                if self.st.slots[s] != NULL:
                    natt_sa_free(self.st.slots[s])
                    self.st.slots[s] = NULL
                    self.st.free_slots[self.st.n_free] = s
                    self.st.n_free += 1
        if self.st.buckets != NULL:
            memset(self.st.buckets, 0, self.st.nbuckets * sizeof(natt_sa *))
        self.st.n_inbound = 0
        if self.st.port_handle != NULL:
            memset(self.st.port_handle, 0, 65536 * sizeof(int64_t))

    # ---- control plane (requests already validated by natt.Offload)

    def add_entry(self, handle: int, encap_type: UdpEncapType, port: int) -> None:
        """Install parser entry ``handle``: packets to UDP ``port`` are parsed with ``encap_type``."""
        if not 1 <= port <= 65535 or handle == 0:
            raise ValueError("port/handle out of range")
        cdef int64_t h = handle
        cdef uint16_t p = port
        cdef uint8_t t = <uint8_t>int(UdpEncapType(encap_type))
        self._lock()
        self._closed = False
        self.st.port_handle[p] = h
        self.st.port_type[p] = t
        self._entries[h] = p
        self._unlock()

    def remove_entry(self, handle: int) -> None:
        """Remove a parser entry (no SA refers to it any more)."""
        cdef int64_t h = handle
        self._lock()
        port = self._entries.pop(h, None)
        if port is not None and self.st.port_handle[<uint16_t>port] == h:
            self.st.port_handle[<uint16_t>port] = 0
        self._unlock()

    def add_sa(self, cfg) -> None:
        """Install an SA: fetch its algorithms and key its contexts once. Raises
        ``MemoryError``/``RuntimeError`` (never naming key material); then nothing is installed."""
        cdef natt_sa *sa = natt_sa_new()
        cdef uint8_t key[128]
        cdef int k, klen
        cdef uint64_t nbits
        if sa == NULL:
            raise MemoryError()
        try:
            suite = cfg.suite
            sa.handle = cfg.handle
            sa.inbound = bool(cfg.inbound)
            sa.spi = cfg.spi
            sa.tunnel = bool(cfg.tunnel)
            sa.esn = bool(cfg.esn)
            sa.dst_addr = cfg.dst_addr
            sa.dst_mask = cfg.dst_mask
            sa.src_tunnel_addr = cfg.src_tunnel_addr
            sa.dst_tunnel_addr = cfg.dst_tunnel_addr
            sa.nat_oa_src = cfg.nat_oa_src
            sa.nat_oa_dst = cfg.nat_oa_dst
            sa.entry_handle = cfg.entry_handle
            sa.encap_ike = int(cfg.encap_type) == NATT_ENCAP_IKE
            sa.encap_src_port = cfg.encap_src_port
            sa.encap_dst_port = cfg.encap_dst_port
            # RFC 4301 §8.1, decided here once (natt_sa.df_keep says how the kernel uses them).
            df_bit = cfg.df_bit
            if df_bit == "copy":
                sa.df_keep, sa.df_set = 0x40, 0
            elif df_bit == "set":
                sa.df_keep, sa.df_set = 0, 0x40
            elif df_bit == "clear":
                sa.df_keep, sa.df_set = 0, 0
            else:
                raise ValueError("SaConfig: df_bit is not 'copy', 'set' or 'clear'")
            sa.cipher = int(suite.cipher)
            sa.mac = int(suite.mac)
            sa.iv_len = suite.iv_len
            sa.icv_len = suite.icv_len
            sa.block = suite.block_size
            sa.window = cfg.replay_window
            sa.top = natt_u64(cfg.replay_seq)
            sa.oseq = natt_u64(cfg.replay_oseq)
            sa.fail_run = <uint32_t>cfg.replay_fail_run   # Offload checked 0 .. 2**32 - 1
            if sa.handle == 0 or sa.window > 65536 or (sa.esn and sa.window == 0):
                raise ValueError("SaConfig: handle 0, or replay window out of range")
            if sa.window:
                # Ring of a power-of-two number of bits (>= 64) covering the window; full at
                # creation: every number <= replay_seq counts as seen (semantics §3).
                nbits = 64
                while nbits < sa.window:
                    nbits <<= 1
                sa.bmask = <uint32_t>(nbits - 1)
                if nbits == 64:
                    sa.bitmap = &sa.bitmap_word
                else:
                    sa.bitmap = <uint64_t *>malloc((nbits >> 6) * sizeof(uint64_t))
                    if sa.bitmap == NULL:
                        raise MemoryError()
                if cfg.replay_bitmap is None:
                    memset(sa.bitmap, 0xFF, (nbits >> 6) * sizeof(uint64_t))
                else:
                    # An exported state (``replay_state``): bit i of the Python int stands for
                    # number top - i. Ring positions of numbers above top are never read before
                    # a slide clears them (natt_accept), so zero is as good as any value there.
                    memset(sa.bitmap, 0, (nbits >> 6) * sizeof(uint64_t))
                    # OverflowError for a bitmap wider than the window (Offload refuses those).
                    natt_ring_import(sa, int(cfg.replay_bitmap).to_bytes((sa.window + 7) >> 3, "little"))
            klen = len(cfg.key)
            if klen != suite.enc_key_len + suite.salt_len + suite.auth_key_len or klen > 128:
                raise ValueError("SaConfig: key length does not match the suite")
            for k in range(klen):
                key[k] = cfg.key[k]
            try:
                if suite.salt_len:
                    memcpy(sa.salt, key + <int>suite.enc_key_len, 4)
                # The integrity key follows the encryption key; only AEADs have a salt and
                # they have no separate integrity key.
                natt_sa_key(sa, suite.enc_key_len, suite.auth_key_len, key)
            finally:
                OPENSSL_cleanse(key, sizeof(key))
        except BaseException:
            ERR_clear_error()
            natt_sa_free(sa)
            raise
        self._lock()
        try:
            self._insert(sa)
        except BaseException:
            self._unlock()
            natt_sa_free(sa)
            raise
        self._slot_of[sa.handle] = sa.slot
        self._keys[sa.handle] = cfg.key
        self._closed = False
        self._unlock()

    cdef int _insert(self, natt_sa *sa) except -1:
        """Link ``sa`` into the slot array (and the inbound hash); the mutex is held."""
        cdef int32_t s, cap
        cdef natt_sa **slots
        cdef int32_t *free_slots
        if sa.handle in self._slot_of:
            raise ValueError(f"SA handle {sa.handle} is already installed")
        if self.st.n_free == 0:
            cap = 64 if self.st.nslots == 0 else self.st.nslots * 2
            slots = <natt_sa **>realloc(self.st.slots, cap * sizeof(natt_sa *))
            if slots == NULL:
                raise MemoryError()
            self.st.slots = slots
            free_slots = <int32_t *>realloc(self.st.free_slots, cap * sizeof(int32_t))
            if free_slots == NULL:
                raise MemoryError()
            self.st.free_slots = free_slots
            for s in range(cap - 1, self.st.nslots - 1, -1):
                self.st.slots[s] = NULL
                self.st.free_slots[self.st.n_free] = s
                self.st.n_free += 1
            self.st.nslots = cap
        # At most one inbound SA per four buckets: a lookup walks its whole chain (the largest
        # matching dst_mask wins), and with many SAs each SA visited is a cache miss; at this
        # load a walk visits 1.1 SAs on average. Measured at 100 000 SAs, 64-octet AES-GCM:
        # load <= 1 -> <= 0.25, 790-960 -> 410-520 ns per packet (BENCHMARKS.md).
        if sa.inbound and 4 * (self.st.n_inbound + 1) > self.st.nbuckets:
            self._rehash(self.st.nbuckets * 2)
        self.st.n_free -= 1
        s = self.st.free_slots[self.st.n_free]
        sa.slot = s
        self.st.slots[s] = sa
        if sa.inbound:
            h = natt_hash(sa.entry_handle, sa.spi, self.st.nbuckets - 1)
            sa.hnext = self.st.buckets[h]
            self.st.buckets[h] = sa
            self.st.n_inbound += 1
        return 0

    cdef int _rehash(self, uint64_t nb) except -1:
        cdef natt_sa **b = <natt_sa **>natt_table_alloc(nb * sizeof(natt_sa *))
        cdef natt_sa *sa
        cdef natt_sa *nxt
        cdef uint64_t i, h
        if b == NULL:
            raise MemoryError()
        for i in range(self.st.nbuckets):
            sa = self.st.buckets[i]
            while sa != NULL:
                nxt = sa.hnext
                h = natt_hash(sa.entry_handle, sa.spi, nb - 1)
                sa.hnext = b[h]
                b[h] = sa
                sa = nxt
        natt_table_free(self.st.buckets, self.st.nbuckets * sizeof(natt_sa *))
        self.st.buckets = b
        self.st.nbuckets = nb
        return 0

    def remove_sa(self, handle: int) -> None:
        """Remove an SA and free (cleansing) every keyed context and the salt it held."""
        cdef natt_sa *sa
        cdef natt_sa **pp
        self._lock()
        slot = self._slot_of.pop(handle, None)
        if slot is None:
            self._unlock()
            return
        wipe_key(self._keys.pop(handle, None))
        sa = self.st.slots[<int32_t>slot]
        self.st.slots[<int32_t>slot] = NULL
        self.st.free_slots[self.st.n_free] = <int32_t>slot
        self.st.n_free += 1
        if sa.inbound:
            pp = &self.st.buckets[natt_hash(sa.entry_handle, sa.spi, self.st.nbuckets - 1)]
            while pp[0] != NULL and pp[0] != sa:
                pp = &pp[0].hnext
            if pp[0] == sa:
                pp[0] = sa.hnext
            self.st.n_inbound -= 1
        self._unlock()
        # Unlinked while holding the mutex, so no batch can reach it any more.
        natt_sa_free(sa)

    def counters(self, handle: int) -> dict:
        """COUNTER_NAMES plus ``replay_seq`` (highest authenticated), ``replay_fail_run``
        (consecutive AUTH_FAILED packets) and ``replay_oseq`` (last sent)."""
        cdef natt_sa *sa
        cdef uint64_t c[NATT_N_COUNTERS]
        cdef uint64_t top, oseq, packets, nbytes
        cdef uint32_t fail_run
        self._lock()
        slot = self._slot_of.get(handle)
        if slot is None:
            self._unlock()
            raise KeyError(handle)
        sa = self.st.slots[<int32_t>slot]
        memcpy(c, sa.ctr, sizeof(c))
        packets = sa.packets
        nbytes = sa.bytes
        top = sa.top
        fail_run = sa.fail_run
        oseq = sa.oseq
        self._unlock()
        d = {"packets": packets, "bytes": nbytes}
        d.update({name: c[k] for k, name in enumerate(COUNTER_NAMES[2:])})
        d["replay_seq"] = top
        d["replay_fail_run"] = fail_run
        d["replay_oseq"] = oseq
        return d

    def replay_state(self, handle: int) -> tuple:
        """``(T, bitmap)`` of an inbound SA, bit ``i`` of ``bitmap`` standing for number ``T - i``
        (the reference's representation), read from the ring under the backend mutex."""
        cdef natt_sa *sa
        cdef uint64_t top
        cdef uint32_t window
        # Allocated before taking the mutex, for the largest window (65 536 bits), so that
        # nothing between lock and unlock can raise.
        out = bytearray(8192)
        cdef uint8_t[::1] ob = out
        self._lock()
        slot = self._slot_of.get(handle)
        if slot is None:
            self._unlock()
            raise KeyError(handle)
        sa = self.st.slots[<int32_t>slot]
        top = sa.top
        window = sa.window
        if window:
            natt_ring_export(sa, &ob[0])
        self._unlock()
        return top, int.from_bytes(out[: (window + 7) >> 3], "little")

    def close(self) -> None:
        """Drop every SA (cleansing its keyed state) and every parser entry, and give back the
        per-packet scratch (72 octets a packet of the largest recent threaded batch, _scratch).
        A batch that gets the mutex after this raises BackendClosed instead of running on the
        emptied tables (every packet NOT_ESP, every SA unknown), until add_entry or add_sa fills
        the backend again."""
        self._lock()
        self._closed = True
        self._drop_all()
        for key in self._keys.values():
            wipe_key(key)
        self._keys.clear()
        self._slot_of.clear()
        self._entries.clear()
        free(self.st.scratch)
        self.st.scratch = NULL
        self.st.scratch_cap = 0
        self.st.scratch_idle = 0
        self._unlock()

    def _fork_prepare(self) -> None:
        """Hold the mutex across fork() (natt._offload's at-fork hooks): the child then starts
        with the backend between batches, not frozen inside one with its mutex held forever."""
        self._lock()

    def _fork_release(self) -> None:
        """Release what :meth:`_fork_prepare` took, in the parent and in the child."""
        self._unlock()

    # ---- data path

    cdef int _scratch(self, int64_t n) noexcept nogil:
        """Size the per-packet scratch of the threaded pipelines for ``n`` packets (a serial
        encap uses one chunk's, and does not call this once it has that).

        Kept between batches, so that steady traffic allocates nothing. It grows at least
        twofold, and shrinks to ``n`` once NATT_SCRATCH_IDLE calls in a row have used under a
        quarter of it: one outlier batch (2**21 packets hold 151 MB) must not pin its memory
        for the backend's life, and batch sizes that merely alternate must not realloc on
        every call. Up to NATT_SCRATCH_KEEP octets are never given back."""
        cdef natt_pkt *s
        cdef int64_t cap = self.st.scratch_cap
        if n <= cap:
            if n >= cap // 4 or cap * <int64_t>sizeof(natt_pkt) <= NATT_SCRATCH_KEEP:
                self.st.scratch_idle = 0
                return 0
            self.st.scratch_idle += 1
            if self.st.scratch_idle < NATT_SCRATCH_IDLE:
                return 0
            cap = n if n * <int64_t>sizeof(natt_pkt) > NATT_SCRATCH_KEEP else NATT_SCRATCH_KEEP // sizeof(natt_pkt)
        elif n > 2 * cap:
            cap = n
        else:
            cap = 2 * cap
        s = <natt_pkt *>realloc(self.st.scratch, cap * sizeof(natt_pkt))
        if s == NULL:
            # A failed shrink keeps the larger block, which still serves.
            return 0 if n <= self.st.scratch_cap else -1
        self.st.scratch = s
        self.st.scratch_cap = cap
        self.st.scratch_idle = 0
        return 0

    def decap(self, batch, out, threads) -> None:
        """Decapsulate every packet of ``batch`` into ``out`` (already ``_prepare``d for it).

        Validation errors of the arrays raise ``ValueError``; packet contents never raise.
        """
        cdef natt_io io
        cdef int nt = natt_threads(threads)
        cdef int rc
        pinned = natt_setup_io(&io, batch, out)   # noqa: F841 (kept alive for the kernel)
        nt = natt_threads_for(&io, nt)
        if nt == 0 and natt_brief(&io) and pthread_mutex_trylock(&self.st.lock) == 0:
            rc = self._decap_locked(&io, nt)
        else:
            with nogil:
                pthread_mutex_lock(&self.st.lock)
                rc = self._decap_locked(&io, nt)
        if rc == -2:
            raise BackendClosed("the backend is closed")
        if rc != 0:
            raise MemoryError()

    cdef int _decap_locked(self, natt_io *io, int nt) noexcept nogil:
        """Run a decap with the mutex held, then release it; -1 if the scratch ran out, -2 if
        the backend was closed (by another thread, after Offload saw it open)."""
        cdef int rc = 0
        if self._closed:
            rc = -2
        elif nt == 0:
            natt_decap_serial(&self.st, io)
        else:
            rc = self._scratch(io.n)
            if rc == 0:
                natt_decap_parallel(&self.st, io, nt)
        pthread_mutex_unlock(&self.st.lock)
        return rc

    def encap(self, batch, handle: int, out, threads) -> None:
        """Encapsulate every packet of ``batch`` with outbound SA ``handle`` into ``out``
        (already ``_prepare``d with ENCAP_OVERHEAD). Raises ``KeyError`` for an unknown handle,
        ``ValueError`` for an inbound one."""
        cdef natt_io io
        cdef int nt = natt_threads(threads)
        cdef int rc
        cdef int32_t s
        cdef int64_t h = handle
        pinned = natt_setup_io(&io, batch, out)   # noqa: F841 (kept alive for the kernel)
        nt = natt_threads_for(&io, nt)
        slot = self._slot_of.get(handle)
        if slot is None:
            # close() sets the flag before it empties _slot_of (both with the GIL held).
            if self._closed:
                raise BackendClosed("the backend is closed")
            raise KeyError(handle)
        s = slot
        if nt == 0 and natt_brief(&io) and pthread_mutex_trylock(&self.st.lock) == 0:
            rc = self._encap_locked(&io, s, h, nt)
        else:
            with nogil:
                pthread_mutex_lock(&self.st.lock)
                rc = self._encap_locked(&io, s, h, nt)
        if rc == 1:
            raise KeyError(handle)
        if rc == 2:
            raise ValueError(f"handle: SA {handle} is inbound; encap needs an outbound SA")
        if rc == 3:
            raise MemoryError()
        if rc == 4:
            raise BackendClosed("the backend is closed")

    cdef int _encap_locked(self, natt_io *io, int32_t s, int64_t h, int nt) noexcept nogil:
        """Run an encap with the mutex held, then release it; 1 if SA ``h`` is gone, 2 if it is
        inbound, 3 if the scratch ran out, 4 if the backend was closed meanwhile."""
        cdef int rc = 0
        # Re-check under the mutex: the SA may have been removed since the dict lookup
        # (handles are never reused, so a live slot with this handle is this SA).
        cdef natt_sa *sa = self.st.slots[s] if s < self.st.nslots else NULL
        if self._closed:
            rc = 4
        elif sa == NULL or sa.handle != h:
            rc = 1
        elif sa.inbound:
            rc = 2
        else:
            if nt > 0:
                rc = 3 if self._scratch(io.n) != 0 else 0
            # A serial encap works through one chunk's worth (natt_encap_run): it needs that
            # much, and has no say in the threaded pipelines' size (_scratch's shrink rule), or
            # serial encaps between threaded decaps on one backend would shrink it each time.
            elif self.st.scratch_cap < min(io.n, <int64_t>NATT_CHUNK):
                rc = 3 if self._scratch(NATT_CHUNK) != 0 else 0
            if rc == 0:
                natt_encap_run(&self.st, sa, io, nt)
        pthread_mutex_unlock(&self.st.lock)
        return rc


def layout_slots(batch_offsets, batch_lengths, batch_data, cnp.ndarray data, cnp.ndarray offsets,
                 cnp.ndarray lengths, int64_t slot_extra) -> int:
    """Lay out the output slots of a batch (its ``offsets``, ``lengths`` and ``data``) for
    ``BatchResult._prepare``, whose buffers are ``data``, ``offsets`` (capacity >= the batch)
    and ``lengths``: slot ``i`` starts at ``offsets[i]`` and holds
    ``clamp(batch.lengths[i], 0, batch.data.size) + slot_extra`` octets; returns the total.
    The batch comes as its three arrays because a generic attribute lookup from C costs
    several times what the caller's bytecode pays.

    The batch's arrays are checked as the kernels check them (``natt_setup_io``, same messages):
    they may have been rebound since the batch was validated, and both backends size their
    work by them. Raises ValueError naming ``out`` if the batch's memory overlaps these
    buffers (``out=res`` with ``res.batch()``, or a view into them: laying out would overwrite
    the packets first, and the kernels' copies would overlap).

    In C because at a batch of one numpy's calls cost more than the whole decap. Lengths are
    clamped because the caller may have rewritten them since validation.
    """
    cdef void *ptr
    cdef int64_t n, size, total
    bo = natt_arr(batch_offsets, "batch.offsets", cnp.NPY_INT64, -1, False, &ptr, &n)
    bl = natt_arr(batch_lengths, "batch.lengths", cnp.NPY_INT64, n, False, &ptr, &size)
    cdef const int64_t *src = <const int64_t *>ptr
    bd = natt_arr(batch_data, "batch.data", cnp.NPY_UINT8, -1, False, &ptr, &size)
    # Written below through int64_t *: a read-only array (np.frombuffer of bytes, a read-only
    # mmap) was written all the same, or the process died of SIGSEGV.
    if (cnp.PyArray_TYPE(offsets) != cnp.NPY_INT64 or not cnp.PyArray_IS_C_CONTIGUOUS(offsets)
            or not cnp.PyArray_ISALIGNED(offsets) or not cnp.PyArray_ISWRITEABLE(offsets)
            or cnp.PyArray_SIZE(offsets) < n):
        raise ValueError("offsets: must be a writable, aligned, C-contiguous int64 array as long as the batch")
    if not 0 <= slot_extra <= NATT_MAX_SLOT_EXTRA:
        # _prepare passes 0 or ENCAP_OVERHEAD; a negative one made negative slots, a huge one
        # wrapped the total around int64.
        raise ValueError(f"slot_extra: {slot_extra} is outside 0..{NATT_MAX_SLOT_EXTRA}")
    # Pointers and sizes in C arrays, each computed once (PyArray_NBYTES multiplies out the
    # shape), not a loop over tuples of arrays: at a batch of one that loop cost a quarter of
    # this call.
    cdef const void *at[6]
    cdef int64_t span[6]
    cdef int a, b
    at[0], at[1], at[2] = cnp.PyArray_DATA(bo), cnp.PyArray_DATA(bl), cnp.PyArray_DATA(bd)
    at[3], at[4], at[5] = cnp.PyArray_DATA(data), cnp.PyArray_DATA(offsets), cnp.PyArray_DATA(lengths)
    span[0], span[1], span[2] = cnp.PyArray_NBYTES(bo), cnp.PyArray_NBYTES(bl), cnp.PyArray_NBYTES(bd)
    span[3], span[4], span[5] = cnp.PyArray_NBYTES(data), cnp.PyArray_NBYTES(offsets), cnp.PyArray_NBYTES(lengths)
    for a in range(3):                  # the batch's arrays against the result's
        for b in range(3, 6):
            if natt_overlap(at[a], span[a], at[b], span[b]):
                raise ValueError("out: this result's buffers hold the input packets (out=res with "
                                 "res.batch(), or a view into them); pass another result, or copy "
                                 "the batch first")
    cdef int64_t *dst = <int64_t *>cnp.PyArray_DATA(offsets)
    if n <= NATT_LAYOUT_GIL_HOLD:       # shorter than releasing the GIL takes (natt_brief)
        total = natt_layout(dst, src, n, size, slot_extra)
    else:
        with nogil:
            total = natt_layout(dst, src, n, size, slot_extra)
    if total < 0:
        raise ValueError("batch: its output slots add up to 2**63 octets or more")
    return total


cdef int64_t natt_layout(int64_t *dst, const int64_t *src, int64_t n, int64_t size,
                         int64_t slot_extra) noexcept nogil:
    """layout_slots' loop: slot offsets into ``dst``; returns the octets the slots take, or -1
    if that is more than int64 holds (segments may overlap, so n slots of a whole buffer each
    are a valid batch; the sum must not wrap into a small buffer that the slots overrun)."""
    cdef int64_t i, ln, pos = 0
    for i in range(n):
        dst[i] = pos
        ln = src[i]
        if ln < 0:
            ln = 0
        elif ln > size:
            ln = size
        if pos > INT64_MAX - ln - slot_extra:
            return -1
        pos += ln + slot_extra
    return pos

def gather(uint8_t[::1] out, const int64_t[::1] out_off, const uint8_t[::1] src,
           const int64_t[::1] src_off, const int64_t[::1] length) -> None:
    """Copy ``length[i]`` octets from ``src[src_off[i]:]`` to ``out[out_off[i]:]`` for every
    ``i``: the contract of ``natt._batch._copy_segments_py`` (the Python fallback and
    reference), in one C loop instead of a Python step per segment. Every segment is checked before any is copied;
    a bad one raises ValueError naming it. Overlapping ranges copy as numpy's slice assignment does."""
    cdef Py_ssize_t i, n = length.shape[0]
    cdef int64_t o, s, ln, out_len = out.shape[0], src_len = src.shape[0], bad = -1
    if out_off.shape[0] != n or src_off.shape[0] != n:
        raise ValueError("gather: out_off, src_off and length differ in size")
    # Read below through int64_t *: a typed memoryview takes an int64 array at any address, and
    # a misaligned load is undefined in C (UBSan stops there; natt_arr refuses the same).
    if n and (<uintptr_t>&out_off[0] | <uintptr_t>&src_off[0] | <uintptr_t>&length[0]) & 7:
        raise ValueError("gather: out_off, src_off and length must be aligned to 8 octets (np.frombuffer at "
                         "an odd offset?); pass copies")
    for i in range(n):
        o = out_off[i]
        s = src_off[i]
        ln = length[i]
        if ln < 0 or o < 0 or s < 0 or o > out_len - ln or s > src_len - ln:
            raise ValueError(f"gather: segment {i} ({ln} octets from {s} to {o}) is out of bounds")
    with nogil:
        for i in range(n):
            # Read once, check, use (SECURITY.md "Concurrency"): another thread may rewrite the
            # arrays now that the GIL is released; the loop above was for the error message.
            o = out_off[i]
            s = src_off[i]
            ln = length[i]
            if ln < 0 or o < 0 or s < 0 or o > out_len - ln or s > src_len - ln:
                if bad < 0:
                    bad = i
                continue
            memmove(&out[o], &src[s], <size_t>ln)
    if bad >= 0:
        raise ValueError(f"gather: segment {bad} was rewritten out of bounds while the copy ran")


cdef inline uint32_t natt_rd32le(const uint8_t *p) noexcept nogil:
    return (<uint32_t>p[3] << 24) | (<uint32_t>p[2] << 16) | (<uint32_t>p[1] << 8) | p[0]


def pcap_walk(const uint8_t[::1] buf, Py_ssize_t start, Py_ssize_t len_at, Py_ssize_t base,
              uint32_t min_len, bint big_endian, bint pad4, bint trailer) -> tuple:
    """Offsets of the complete capture records in ``buf[start:]``, where the walk stopped, and
    whether it stopped at a record whose trailing length is wrong.

    The contract of ``natt.pcap._walk`` (the Python fallback and reference): a record at ``p``
    is ``base + L`` octets, ``L`` being the 32-bit value at ``p + len_at`` in the file's byte
    order; the walk stops at the first record that is incomplete, shorter than ``min_len``,
    not a multiple of 4 when ``pad4`` (pcapng), or that would not move forward. With
    ``trailer`` (pcapng), a record must also end with ``L`` again; the walk stops at the first
    complete one that does not and says so: ``(offsets, stop, True)``, the bad record at
    ``stop`` (record number ``len(offsets)``, from 0). Any other stop is ``(offsets, stop, False)``, so a caller
    can tell a corrupt record from one it has not read whole yet. Each record's position
    depends on the one before, so this loop is inherently serial: in C it runs at memory speed
    instead of one Python iteration per record.
    """
    cdef Py_ssize_t end = buf.shape[0], p = start, n = 0
    cdef const uint8_t *b
    cdef uint32_t v
    cdef int64_t nxt
    cdef bint bad_trailer = False
    if start < 0 or len_at < 0 or base < 0:
        raise ValueError("pcap_walk: negative start, len_at or base")
    # No record starts, or is read, past the buffer; this also keeps every sum below far from
    # overflowing (a start or len_at near PY_SSIZE_T_MAX made p + len_at + 4 wrap).
    if start >= end or len_at >= end or base > end:
        return np.empty(0, np.int64), start, False
    # The trailer is read at the record's last 4 octets: they must lie past its length field.
    if trailer and base + min_len < len_at + 8:
        raise ValueError("pcap_walk: with trailer, base + min_len must be at least len_at + 8")
    cap = (end - start) // max(base + min_len, 1) + 1
    offsets = np.empty(cap, np.int64)
    cdef int64_t[::1] out = offsets
    b = &buf[0]
    with nogil:
        while p + len_at + 4 <= end and n < cap:
            v = natt_rd32(b + p + len_at) if big_endian else natt_rd32le(b + p + len_at)
            if v < min_len or (pad4 and (v & 3)):
                break
            nxt = <int64_t>p + base + v
            if nxt > end or nxt <= p:
                break
            # pcapng (draft-ietf-opsawg-pcapng, section 3.1): a block ends with its Block Total
            # Length again, so that a reader can walk back; one whose two lengths differ is
            # corrupt (tshark refuses the file). Checked here, while the walk is at the block,
            # for about nothing: the block is whole in ``buf`` (``nxt <= end``), so a mismatch is
            # corruption, never a block not read yet. Classic pcap records have no trailer.
            if trailer and (natt_rd32(b + nxt - 4) if big_endian else natt_rd32le(b + nxt - 4)) != v:
                bad_trailer = True
                break
            out[n] = p
            n += 1
            p = <Py_ssize_t>nxt
    return offsets[:n], p, bad_trailer


def pcapng_option_walk(const uint8_t[::1] buf, const int64_t[::1] start, const int64_t[::1] end,
                       bint big_endian, int64_t max_options) -> tuple:
    """The options of the pcapng option lists ``buf[start[b]:end[b]]``: ``(frame, code, pos,
    length, bad_at, bad_code, bad_length, bad_many)``.

    The contract of ``natt.pcap._option_walk`` (the numpy fallback and reference), whose caller
    words the fault: per option, in file order (list by list, each in its order), its list
    ``b`` (int32), code (uint16), value position (int64) and value length (uint16); a list ends at opt_endofopt
    or at its end. ``bad_at`` is -1, or the position of the first option in the file that runs
    past its list (opt_endofopt included: its ``bad_code`` and ``bad_length``), or that is past
    the ``max_options``-th of its list (``bad_many``); its list ends there. Each option's
    position depends on the length before it, so the walk is serial: numpy took a step per
    place in the lists, Python one per option (about 1 us, and 40 octets of columns), where
    this loop counts the options, then fills arrays of exactly that size: 16 octets an option,
    where four int64 columns took 32 (an empty option is 4 in the file).
    """
    cdef Py_ssize_t nb = start.shape[0], size = buf.shape[0], i
    cdef int64_t p, e, n = 0, total = 0, place, bad_at = -1, bad_code = 0, bad_len = 0
    cdef int64_t at, c, olen
    cdef bint bad_many = False, many, fill
    cdef uint32_t w
    cdef const uint8_t *b
    if end.shape[0] != nb:
        raise ValueError("pcapng_option_walk: start and end differ in length")
    if nb > INT32_MAX:
        raise ValueError("pcapng_option_walk: more option lists than an int32 counts")
    for i in range(nb):
        if end[i] > start[i] and (start[i] < 0 or end[i] > size):
            raise ValueError("pcapng_option_walk: an option list outside the buffer")
    frame_a = np.empty(0, np.int32)
    code_a = np.empty(0, np.uint16)
    pos_a = np.empty(0, np.int64)
    len_a = np.empty(0, np.uint16)
    cdef int32_t[::1] fr = frame_a
    cdef uint16_t[::1] co = code_a, ln = len_a
    cdef int64_t[::1] po = pos_a
    b = &buf[0] if size else NULL
    for fill in (False, True):
        if fill:
            total = n
            frame_a, code_a = np.empty(total, np.int32), np.empty(total, np.uint16)
            pos_a, len_a = np.empty(total, np.int64), np.empty(total, np.uint16)
            fr, co, po, ln = frame_a, code_a, pos_a, len_a
            n = 0
        with nogil:
            for i in range(nb):
                p, e, place = start[i], end[i], 0
                while p < e:
                    if p + 4 <= size:
                        w = natt_rd32(b + p) if big_endian else natt_rd32le(b + p)
                    else:
                        w = 0
                    c, olen = (w >> 16, w & 0xFFFF) if big_endian else (w & 0xFFFF, w >> 16)
                    many = c != 0 and place >= max_options
                    if many or p + 4 + olen > e:
                        if not fill and (bad_at < 0 or p < bad_at):
                            bad_at, bad_code, bad_len, bad_many = p, c, olen, many
                        break
                    if c == 0:
                        break
                    if fill:
                        fr[n] = <int32_t>i
                        co[n] = <uint16_t>c
                        po[n] = p + 4
                        ln[n] = <uint16_t>olen
                    n += 1
                    place += 1
                    p += 4 + ((olen + 3) & ~3)
    return frame_a, code_a, pos_a, len_a, bad_at, bad_code, bad_len, bad_many
