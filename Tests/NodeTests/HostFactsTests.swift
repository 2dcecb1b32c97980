import Foundation
import Glibc
import HangarShared
import Logging
import Testing

@testable import HangarNode

// Issue 14, item 9: what a job on the `host` template can learn about the host: synthetic accounts
// and host names, the OCI spec's masked paths plus the kernel command line and block devices, and
// nothing that names the node's bundle directory.
private typealias H = Hostile

@Suite("Host facts: a job sees a synthetic /etc and no kernel or bundle details", .serialized)
struct HostFactsTests {
    @Test(
        "a job sees synthetic accounts and hosts, no kernel command line, block devices or bundle path",
        arguments: HostileRuntime.allCases
    )
    func hostFacts(kind: HostileRuntime) async throws {
        let script = """
            echo passwd; cat /etc/passwd; echo group; cat /etc/group; echo hosts; cat /etc/hosts
            echo resolv; cat /etc/resolv.conf; echo end
            echo "whoami $(id -un) $(id -gn)"
            echo "cmdline $(cat /proc/cmdline 2>/dev/null | wc -c)"
            echo "block $(ls -A /sys/block 2>/dev/null | wc -l)"
            echo "keys $(cat /proc/keys 2>/dev/null | wc -c)"
            echo "timerlist $(cat /proc/timer_list 2>/dev/null | wc -c)"
            echo "procfs $(touch /proc/fs/x 2>/dev/null && echo writable || echo readonly)"
            echo mountinfo; cat /proc/self/mountinfo; echo env; env; echo cwd; pwd
            """
        let run = await H.shell(kind, "facts", script)
        #expect(run.outcome.status == .succeeded, "\(run.summary)")
        func section(_ name: String, until next: String) -> [String] {
            guard let start = run.lines.firstIndex(of: name) else { return [] }
            let end = run.lines[start...].firstIndex(of: next) ?? run.lines.endIndex
            return Array(run.lines[(start + 1)..<end])
        }
        #expect(
            section("passwd", until: "group") == [
                "root:x:0:0:root:/root:/bin/bash", "user:x:65534:65534:user:/home/user:/bin/bash",
            ],
            "\(run.summary)"
        )
        #expect(section("group", until: "hosts") == ["root:x:0:", "user:x:65534:"], "\(run.summary)")
        let hosts = section("hosts", until: "resolv")
        #expect(hosts == ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"], "\(run.summary)")
        #expect(section("resolv", until: "end") == [], "\(run.summary)")
        #expect(run.field("whoami") == ["user", "user"], "\(run.summary)")
        #expect(run.field("block") == ["0"], "\(run.summary)")
        #expect(run.field("procfs") == ["readonly"], "\(run.summary)")
        if kind == .gvisor {
            // gVisor's /proc is the sentry's own: its command line is not the host's.
            let host = try String(contentsOfFile: "/proc/cmdline", encoding: .utf8)
            #expect(!run.stdout.contains(host.trimmingCharacters(in: .whitespacesAndNewlines)), "\(run.summary)")
        } else {
            #expect(run.field("cmdline") == ["0"], "\(run.summary)")
            #expect(run.field("keys") == ["0"], "\(run.summary)")
            #expect(run.field("timerlist") == ["0"], "\(run.summary)")
        }
        // Nothing names where the node keeps the job's bundle.
        let mountinfo = section("mountinfo", until: "env")
        #expect(!mountinfo.isEmpty, "\(run.summary)")
        for line in mountinfo {
            let root = line.split(separator: " ").dropFirst(3).first.map(String.init) ?? ""
            #expect(!root.hasSuffix("/rootfs") && !root.contains("bundles"), "\(line)")
        }
        if let directories = kind.ociKind?.directories {
            #expect(!run.stdout.contains(directories.bundles), "\(run.summary)")
            #expect(!run.stdout.contains(directories.state), "\(run.summary)")
        }
        await H.expectHostUnharmed(after: run)
    }
}
