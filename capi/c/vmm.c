/* SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause */
/*
 * vmm.c: a VMM's use of libvdpa_iova, the way QEMU's vhost-vdpa memory
 * listener and migration notifier would use it.
 *
 *   vmm [--strategy identity|qemu] [--device /dev/vhost-vdpa-N [--readback]] [--quiet]
 *
 * The guest's memory is real memfd memory mapped MAP_SHARED. The life of the
 * VM: boot (RAM and ROM sections around a PCI hole, added in one listener
 * transaction), a guest reboot (device reset), a migration that starts
 * (shadow vrings prepared while the device runs), switches to shadow
 * virtqueues, sees a DIMM hot-plugged, and fails back; the DIMM is
 * unplugged; a second migration completes. Then the same device plays the
 * migration's destination: memory declared while waiting for the stream,
 * the guest started at switchover.
 *
 * Every op of every plan is first replayed on the library's kernel model,
 * which refuses anything the kernel would refuse. By default that is all;
 * with --device each op is then written to the device as a struct
 * vhost_msg_v2, one per write(2). After every step the program checks that
 * the planner's table and the model's are the same, and that translating
 * every guest page gives an IOVA the model maps to that page's host memory.
 *
 * With --readback (for a checker that owns the device's other end, such as
 * the rig's `vduse-readback --exec`), the first 16 bytes of every host page
 * hold a tag (the page's host address, then its complement), and after
 * every step the program prints the planner's table:
 *
 *   READBACK step <n> <event>
 *   ENTRY <asid> <iova> <size> <perm> <uaddr>      (hex, one per entry)
 *   END
 *
 * and waits for a line "go" on its standard input before the next step.
 *
 * Exit status: 0 when every step and check passed, 1 otherwise, 2 for a
 * usage error.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <linux/vhost.h>

#include "vdpa_iova.h"

/* The ABI as this program was written against it. */
_Static_assert(sizeof(struct vdpa_iova_op) == 32, "vdpa_iova_op size");
_Static_assert(offsetof(struct vdpa_iova_op, asid) == 0, "op.asid");
_Static_assert(offsetof(struct vdpa_iova_op, type) == 4, "op.type");
_Static_assert(offsetof(struct vdpa_iova_op, perm) == 5, "op.perm");
_Static_assert(offsetof(struct vdpa_iova_op, phase) == 6, "op.phase");
_Static_assert(offsetof(struct vdpa_iova_op, iova) == 8, "op.iova");
_Static_assert(offsetof(struct vdpa_iova_op, size) == 16, "op.size");
_Static_assert(offsetof(struct vdpa_iova_op, uaddr) == 24, "op.uaddr");
_Static_assert(sizeof(struct vdpa_iova_caps) == 40, "vdpa_iova_caps size");
_Static_assert(offsetof(struct vdpa_iova_caps, address_spaces) == 24, "caps.address_spaces");
_Static_assert(offsetof(struct vdpa_iova_caps, batching) == 32, "caps.batching");
_Static_assert(sizeof(struct vdpa_iova_options) == 24, "vdpa_iova_options size");
_Static_assert(offsetof(struct vdpa_iova_options, max_gpa) == 8, "options.max_gpa");
_Static_assert(sizeof(struct vdpa_iova_region) == 32, "vdpa_iova_region size");
_Static_assert(offsetof(struct vdpa_iova_region, readonly) == 24, "region.readonly");
_Static_assert(sizeof(struct vdpa_iova_svq_config) == 16, "vdpa_iova_svq_config size");
_Static_assert(sizeof(struct vdpa_iova_segment) == 24, "vdpa_iova_segment size");
_Static_assert(sizeof(struct vdpa_iova_entry) == 32, "vdpa_iova_entry size");
_Static_assert(sizeof(struct vdpa_iova_cost) == 56, "vdpa_iova_cost size");
_Static_assert(sizeof(struct vdpa_iova_host_buffer) == 24, "vdpa_iova_host_buffer size");

/* The op fields are the kernel's values, copied into the message as they are. */
_Static_assert(VDPA_IOVA_OP_UPDATE == VHOST_IOTLB_UPDATE, "update");
_Static_assert(VDPA_IOVA_OP_INVALIDATE == VHOST_IOTLB_INVALIDATE, "invalidate");
_Static_assert(VDPA_IOVA_OP_BATCH_BEGIN == VHOST_IOTLB_BATCH_BEGIN, "batch begin");
_Static_assert(VDPA_IOVA_OP_BATCH_END == VHOST_IOTLB_BATCH_END, "batch end");
_Static_assert(VDPA_IOVA_PERM_RO == VHOST_ACCESS_RO, "ro");
_Static_assert(VDPA_IOVA_PERM_WO == VHOST_ACCESS_WO, "wo");
_Static_assert(VDPA_IOVA_PERM_RW == VHOST_ACCESS_RW, "rw");
_Static_assert(sizeof(struct vhost_msg_v2) == 72, "vhost_msg_v2");

#define MIB (1ULL << 20)
#define GIB (1ULL << 30)
#define MAX_REGIONS 16

struct region {
    uint64_t gpa, size, hva;
    bool readonly;
    const char *name;
};

struct vm {
    struct vdpa_iova_planner *planner;
    struct vdpa_iova_model *model; /* every op is checked on it first */
    int fd;                        /* the device, or -1: the model alone */
    bool identity;
    bool quiet;
    bool readback; /* tag pages, print the table and wait after each step */
    const char *event; /* the last plan's event */
    uint64_t page;

    /* Host memory: one memfd, handed out by a bump allocator. */
    int memfd;
    uint8_t *mem;
    uint64_t mem_size, mem_used;

    /* Guest memory as the listener sees it. */
    struct region regions[MAX_REGIONS];
    size_t nregions;

    /* The open listener transaction. */
    struct region pending_add[MAX_REGIONS];
    size_t n_add;
    uint64_t pending_del[MAX_REGIONS];
    size_t n_del;

    /* The control virtqueue's command and status buffers. */
    struct vdpa_iova_host_buffer cvq[2];

    unsigned step;
};

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void die(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    fputs("vmm: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

/* Dies on a negative errno, with the library's message. */
static void check(int rc, const char *what)
{
    if (rc < 0) {
        die("%s failed: %s: %s", what, strerror(-rc), vdpa_iova_last_error());
    }
}

static uint64_t host_alloc(struct vm *vm, uint64_t size)
{
    uint64_t hva = (uint64_t)(uintptr_t)(vm->mem + vm->mem_used);

    if (size % vm->page || vm->mem_used + size > vm->mem_size) {
        die("host memory: %" PRIu64 " bytes do not fit", size);
    }
    vm->mem_used += size;
    if (vm->readback) {
        uint64_t off;

        /* Each page's tag: its host address, then the complement. */
        for (off = 0; off < size; off += vm->page) {
            uint64_t tag[2] = { hva + off, ~(hva + off) };

            memcpy(vm->mem + (vm->mem_used - size) + off, tag, sizeof(tag));
        }
    }
    return hva;
}

/* ---- writing plans ---------------------------------------------------- */

static void write_op(struct vm *vm, const struct vdpa_iova_op *op)
{
    struct vhost_msg_v2 msg;
    ssize_t w;

    memset(&msg, 0, sizeof(msg));
    msg.type = VHOST_IOTLB_MSG_V2;
    msg.asid = op->asid;
    msg.iotlb.type = op->type;
    msg.iotlb.perm = op->perm;
    msg.iotlb.iova = op->iova;
    msg.iotlb.size = op->size;
    msg.iotlb.uaddr = op->uaddr;
    w = write(vm->fd, &msg, sizeof(msg));
    if (w != (ssize_t)sizeof(msg)) {
        die("write of IOTLB message type %u iova 0x%" PRIx64 " size 0x%" PRIx64 ": %s",
            op->type, op->iova, op->size, w < 0 ? strerror(errno) : "short write");
    }
}

/*
 * Writes a plan's ops in order. A VMM writes the prepare ops before the
 * event takes effect (before stopping the device, announcing hot-plugged
 * memory or freeing unplugged memory), the critical ops while the device is
 * stopped and the background ops once it runs again; here the device's
 * stop and start are the caller's business, so they go out in plan order.
 */
static void apply_plan(struct vm *vm, struct vdpa_iova_plan *plan, const char *event)
{
    const struct vdpa_iova_op *ops;
    struct vdpa_iova_cost cost;
    size_t n, i, phase[3] = { 0, 0, 0 };

    vm->event = event;

    ops = vdpa_iova_plan_ops(plan, &n);
    if (!ops) {
        die("vdpa_iova_plan_ops: %s", vdpa_iova_last_error());
    }
    check(vdpa_iova_plan_cost(plan, &cost), "vdpa_iova_plan_cost");
    for (i = 0; i < n; i++) {
        int rc = vdpa_iova_model_apply_op(vm->model, &ops[i]);

        if (rc < 0) {
            die("step %u (%s): op %zu of %zu refused by the kernel model: %s", vm->step, event,
                i, n, vdpa_iova_last_error());
        }
        if (ops[i].phase > VDPA_IOVA_PHASE_BACKGROUND) {
            die("op %zu has phase %u", i, ops[i].phase);
        }
        phase[ops[i].phase]++;
        if (vm->fd >= 0) {
            write_op(vm, &ops[i]);
        }
    }
    if (cost.messages != n) {
        die("step %u (%s): cost counts %" PRIu64 " messages, the plan has %zu", vm->step, event,
            cost.messages, n);
    }
    if (!vm->quiet) {
        printf("step %u %-13s %3zu ops (%zu prepare, %zu critical, %zu background), "
               "pinned %" PRIu64 " KiB (%" PRIu64 " KiB while stopped)\n",
               vm->step, event, n, phase[0], phase[1], phase[2], cost.pinned_bytes >> 10,
               cost.critical_pinned_bytes >> 10);
    }
    vdpa_iova_plan_free(plan);
}

/* ---- checks ----------------------------------------------------------- */

static void check_tables(struct vm *vm)
{
    static struct vdpa_iova_entry planned[4096], model[4096];
    size_t np, nm = 0, asid, i;

    check(vdpa_iova_mapped(vm->planner, planned, 4096, &np), "vdpa_iova_mapped");
    for (asid = 0; asid < 2; asid++) {
        size_t k;
        int rc = vdpa_iova_model_entries(vm->model, (uint32_t)asid, model + nm, 4096 - nm, &k);

        check(rc, "vdpa_iova_model_entries");
        nm += k;
    }
    if (np != nm) {
        die("step %u: the planner maps %zu entries, the model holds %zu", vm->step, np, nm);
    }
    for (i = 0; i < np; i++) {
        if (memcmp(&planned[i], &model[i], sizeof(planned[i])) != 0) {
            die("step %u: entry %zu: planner [asid %u iova 0x%" PRIx64 " size 0x%" PRIx64
                "], model [asid %u iova 0x%" PRIx64 " size 0x%" PRIx64 "]",
                vm->step, i, planned[i].asid, planned[i].iova, planned[i].size, model[i].asid,
                model[i].iova, model[i].size);
        }
    }
}

/* Every guest page translates to an IOVA the model maps to that page's memory. */
static void check_translations(struct vm *vm, bool identity)
{
    struct vdpa_iova_segment segs[8];
    size_t r, n, n0;
    uint64_t off, total;
    int rc;

    for (r = 0; r < vm->nregions; r++) {
        const struct region *reg = &vm->regions[r];
        uint8_t want_perm = reg->readonly ? VDPA_IOVA_PERM_RO : VDPA_IOVA_PERM_RW;

        for (off = 0; off < reg->size; off += vm->page) {
            struct vdpa_iova_entry e;
            uint64_t gpa = reg->gpa + off;

            check(vdpa_iova_translate(vm->planner, gpa, vm->page, segs, 8, &n),
                  "vdpa_iova_translate");
            if (n != 1 || segs[0].len != vm->page || segs[0].perm != want_perm) {
                die("step %u: gpa 0x%" PRIx64 " (%s): %zu segments, len 0x%" PRIx64
                    ", perm %u (want 1 segment of a page, perm %u)",
                    vm->step, gpa, reg->name, n, segs[0].len, segs[0].perm, want_perm);
            }
            if (identity && segs[0].iova != gpa) {
                die("step %u: gpa 0x%" PRIx64 " translates to iova 0x%" PRIx64
                    ", not to itself", vm->step, gpa, segs[0].iova);
            }
            rc = vdpa_iova_model_lookup(vm->model, 0, segs[0].iova, &e);
            if (rc < 0) {
                die("step %u: gpa 0x%" PRIx64 " translates to iova 0x%" PRIx64
                    ", which the device does not map: %s",
                    vm->step, gpa, segs[0].iova, vdpa_iova_last_error());
            }
            if (e.uaddr + (segs[0].iova - e.iova) != reg->hva + off || e.perm != want_perm) {
                die("step %u: gpa 0x%" PRIx64 " -> iova 0x%" PRIx64 " -> host 0x%" PRIx64
                    " perm %u, want host 0x%" PRIx64 " perm %u",
                    vm->step, gpa, segs[0].iova, e.uaddr + (segs[0].iova - e.iova), e.perm,
                    reg->hva + off, want_perm);
            }
        }

        /* The whole region at once: segments adding up to it. */
        check(vdpa_iova_translate(vm->planner, reg->gpa, reg->size, segs, 8, &n),
              "vdpa_iova_translate (region)");
        for (total = 0, off = 0; off < n; off++) {
            total += segs[off].len;
        }
        if (n == 0 || total != reg->size) {
            die("step %u: region %s translates to %zu segments of 0x%" PRIx64 " bytes",
                vm->step, reg->name, n, total);
        }
        /* Asking with no room gives the count needed. */
        rc = vdpa_iova_translate(vm->planner, reg->gpa, reg->size, NULL, 0, &n0);
        if (rc != -ENOBUFS || n0 != n) {
            die("step %u: translate with no room: rc %d, n %zu (want -ENOBUFS, %zu)", vm->step,
                rc, n0, n);
        }
    }

    /* The PCI hole is not guest memory. */
    rc = vdpa_iova_translate(vm->planner, 0xe0000000ULL, 64, segs, 8, &n);
    if (rc != -ENOENT || n != 0) {
        die("step %u: translate in the PCI hole: rc %d (want -ENOENT)", vm->step, rc);
    }
}

/*
 * With shadow vrings mapped, the CVQ buffers are mapped too, each in one
 * entry: from the prepare on with the identity strategy, from the switch
 * on with QEMU's.
 */
static void check_buffers(struct vm *vm, int mode)
{
    struct vdpa_iova_entry e[4], m;
    size_t n, i, j;
    bool mapped = mode == VDPA_IOVA_MODE_SVQ || (mode == VDPA_IOVA_MODE_PREPARED && vm->identity);
    size_t want = mapped ? 2 : 0;

    check(vdpa_iova_buffer_entries(vm->planner, e, 4, &n), "vdpa_iova_buffer_entries");
    if (n != want) {
        die("step %u: %zu host buffer entries, want %zu", vm->step, n, want);
    }
    for (i = 0; i < n; i++) {
        for (j = 0; j < 2 && vm->cvq[j].hva != e[i].uaddr; j++) {
        }
        if (j == 2 || e[i].size != vm->cvq[j].size || e[i].perm != vm->cvq[j].perm) {
            die("step %u: host buffer entry at uaddr 0x%" PRIx64 " is not a CVQ buffer", vm->step,
                e[i].uaddr);
        }
        check(vdpa_iova_model_lookup(vm->model, e[i].asid, e[i].iova, &m),
              "vdpa_iova_model_lookup (host buffer)");
        if (m.uaddr + (e[i].iova - m.iova) != e[i].uaddr) {
            die("step %u: the device does not map the CVQ buffer at iova 0x%" PRIx64, vm->step,
                e[i].iova);
        }
    }
}

/* Hands the planner's table to the read-back checker and waits for it. */
static void sync_readback(struct vm *vm)
{
    static struct vdpa_iova_entry e[4096];
    char line[16];
    size_t n, i;

    check(vdpa_iova_mapped(vm->planner, e, 4096, &n), "vdpa_iova_mapped");
    printf("READBACK step %u %s\n", vm->step, vm->event ? vm->event : "none");
    for (i = 0; i < n; i++) {
        printf("ENTRY %x %" PRIx64 " %" PRIx64 " %x %" PRIx64 "\n", e[i].asid, e[i].iova,
               e[i].size, e[i].perm, e[i].uaddr);
    }
    printf("END\n");
    fflush(stdout);
    if (!fgets(line, sizeof(line), stdin) || strcmp(line, "go\n") != 0) {
        die("step %u: the read-back checker did not say go", vm->step);
    }
}

static void check_step(struct vm *vm, int want_mode)
{
    int mode = vdpa_iova_mode(vm->planner);

    check(mode, "vdpa_iova_mode");
    if (mode != want_mode) {
        die("step %u: mode %d, want %d", vm->step, mode, want_mode);
    }
    check_tables(vm);
    check_buffers(vm, mode);
    /* Completed: nothing is mapped; incoming: the guest does not run yet. */
    if (mode != VDPA_IOVA_MODE_COMPLETED && mode != VDPA_IOVA_MODE_INCOMING) {
        /* In passthrough the device sees guest-physical addresses. */
        check_translations(vm, mode != VDPA_IOVA_MODE_SVQ);
    }
    if (vm->readback) {
        sync_readback(vm);
    }
    vm->step++;
}

/* ---- the memory listener ---------------------------------------------- */

static void listener_begin(struct vm *vm)
{
    vm->n_add = 0;
    vm->n_del = 0;
}

static void listener_region_add(struct vm *vm, const char *name, uint64_t gpa, uint64_t size,
                                uint64_t hva, bool readonly)
{
    if (vm->n_add == MAX_REGIONS) {
        die("too many sections in one transaction");
    }
    vm->pending_add[vm->n_add++] = (struct region){ gpa, size, hva, readonly, name };
}

static void listener_region_del(struct vm *vm, uint64_t gpa)
{
    if (vm->n_del == MAX_REGIONS) {
        die("too many sections in one transaction");
    }
    vm->pending_del[vm->n_del++] = gpa;
}

/* The transaction's removals, then its additions as one event. */
static void listener_commit(struct vm *vm, const char *event)
{
    struct vdpa_iova_region add[MAX_REGIONS];
    struct vdpa_iova_plan *plan;
    size_t i, j;

    for (i = 0; i < vm->n_del; i++) {
        check(vdpa_iova_remove_region(vm->planner, vm->pending_del[i], &plan),
              "vdpa_iova_remove_region");
        apply_plan(vm, plan, "unplug");
        for (j = 0; j < vm->nregions; j++) {
            if (vm->regions[j].gpa == vm->pending_del[i]) {
                vm->regions[j] = vm->regions[--vm->nregions];
                break;
            }
        }
    }
    if (vm->n_add == 0) {
        return;
    }
    memset(add, 0, sizeof(add));
    for (i = 0; i < vm->n_add; i++) {
        add[i].gpa = vm->pending_add[i].gpa;
        add[i].size = vm->pending_add[i].size;
        add[i].hva = vm->pending_add[i].hva;
        add[i].readonly = vm->pending_add[i].readonly;
    }
    check(vdpa_iova_add_regions(vm->planner, add, vm->n_add, &plan), "vdpa_iova_add_regions");
    apply_plan(vm, plan, event);
    for (i = 0; i < vm->n_add; i++) {
        if (vm->nregions == MAX_REGIONS) {
            die("too many regions");
        }
        vm->regions[vm->nregions++] = vm->pending_add[i];
    }
}

/* ---- the device ------------------------------------------------------- */

static void device_open(struct vm *vm, const char *path, struct vdpa_iova_caps *caps)
{
    struct vhost_vdpa_iova_range range;
    uint64_t offered, ack;

    vm->fd = open(path, O_RDWR | O_CLOEXEC);
    if (vm->fd < 0) {
        die("open %s: %s", path, strerror(errno));
    }
    if (ioctl(vm->fd, VHOST_SET_OWNER) < 0) {
        die("VHOST_SET_OWNER: %s", strerror(errno));
    }
    if (ioctl(vm->fd, VHOST_GET_BACKEND_FEATURES, &offered) < 0) {
        die("VHOST_GET_BACKEND_FEATURES: %s", strerror(errno));
    }
    if (!(offered & (1ULL << VHOST_BACKEND_F_IOTLB_MSG_V2))) {
        die("%s does not offer VHOST_BACKEND_F_IOTLB_MSG_V2", path);
    }
    ack = offered & ((1ULL << VHOST_BACKEND_F_IOTLB_MSG_V2) |
                     (1ULL << VHOST_BACKEND_F_IOTLB_BATCH));
    if (ioctl(vm->fd, VHOST_SET_BACKEND_FEATURES, &ack) < 0) {
        die("VHOST_SET_BACKEND_FEATURES 0x%" PRIx64 ": %s", ack, strerror(errno));
    }
    if (ioctl(vm->fd, VHOST_VDPA_GET_IOVA_RANGE, &range) < 0) {
        die("VHOST_VDPA_GET_IOVA_RANGE: %s", strerror(errno));
    }
    caps->range_first = range.first;
    caps->range_last = range.last;
    caps->batching = (ack >> VHOST_BACKEND_F_IOTLB_BATCH) & 1;
    /* Only address space 0 is used; PERSIST is not acked. */
    caps->address_spaces = 1;
    caps->persist = 0;
    /* Not visible through the uAPI: assume the common case (mlx5, vdpa_sim). */
    caps->pinning = 1;
    caps->map_style = VDPA_IOVA_MAP_STYLE_SET_MAP;
    printf("device %s: backend features offered 0x%" PRIx64 ", acked 0x%" PRIx64
           ", IOVA range [0x%" PRIx64 ", 0x%" PRIx64 "]\n",
           path, offered, ack, (uint64_t)range.first, (uint64_t)range.last);
}

static void device_reset(struct vm *vm)
{
    uint8_t status = 0;

    if (vm->fd >= 0 && ioctl(vm->fd, VHOST_VDPA_SET_STATUS, &status) < 0) {
        die("VHOST_VDPA_SET_STATUS 0: %s", strerror(errno));
    }
    check(vdpa_iova_model_reset_device(vm->model), "vdpa_iova_model_reset_device");
}

/* ---- the life of the VM ----------------------------------------------- */

static void migrate(struct vm *vm, const struct vdpa_iova_svq_config *svq, bool hotplug_dimm)
{
    struct vdpa_iova_plan *plan;
    struct vdpa_iova_cost cost;

    /* Migration starts (the notifier's precopy setup): rings mapped while the device runs. */
    check(vdpa_iova_svq_prepare(vm->planner, svq, &plan), "vdpa_iova_svq_prepare");
    apply_plan(vm, plan, "svq_prepare");
    check_step(vm, VDPA_IOVA_MODE_PREPARED);

    /* The device is stopped and restarted on the shadow virtqueues. */
    check(vdpa_iova_svq_switch(vm->planner, NULL, &plan), "vdpa_iova_svq_switch");
    check(vdpa_iova_plan_cost(plan, &cost), "vdpa_iova_plan_cost");
    if (vm->identity && cost.critical_messages != 0) {
        die("the identity strategy's switch has %" PRIu64 " messages while stopped",
            cost.critical_messages);
    }
    apply_plan(vm, plan, "svq_switch");
    check_step(vm, VDPA_IOVA_MODE_SVQ);

    if (hotplug_dimm) {
        listener_begin(vm);
        listener_region_add(vm, "dimm0", 4 * GIB + 512 * MIB, 128 * MIB,
                            host_alloc(vm, 128 * MIB), false);
        listener_commit(vm, "hotplug");
        check_step(vm, VDPA_IOVA_MODE_SVQ);
    }
}

static void destination(struct vm *vm, const struct vdpa_iova_caps *caps,
                        const struct vdpa_iova_options *opts)
{
    struct vdpa_iova_region regions[MAX_REGIONS];
    struct vdpa_iova_plan *plan;
    struct vdpa_iova_cost cost;
    size_t i;

    vdpa_iova_planner_free(vm->planner);
    check(vdpa_iova_planner_new(caps, opts, &vm->planner), "vdpa_iova_planner_new (destination)");
    memset(regions, 0, sizeof(regions));
    for (i = 0; i < vm->nregions; i++) {
        regions[i].gpa = vm->regions[i].gpa;
        regions[i].size = vm->regions[i].size;
        regions[i].hva = vm->regions[i].hva;
        regions[i].readonly = vm->regions[i].readonly;
    }
    check(vdpa_iova_incoming(vm->planner, regions, vm->nregions, &plan), "vdpa_iova_incoming");
    apply_plan(vm, plan, "incoming");
    check_step(vm, VDPA_IOVA_MODE_INCOMING);

    check(vdpa_iova_start(vm->planner, &plan), "vdpa_iova_start");
    check(vdpa_iova_plan_cost(plan, &cost), "vdpa_iova_plan_cost");
    if (vm->identity && cost.critical_messages != 0) {
        die("the identity strategy's start has %" PRIu64 " messages while stopped",
            cost.critical_messages);
    }
    apply_plan(vm, plan, "start");
    check_step(vm, VDPA_IOVA_MODE_PASSTHROUGH);
}

static void usage(void)
{
    fprintf(stderr, "usage: vmm [--strategy identity|qemu] [--device /dev/vhost-vdpa-N "
                    "[--readback]] [--quiet]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    struct vm vm;
    struct vdpa_iova_caps caps;
    struct vdpa_iova_options opts;
    struct vdpa_iova_svq_config svq;
    struct vdpa_iova_plan *plan;
    const char *device = NULL;
    uint64_t ram, svq_bytes;
    size_t before, after;
    int i, rc;

    memset(&vm, 0, sizeof(vm));
    vm.fd = -1;
    vm.identity = true;
    for (i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--device") && i + 1 < argc) {
            device = argv[++i];
        } else if (!strcmp(argv[i], "--strategy") && i + 1 < argc) {
            i++;
            if (!strcmp(argv[i], "qemu")) {
                vm.identity = false;
            } else if (strcmp(argv[i], "identity")) {
                usage();
            }
        } else if (!strcmp(argv[i], "--quiet")) {
            vm.quiet = true;
        } else if (!strcmp(argv[i], "--readback")) {
            vm.readback = true;
        } else {
            usage();
        }
    }
    if (vm.readback && !device) {
        usage();
    }
    printf("libvdpa_iova %s, %s strategy, %s\n", vdpa_iova_version(),
           vm.identity ? "identity" : "qemu", device ? device : "kernel model only");

    vm.page = (uint64_t)sysconf(_SC_PAGESIZE);
    check(vdpa_iova_caps_default(&caps), "vdpa_iova_caps_default");
    caps.page_size = vm.page;
    caps.range_last = (1ULL << 48) - 1; /* a 48-bit IOMMU's range */
    if (device) {
        device_open(&vm, device, &caps);
    }

    /* Guest and vring memory: shared, file-backed, as use_va devices require. */
    vm.mem_size = 1 * GIB;
    vm.memfd = memfd_create("vmm-guest-ram", MFD_CLOEXEC);
    if (vm.memfd < 0 || ftruncate(vm.memfd, (off_t)vm.mem_size) < 0) {
        die("memfd: %s", strerror(errno));
    }
    vm.mem = mmap(NULL, vm.mem_size, PROT_READ | PROT_WRITE, MAP_SHARED, vm.memfd, 0);
    if (vm.mem == MAP_FAILED) {
        die("mmap: %s", strerror(errno));
    }

    check(vdpa_iova_options_default(&opts), "vdpa_iova_options_default");
    opts.strategy = vm.identity ? VDPA_IOVA_STRATEGY_IDENTITY : VDPA_IOVA_STRATEGY_QEMU;
    opts.max_gpa = 8 * GIB; /* maxmem: the end of the hot-plug area */
    check(vdpa_iova_planner_new(&caps, &opts, &vm.planner), "vdpa_iova_planner_new");
    check(vdpa_iova_model_new(&caps, &vm.model), "vdpa_iova_model_new");

    /* Boot: the machine's RAM and ROM sections, in one transaction. */
    ram = host_alloc(&vm, 512 * MIB);
    listener_begin(&vm);
    listener_region_add(&vm, "pc.ram@0", 0, 0xa0000, ram, false);
    listener_region_add(&vm, "pc.rom", 0xc0000, 0x20000, host_alloc(&vm, 0x20000), true);
    listener_region_add(&vm, "isa-bios", 0xe0000, 0x20000, host_alloc(&vm, 0x20000), true);
    listener_region_add(&vm, "pc.ram@1M", 0x100000, 512 * MIB - 0x100000, ram + 0x100000, false);
    listener_region_add(&vm, "pc.bios", 4 * GIB - 0x40000, 0x40000, host_alloc(&vm, 0x40000),
                        true);
    listener_region_add(&vm, "pc.ram@4G", 4 * GIB, 256 * MIB, host_alloc(&vm, 256 * MIB), false);
    listener_commit(&vm, "boot");
    check_step(&vm, VDPA_IOVA_MODE_PASSTHROUGH);

    /* An event out of order is refused and changes nothing. */
    rc = vdpa_iova_mapped(vm.planner, NULL, 0, &before);
    if (rc != -ENOBUFS || before == 0) {
        die("vdpa_iova_mapped with no room: rc %d, n %zu (want -ENOBUFS)", rc, before);
    }
    rc = vdpa_iova_failback(vm.planner, &plan);
    if (rc != -EPROTO || plan != NULL || !*vdpa_iova_last_error()) {
        die("failback in passthrough: rc %d (want -EPROTO and a message)", rc);
    }
    if (!vm.quiet) {
        printf("refused as expected: %s\n", vdpa_iova_last_error());
    }
    vdpa_iova_mapped(vm.planner, NULL, 0, &after);
    if (after != before) {
        die("a refused event changed the table: %zu entries, then %zu", before, after);
    }

    /* The guest reboots: the device is reset; the plan restores what it forgot. */
    device_reset(&vm);
    check(vdpa_iova_reset(vm.planner, &plan), "vdpa_iova_reset");
    apply_plan(&vm, plan, "reset");
    check_step(&vm, VDPA_IOVA_MODE_PASSTHROUGH);

    /* The CVQ's buffers (one page each), mapped with the shadow vrings. */
    vm.cvq[0].hva = host_alloc(&vm, vm.page);
    vm.cvq[0].size = vm.page;
    vm.cvq[0].perm = VDPA_IOVA_PERM_RO;
    vm.cvq[1].hva = host_alloc(&vm, vm.page);
    vm.cvq[1].size = vm.page;
    vm.cvq[1].perm = VDPA_IOVA_PERM_RW;
    check(vdpa_iova_host_buffers(vm.planner, vm.cvq, 2, &plan), "vdpa_iova_host_buffers");
    apply_plan(&vm, plan, "host_buffers");
    check_step(&vm, VDPA_IOVA_MODE_PASSTHROUGH);

    /* 8 queue pairs and the control queue, 256 descriptors each. */
    memset(&svq, 0, sizeof(svq));
    svq.queues = 17;
    svq.queue_size = 256;
    check(vdpa_iova_svq_size(&svq, vm.page, &svq_bytes), "vdpa_iova_svq_size");
    svq.hva = host_alloc(&vm, svq_bytes);

    /* A migration that fails after a DIMM was hot-plugged. */
    migrate(&vm, &svq, true);
    check(vdpa_iova_failback(vm.planner, &plan), "vdpa_iova_failback");
    apply_plan(&vm, plan, "failback");
    check_step(&vm, VDPA_IOVA_MODE_PASSTHROUGH);

    /* The DIMM is unplugged. */
    listener_begin(&vm);
    listener_region_del(&vm, 4 * GIB + 512 * MIB);
    listener_commit(&vm, "unplug");
    check_step(&vm, VDPA_IOVA_MODE_PASSTHROUGH);

    /* A second migration that completes: the source unmaps everything. */
    migrate(&vm, &svq, false);
    check(vdpa_iova_complete(vm.planner, &plan), "vdpa_iova_complete");
    apply_plan(&vm, plan, "complete");
    check_step(&vm, VDPA_IOVA_MODE_COMPLETED);
    vdpa_iova_mapped(vm.planner, NULL, 0, &after);
    if (after != 0) {
        die("%zu entries still mapped after completion", after);
    }

    /*
     * The same device as a migration's destination, the source's maps gone:
     * guest memory is declared when the destination starts listening, and
     * the guest starts at switchover.
     */
    destination(&vm, &caps, &opts);

    vdpa_iova_planner_free(vm.planner);
    vdpa_iova_model_free(vm.model);
    munmap(vm.mem, vm.mem_size);
    close(vm.memfd);
    if (vm.fd >= 0) {
        close(vm.fd);
    }
    printf("ok: %u steps, every op accepted, every guest page translated to its own memory\n",
           vm.step);
    return 0;
}
