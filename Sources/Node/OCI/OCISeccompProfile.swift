/// Hangar's default seccomp profile, modelled on Docker's default: every system call fails with
/// `EPERM` unless it is on the allowlist below. The allowlist is what Docker grants a container
/// holding no capabilities (the calls Docker gates on `CAP_SYS_ADMIN`, `CAP_SYS_PTRACE`,
/// `CAP_SYS_CHROOT`, … are absent because Hangar drops every capability), minus `ptrace`,
/// `process_vm_readv`/`process_vm_writev` and the `io_uring` calls, which Hangar denies outright.
///
/// `socket` and `socketpair` are allowed only for the families in
/// ``SeccompFilter/allowedSocketFamilies`` (AF_UNIX, AF_INET, AF_INET6, AF_NETLINK); every other
/// family fails with EAFNOSUPPORT under runc. gVisor ignores `errnoRet`, so there it is EPERM.
///
/// Only the x86_64 ABI is listed, so 32-bit (`int 0x80`) and x32 system calls are refused.
/// Names the host's libseccomp does not know yet (calls newer than it) are skipped by runc.
enum OCISeccompProfile {
    static let errnoEPERM: UInt32 = 1
    static let errnoENOSYS: UInt32 = 38
    static let errnoEAFNOSUPPORT: UInt32 = 97

    /// `CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID |
    /// CLONE_NEWNET`: `clone` is allowed only without them, as in Docker's profile.
    static let namespaceCloneFlags: UInt64 = 0x7E02_0000

    /// `personality` values Docker allows: PER_LINUX, UNAME26, ADDR_NO_RANDOMIZE combinations and
    /// the query value 0xffffffff.
    static let personalities: [UInt64] = [0x0, 0x0008, 0x20000, 0x20008, 0xFFFF_FFFF]

    /// The profile as it goes into `config.json`.
    ///
    /// `allowingClone3`: gVisor (runsc 20221219) ignores `errnoRet` and fails a refused `clone3`
    /// with EPERM, after which glibc does not fall back to `clone` and no thread can start. Under
    /// gVisor the call reaches the sentry, not the host kernel, and the sentry does not implement
    /// it (ENOSYS), so letting it through restores the fallback without giving the job anything.
    static func seccomp(allowingClone3: Bool = false) -> OCISeccomp {
        var rules = [OCISyscallRule(names: allowed, action: "SCMP_ACT_ALLOW")]
        for persona in personalities {
            rules.append(
                OCISyscallRule(
                    names: ["personality"],
                    action: "SCMP_ACT_ALLOW",
                    args: [OCISyscallArgument(index: 0, value: persona, op: "SCMP_CMP_EQ")]
                )
            )
        }
        rules.append(
            OCISyscallRule(
                names: ["clone"],
                action: "SCMP_ACT_ALLOW",
                args: [
                    OCISyscallArgument(index: 0, value: namespaceCloneFlags, valueTwo: 0, op: "SCMP_CMP_MASKED_EQ")
                ]
            )
        )
        rules += socketRules
        // clone3 passes its flags in memory, where seccomp cannot look: make it "not implemented" so
        // libc falls back to clone, whose flags are checked above.
        rules.append(
            allowingClone3
                ? OCISyscallRule(names: ["clone3"], action: "SCMP_ACT_ALLOW")
                : OCISyscallRule(names: ["clone3"], action: "SCMP_ACT_ERRNO", errnoRet: errnoENOSYS)
        )
        return OCISeccomp(
            defaultAction: "SCMP_ACT_ERRNO",
            defaultErrnoRet: errnoEPERM,
            architectures: ["SCMP_ARCH_X86_64"],
            syscalls: rules
        )
    }

    /// `socket` and `socketpair` for the allowed families, and EAFNOSUPPORT for every other one.
    /// libseccomp takes one comparison per argument and rule, so the refused families are the gaps
    /// between the allowed ones and everything above the highest (64-bit comparisons: a value with
    /// high bits set is above it too).
    static var socketRules: [OCISyscallRule] {
        let allowed = SeccompFilter.allowedSocketFamilies.map(UInt64.init)
        let highest = allowed.max() ?? 0
        var rules: [OCISyscallRule] = []
        for name in ["socket", "socketpair"] {
            for family in allowed {
                rules.append(
                    OCISyscallRule(
                        names: [name],
                        action: "SCMP_ACT_ALLOW",
                        args: [OCISyscallArgument(index: 0, value: family, op: "SCMP_CMP_EQ")]
                    )
                )
            }
            for family in UInt64(0)..<highest where !allowed.contains(family) {
                rules.append(
                    OCISyscallRule(
                        names: [name],
                        action: "SCMP_ACT_ERRNO",
                        errnoRet: errnoEAFNOSUPPORT,
                        args: [OCISyscallArgument(index: 0, value: family, op: "SCMP_CMP_EQ")]
                    )
                )
            }
            rules.append(
                OCISyscallRule(
                    names: [name],
                    action: "SCMP_ACT_ERRNO",
                    errnoRet: errnoEAFNOSUPPORT,
                    args: [OCISyscallArgument(index: 0, value: highest, op: "SCMP_CMP_GT")]
                )
            )
        }
        return rules
    }

    /// System calls allowed unconditionally.
    static let allowed: [String] = [
        "accept", "accept4", "access", "adjtimex", "alarm", "arch_prctl", "bind", "brk", "cachestat", "capget",
        "capset", "chdir", "chmod", "chown", "clock_adjtime", "clock_getres", "clock_gettime", "clock_nanosleep",
        "close", "close_range", "connect", "copy_file_range", "creat", "dup", "dup2", "dup3", "epoll_create",
        "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait", "epoll_pwait2", "epoll_wait", "epoll_wait_old",
        "eventfd", "eventfd2", "execve", "execveat", "exit", "exit_group", "faccessat", "faccessat2", "fadvise64",
        "fallocate", "fanotify_mark", "fchdir", "fchmod", "fchmodat", "fchmodat2", "fchown", "fchownat", "fcntl",
        "fdatasync", "fgetxattr", "flistxattr", "flock", "fork", "fremovexattr", "fsetxattr", "fstat", "fstatfs",
        "fsync", "ftruncate", "futex", "futex_requeue", "futex_wait", "futex_waitv", "futex_wake", "futimesat",
        "get_robust_list", "get_thread_area", "getcpu", "getcwd", "getdents", "getdents64", "getegid", "geteuid",
        "getgid", "getgroups", "getitimer", "getpeername", "getpgid", "getpgrp", "getpid", "getppid", "getpriority",
        "getrandom", "getresgid", "getresuid", "getrlimit", "getrusage", "getsid", "getsockname", "getsockopt",
        "gettid", "gettimeofday", "getuid", "getxattr", "inotify_add_watch", "inotify_init", "inotify_init1",
        "inotify_rm_watch", "io_cancel", "io_destroy", "io_getevents", "io_pgetevents", "io_setup", "io_submit",
        "ioctl", "ioprio_get", "ioprio_set", "kill", "landlock_add_rule", "landlock_create_ruleset",
        "landlock_restrict_self", "lchown", "lgetxattr", "link", "linkat", "listen", "listxattr", "llistxattr",
        "lremovexattr", "lseek", "lsetxattr", "lstat", "madvise", "map_shadow_stack", "membarrier", "memfd_create",
        "memfd_secret", "mincore", "mkdir", "mkdirat", "mknod", "mknodat", "mlock", "mlock2", "mlockall", "mmap",
        "modify_ldt", "mprotect", "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive", "mq_timedsend",
        "mq_unlink", "mremap", "msgctl", "msgget", "msgrcv", "msgsnd", "msync", "munlock", "munlockall", "munmap",
        "name_to_handle_at", "nanosleep", "newfstatat", "open", "openat", "openat2", "pause", "pidfd_open",
        "pidfd_send_signal", "pipe", "pipe2", "pkey_alloc", "pkey_free", "pkey_mprotect", "poll", "ppoll", "prctl",
        "pread64", "preadv", "preadv2", "prlimit64", "process_mrelease", "pselect6", "pwrite64", "pwritev",
        "pwritev2", "read", "readahead", "readlink", "readlinkat", "readv", "recvfrom", "recvmmsg", "recvmsg",
        "remap_file_pages", "removexattr", "rename", "renameat", "renameat2", "restart_syscall", "rmdir", "rseq",
        "rt_sigaction", "rt_sigpending", "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend",
        "rt_sigtimedwait", "rt_tgsigqueueinfo", "sched_get_priority_max", "sched_get_priority_min",
        "sched_getaffinity", "sched_getattr", "sched_getparam", "sched_getscheduler", "sched_rr_get_interval",
        "sched_setaffinity", "sched_setattr", "sched_setparam", "sched_setscheduler", "sched_yield", "seccomp",
        "select", "semctl", "semget", "semop", "semtimedop", "sendfile", "sendmmsg", "sendmsg", "sendto",
        "set_robust_list", "set_thread_area", "set_tid_address", "setfsgid", "setfsuid", "setgid", "setgroups",
        "setitimer", "setpgid", "setpriority", "setregid", "setresgid", "setresuid", "setreuid", "setrlimit",
        "setsid", "setsockopt", "setuid", "setxattr", "shmat", "shmctl", "shmdt", "shmget", "shutdown",
        "sigaltstack", "signalfd", "signalfd4", "splice", "stat", "statfs", "statx",
        "symlink", "symlinkat", "sync", "sync_file_range", "syncfs", "sysinfo", "tee", "tgkill", "time",
        "timer_create", "timer_delete", "timer_getoverrun", "timer_gettime", "timer_settime", "timerfd_create",
        "timerfd_gettime", "timerfd_settime", "times", "tkill", "truncate", "umask", "uname", "unlink", "unlinkat",
        "utime", "utimensat", "utimes", "vfork", "vmsplice", "wait4", "waitid", "write", "writev",
    ]
}
