/* SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause */
/*
 * The QEMU side of the translate harness, in plain C types: what harness.c
 * sees of glue.c, which is compiled against QEMU's own headers.
 */
#ifndef QEMU_TRANSLATE_GLUE_H
#define QEMU_TRANSLATE_GLUE_H

#include <stddef.h>
#include <stdint.h>

struct qemu_side;

/* vhost_iova_tree_new(first, last) and a shadow virtqueue that uses it. */
struct qemu_side *qemu_side_new(uint64_t iova_first, uint64_t iova_last);
/* A shadow vring area in the IOVA->HVA tree (vhost_iova_tree_map_alloc);
 * returns its IOVA, or UINT64_MAX. */
uint64_t qemu_side_map_ring(struct qemu_side *q, uint64_t hva, uint64_t size);
/* A guest section as vhost_vdpa_listener_region_add maps it in SVQ mode
 * (vhost_iova_tree_map_alloc_gpa); returns its IOVA, or UINT64_MAX. */
uint64_t qemu_side_map_section(struct qemu_side *q, uint64_t gpa, uint64_t size, uint64_t hva,
                               int readonly);
/* vhost_svq_translate_addr for one descriptor of len bytes at gpa: 1 and
 * *iova on success, 0 when QEMU refuses it. */
int qemu_side_translate(const struct qemu_side *q, uint64_t gpa, uint64_t len, uint64_t *iova);
/* vhost_svq_translate_addr for count descriptors of len bytes, one per
 * call as the SVQ forwards them, at gpas[(start + i) & mask]; returns a sum
 * of the IOVAs. */
uint64_t qemu_side_translate_run(const struct qemu_side *q, const uint64_t *gpas, size_t mask,
                                 size_t start, size_t count, uint64_t len);

#endif
