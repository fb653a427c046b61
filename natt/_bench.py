"""``natt bench`` / ``python -m benchmarks.compare``: natt's data path against the crypto under it.

Everything runs in one process on the same packets, so the figures are
ratios, not absolute claims (the machines this runs on are shared and
noisy). For AES-128-GCM in tunnel mode with one SA it times

* natt decap on the fast backend, ``threads=None`` and ``threads=2``;
* a plain Python loop over ``cryptography``'s ``AESGCM`` doing the same
  decrypts;
* a bare C loop doing only the EVP calls (keyed once; per packet: set IV,
  AAD, decrypt, set tag, final), compiled here at run time with ``cc``
  against the libcrypto natt links, loaded with ctypes and run on the very
  same numpy buffers;
* the same C loop on two threads, each with its own context, claiming chunks
  of packets as natt's pool does: what the machine gives two busy threads
  at that moment, the ceiling for natt's ``threads=2`` speed-up;
* scapy's ``SecurityAssociation.decrypt`` on a subset (it is slow);

and then AES-CBC + HMAC-SHA1-96 against a C loop making the same cipher and
HMAC calls, encap against decap, 100 000 SAs with random SPIs against one
SA, and the fixed cost of one decap call on a batch of one packet.

Every natt run is checked: each timed decap must report ``Status.OK`` for
every packet and every baseline must verify every tag, or the run aborts,
so no figure ever comes from a fast failure path. Anti-replay stays on
(window 64, natt's default); because a second pass over the same packets
would be all replays, the inbound SAs are installed afresh (untimed) before
each timed repetition.

Variants that are compared with each other are timed interleaved (one
repetition of each in turn), so a noisy neighbour slows all of them alike;
each figure is the median of the repetitions, with min and max.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import gc
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any, Optional

import numpy as np

from ._batch import DecapResult, EncapResult, PacketBatch
from ._constants import Status
from ._files import Replacement, new_file_mode
from ._offload import DEFAULT_MAX_SAS, MAX_THREADS, Offload, backends
from ._suites import Cipher, Mac, Suite, parse_suite
from ._version import __version__
from .cli import at_least, destination_problem, say

__all__ = ["main", "Timing", "Workload", "build_workload", "inner_packets", "EvpLoop"]

TUNNEL_SRC = "198.51.100.2"   # RFC 5737 documentation addresses
TUNNEL_DST = "203.0.113.5"
NATT_PORT = 4500              # RFC 3948 §2.1
REPLAY_WINDOW = 64            # natt's default (Offload.add_sa)

# OpenSSL names of the transforms the C loop can run (RFC 4106, RFC 7634, RFC 3602, RFC 2451).
_EVP_CIPHER = {
    (Cipher.AES_GCM, 16): "AES-128-GCM", (Cipher.AES_GCM, 24): "AES-192-GCM", (Cipher.AES_GCM, 32): "AES-256-GCM",
    (Cipher.CHACHA20_POLY1305, 32): "ChaCha20-Poly1305",
    (Cipher.AES_CBC, 16): "AES-128-CBC", (Cipher.AES_CBC, 24): "AES-192-CBC", (Cipher.AES_CBC, 32): "AES-256-CBC",
    (Cipher.TRIPLE_DES_CBC, 24): "DES-EDE3-CBC",
}
_EVP_DIGEST = {Mac.HMAC_MD5_96: "MD5", Mac.HMAC_SHA1_96: "SHA1", Mac.HMAC_SHA256_128: "SHA256",
               Mac.HMAC_SHA384_192: "SHA384", Mac.HMAC_SHA512_256: "SHA512"}


# ---------------------------------------------------------------------------------------------- packets

def inner_packets(n: int, size: int, rng: np.random.Generator) -> PacketBatch:
    """``n`` IPv4/UDP datagrams of exactly ``size`` octets (random payload, valid header checksum)."""
    if size < 28:
        raise ValueError(f"size: an IPv4/UDP datagram needs at least 28 octets, got {size}")
    rows = rng.integers(0, 256, size=(n, size), dtype=np.uint8)
    hdr = np.array([0x45, 0, size >> 8, size & 0xFF, 0, 0, 0x40, 0, 64, 17, 0, 0,
                    10, 0, 0, 1, 10, 0, 0, 2], dtype=np.uint8)
    rows[:, :20] = hdr
    ident = np.arange(n, dtype=np.uint32) & 0xFFFF
    rows[:, 4] = ident >> 8
    rows[:, 5] = ident & 0xFF
    words = rows[:, :20].reshape(n, 10, 2).astype(np.uint32)
    s = (words[:, :, 0] << 8 | words[:, :, 1]).sum(axis=1)
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    csum = ~s & 0xFFFF
    rows[:, 10] = csum >> 8
    rows[:, 11] = csum & 0xFF
    # UDP: ports 5000 -> 5001, length, checksum 0 (allowed for IPv4 UDP, RFC 768).
    rows[:, 20:28] = np.array([0x13, 0x88, 0x13, 0x89, (size - 20) >> 8, (size - 20) & 0xFF, 0, 0], np.uint8)
    data = rows.reshape(-1)
    offsets = np.arange(n, dtype=np.int64) * size
    return PacketBatch(data, offsets, np.full(n, size, dtype=np.int64))


def _compact(res: Any) -> PacketBatch:
    """A result's output packets copied into a fresh, gap-free batch (the result buffer gets reused)."""
    lengths = np.ascontiguousarray(res.lengths, dtype=np.int64).copy()
    offsets = np.zeros(lengths.size, dtype=np.int64)
    if lengths.size > 1:
        np.cumsum(lengths[:-1], out=offsets[1:])
    data = np.empty(int(lengths.sum()), dtype=np.uint8)
    # One slice copy per packet, outside every timed region.
    for i, (src, n) in enumerate(zip(res.offsets.tolist(), lengths.tolist())):
        data[offsets[i]: offsets[i] + n] = res.data[src: src + n]
    return PacketBatch(data, offsets, lengths)


@dataclasses.dataclass(eq=False)
class Workload:
    """Received ESP-in-UDP packets (tunnel mode) for ``n_sas`` inbound SAs with random SPIs.

    ``esp`` is what decap eats; ``inner`` the datagrams they carry (encap's
    input); ``sa_index[i]`` the SA of packet ``i``; ``warm`` one earlier
    packet per SA, in SA order. Keys are random and stay out of ``repr``.
    """

    suite: str
    size: int
    inner: PacketBatch
    esp: PacketBatch
    spis: np.ndarray
    sa_index: np.ndarray
    keys: list[bytes] = dataclasses.field(repr=False)
    warm: PacketBatch = dataclasses.field(default_factory=lambda: PacketBatch.from_packets([]))

    @property
    def n_sas(self) -> int:
        return len(self.keys)

    def receiver(self, backend: str, replay_window: int = REPLAY_WINDOW, warm: bool = True) -> Offload:
        """A fresh ``Offload`` holding the inbound SAs (replay state starts empty).

        ``warm``: decapsulate each SA's warm-up packet first, so that the
        timed packets meet SAs in steady state (whatever a backend sets up on
        an SA's first packet is done), as on a gateway whose SAs carry
        traffic. ``warm=False`` leaves every SA as just installed.
        """
        return self.rearm(Offload(backend=backend, max_sas=max(self.n_sas, 1)), replay_window, warm)

    def rearm(self, nic: Offload, replay_window: int = REPLAY_WINDOW, warm: bool = True) -> Offload:
        """``nic`` with its SAs deleted and this workload's installed afresh, as :meth:`receiver`
        does: new replay state in a backend that keeps its buffers (steady state)."""
        for h in nic.sa_handles():
            nic.delete_sa(h)
        for spi, key in zip(self.spis.tolist(), self.keys):
            nic.add_sa(spi=spi, key=key, suite=self.suite, direction="in", mode="tunnel",
                       src=TUNNEL_SRC, dst=TUNNEL_DST, port=NATT_PORT, replay_window=replay_window)
        if warm:
            _require_ok(nic.decap(self.warm), f"warm-up decap {self.suite}")
        return nic

    def sender(self, backend: str, sa: int = 0) -> tuple[Offload, int]:
        """A fresh ``Offload`` with SA ``sa``'s outbound twin, and its handle."""
        nic = Offload(backend=backend)
        h = nic.add_sa(spi=int(self.spis[sa]), key=self.keys[sa], suite=self.suite, direction="out",
                       mode="tunnel", src=TUNNEL_SRC, dst=TUNNEL_DST, sport=NATT_PORT, dport=NATT_PORT)
        return nic, h


def _random_spis(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` distinct random SPIs in 256 .. 2**32-1 (RFC 4303 §2.1 reserves 1..255)."""
    spis = np.zeros(0, dtype=np.int64)
    while spis.size < n:
        cand = rng.integers(256, 2**32, size=2 * n, dtype=np.int64)
        merged = np.concatenate([spis, cand])
        _, first = np.unique(merged, return_index=True)
        spis = merged[np.sort(first)]
    return spis[:n]


def build_workload(backend: str, suite: str, size: int, n_packets: int, n_sas: int = 1,
                   seed: int = 0x4E415454) -> Workload:
    """Build ``n_packets`` tunnel-mode packets of ``size``-octet inner datagrams with natt's own encap.

    With several SAs each packet picks one at random, so consecutive
    packets hit unrelated SPIs (the cache-unfriendly case of a busy gateway).
    Every SA also gets one warm-up packet (sequence number 1, in ``warm``);
    the timed packets follow it in sequence.
    """
    s, _ = parse_suite(suite)
    # SPIs and keys come from their own stream, so every size shares the same SAs (one receiver serves all).
    sa_rng = np.random.default_rng([seed, n_sas])
    spis = _random_spis(n_sas, sa_rng)
    keys = [sa_rng.bytes(s.key_len) for _ in range(n_sas)]
    rng = np.random.default_rng([seed, n_sas, size])
    inner = inner_packets(n_packets, size, rng)
    sa_index = (np.zeros(n_packets, dtype=np.int64) if n_sas == 1
                else rng.integers(0, n_sas, size=n_packets, dtype=np.int64))
    wl = Workload(suite, size, inner, inner, spis, sa_index, keys)
    warm_inner = inner_packets(1, size, rng)
    warm: list[bytes] = []
    out: list[Optional[bytes]] = [None] * n_packets
    order = np.argsort(sa_index, kind="stable")
    bounds = np.searchsorted(sa_index[order], np.arange(n_sas + 1))
    tx = Offload(backend=backend, max_sas=n_sas)
    for j in range(n_sas):
        h = tx.add_sa(spi=int(spis[j]), key=keys[j], suite=suite, direction="out", mode="tunnel",
                      src=TUNNEL_SRC, dst=TUNNEL_DST, sport=NATT_PORT, dport=NATT_PORT)
        res = tx.encap(warm_inner, h)
        _require_ok(res, f"encap {suite} {size} SA {j} (warm-up)")
        warm.append(res[0])
        idx = order[bounds[j]: bounds[j + 1]]
        if n_sas == 1:
            res = tx.encap(inner, h)
            _require_ok(res, f"encap {suite} {size}")
            wl.esp = _compact(res)
        elif idx.size:
            # One encap call per SA over that SA's packets, then back into packet order.
            res = tx.encap(PacketBatch(inner.data, inner.offsets[idx], inner.lengths[idx]), h)
            _require_ok(res, f"encap {suite} {size} SA {j}")
            for k, i in enumerate(idx.tolist()):
                out[i] = res[k]
    tx.close()
    if n_sas > 1:
        wl.esp = PacketBatch.from_packets(out)  # type: ignore[arg-type]
    wl.warm = PacketBatch.from_packets(warm)
    return wl


def _require_ok(res: Any, what: str) -> None:
    bad = np.flatnonzero(res.status != Status.OK)
    if bad.size:
        raise RuntimeError(f"{what}: {bad.size} of {len(res)} packets not OK "
                           f"(first: packet {int(bad[0])}, {Status(int(res.status[bad[0]])).name})")


# ---------------------------------------------------------------------------------------------- the C loop

_EVP_LOOP_C = r"""
/* Bare EVP loops over UDP-encapsulated ESP packets (RFC 3948): only the libcrypto calls
 * a data path cannot avoid, keyed once. Written and compiled by natt._bench at run time. */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

/* ESP starts after the IPv4 header (IHL words) and the 8-octet UDP header. */
static const uint8_t *natt_esp(const uint8_t *pkt, int64_t len, int64_t *esp_len)
{
    int64_t hl = (int64_t)(pkt[0] & 15) * 4 + 8;
    *esp_len = len - hl;
    return pkt + hl;
}

/* AEAD (RFC 4106 / RFC 7634): nonce = salt || 8-octet IV, AAD = SPI || seq, tag at the end.
 * For GCM the salt is set once as the fixed IV part and each packet only supplies the
 * explicit IV (EVP_CTRL_GCM_SET_IV_INV, the TLS/IPsec interface): measured ~10% cheaper
 * than a full re-init per packet at 64 octets, so the baseline is the faster of the two. */
typedef struct {
    EVP_CIPHER *cipher;
    EVP_CIPHER_CTX *ctx;
    int gcm, icv_len;
    uint8_t nonce[12];
} natt_bench_aead;

static void natt_bench_aead_free(natt_bench_aead *a)
{
    EVP_CIPHER_CTX_free(a->ctx);
    EVP_CIPHER_free(a->cipher);
}

/* Keys a->ctx once; 0 if the context could not be set up (freed then). */
static int natt_bench_aead_init(natt_bench_aead *a, const char *cipher_name, int gcm, const uint8_t *key,
                                const uint8_t *salt, int icv_len)
{
    a->cipher = EVP_CIPHER_fetch(NULL, cipher_name, NULL);
    a->ctx = EVP_CIPHER_CTX_new();
    a->gcm = gcm;
    a->icv_len = icv_len;
    memcpy(a->nonce, salt, 4);
    if (a->cipher == NULL || a->ctx == NULL || EVP_DecryptInit_ex2(a->ctx, a->cipher, key, NULL, NULL) != 1
        || (gcm && EVP_CIPHER_CTX_ctrl(a->ctx, EVP_CTRL_GCM_SET_IV_FIXED, 4, a->nonce) != 1)) {
        natt_bench_aead_free(a);
        return 0;
    }
    return 1;
}

/* Packets lo..hi-1; returns how many verified. */
static int64_t natt_bench_aead_range(natt_bench_aead *a, const uint8_t *data, const int64_t *offsets,
                                     const int64_t *lengths, int64_t lo, int64_t hi, uint8_t *out)
{
    int64_t ok = 0;

    for (int64_t i = lo; i < hi; i++) {
        int64_t esp_len;
        const uint8_t *esp = natt_esp(data + offsets[i], lengths[i], &esp_len);
        int ct_len = (int)(esp_len - 16 - a->icv_len);
        uint8_t *dst = out + offsets[i];
        int outl, finl, iv_ok;

        if (ct_len < 0)
            continue;
        if (a->gcm) {
            iv_ok = EVP_CIPHER_CTX_ctrl(a->ctx, EVP_CTRL_GCM_SET_IV_INV, 8, (void *)(esp + 8)) == 1;
        } else {
            memcpy(a->nonce + 4, esp + 8, 8);
            iv_ok = EVP_DecryptInit_ex2(a->ctx, NULL, NULL, a->nonce, NULL) == 1;
        }
        if (iv_ok
            && EVP_DecryptUpdate(a->ctx, NULL, &outl, esp, 8) == 1
            && EVP_DecryptUpdate(a->ctx, dst, &outl, esp + 16, ct_len) == 1
            && EVP_CIPHER_CTX_ctrl(a->ctx, EVP_CTRL_AEAD_SET_TAG, a->icv_len,
                                   (void *)(esp + esp_len - a->icv_len)) == 1
            && EVP_DecryptFinal_ex(a->ctx, dst + outl, &finl) == 1)
            ok++;
    }
    return ok;
}

/* Returns the number of packets whose tag verified, or -1 if the context could not be set up. */
int64_t natt_bench_aead_decrypt(const char *cipher_name, int gcm, const uint8_t *key, const uint8_t *salt,
                                int icv_len, const uint8_t *data, const int64_t *offsets,
                                const int64_t *lengths, int64_t n, uint8_t *out)
{
    natt_bench_aead a;
    int64_t ok;

    if (!natt_bench_aead_init(&a, cipher_name, gcm, key, salt, icv_len))
        return -1;
    ok = natt_bench_aead_range(&a, data, offsets, lengths, 0, n, out);
    natt_bench_aead_free(&a);
    return ok;
}

/* The same loop on n_threads threads at once, each with its own context, nothing ordered:
 * what that gains over one thread is what the machine gives that many busy cores (shared
 * core, turbo, neighbours), the ceiling against which a data path's threads=N speed-up can
 * be read. The threads claim chunks of 256 packets with one atomic add, as natt's pool does:
 * on a host that gives the second vCPU less than a whole core, a fixed split into equal
 * shares would wait for the slower thread and set the ceiling too low (bench_threads.py).
 * Returns as natt_bench_aead_decrypt. */
#define NATT_BENCH_CHUNK 256

typedef struct {
    natt_bench_aead a;
    const uint8_t *data;
    const int64_t *offsets, *lengths;
    int64_t n, *next, ok;
    uint8_t *out;
} natt_bench_share;

static void *natt_bench_share_run(void *arg)
{
    natt_bench_share *s = arg;
    int64_t lo;

    while ((lo = __atomic_fetch_add(s->next, NATT_BENCH_CHUNK, __ATOMIC_RELAXED)) < s->n)
        s->ok += natt_bench_aead_range(&s->a, s->data, s->offsets, s->lengths, lo,
                                       lo + NATT_BENCH_CHUNK < s->n ? lo + NATT_BENCH_CHUNK : s->n, s->out);
    return NULL;
}

int64_t natt_bench_aead_decrypt_threads(const char *cipher_name, int gcm, const uint8_t *key,
                                        const uint8_t *salt, int icv_len, const uint8_t *data,
                                        const int64_t *offsets, const int64_t *lengths, int64_t n,
                                        uint8_t *out, int n_threads)
{
    natt_bench_share share[64];
    pthread_t tid[64];
    int started[64] = {0};
    int64_t ok = 0, next = 0;
    int k, keyed = 0;

    if (n_threads < 1 || n_threads > 64)
        return -1;
    /* Every context is keyed before any thread starts, so none of them times a key schedule. */
    for (; keyed < n_threads; keyed++) {
        if (!natt_bench_aead_init(&share[keyed].a, cipher_name, gcm, key, salt, icv_len))
            break;
        share[keyed] = (natt_bench_share){share[keyed].a, data, offsets, lengths, n, &next, 0, out};
    }
    if (keyed == n_threads) {
        /* Share 0 runs on the calling thread, as a data path's calling thread works too. */
        for (k = 1; k < n_threads; k++)
            started[k] = pthread_create(&tid[k], NULL, natt_bench_share_run, &share[k]) == 0;
        natt_bench_share_run(&share[0]);
        for (k = 1; k < n_threads; k++)
            if (started[k])
                pthread_join(tid[k], NULL);
        for (k = 0; k < n_threads; k++)
            ok += share[k].ok;
    }
    for (k = 0; k < keyed; k++)
        natt_bench_aead_free(&share[k].a);
    return keyed == n_threads ? ok : -1;
}

/* Many SAs: one keyed AES-GCM context per SA (as natt keeps), packet i decrypted with the
 * context of SA sa_index[i]. Measures what random access to per-SA OpenSSL state costs by
 * itself: the floor under any data path that keys OpenSSL once per SA. */
typedef struct {
    int64_t n;
    EVP_CIPHER *cipher;
    EVP_CIPHER_CTX **ctx;
} natt_bench_sas;

void natt_bench_sas_free(natt_bench_sas *t)
{
    if (t == NULL)
        return;
    for (int64_t j = 0; t->ctx != NULL && j < t->n; j++)
        EVP_CIPHER_CTX_free(t->ctx[j]);
    free(t->ctx);
    EVP_CIPHER_free(t->cipher);
    free(t);
}

/* keys: n_sas records of key_len octets (AES key then 4-octet salt). NULL on failure. */
natt_bench_sas *natt_bench_sas_new(const char *cipher_name, const uint8_t *keys, int key_len, int64_t n_sas)
{
    natt_bench_sas *t = calloc(1, sizeof *t);

    if (t == NULL)
        return NULL;
    t->cipher = EVP_CIPHER_fetch(NULL, cipher_name, NULL);
    t->ctx = calloc((size_t)n_sas, sizeof *t->ctx);
    if (t->cipher == NULL || t->ctx == NULL) {
        natt_bench_sas_free(t);
        return NULL;
    }
    for (t->n = 0; t->n < n_sas; t->n++) {
        const uint8_t *k = keys + t->n * key_len;
        EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();

        t->ctx[t->n] = c;
        if (c == NULL || EVP_DecryptInit_ex2(c, t->cipher, k, NULL, NULL) != 1
            || EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_IV_FIXED, 4, (void *)(k + key_len - 4)) != 1) {
            t->n++;
            natt_bench_sas_free(t);
            return NULL;
        }
    }
    return t;
}

int64_t natt_bench_sas_decrypt(natt_bench_sas *t, const int64_t *sa_index, int icv_len, const uint8_t *data,
                               const int64_t *offsets, const int64_t *lengths, int64_t n, uint8_t *out)
{
    int64_t ok = 0;

    for (int64_t i = 0; i < n; i++) {
        int64_t esp_len;
        const uint8_t *esp = natt_esp(data + offsets[i], lengths[i], &esp_len);
        int ct_len = (int)(esp_len - 16 - icv_len);
        uint8_t *dst = out + offsets[i];
        EVP_CIPHER_CTX *ctx;
        int outl, finl;

        if (ct_len < 0 || sa_index[i] < 0 || sa_index[i] >= t->n)
            continue;
        ctx = t->ctx[sa_index[i]];
        if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IV_INV, 8, (void *)(esp + 8)) == 1
            && EVP_DecryptUpdate(ctx, NULL, &outl, esp, 8) == 1
            && EVP_DecryptUpdate(ctx, dst, &outl, esp + 16, ct_len) == 1
            && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, icv_len, (void *)(esp + esp_len - icv_len)) == 1
            && EVP_DecryptFinal_ex(ctx, dst + outl, &finl) == 1)
            ok++;
    }
    return ok;
}

/* HMAC (RFC 2104) as two digest states fed with key ^ ipad and key ^ opad once (keys longer
 * than a block are hashed first); per packet each state is copied and finished. This is the
 * cheapest way to run a keyed HMAC per packet on OpenSSL 3.0 (measured 5-30% faster than
 * re-initialising an EVP_MAC context, most for small packets), so the baseline gets it too. */
static int natt_hmac_states(const EVP_MD *md, const uint8_t *key, int key_len,
                            EVP_MD_CTX *inner, EVP_MD_CTX *outer)
{
    uint8_t k[EVP_MAX_MD_SIZE > 128 ? EVP_MAX_MD_SIZE : 128], pad[128];
    int bs = EVP_MD_get_block_size(md);
    unsigned int kl = (unsigned int)key_len;

    if (bs <= 0 || bs > 128)
        return 0;
    memset(k, 0, sizeof k);
    if (key_len > bs) {
        if (EVP_Digest(key, (size_t)key_len, k, &kl, md, NULL) != 1)
            return 0;
    } else {
        memcpy(k, key, (size_t)key_len);
    }
    for (int i = 0; i < bs; i++)
        pad[i] = k[i] ^ 0x36;
    if (EVP_DigestInit_ex(inner, md, NULL) != 1 || EVP_DigestUpdate(inner, pad, (size_t)bs) != 1)
        return 0;
    for (int i = 0; i < bs; i++)
        pad[i] = k[i] ^ 0x5c;
    if (EVP_DigestInit_ex(outer, md, NULL) != 1 || EVP_DigestUpdate(outer, pad, (size_t)bs) != 1)
        return 0;
    OPENSSL_cleanse(k, sizeof k);
    OPENSSL_cleanse(pad, sizeof pad);
    return 1;
}

/* CBC + HMAC (RFC 3602 / RFC 2451 with RFC 2404 / RFC 4868): HMAC over SPI .. next header,
 * truncated ICV compared in constant time, then CBC decrypt (padding off: ESP's own trailer
 * is not PKCS#7, so there is no Final to call). */
int64_t natt_bench_cbc_hmac_decrypt(const char *cipher_name, const uint8_t *enc_key, int iv_len,
                                    const char *digest_name, const uint8_t *auth_key, int auth_key_len,
                                    int icv_len, const uint8_t *data, const int64_t *offsets,
                                    const int64_t *lengths, int64_t n, uint8_t *out)
{
    EVP_CIPHER *cipher = EVP_CIPHER_fetch(NULL, cipher_name, NULL);
    EVP_MD *md = EVP_MD_fetch(NULL, digest_name, NULL);
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    EVP_MD_CTX *inner = EVP_MD_CTX_new(), *outer = EVP_MD_CTX_new(), *w = EVP_MD_CTX_new();
    uint8_t mac[EVP_MAX_MD_SIZE];
    int64_t ok = -1;

    if (cipher == NULL || md == NULL || ctx == NULL || inner == NULL || outer == NULL || w == NULL
        || EVP_DecryptInit_ex2(ctx, cipher, enc_key, NULL, NULL) != 1
        || EVP_CIPHER_CTX_set_padding(ctx, 0) != 1
        || !natt_hmac_states(md, auth_key, auth_key_len, inner, outer))
        goto done;
    ok = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t esp_len;
        const uint8_t *esp = natt_esp(data + offsets[i], lengths[i], &esp_len);
        int64_t auth_len = esp_len - icv_len;
        int ct_len = (int)(auth_len - 8 - iv_len);
        uint8_t *dst = out + offsets[i];
        unsigned int ml;
        int outl;

        if (ct_len < 0)
            continue;
        if (EVP_MD_CTX_copy_ex(w, inner) != 1 || EVP_DigestUpdate(w, esp, (size_t)auth_len) != 1
            || EVP_DigestFinal_ex(w, mac, &ml) != 1
            || EVP_MD_CTX_copy_ex(w, outer) != 1 || EVP_DigestUpdate(w, mac, ml) != 1
            || EVP_DigestFinal_ex(w, mac, &ml) != 1
            || CRYPTO_memcmp(mac, esp + auth_len, (size_t)icv_len) != 0)
            continue;
        if (EVP_DecryptInit_ex2(ctx, NULL, NULL, esp + 8, NULL) == 1
            && EVP_DecryptUpdate(ctx, dst, &outl, esp + 8 + iv_len, ct_len) == 1 && outl == ct_len)
            ok++;
    }
done:
    EVP_MD_CTX_free(w);
    EVP_MD_CTX_free(outer);
    EVP_MD_CTX_free(inner);
    EVP_CIPHER_CTX_free(ctx);
    EVP_MD_free(md);
    EVP_CIPHER_free(cipher);
    return ok;
}
"""


def c_compiler() -> Optional[list[str]]:
    """The command line of the C compiler the benchmark's and tests' C programs are built with:
    ``$CC`` split as a shell would (``CC="ccache gcc"``), else ``cc`` or ``gcc`` on PATH; None
    if there is none."""
    cc = shlex.split(os.environ.get("CC", ""))
    if cc:
        return cc
    found = shutil.which("cc") or shutil.which("gcc")
    return [found] if found else None


def _pkg_config(flag: str) -> list[str]:
    try:
        out = subprocess.run(["pkg-config", flag, "libcrypto"], check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return []
    return out.stdout.split()


class EvpLoop:
    """The bare C baseline: compiled with ``cc`` into a temporary directory and loaded with ctypes.

    Raises ``RuntimeError`` (with the compiler's message) if there is no C
    compiler or no libcrypto headers; callers then skip the C rows.
    """

    def __init__(self) -> None:
        cc = c_compiler()
        if cc is None:
            raise RuntimeError("no C compiler (cc) on PATH")
        with tempfile.TemporaryDirectory(prefix="natt-bench-") as tmp:
            src = os.path.join(tmp, "natt_bench_evp.c")
            lib = os.path.join(tmp, "natt_bench_evp.so")
            with open(src, "w") as f:
                f.write(_EVP_LOOP_C)
            cmd = [*cc, "-O2", "-shared", "-fPIC", "-pthread", "-o", lib, src,
                   *_pkg_config("--cflags"), *(_pkg_config("--libs") or ["-lcrypto"])]
            try:
                r = subprocess.run(cmd, capture_output=True, text=True)
            except OSError as e:
                raise RuntimeError(f"cannot run the C compiler {cc[0]!r} ($CC): {e.strerror or e}") from None
            if r.returncode != 0:
                raise RuntimeError(f"compiling the EVP loop failed: {' '.join(cmd)}\n{r.stderr.strip()}")
            # The mapping outlives the file once dlopen has it.
            self._lib = ctypes.CDLL(lib)
        self.compiler = shlex.join(cc)
        p, i64 = ctypes.c_void_p, ctypes.c_int64
        c_int, c_str = ctypes.c_int, ctypes.c_char_p
        self._lib.natt_bench_aead_decrypt.argtypes = [c_str, c_int, p, p, c_int, p, p, p, i64, p]
        self._lib.natt_bench_aead_decrypt.restype = i64
        self._lib.natt_bench_aead_decrypt_threads.argtypes = [c_str, c_int, p, p, c_int, p, p, p, i64, p, c_int]
        self._lib.natt_bench_aead_decrypt_threads.restype = i64
        self._lib.natt_bench_cbc_hmac_decrypt.argtypes = [c_str, p, c_int, c_str, p, c_int, c_int, p, p, p, i64, p]
        self._lib.natt_bench_cbc_hmac_decrypt.restype = i64
        self._lib.natt_bench_sas_new.argtypes = [c_str, p, c_int, i64]
        self._lib.natt_bench_sas_new.restype = p
        self._lib.natt_bench_sas_free.argtypes = [p]
        self._lib.natt_bench_sas_free.restype = None
        self._lib.natt_bench_sas_decrypt.argtypes = [p, p, c_int, p, p, p, i64, p]
        self._lib.natt_bench_sas_decrypt.restype = i64

    def gcm_many(self, suite: Suite, keys: Sequence[bytes]) -> "_EvpSas":
        """Keyed AES-GCM contexts, one per key (SA), for :meth:`_EvpSas.decrypt`."""
        if suite.cipher is not Cipher.AES_GCM:
            raise ValueError("suite: the many-SA C loop is AES-GCM only")
        blob = ctypes.create_string_buffer(b"".join(keys), suite.key_len * len(keys))
        try:
            handle = self._lib.natt_bench_sas_new(_EVP_CIPHER[(suite.cipher, suite.enc_key_len)].encode(), blob,
                                                  suite.key_len, len(keys))
        finally:
            ctypes.memset(blob, 0, suite.key_len * len(keys))
        if not handle:
            raise RuntimeError("the many-SA EVP loop could not set up its contexts")
        return _EvpSas(self._lib, handle, suite.icv_len)

    def decrypt(self, suite: Suite, key: bytes, batch: PacketBatch, out: np.ndarray, threads: int = 1) -> int:
        """Decrypt (and verify) every packet of ``batch`` into ``out`` at the same offsets; returns
        how many verified. ``out`` must be at least as large as ``batch.data``. ``threads`` > 1
        (AEAD suites only) splits the packets into that many contiguous shares decrypted at once,
        each thread with its own context."""
        if out.size < batch.data.size:
            raise ValueError("out: smaller than the batch buffer")
        if not 1 <= threads <= 64:
            raise ValueError(f"threads: expected 1 to 64, got {threads}")
        if threads > 1 and suite.cipher not in (Cipher.AES_GCM, Cipher.CHACHA20_POLY1305):
            raise ValueError(f"threads: the C loop splits AEAD suites only, not {suite.name}")
        cipher = _EVP_CIPHER.get((suite.cipher, suite.enc_key_len))
        if cipher is None:
            raise ValueError(f"suite: the C loop has no {suite.name}")
        key_buf = ctypes.create_string_buffer(bytes(key), len(key))
        args = (batch.data.ctypes.data, batch.offsets.ctypes.data, batch.lengths.ctypes.data,
                len(batch), out.ctypes.data)
        try:
            if suite.cipher in (Cipher.AES_GCM, Cipher.CHACHA20_POLY1305):
                salt = ctypes.addressof(key_buf) + suite.enc_key_len
                gcm = int(suite.cipher is Cipher.AES_GCM)
                if threads > 1:
                    n = self._lib.natt_bench_aead_decrypt_threads(cipher.encode(), gcm, key_buf, salt,
                                                                  suite.icv_len, *args, threads)
                else:
                    n = self._lib.natt_bench_aead_decrypt(cipher.encode(), gcm, key_buf, salt,
                                                          suite.icv_len, *args)
            elif suite.mac in _EVP_DIGEST:
                auth = ctypes.addressof(key_buf) + suite.enc_key_len
                n = self._lib.natt_bench_cbc_hmac_decrypt(
                    cipher.encode(), key_buf, suite.iv_len, _EVP_DIGEST[suite.mac].encode(), auth,
                    suite.auth_key_len, suite.icv_len, *args)
            else:
                raise ValueError(f"suite: the C loop has no {suite.name}")
        finally:
            ctypes.memset(key_buf, 0, len(key))
        if n < 0:
            raise RuntimeError(f"the EVP loop could not set up {cipher}")
        return int(n)


class _EvpSas:
    """One keyed C-side AES-GCM context per SA (see ``natt_bench_sas_new``); free with :meth:`close`."""

    def __init__(self, lib: ctypes.CDLL, handle: int, icv_len: int) -> None:
        self._lib, self._handle, self._icv_len = lib, handle, icv_len

    def decrypt(self, batch: PacketBatch, sa_index: np.ndarray, out: np.ndarray) -> int:
        """Decrypt packet ``i`` with SA ``sa_index[i]``'s context; returns how many verified."""
        if out.size < batch.data.size or sa_index.dtype != np.int64 or sa_index.size < len(batch):
            raise ValueError("out/sa_index: too small or not int64")
        return int(self._lib.natt_bench_sas_decrypt(
            self._handle, sa_index.ctypes.data, self._icv_len, batch.data.ctypes.data, batch.offsets.ctypes.data,
            batch.lengths.ctypes.data, len(batch), out.ctypes.data))

    def close(self) -> None:
        if self._handle:
            self._lib.natt_bench_sas_free(self._handle)
            self._handle = 0


# ---------------------------------------------------------------------------------------------- Python baselines

def python_aesgcm_loop(suite: Suite, key: bytes, buf: bytes, offsets: list[int], lengths: list[int]) -> int:
    """Decrypt with ``cryptography``'s AESGCM, one call per packet; returns how many verified."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aead = AESGCM(key[: suite.enc_key_len])
    salt = key[suite.enc_key_len: suite.enc_key_len + 4]
    ok = 0
    for off, n in zip(offsets, lengths):
        esp = off + (buf[off] & 15) * 4 + 8
        try:
            aead.decrypt(salt + buf[esp + 8: esp + 16], buf[esp + 16: off + n], buf[esp: esp + 8])
        except InvalidTag:
            continue
        ok += 1
    return ok


def _scapy_decryptor(wl: Workload) -> Callable[[list[bytes]], int]:
    """scapy's ``SecurityAssociation.decrypt`` over raw packets (parse included, as a scapy user pays it)."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.ipsec import ESP, SecurityAssociation

    s, _ = parse_suite(wl.suite)
    if s.cipher is not Cipher.AES_GCM:
        raise ValueError("scapy baseline: AES-GCM only")
    sa = SecurityAssociation(ESP, spi=int(wl.spis[0]), crypt_algo="AES-GCM", crypt_key=wl.keys[0],
                             crypt_icv_size=s.icv_len, tunnel_header=IP(src=TUNNEL_SRC, dst=TUNNEL_DST),
                             nat_t_header=UDP(sport=NATT_PORT, dport=NATT_PORT))

    def run(packets: list[bytes]) -> int:
        ok = 0
        for raw in packets:
            try:
                sa.decrypt(IP(raw))
            except Exception:  # scapy raises IPSecIntegrityError and others; a miss is counted, not fatal
                continue
            ok += 1
        return ok

    return run


# ---------------------------------------------------------------------------------------------- timing

@dataclasses.dataclass
class Timing:
    """Wall-clock and CPU seconds of the repetitions of one variant.

    ``cpu_seconds`` is the calling thread's CPU time (``time.thread_time``):
    time spent descheduled by other tenants of a shared machine does not
    count, so ratios of it are steadier than wall-clock ones. It means
    nothing for a multi-threaded variant (``threaded``), whose work runs on
    other threads too; those are compared on wall-clock time only.
    """

    key: str
    label: str
    packets: int
    octets: int            # input octets per repetition
    seconds: list[float] = dataclasses.field(default_factory=list)
    cpu_seconds: list[float] = dataclasses.field(default_factory=list)
    threaded: bool = False
    note: str = ""

    def cpu_ns_per_packet(self) -> Optional[float]:
        if self.threaded or not self.cpu_seconds:
            return None
        return statistics.median(self.cpu_seconds) / self.packets * 1e9

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def ns_per_packet(self, which: str = "median") -> float:
        t = {"median": self.median, "min": min(self.seconds), "max": max(self.seconds)}[which]
        return t / self.packets * 1e9

    @property
    def mpps(self) -> float:
        return self.packets / self.median / 1e6

    @property
    def gbps(self) -> float:
        return self.octets * 8 / self.median / 1e9

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "label": self.label, "packets": self.packets, "octets": self.octets,
                "seconds": self.seconds, "median_ns_per_packet": self.ns_per_packet("median"),
                "min_ns_per_packet": self.ns_per_packet("min"), "max_ns_per_packet": self.ns_per_packet("max"),
                "mpps": self.mpps, "gbit_s": self.gbps, "cpu_seconds": self.cpu_seconds,
                "median_cpu_ns_per_packet": self.cpu_ns_per_packet(), "threaded": self.threaded, "note": self.note}


@dataclasses.dataclass
class _Variant:
    timing: Timing
    run: Callable[[Any], Any]                       # timed; gets what setup returned
    setup: Optional[Callable[[], Any]] = None       # untimed, before every repetition
    check: Optional[Callable[[Any], None]] = None   # untimed, after every repetition


def _interleaved(variants: Sequence[_Variant], reps: int, log: Callable[[str], None]) -> None:
    """One untimed warm-up each, then ``reps`` rounds of one timed repetition per variant."""
    for v in variants:
        r = v.run(v.setup() if v.setup else None)
        if v.check:
            v.check(r)
    for _ in range(reps):
        for v in variants:
            arg = v.setup() if v.setup else None
            gc.collect()
            gc.disable()
            try:
                c0 = time.thread_time()
                t0 = time.perf_counter()
                r = v.run(arg)
                dt = time.perf_counter() - t0
                dc = time.thread_time() - c0
            finally:
                gc.enable()
            if v.check:
                v.check(r)
            v.timing.seconds.append(dt)
            v.timing.cpu_seconds.append(dc)
    for v in variants:
        t = v.timing
        cpu = t.cpu_ns_per_packet()
        log(f"  {t.label:<52} {t.ns_per_packet():9.1f} ns/pkt  ({t.ns_per_packet('min'):.1f} .. "
            f"{t.ns_per_packet('max'):.1f})" + ("" if cpu is None else f"  cpu {cpu:.1f}"))


def _expect(total: int, what: str) -> Callable[[Any], None]:
    """A check that a baseline verified all ``total`` packets."""
    def check(ok: Any) -> None:
        if ok != total:
            raise RuntimeError(f"{what}: {ok} of {total} packets verified")
    return check


# ---------------------------------------------------------------------------------------------- the run

@dataclasses.dataclass(frozen=True)
class Config:
    batch: int = 100_000
    many_sas: int = 100_000
    reps: int = 7
    sizes: tuple[int, ...] = (64, 512, 1400)
    scapy_packets: int = 2_000
    single_calls: int = 20_000
    threads: int = 2
    backend: str = "fast"
    gcm_suite: str = "aes128gcm16"
    cbc_suite: str = "aes128-sha1"
    chacha_suite: str = "chacha20poly1305"
    seed: int = 0x4E415454

    @classmethod
    def quick(cls, **kw: Any) -> "Config":
        base: dict[str, Any] = dict(batch=10_000, many_sas=10_000, reps=3, sizes=(64, 1400), scapy_packets=200,
                    single_calls=5_000)
        base.update(kw)
        return cls(**base)


@dataclasses.dataclass(frozen=True)
class Ratio:
    name: str
    value: float           # from the medians
    low: float             # the least favourable pairing of min/max repetitions
    high: float            # the most favourable
    target: str
    met: Optional[bool]    # judged on the wall-clock median
    cpu_value: Optional[float] = None   # the same ratio from CPU-time medians (single-threaded pairs)
    # The median over rounds of the ratio within each round. A round runs each variant once,
    # back to back (_interleaved), so a change of the host's speed between rounds, which moves
    # every variant's median, cancels in it; ``value`` pairs medians that may come from rounds
    # in different speed phases.
    paired: Optional[float] = None


def _paired(num: Timing, den: Timing) -> Optional[float]:
    """Median over rounds of ``num``'s time per packet over ``den``'s; None unless both ran
    every round."""
    if not num.seconds or len(num.seconds) != len(den.seconds):
        return None
    return statistics.median((a / num.packets) / (b / den.packets) for a, b in zip(num.seconds, den.seconds))


def _cpu_ratio(num: Timing, den: Timing) -> Optional[float]:
    a, b = num.cpu_ns_per_packet(), den.cpu_ns_per_packet()
    return None if a is None or b is None or not b else a / b


def _speed_ratio(name: str, fast: Timing, base: Timing, target: float = 0) -> Ratio:
    """How many times faster ``fast`` is than ``base`` per packet (target: at least ``target``;
    0: a figure without a target)."""
    v = base.ns_per_packet() / fast.ns_per_packet()
    lo = base.ns_per_packet("min") / fast.ns_per_packet("max")
    hi = base.ns_per_packet("max") / fast.ns_per_packet("min")
    paired = _paired(base, fast)
    if not target:
        return Ratio(name, v, lo, hi, "-", None, _cpu_ratio(base, fast), paired)
    return Ratio(name, v, lo, hi, f">= {target:g}", v >= target, _cpu_ratio(base, fast), paired)


def _decap_variant(key: str, label: str, wl: Workload, backend: str, threads: Optional[int],
                   warm: bool = True) -> _Variant:
    out = DecapResult()
    t = Timing(key, label, len(wl.esp), int(wl.esp.lengths.sum()), threaded=threads is not None)
    nic: list[Offload] = []

    def setup() -> Offload:
        # Every repetition needs fresh replay windows. With few SAs the same backend gets them
        # reinstalled, as a gateway's long-lived Offload would, so the timed call finds the
        # buffers it keeps between batches (the threaded pipeline's scratch) already there;
        # 100 000 SAs are cheaper to install into a new Offload than to delete and re-add.
        if wl.n_sas > 1:
            return wl.receiver(backend, REPLAY_WINDOW, warm)
        if not nic:
            nic.append(wl.receiver(backend, REPLAY_WINDOW, warm))
            return nic[0]
        return wl.rearm(nic[0], REPLAY_WINDOW, warm)

    def run(nic: Offload) -> DecapResult:
        return nic.decap(wl.esp, threads=threads, out=out)

    def check(res: DecapResult) -> None:
        _require_ok(res, label)

    return _Variant(t, run, setup, check)


def _threads(n: int) -> str:
    """``n`` threads, in a label (``natt bench --threads 1`` printed "1 threads")."""
    return f"{n} thread" if n == 1 else f"{n} threads"


def _encap_variant(key: str, label: str, wl: Workload, backend: str, threads: Optional[int]) -> _Variant:
    out = EncapResult()
    nic, h = wl.sender(backend)
    t = Timing(key, label, len(wl.inner), int(wl.inner.lengths.sum()), threaded=threads is not None)

    def run(_: Any) -> EncapResult:
        return nic.encap(wl.inner, h, threads=threads, out=out)

    def check(res: EncapResult) -> None:
        _require_ok(res, label)

    return _Variant(t, run, None, check)


def _c_variant(key: str, label: str, wl: Workload, evp: EvpLoop, threads: int = 1) -> _Variant:
    s, _ = parse_suite(wl.suite)
    out = np.empty(wl.esp.data.size, dtype=np.uint8)
    t = Timing(key, label, len(wl.esp), int(wl.esp.lengths.sum()), threaded=threads > 1)
    return _Variant(t, lambda _: evp.decrypt(s, wl.keys[0], wl.esp, out, threads), None,
                    _expect(len(wl.esp), label))


def _ends(sizes: Sequence[int]) -> tuple[int, ...]:
    """The smallest and the largest size, in that order; one size once (it is both)."""
    return tuple(dict.fromkeys((min(sizes), max(sizes))))


def run(cfg: Config, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every comparison of ``cfg``; returns the timings, ratios and machine description."""
    if cfg.backend not in backends():
        raise RuntimeError(f"backend {cfg.backend!r} is not available (have {backends()})")
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    load_before = _loadavg()
    timings: dict[str, Timing] = {}
    ratios: list[Ratio] = []
    notes: list[str] = []
    try:
        evp: Optional[EvpLoop] = EvpLoop()
    except RuntimeError as e:
        evp = None
        notes.append(f"C loop skipped: {e}")
        log(f"! {notes[-1]}")
    gcm, _ = parse_suite(cfg.gcm_suite)
    th = cfg.threads
    b = cfg.backend
    scapy_packets = cfg.scapy_packets
    if scapy_packets:
        try:
            import scapy.layers.ipsec  # noqa: F401
        except ImportError as e:
            scapy_packets = 0
            notes.append(f"scapy baseline skipped: {e} (the bench extra installs scapy: pip install '.[bench]' "
                         f"in a checkout, 'natt[bench]' from a package index)")

    for size in cfg.sizes:
        log(f"{cfg.gcm_suite}, tunnel, 1 SA, {cfg.batch} packets of {size} octets (inner)")
        wl = build_workload(b, cfg.gcm_suite, size, cfg.batch, 1, cfg.seed)
        variants = [
            _decap_variant(f"gcm.decap.{size}", f"natt decap ({b}, threads=None)", wl, b, None),
            _decap_variant(f"gcm.decap_t{th}.{size}", f"natt decap ({b}, threads={th})", wl, b, th),
            _encap_variant(f"gcm.encap.{size}", f"natt encap ({b}, threads=None)", wl, b, None),
        ]
        if evp is not None:
            variants.append(_c_variant(f"gcm.evp.{size}", "bare EVP loop (C, ctypes)", wl, evp))
            variants.append(_c_variant(f"gcm.evp_t{th}.{size}", f"bare EVP loop (C), {_threads(th)}", wl, evp, th))
        buf = wl.esp.data.tobytes()
        offs, lens = wl.esp.offsets.tolist(), wl.esp.lengths.tolist()

        def aesgcm_loop(_: Any, key: bytes = wl.keys[0], buf: bytes = buf, offs: list[int] = offs,
                        lens: list[int] = lens) -> int:
            return python_aesgcm_loop(gcm, key, buf, offs, lens)

        variants.append(_Variant(
            Timing(f"gcm.python.{size}", "Python loop over cryptography AESGCM", len(wl.esp), len(buf)),
            aesgcm_loop, None, _expect(len(wl.esp), "AESGCM loop")))
        if scapy_packets:
            dec = _scapy_decryptor(wl)
            sub = [wl.esp[i] for i in range(min(scapy_packets, len(wl.esp)))]

            def scapy_decrypt(_: Any, sub: list[bytes] = sub, dec: Callable[[list[bytes]], int] = dec) -> int:
                return dec(sub)

            variants.append(_Variant(
                Timing(f"gcm.scapy.{size}", f"scapy SecurityAssociation.decrypt ({len(sub)} pkts)",
                       len(sub), sum(map(len, sub))),
                scapy_decrypt, None, _expect(len(sub), "scapy")))
        _interleaved(variants, cfg.reps, log)
        for v in variants:
            timings[v.timing.key] = v.timing
        del wl, buf, variants
        gc.collect()

    # Many SAs: a fresh receiver with cfg.many_sas SAs per repetition (installing is untimed).
    for size in _ends(cfg.sizes):
        log(f"{cfg.gcm_suite}, {cfg.many_sas} SAs with random SPIs vs 1 SA, {cfg.batch} packets of {size}")
        t0 = time.perf_counter()
        wl_many = build_workload(b, cfg.gcm_suite, size, cfg.batch, cfg.many_sas, cfg.seed + 1)
        t_build = time.perf_counter() - t0
        t0 = time.perf_counter()
        wl_many.receiver(b, warm=False).close()
        t_install = time.perf_counter() - t0
        log(f"  (built in {t_build:.1f} s; installing {cfg.many_sas} inbound SAs takes {t_install:.2f} s, "
            f"{t_install / cfg.many_sas * 1e6:.1f} us per SA)")
        wl_one = build_workload(b, cfg.gcm_suite, size, cfg.batch, 1, cfg.seed + 1)
        variants = [
            _decap_variant(f"gcm.decap_1sa.{size}", f"natt decap ({b}), 1 SA", wl_one, b, None),
            _decap_variant(f"gcm.decap_many.{size}", f"natt decap ({b}), {cfg.many_sas} SAs", wl_many, b, None),
            _decap_variant(f"gcm.decap_many_cold.{size}", f"natt decap ({b}), {cfg.many_sas} SAs, no warm-up",
                           wl_many, b, None, warm=False),
            _decap_variant(f"gcm.decap_many_t{cfg.threads}.{size}",
                           f"natt decap ({b}), {cfg.many_sas} SAs, threads={cfg.threads}", wl_many, b, cfg.threads),
        ]
        variants[1].timing.note = f"SA install {t_install / cfg.many_sas * 1e6:.1f} us/SA (untimed)"
        sas = None
        if evp is not None and gcm.cipher is Cipher.AES_GCM:
            # The same random SA order through bare per-SA EVP contexts: the cost of the memory
            # traffic alone, which no data path that keys OpenSSL per SA can avoid.
            variants.append(_c_variant(f"gcm.evp_1sa.{size}", "bare EVP loop (C), 1 SA", wl_one, evp))
            sas = evp.gcm_many(gcm, wl_many.keys)
            c_out = np.empty(wl_many.esp.data.size, dtype=np.uint8)

            def evp_many(_: Any, sas: _EvpSas = sas, wl: Workload = wl_many, o: np.ndarray = c_out) -> int:
                return sas.decrypt(wl.esp, wl.sa_index, o)

            variants.append(_Variant(
                Timing(f"gcm.evp_many.{size}", f"bare EVP loop (C), {cfg.many_sas} SAs", len(wl_many.esp),
                       int(wl_many.esp.lengths.sum())),
                evp_many, None, _expect(len(wl_many.esp), "many-SA EVP loop")))
        try:
            _interleaved(variants, cfg.reps, log)
        finally:
            if sas is not None:
                sas.close()
        for v in variants:
            timings[v.timing.key] = v.timing
        del wl_many, wl_one, variants
        gc.collect()

    # AES-CBC + HMAC-SHA1-96 against a C loop with the same cipher and HMAC calls, and
    # ChaCha20-Poly1305 against the AEAD loop (a full re-init with the nonce per packet: EVP has
    # no fixed-IV shortcut for it).
    for prefix, suite, c_label, seed in (("cbc", cfg.cbc_suite, "bare EVP + HMAC loop (C, ctypes)", 2),
                                         ("chacha", cfg.chacha_suite, "bare EVP loop (C, ctypes)", 4)):
        for size in _ends(cfg.sizes):
            log(f"{suite}, tunnel, 1 SA, {cfg.batch} packets of {size}")
            wl = build_workload(b, suite, size, cfg.batch, 1, cfg.seed + seed)
            variants = [
                _decap_variant(f"{prefix}.decap.{size}", f"natt decap ({b}, threads=None)", wl, b, None),
                _encap_variant(f"{prefix}.encap.{size}", f"natt encap ({b}, threads=None)", wl, b, None),
            ]
            if evp is not None:
                variants.append(_c_variant(f"{prefix}.evp.{size}", c_label, wl, evp))
            _interleaved(variants, cfg.reps, log)
            for v in variants:
                timings[v.timing.key] = v.timing
            del wl, variants
            gc.collect()

    # Fixed cost of a call: many decap calls of one 64-octet packet each (distinct sequence numbers,
    # so anti-replay stays on and every call decrypts).
    log(f"fixed cost: {cfg.single_calls} decap calls on a batch of one")
    wl = build_workload(b, cfg.gcm_suite, 64, cfg.single_calls, 1, cfg.seed + 3)
    singles = [PacketBatch(wl.esp.data, wl.esp.offsets[i: i + 1], wl.esp.lengths[i: i + 1])
               for i in range(len(wl.esp))]
    out1 = DecapResult()

    ok_code = int(Status.OK)   # a numpy scalar compared with the IntEnum itself costs ~10 us

    def one_by_one(nic: Offload) -> int:
        ok = 0
        for pb in singles:
            ok += nic.decap(pb, out=out1).status[0] == ok_code
        return ok

    v = _Variant(Timing("call.decap1", f"natt decap ({b}) call on a batch of one", len(singles),
                        int(wl.esp.lengths.sum())),
                 one_by_one, lambda: wl.receiver(b), _expect(len(singles), "batch-of-one decap"))
    _interleaved([v], cfg.reps, log)
    timings[v.timing.key] = v.timing

    ratios = _ratios(cfg, timings)
    return {"natt_version": __version__, "config": dataclasses.asdict(cfg), "machine": machine(),
            "started": started, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "load_average": {"start": load_before, "end": _loadavg()},
            "timings": [t.as_dict() for t in timings.values()],
            "ratios": [dataclasses.asdict(r) for r in ratios], "notes": notes}


def _ratios(cfg: Config, t: dict[str, Timing]) -> list[Ratio]:
    th = cfg.threads
    out: list[Ratio] = []

    def have(*keys: str) -> bool:
        return all(k in t for k in keys)

    for size in cfg.sizes:
        if have(f"gcm.decap.{size}", f"gcm.evp.{size}"):
            target = {1400: 0.85, 64: 0.75}.get(size, 0.0)      # the targets are stated for these sizes
            out.append(_speed_ratio(f"natt decap / bare EVP loop, {size} octets", t[f"gcm.decap.{size}"],
                                    t[f"gcm.evp.{size}"], target))
    for size in cfg.sizes:
        if have(f"gcm.decap.{size}", f"gcm.python.{size}"):
            target = 5.0 if size == 64 else 0.0
            out.append(_speed_ratio(f"natt decap / Python AESGCM loop, {size} octets", t[f"gcm.decap.{size}"],
                                    t[f"gcm.python.{size}"], target))
    for size in cfg.sizes:
        if have(f"gcm.decap.{size}", f"gcm.scapy.{size}"):
            out.append(_speed_ratio(f"natt decap / scapy decrypt, {size} octets", t[f"gcm.decap.{size}"],
                                    t[f"gcm.scapy.{size}"]))
    for size in cfg.sizes:
        if have(f"gcm.decap_t{th}.{size}", f"gcm.decap.{size}"):
            # The target is threads=2's; other thread counts have none (1.8 for one thread
            # could never be met, and for eight would ask too little).
            out.append(_speed_ratio(f"natt decap threads={th} / threads=None, {size} octets",
                                    t[f"gcm.decap_t{th}.{size}"], t[f"gcm.decap.{size}"], 1.8 if th == 2 else 0))
    for size in cfg.sizes:
        if have(f"gcm.evp_t{th}.{size}", f"gcm.evp.{size}"):
            out.append(_speed_ratio(f"bare EVP loop {_threads(th)} / 1 thread (the machine's ceiling), {size} octets",
                                    t[f"gcm.evp_t{th}.{size}"], t[f"gcm.evp.{size}"]))
    for size in _ends(cfg.sizes):
        if have(f"gcm.decap_many.{size}", f"gcm.decap_1sa.{size}"):
            out.append(_speed_ratio(f"natt decap {cfg.many_sas} SAs / 1 SA, {size} octets",
                                    t[f"gcm.decap_many.{size}"], t[f"gcm.decap_1sa.{size}"], 0.8))
        if have(f"gcm.evp_many.{size}", f"gcm.evp_1sa.{size}"):
            out.append(_speed_ratio(f"bare EVP loop {cfg.many_sas} SAs / 1 SA (the floor), {size} octets",
                                    t[f"gcm.evp_many.{size}"], t[f"gcm.evp_1sa.{size}"]))
        if have(f"gcm.decap_many.{size}", f"gcm.evp_many.{size}"):
            out.append(_speed_ratio(f"natt decap / bare EVP loop, {cfg.many_sas} SAs, {size} octets",
                                    t[f"gcm.decap_many.{size}"], t[f"gcm.evp_many.{size}"]))
        if have(f"gcm.decap_many_t{th}.{size}", f"gcm.decap_many.{size}"):
            out.append(_speed_ratio(f"natt decap threads={th} / threads=None, {cfg.many_sas} SAs, {size} octets",
                                    t[f"gcm.decap_many_t{th}.{size}"], t[f"gcm.decap_many.{size}"]))
        if have(f"gcm.decap_many_cold.{size}", f"gcm.decap_1sa.{size}"):
            out.append(_speed_ratio(f"natt decap {cfg.many_sas} SAs no warm-up / 1 SA, {size} octets",
                                    t[f"gcm.decap_many_cold.{size}"], t[f"gcm.decap_1sa.{size}"]))
    for size in _ends(cfg.sizes):
        if have(f"cbc.decap.{size}", f"cbc.evp.{size}"):
            out.append(_speed_ratio(f"natt {cfg.cbc_suite} decap / bare EVP+HMAC loop, {size} octets",
                                    t[f"cbc.decap.{size}"], t[f"cbc.evp.{size}"], 0.8))
    for size in _ends(cfg.sizes):
        if have(f"chacha.decap.{size}", f"chacha.evp.{size}"):
            out.append(_speed_ratio(f"natt {cfg.chacha_suite} decap / bare EVP loop, {size} octets",
                                    t[f"chacha.decap.{size}"], t[f"chacha.evp.{size}"]))
    for prefix, suite in (("gcm", cfg.gcm_suite), ("cbc", cfg.cbc_suite), ("chacha", cfg.chacha_suite)):
        for size in cfg.sizes:
            if have(f"{prefix}.encap.{size}", f"{prefix}.decap.{size}"):
                e, d = t[f"{prefix}.encap.{size}"], t[f"{prefix}.decap.{size}"]
                # Per packet time of encap over decap (same packets, one direction each way).
                v = e.ns_per_packet() / d.ns_per_packet()
                out.append(Ratio(f"{suite} encap time / decap time, {size} octets", v,
                                 e.ns_per_packet("max") / d.ns_per_packet("min"),
                                 e.ns_per_packet("min") / d.ns_per_packet("max"), "<= 1.2", v <= 1.2,
                                 _cpu_ratio(e, d), _paired(e, d)))
    if "call.decap1" in t:
        c = t["call.decap1"]
        us = c.ns_per_packet() / 1000
        cpu = c.cpu_ns_per_packet()
        out.append(Ratio("fixed cost of one decap call, batch of one (us)", us,
                         c.ns_per_packet("max") / 1000, c.ns_per_packet("min") / 1000, "<= 5", us <= 5,
                         None if cpu is None else cpu / 1000))
    return out


# ---------------------------------------------------------------------------------------------- machine, output

def _loadavg() -> Optional[list[float]]:
    """1, 5 and 15-minute load averages (what else was running), where the OS tells."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _run_text(*cmd: str) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


# CPU features the crypto underneath natt or the baselines may use (lscpu's names).
_CRYPTO_FLAGS = ("aes", "pclmulqdq", "avx2", "sha_ni", "vaes", "vpclmulqdq", "avx512f", "avx512vl")


def machine() -> dict[str, Any]:
    """What the figures were measured on: CPU, cores, the libcrypto natt links, library versions."""
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "nproc": os.cpu_count(), "numpy": np.__version__}
    for line in _run_text("lscpu").splitlines():
        k, _, v = line.partition(":")
        k, v = k.strip(), v.strip()
        # A VM names its CPU "AMD EPYC" whatever the generation: family and model tell Zen 3
        # (25, 1) from Zen 4 (25, 17), and the flags whether wide AES and AVX-512 are there. The
        # same image has landed on both, and ratios such as 100 000 SAs / 1 SA differ by host.
        if k in ("Model name", "CPU family", "Model", "CPU(s)", "Thread(s) per core", "Hypervisor vendor",
                 "L1d cache", "L2 cache", "L3 cache"):
            info[k] = v
        elif k == "Flags":
            info["crypto flags"] = " ".join(f for f in _CRYPTO_FLAGS if f in v.split())
    try:
        from ._fastpath import openssl_version     # the libcrypto natt's data path loaded

        info["libcrypto"] = openssl_version()
    except ImportError:
        info["libcrypto"] = _run_text("openssl", "version")
    try:
        import cryptography
        from cryptography.hazmat.backends.openssl.backend import backend as ossl

        info["cryptography"] = f"{cryptography.__version__} ({ossl.openssl_version_text()})"
    except Exception:  # an informational field only
        info["cryptography"] = "unavailable"
    try:
        import scapy

        info["scapy"] = scapy.VERSION
    except ImportError:
        info["scapy"] = "unavailable"
    return info


def format_report(result: dict[str, Any]) -> str:
    """The timings and ratios as two plain-text tables."""
    load = result.get("load_average") or {}
    cpu = result["machine"].get("Model name", "?")
    if "CPU family" in result["machine"]:
        cpu += f" (family {result['machine']['CPU family']}, model {result['machine'].get('Model', '?')})"
    lines = [f"natt {result['natt_version']} on {cpu}, "
             f"{result['machine'].get('nproc')} CPUs, {result['machine'].get('libcrypto', '?')}",
             f"{result['config']['reps']} repetitions; per packet: median (min .. max); "
             f"load average at start {load.get('start')}, at end {load.get('end')}", ""]
    # Columns as wide as their longest entry, so that the numbers line up whatever the labels.
    kw = max([len("case")] + [len(t["key"]) for t in result["timings"]])
    lw = max([len("variant")] + [len(t["label"]) for t in result["timings"]])
    nw = max([len("ratio")] + [len(r["name"]) for r in result["ratios"]])
    lines.append(f"{'case':<{kw}} {'variant':<{lw}} {'ns/pkt':>9} {'min':>9} {'max':>9} {'cpu ns':>9} "
                 f"{'Mpps':>7} {'Gbit/s':>7}")
    for t in result["timings"]:
        cpu = "-" if t["median_cpu_ns_per_packet"] is None else f"{t['median_cpu_ns_per_packet']:.1f}"
        lines.append(f"{t['key']:<{kw}} {t['label']:<{lw}} {t['median_ns_per_packet']:9.1f} "
                     f"{t['min_ns_per_packet']:9.1f} {t['max_ns_per_packet']:9.1f} {cpu:>9} {t['mpps']:7.3f} "
                     f"{t['gbit_s']:7.2f}")
    lines += ["", "ratios: speed, natt's over the other variant's (above 1: natt is faster), except the",
              "'time / time' rows (below 1: the first is faster); median of the repetitions, on wall time;",
              "cpu: the same on the calling thread's CPU time; paired: the median of the ratios within",
              "one round, where the variants ran back to back (BENCHMARKS.md, \"Read this first\")",
              f"{'ratio':<{nw}} {'median':>8} {'worst .. best':>17} {'cpu':>7} {'paired':>7}  {'target':<7} met"]
    for r in result["ratios"]:
        met = "-" if r["met"] is None else ("yes" if r["met"] else "NO")
        rng = f"{r['low']:.2f} .. {r['high']:.2f}"
        cpu = "-" if r["cpu_value"] is None else f"{r['cpu_value']:.2f}"
        paired = "-" if r["paired"] is None else f"{r['paired']:.2f}"
        lines.append(f"{r['name']:<{nw}} {r['value']:8.2f} {rng:>17} {cpu:>7} {paired:>7}  {r['target']:<7} {met}")
    for n in result["notes"]:
        lines.append(f"note: {n}")
    return "\n".join(lines)


def format_markdown(result: dict[str, Any]) -> str:
    """The timings and ratios as Markdown tables (what BENCHMARKS.md shows)."""
    lines = ["| case | variant | ns/packet median | min | max | CPU ns/packet | Mpps | Gbit/s |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for t in result["timings"]:
        cpu = "–" if t["median_cpu_ns_per_packet"] is None else f"{t['median_cpu_ns_per_packet']:.1f}"
        lines.append(f"| `{t['key']}` | {t['label']} | {t['median_ns_per_packet']:.1f} | "
                     f"{t['min_ns_per_packet']:.1f} | {t['max_ns_per_packet']:.1f} | {cpu} | {t['mpps']:.3f} | "
                     f"{t['gbit_s']:.2f} |")
    lines += ["", "| ratio | median (wall) | worst .. best | CPU time | paired by round | target | met |",
              "|---|---:|---:|---:|---:|---|---|"]
    for r in result["ratios"]:
        met = "–" if r["met"] is None else ("yes" if r["met"] else "**no**")
        cpu = "–" if r["cpu_value"] is None else f"{r['cpu_value']:.2f}"
        paired = "–" if r["paired"] is None else f"{r['paired']:.2f}"
        lines.append(f"| {r['name']} | {r['value']:.2f} | {r['low']:.2f} .. {r['high']:.2f} | {cpu} | {paired} | "
                     f"{r['target'].replace('>=', '≥').replace('<=', '≤')} | {met} |")
    return "\n".join(lines)


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(sorted({int(x) for x in text.split(",")}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 64,512,1400, got {text!r}") from None
    if not sizes or sizes[0] < 28 or sizes[-1] > 65000:
        raise argparse.ArgumentTypeError("sizes must be 28..65000 octets")
    return sizes


# Bounds on the workload, so that a typo is refused before the run rather than failing to
# allocate after minutes of timed cases. Measured peak memory of a run: about 1 KB per packet of
# --batch plus 13 octets per octet of a batch of the largest --sizes (256 MiB of packets: some
# 3.5 GB), 0.55 KB per call of --calls, 4.4 KB per SA of --sas (Offload's default max_sas of
# them: some 4.6 GB, and minutes to install).
MAX_BATCH = 1_000_000
MAX_BATCH_OCTETS = 256 << 20
MAX_CALLS = 1_000_000


def build_parser(prog: str = "natt bench") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter, description=(
        "Time natt's decap and encap against a bare C loop of the same EVP calls (compiled at run\n"
        "time with cc), a Python loop over cryptography's AESGCM and scapy, on the same packets in\n"
        "one process, and print each ratio beside its target (BENCHMARKS.md explains the variants).\n"
        "Times are in ns per packet: the median of the repetitions, their min and max, and the\n"
        "calling thread's CPU time (cpu ns); Mpps and Gbit/s are of the input packets. Ratios are\n"
        "speeds, natt's over the other variant's (above 1: natt is faster), except the 'time / time'\n"
        "rows (below 1: the first is faster); the fixed cost of a call is in microseconds (us).\n"
        "A full run takes 5 to 8 minutes; keep the machine otherwise idle: the ratios are only\n"
        "as steady as the CPU time the run gets."),
        epilog="examples:\n" + "".join(
            f"  {prog} {example:<28} # {what}\n" for example, what in (
                ("--quick", "smaller batches: about half a minute"),
                ("--markdown --json run.json", "the full run, tables as in BENCHMARKS.md"),
                ("--sizes 64 --reps 15", "only 64-octet packets, more repetitions"))) +
               "exit status: 0 ran (whether or not every target was met: the table says; without a\n"
               "C compiler or libcrypto headers the C loop's rows are skipped with a note), 1 a variant\n"
               "that could not run (a failed decap, too little memory) or a --json that cannot be\n"
               "written where it is (a directory, a missing or read-only directory: found before the\n"
               "run), 2 bad usage; the same when the reader of the tables or of --json - stops early\n"
               "(| head -1).")
    p.add_argument("--quick", action="store_true", help="CI-sized run: the smaller defaults below")
    p.add_argument("--batch", type=at_least(1, MAX_BATCH), metavar="N",
                   help=f"packets per batch, 1..{MAX_BATCH:,}, and at most {MAX_BATCH_OCTETS >> 20} MiB of "
                        "packets of the largest of --sizes (default 100000; quick 10000)")
    p.add_argument("--sas", type=at_least(1, DEFAULT_MAX_SAS), metavar="N",
                   help=f"SAs of the many-SA case, 1..{DEFAULT_MAX_SAS:,} (Offload's default max_sas; "
                        "default 100000; quick 10000)")
    p.add_argument("--reps", type=at_least(1), metavar="N", help="timed repetitions per variant (default 7; quick 3)")
    p.add_argument("--sizes", type=_sizes, metavar="OCTETS,...",
                   help="inner packet sizes, 28..65000; the many-SA, aes128-sha1 and chacha20poly1305 "
                        "cases take the smallest and largest (default 64,512,1400; quick 64,1400)")
    p.add_argument("--threads", type=at_least(1, MAX_THREADS), default=2, metavar="N",
                   help=f"threads of the threaded decap, 1..{MAX_THREADS} (default 2; its target, "
                        "speed-up >= 1.8, is judged for 2 only)")
    p.add_argument("--scapy-packets", type=at_least(0), metavar="N",
                   help="packets of the scapy subset; 0 skips scapy (default 2000; quick 200)")
    p.add_argument("--calls", type=at_least(1, MAX_CALLS), metavar="N",
                   help=f"decap calls of the per-call cost, 1..{MAX_CALLS:,} (default 20000; quick 5000)")
    p.add_argument("--backend", choices=("fast", "reference"), default="fast",
                   help="natt backend to time (default fast)")
    p.add_argument("--json", "--report", dest="json", metavar="OUT.json",
                   help="also write every timing and ratio as JSON (written whole or not at all; '-' is "
                        "standard output, the tables then go to stderr); --report as in natt decap")
    p.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    return p


def main(argv: Optional[Sequence[str]] = None, prog: str = "natt bench") -> int:
    """Entry point of ``natt bench`` and ``python -m benchmarks.compare``; returns the exit status.

    0: ran (whether or not every target was met; the table says), 1: the
    backend or the workload could not run, or --json cannot be written. Bad
    arguments exit through argparse (status 2) as usual, as in every natt
    command.
    """
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    to_stdout = args.json == "-"
    why = args.json and not to_stdout and destination_problem(args.json)
    if why:
        # Found out after the run, this would lose every result. Status 1 as natt decap's
        # --report: the file system's state, not the arguments, is what is wrong.
        print(f"{prog}: --json (--report) {args.json}: {why}", file=sys.stderr)
        return 1
    given = {k: v for k, v in (("batch", args.batch), ("many_sas", args.sas), ("reps", args.reps),
                               ("sizes", args.sizes), ("scapy_packets", args.scapy_packets),
                               ("single_calls", args.calls)) if v is not None}
    given.update(threads=args.threads, backend=args.backend)
    cfg = Config.quick(**given) if args.quick else Config(**given)
    octets = cfg.batch * max(cfg.sizes)
    if octets > MAX_BATCH_OCTETS:
        default = "" if args.batch is not None else " (the --quick default)" if args.quick else " (the default)"
        parser.error(f"--batch {cfg.batch}{default}: {cfg.batch} packets of {max(cfg.sizes)} octets (--sizes) "
                     f"make {octets / (1 << 20):,.0f} MiB a batch, more than {MAX_BATCH_OCTETS >> 20} MiB; give "
                     f"a smaller --batch or --sizes")

    def log(msg: str) -> None:
        say(msg, file=sys.stderr)     # 2>&1 | head -1: the progress's reader leaving costs the run nothing

    try:
        result = run(cfg, log)
    except MemoryError:
        # numpy's own message ("Unable to allocate ... for an array with shape ...") names no option.
        print(f"{prog}: out of memory; a smaller --batch, --sizes, --sas or --calls needs less",
              file=sys.stderr)
        return 1
    except (RuntimeError, ValueError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    text = json.dumps(result, indent=1) + "\n"
    if to_stdout:
        # A reader that takes part of it (| head -c 100) and leaves is no failure of the run.
        say(text, end="")
    elif args.json:
        # Before the tables: a reader of stdout that goes away (| head) must not cost the run.
        # Whole or not at all, as natt decap's --report: a full disk must not leave half a file.
        try:
            with Replacement(args.json, new_file_mode()) as f:
                f.write(text.encode())
        except OSError as e:
            print(f"{prog}: cannot write {args.json}: {e.strerror or e}", file=sys.stderr)
            return 1
    say(format_markdown(result) if args.markdown else format_report(result),
        file=sys.stderr if to_stdout else sys.stdout)
    return 0
