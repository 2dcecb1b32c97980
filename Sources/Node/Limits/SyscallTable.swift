/// The syscall numbers the seccomp filter needs, for one architecture. Numbers are from the
/// kernel's `asm/unistd_64.h` (x86_64) and `asm-generic/unistd.h` (aarch64).
struct SyscallTable: Sendable {
    /// `AUDIT_ARCH_*` of the native ABI.
    var auditArchitecture: UInt32
    /// A bit that marks another ABI's syscall numbers under the same audit architecture
    /// (`__X32_SYSCALL_BIT` on x86_64).
    var foreignABIBit: UInt32?
    var ioctl: UInt32
    var clone: UInt32
    var clone3: UInt32
    /// `socket` and `socketpair`, whose first argument (the address family) is checked.
    var socket: UInt32
    var socketpair: UInt32
    /// Refused outright, by name.
    var denied: [String: UInt32]

    #if arch(x86_64)
    static let native: SyscallTable? = x86_64
    #elseif arch(arm64)
    static let native: SyscallTable? = aarch64
    #else
    static let native: SyscallTable? = nil
    #endif

    static let x86_64 = SyscallTable(
        auditArchitecture: 0xC000_003E,  // EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE
        foreignABIBit: 0x4000_0000,
        ioctl: 16,
        clone: 56,
        clone3: 435,
        socket: 41,
        socketpair: 53,
        denied: [
            "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "kcmp": 312, "pidfd_getfd": 438,
            "bpf": 321, "perf_event_open": 298, "userfaultfd": 323,
            "keyctl": 250, "add_key": 248, "request_key": 249,
            "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
            "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161, "unshare": 272, "setns": 308,
            "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
            "mount_setattr": 442,
            "kexec_load": 246, "kexec_file_load": 320, "init_module": 175, "finit_module": 313,
            "delete_module": 176, "reboot": 169, "swapon": 167, "swapoff": 168,
            "open_by_handle_at": 304, "name_to_handle_at": 303,
            "acct": 163, "quotactl": 179, "quotactl_fd": 443, "syslog": 103, "lookup_dcookie": 212,
            "iopl": 172, "ioperm": 173, "uselib": 134, "vhangup": 153,
            "settimeofday": 164, "clock_settime": 227,
        ]
    )

    static let aarch64 = SyscallTable(
        auditArchitecture: 0xC000_00B7,  // EM_AARCH64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE
        foreignABIBit: nil,  // 32-bit ARM syscalls come with AUDIT_ARCH_ARM and fail the arch check
        ioctl: 29,
        clone: 220,
        clone3: 435,
        socket: 198,
        socketpair: 199,
        denied: [
            "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "kcmp": 272, "pidfd_getfd": 438,
            "bpf": 280, "perf_event_open": 241, "userfaultfd": 282,
            "keyctl": 219, "add_key": 217, "request_key": 218,
            "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
            "mount": 40, "umount2": 39, "pivot_root": 41, "chroot": 51, "unshare": 97, "setns": 268,
            "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
            "mount_setattr": 442,
            "kexec_load": 104, "kexec_file_load": 294, "init_module": 105, "finit_module": 273,
            "delete_module": 106, "reboot": 142, "swapon": 224, "swapoff": 225,
            "open_by_handle_at": 265, "name_to_handle_at": 264,
            "acct": 89, "quotactl": 60, "quotactl_fd": 443, "syslog": 116, "lookup_dcookie": 18,
            "vhangup": 58, "settimeofday": 170, "clock_settime": 112,
        ]
    )
}
