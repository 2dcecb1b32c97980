/*
 * hangar-sandbox-agent: the first process (pid 1) of a stateful sandbox.
 *
 * It reads AgentRequest frames (4-byte big-endian length + protobuf, proto/hangar/v1/agent.proto)
 * from its input descriptor (stdin, or `--in FD`) and writes AgentEvent frames to its output
 * descriptor (stdout, or `--out FD`). One thread, one poll loop: it starts commands, streams their
 * output in chunks with offsets, feeds their stdin, signals and times them out, reaps every zombie
 * of the sandbox (it is the pid namespace's init), and runs file operations itself (files.c).
 *
 * Who can touch the agent: it is pid 1 of the sandbox's pid namespace, so the kernel drops every
 * signal a process of the sandbox sends it that it has no handler for, SIGKILL and SIGSTOP
 * included (it handles none: SIGCHLD is blocked and read from a signalfd). It is not dumpable, so
 * only a holder of CAP_SYS_PTRACE in the sandbox's user namespace could ptrace it or open its
 * /proc files, and no command holds any capability: a "user" command runs as uid 1000 in a user
 * namespace of its own (nested in the sandbox's, mapped onto the agent's uid), a "root" command as
 * uid 0 with every capability dropped from all its sets, the bounding set included. The agent itself
 * keeps only CAP_SETFCAP (the kernel wants it to map a nested namespace's uid onto uid 0) and
 * CAP_SETPCAP (to empty a root command's bounding set), in the sandbox's user namespace only. With
 * `--seccomp FD` it reads a classic-BPF seccomp filter and installs it in every command
 * (`--seccomp-file PATH`: the same from a file, where the sandbox passes no descriptors beyond
 * stdio, as gVisor's runsc).
 *
 * With `--listen FD` the channel is a connection to a listening unix socket the node made and
 * passed: the agent accepts one node at a time, and when that node hangs up (it crashed, or it is
 * being upgraded) the sandbox and its commands go on and the agent waits for the next node, which
 * re-adopts the sandbox. Only a process outside the sandbox's pid namespace may connect (the
 * socket's path is not in the sandbox anyway). The commands started before the hang-up are
 * unclaimed: their requests are forgotten, the agent stops reading their output (a command that
 * writes much waits in its pipe; nothing is lost) and keeps the exit of one that ends, until the
 * next node takes it over with a Reattach request (it then gets the output from where the last
 * node's reading stopped, and the exit; for a background command, the last KEPT_OUTPUT bytes of
 * each stream before that come first). Watches end. With `--orphan-ms N` the agent ends every command,
 * then the sandbox, when no node has connected for N ms.
 *
 * `--listen-path PATH` is the same with a socket the agent makes itself at PATH: in gVisor, whose
 * runsc passes a container no descriptor beyond its stdio. PATH is in a host directory bound into
 * the sandbox, and runsc runs with `--host-uds=create`: the sandbox may create host sockets there
 * but connect to none, so the only peer that can reach this one is on the host (the node). gVisor
 * shows such a peer with a pid of its own choosing, so the pid check of `--listen` is not made.
 *
 * `--port FD` is the channel of a microVM: a virtio-serial port, which qemu serves from a listening
 * socket of the node's. When the node hangs up, the port reads EOF and polls POLLHUP until the next
 * node connects to qemu's socket; the agent then waits (checking the port every PORT_PROBE_MS, since
 * poll cannot wait for the host to come back) and goes on as with `--listen`. The port is one
 * stream across nodes, so what the agent was writing when the node went may reach the next one cut
 * short: the next node resynchronises by sending a Ping with an id of its own choosing and skipping
 * everything up to the Pong that answers it (MicroVMSandbox.resynchronise). The agent may miss a
 * hang-up (the next node came at once, or the guest learnt of it late): that Ping has `new_node`
 * set, and the agent forgets the requests of the nodes before it before it answers.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"

/* See Sources/GuestAgent/main.c: swiftc links swiftrt.o into C executables too. */
void swift_addNewDSOImage(const void *sections) { (void)sections; }
int _swift_backtrace_isThunkFunction(const char *name) {
    (void)name;
    return 0;
}

#define MAX_PROCESSES 256
/* poll kinds: 0 and 1 a command's stdout and stderr, 2 its stdin, WATCH_KIND + slot a watch. */
#define WATCH_KIND 16
/* Stdin bytes queued for one command beyond which Stdin requests are refused. */
#define MAX_PENDING_STDIN (8u * 1024 * 1024)
#define USER_ID 1000
/* The last bytes of each stream of a background command that the agent keeps, for the next node
 * after a restart (a Reattach replays them): what the last node had read is not lost with it. */
#define KEPT_OUTPUT (64u * 1024)
/* --port: how often a port whose node hung up is checked for the next one. */
#define PORT_PROBE_MS 20

typedef struct {
    int used;
    pid_t pid;
    uint64_t request;
    char **argv;
    size_t argc;
    int background;
    int out[2];          /* stdout, stderr read ends; -1 once at EOF */
    uint64_t offset[2];  /* bytes of each stream sent so far */
    int in;              /* stdin write end, -1 when none */
    uint8_t *pending;    /* stdin bytes not yet written */
    size_t pending_size;
    int close_stdin;     /* close `in` once `pending` is written */
    int64_t deadline_ms; /* 0 for none */
    int timed_out;
    int exited; /* it ended while unclaimed (request 0): `status` waits for a Reattach */
    int status;
    /* A background command's last output per stream: a ring of KEPT_OUTPUT bytes (allocated at
     * its first output), the oldest byte at kept_head. */
    uint8_t *kept[2];
    size_t kept_head[2];
    size_t kept_size[2];
} Process;

static Process processes[MAX_PROCESSES];
static int input_fd = 0;
static int output_fd = 1;
/* --listen: the node's listening socket; input_fd and output_fd are then the accepted connection,
 * -1 while no node is connected. */
static int listen_fd = -1;
/* --listen-path: listen_fd is a socket the agent bound itself (gVisor: only the host can connect). */
static int listen_path_mode;
/* --port: the virtio-serial port that is the channel (input_fd and output_fd while a node is
 * connected, -1 while none is). */
static int port_fd = -1;
/* --orphan-ms: how long the agent waits for a node before it ends the sandbox; 0: forever. */
static int64_t orphan_ms;
/* A write to the node failed: the connection is dropped at the next turn of the loop. */
static int hung_up;
/* now_ms() when the last node hung up (or the agent started listening); 0 while connected. */
static int64_t disconnected_at;
static struct sock_fprog filter;
static int have_filter;

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* --- events --- */

/* The node is gone (a write to it failed): its requests are forgotten at once, so that no more of
 * a command's output is read for it (it waits in the pipe for the next node's Reattach; only the
 * chunk being written is lost, and the offsets show it). */
static void node_gone(void) {
    output_fd = -1;
    for (int index = 0; index < MAX_PROCESSES; index++) processes[index].request = 0;
}

/* A new node: what the ones before asked for is forgotten, commands and their output kept for a
 * Reattach. (Not from node_gone: a write can fail while a watch is being drained.) */
static void forget_requests(void) {
    for (int index = 0; index < MAX_PROCESSES; index++) processes[index].request = 0;
    agent_watch_release_all();
}

static void write_out(const uint8_t *data, size_t length) {
    if (output_fd < 0) return; /* no node connected: nobody to tell */
    while (length > 0) {
        ssize_t count = write(output_fd, data, length);
        if (count < 0 && errno == EINTR) continue;
        if (count < 0 && errno == EAGAIN) {
            struct pollfd entry = {.fd = output_fd, .events = POLLOUT};
            poll(&entry, 1, 1000);
            /* A port whose node hung up: the rest of this frame is dropped (the next node
             * resynchronises); what the node had sent is still read until EOF. */
            if (port_fd >= 0 && (entry.revents & POLLHUP)) {
                node_gone();
                return;
            }
            continue;
        }
        if (count <= 0) {
            if (port_fd >= 0) {
                node_gone();
                return;
            }
            if (listen_fd < 0) _exit(0); /* the node is gone: so is the sandbox */
            hung_up = 1;                 /* the node is gone: the sandbox waits for the next */
            node_gone();
            return;
        }
        data += count;
        length -= (size_t)count;
    }
}

void agent_send(const Hangar__V1__AgentEvent *event) {
    size_t size = hangar__v1__agent_event__get_packed_size(event);
    uint8_t *frame = malloc(size + 4);
    if (!frame) _exit(70);
    frame[0] = (uint8_t)(size >> 24);
    frame[1] = (uint8_t)(size >> 16);
    frame[2] = (uint8_t)(size >> 8);
    frame[3] = (uint8_t)size;
    hangar__v1__agent_event__pack(event, frame + 4);
    write_out(frame, size + 4);
    free(frame);
}

void agent_send_error(uint64_t id, Hangar__V1__AgentError__Code code, const char *format, ...) {
    char message[512];
    va_list arguments;
    va_start(arguments, format);
    vsnprintf(message, sizeof message, format, arguments);
    va_end(arguments);
    Hangar__V1__AgentError error = HANGAR__V1__AGENT_ERROR__INIT;
    error.code = code;
    error.message = message;
    AGENT_SEND_EVENT(id, ERROR, error, &error);
}

void agent_send_errno(uint64_t id, int error, const char *what, const char *path) {
    Hangar__V1__AgentError__Code code;
    switch (error) {
    case ENOENT: code = HANGAR__V1__AGENT_ERROR__CODE__NOT_FOUND; break;
    case EEXIST:
    case ENOTEMPTY: code = HANGAR__V1__AGENT_ERROR__CODE__EXISTS; break;
    case ENOTDIR: code = HANGAR__V1__AGENT_ERROR__CODE__NOT_A_DIRECTORY; break;
    case EISDIR: code = HANGAR__V1__AGENT_ERROR__CODE__IS_A_DIRECTORY; break;
    case EACCES:
    case EPERM:
    case EROFS: code = HANGAR__V1__AGENT_ERROR__CODE__PERMISSION_DENIED; break;
    case ENOSPC:
    case EDQUOT: code = HANGAR__V1__AGENT_ERROR__CODE__NO_SPACE; break;
    case EFBIG:
    case ENAMETOOLONG: code = HANGAR__V1__AGENT_ERROR__CODE__TOO_LARGE; break;
    case ELOOP:
    case EINVAL:
    case EXDEV: code = HANGAR__V1__AGENT_ERROR__CODE__INVALID; break;
    default: code = HANGAR__V1__AGENT_ERROR__CODE__INTERNAL; break;
    }
    agent_send_error(id, code, "%s %s: %s", what, path, strerror(error));
}

void agent_send_ok(uint64_t id) {
    Hangar__V1__AgentOk ok = HANGAR__V1__AGENT_OK__INIT;
    AGENT_SEND_EVENT(id, OK, ok, &ok);
}

/* --- commands --- */

/* The running command `pid` (not one that ended while unclaimed: its pid may be another's now). */
static Process *find(uint32_t pid) {
    for (int index = 0; index < MAX_PROCESSES; index++)
        if (processes[index].used && !processes[index].exited && processes[index].pid == (pid_t)pid)
            return &processes[index];
    return NULL;
}

static void set_nonblocking(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

static int write_file_once(const char *path, const char *text) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t count = write(fd, text, strlen(text));
    close(fd);
    return count == (ssize_t)strlen(text) ? 0 : -1;
}

/* In the child: become the command's user, drop every capability, install the filter. */
static int become(int root) {
    if (root) {
        for (int cap = 0; cap <= CAP_LAST_CAP; cap++) prctl(PR_CAPBSET_DROP, cap, 0, 0, 0);
    } else {
        if (unshare(CLONE_NEWUSER) != 0) return -1;
        char map[64];
        snprintf(map, sizeof map, "%d 0 1\n", USER_ID);
        if (write_file_once("/proc/self/uid_map", map) != 0) return -1;
        /* gVisor has no setgroups file (nor had Linux before 3.19): nothing to deny there. */
        if (write_file_once("/proc/self/setgroups", "deny") != 0 && errno != ENOENT) return -1;
        if (write_file_once("/proc/self/gid_map", map) != 0) return -1;
        if (setresgid(USER_ID, USER_ID, USER_ID) != 0 || setresuid(USER_ID, USER_ID, USER_ID) != 0) return -1;
    }
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
    struct __user_cap_header_struct header = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof data);
    if (syscall(SYS_capset, &header, data) != 0) return -1;
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return -1;
    if (have_filter && syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &filter) != 0) return -1;
    return 0;
}

static void child(const Hangar__V1__AgentExec *exec, int in, int out, int err, int status) {
    int root = strcmp(exec->user, "root") == 0;
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGPIPE, SIG_DFL);
    signal(SIGXFSZ, SIG_DFL);
    setsid();
    int stage = 0; /* what failed: see start() */
    if (dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0) goto fail;
    const char *home = root ? "/root" : "/home/user";
    const char *cwd = exec->cwd[0] ? exec->cwd : home;
    stage = 1;
    if (chdir(cwd) != 0) goto fail;
    stage = 2;
    if (become(root) != 0) goto fail;
    stage = 3;
    clearenv();
    setenv("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin", 1);
    setenv("HOME", home, 1);
    setenv("USER", root ? "root" : "user", 1);
    setenv("LOGNAME", root ? "root" : "user", 1);
    setenv("LANG", "C.UTF-8", 1);
    for (size_t index = 0; index < exec->n_env; index++)
        if (exec->env[index]->key[0] && !strchr(exec->env[index]->key, '='))
            setenv(exec->env[index]->key, exec->env[index]->value, 1);
    char **argv = calloc(exec->n_argv + 1, sizeof *argv);
    if (!argv) goto fail;
    for (size_t index = 0; index < exec->n_argv; index++) argv[index] = exec->argv[index];
    syscall(SYS_close_range, 3, ~0u, 4 /* CLOSE_RANGE_CLOEXEC */);
    fcntl(status, F_SETFD, FD_CLOEXEC);
    execvp(argv[0], argv);
fail : {
    int report[2] = {errno, stage};
    ssize_t ignored = write(status, report, sizeof report);
    (void)ignored;
    _exit(127);
}
}

static void close_fd(int *fd) {
    if (*fd >= 0) close(*fd);
    *fd = -1;
}

static void start(const Hangar__V1__AgentRequest *request) {
    const Hangar__V1__AgentExec *exec = request->exec;
    uint64_t id = request->id;
    if (exec->n_argv == 0 || !exec->argv[0][0])
        return agent_send_error(id, HANGAR__V1__AGENT_ERROR__CODE__INVALID, "argv is empty");
    if (exec->user[0] && strcmp(exec->user, "user") != 0 && strcmp(exec->user, "root") != 0)
        return agent_send_error(id, HANGAR__V1__AGENT_ERROR__CODE__INVALID,
                                "user must be \"user\" or \"root\", not \"%s\"", exec->user);
    Process *slot = NULL;
    for (int index = 0; index < MAX_PROCESSES && !slot; index++)
        if (!processes[index].used) slot = &processes[index];
    if (!slot)
        return agent_send_error(id, HANGAR__V1__AGENT_ERROR__CODE__TOO_LARGE, "already %d commands running",
                                MAX_PROCESSES);
    int in[2] = {-1, -1}, out[2] = {-1, -1}, err[2] = {-1, -1}, status[2] = {-1, -1};
    int failed = pipe2(out, O_CLOEXEC) != 0 || pipe2(err, O_CLOEXEC) != 0 || pipe2(status, O_CLOEXEC) != 0;
    if (!failed) {
        if (exec->stdin)
            failed = pipe2(in, O_CLOEXEC) != 0;
        else
            failed = (in[0] = open("/dev/null", O_RDONLY | O_CLOEXEC)) < 0;
    }
    pid_t pid = failed ? -1 : fork();
    if (pid == 0) child(exec, in[0], out[1], err[1], status[1]);
    int error = errno;
    close_fd(&in[0]);
    close_fd(&out[1]);
    close_fd(&err[1]);
    close_fd(&status[1]);
    int report[2] = {0, 0}; /* errno and stage: 0 descriptors, 1 cwd, 2 user, 3 exec */
    if (pid > 0) {
        ssize_t count;
        do count = read(status[0], report, sizeof report);
        while (count < 0 && errno == EINTR);
        if (count != sizeof report) report[0] = 0;
    }
    int child_error = report[0];
    close_fd(&status[0]);
    if (pid < 0 || child_error) {
        close_fd(&in[1]);
        close_fd(&out[0]);
        close_fd(&err[0]);
        if (pid > 0) waitpid(pid, NULL, 0);
        if (pid < 0) return agent_send_errno(id, error, "cannot start", exec->argv[0]);
        if (report[1] == 1)
            return agent_send_errno(id, child_error, "cannot change directory to",
                                    exec->cwd[0] ? exec->cwd : strcmp(exec->user, "root") == 0 ? "/root" : "/home/user");
        if (report[1] == 2) return agent_send_errno(id, child_error, "cannot switch to the user of", exec->argv[0]);
        if (report[1] == 3) return agent_send_errno(id, child_error, "cannot run", exec->argv[0]);
        return agent_send_errno(id, child_error, "cannot set up", exec->argv[0]);
    }
    memset(slot, 0, sizeof *slot);
    slot->used = 1;
    slot->pid = pid;
    slot->request = id;
    slot->background = exec->background;
    slot->out[0] = out[0];
    slot->out[1] = err[0];
    slot->in = in[1];
    set_nonblocking(out[0]);
    set_nonblocking(err[0]);
    if (in[1] >= 0) set_nonblocking(in[1]);
    slot->deadline_ms = exec->timeout_ms ? now_ms() + (int64_t)exec->timeout_ms : 0;
    slot->argv = calloc(exec->n_argv, sizeof(char *));
    slot->argc = slot->argv ? exec->n_argv : 0;
    for (size_t index = 0; index < slot->argc; index++) slot->argv[index] = strdup(exec->argv[index]);
    Hangar__V1__AgentStarted started = HANGAR__V1__AGENT_STARTED__INIT;
    started.pid = (uint32_t)pid;
    AGENT_SEND_EVENT(id, STARTED, started, &started);
}

/* Keeps `data` (just read from `stream`) as the newest of a background command's kept output. */
static void keep(Process *process, int stream, const uint8_t *data, size_t length) {
    if (!process->background || length == 0) return;
    if (!process->kept[stream] && !(process->kept[stream] = malloc(KEPT_OUTPUT))) return; /* kept is best effort */
    uint8_t *ring = process->kept[stream];
    if (length >= KEPT_OUTPUT) {
        memcpy(ring, data + length - KEPT_OUTPUT, KEPT_OUTPUT);
        process->kept_head[stream] = 0;
        process->kept_size[stream] = KEPT_OUTPUT;
        return;
    }
    size_t room = KEPT_OUTPUT - process->kept_size[stream];
    if (length > room) { /* the oldest bytes make way */
        process->kept_head[stream] = (process->kept_head[stream] + length - room) % KEPT_OUTPUT;
        process->kept_size[stream] -= length - room;
    }
    size_t tail = (process->kept_head[stream] + process->kept_size[stream]) % KEPT_OUTPUT;
    size_t first = KEPT_OUTPUT - tail < length ? KEPT_OUTPUT - tail : length;
    memcpy(ring + tail, data, first);
    memcpy(ring, data + first, length - first);
    process->kept_size[stream] += length;
}

/* Sends a background command's kept output of `stream` (oldest first) to its request. */
static void replay(Process *process, int stream) {
    size_t size = process->kept_size[stream], head = process->kept_head[stream];
    uint64_t offset = process->offset[stream] - size;
    while (size > 0) {
        size_t piece = KEPT_OUTPUT - head < size ? KEPT_OUTPUT - head : size;
        Hangar__V1__AgentOutput output = HANGAR__V1__AGENT_OUTPUT__INIT;
        output.pid = (uint32_t)process->pid;
        output.stream = stream == 0 ? HANGAR__V1__AGENT_STREAM__AGENT_STREAM_STDOUT
                                    : HANGAR__V1__AGENT_STREAM__AGENT_STREAM_STDERR;
        output.offset = offset;
        output.data.data = process->kept[stream] + head;
        output.data.len = piece;
        AGENT_SEND_EVENT(process->request, OUTPUT, output, &output);
        offset += piece;
        size -= piece;
        head = 0;
    }
}

/* Reads what is available on one stream and sends it in chunks; at EOF closes it. */
static void drain(Process *process, int stream) {
    static uint8_t buffer[AGENT_OUTPUT_CHUNK];
    /* Not for an unclaimed command (its node went, maybe while this loop sent): its output waits. */
    while (process->out[stream] >= 0 && process->request != 0) {
        ssize_t count = read(process->out[stream], buffer, sizeof buffer);
        if (count < 0 && errno == EINTR) continue;
        if (count < 0 && errno == EAGAIN) return;
        if (count <= 0) {
            close_fd(&process->out[stream]);
            return;
        }
        Hangar__V1__AgentOutput output = HANGAR__V1__AGENT_OUTPUT__INIT;
        output.pid = (uint32_t)process->pid;
        output.stream = stream == 0 ? HANGAR__V1__AGENT_STREAM__AGENT_STREAM_STDOUT
                                    : HANGAR__V1__AGENT_STREAM__AGENT_STREAM_STDERR;
        output.offset = process->offset[stream];
        output.data.data = buffer;
        output.data.len = (size_t)count;
        keep(process, stream, buffer, (size_t)count);
        process->offset[stream] += (uint64_t)count;
        AGENT_SEND_EVENT(process->request, OUTPUT, output, &output);
        if ((size_t)count < sizeof buffer) return;
    }
}

static void feed(Process *process) {
    while (process->in >= 0 && process->pending_size > 0) {
        ssize_t count = write(process->in, process->pending, process->pending_size);
        if (count < 0 && errno == EINTR) continue;
        if (count < 0 && errno == EAGAIN) return;
        if (count <= 0) { /* the command closed its stdin: drop the rest */
            process->pending_size = 0;
            close_fd(&process->in);
            break;
        }
        memmove(process->pending, process->pending + count, process->pending_size - (size_t)count);
        process->pending_size -= (size_t)count;
    }
    if (process->pending_size == 0) {
        free(process->pending);
        process->pending = NULL;
        if (process->close_stdin) close_fd(&process->in);
    }
}

static void ended(Process *process, int status) {
    drain(process, 0);
    drain(process, 1);
    Hangar__V1__AgentExited exited = HANGAR__V1__AGENT_EXITED__INIT;
    exited.pid = (uint32_t)process->pid;
    if (WIFEXITED(status)) exited.exit_code = WEXITSTATUS(status);
    if (WIFSIGNALED(status)) {
        exited.signal = WTERMSIG(status);
        exited.exit_code = 128 + WTERMSIG(status);
    }
    exited.timed_out = process->timed_out;
    AGENT_SEND_EVENT(process->request, EXITED, exited, &exited);
    close_fd(&process->out[0]);
    close_fd(&process->out[1]);
    close_fd(&process->in);
    free(process->pending);
    free(process->kept[0]);
    free(process->kept[1]);
    for (size_t index = 0; index < process->argc; index++) free(process->argv[index]);
    free(process->argv);
    memset(process, 0, sizeof *process);
}

static void reap(void) {
    for (;;) {
        int status;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid <= 0) return;
        Process *process = find((uint32_t)pid);
        if (!process) continue; /* an orphan the sandbox left to pid 1 */
        if (process->request == 0) { /* unclaimed: its exit waits for the next node's Reattach */
            process->exited = 1;
            process->status = status;
            continue;
        }
        ended(process, status);
    }
}

static void stdin_request(const Hangar__V1__AgentRequest *request) {
    const Hangar__V1__AgentStdin *input = request->stdin;
    Process *process = find(input->pid);
    if (!process)
        return agent_send_error(request->id, HANGAR__V1__AGENT_ERROR__CODE__NOT_FOUND, "no command with pid %u",
                                input->pid);
    if (process->in < 0)
        return agent_send_error(request->id, HANGAR__V1__AGENT_ERROR__CODE__INVALID,
                                "the stdin of %u is closed (or was not asked for)", input->pid);
    if (process->pending_size + input->data.len > MAX_PENDING_STDIN)
        return agent_send_error(request->id, HANGAR__V1__AGENT_ERROR__CODE__TOO_LARGE,
                                "more than %u bytes of stdin are waiting for %u", MAX_PENDING_STDIN, input->pid);
    if (input->data.len > 0) {
        uint8_t *grown = realloc(process->pending, process->pending_size + input->data.len);
        if (!grown) return agent_send_error(request->id, HANGAR__V1__AGENT_ERROR__CODE__INTERNAL, "out of memory");
        memcpy(grown + process->pending_size, input->data.data, input->data.len);
        process->pending = grown;
        process->pending_size += input->data.len;
    }
    if (input->close) process->close_stdin = 1;
    feed(process);
    agent_send_ok(request->id);
}

static void signal_request(const Hangar__V1__AgentRequest *request) {
    const Hangar__V1__AgentSignal *sig = request->signal;
    Process *process = find(sig->pid);
    if (!process)
        return agent_send_error(request->id, HANGAR__V1__AGENT_ERROR__CODE__NOT_FOUND, "no command with pid %u",
                                sig->pid);
    if (sig->signo <= 0 || sig->signo > SIGRTMAX)
        return agent_send_error(request->id, HANGAR__V1__AGENT_ERROR__CODE__INVALID, "no signal %d", sig->signo);
    if (kill(-process->pid, sig->signo) != 0 && kill(process->pid, sig->signo) != 0)
        return agent_send_errno(request->id, errno, "signal", "the command");
    agent_send_ok(request->id);
}

/* Reattach: the next node takes over a command started for one that hung up. */
static void reattach_request(const Hangar__V1__AgentRequest *request) {
    uint32_t pid = request->reattach->pid;
    Process *process = NULL;
    for (int index = 0; index < MAX_PROCESSES && !process; index++)
        if (processes[index].used && processes[index].request == 0 && processes[index].pid == (pid_t)pid)
            process = &processes[index];
    if (!process) {
        if (find(pid))
            return agent_send_error(request->id, HANGAR__V1__AGENT_ERROR__CODE__INVALID,
                                    "the command %u is taken over already", pid);
        return agent_send_error(request->id, HANGAR__V1__AGENT_ERROR__CODE__NOT_FOUND, "no command with pid %u", pid);
    }
    process->request = request->id;
    Hangar__V1__AgentStarted started = HANGAR__V1__AGENT_STARTED__INIT;
    started.pid = pid;
    /* A background command's kept output first: the next node has what the last one had read. */
    started.stdout_offset = process->offset[0] - process->kept_size[0];
    started.stderr_offset = process->offset[1] - process->kept_size[1];
    AGENT_SEND_EVENT(request->id, STARTED, started, &started);
    replay(process, 0);
    replay(process, 1);
    if (process->exited) ended(process, process->status); /* what it wrote since, then its exit */
}

static void list_processes(uint64_t id) {
    Hangar__V1__AgentProcess items[MAX_PROCESSES];
    Hangar__V1__AgentProcess *pointers[MAX_PROCESSES];
    size_t count = 0;
    for (int index = 0; index < MAX_PROCESSES; index++) {
        if (!processes[index].used) continue;
        hangar__v1__agent_process__init(&items[count]);
        items[count].pid = (uint32_t)processes[index].pid;
        items[count].n_argv = processes[index].argc;
        items[count].argv = processes[index].argv;
        items[count].background = processes[index].background;
        pointers[count] = &items[count];
        count++;
    }
    Hangar__V1__AgentProcesses list = HANGAR__V1__AGENT_PROCESSES__INIT;
    list.n_processes = count;
    list.processes = pointers;
    AGENT_SEND_EVENT(id, PROCESSES, processes, &list);
}

static void handle(const Hangar__V1__AgentRequest *request) {
    switch (request->op_case) {
    case HANGAR__V1__AGENT_REQUEST__OP_EXEC: return start(request);
    case HANGAR__V1__AGENT_REQUEST__OP_STDIN: return stdin_request(request);
    case HANGAR__V1__AGENT_REQUEST__OP_SIGNAL: return signal_request(request);
    case HANGAR__V1__AGENT_REQUEST__OP_LIST_PROCESSES: return list_processes(request->id);
    case HANGAR__V1__AGENT_REQUEST__OP_REATTACH: return reattach_request(request);
    case HANGAR__V1__AGENT_REQUEST__OP_WATCH: {
        char path[AGENT_MAX_PATH + 1];
        if (agent_normalise_path(request->id, request->watch->path, path) != 0) return;
        return agent_watch_request(request, path);
    }
    case HANGAR__V1__AGENT_REQUEST__OP_UNWATCH: return agent_unwatch_request(request);
    case HANGAR__V1__AGENT_REQUEST__OP_PING: {
        if (request->ping->new_node) forget_requests(); /* nothing of an earlier node's after the Pong */
        Hangar__V1__AgentPong pong = HANGAR__V1__AGENT_PONG__INIT;
        AGENT_SEND_EVENT(request->id, PONG, pong, &pong);
        return;
    }
    case HANGAR__V1__AGENT_REQUEST__OP__NOT_SET:
        return agent_send_error(request->id, HANGAR__V1__AGENT_ERROR__CODE__INVALID, "the request has no operation");
    default: return agent_file_request(request);
    }
}

/* --- input --- */

typedef struct {
    uint8_t *data;
    size_t size;
    size_t capacity;
    uint64_t skipping; /* bytes of an oversized frame still to throw away */
} Input;

/* Handles every complete frame in `input`; keeps the rest. */
static void consume(Input *input) {
    size_t at = 0;
    for (;;) {
        if (input->skipping > 0) {
            size_t drop = input->size - at < input->skipping ? input->size - at : (size_t)input->skipping;
            at += drop;
            input->skipping -= drop;
            if (input->skipping > 0) break;
        }
        if (input->size - at < 4) break;
        const uint8_t *header = input->data + at;
        uint32_t length = (uint32_t)header[0] << 24 | (uint32_t)header[1] << 16 | (uint32_t)header[2] << 8 | header[3];
        if (length > AGENT_MAX_FRAME) {
            agent_send_error(0, HANGAR__V1__AGENT_ERROR__CODE__TOO_LARGE,
                             "a %u-byte frame, more than the %u allowed: skipped", length, AGENT_MAX_FRAME);
            at += 4;
            input->skipping = length;
            continue;
        }
        if (input->size - at - 4 < length) break;
        AgentDecoded decoded = agent_decode_frame(header + 4, length);
        at += 4 + (size_t)length;
        if (!decoded.request) {
            agent_send_error(decoded.id, HANGAR__V1__AGENT_ERROR__CODE__INVALID, "bad frame: %s", decoded.error);
            continue;
        }
        handle(decoded.request);
        agent_free_request(decoded.request);
    }
    memmove(input->data, input->data + at, input->size - at);
    input->size -= at;
}

/* Reads what is available; -1 at EOF (the node closed the channel). */
static int read_input(Input *input) {
    for (;;) {
        if (input->capacity - input->size < 65536) {
            size_t capacity = input->capacity ? input->capacity * 2 : 256 * 1024;
            if (capacity > AGENT_MAX_FRAME + 65536 + 4) capacity = AGENT_MAX_FRAME + 65536 + 4;
            if (capacity > input->capacity) {
                uint8_t *grown = realloc(input->data, capacity);
                if (!grown) _exit(70);
                input->data = grown;
                input->capacity = capacity;
            }
        }
        size_t room = input->capacity - input->size;
        if (room == 0) return 0;
        ssize_t count = read(input_fd, input->data + input->size, room);
        if (count < 0 && errno == EINTR) continue;
        if (count < 0 && errno == EAGAIN) return 0;
        if (count <= 0) return -1;
        input->size += (size_t)count;
        consume(input);
    }
}

/* The node hung up (--listen, --port): forget its requests and watches, keep the commands running. */
static void disconnect(Input *input) {
    if (input_fd >= 0 && input_fd != port_fd) close(input_fd);
    input_fd = output_fd = -1;
    hung_up = 0;
    input->size = 0;
    input->skipping = 0;
    forget_requests();
    disconnected_at = now_ms();
}

/* A node connects (--listen). As pid 1 of the sandbox, only a peer outside its pid namespace (the
 * kernel shows such a peer's pid as 0) is taken: never one of the sandbox's own commands. */
static void accept_node(void) {
    int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) return;
    struct ucred peer;
    socklen_t size = sizeof peer;
    if (!listen_path_mode && getpid() == 1 && (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &peer, &size) != 0 || peer.pid != 0)) {
        close(fd);
        return;
    }
    input_fd = output_fd = fd;
    disconnected_at = 0;
}

/* --listen-path: a listening unix socket of the agent's own at `path`; -1 (said on stderr) if not. */
static int listen_at(const char *path) {
    struct sockaddr_un address = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof address.sun_path) {
        fprintf(stderr, "hangar-sandbox-agent: the socket path %s is too long\n", path);
        return -1;
    }
    strcpy(address.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    unlink(path);
    if (fd < 0 || bind(fd, (struct sockaddr *)&address, sizeof address) != 0 || listen(fd, 4) != 0) {
        fprintf(stderr, "hangar-sandbox-agent: cannot listen at %s: %s\n", path, strerror(errno));
        if (fd >= 0) close(fd);
        return -1;
    }
    return fd;
}

/* --port: whether a node is connected to qemu's end of the port (it polls POLLHUP while none is). */
static int port_connected(void) {
    struct pollfd probe = {.fd = port_fd, .events = POLLIN};
    return poll(&probe, 1, 0) >= 0 && !(probe.revents & POLLHUP);
}

static void end_all(void) {
    for (int index = 0; index < MAX_PROCESSES; index++)
        if (processes[index].used) kill(-processes[index].pid, SIGKILL);
}

static void load_filter(int fd) {
    static uint8_t bytes[65536];
    size_t size = 0;
    for (;;) {
        ssize_t count = read(fd, bytes + size, sizeof bytes - size);
        if (count < 0 && errno == EINTR) continue;
        if (count <= 0) break;
        size += (size_t)count;
        if (size == sizeof bytes) break;
    }
    close(fd);
    if (size == 0 || size % sizeof(struct sock_filter) != 0) {
        fprintf(stderr, "hangar-sandbox-agent: the seccomp filter is %zu bytes, not whole instructions\n", size);
        _exit(2);
    }
    filter.len = (unsigned short)(size / sizeof(struct sock_filter));
    filter.filter = (struct sock_filter *)bytes;
    have_filter = 1;
}

int main(int argc, char **argv) {
    for (int index = 1; index + 1 < argc; index += 2) {
        if (strcmp(argv[index], "--seccomp-file") == 0) {
            int file = open(argv[index + 1], O_RDONLY | O_CLOEXEC);
            if (file < 0) {
                fprintf(stderr, "hangar-sandbox-agent: cannot open %s: %s\n", argv[index + 1], strerror(errno));
                return 2;
            }
            load_filter(file);
            continue;
        }
        if (strcmp(argv[index], "--listen-path") == 0) {
            listen_fd = listen_at(argv[index + 1]);
            if (listen_fd < 0) return 2;
            listen_path_mode = 1;
            continue;
        }
        int fd = atoi(argv[index + 1]);
        if (strcmp(argv[index], "--in") == 0)
            input_fd = fd;
        else if (strcmp(argv[index], "--out") == 0)
            output_fd = fd;
        else if (strcmp(argv[index], "--seccomp") == 0)
            load_filter(fd);
        else if (strcmp(argv[index], "--listen") == 0)
            listen_fd = fd;
        else if (strcmp(argv[index], "--port") == 0)
            port_fd = input_fd = output_fd = fd;
        else if (strcmp(argv[index], "--orphan-ms") == 0)
            orphan_ms = atoll(argv[index + 1]);
        else {
            fprintf(stderr, "usage: hangar-sandbox-agent [--in FD] [--out FD | --listen FD | --listen-path PATH | --port FD] "
                            "[--orphan-ms N] "
                            "[--seccomp FD | --seccomp-file PATH]\n");
            return 2;
        }
    }
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGXFSZ, SIG_IGN); /* a write past RLIMIT_FSIZE fails with EFBIG instead */
    if (listen_fd >= 0) {
        fcntl(listen_fd, F_SETFD, FD_CLOEXEC);
        set_nonblocking(listen_fd);
        input_fd = output_fd = -1;
        disconnected_at = now_ms();
    } else {
        fcntl(input_fd, F_SETFD, FD_CLOEXEC);
        fcntl(output_fd, F_SETFD, FD_CLOEXEC);
        set_nonblocking(input_fd);
    }
    sigset_t children;
    sigemptyset(&children);
    sigaddset(&children, SIGCHLD);
    sigprocmask(SIG_BLOCK, &children, NULL);
    int signals = signalfd(-1, &children, SFD_CLOEXEC | SFD_NONBLOCK);
    if (signals < 0) {
        fprintf(stderr, "hangar-sandbox-agent: signalfd: %s\n", strerror(errno));
        return 1;
    }
    Input input = {0};
    struct pollfd entries[2 + 3 * MAX_PROCESSES + AGENT_MAX_WATCHES];
    Process *owners[2 + 3 * MAX_PROCESSES + AGENT_MAX_WATCHES];
    int kinds[2 + 3 * MAX_PROCESSES + AGENT_MAX_WATCHES];
    for (;;) {
        int count = 0;
        if (hung_up) disconnect(&input);
        if (port_fd >= 0 && output_fd < 0 && port_connected()) {
            /* The next node is there: a waiting port goes on; one whose EOF was never read (the
             * node came back at once) writes again, and that node resynchronises. */
            input_fd = output_fd = port_fd;
            disconnected_at = 0;
        }
        int listening = listen_fd >= 0 && input_fd < 0;
        int waiting = listening || (port_fd >= 0 && input_fd < 0);
        entries[count++] = (struct pollfd){.fd = listening ? listen_fd : input_fd, .events = POLLIN};
        entries[count++] = (struct pollfd){.fd = signals, .events = POLLIN};
        int64_t now = now_ms(), wait = waiting && port_fd >= 0 ? PORT_PROBE_MS : -1;
        if (waiting && orphan_ms > 0) {
            if (now - disconnected_at >= orphan_ms) {
                fprintf(stderr, "hangar-sandbox-agent: no node for %lld ms: ending the sandbox\n", (long long)orphan_ms);
                end_all();
                return 0;
            }
            if (wait < 0 || disconnected_at + orphan_ms - now < wait) wait = disconnected_at + orphan_ms - now;
        }
        for (int index = 0; index < MAX_PROCESSES; index++) {
            Process *process = &processes[index];
            if (!process->used) continue;
            if (process->exited) continue;
            if (process->deadline_ms && !process->timed_out) {
                if (process->deadline_ms <= now) {
                    process->timed_out = 1;
                    kill(-process->pid, SIGKILL);
                    kill(process->pid, SIGKILL);
                } else if (wait < 0 || process->deadline_ms - now < wait) {
                    wait = process->deadline_ms - now;
                }
            }
            for (int stream = 0; stream < 2; stream++) {
                /* An unclaimed command's output waits in its pipe for the next node. */
                if (process->out[stream] < 0 || process->request == 0) continue;
                owners[count] = process;
                kinds[count] = stream;
                entries[count++] = (struct pollfd){.fd = process->out[stream], .events = POLLIN};
            }
            if (process->in >= 0 && process->pending_size > 0) {
                owners[count] = process;
                kinds[count] = 2;
                entries[count++] = (struct pollfd){.fd = process->in, .events = POLLOUT};
            }
        }
        /* Watches: kind WATCH_KIND + their slot. */
        for (int index = 0; index < AGENT_MAX_WATCHES; index++) {
            int fd = agent_watch_fd(index);
            if (fd < 0) continue;
            owners[count] = NULL;
            kinds[count] = WATCH_KIND + index;
            entries[count++] = (struct pollfd){.fd = fd, .events = POLLIN};
        }
        int ready = poll(entries, (nfds_t)count, wait < 0 ? -1 : (int)(wait > 60000 ? 60000 : wait + 1));
        if (ready < 0 && errno != EINTR) {
            fprintf(stderr, "hangar-sandbox-agent: poll: %s\n", strerror(errno));
            return 1;
        }
        if (ready <= 0) continue;
        for (int index = 2; index < count; index++) {
            if (!entries[index].revents) continue;
            if (kinds[index] >= WATCH_KIND) {
                agent_watch_drain(kinds[index] - WATCH_KIND);
                continue;
            }
            if (!owners[index]->used) continue;
            if (kinds[index] == 2)
                feed(owners[index]);
            else
                drain(owners[index], kinds[index]);
        }
        if (entries[1].revents) {
            struct signalfd_siginfo info;
            while (read(signals, &info, sizeof info) > 0) {
            }
            reap();
        }
        if (entries[0].revents && listening) {
            accept_node();
        } else if (entries[0].revents && read_input(&input) != 0) {
            if (listen_fd >= 0 || port_fd >= 0) { /* the node hung up: wait for the next */
                disconnect(&input);
                continue;
            }
            /* The node closed the channel: end every command, then the sandbox. */
            end_all();
            return 0;
        }
    }
}
