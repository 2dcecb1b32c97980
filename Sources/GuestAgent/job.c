/* One job: parsing the JOB frame, the scratch /tmp, the cgroup, running it and reporting. */
#define _GNU_SOURCE
#include "agent.h"

static void *grow(void *array, size_t count, size_t size) {
    void *bigger = realloc(array, (count + 2) * size);
    if (!bigger) fail(KIND_ERROR, "guest: out of memory reading the job");
    return bigger;
}

static char *copy_string(const uint8_t *value, uint32_t length) {
    if (memchr(value, 0, length)) fail(KIND_ERROR, "guest: a string in the job contains a NUL byte");
    char *s = malloc(length + 1);
    if (!s) fail(KIND_ERROR, "guest: out of memory reading the job");
    memcpy(s, value, length);
    s[length] = 0;
    return s;
}

void parse_job(const uint8_t *data, size_t length, struct job *job) {
    memset(job, 0, sizeof *job);
    int have_limits = 0;
    size_t offset = 0;
    while (offset < length) {
        if (length - offset < 5) fail(KIND_ERROR, "guest: truncated job field");
        uint8_t tag = data[offset];
        uint32_t size = get32(data + offset + 1);
        offset += 5;
        if (size > length - offset) fail(KIND_ERROR, "guest: job field longer than the job");
        const uint8_t *value = data + offset;
        offset += size;
        switch (tag) {
        case FIELD_ARGV:
            job->argv = grow(job->argv, job->argc, sizeof(char *));
            job->argv[job->argc++] = copy_string(value, size);
            job->argv[job->argc] = NULL;
            break;
        case FIELD_ENV:
            job->env = grow(job->env, job->envc, sizeof(char *));
            job->env[job->envc++] = copy_string(value, size);
            job->env[job->envc] = NULL;
            break;
        case FIELD_CWD: job->cwd = copy_string(value, size); break;
        case FIELD_STDIN:
            job->stdin_data = value;
            job->stdin_length = size;
            break;
        case FIELD_FILE: {
            if (size < 8) fail(KIND_ERROR, "guest: truncated file field");
            struct file_in file = {.mode = get32(value), .path_length = get32(value + 4)};
            if (file.path_length == 0 || file.path_length > size - 8) fail(KIND_ERROR, "guest: bad file path length");
            file.path = copy_string(value + 8, file.path_length);
            file.content = value + 8 + file.path_length;
            file.length = size - 8 - file.path_length;
            job->files = grow(job->files, job->filec, sizeof(struct file_in));
            job->files[job->filec++] = file;
            break;
        }
        case FIELD_LIMITS: {
            if (size != 9 * 8) fail(KIND_ERROR, "guest: limits field has %u bytes, not 72", size);
            uint64_t *fields = &job->limits.timeout_ms;
            for (int i = 0; i < 9; i++) fields[i] = get64(value + 8 * i);
            have_limits = 1;
            break;
        }
        default: fail(KIND_ERROR, "guest: unknown job field %u", tag);
        }
    }
    if (job->argc == 0) fail(KIND_ERROR, "guest: the job has no argv");
    if (!have_limits) fail(KIND_ERROR, "guest: the job has no limits");
    if (!job->cwd) job->cwd = "/tmp";
    if (!job->env) {
        job->env = grow(NULL, 0, sizeof(char *));
        job->env[0] = NULL;
    }
}

static void make_parents(char *path) {
    for (char *slash = strchr(path + 1, '/'); slash; slash = strchr(slash + 1, '/')) {
        *slash = 0;
        if (mkdir(path, 0755) == 0) chown(path, SANDBOX_ID, SANDBOX_ID);
        *slash = '/';
    }
}

/* The private /tmp (size-bounded tmpfs), the working directory and the job's files. */
static void prepare_scratch(const struct job *job) {
    char options[64];
    snprintf(options, sizeof options, "size=%llu,mode=1777", (unsigned long long)job->limits.file_size_bytes);
    if (mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, options) != 0)
        fail(KIND_ERROR, "guest: cannot mount /tmp: %s", strerror(errno));
    if (strncmp(job->cwd, "/tmp/", 5) == 0) {
        char *path = malloc(strlen(job->cwd) + 2);
        sprintf(path, "%s/", job->cwd);
        make_parents(path);
        free(path);
    }
    for (size_t i = 0; i < job->filec; i++) {
        const struct file_in *file = &job->files[i];
        if (file->path[0] == '/' || strstr(file->path, ".."))
            fail(KIND_FAILED_TO_START, "file path \"%s\" must be relative, without \"..\"", file->path);
        char *path = malloc(strlen(job->cwd) + file->path_length + 2);
        sprintf(path, "%s/%s", job->cwd, file->path);
        make_parents(path);
        mode_t mode = file->mode ? (file->mode & 0777) : 0644;
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode);
        if (fd < 0 || write_all(fd, file->content, file->length) != 0)
            fail(KIND_FAILED_TO_START, "cannot write file %s: %s", file->path, strerror(errno));
        fchown(fd, SANDBOX_ID, SANDBOX_ID);
        fchmod(fd, mode);
        close(fd);
        free(path);
    }
}

/* The job's cgroup: memory (no swap in the VM), pids, CPU bandwidth. */
static void prepare_cgroup(const struct job *job) {
    write_file("/sys/fs/cgroup/cgroup.subtree_control", "+memory +pids +cpu");
    if (mkdir(CGROUP, 0755) != 0 && errno != EEXIST)
        fail(KIND_ERROR, "guest: cannot create the job cgroup: %s", strerror(errno));
    char value[64];
    snprintf(value, sizeof value, "%llu", (unsigned long long)job->limits.memory_bytes);
    if (write_file(CGROUP "/memory.max", value) != 0)
        fail(KIND_ERROR, "guest: cannot set memory.max: %s", strerror(errno));
    write_file(CGROUP "/memory.swap.max", "0");
    snprintf(value, sizeof value, "%llu", (unsigned long long)job->limits.pids);
    if (write_file(CGROUP "/pids.max", value) != 0)
        fail(KIND_ERROR, "guest: cannot set pids.max: %s", strerror(errno));
    snprintf(value, sizeof value, "%llu 100000", (unsigned long long)job->limits.cpu_millis * 100);
    write_file(CGROUP "/cpu.max", value);
}

static void kill_job(pid_t child) {
    write_file(CGROUP "/cgroup.kill", "1");
    kill(-child, SIGKILL);
    kill(child, SIGKILL);
}

/* In the child: join the cgroup, drop to 65534 with the rlimits, exec. Failures go to stderr. */
static void exec_child(const struct job *job, int in, int out, int err, int status_pipe) {
    setsid();
    char pid[32];
    snprintf(pid, sizeof pid, "%d", getpid());
    if (write_file(CGROUP "/cgroup.procs", pid) != 0) goto failed;
    dup2(in, 0);
    dup2(out, 1);
    dup2(err, 2);
    struct rlimit core = {0, 0};
    struct rlimit files = {job->limits.open_files, job->limits.open_files};
    struct rlimit size = {job->limits.file_size_bytes, job->limits.file_size_bytes};
    setrlimit(RLIMIT_CORE, &core);
    if (setrlimit(RLIMIT_NOFILE, &files) != 0 || setrlimit(RLIMIT_FSIZE, &size) != 0) goto failed;
    if (chdir(job->cwd) != 0) goto failed;
    gid_t group = SANDBOX_ID;
    if (setgroups(1, &group) != 0 || setgid(SANDBOX_ID) != 0 || setuid(SANDBOX_ID) != 0) goto failed;
    signal(SIGPIPE, SIG_DFL);
    environ = job->env;
    execvp(job->argv[0], job->argv);
    /* As every runtime reports it: 127 for a program that is not there, 126 for one that cannot be
     * executed, with Hangar's message on the job's stderr (the host takes it as the message). */
    int exec_error = errno;
    int missing = exec_error == ENOENT || exec_error == ENOTDIR;
    dprintf(2, missing ? "hangar: command not found in the sandbox: %s\n"
                       : "hangar: permission denied (not executable) in the sandbox: %s\n",
            job->argv[0]);
    write_all(status_pipe, &exec_error, sizeof exec_error);
    _exit(missing ? 127 : 126);
failed:; /* before the exec: 125, so that 126 and 127 mean only the above */
    int error = errno;
    write_all(status_pipe, &error, sizeof error);
    _exit(125);
}

struct stream {
    int fd;
    uint8_t frame;
    uint64_t total;
    uint64_t sent;
};

/* Reads what the stream has and forwards up to the cap; 1 when the stream went over the cap. */
static int pump(struct stream *s, uint64_t cap) {
    static uint8_t buffer[CHUNK_MAX];
    ssize_t n = read(s->fd, buffer, sizeof buffer);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return 0;
    if (n <= 0) {
        close(s->fd);
        s->fd = -1;
        return 0;
    }
    s->total += (uint64_t)n;
    if (s->sent < cap) {
        uint64_t room = cap - s->sent;
        uint32_t count = (uint64_t)n < room ? (uint32_t)n : (uint32_t)room;
        send_frame(s->frame, buffer, count);
        s->sent += count;
    }
    return s->total > cap;
}

void run_job(const struct job *job) {
    prepare_scratch(job);
    mount_share();
    prepare_cgroup(job);
    int in[2], out[2], err[2], status[2];
    if (pipe2(in, O_CLOEXEC) || pipe2(out, O_CLOEXEC) || pipe2(err, O_CLOEXEC) || pipe2(status, O_CLOEXEC))
        fail(KIND_ERROR, "guest: pipe: %s", strerror(errno));
    uint64_t started = now_ms();
    pid_t child = fork();
    if (child < 0) fail(KIND_ERROR, "guest: fork: %s", strerror(errno));
    if (child == 0) exec_child(job, in[0], out[1], err[1], status[1]);
    close(in[0]);
    close(out[1]);
    close(err[1]);
    close(status[1]);
    int exec_error = 0;
    if (read_all(status[0], &exec_error, sizeof exec_error) != 0) exec_error = 0; /* EOF: exec worked */
    close(status[0]);

    struct report r;
    memset(&r, 0, sizeof r);
    struct stream streams[2] = {{out[0], FRAME_STDOUT, 0, 0}, {err[0], FRAME_STDERR, 0, 0}};
    fcntl(out[0], F_SETFL, O_NONBLOCK);
    fcntl(err[0], F_SETFL, O_NONBLOCK);
    fcntl(in[1], F_SETFL, O_NONBLOCK);
    int stdin_fd = in[1];
    size_t stdin_offset = 0;
    if (job->stdin_length == 0) {
        close(stdin_fd);
        stdin_fd = -1;
    }
    uint64_t deadline = started + job->limits.timeout_ms;
    int killed = -1, exited = 0, wait_status = 0;
    uint64_t drain_until = 0;
    while (1) {
        uint64_t now = now_ms();
        if (!exited) {
            pid_t done = waitpid(child, &wait_status, WNOHANG);
            if (done == child) {
                exited = 1;
                r.run_ms = now - started;
                kill_job(child); /* nothing the job started outlives it */
                drain_until = now + 1000;
            }
        }
        if (!exited && killed < 0) {
            if (now >= deadline) killed = KIND_TIMED_OUT;
            else if (job->limits.cpu_time_ms &&
                     read_keyed(CGROUP "/cpu.stat", "usage_usec") >= job->limits.cpu_time_ms * 1000)
                killed = KIND_CPU_TIME;
            if (killed >= 0) kill_job(child);
        }
        if (exited && streams[0].fd < 0 && streams[1].fd < 0) break;
        if (drain_until && now >= drain_until) break;
        struct pollfd fds[3] = {
            {streams[0].fd, POLLIN, 0}, {streams[1].fd, POLLIN, 0}, {stdin_fd, POLLOUT, 0}};
        poll(fds, 3, 20);
        for (int i = 0; i < 2; i++) {
            if (fds[i].revents && streams[i].fd >= 0 && pump(&streams[i], job->limits.output_bytes) &&
                killed < 0 && !exited) {
                killed = KIND_OUTPUT_LIMIT;
                kill_job(child);
            }
        }
        if (stdin_fd >= 0 && fds[2].revents) {
            ssize_t n = write(stdin_fd, job->stdin_data + stdin_offset, job->stdin_length - stdin_offset);
            if (n > 0) stdin_offset += (size_t)n;
            if ((n < 0 && errno != EAGAIN && errno != EINTR) || stdin_offset >= job->stdin_length) {
                close(stdin_fd);
                stdin_fd = -1;
            }
        }
    }
    if (!exited) {
        kill_job(child);
        waitpid(child, &wait_status, 0);
        r.run_ms = now_ms() - started;
    }
    r.out_bytes = streams[0].total;
    r.err_bytes = streams[1].total;
    r.cpu_us = read_keyed(CGROUP "/cpu.stat", "usage_usec");
    r.peak = read_number(CGROUP "/memory.peak");
    r.oom_kills = read_keyed(CGROUP "/memory.events", "oom_kill");
    r.pids_hits = read_keyed(CGROUP "/pids.events", "max");
    if (WIFEXITED(wait_status)) r.code = (uint32_t)WEXITSTATUS(wait_status);
    if (WIFSIGNALED(wait_status)) r.signal = (uint32_t)WTERMSIG(wait_status);
    if (exec_error) {
        r.kind = KIND_FAILED_TO_START;
        if (WIFEXITED(wait_status) && WEXITSTATUS(wait_status) == 127)
            snprintf(r.message, sizeof r.message, "hangar: command not found in the sandbox: %s", job->argv[0]);
        else if (WIFEXITED(wait_status) && WEXITSTATUS(wait_status) == 126)
            snprintf(r.message, sizeof r.message, "hangar: permission denied (not executable) in the sandbox: %s",
                     job->argv[0]);
        else
            snprintf(r.message, sizeof r.message, "cannot run %s: %s", job->argv[0], strerror(exec_error));
    } else if (killed >= 0) {
        r.kind = (uint32_t)killed;
    } else if (r.oom_kills > 0 && !(WIFEXITED(wait_status) && WEXITSTATUS(wait_status) == 0)) {
        r.kind = KIND_OOM;
    } else {
        r.kind = WIFSIGNALED(wait_status) ? KIND_SIGNALED : KIND_EXITED;
    }
    send_exit(&r);
}

