import Foundation
import Glibc
import HangarShared
import Testing

@testable import HangarNode

@Suite("Node resources are values: two nodes in one process share none")
struct NodeResourcesTests {
    @Test("two nodes' sandbox users and subnets are handed out independently")
    func independentPools() {
        let first = NodeResources(users: SandboxUsers(first: 3_000_000, count: 2))
        let second = NodeResources(users: SandboxUsers(first: 3_000_000, count: 2))
        #expect(first.users !== second.users)
        #expect(first.users.acquire() == 3_000_000)
        #expect(first.users.acquire() == 3_000_001)
        #expect(first.users.acquire() == nil)
        // The second node's pool did not move: its first uid is still free.
        #expect(second.users.inUse == 0)
        #expect(second.users.acquire() == 3_000_000)
        first.users.release(3_000_001)
        #expect(second.users.inUse == 1)

        #expect(first.namespaces !== second.namespaces)
        // Every subnet of the first node is taken; the second node still has all of its own.
        var taken = Set<Int>()
        while let subnet = first.subnets.take() { taken.insert(subnet) }
        #expect(taken.count == SubnetPool.capacity)
        #expect(first.subnets.take() == nil)
        let other = second.subnets.take()
        #expect(other.map(taken.contains) == true, "a subnet index outside the pool: \(String(describing: other))")
        first.subnets.give(other ?? 0)
        #expect(first.subnets.take() == other)
    }

    @Test(
        "a runtime draws its sandbox users from the resources it was given, not from another node's",
        .enabled(if: geteuid() == 0, "sandbox users are only used by a root node")
    )
    func runtimesUseTheirOwn() async {
        let exhausted = NodeResources(users: SandboxUsers(first: 3_100_000, count: 1))
        let held = exhausted.users.acquire()
        #expect(held == 3_100_000)
        let spare = NodeResources(users: SandboxUsers(first: 3_100_100, count: 1))

        let refused = await ProcessRuntime(resources: exhausted).run(job(["true"]), jobID: "resources-a")
        #expect(refused.status == .error)
        #expect(refused.message == "refusing to run the job: all 1 sandbox users are in use")

        let ran = await ProcessRuntime(resources: spare).run(job(["true"]), jobID: "resources-b")
        #expect(ran.status == .succeeded, "\(ran.message)")
        // Its uid went back to its own pool once the job was gone; the other pool is untouched.
        #expect(spare.users.inUse == 0)
        #expect(spare.users.acquire() == 3_100_100)
        #expect(exhausted.users.inUse == 1)
    }

    @Test(
        "a sandbox is noted in the ledger of the resources it was made with, and only that ledger's sweep takes it down",
        .enabled(if: geteuid() == 0, "only a root node keeps a ledger")
    )
    func ledgersAreTheirOwn() async throws {
        // Two nodes in one process, each with a ledger of its own named for a process that has
        // exited: a sweep of either directory is what that node's successor does after a crash.
        let base = try LeftoverSweepTests.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: base) }
        let (deadA, deadB) = (try LeftoverSweepTests.exitedProcess(), try LeftoverSweepTests.exitedProcess())
        let a = NodeResources(
            users: SandboxUsers(first: 3_400_000, count: 4),
            ledger: SandboxLedger(directory: base.path + "/a")
        )
        let b = NodeResources(
            users: SandboxUsers(first: 3_400_100, count: 4),
            ledger: SandboxLedger(directory: base.path + "/b")
        )
        #expect(a.ledger !== b.ledger)
        try a.ledger.open(identity: deadA)
        try b.ledger.open(identity: deadB)
        defer {
            a.ledger.close()
            b.ledger.close()
        }
        let fileA = a.ledger.directory + "/\(deadA.pid).\(deadA.start).ledger"
        let fileB = b.ledger.directory + "/\(deadB.pid).\(deadB.start).ledger"

        // A job of the first node, running (with a scratch mount besides its cgroup and process).
        let marker = "100.\(UInt32.random(in: 100_000...999_999))"
        let running = Task {
            await ProcessRuntime(resources: a).run(
                job(["/bin/sleep", marker]) {
                    $0.limits.timeoutMs = 60_000
                    $0.filesOut = ["*.txt"]
                },
                jobID: "ledgers-\(marker)"
            )
        }
        try #require(
            await eventually(within: .seconds(30)) { !OCITest.processes(withArgument: marker).isEmpty },
            "the job never started"
        )
        let listed = SandboxLedger.outstandingResources(in: fileA)
        #expect(listed.contains { if case .scratch = $0 { true } else { false } }, "\(listed)")
        #expect(listed.contains { if case .cgroup = $0 { true } else { false } }, "\(listed)")
        #expect(listed.contains { if case .process = $0 { true } else { false } }, "\(listed)")
        #expect(SandboxLedger.outstandingResources(in: fileB) == [], "the other node's ledger lists the job")

        // The other node's sweep takes down what its own ledger lists (nothing) and leaves the job.
        let other = await b.ledger.sweep()
        #expect(other.processes == [deadB.pid])
        #expect(other.removed == [] && other.problems == [])
        #expect(!OCITest.processes(withArgument: marker).isEmpty, "the other node's sweep killed the job")
        #expect(SandboxLedger.outstandingResources(in: fileA) == listed)

        // The first node's sweep takes it down.
        let own = await a.ledger.sweep()
        #expect(own.processes == [deadA.pid])
        #expect(own.problems == [])
        #expect(Set(own.removed) == Set(listed))
        #expect(
            await OCITest.survivors(of: [marker], within: .seconds(10)) == [],
            "the job's program outlived its node's sweep"
        )
        #expect(await running.value.status != .succeeded)
        #expect(!FileManager.default.fileExists(atPath: fileA))
    }

    @Test("two ledgers of one process cannot write the same file")
    func oneFileOneLedger() throws {
        let directory = try LeftoverSweepTests.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let first = SandboxLedger(directory: directory.path)
        let second = SandboxLedger(directory: directory.path)
        try first.open()
        #expect(throws: SandboxLedgerError.self) { try second.open() }
        #expect(!second.isOpen)
        first.close()
        try second.open()
        #expect(second.isOpen)
        second.close()
    }
}
