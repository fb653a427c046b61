/* natt_arena.h: memory for the SA table in 2 MiB-aligned regions the kernel may back with
 * huge pages (madvise MADV_HUGEPAGE: transparent huge pages in "always" or "madvise" mode).
 *
 * Why: with 100 000 SAs a decap's SA struct, cipher state and hash bucket miss the cache on
 * every packet, and each sits on a different 4 KiB page, so each also misses the TLB; under
 * a hypervisor a TLB miss is a two-dimensional page walk. The decap prefetches the lines
 * (natt_decap_serial) but a prefetch that misses the TLB waits for the walk. Packed into
 * 2 MiB pages, 100 000 SAs need 28 TLB entries instead of 100 000 (BENCHMARKS.md, "100 000
 * SAs"). Where the kernel gives no huge pages this is an ordinary slab allocator.
 *
 *  - natt_arena: fixed-size slots (one natt_sa each, a multiple of 64 octets, so on a cache
 *    line boundary) carved from 2 MiB slabs; slot 0 of a slab holds its header. A slab with a
 *    free slot is on the arena's list; a slab whose last slot is freed is unmapped, except
 *    one kept as a spare (adding and deleting one SA in a loop does not map and unmap).
 *    Freed slots are linked through their first word, and poisoned for AddressSanitizer, so
 *    a use after free still reports as one (ci/fuzz-sanitized.sh).
 *  - natt_table_alloc/free: zeroed arrays (the hash buckets); from 1 MiB on, 2 MiB-aligned
 *    mappings with the same advice, else calloc.
 *
 * One mutex per arena: SAs are allocated and freed on the control path only (add, delete),
 * by any backend, from any thread. The caller wipes a slot before freeing it.
 */
#ifndef NATT_ARENA_H
#define NATT_ARENA_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <pthread.h>
#include <sys/mman.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define NATT_POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define NATT_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define NATT_POISON(p, n) ((void)(p), (void)(n))
#define NATT_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

#define NATT_HUGE ((size_t)2 << 20)             /* x86-64 and arm64 (4 KiB granule) huge page */
#define NATT_TABLE_HUGE_MIN ((size_t)1 << 20)

typedef struct natt_slab {
    struct natt_slab *prev, *next;              /* the arena's slabs with a free slot */
    void *free;                                 /* freed slots, linked through their first word */
    size_t fresh;                               /* slots fresh .. nslots have never been used */
    size_t used;
    int listed;
} natt_slab;

typedef struct {
    pthread_mutex_t m;
    natt_slab *avail;
    natt_slab *spare;                           /* an empty slab kept mapped, or NULL */
    size_t stride;                              /* slot size, a multiple of 64 */
    size_t nslots;                              /* slots per slab after the header's */
    size_t slabs;                               /* mapped, spare included */
} natt_arena;

/* A zero-filled, NATT_HUGE-aligned anonymous mapping of n octets (a multiple of NATT_HUGE),
   advised for huge pages; NULL if out of memory. */
static void *natt_map_huge(size_t n) {
    size_t extra = NATT_HUGE;
    uint8_t *p = mmap(NULL, n + extra, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    uint8_t *a;
    if (p == MAP_FAILED)
        return NULL;
    /* Trim to the aligned part: a 2 MiB page can only back a 2 MiB-aligned range. */
    a = (uint8_t *)(((uintptr_t)p + NATT_HUGE - 1) & ~(uintptr_t)(NATT_HUGE - 1));
    if (a > p)
        munmap(p, (size_t)(a - p));
    if (a + n < p + n + extra)
        munmap(a + n, (size_t)(p + n + extra - (a + n)));
#ifdef MADV_HUGEPAGE
    (void)madvise(a, n, MADV_HUGEPAGE);         /* advice only: EINVAL without THP support */
#endif
    return a;
}

static void natt_arena_init(natt_arena *a, size_t size) {
    pthread_mutex_init(&a->m, NULL);
    a->avail = NULL;
    a->spare = NULL;
    a->stride = (size + 63) & ~(size_t)63;
    if (a->stride < sizeof(natt_slab))
        a->stride = (sizeof(natt_slab) + 63) & ~(size_t)63;
    a->nslots = NATT_HUGE / a->stride - 1;
    a->slabs = 0;
}

static void natt_slab_link(natt_arena *a, natt_slab *s) {
    s->prev = NULL;
    s->next = a->avail;
    if (a->avail != NULL)
        a->avail->prev = s;
    a->avail = s;
    s->listed = 1;
}

static void natt_slab_unlink(natt_arena *a, natt_slab *s) {
    if (s->prev != NULL)
        s->prev->next = s->next;
    else
        a->avail = s->next;
    if (s->next != NULL)
        s->next->prev = s->prev;
    s->listed = 0;
}

/* An uninitialised slot of a->stride octets on a 64-octet boundary, or NULL. */
static void *natt_arena_alloc(natt_arena *a) {
    natt_slab *s;
    uint8_t *p;
    pthread_mutex_lock(&a->m);
    s = a->avail;
    if (s == NULL) {
        s = a->spare;
        a->spare = NULL;
        if (s == NULL) {
            s = natt_map_huge(NATT_HUGE);
            if (s == NULL) {
                pthread_mutex_unlock(&a->m);
                return NULL;
            }
            a->slabs++;
            NATT_POISON((uint8_t *)s + a->stride, a->nslots * a->stride);
        }
        s->free = NULL;
        s->fresh = 1;
        s->used = 0;
        natt_slab_link(a, s);
    }
    if (s->free != NULL) {
        p = s->free;
        NATT_UNPOISON(p, a->stride);
        s->free = *(void **)p;
    } else {
        p = (uint8_t *)s + s->fresh++ * a->stride;
        NATT_UNPOISON(p, a->stride);
    }
    if (++s->used == a->nslots)
        natt_slab_unlink(a, s);
    pthread_mutex_unlock(&a->m);
    return p;
}

/* Return a slot of natt_arena_alloc; p may be NULL. */
static void natt_arena_free(natt_arena *a, void *p) {
    natt_slab *s = (natt_slab *)((uintptr_t)p & ~(uintptr_t)(NATT_HUGE - 1));
    if (p == NULL)
        return;
    pthread_mutex_lock(&a->m);
    *(void **)p = s->free;
    s->free = p;
    NATT_POISON(p, a->stride);
    if (--s->used == 0) {
        if (s->listed)
            natt_slab_unlink(a, s);
        if (a->spare == NULL) {
            a->spare = s;
        } else {
            a->slabs--;
            NATT_UNPOISON(s, NATT_HUGE);        /* a later mapping may reuse the addresses */
            munmap(s, NATT_HUGE);
        }
    } else if (!s->listed) {
        natt_slab_link(a, s);
    }
    pthread_mutex_unlock(&a->m);
}

/* Slabs the arena has mapped (tests: an emptied arena keeps at most its spare). */
static size_t natt_arena_slabs(natt_arena *a) {
    size_t n;
    pthread_mutex_lock(&a->m);
    n = a->slabs;
    pthread_mutex_unlock(&a->m);
    return n;
}

static size_t natt_table_bytes(size_t n) {
    return (n + NATT_HUGE - 1) & ~(NATT_HUGE - 1);
}

/* n zeroed octets; free with natt_table_free(p, n). */
static void *natt_table_alloc(size_t n) {
    if (n < NATT_TABLE_HUGE_MIN)
        return calloc(1, n);
    return natt_map_huge(natt_table_bytes(n));
}

static void natt_table_free(void *p, size_t n) {
    if (p == NULL)
        return;
    if (n < NATT_TABLE_HUGE_MIN)
        free(p);
    else
        munmap(p, natt_table_bytes(n));
}

#endif
