/* natt_arena (natt/natt_arena.h) under random allocation and freeing, against a model: every
 * slot on a 64-octet boundary, inside a 2 MiB-aligned slab, never handed out twice (each live
 * slot is filled with its own pattern and checked when freed), the arena maps exactly the
 * slabs that hold a live slot plus at most one spare, and nothing but the spare once all is
 * freed; natt_table_alloc returns zeroed (and from 1 MiB on 2 MiB-aligned) memory.
 *   arena N   N random operations; prints "N operations, 0 errors"; exit 1 on an error
 *   uaf       reads a freed slot: under AddressSanitizer this must be reported
 * Built and run by tests/test_arena.py, also under AddressSanitizer and UBSan. */
#include <stdio.h>
#include <string.h>
#include "natt_arena.h"

#define MAX_LIVE 20000
#define SA_SIZE 560                  /* sizeof(natt_sa) on x86-64; any size works */

static uint64_t rng_state = 0x4152454E41;

static uint32_t rnd(void) {          /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 0x2545F4914F6CDD1DULL) >> 32);
}

static uint8_t *live[MAX_LIVE];
static uint32_t tag[MAX_LIVE];
static size_t nlive;
static long errors;

#define CHECK(cond, ...) do { if (!(cond)) { errors++; if (errors < 10) { printf(__VA_ARGS__); printf("\n"); } } } while (0)

static void fill(uint8_t *p, size_t n, uint32_t t) {
    for (size_t k = 0; k < n; k++)
        p[k] = (uint8_t)(t + k * 31);
}

static int intact(const uint8_t *p, size_t n, uint32_t t) {
    for (size_t k = 0; k < n; k++)
        if (p[k] != (uint8_t)(t + k * 31))
            return 0;
    return 1;
}

static uintptr_t slab_of(const void *p) {
    return (uintptr_t)p & ~(uintptr_t)(NATT_HUGE - 1);
}

static size_t distinct_slabs(void) {
    static uintptr_t seen[MAX_LIVE];
    size_t n = 0, i, j;
    for (i = 0; i < nlive; i++) {
        uintptr_t s = slab_of(live[i]);
        for (j = 0; j < n && seen[j] != s; j++)
            ;
        if (j == n)
            seen[n++] = s;
    }
    return n;
}

static void check_slabs(natt_arena *a, long op) {
    size_t want = distinct_slabs();
    size_t got = natt_arena_slabs(a);
    CHECK(got == want || got == want + 1, "op %ld: %zu slabs mapped, %zu hold live slots", op, got, want);
}

static int run(long ops) {
    natt_arena a;
    uint32_t next_tag = 1;
    natt_arena_init(&a, SA_SIZE);
    CHECK(a.stride % 64 == 0 && a.stride >= SA_SIZE, "stride %zu", a.stride);
    for (long op = 0; op < ops; op++) {
        /* Phases that grow to MAX_LIVE and shrink to 0, so slabs fill, drain and are reused. */
        int grow = (op / 40000) % 2 == 0;
        int alloc = nlive == 0 || (nlive < MAX_LIVE && (rnd() % 100) < (grow ? 75u : 25u));
        if (alloc) {
            uint8_t *p = natt_arena_alloc(&a);
            CHECK(p != NULL, "op %ld: out of memory", op);
            if (p == NULL)
                break;
            CHECK((uintptr_t)p % 64 == 0, "op %ld: %p not on a 64-octet boundary", op, (void *)p);
            CHECK(p >= (uint8_t *)slab_of(p) + a.stride && p + a.stride <= (uint8_t *)slab_of(p) + NATT_HUGE,
                  "op %ld: %p overlaps its slab's header or end", op, (void *)p);
            live[nlive] = p;
            tag[nlive] = next_tag++;
            fill(p, SA_SIZE, tag[nlive]);
            nlive++;
        } else {
            size_t i = rnd() % nlive;
            CHECK(intact(live[i], SA_SIZE, tag[i]), "op %ld: slot %p was overwritten", op, (void *)live[i]);
            natt_arena_free(&a, live[i]);
            live[i] = live[nlive - 1];
            tag[i] = tag[nlive - 1];
            nlive--;
        }
        if (op % 997 == 0)
            check_slabs(&a, op);
    }
    for (size_t i = 0; i < nlive; i++) {
        CHECK(intact(live[i], SA_SIZE, tag[i]), "end: slot %p was overwritten", (void *)live[i]);
        natt_arena_free(&a, live[i]);
    }
    nlive = 0;
    CHECK(natt_arena_slabs(&a) <= 1, "all freed, %zu slabs still mapped", natt_arena_slabs(&a));

    size_t sizes[] = {8192, (size_t)1 << 20, (size_t)4 << 20, ((size_t)4 << 20) + 8};
    for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
        uint8_t *t = natt_table_alloc(sizes[k]);
        size_t z = 0;
        CHECK(t != NULL, "table of %zu octets: out of memory", sizes[k]);
        if (t == NULL)
            continue;
        for (size_t j = 0; j < sizes[k]; j++)
            z |= t[j];
        CHECK(z == 0, "table of %zu octets not zeroed", sizes[k]);
        CHECK(sizes[k] < NATT_TABLE_HUGE_MIN || (uintptr_t)t % NATT_HUGE == 0,
              "table of %zu octets not 2 MiB-aligned", sizes[k]);
        memset(t, 0xA5, sizes[k]);
        natt_table_free(t, sizes[k]);
    }
    printf("%ld operations, %ld errors\n", ops, errors);
    return errors != 0;
}

static int use_after_free(void) {
    natt_arena a;
    volatile uint8_t *p;
    natt_arena_init(&a, SA_SIZE);
    p = natt_arena_alloc(&a);
    natt_arena_alloc(&a);                /* keeps the slab mapped */
    natt_arena_free(&a, (void *)p);
    printf("read %d\n", p[100]);         /* AddressSanitizer: use-after-poison */
    return 0;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "uaf") == 0)
        return use_after_free();
    return run(argc > 2 ? atol(argv[2]) : 200000);
}
