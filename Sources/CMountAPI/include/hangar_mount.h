// Linux's new mount API (open_tree, mount_setattr, move_mount), which glibc 2.36 does not wrap
// and Swift cannot call through the variadic syscall(2).
#ifndef HANGAR_MOUNT_H
#define HANGAR_MOUNT_H

/// Mounts a copy of the tree at `source` at `target` (an existing directory), with its ids mapped
/// through the user namespace at `userns` (e.g. `/proc/PID/ns/user`): a file owned by id N on disk
/// shows as the host id that namespace maps N to. Returns 0, or an errno value.
int hangar_mount_idmapped(const char *source, const char *userns, const char *target);

#endif
