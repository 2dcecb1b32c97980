/*
 * Directory watches (AgentWatch, AgentUnwatch): inotify, run by the agent inside the sandbox, so a
 * watched path resolves inside the sandbox like any file operation's. Each watch has an inotify
 * instance of its own (two watches of one directory never share a watch descriptor) and, when
 * recursive, a watch descriptor for every directory below the watched one, those made later
 * included, at most MAX_WATCH_DIRS; symlinks are never followed. What one read of the instance
 * returns goes out as one AgentWatchEvents (at most MAX_BATCH events; more in further batches),
 * with consecutive repeats of one path and operation (a write in many pieces) folded into one.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent.h"

#define MAX_WATCH_DIRS 1024
#define MAX_BATCH 256
#define WATCH_MASK                                                                                          \
    (IN_CREATE | IN_MOVED_TO | IN_MODIFY | IN_DELETE | IN_MOVED_FROM | IN_ATTRIB | IN_DELETE_SELF |         \
     IN_MOVE_SELF | IN_ONLYDIR | IN_DONT_FOLLOW | IN_EXCL_UNLINK)

typedef struct {
    int wd;
    char *relative; /* "" for the watched directory itself */
} WatchDir;

typedef struct {
    int used;
    uint64_t id;
    int fd;
    int recursive;
    char root[AGENT_MAX_PATH + 1];
    WatchDir dirs[MAX_WATCH_DIRS];
    int dir_count;
    int dropped; /* directories not watched: over MAX_WATCH_DIRS */
} Watch;

static Watch watches[AGENT_MAX_WATCHES];

/* The batch being built by agent_watch_drain. */
static Hangar__V1__AgentWatchEvent items[MAX_BATCH];
static Hangar__V1__AgentWatchEvent *pointers[MAX_BATCH];
static char paths[MAX_BATCH][AGENT_MAX_PATH + NAME_MAX + 2];
static size_t batch_count;
static const char *batch_note;

static void send_batch(uint64_t id, Hangar__V1__AgentWatchEvent **events, size_t count, int ended,
                       const char *message);

/* Adds one change to the batch (folding a repeat of the last one), sending it when full. */
static void append(Watch *watch, const char *path, Hangar__V1__AgentWatchOp op, int is_directory) {
    if (batch_count > 0 && items[batch_count - 1].op == op && strcmp(paths[batch_count - 1], path) == 0) return;
    snprintf(paths[batch_count], sizeof paths[batch_count], "%s", path);
    hangar__v1__agent_watch_event__init(&items[batch_count]);
    items[batch_count].path = paths[batch_count];
    items[batch_count].op = op;
    items[batch_count].directory = is_directory;
    pointers[batch_count] = &items[batch_count];
    if (++batch_count == MAX_BATCH) {
        send_batch(watch->id, pointers, batch_count, 0, batch_note);
        batch_note = NULL;
        batch_count = 0;
    }
}

int agent_watch_fd(int index) {
    return watches[index].used ? watches[index].fd : -1;
}

static WatchDir *find_dir(Watch *watch, int wd) {
    for (int index = 0; index < watch->dir_count; index++)
        if (watch->dirs[index].wd == wd) return &watch->dirs[index];
    return NULL;
}

/*
 * Watches `relative` (below the root) and, for a recursive watch, every directory below it. With
 * `report` (a directory that appeared while watched), what is already in it is reported as
 * created: it may have come before its watch was set (such a change may then come twice).
 */
static int add_tree(Watch *watch, const char *relative, int top, int report) {
    char path[AGENT_MAX_PATH * 2 + 2];
    if (relative[0] == 0)
        snprintf(path, sizeof path, "%s", watch->root);
    else
        snprintf(path, sizeof path, "%s/%s", strcmp(watch->root, "/") == 0 ? "" : watch->root, relative);
    if (watch->dir_count >= MAX_WATCH_DIRS) {
        watch->dropped++;
        return 0;
    }
    int wd = inotify_add_watch(watch->fd, path, WATCH_MASK);
    if (wd < 0) return top ? -1 : 0; /* a directory below that went away meanwhile: skipped */
    if (!find_dir(watch, wd)) {
        watch->dirs[watch->dir_count].wd = wd;
        watch->dirs[watch->dir_count].relative = strdup(relative);
        watch->dir_count++;
    }
    if (!watch->recursive) return 0;
    DIR *directory = opendir(path);
    if (!directory) return 0;
    struct dirent *entry;
    while ((entry = readdir(directory))) {
        if (strcmp(entry->d_name, ".") == 0 || strcmp(entry->d_name, "..") == 0) continue;
        int is_directory = entry->d_type == DT_DIR;
        if (entry->d_type == DT_UNKNOWN) {
            struct stat status;
            is_directory = fstatat(dirfd(directory), entry->d_name, &status, AT_SYMLINK_NOFOLLOW) == 0 &&
                           S_ISDIR(status.st_mode);
        }
        char child[AGENT_MAX_PATH + 1];
        int length = snprintf(child, sizeof child, "%s%s%s", relative, relative[0] ? "/" : "", entry->d_name);
        if (length < 0 || length > AGENT_MAX_PATH) continue;
        if (report) append(watch, child, HANGAR__V1__AGENT_WATCH_OP__AGENT_WATCH_OP_CREATE, is_directory);
        if (is_directory) add_tree(watch, child, 0, report);
    }
    closedir(directory);
    return 0;
}

static void release(Watch *watch) {
    close(watch->fd);
    for (int index = 0; index < watch->dir_count; index++) free(watch->dirs[index].relative);
    watch->dir_count = 0;
    watch->used = 0;
}

static void send_batch(uint64_t id, Hangar__V1__AgentWatchEvent **events, size_t count, int ended,
                       const char *message) {
    Hangar__V1__AgentWatchEvents batch = HANGAR__V1__AGENT_WATCH_EVENTS__INIT;
    batch.n_events = count;
    batch.events = events;
    batch.ended = ended;
    batch.message = (char *)(message ? message : "");
    AGENT_SEND_EVENT(id, WATCH_EVENTS, watch_events, &batch);
}

void agent_watch_request(const Hangar__V1__AgentRequest *request, const char *path) {
    uint64_t id = request->id;
    int slot = -1;
    for (int index = 0; index < AGENT_MAX_WATCHES; index++) {
        if (watches[index].used && watches[index].id == id) {
            agent_send_error(id, HANGAR__V1__AGENT_ERROR__CODE__INVALID, "request id %llu watches already",
                             (unsigned long long)id);
            return;
        }
        if (!watches[index].used && slot < 0) slot = index;
    }
    if (slot < 0) {
        agent_send_error(id, HANGAR__V1__AGENT_ERROR__CODE__TOO_LARGE,
                         "%d watches are set in this sandbox already; end one first", AGENT_MAX_WATCHES);
        return;
    }
    Watch *watch = &watches[slot];
    watch->fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (watch->fd < 0) return agent_send_errno(id, errno, "watch", path);
    watch->used = 1;
    watch->id = id;
    watch->recursive = request->watch->recursive;
    watch->dir_count = 0;
    watch->dropped = 0;
    snprintf(watch->root, sizeof watch->root, "%s", path);
    if (add_tree(watch, "", 1, 0) != 0) {
        int error = errno;
        release(watch);
        return agent_send_errno(id, error, "watch", path);
    }
    char message[96] = "";
    if (watch->dropped)
        snprintf(message, sizeof message, "%d directories below are not watched (at most %d)", watch->dropped,
                 MAX_WATCH_DIRS);
    send_batch(id, NULL, 0, 0, message);
}

void agent_watch_release_all(void) {
    batch_count = 0;
    batch_note = NULL;
    for (int index = 0; index < AGENT_MAX_WATCHES; index++)
        if (watches[index].used) release(&watches[index]);
}

void agent_unwatch_request(const Hangar__V1__AgentRequest *request) {
    for (int index = 0; index < AGENT_MAX_WATCHES; index++) {
        Watch *watch = &watches[index];
        if (!watch->used || watch->id != request->unwatch->watch_id) continue;
        uint64_t watch_id = watch->id;
        release(watch);
        send_batch(watch_id, NULL, 0, 1, "unwatched");
        agent_send_ok(request->id);
        return;
    }
    agent_send_error(request->id, HANGAR__V1__AGENT_ERROR__CODE__NOT_FOUND, "no watch %llu in this sandbox",
                     (unsigned long long)request->unwatch->watch_id);
}

static Hangar__V1__AgentWatchOp operation(uint32_t mask) {
    if (mask & (IN_CREATE | IN_MOVED_TO)) return HANGAR__V1__AGENT_WATCH_OP__AGENT_WATCH_OP_CREATE;
    if (mask & IN_DELETE) return HANGAR__V1__AGENT_WATCH_OP__AGENT_WATCH_OP_REMOVE;
    if (mask & IN_MOVED_FROM) return HANGAR__V1__AGENT_WATCH_OP__AGENT_WATCH_OP_RENAME;
    if (mask & IN_ATTRIB) return HANGAR__V1__AGENT_WATCH_OP__AGENT_WATCH_OP_CHMOD;
    return HANGAR__V1__AGENT_WATCH_OP__AGENT_WATCH_OP_WRITE;
}

void agent_watch_drain(int index) {
    Watch *watch = &watches[index];
    if (!watch->used) return;
    static char buffer[64 * 1024] __attribute__((aligned(__alignof__(struct inotify_event))));
    ssize_t length = read(watch->fd, buffer, sizeof buffer);
    if (length <= 0) return;
    batch_count = 0;
    batch_note = NULL;
    const char *ended = NULL;
    for (char *cursor = buffer; cursor < buffer + length;) {
        struct inotify_event *event = (struct inotify_event *)cursor;
        cursor += sizeof *event + event->len;
        if (event->mask & IN_Q_OVERFLOW) {
            batch_note = "events were dropped (too many at once)";
            continue;
        }
        WatchDir *dir = find_dir(watch, event->wd);
        if (!dir) continue;
        if (event->mask & (IN_DELETE_SELF | IN_MOVE_SELF)) {
            if (dir->relative[0] == 0) ended = "the watched directory was removed or moved";
            continue;
        }
        if (event->mask & IN_IGNORED || event->len == 0) continue;
        int is_directory = (event->mask & IN_ISDIR) != 0;
        char path[AGENT_MAX_PATH + NAME_MAX + 2];
        snprintf(path, sizeof path, "%s%s%s", dir->relative, dir->relative[0] ? "/" : "", event->name);
        append(watch, path, operation(event->mask), is_directory);
        if (watch->recursive && is_directory && (event->mask & (IN_CREATE | IN_MOVED_TO)) &&
            strlen(path) <= AGENT_MAX_PATH)
            add_tree(watch, path, 0, 1);
    }
    if (batch_count > 0 || batch_note || ended)
        send_batch(watch->id, pointers, batch_count, ended != NULL, ended ? ended : batch_note);
    if (ended) release(watch);
}
