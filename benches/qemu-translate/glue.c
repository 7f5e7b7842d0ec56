/* SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause */
/*
 * The QEMU side of the translate harness. Compiled with QEMU's flags
 * against QEMU's headers; `vhost_svq_translate_addr` is not in this file:
 * run.sh extracts it, unchanged, from the pinned QEMU source into
 * svq-translate.inc at build time (nothing of QEMU is kept in this
 * repository). util/iova-tree.c and hw/virtio/vhost-iova-tree.c are
 * compiled as they are.
 */
#include "qemu/osdep.h"
#include "qemu/log.h"
#include "hw/virtio/vhost-shadow-virtqueue.h"
#include "hw/virtio/vhost-iova-tree.h"

#include "glue.h"

/* What QEMU's util/log.c defines; logged only on the refused paths. */
unsigned qemu_loglevel;

void qemu_log(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
}

#include "svq-translate.inc"

struct qemu_side {
    VhostShadowVirtqueue *svq;
};

struct qemu_side *qemu_side_new(uint64_t iova_first, uint64_t iova_last)
{
    struct qemu_side *q = g_new0(struct qemu_side, 1);

    q->svq = g_new0(VhostShadowVirtqueue, 1);
    q->svq->iova_tree = vhost_iova_tree_new(iova_first, iova_last);
    return q;
}

uint64_t qemu_side_map_ring(struct qemu_side *q, uint64_t hva, uint64_t size)
{
    DMAMap map = {
        .translated_addr = hva,
        .size = size - 1,
        .perm = IOMMU_RW,
    };

    if (vhost_iova_tree_map_alloc(q->svq->iova_tree, &map, hva) != IOVA_OK) {
        return UINT64_MAX;
    }
    return map.iova;
}

uint64_t qemu_side_map_section(struct qemu_side *q, uint64_t gpa, uint64_t size, uint64_t hva,
                               int readonly)
{
    /* As vhost_vdpa_listener_region_add fills mem_region in SVQ mode. */
    DMAMap map = {
        .translated_addr = hva,
        .size = size - 1,
        .perm = IOMMU_ACCESS_FLAG(true, readonly),
    };

    if (vhost_iova_tree_map_alloc_gpa(q->svq->iova_tree, &map, gpa) != IOVA_OK) {
        return UINT64_MAX;
    }
    return map.iova;
}

int qemu_side_translate(const struct qemu_side *q, uint64_t gpa, uint64_t len, uint64_t *iova)
{
    struct iovec iov = { .iov_base = NULL, .iov_len = len };
    hwaddr g = gpa, addr = 0;

    if (!vhost_svq_translate_addr(q->svq, &addr, &iov, 1, &g)) {
        return 0;
    }
    *iova = addr;
    return 1;
}

uint64_t qemu_side_translate_run(const struct qemu_side *q, const uint64_t *gpas, size_t mask,
                                 size_t start, size_t count, uint64_t len)
{
    uint64_t sum = 0;

    for (size_t i = 0; i < count; i++) {
        struct iovec iov = { .iov_base = NULL, .iov_len = len };
        hwaddr g = gpas[(start + i) & mask], addr = 0;

        if (likely(vhost_svq_translate_addr(q->svq, &addr, &iov, 1, &g))) {
            sum += addr;
        }
    }
    return sum;
}
