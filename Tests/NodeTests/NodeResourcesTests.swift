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
}
