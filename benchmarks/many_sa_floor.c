/* What 100 000 SAs cost a decap-shaped loop that does no crypto and has no hash table: the
 * floor under natt's "100 000 SAs / 1 SA" ratio on this machine (BENCHMARKS.md, "100 000 SAs").
 *
 *   cc -O2 -o /tmp/many_sa_floor benchmarks/many_sa_floor.c
 *   /tmp/many_sa_floor [sas] [lines] [distance] [work] [octets]      (defaults 100000 6 8 60 128)
 *
 * Per packet, as natt's serial decap does with many SAs (natt_decap_serial): read `lines` cache
 * lines of the packet's SA (natt reads six: lookup key, replay state, AES-128-GCM state), each
 * prefetched `distance` packets ahead; write the SA's second line (the replay state); copy
 * `octets` from an input stream to an output stream (the packet); and run `work` dependent
 * multiply-adds in place of the crypto (60 take about as long as natt's one-SA decap of a
 * 64-octet AES-GCM packet here, ~100 ns). SAs are 576 octets apart in one 2 MiB-aligned mapping advised
 * for huge pages, as natt's arena (natt/natt_arena.h) places them.
 *
 * Three variants over the same 100 000 packets, interleaved, 15 rounds:
 *   one      every packet on SA 0;
 *   direct   each packet on a random SA whose address is known `distance` packets ahead: the
 *            best any SA table could do;
 *   table    the same SAs reached through a bucket array of SA pointers (4 buckets per SA, as
 *            natt's), each bucket prefetched 12 packets ahead and read at `distance`, where the
 *            SA's lines are then prefetched: the shape of natt's pipeline.
 * It prints the fastest and the median round of each, in ns per packet, and one / direct and
 * one / table: the ratios natt's "100 000 SAs / 1 SA" is measured against.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#define PACKETS 100000
#define ROUNDS 15
#define STRIDE 576
#define HUGE ((size_t)2 << 20)

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* n octets, 2 MiB-aligned, advised for huge pages and touched (so no round pays a page fault). */
static uint8_t *huge_map(size_t n)
{
    uint8_t *p, *a;
    n = (n + HUGE - 1) & ~(HUGE - 1);
    p = mmap(NULL, n + HUGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        exit(1);
    }
    a = (uint8_t *)(((uintptr_t)p + HUGE - 1) & ~(uintptr_t)(HUGE - 1));
    (void)madvise(a, n, MADV_HUGEPAGE);
    memset(a, 1, n);
    return a;
}

static int cmp(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}

typedef struct {
    int lines, distance, work, octets;
    uint8_t *in, *out;
} loop_t;

static uint64_t work(uint64_t x, int n)
{
    for (int k = 0; k < n; k++)
        x = x * 6364136223846793005ULL + 1;
    return x;
}

/* The packet body every variant shares: read the SA's lines, copy the packet, work, write line 1. */
static uint64_t packet(const loop_t *l, uint8_t *sa, size_t i, uint64_t acc)
{
    for (int k = 0; k < l->lines; k++)
        acc += *(volatile uint64_t *)(sa + 64 * k);
    memcpy(l->out + i * (size_t)l->octets, l->in + i * (size_t)l->octets, (size_t)l->octets);
    acc = work(acc + l->out[i * (size_t)l->octets], l->work);
    *(volatile uint64_t *)(sa + 64) = acc;
    return acc;
}

static void prefetch_sa(const loop_t *l, const uint8_t *sa)
{
    for (int k = 0; k < l->lines; k++)
        __builtin_prefetch(sa + 64 * k, 0, 3);
}

/* SA of packet i at sas + STRIDE * idx[i]. */
static uint64_t run_direct(const loop_t *l, uint8_t *sas, const uint32_t *idx)
{
    uint64_t acc = 0;
    for (size_t i = 0; i < PACKETS; i++) {
        if (i + l->distance < PACKETS)
            prefetch_sa(l, sas + STRIDE * (size_t)idx[i + l->distance]);
        acc = packet(l, sas + STRIDE * (size_t)idx[i], i, acc);
    }
    return acc;
}

/* SA of packet i at buckets[bkt[i]]. */
static uint64_t run_table(const loop_t *l, uint8_t **buckets, const uint32_t *bkt)
{
    uint64_t acc = 0;
    for (size_t i = 0; i < PACKETS; i++) {
        if (i + 12 < PACKETS)
            __builtin_prefetch(&buckets[bkt[i + 12]], 0, 3);
        if (i + l->distance < PACKETS)
            prefetch_sa(l, buckets[bkt[i + l->distance]]);
        acc = packet(l, buckets[bkt[i]], i, acc);
    }
    return acc;
}

int main(int argc, char **argv)
{
    size_t sas = argc > 1 ? strtoul(argv[1], NULL, 10) : 100000, nb = 1;
    loop_t l = {argc > 2 ? atoi(argv[2]) : 6, argc > 3 ? atoi(argv[3]) : 8,
                argc > 4 ? atoi(argv[4]) : 60, argc > 5 ? atoi(argv[5]) : 128, NULL, NULL};
    uint8_t *mem, **buckets;
    uint32_t *zero, *idx, *bkt;
    double t[3][ROUNDS], t0;
    const char *names[3] = {"one", "direct", "table"};
    volatile uint64_t sink = 0;

    if (sas < 1 || l.lines < 2 || l.lines > STRIDE / 64 || l.distance < 1 || l.distance > 12 || l.work < 0
        || l.octets < 1) {
        fprintf(stderr, "usage: %s [sas >= 1] [lines 2..9] [distance 1..12] [work >= 0] [octets >= 1]\n",
                argv[0]);
        return 2;
    }
    while (nb < 4 * sas)
        nb *= 2;
    mem = huge_map(STRIDE * sas);
    buckets = (uint8_t **)huge_map(nb * sizeof(*buckets));
    l.in = huge_map((size_t)PACKETS * (size_t)l.octets);
    l.out = huge_map((size_t)PACKETS * (size_t)l.octets);
    zero = calloc(PACKETS, sizeof(*zero));
    idx = malloc(PACKETS * sizeof(*idx));
    bkt = malloc(PACKETS * sizeof(*bkt));
    if (zero == NULL || idx == NULL || bkt == NULL)
        return 1;
    srand(0x4E415454);
    for (size_t i = 0; i < PACKETS; i++) {
        idx[i] = (uint32_t)(((uint64_t)rand() * sas) / ((uint64_t)RAND_MAX + 1));
        /* Bucket j of a table with 4 buckets per SA holds SA j / 4 here: any one-to-one mapping
           of packets to distinct buckets gives the same access pattern as a hash. */
        bkt[i] = idx[i] * (uint32_t)(nb / sas);
    }
    for (size_t j = 0; j < nb; j++)
        buckets[j] = mem + STRIDE * ((j / (nb / sas)) % sas);
    for (int r = 0; r < ROUNDS; r++) {
        t0 = now();
        sink += run_direct(&l, mem, zero);
        t[0][r] = now() - t0;
        t0 = now();
        sink += run_direct(&l, mem, idx);
        t[1][r] = now() - t0;
        t0 = now();
        sink += run_table(&l, buckets, bkt);
        t[2][r] = now() - t0;
    }
    printf("%zu SAs, %d lines, prefetch distance %d, work %d, %d octets copied; ns per packet\n", sas,
           l.lines, l.distance, l.work, l.octets);
    for (int v = 0; v < 3; v++) {
        qsort(t[v], ROUNDS, sizeof(double), cmp);
        printf("%-7s fastest %6.1f  median %6.1f\n", names[v], t[v][0] / PACKETS * 1e9,
               t[v][ROUNDS / 2] / PACKETS * 1e9);
    }
    printf("one / direct: %.2f (fastest) %.2f (median)\n", t[0][0] / t[1][0], t[0][ROUNDS / 2] / t[1][ROUNDS / 2]);
    printf("one / table:  %.2f (fastest) %.2f (median)\n", t[0][0] / t[2][0], t[0][ROUNDS / 2] / t[2][ROUNDS / 2]);
    return 0;
}
