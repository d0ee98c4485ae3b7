/*
 * Executed-instruction counter for qemu-user (TCG plugin API v1, qemu 7.2; no glib needed).
 * Built by scripts/setup_icount.sh against qemu-plugin.h from Debian's qemu source package.
 *
 * Every translated block gets an exec callback carrying its instruction count, added (atomically,
 * all guest threads together) to one counter each time the block runs. The guest opens and closes
 * counting windows with a marker syscall nobody else uses (number MARKER, default 0x6d63):
 *   syscall(MARKER, 1)              open: remember the counter
 *   syscall(MARKER, 2, fd, tag)     close: write "<instructions since open>\n" to the guest's file
 *                                   descriptor fd (qemu-user shares fds with the host; fd < 0: none)
 *                                   and "window <tag> <instructions>\n" to out= if given
 * qemu answers the unknown syscall with -ENOSYS; the guest ignores it.
 *
 *   qemu-aarch64 -plugin libicount.so[,marker=N][,out=FILE] ...
 * out= also gets "total <instructions>\n" at exit (the whole run).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <qemu-plugin.h>

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

static uint64_t insns;        /* guest instructions executed so far, all vCPUs */
static uint64_t window_start; /* insns when the window opened */
static int64_t marker = 0x6d63;
static bool use_inline; /* inline=on: a non-atomic add per block (faster; one busy thread only) */
static FILE *out;

static void tb_exec(unsigned int vcpu_index, void *udata)
{
    __atomic_fetch_add(&insns, (uint64_t)(uintptr_t)udata, __ATOMIC_RELAXED);
}

static void tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    uintptr_t n = qemu_plugin_tb_n_insns(tb);
    if (use_inline) {
        qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &insns, n);
    } else {
        qemu_plugin_register_vcpu_tb_exec_cb(tb, tb_exec, QEMU_PLUGIN_CB_NO_REGS, (void *)n);
    }
}

static void on_syscall(qemu_plugin_id_t id, unsigned int vcpu_index, int64_t num, uint64_t a1,
                       uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6,
                       uint64_t a7, uint64_t a8)
{
    if (num != marker) {
        return;
    }
    uint64_t now = __atomic_load_n(&insns, __ATOMIC_RELAXED);
    if (a1 == 1) {
        window_start = now;
    } else if (a1 == 2) {
        uint64_t n = now - window_start;
        if ((int64_t)a2 >= 0) {
            dprintf((int)a2, "%" PRIu64 "\n", n);
        }
        if (out) {
            fprintf(out, "window %" PRId64 " %" PRIu64 "\n", (int64_t)a3, n);
            fflush(out);
        }
    }
}

static void at_exit(qemu_plugin_id_t id, void *p)
{
    if (out) {
        fprintf(out, "total %" PRIu64 "\n", __atomic_load_n(&insns, __ATOMIC_RELAXED));
        fclose(out);
    }
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info,
                                           int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "marker=", 7) == 0) {
            marker = strtoll(argv[i] + 7, NULL, 0);
        } else if (strncmp(argv[i], "inline=", 7) == 0) {
            if (!qemu_plugin_bool_parse("inline", argv[i] + 7, &use_inline)) {
                fprintf(stderr, "icount plugin: bad option %s\n", argv[i]);
                return -1;
            }
        } else if (strncmp(argv[i], "out=", 4) == 0) {
            out = fopen(argv[i] + 4, "a");
            if (!out) {
                perror(argv[i] + 4);
                return -1;
            }
        } else {
            fprintf(stderr, "icount plugin: unknown option %s\n", argv[i]);
            return -1;
        }
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, tb_trans);
    qemu_plugin_register_vcpu_syscall_cb(id, on_syscall);
    qemu_plugin_register_atexit_cb(id, at_exit, NULL);
    return 0;
}
