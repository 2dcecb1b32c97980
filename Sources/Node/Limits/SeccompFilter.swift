import Glibc

/// The seccomp filter every job runs under, as the classic-BPF program `bwrap --seccomp FD` loads
/// (an array of `struct sock_filter`, native byte order), assembled here without libseccomp.
///
/// Policy: a syscall from another ABI (32-bit x86 or ARM, or x32, whose numbers carry bit 30) is
/// refused; so are the kernel-attack-surface and escape calls in ``SyscallTable`` (ptrace, bpf,
/// io_uring, keyrings, mounts and namespaces, module and kexec loading…); `clone` may not create
/// namespaces, `clone3` reports ENOSYS (its flags sit in memory, out of a filter's reach, and libc
/// falls back to `clone`), and `ioctl` may not push input into a terminal (TIOCSTI) or drive the
/// console (TIOCLINUX). Refused calls fail with EPERM rather than killing the program.
///
/// `socket` and `socketpair` accept only the families in ``allowedSocketFamilies`` (AF_UNIX,
/// AF_INET, AF_INET6, AF_NETLINK); any other (AF_VSOCK, AF_PACKET, AF_KEY, AF_ALG, AF_BLUETOOTH…)
/// fails with EAFNOSUPPORT, as on a kernel built without it. A network namespace does not cover
/// every family: vsock's port space, for one, is machine-wide.
public struct SeccompFilter: Sendable, Equatable {
    /// The program, ready to be written to the descriptor bubblewrap reads.
    public let bytes: [UInt8]
    /// Number of BPF instructions.
    public let count: Int

    /// The filter for the architecture this node was built for.
    /// - Throws: on an architecture without a syscall table here.
    public static func standard() throws(SeccompError) -> SeccompFilter {
        guard let table = SyscallTable.native else {
            throw SeccompError("no seccomp syscall table for this CPU architecture; refusing to run unfiltered jobs")
        }
        return try SeccompFilter(table: table)
    }

    init(table: SyscallTable) throws(SeccompError) {
        var bpf = BPFAssembler()
        bpf.load(SeccompData.architecture)
        bpf.jumpIfEqual(table.auditArchitecture, to: "native")
        bpf.returning(SeccompAction.errno(EPERM))
        bpf.label("native")
        bpf.load(SeccompData.number)
        if let abiBit = table.foreignABIBit { bpf.jumpIfAnySet(abiBit, to: "deny") }
        bpf.jumpIfEqual(table.ioctl, to: "ioctl")
        bpf.jumpIfEqual(table.clone, to: "clone")
        bpf.jumpIfEqual(table.clone3, to: "enosys")
        bpf.jumpIfEqual(table.socket, to: "socket")
        bpf.jumpIfEqual(table.socketpair, to: "socket")
        for number in table.denied.values.sorted() { bpf.jumpIfEqual(number, to: "deny") }
        bpf.returning(SeccompAction.allow)

        // The kernel takes the request as `unsigned int`: compare the low 32 bits only, so setting
        // the high ones cannot sneak past.
        bpf.label("ioctl")
        bpf.load(SeccompData.argumentLow(1))
        bpf.jumpIfEqual(0x5412, to: "deny")  // TIOCSTI
        bpf.jumpIfEqual(0x541C, to: "deny")  // TIOCLINUX
        bpf.returning(SeccompAction.allow)

        bpf.label("clone")
        bpf.load(SeccompData.argumentLow(0))  // clone flags; the kernel uses the low 32 bits
        bpf.jumpIfAnySet(Self.namespaceFlags, to: "deny")
        bpf.returning(SeccompAction.allow)

        // The kernel takes the family as `int`: the low 32 bits decide.
        bpf.label("socket")
        bpf.load(SeccompData.argumentLow(0))
        for family in Self.allowedSocketFamilies { bpf.jumpIfEqual(family, to: "allow") }
        bpf.returning(SeccompAction.errno(EAFNOSUPPORT))
        bpf.label("allow")
        bpf.returning(SeccompAction.allow)

        bpf.label("enosys")
        bpf.returning(SeccompAction.errno(ENOSYS))
        bpf.label("deny")
        bpf.returning(SeccompAction.errno(EPERM))

        let program = try bpf.assemble()
        count = program.count
        bytes = program.flatMap(\.bytes)
    }

    /// The address families `socket` and `socketpair` may create: AF_UNIX (1), AF_INET (2),
    /// AF_INET6 (10) and AF_NETLINK (16, which glibc uses to list interfaces).
    public static let allowedSocketFamilies: [UInt32] = [1, 2, 10, 16]

    /// CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET and NEWTIME.
    static let namespaceFlags: UInt32 =
        0x0002_0000 | 0x0200_0000 | 0x0400_0000 | 0x0800_0000 | 0x1000_0000
        | 0x2000_0000 | 0x4000_0000 | 0x0000_0080
}

/// Why the seccomp filter could not be built.
public struct SeccompError: Error, Sendable, CustomStringConvertible {
    /// What went wrong, for a person.
    public var description: String

    /// An error that reads `description`.
    public init(_ description: String) {
        self.description = description
    }
}

/// Offsets into `struct seccomp_data` { int nr; u32 arch; u64 instruction_pointer; u64 args[6]; }.
private enum SeccompData {
    static let number: UInt32 = 0
    static let architecture: UInt32 = 4

    /// The low 32 bits of argument `index` (little-endian machines only).
    static func argumentLow(_ index: UInt32) -> UInt32 {
        #if _endian(little)
        16 + 8 * index
        #else
        16 + 8 * index + 4
        #endif
    }
}

/// `SECCOMP_RET_*` values.
private enum SeccompAction {
    static let allow: UInt32 = 0x7fff_0000
    static func errno(_ code: Int32) -> UInt32 { 0x0005_0000 | (UInt32(code) & 0xffff) }
}

/// One `struct sock_filter`.
struct BPFInstruction: Equatable {
    var code: UInt16
    var jumpTrue: UInt8
    var jumpFalse: UInt8
    var k: UInt32

    /// The 8 bytes of the struct in native byte order.
    var bytes: [UInt8] {
        withUnsafeBytes(of: code) { Array($0) } + [jumpTrue, jumpFalse] + withUnsafeBytes(of: k) { Array($0) }
    }
}

/// Builds a straight-line classic-BPF program whose conditional jumps go forward to named labels.
private struct BPFAssembler {
    private enum Target {
        case next
        case label(String)
    }

    private struct Pending {
        var code: UInt16
        var k: UInt32
        var jumpTrue: Target
        var jumpFalse: Target
    }

    private var pending: [Pending] = []
    private var labels: [String: Int] = [:]

    // BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, BPF_JMP|BPF_JSET|BPF_K, BPF_RET|BPF_K
    private static let loadWord: UInt16 = 0x20
    private static let jumpEqual: UInt16 = 0x15
    private static let jumpSet: UInt16 = 0x45
    private static let returnConstant: UInt16 = 0x06

    mutating func label(_ name: String) { labels[name] = pending.count }

    mutating func load(_ offset: UInt32) {
        pending.append(Pending(code: Self.loadWord, k: offset, jumpTrue: .next, jumpFalse: .next))
    }

    mutating func jumpIfEqual(_ value: UInt32, to label: String) {
        pending.append(Pending(code: Self.jumpEqual, k: value, jumpTrue: .label(label), jumpFalse: .next))
    }

    mutating func jumpIfAnySet(_ bits: UInt32, to label: String) {
        pending.append(Pending(code: Self.jumpSet, k: bits, jumpTrue: .label(label), jumpFalse: .next))
    }

    mutating func returning(_ action: UInt32) {
        pending.append(Pending(code: Self.returnConstant, k: action, jumpTrue: .next, jumpFalse: .next))
    }

    /// Resolves the labels; jumps may only go forward, at most 255 instructions.
    func assemble() throws(SeccompError) -> [BPFInstruction] {
        var program: [BPFInstruction] = []
        for (index, step) in pending.enumerated() {
            program.append(
                BPFInstruction(
                    code: step.code,
                    jumpTrue: try offset(step.jumpTrue, from: index),
                    jumpFalse: try offset(step.jumpFalse, from: index),
                    k: step.k
                )
            )
        }
        guard program.count <= 4096 else { throw SeccompError("seccomp program too long (\(program.count))") }
        return program
    }

    private func offset(_ target: Target, from index: Int) throws(SeccompError) -> UInt8 {
        guard case .label(let name) = target else { return 0 }
        guard let position = labels[name] else { throw SeccompError("seccomp label \(name) is undefined") }
        let distance = position - index - 1
        guard (0...255).contains(distance) else {
            throw SeccompError("seccomp jump to \(name) spans \(distance) instructions")
        }
        return UInt8(distance)
    }
}
