import Foundation
import Glibc
import HangarShared
import HangarTestSupport
import Testing

@testable import HangarNode

/// `NETWORK_ALLOWLIST` in stateful sandboxes, real bubblewrap (and runc where it is there) with the
/// real agent and a real peer network namespace (``TestPeer``, TEST-NET-style `10.253.K.x`
/// addresses on a veth pair; nothing leaves the machine): the allowed peer address answers, the
/// peer's other address does not, and the sandbox's namespace and veth are gone after its kill.
@Suite("Stateful sandboxes: NETWORK_ALLOWLIST", .enabled(if: geteuid() == 0), .serialized)
struct SandboxNetworkTests {
    /// Tries both peer addresses from inside the sandbox: `allowed OPEN`, `other BLOCKED`.
    static let probe = """
        import socket, sys
        def attempt(host):
            try:
                with socket.create_connection((host, 8080), timeout=2) as s:
                    return 'OPEN' if s.recv(64).startswith(b'hello') else 'OTHER'
            except OSError:
                return 'BLOCKED'
        print('allowed', attempt(sys.argv[1]))
        print('other', attempt(sys.argv[2]))
        """

    /// Connects to `named.test` and `other.test` on port 8080 by name: `named OPEN:<greeting>` or
    /// NXDOMAIN, BLOCKED, FAILED; the same for `other`.
    static let nameProbe = """
        import socket
        def attempt(name):
            try:
                with socket.create_connection((name, 8080), timeout=2) as s:
                    return 'OPEN:' + s.recv(64).decode()
            except socket.gaierror as error:
                return 'NXDOMAIN' if error.errno == socket.EAI_NONAME else 'FAILED'
            except OSError:
                return 'BLOCKED'
        print('named', attempt('named.test'))
        print('other', attempt('other.test'))
        """

    /// A peer serving DNS (`named.test` its first address, `other.test` its second), and the
    /// grants and policy of a sandbox allowed `named.test:8080` only. The caller stops the peer.
    static func namedPeer() async throws -> (TestPeer, Hangar_V1_Grants, Hangar_V1_NetworkPolicy) {
        let peer = try TestPeer.start(tag: uniqueTag(), subnet: .testNet)
        do {
            let listening = await eventually(within: .seconds(10)) { peer.listening }
            try #require(listening)
            try peer.startDNS(["named.test": peer.address(2), "other.test": peer.address(3)])
        } catch {
            peer.stop()
            throw error
        }
        var grants = Hangar_V1_Grants()
        grants.allowNet = ["named.test:8080"]
        var network = Hangar_V1_NetworkPolicy()
        network.mode = .networkAllowlist
        return (peer, grants, network)
    }

    static func policy(_ peer: TestPeer) -> Hangar_V1_NetworkPolicy {
        var network = Hangar_V1_NetworkPolicy()
        network.mode = .networkAllowlist
        network.allow = [peer.address(2) + "/32"]
        return network
    }

    static func gone(namespace: String, interface: String) -> Bool {
        !FileManager.default.fileExists(atPath: "/run/netns/" + namespace)
            && !FileManager.default.fileExists(atPath: "/sys/class/net/" + interface)
    }

    @Test("process sandbox: the allowed peer answers, its other address does not; the namespace goes with the kill")
    func process() async throws {
        let agentPath = try #require(ProcessSandbox.locateAgent(), "hangar-sandbox-agent is not built")
        let peer = try TestPeer.start(tag: uniqueTag())
        defer { peer.stop() }
        let listening = await eventually(within: .seconds(10)) { peer.listening }
        try #require(listening, "the peer's server did not listen on \(peer.address(2)):8080 within 10 s")
        let sandbox = try await ProcessSandbox.start(
            id: "net-\(uniqueTag())",
            network: Self.policy(peer),
            agentPath: agentPath
        )
        let namespace = try #require(sandbox.networkNamespace, "the sandbox has no network of its own")
        let interface = try #require(sandbox.networkInterface)
        do {
            #expect(FileManager.default.fileExists(atPath: "/run/netns/" + namespace))
            let result = try await run(sandbox, ["python3", "-c", Self.probe, peer.address(2), peer.address(3)])
            #expect(result.exited?.exitCode == 0, "\(text(result.stderr))")
            #expect(text(result.stdout) == "allowed OPEN\nother BLOCKED\n", "\(text(result.stderr))")
            // The same from a command as root of the sandbox (no capability over the namespace).
            let root = try await run(sandbox, ["python3", "-c", Self.probe, peer.address(2), peer.address(3)]) {
                $0.user = "root"
            }
            #expect(text(root.stdout) == "allowed OPEN\nother BLOCKED\n", "\(text(root.stderr))")
        } catch {
            await sandbox.kill()
            throw error
        }
        #expect(await sandbox.kill() == nil)
        #expect(Self.gone(namespace: namespace, interface: interface), "\(namespace) or \(interface) is left behind")
    }

    @Test(
        "container sandbox: the allowed peer answers, its other address does not; the namespace goes with the kill",
        .enabled(if: access("/usr/sbin/runc", X_OK) == 0)
    )
    func container() async throws {
        let agentPath = try #require(ProcessSandbox.locateAgent(), "hangar-sandbox-agent is not built")
        let peer = try TestPeer.start(tag: uniqueTag())
        defer { peer.stop() }
        let listening = await eventually(within: .seconds(10)) { peer.listening }
        try #require(listening, "the peer's server did not listen on \(peer.address(2)):8080 within 10 s")
        let sandbox = try await ContainerSandbox.start(
            id: "net-\(uniqueTag())",
            network: Self.policy(peer),
            agentPath: agentPath,
            runtime: ContainerSandboxTests.runtime
        )
        let namespace = try #require(sandbox.networkNamespace, "the sandbox has no network of its own")
        let interface = try #require(sandbox.networkInterface)
        do {
            let result = try await ContainerSandboxTests.run(
                sandbox,
                ["python3", "-c", Self.probe, peer.address(2), peer.address(3)]
            )
            #expect(result.exited?.exitCode == 0, "\(text(result.stderr))")
            #expect(text(result.stdout) == "allowed OPEN\nother BLOCKED\n", "\(text(result.stderr))")
        } catch {
            await sandbox.kill()
            throw error
        }
        #expect(await sandbox.kill() == nil)
        #expect(Self.gone(namespace: namespace, interface: interface), "\(namespace) or \(interface) is left behind")
    }

    @Test(
        "process sandbox granted a host name: it resolves through the sandbox's own resolver and connects; others NXDOMAIN"
    )
    func byName() async throws {
        let agentPath = try #require(ProcessSandbox.locateAgent(), "hangar-sandbox-agent is not built")
        let (peer, grants, network) = try await Self.namedPeer()
        defer { peer.stop() }
        let resources = NodeResources(
            users: SandboxUsers(first: 3_500_200, count: 4),
            dnsUpstream: try #require(DNSUpstream(peer.address(2)))
        )
        let sandbox = try await ProcessSandbox.start(
            id: "name-\(uniqueTag())",
            grants: grants,
            network: network,
            agentPath: agentPath,
            resources: resources
        )
        do {
            let result = try await run(sandbox, ["python3", "-c", Self.nameProbe])
            #expect(
                text(result.stdout) == "named OPEN:hello@\(peer.address(2)):8080\nother NXDOMAIN\n",
                "\(text(result.stderr)) dns: \(peer.dnsLog.suffix(800))"
            )
        } catch {
            await sandbox.kill()
            throw error
        }
        #expect(await sandbox.kill() == nil)
    }

    @Test(
        "an allowlist sandbox outlives its node: the next node's adopt() starts its resolver again, names resolve and connect, others stay NXDOMAIN"
    )
    func allowlistReadopted() async throws {
        let agentPath = try #require(ProcessSandbox.locateAgent(), "hangar-sandbox-agent is not built")
        let (peer, grants, network) = try await Self.namedPeer()
        defer { peer.stop() }
        let upstream = try #require(DNSUpstream(peer.address(2)))
        let original = try await ProcessSandbox.start(
            id: "rename-\(uniqueTag())",
            grants: grants,
            network: network,
            agentPath: agentPath,
            resources: NodeResources(users: SandboxUsers(first: 3_500_210, count: 4), dnsUpstream: upstream)
        )
        let expected = "named OPEN:hello@\(peer.address(2)):8080\nother NXDOMAIN\n"
        // The resolved address, by itself: open while the resolver's entry for it lasts.
        let direct = [
            "python3", "-c",
            "import socket\ntry:\n socket.create_connection(('\(peer.address(2))', 8080), timeout=1)\n print('OPEN')\nexcept OSError:\n print('BLOCKED')",
        ]
        let saved: ProcessSandbox.Saved
        do {
            let before = try await run(original, ["python3", "-c", Self.nameProbe])
            #expect(text(before.stdout) == expected, "\(text(before.stderr)) dns: \(peer.dnsLog.suffix(800))")
            #expect(text(try await run(original, direct).stdout) == "OPEN\n")
            saved = try #require(original.saved, "an allowlist sandbox can be re-adopted")
            #expect(saved.network?.name == original.networkNamespace)
        } catch {
            await original.kill()
            throw error
        }
        original.detach()  // the node goes away, its resolver with it
        // The next node process: pools of its own (this uid and subnet are free there).
        let resources = NodeResources(users: SandboxUsers(first: 3_500_210, count: 4), dnsUpstream: upstream)
        let adopted = try await ProcessSandbox.adopt(saved, resources: resources, logger: .init(label: "test")).get()
        do {
            // The old resolver's entries went with it (their expiries lived in its process): the
            // address is closed until its name is resolved again.
            #expect(text(try await run(adopted, direct).stdout) == "BLOCKED\n")
            let after = try await run(adopted, ["python3", "-c", Self.nameProbe])
            #expect(text(after.stdout) == expected, "\(text(after.stderr)) dns: \(peer.dnsLog.suffix(800))")
            // Only the granted port, as before.
            let port = try await run(
                adopted,
                [
                    "python3", "-c",
                    "import socket\ntry:\n socket.create_connection(('named.test', 8081), timeout=1)\n print('OPEN')\nexcept OSError:\n print('BLOCKED')",
                ]
            )
            #expect(text(port.stdout) == "BLOCKED\n", "\(text(port.stderr))")
        } catch {
            await adopted.kill()
            throw error
        }
        #expect(await adopted.kill() == nil)
        #expect(!FileManager.default.fileExists(atPath: "/run/netns/" + (saved.network?.name ?? "")))
        #expect(resources.users.inUse == 0)
        _ = await original.kill()  // the first node's handle: its bubblewrap has ended
    }

    @Test(
        "an allowlist container sandbox outlives its node: adopt() takes its network over; the allowed peer still answers, the other address does not"
    )
    func containerAllowlistReadopted() async throws {
        guard access("/usr/sbin/runc", X_OK) == 0 else { return }
        let agentPath = try #require(ProcessSandbox.locateAgent(), "hangar-sandbox-agent is not built")
        let peer = try TestPeer.start(tag: uniqueTag())
        defer { peer.stop() }
        let listening = await eventually(within: .seconds(10)) { peer.listening }
        try #require(listening, "the peer's server did not listen on \(peer.address(2)):8080 within 10 s")
        let original = try await ContainerSandbox.start(
            id: "cnet-\(uniqueTag())",
            network: Self.policy(peer),
            agentPath: agentPath,
            runtime: ContainerRuntime()
        )
        let probe = ["python3", "-c", Self.probe, peer.address(2), peer.address(3)]
        let saved: ContainerSandbox.Saved
        do {
            let before = try await execute(original, probe, within: .seconds(20))
            #expect(text(before.stdout) == "allowed OPEN\nother BLOCKED\n", "\(text(before.stderr))")
            saved = try #require(original.saved, "an allowlist container sandbox can be re-adopted")
            #expect(saved.network?.name == original.networkNamespace)
        } catch {
            await original.kill()
            throw error
        }
        original.detach()  // the node goes away
        let resources = NodeResources(users: SandboxUsers.standard())
        let adopted = try await ContainerSandbox.adopt(
            saved,
            engine: ContainerRuntime(resources: resources).engine,
            logger: .init(label: "test")
        ).get()
        do {
            let after = try await execute(adopted, probe, within: .seconds(20))
            #expect(text(after.stdout) == "allowed OPEN\nother BLOCKED\n", "\(text(after.stderr))")
        } catch {
            await adopted.kill()
            throw error
        }
        #expect(await adopted.kill() == nil)
        let network = try #require(saved.network)
        #expect(Self.gone(namespace: network.name, interface: network.hostInterface))
        #expect(resources.users.inUse == 0)
        if let user = saved.hostUser { NodeResources.standard.users.release(user) }
        _ = await original.kill()  // the first node's handle: its runc run has returned
    }

    @Test("without an allowlist a sandbox has only loopback and no namespace of the node's")
    func loopbackOnly() async throws {
        let agentPath = try #require(ProcessSandbox.locateAgent(), "hangar-sandbox-agent is not built")
        let sandbox = try await ProcessSandbox.start(id: "lo-\(uniqueTag())", agentPath: agentPath)
        #expect(sandbox.networkNamespace == nil)
        let links = try await run(sandbox, ["sh", "-c", "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '"])
        #expect(text(links.stdout) == "lo\n")
        #expect(await sandbox.kill() == nil)
    }
}
