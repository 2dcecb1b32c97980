/* Host path grants: the share the host serves by virtiofs, mounted at each granted path. */
#define _GNU_SOURCE
#include "agent.h"

#define SHARE "/run/hangar-share"
#define MANIFEST SHARE "/.hangar-grants"
#define MANIFEST_MAX (1u << 20)

/* Whether the kernel command line carries `hangar.share=` (the host attached a share). */
static int share_attached(void) {
    char line[4096];
    int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, line, sizeof line - 1);
    close(fd);
    if (n <= 0) return 0;
    line[n] = 0;
    for (char *at = strstr(line, "hangar.share="); at; at = strstr(at + 1, "hangar.share="))
        if (at == line || at[-1] == ' ') return 1;
    return 0;
}

/* Makes the directories above `path` (root's, mode 0755) and, unless it exists, `path` itself:
 * a directory, or an empty file to bind a file on. */
static void make_mount_point(const char *path, int directory) {
    char buffer[PATH_MAX];
    if (strlen(path) >= sizeof buffer) fail(KIND_ERROR, "guest: granted path too long: %.64s...", path);
    strcpy(buffer, path);
    for (char *slash = strchr(buffer + 1, '/'); slash; slash = strchr(slash + 1, '/')) {
        *slash = 0;
        if (mkdir(buffer, 0755) != 0 && errno != EEXIST)
            fail(KIND_ERROR, "guest: cannot make %s for a grant: %s", buffer, strerror(errno));
        *slash = '/';
    }
    struct stat status;
    if (lstat(path, &status) == 0) return;
    int made = directory ? mkdir(path, 0755) : open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (made < 0) fail(KIND_ERROR, "guest: cannot make the mount point %s: %s", path, strerror(errno));
    if (!directory) close(made);
}

/* One record of the manifest: `access` r (read-only), w (read-write) or n (denied), `kind` d or f. */
static void mount_grant(char access, char kind, const char *path) {
    if (path[0] != '/' || strstr(path, "/../") || strstr(path, "/./") ||
        (strlen(path) >= 3 && strcmp(path + strlen(path) - 3, "/..") == 0))
        fail(KIND_ERROR, "guest: the grant manifest names a bad path: %s", path);
    if ((access != 'r' && access != 'w' && access != 'n') || (kind != 'd' && kind != 'f'))
        fail(KIND_ERROR, "guest: the grant manifest has a bad record for %s", path);
    make_mount_point(path, kind == 'd');
    unsigned long flags = MS_NOSUID | MS_NODEV;
    int ok;
    if (access == 'n') {
        ok = kind == 'd' ? mount("tmpfs", path, "tmpfs", flags | MS_RDONLY, "size=4k,nr_inodes=16,mode=0755") == 0
                         : mount("/dev/null", path, NULL, MS_BIND, NULL) == 0 &&
                               mount(NULL, path, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | flags, NULL) == 0;
    } else {
        char source[PATH_MAX];
        if (snprintf(source, sizeof source, "%s%s", SHARE, path) >= (int)sizeof source)
            fail(KIND_ERROR, "guest: granted path too long: %.64s...", path);
        if (access == 'r') flags |= MS_RDONLY;
        ok = mount(source, path, NULL, MS_BIND, NULL) == 0 &&
             mount(NULL, path, NULL, MS_BIND | MS_REMOUNT | flags, NULL) == 0;
    }
    if (!ok) fail(KIND_ERROR, "guest: cannot mount the grant %s: %s", path, strerror(errno));
}

/*
 * When the host attached a share (`hangar.share=` on the kernel command line): loads virtiofs,
 * mounts the share (tag "hangar-grants") at /run/hangar-share, reads its manifest (the host's
 * GrantMounts.manifest: per mount, shallow first, its access r/w/n, its kind d/f and its path, each
 * record ended by a NUL byte), mounts each at its own path, and detaches the share, so the job sees
 * the granted paths only. The host's view enforces the same (read-only binds, denies hidden):
 * these mounts only repeat it. Any failure ends the job as an error: it never runs without its
 * grants.
 */
void mount_share(void) {
    static int done;
    if (done || !share_attached()) return;
    done = 1;
    load_modules("/etc/hangar/modules.share");
    mkdir("/run", 0755);
    if (mkdir(SHARE, 0700) != 0 && errno != EEXIST) fail(KIND_ERROR, "guest: cannot make %s: %s", SHARE, strerror(errno));
    if (mount("hangar-grants", SHARE, "virtiofs", MS_NOSUID | MS_NODEV, NULL) != 0)
        fail(KIND_ERROR, "guest: cannot mount the grants' share: %s", strerror(errno));
    int fd = open(MANIFEST, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) fail(KIND_ERROR, "guest: the grants' share has no manifest: %s", strerror(errno));
    char *manifest = malloc(MANIFEST_MAX + 1);
    if (!manifest) fail(KIND_ERROR, "guest: no memory for the grant manifest");
    size_t length = 0;
    for (;;) {
        ssize_t n = read(fd, manifest + length, MANIFEST_MAX - length);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) fail(KIND_ERROR, "guest: cannot read the grant manifest: %s", strerror(errno));
        if (n == 0) break;
        length += (size_t)n;
        if (length == MANIFEST_MAX) fail(KIND_ERROR, "guest: the grant manifest is over %u bytes", MANIFEST_MAX);
    }
    close(fd);
    if (length == 0 || manifest[length - 1] != 0) fail(KIND_ERROR, "guest: the grant manifest is empty or cut short");
    for (size_t at = 0; at < length;) {
        const char *record = manifest + at;
        size_t size = strlen(record);
        if (size < 3) fail(KIND_ERROR, "guest: the grant manifest has a short record");
        mount_grant(record[0], record[1], record + 2);
        at += size + 1;
    }
    free(manifest);
    if (umount2(SHARE, MNT_DETACH) != 0) fail(KIND_ERROR, "guest: cannot detach the grants' share: %s", strerror(errno));
    rmdir(SHARE);
}
