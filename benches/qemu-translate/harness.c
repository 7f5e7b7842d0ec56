/* SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause */
/*
 * The SVQ per-descriptor lookup, QEMU 10.2.2's against libvdpa_iova's, in
 * one C process: QEMU's vhost_svq_translate_addr -> vhost_iova_tree_find_gpa
 * -> iova_tree_find_iova (glue.c, built from QEMU's source by run.sh), and
 * vdpa_iova_translator_translate called through libvdpa_iova.so as QEMU
 * would call it. Shared layouts and address sequences, runs interleaved
 * (QEMU, translator, vdpa_iova_translate, empty call; again), medians.
 *
 * Every address is first translated on both sides and each IOVA taken to
 * the host byte through that side's own device mappings (QEMU's: the
 * vhost_vdpa_dma_map of each section at the IOVA its tree allocated; ours:
 * vdpa_iova_mapped); both must reach the expected host byte with the
 * section's permission, or the harness fails.
 *
 *   harness [--rounds N] [--quick]
 *
 * Prints a Markdown table on stdout.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "glue.h"
#include "vdpa_iova.h"

#define MIB (1ULL << 20)
#define GIB (1ULL << 30)
#define NADDR 4096     /* addresses per pattern (a power of two) */
#define LEN 1500       /* bytes per descriptor: one Ethernet frame */
#define MAXSEC 4096
#define MAXROUNDS 1001

struct section {
    uint64_t gpa, size, hva;
    int ro;
};

struct layout {
    char name[64];
    int real; /* a machine's sections, not a synthetic region count */
    int n;
    struct section s[MAXSEC];
};

/* The device's view of one side: an IOTLB entry per mapped section. */
struct dev_entry {
    uint64_t iova, size, hva;
    uint8_t perm;
};

static void die(const char *what, int rc)
{
    fprintf(stderr, "harness: %s failed: %d (%s)\n", what, rc,
            rc < 0 ? vdpa_iova_last_error() : "");
    exit(1);
}

static void add(struct layout *l, uint64_t gpa, uint64_t size, uint64_t hva, int ro)
{
    l->s[l->n++] = (struct section){ gpa, size, hva, ro };
}

/*
 * An x86 guest's sections as the vhost-vdpa listener sees them once the
 * guest runs (SeaBIOS has shadowed itself and its option ROMs through the
 * PAM registers): low RAM below the VGA window, the option ROMs read-only,
 * the rest of the upper memory area writable, the shadowed BIOS read-only,
 * RAM from 1 MiB to the below-4G split, RAM above 4 GiB, and the BIOS ROM
 * at 4 GiB - 256 KiB. The split (hw/i386/pc_piix.c, pc_q35.c): pc keeps
 * everything below 4 GiB up to 3.5 GiB and splits at 3 GiB above that
 * (gigabyte_align); q35 keeps up to 2.75 GiB and splits at 2 GiB above.
 */
static void x86(struct layout *l, const char *machine, uint64_t ram)
{
    uint64_t low;
    uint64_t base = 0x7f0000000000ULL; /* pc.ram */

    if (strcmp(machine, "pc") == 0) {
        low = ram >= 0xe0000000ULL ? 0xc0000000ULL : ram;
    } else {
        low = ram >= 0xb0000000ULL ? 0x80000000ULL : ram;
    }
    snprintf(l->name, sizeof(l->name), "%s %s", machine,
             ram >= GIB ? (ram == 4 * GIB ? "4 GiB" : "64 GiB") : "256 MiB");
    l->real = 1;
    l->n = 0;
    add(l, 0, 0xa0000, base, 0);
    add(l, 0xc0000, 0x4000, base + 0xc0000, 1);
    add(l, 0xc4000, 0x2c000, base + 0xc4000, 0);
    add(l, 0xf0000, 0x10000, base + 0xf0000, 1);
    add(l, 0x100000, low - 0x100000, base + 0x100000, 0);
    if (ram > low) {
        add(l, 1ULL << 32, ram - low, base + low, 0);
    }
    add(l, 0xfffc0000ULL, 0x40000, 0x7e0000000000ULL, 1); /* pc.bios */
    /* Sorted by GPA, as the planner and QEMU's GPA tree keep them. */
    if (ram > low) {
        struct section hi = l->s[5];
        l->s[5] = l->s[6];
        l->s[6] = hi;
    }
}

/* n regions of 2 MiB, 4 MiB apart: the Rust benches' layout. */
static void regions(struct layout *l, int n)
{
    snprintf(l->name, sizeof(l->name), "%d regions", n);
    l->real = 0;
    l->n = 0;
    for (int i = 0; i < n; i++) {
        add(l, (uint64_t)i * 4 * MIB, 2 * MIB, 0x100000000000ULL + (uint64_t)i * 2 * MIB, 0);
    }
}

static uint64_t lcg_state;
static uint64_t rnd(void)
{
    lcg_state = lcg_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return lcg_state >> 11;
}

/* A LEN-byte buffer at a 64-byte aligned offset of section s. */
static uint64_t in_section(const struct section *s, uint64_t off)
{
    uint64_t room = s->size - LEN;
    if (off > room) {
        off = room;
    }
    return s->gpa + (off & ~63ULL);
}

enum pattern { RANDOM, SEQUENTIAL, RING, UNIFORM, NPATTERNS };
static const char *pattern_name[] = { "random", "sequential", "ring-like", "uniform over bytes" };

static void addresses(const struct layout *l, enum pattern p, uint64_t *a)
{
    lcg_state = 0x5eed0000 + (uint64_t)l->n * 31 + (uint64_t)p;
    uint64_t total = 0;
    for (int i = 0; i < l->n; i++) {
        total += l->s[i].size;
    }
    int cur = 0;
    uint64_t off = 0;
    for (int i = 0; i < NADDR; i++) {
        switch (p) {
        case RANDOM: /* any section, any offset */
            cur = (int)(rnd() % (uint64_t)l->n);
            a[i] = in_section(&l->s[cur], rnd() % l->s[cur].size);
            break;
        case SEQUENTIAL: /* the sections in order, page after page in each */
            cur = (int)((uint64_t)i * (uint64_t)l->n / NADDR);
            a[i] = in_section(&l->s[cur], ((uint64_t)i % 32) * 4096 % (l->s[cur].size - LEN));
            break;
        case RING: /* 90%: the previous buffer's section, 64..4096 bytes on */
            if (i > 0 && rnd() % 10 != 0) {
                off += 64 + rnd() % (4096 - 64 + 1);
                if (off + LEN > l->s[cur].size) {
                    off = 0;
                }
            } else {
                cur = (int)(rnd() % (uint64_t)l->n);
                off = rnd() % l->s[cur].size;
            }
            a[i] = in_section(&l->s[cur], off);
            off = a[i] - l->s[cur].gpa;
            break;
        case UNIFORM: { /* any guest byte alike: mostly the big RAM section */
            uint64_t x = rnd() % total;
            cur = 0;
            while (x >= l->s[cur].size) {
                x -= l->s[cur].size;
                cur++;
            }
            a[i] = in_section(&l->s[cur], x);
            break;
        }
        default:
            abort();
        }
    }
}

static double now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

static volatile uint64_t sink;

/* Each side: count lookups from address start on, wrapping at NADDR. */
enum side { QEMU, INLINE, TRANSLATOR, TRANSLATE, EMPTY, NSIDES };

struct run {
    struct qemu_side *q;
    struct vdpa_iova_planner *p;
    struct vdpa_iova_translator *t;
    const uint64_t *a;
};

static double pass(const struct run *r, enum side s, size_t start, size_t count)
{
    const size_t m = NADDR - 1;
    uint64_t sum = 0;
    double t0 = now_ns();
    switch (s) {
    case QEMU:
        sum = qemu_side_translate_run(r->q, r->a, m, start, count, LEN);
        break;
    case INLINE: /* the header's inline fast path, the call behind it */
        for (size_t i = 0; i < count; i++) {
            struct vdpa_iova_segment seg;
            size_t n;
            if (vdpa_iova_translator_translate_inline(r->t, r->a[(start + i) & m], LEN, &seg, 1,
                                                      &n) == 0) {
                sum += seg.iova;
            }
        }
        break;
    case TRANSLATOR:
        for (size_t i = 0; i < count; i++) {
            struct vdpa_iova_segment seg;
            size_t n;
            if (vdpa_iova_translator_translate(r->t, r->a[(start + i) & m], LEN, &seg, 1, &n) ==
                0) {
                sum += seg.iova;
            }
        }
        break;
    case TRANSLATE:
        for (size_t i = 0; i < count; i++) {
            struct vdpa_iova_segment seg;
            size_t n;
            if (vdpa_iova_translate(r->p, r->a[(start + i) & m], LEN, &seg, 1, &n) == 0) {
                sum += seg.iova;
            }
        }
        break;
    case EMPTY: /* the cost of a call into the library and back */
        for (size_t i = 0; i < count; i++) {
            sum += (uintptr_t)vdpa_iova_version() + r->a[(start + i) & m];
        }
        break;
    default:
        abort();
    }
    double t1 = now_ns();
    sink += sum;
    return (t1 - t0) / (double)count;
}

static int cmp(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return a < b ? -1 : a > b;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(*v), cmp);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static const struct dev_entry *dev_lookup(const struct dev_entry *e, size_t n, uint64_t iova)
{
    for (size_t i = 0; i < n; i++) {
        if (iova >= e[i].iova && iova - e[i].iova < e[i].size) {
            return &e[i];
        }
    }
    return NULL;
}

/* Both sides reach the expected host byte with the section's permission,
 * the whole buffer inside one device mapping. Returns the mismatches. */
static int cross_check(const struct layout *l, const struct run *r, const uint64_t *a,
                       const struct dev_entry *qe, size_t nq, const struct vdpa_iova_entry *oe,
                       size_t no)
{
    int bad = 0;
    for (int i = 0; i < NADDR; i++) {
        const struct section *s = NULL;
        for (int k = 0; k < l->n; k++) {
            if (a[i] >= l->s[k].gpa && a[i] - l->s[k].gpa < l->s[k].size) {
                s = &l->s[k];
            }
        }
        uint64_t want_hva = s->hva + (a[i] - s->gpa);
        uint8_t want_perm = s->ro ? VDPA_IOVA_PERM_RO : VDPA_IOVA_PERM_RW;
        uint64_t qiova;
        if (!qemu_side_translate(r->q, a[i], LEN, &qiova)) {
            fprintf(stderr, "%s: QEMU refused gpa 0x%" PRIx64 "\n", l->name, a[i]);
            bad++;
            continue;
        }
        const struct dev_entry *d = dev_lookup(qe, nq, qiova);
        if (!d || qiova + LEN - 1 - d->iova >= d->size || d->hva + (qiova - d->iova) != want_hva ||
            d->perm != want_perm) {
            fprintf(stderr, "%s: QEMU's iova 0x%" PRIx64 " for gpa 0x%" PRIx64 " is wrong\n",
                    l->name, qiova, a[i]);
            bad++;
        }
        struct vdpa_iova_segment seg[2];
        size_t n = 0;
        int rc = vdpa_iova_translator_translate(r->t, a[i], LEN, seg, 2, &n);
        if (rc != 0 || n != 1) {
            fprintf(stderr, "%s: translator: gpa 0x%" PRIx64 ": %d (%zu segments) %s\n", l->name,
                    a[i], rc, n, vdpa_iova_last_error());
            bad++;
            continue;
        }
        struct vdpa_iova_segment old, in;
        size_t on = 0, in_n = 0;
        if (vdpa_iova_translate(r->p, a[i], LEN, &old, 1, &on) != 0 || on != 1 ||
            memcmp(&old, &seg[0], sizeof(old)) != 0) {
            fprintf(stderr, "%s: vdpa_iova_translate and the translator differ at 0x%" PRIx64 "\n",
                    l->name, a[i]);
            bad++;
        }
        /* Twice: once after another address moved the last hit, once on it. */
        for (int k = 0; k < 2; k++) {
            if (vdpa_iova_translator_translate_inline(r->t, a[i], LEN, &in, 1, &in_n) != 0 ||
                in_n != 1 || memcmp(&in, &seg[0], sizeof(in)) != 0) {
                fprintf(stderr, "%s: the inline path differs at 0x%" PRIx64 "\n", l->name, a[i]);
                bad++;
            }
        }
        const struct vdpa_iova_entry *e = NULL;
        for (size_t k = 0; k < no; k++) {
            if (oe[k].asid == 0 && seg[0].iova >= oe[k].iova &&
                seg[0].iova - oe[k].iova < oe[k].size) {
                e = &oe[k];
            }
        }
        if (!e || seg[0].len != LEN || seg[0].iova + LEN - 1 - e->iova >= e->size ||
            e->uaddr + (seg[0].iova - e->iova) != want_hva || e->perm != want_perm ||
            seg[0].perm != want_perm) {
            fprintf(stderr, "%s: our iova 0x%" PRIx64 " for gpa 0x%" PRIx64 " is wrong\n", l->name,
                    seg[0].iova, a[i]);
            bad++;
        }
    }
    return bad;
}

int main(int argc, char **argv)
{
    int rounds = 301;
    int quick = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--rounds") == 0 && i + 1 < argc) {
            rounds = atoi(argv[++i]);
        } else if (strcmp(argv[i], "--quick") == 0) {
            quick = 1;
        } else {
            fprintf(stderr, "usage: harness [--rounds N] [--quick]\n");
            return 2;
        }
    }
    if (rounds < 1 || rounds > MAXROUNDS) {
        fprintf(stderr, "harness: --rounds must be 1 to %d\n", MAXROUNDS);
        return 2;
    }
    /* Each timed pass lasts about this long: far shorter than a scheduler
     * time slice, so that on a busy machine most passes run without being
     * preempted, and the median of many interleaved rounds is the cost of
     * the code, not of the load. */
    double pass_ns = 50e3;
    if (quick && rounds > 51) {
        rounds = 51;
    }

    static struct layout layouts[16];
    int nl = 0;
    const char *machines[] = { "pc", "q35" };
    const uint64_t rams[] = { 256 * MIB, 4 * GIB, 64 * GIB };
    for (int m = 0; m < 2; m++) {
        for (int k = 0; k < 3; k++) {
            x86(&layouts[nl++], machines[m], rams[k]);
        }
    }
    const int counts[] = { 16, 64, 256, 1024, 4096 };
    for (int k = 0; k < 5; k++) {
        regions(&layouts[nl++], counts[k]);
    }

    struct vdpa_iova_caps caps;
    struct vdpa_iova_options opts;
    if (vdpa_iova_caps_default(&caps) || vdpa_iova_options_default(&opts)) {
        die("defaults", -1);
    }

    printf("| layout (sections) | pattern | QEMU 10.2.2, ns | translator, inline, ns | "
           "translator, call, ns | `vdpa_iova_translate`, ns | empty call, ns | "
           "QEMU / translator inline |\n");
    printf("|---|---|---:|---:|---:|---:|---:|---:|\n");
    fflush(stdout);

    int mismatches = 0;
    static uint64_t a[NADDR];
    for (int li = 0; li < nl; li++) {
        const struct layout *l = &layouts[li];
        struct run r = { 0 };

        /* QEMU: shadow vrings first (3 queue pairs and the CVQ, two areas
         * each), then every section, first fit, as at an SVQ switch. */
        r.q = qemu_side_new(caps.range_first, caps.range_last);
        for (int v = 0; v < 14; v++) {
            if (qemu_side_map_ring(r.q, 0x7d0000000000ULL + (uint64_t)v * 0x10000, 0x3000) ==
                UINT64_MAX) {
                die("qemu_side_map_ring", -1);
            }
        }
        static struct dev_entry qe[MAXSEC];
        for (int k = 0; k < l->n; k++) {
            const struct section *s = &l->s[k];
            uint64_t iova = qemu_side_map_section(r.q, s->gpa, s->size, s->hva, s->ro);
            if (iova == UINT64_MAX) {
                die("qemu_side_map_section", -1);
            }
            /* vhost_vdpa_dma_map(..., section->readonly) */
            qe[k] = (struct dev_entry){ iova, s->size, s->hva,
                                        s->ro ? VDPA_IOVA_PERM_RO : VDPA_IOVA_PERM_RW };
        }

        /* Ours: the identity planner, switched to the shadow virtqueues. */
        struct vdpa_iova_plan *plan = NULL;
        int rc = vdpa_iova_planner_new(&caps, &opts, &r.p);
        if (rc) {
            die("vdpa_iova_planner_new", rc);
        }
        static struct vdpa_iova_region regs[MAXSEC];
        for (int k = 0; k < l->n; k++) {
            memset(&regs[k], 0, sizeof(regs[k]));
            regs[k].gpa = l->s[k].gpa;
            regs[k].size = l->s[k].size;
            regs[k].hva = l->s[k].hva;
            regs[k].readonly = (uint8_t)l->s[k].ro;
        }
        if ((rc = vdpa_iova_add_regions(r.p, regs, (size_t)l->n, &plan))) {
            die("vdpa_iova_add_regions", rc);
        }
        vdpa_iova_plan_free(plan);
        struct vdpa_iova_svq_config svq = { .queues = 7, .queue_size = 256,
                                            .hva = 0x7d0000000000ULL };
        if ((rc = vdpa_iova_svq_switch(r.p, &svq, &plan))) {
            die("vdpa_iova_svq_switch", rc);
        }
        vdpa_iova_plan_free(plan);
        if ((rc = vdpa_iova_translator_new(r.p, &r.t))) {
            die("vdpa_iova_translator_new", rc);
        }
        size_t no = 0;
        rc = vdpa_iova_mapped(r.p, NULL, 0, &no);
        struct vdpa_iova_entry *oe = calloc(no ? no : 1, sizeof(*oe));
        if ((rc != 0 && rc != -ENOBUFS) || !oe || (rc = vdpa_iova_mapped(r.p, oe, no, &no))) {
            die("vdpa_iova_mapped", rc);
        }

        for (int p = 0; p < NPATTERNS; p++) {
            if (p == UNIFORM && !l->real) {
                continue; /* regions of one size: the same as random */
            }
            addresses(l, (enum pattern)p, a);
            r.a = a;
            int bad = cross_check(l, &r, a, qe, (size_t)l->n, oe, no);
            mismatches += bad;

            /* Calibrate each side's passes to last about pass_ns. */
            size_t count[NSIDES];
            for (int s = 0; s < NSIDES; s++) {
                pass(&r, (enum side)s, 0, NADDR); /* warm */
                double ns = pass(&r, (enum side)s, 0, NADDR);
                count[s] = ns > 0 ? (size_t)(pass_ns / ns) : NADDR;
                if (count[s] < 16) {
                    count[s] = 16;
                }
            }
            static double t[NSIDES][MAXROUNDS];
            for (int k = 0; k < rounds; k++) {
                /* Every side on the same stretch of the sequence. */
                size_t start = (size_t)k * 1237 % NADDR;
                for (int s = 0; s < NSIDES; s++) {
                    t[s][k] = pass(&r, (enum side)s, start, count[s]);
                }
            }
            double med[NSIDES];
            for (int s = 0; s < NSIDES; s++) {
                med[s] = median(t[s], rounds);
            }
            printf("| %s (%d) | %s | %.1f | %.1f | %.1f | %.1f | %.1f | %.1fx |%s\n", l->name,
                   l->n, pattern_name[p], med[QEMU], med[INLINE], med[TRANSLATOR], med[TRANSLATE],
                   med[EMPTY], med[QEMU] / med[INLINE], bad ? " MISMATCH" : "");
            fflush(stdout);
        }
        free(oe);
        vdpa_iova_translator_free(r.t);
        vdpa_iova_planner_free(r.p);
        /* QEMU's side lives until exit: the harness has no use for
         * vhost_iova_tree_delete's cost. */
    }
    fprintf(stderr, "harness: %d cross-check mismatches; %d rounds interleaved, medians, "
                    "len %d, %d addresses a pattern\n",
            mismatches, rounds, LEN, NADDR);
    return mismatches ? 1 : 0;
}
