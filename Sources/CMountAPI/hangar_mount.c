#define _GNU_SOURCE
#include "hangar_mount.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/mount.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <unistd.h>

int hangar_mount_idmapped(const char *source, const char *userns, const char *target) {
    int tree = (int)syscall(SYS_open_tree, AT_FDCWD, source, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
    if (tree < 0) return errno;
    int ns = open(userns, O_RDONLY | O_CLOEXEC);
    if (ns < 0) {
        int error = errno;
        close(tree);
        return error;
    }
    struct mount_attr attr = {0};
    attr.attr_set = MOUNT_ATTR_IDMAP | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
    attr.userns_fd = (uint64_t)ns;
    int error = 0;
    if (syscall(SYS_mount_setattr, tree, "", AT_EMPTY_PATH, &attr, sizeof attr) != 0) {
        error = errno;
    } else if (syscall(SYS_move_mount, tree, "", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH) != 0) {
        error = errno;
    }
    close(ns);
    close(tree);
    return error;
}
