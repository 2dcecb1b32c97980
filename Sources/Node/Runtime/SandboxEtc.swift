import Foundation
import HangarShared

/// The `/etc` files a sandbox on the `host` template sees instead of the host's: its accounts
/// (`root` and the sandbox user, named `user`, home `/home/user`, shell `/bin/bash`, the account
/// E2B's clients expect), a `hosts` with localhost only, a `resolv.conf` that is empty or, for a
/// job whose grants name hosts, names its resolver (``JobNetwork/resolverAddress``),
/// `nsswitch.conf` reading files, then DNS for hosts, and the hostname. The
/// host's own accounts, host names and resolvers are never shown to a job.
enum SandboxEtc {
    /// The sandbox user's name.
    static let userName = "user"
    /// The sandbox user's home directory, as `passwd` gives it.
    static let home = "/home/user"

    /// Path (absolute, in the sandbox) and content of each file, for a job running as `uid`/`gid`;
    /// `resolver`: whether the job has a resolver of its own (``Egress/resolves``).
    static func files(uid: UInt32, gid: UInt32, resolver: Bool = false) -> [(path: String, content: Data)] {
        let passwd = """
            root:x:0:0:root:/root:/bin/bash
            \(userName):x:\(uid):\(gid):\(userName):\(home):/bin/bash

            """
        let group = """
            root:x:0:
            \(userName):x:\(gid):

            """
        let hosts = """
            127.0.0.1\tlocalhost
            ::1\tlocalhost ip6-localhost ip6-loopback

            """
        let nsswitch = """
            passwd: files
            group: files
            shadow: files
            hosts: files dns
            networks: files
            protocols: files
            services: files
            ethers: files
            rpc: files

            """
        return [
            ("/etc/passwd", passwd), ("/etc/group", group), ("/etc/hosts", hosts),
            ("/etc/resolv.conf", resolver ? resolvConf : ""),
            ("/etc/nsswitch.conf", nsswitch), ("/etc/hostname", "sandbox\n"),
        ].map { ($0.0, Data($0.1.utf8)) }
    }

    /// The `resolv.conf` of a job with a resolver: one IPv4 name server, no search domains.
    static let resolvConf = "nameserver \(JobNetwork.resolverAddress)\noptions timeout:2 attempts:2\n"

    /// Whether the job `spec` gets a resolver of its own (an allowlist job whose grants name hosts
    /// or allow every address).
    static func hasResolver(_ network: Hangar_V1_NetworkPolicy, _ grants: Hangar_V1_Grants) -> Bool {
        guard network.mode == .networkAllowlist else { return false }
        return (try? Egress(network: network, grants: grants))?.resolves ?? false
    }

    /// What the OCI runtime spec masks by default (`maskedPaths`), plus the kernel command line and
    /// the host's block devices: bound over with nothing (a file) or an empty read-only tmpfs (a
    /// directory), in every runtime.
    static let maskedPaths = [
        "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
        "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap",
        "/proc/cmdline", "/sys/block",
    ]
    /// What the OCI runtime spec makes read-only by default (`readonlyPaths`).
    static let readonlyPaths = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
}
