import Foundation
import Glibc
import HangarShared
import Logging
import Testing

@testable import HangarNode

// Issue 14, item 5: a network namespace does not cover every socket family (AF_VSOCK's port space
// is machine-wide), so both seccomp filters allow only AF_UNIX, AF_INET, AF_INET6 and AF_NETLINK.
private typealias H = Hostile

@Suite("Socket families: only UNIX, INET, INET6 and NETLINK in every runtime", .serialized)
struct SocketFamilyTests {
    /// Families refused by both seccomp filters (AF_VSOCK's port space is machine-wide, not per
    /// network namespace), with a socket type each could otherwise be created with.
    static let refused: [(name: String, family: Int, type: Int, proto: Int)] = [
        ("AF_VSOCK", 40, 1, 0), ("AF_PACKET", 17, 2, 0), ("AF_ALG", 38, 5, 0), ("AF_KEY", 15, 3, 2),
        ("AF_BLUETOOTH", 31, 1, 0), ("AF_TIPC", 30, 2, 0),
    ]

    @Test("only AF_UNIX, AF_INET, AF_INET6 and AF_NETLINK sockets can be made", arguments: HostileRuntime.allCases)
    func socketFamilies(kind: HostileRuntime) async {
        let families = Self.refused.map { "('\($0.name)', \($0.family), \($0.type), \($0.proto))" }
        let script = """
            import errno, socket
            for name, family, kind, proto in (\(families.joined(separator: ", ")),):
                try:
                    socket.socket(family, kind, proto).close()
                    print(name, 'open')
                except OSError as error:
                    print(name, 'refused', errno.errorcode.get(error.errno, error.errno))
            try:
                socket.socketpair(40, socket.SOCK_STREAM)
                print('socketpair-vsock open')
            except OSError as error:
                print('socketpair-vsock refused', errno.errorcode.get(error.errno, error.errno))
            a, b = socket.socketpair(socket.AF_UNIX)
            a.sendall(b'u')
            print('AF_UNIX', b.recv(1).decode())
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            u.bind(('127.0.0.1', 0))
            u.sendto(b'4', u.getsockname())
            print('AF_INET', u.recv(1).decode())
            socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).close()
            print('AF_INET6 6')
            n = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
            n.bind((0, 0))
            print('AF_NETLINK n')
            """
        let run = await H.python(kind, "families", script)
        #expect(run.outcome.status == .succeeded, "\(run.summary)")
        for family in Self.refused.map(\.name) + ["socketpair-vsock"] {
            let result = run.field(family)
            // runc and the process runtime's own filter answer EAFNOSUPPORT; gVisor ignores the
            // profile's errno and answers EPERM (or its own EAFNOSUPPORT for what it lacks).
            if kind == .gvisor {
                #expect(result?.first == "refused", "\(family): \(run.summary)")
            } else {
                #expect(result == ["refused", "EAFNOSUPPORT"], "\(family): \(run.summary)")
            }
        }
        #expect(run.field("AF_UNIX") == ["u"], "\(run.summary)")
        #expect(run.field("AF_INET") == ["4"], "\(run.summary)")
        #expect(run.field("AF_INET6") == ["6"], "\(run.summary)")
        #expect(run.field("AF_NETLINK") == ["n"], "\(run.summary)")
    }
}
