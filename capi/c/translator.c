/* SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause */
/*
 * The per-queue translator from C, as a shadow virtqueue would use it: the
 * header's inline fast path answers as the call does, and neither answers
 * from a snapshot an event has made stale, even for an address in the
 * entry of the last hit (which the inline path would otherwise take).
 *
 *   translator        exits 0 when every check holds
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "vdpa_iova.h"

static int failures;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s (%s)\n", __FILE__, __LINE__, #cond,          \
                    vdpa_iova_last_error());                                                       \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

/* Both paths for one buffer: same return, count and segment. */
static int same(struct vdpa_iova_translator *t, uint64_t gpa, uint64_t len)
{
    struct vdpa_iova_segment a[2], b[2];
    size_t na = 99, nb = 99;
    memset(a, 0, sizeof(a));
    memset(b, 0, sizeof(b));
    int ra = vdpa_iova_translator_translate(t, gpa, len, a, 2, &na);
    int rb = vdpa_iova_translator_translate_inline(t, gpa, len, b, 2, &nb);
    /* Again, now that the last hit is this buffer's entry. */
    int rc = vdpa_iova_translator_translate_inline(t, gpa, len, b, 2, &nb);
    return ra == rb && rb == rc && na == nb && memcmp(a, b, sizeof(a)) == 0;
}

int main(void)
{
    struct vdpa_iova_caps caps;
    struct vdpa_iova_options opts;
    struct vdpa_iova_planner *p = NULL;
    struct vdpa_iova_plan *plan = NULL;
    struct vdpa_iova_translator *t = NULL;
    CHECK(vdpa_iova_caps_default(&caps) == 0);
    CHECK(vdpa_iova_options_default(&opts) == 0);
    CHECK(vdpa_iova_planner_new(&caps, &opts, &p) == 0);
    /* A pc guest with 256 MiB: low RAM, option ROMs, upper memory, BIOS
     * shadow, RAM above 1 MiB, BIOS. */
    const uint64_t sec[][3] = {
        { 0, 0xa0000, 0 },           { 0xc0000, 0x4000, 1 },     { 0xc4000, 0x2c000, 0 },
        { 0xf0000, 0x10000, 1 },     { 0x100000, 0xff00000, 0 }, { 0xfffc0000, 0x40000, 1 },
    };
    struct vdpa_iova_region regs[6];
    memset(regs, 0, sizeof(regs));
    for (int i = 0; i < 6; i++) {
        regs[i].gpa = sec[i][0];
        regs[i].size = sec[i][1];
        regs[i].hva = 0x7f0000000000ULL + sec[i][0];
        regs[i].readonly = (uint8_t)sec[i][2];
    }
    CHECK(vdpa_iova_add_regions(p, regs, 6, &plan) == 0);
    vdpa_iova_plan_free(plan);
    CHECK(vdpa_iova_translator_new(p, &t) == 0);

    /* Inside entries, across them, outside memory, bad lengths. */
    const uint64_t gpas[] = { 0x1000, 0x9f000, 0xa0000, 0xc0000, 0xc3fff, 0xeffc0, 0x123456,
                              0xfffff00, 0x10000000, 0xfffc0000, 0xffffffc0, UINT64_MAX - 8 };
    const uint64_t lens[] = { 1, 64, 1500, 0x10000, 0, UINT64_MAX };
    for (size_t i = 0; i < sizeof(gpas) / sizeof(gpas[0]); i++) {
        for (size_t k = 0; k < sizeof(lens) / sizeof(lens[0]); k++) {
            if (!same(t, gpas[i], lens[k])) {
                fprintf(stderr, "paths differ at 0x%" PRIx64 " len 0x%" PRIx64 "\n", gpas[i],
                        lens[k]);
                failures++;
            }
        }
    }
    /* The checks the contract promises, on the inline path too. */
    struct vdpa_iova_segment s;
    size_t n = 7;
    CHECK(vdpa_iova_translator_translate_inline(t, 0x1000, 64, NULL, 1, &n) == -EFAULT && n == 0);
    CHECK(vdpa_iova_translator_translate_inline(t, 0x1000, 64, &s, 1, NULL) == -EFAULT);
    CHECK(vdpa_iova_translator_translate_inline(NULL, 0x1000, 64, &s, 1, &n) == -EFAULT);
    CHECK(vdpa_iova_translator_translate_inline(t, 0x1000, 64, NULL, 0, &n) == -ENOBUFS && n == 1);

    /* The last hit is low RAM. A hot-plugged DIMM changes the table: the
     * old snapshot refuses, also for low RAM, which did not change. */
    CHECK(vdpa_iova_translator_translate_inline(t, 0x2000, 64, &s, 1, &n) == 0 && n == 1);
    struct vdpa_iova_region dimm;
    memset(&dimm, 0, sizeof(dimm));
    dimm.gpa = 1ULL << 32;
    dimm.size = 1ULL << 30;
    dimm.hva = 0x7e0000000000ULL;
    CHECK(vdpa_iova_add_regions(p, &dimm, 1, &plan) == 0);
    vdpa_iova_plan_free(plan);
    n = 7;
    CHECK(vdpa_iova_translator_translate_inline(t, 0x2000, 64, &s, 1, &n) == -ESTALE && n == 0);
    CHECK(vdpa_iova_translator_translate(t, 1ULL << 32, 64, &s, 1, &n) == -ESTALE);
    CHECK(vdpa_iova_translator_refresh(t, p) == 0);
    CHECK(vdpa_iova_translator_translate_inline(t, 1ULL << 32, 64, &s, 1, &n) == 0 && n == 1);
    CHECK(s.iova == 1ULL << 32 && s.len == 64 && s.perm == VDPA_IOVA_PERM_RW);
    CHECK(same(t, 0x2000, 64));

    /* The SVQ switch, then an unplug of the DIMM while the last hit is in it. */
    struct vdpa_iova_svq_config svq = { .queues = 3, .queue_size = 256, .hva = 0x7d0000000000ULL };
    CHECK(vdpa_iova_svq_switch(p, &svq, &plan) == 0);
    vdpa_iova_plan_free(plan);
    CHECK(vdpa_iova_translator_refresh(t, p) == 0);
    CHECK(vdpa_iova_translator_translate_inline(t, (1ULL << 32) + 0x1000, 64, &s, 1, &n) == 0);
    CHECK(vdpa_iova_remove_region(p, 1ULL << 32, &plan) == 0);
    vdpa_iova_plan_free(plan);
    CHECK(vdpa_iova_translator_translate_inline(t, (1ULL << 32) + 0x1000, 64, &s, 1, &n) ==
          -ESTALE);
    CHECK(vdpa_iova_translator_refresh(t, p) == 0);
    CHECK(vdpa_iova_translator_translate_inline(t, (1ULL << 32) + 0x1000, 64, &s, 1, &n) ==
          -ENOENT);

    /* Failback, then the planner freed: the handle outlives it, refusing. */
    CHECK(vdpa_iova_translator_translate_inline(t, 0x3000, 64, &s, 1, &n) == 0);
    CHECK(vdpa_iova_failback(p, &plan) == 0);
    vdpa_iova_plan_free(plan);
    CHECK(vdpa_iova_translator_translate_inline(t, 0x3000, 64, &s, 1, &n) == -ESTALE);
    CHECK(vdpa_iova_translator_refresh(t, p) == 0);
    CHECK(vdpa_iova_translator_translate_inline(t, 0x3000, 64, &s, 1, &n) == 0);
    vdpa_iova_planner_free(p);
    CHECK(vdpa_iova_translator_translate_inline(t, 0x3000, 64, &s, 1, &n) == -ESTALE);
    vdpa_iova_translator_free(t);

    if (failures) {
        fprintf(stderr, "translator: %d checks failed\n", failures);
        return 1;
    }
    printf("translator: ok\n");
    return 0;
}
