import HangarNode
import Testing

@Suite("SandboxUsers: one host uid per running sandbox")
struct SandboxUsersTests {
    @Test("uids are distinct while held, come back when released, and run out")
    func handsOutDistinctUIDs() {
        let pool = SandboxUsers(first: 5000, count: 3)
        let held = (0..<3).compactMap { _ in pool.acquire() }
        #expect(Set(held) == [5000, 5001, 5002])
        #expect(pool.acquire() == nil, "a fourth sandbox got a uid another one holds")
        pool.release(5001)
        #expect(pool.acquire() == 5001)
        pool.release(7777)  // not the pool's: ignored
        pool.release(5000)
        pool.release(5000)  // twice: handed out once only
        #expect(pool.acquire() == 5000)
        #expect(pool.acquire() == nil)
        #expect(pool.inUse == 3)
    }
}
