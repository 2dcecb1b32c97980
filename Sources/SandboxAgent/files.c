/*
 * File operations, run by the agent itself inside the sandbox's mount namespace: the sandbox's root
 * is the namespace's root, so every path, symlinks included, resolves inside the sandbox and never
 * onto the host's files. Paths are still checked: no NUL (frame.c), at most AGENT_MAX_PATH bytes, no
 * ".." component; relative paths are taken from the user's home.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"

#define HOME "/home/user"
/* ListDir stops at this many entries or this many bytes of names and paths (frames are bounded). */
#define MAX_ENTRIES 10000
#define MAX_LISTING_BYTES (3u * 1024 * 1024)
#define MAX_DEPTH 16

int agent_normalise_path(uint64_t id, const char *path, char *out) {
    size_t length = strlen(path);
    if (length == 0) {
        agent_send_error(id, HANGAR__V1__AGENT_ERROR__CODE__INVALID, "the path is empty");
        return -1;
    }
    if (length > AGENT_MAX_PATH) {
        agent_send_error(id, HANGAR__V1__AGENT_ERROR__CODE__INVALID, "the path is %zu bytes, more than %d", length,
                         AGENT_MAX_PATH);
        return -1;
    }
    char joined[AGENT_MAX_PATH + sizeof HOME + 2];
    snprintf(joined, sizeof joined, "%s%s", path[0] == '/' ? "" : HOME "/", path);
    size_t used = 0;
    out[0] = 0;
    char *save = NULL;
    for (char *part = strtok_r(joined, "/", &save); part; part = strtok_r(NULL, "/", &save)) {
        if (strcmp(part, ".") == 0) continue;
        if (strcmp(part, "..") == 0) {
            agent_send_error(id, HANGAR__V1__AGENT_ERROR__CODE__INVALID, "the path \"%s\" contains \"..\"", path);
            return -1;
        }
        size_t size = strlen(part);
        if (used + 1 + size > AGENT_MAX_PATH) {
            agent_send_error(id, HANGAR__V1__AGENT_ERROR__CODE__INVALID, "the path is too long");
            return -1;
        }
        out[used++] = '/';
        memcpy(out + used, part, size);
        used += size;
        out[used] = 0;
    }
    if (used == 0) strcpy(out, "/");
    return 0;
}

static Hangar__V1__AgentFileType file_type(mode_t mode) {
    if (S_ISREG(mode)) return HANGAR__V1__AGENT_FILE_TYPE__AGENT_FILE_TYPE_FILE;
    if (S_ISDIR(mode)) return HANGAR__V1__AGENT_FILE_TYPE__AGENT_FILE_TYPE_DIRECTORY;
    if (S_ISLNK(mode)) return HANGAR__V1__AGENT_FILE_TYPE__AGENT_FILE_TYPE_SYMLINK;
    return HANGAR__V1__AGENT_FILE_TYPE__AGENT_FILE_TYPE_OTHER;
}

/* Fills `entry` from lstat of `path` (strings are malloc'd; free with free_entry). */
static int describe(const char *path, const char *name, Hangar__V1__AgentEntry *entry) {
    struct stat status;
    if (lstat(path, &status) != 0) return -1;
    hangar__v1__agent_entry__init(entry);
    entry->name = strdup(name);
    entry->path = strdup(path);
    entry->type = file_type(status.st_mode);
    entry->size = (uint64_t)status.st_size;
    entry->mode = status.st_mode & 07777;
    entry->mtime_ms = (int64_t)status.st_mtim.tv_sec * 1000 + status.st_mtim.tv_nsec / 1000000;
    if (S_ISLNK(status.st_mode)) {
        char target[AGENT_MAX_PATH + 1];
        ssize_t size = readlink(path, target, AGENT_MAX_PATH);
        target[size < 0 ? 0 : size] = 0;
        entry->symlink_target = strdup(target);
    } else {
        entry->symlink_target = strdup("");
    }
    if (!entry->name || !entry->path || !entry->symlink_target) return -1;
    return 0;
}

static void free_entry(Hangar__V1__AgentEntry *entry) {
    free(entry->name);
    free(entry->path);
    free(entry->symlink_target);
}

static const char *base_name(const char *path) {
    const char *slash = strrchr(path, '/');
    return slash && slash[1] ? slash + 1 : path;
}

typedef struct {
    Hangar__V1__AgentEntry *items;
    size_t count;
    size_t bytes;
    int overflow;
} Listing;

static void list_into(Listing *listing, const char *directory, unsigned depth) {
    DIR *dir = opendir(directory);
    if (!dir) return;
    struct dirent *item;
    while ((item = readdir(dir))) {
        if (strcmp(item->d_name, ".") == 0 || strcmp(item->d_name, "..") == 0) continue;
        if (listing->count >= MAX_ENTRIES || listing->bytes > MAX_LISTING_BYTES) {
            listing->overflow = 1;
            break;
        }
        char path[AGENT_MAX_PATH + 1];
        int size = snprintf(path, sizeof path, "%s/%s", strcmp(directory, "/") == 0 ? "" : directory, item->d_name);
        if (size < 0 || size > AGENT_MAX_PATH) continue;
        Hangar__V1__AgentEntry *entry = &listing->items[listing->count];
        if (describe(path, item->d_name, entry) != 0) {
            free_entry(entry);
            continue;
        }
        listing->count++;
        listing->bytes += 2 * (size_t)size + 64;
        if (depth > 1 && entry->type == HANGAR__V1__AGENT_FILE_TYPE__AGENT_FILE_TYPE_DIRECTORY)
            list_into(listing, path, depth - 1);
    }
    closedir(dir);
}

static void list_dir(uint64_t id, const char *path, unsigned depth) {
    struct stat status;
    if (stat(path, &status) != 0) return agent_send_errno(id, errno, "list", path);
    if (!S_ISDIR(status.st_mode))
        return agent_send_error(id, HANGAR__V1__AGENT_ERROR__CODE__NOT_A_DIRECTORY, "%s is not a directory", path);
    Listing listing = {.items = calloc(MAX_ENTRIES, sizeof(Hangar__V1__AgentEntry))};
    if (!listing.items) return agent_send_error(id, HANGAR__V1__AGENT_ERROR__CODE__INTERNAL, "out of memory");
    list_into(&listing, path, depth == 0 ? 1 : depth > MAX_DEPTH ? MAX_DEPTH : depth);
    if (listing.overflow) {
        agent_send_error(id, HANGAR__V1__AGENT_ERROR__CODE__TOO_LARGE,
                         "%s holds more than %d entries (or %u bytes of names) at depth %u", path, MAX_ENTRIES,
                         MAX_LISTING_BYTES, depth);
    } else {
        Hangar__V1__AgentEntry **pointers = calloc(listing.count + 1, sizeof *pointers);
        for (size_t index = 0; pointers && index < listing.count; index++) pointers[index] = &listing.items[index];
        Hangar__V1__AgentEntries entries = HANGAR__V1__AGENT_ENTRIES__INIT;
        entries.n_entries = listing.count;
        entries.entries = pointers;
        if (pointers)
            AGENT_SEND_EVENT(id, ENTRIES, entries, &entries);
        else
            agent_send_error(id, HANGAR__V1__AGENT_ERROR__CODE__INTERNAL, "out of memory");
        free(pointers);
    }
    for (size_t index = 0; index < listing.count; index++) free_entry(&listing.items[index]);
    free(listing.items);
}

static void stat_path(uint64_t id, const char *path) {
    Hangar__V1__AgentEntry entry;
    memset(&entry, 0, sizeof entry);
    if (describe(path, base_name(path), &entry) != 0) {
        int error = errno;
        free_entry(&entry);
        return agent_send_errno(id, error, "stat", path);
    }
    AGENT_SEND_EVENT(id, STAT_INFO, stat_info, &entry);
    free_entry(&entry);
}

static void read_file(uint64_t id, const char *path, uint64_t offset, uint64_t length) {
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) return agent_send_errno(id, errno, "open", path);
    struct stat status;
    if (fstat(fd, &status) != 0) {
        int error = errno;
        close(fd);
        return agent_send_errno(id, error, "stat", path);
    }
    if (!S_ISREG(status.st_mode)) {
        close(fd);
        if (S_ISDIR(status.st_mode))
            return agent_send_error(id, HANGAR__V1__AGENT_ERROR__CODE__IS_A_DIRECTORY, "%s is a directory", path);
        return agent_send_error(id, HANGAR__V1__AGENT_ERROR__CODE__INVALID, "%s is not a regular file", path);
    }
    size_t wanted = length == 0 || length > AGENT_READ_CHUNK ? AGENT_READ_CHUNK : (size_t)length;
    uint8_t *buffer = malloc(wanted ? wanted : 1);
    if (!buffer) {
        close(fd);
        return agent_send_error(id, HANGAR__V1__AGENT_ERROR__CODE__INTERNAL, "out of memory");
    }
    size_t got = 0;
    while (got < wanted) {
        ssize_t count = pread(fd, buffer + got, wanted - got, (off_t)(offset + got));
        if (count < 0 && errno == EINTR) continue;
        if (count < 0) {
            int error = errno;
            free(buffer);
            close(fd);
            return agent_send_errno(id, error, "read", path);
        }
        if (count == 0) break;
        got += (size_t)count;
    }
    close(fd);
    Hangar__V1__AgentFileData data = HANGAR__V1__AGENT_FILE_DATA__INIT;
    data.data.data = buffer;
    data.data.len = got;
    data.size = (uint64_t)status.st_size;
    data.eof = offset + got >= (uint64_t)status.st_size;
    AGENT_SEND_EVENT(id, FILE_DATA, file_data, &data);
    free(buffer);
}

static int write_all(int fd, const uint8_t *data, size_t length) {
    while (length > 0) {
        ssize_t count = write(fd, data, length);
        if (count < 0 && errno == EINTR) continue;
        if (count <= 0) return -1;
        data += count;
        length -= (size_t)count;
    }
    return 0;
}

static void write_file(uint64_t id, const char *path, const ProtobufCBinaryData *data, uint32_t mode, int append) {
    mode_t permissions = mode == 0 ? 0644 : (mode_t)(mode & 07777);
    if (append) {
        int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY | O_NONBLOCK, permissions);
        if (fd < 0) return agent_send_errno(id, errno, "open", path);
        int failed = write_all(fd, data->data, data->len);
        int error = errno;
        close(fd);
        if (failed) return agent_send_errno(id, error, "write", path);
        return agent_send_ok(id);
    }
    struct stat existing;
    if (stat(path, &existing) == 0 && S_ISDIR(existing.st_mode))
        return agent_send_error(id, HANGAR__V1__AGENT_ERROR__CODE__IS_A_DIRECTORY, "%s is a directory", path);
    /* A temporary file beside the target, renamed over it: readers see the old or the new content. */
    char temporary[AGENT_MAX_PATH + 64];
    const char *name = base_name(path);
    snprintf(temporary, sizeof temporary, "%.*s.%s.hangar-XXXXXX", (int)(name - path), path, name);
    int fd = mkostemp(temporary, O_CLOEXEC);
    if (fd < 0) return agent_send_errno(id, errno, "create a temporary file for", path);
    int failed = write_all(fd, data->data, data->len) != 0 || fchmod(fd, permissions) != 0;
    int error = errno;
    if (close(fd) != 0 && !failed) {
        failed = 1;
        error = errno;
    }
    if (!failed && rename(temporary, path) != 0) {
        failed = 1;
        error = errno;
    }
    if (failed) {
        unlink(temporary);
        return agent_send_errno(id, error, "write", path);
    }
    agent_send_ok(id);
}

static int make_parents(char *path) {
    for (char *slash = strchr(path + 1, '/'); slash; slash = strchr(slash + 1, '/')) {
        *slash = 0;
        int failed = mkdir(path, 0755) != 0 && errno != EEXIST;
        *slash = '/';
        if (failed) return -1;
    }
    if (mkdir(path, 0755) != 0) {
        struct stat status;
        if (errno == EEXIST && stat(path, &status) == 0 && S_ISDIR(status.st_mode)) return 0;
        return -1;
    }
    return 0;
}

/* Removes `name` in `dirfd` and everything below it, never following a symlink. */
static int remove_tree(int dirfd, const char *name, int depth) {
    if (unlinkat(dirfd, name, 0) == 0) return 0;
    if (errno != EISDIR && errno != EPERM) return -1;
    if (depth > 256) {
        errno = ELOOP;
        return -1;
    }
    int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return -1;
    DIR *dir = fdopendir(fd);
    if (!dir) {
        close(fd);
        return -1;
    }
    struct dirent *item;
    int failed = 0;
    while (!failed && (item = readdir(dir))) {
        if (strcmp(item->d_name, ".") == 0 || strcmp(item->d_name, "..") == 0) continue;
        failed = remove_tree(fd, item->d_name, depth + 1);
    }
    int error = errno;
    closedir(dir);
    if (failed) {
        errno = error;
        return -1;
    }
    return unlinkat(dirfd, name, AT_REMOVEDIR);
}

static void remove_path(uint64_t id, const char *path, int recursive) {
    if (strcmp(path, "/") == 0)
        return agent_send_error(id, HANGAR__V1__AGENT_ERROR__CODE__PERMISSION_DENIED, "refusing to remove /");
    struct stat status;
    if (lstat(path, &status) != 0) return agent_send_errno(id, errno, "remove", path);
    int failed;
    if (S_ISDIR(status.st_mode))
        failed = recursive ? remove_tree(AT_FDCWD, path, 0) : rmdir(path);
    else
        failed = unlink(path);
    if (failed) return agent_send_errno(id, errno, "remove", path);
    agent_send_ok(id);
}

void agent_file_request(const Hangar__V1__AgentRequest *request) {
    uint64_t id = request->id;
    char path[AGENT_MAX_PATH + 1];
    char other[AGENT_MAX_PATH + 1];
    switch (request->op_case) {
    case HANGAR__V1__AGENT_REQUEST__OP_READ_FILE:
        if (agent_normalise_path(id, request->read_file->path, path) != 0) return;
        return read_file(id, path, request->read_file->offset, request->read_file->length);
    case HANGAR__V1__AGENT_REQUEST__OP_WRITE_FILE:
        if (agent_normalise_path(id, request->write_file->path, path) != 0) return;
        return write_file(id, path, &request->write_file->data, request->write_file->mode,
                          request->write_file->append);
    case HANGAR__V1__AGENT_REQUEST__OP_LIST_DIR:
        if (agent_normalise_path(id, request->list_dir->path, path) != 0) return;
        return list_dir(id, path, request->list_dir->depth);
    case HANGAR__V1__AGENT_REQUEST__OP_STAT:
        if (agent_normalise_path(id, request->stat->path, path) != 0) return;
        return stat_path(id, path);
    case HANGAR__V1__AGENT_REQUEST__OP_MAKE_DIR:
        if (agent_normalise_path(id, request->make_dir->path, path) != 0) return;
        if (request->make_dir->parents ? make_parents(path) != 0 : mkdir(path, 0755) != 0)
            return agent_send_errno(id, errno, "make directory", path);
        return agent_send_ok(id);
    case HANGAR__V1__AGENT_REQUEST__OP_REMOVE:
        if (agent_normalise_path(id, request->remove->path, path) != 0) return;
        return remove_path(id, path, request->remove->recursive);
    case HANGAR__V1__AGENT_REQUEST__OP_RENAME:
        if (agent_normalise_path(id, request->rename->from, path) != 0 || agent_normalise_path(id, request->rename->to, other) != 0) return;
        if (rename(path, other) != 0) return agent_send_errno(id, errno, "rename", path);
        return agent_send_ok(id);
    default:
        return agent_send_error(id, HANGAR__V1__AGENT_ERROR__CODE__INVALID, "not a file operation");
    }
}
