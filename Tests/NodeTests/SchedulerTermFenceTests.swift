import Foundation
import HangarNode
import HangarTestSupport
import Logging
import Testing

@Suite("Scheduler term fence: the highest term seen, kept in the node's state folder")
struct SchedulerTermFenceTests {
    private let logger = Logger(label: "test")

    @Test("term 5 then 3: the second is refused, naming both; 5 again and 7 are admitted; 0 always")
    func staleRefused() throws {
        let directory = try makeTemporaryDirectory("hangar-term")
        defer { try? FileManager.default.removeItem(at: directory) }
        let fence = SchedulerTermFence(stateDirectory: directory.path, logger: logger)
        #expect(fence.highestSeen == 0)
        #expect(fence.admit(0) == nil)
        #expect(fence.admit(5) == nil)
        #expect(fence.admit(3) == .stale(term: 3, highest: 5))
        #expect(
            SchedulerTermRefusal.stale(term: 3, highest: 5).description
                == "from scheduler term 3, but term 5 has been seen: a newer scheduler leads"
        )
        #expect(fence.admit(5) == nil)
        #expect(fence.admit(0) == nil)
        #expect(fence.admit(7) == nil)
        #expect(fence.highestSeen == 7)
        #expect(fence.admit(5) == .stale(term: 5, highest: 7))
    }

    @Test("the term is kept across a restart: a new fence on the same folder still refuses term 3")
    func keptAcrossRestart() throws {
        let directory = try makeTemporaryDirectory("hangar-term")
        defer { try? FileManager.default.removeItem(at: directory) }
        let first = SchedulerTermFence(stateDirectory: directory.path, logger: logger)
        #expect(first.admit(5) == nil)
        let file = directory.appendingPathComponent(SchedulerTermFence.fileName)
        #expect(try String(contentsOf: file, encoding: .utf8) == "5\n")
        // Nothing but the kept file is left behind (the temporary one was renamed over it).
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory.path) == [SchedulerTermFence.fileName])

        let restarted = SchedulerTermFence(stateDirectory: directory.path, logger: logger)
        #expect(restarted.highestSeen == 5)
        #expect(restarted.admit(3) == .stale(term: 3, highest: 5))
        #expect(restarted.admit(0) == nil)
    }

    @Test("a state folder that does not exist yet is made when a term is first kept")
    func makesFolder() throws {
        let directory = try makeTemporaryDirectory("hangar-term")
        defer { try? FileManager.default.removeItem(at: directory) }
        let state = directory.appendingPathComponent("state/nested")
        let fence = SchedulerTermFence(stateDirectory: state.path, logger: logger)
        #expect(fence.admit(2) == nil)
        #expect(SchedulerTermFence(stateDirectory: state.path, logger: logger).highestSeen == 2)
    }

    @Test("a term that cannot be kept is not admitted (a restart would forget it)")
    func unkeptRefused() throws {
        let directory = try makeTemporaryDirectory("hangar-term")
        defer { try? FileManager.default.removeItem(at: directory) }
        // The "state folder" is a file: nothing can be written under it.
        let blocker = directory.appendingPathComponent("not-a-folder")
        try Data("x".utf8).write(to: blocker)
        let fence = SchedulerTermFence(stateDirectory: blocker.path, logger: logger)
        guard case .notKept(let term, let file, _) = fence.admit(4) else {
            Issue.record("a term that could not be kept was admitted")
            return
        }
        #expect(term == 4 && file.hasSuffix(SchedulerTermFence.fileName))
        #expect(fence.highestSeen == 0)
        #expect(fence.admit(0) == nil)
    }

    @Test("a kept file that is not a number counts as 0; without a state folder the term lives in memory")
    func unreadableAndMemory() throws {
        let directory = try makeTemporaryDirectory("hangar-term")
        defer { try? FileManager.default.removeItem(at: directory) }
        try Data("garbage".utf8).write(to: directory.appendingPathComponent(SchedulerTermFence.fileName))
        #expect(SchedulerTermFence(stateDirectory: directory.path, logger: logger).highestSeen == 0)

        let memory = SchedulerTermFence(stateDirectory: nil, logger: logger)
        #expect(memory.file == nil)
        #expect(memory.admit(9) == nil)
        #expect(memory.admit(8) == .stale(term: 8, highest: 9))
    }
}
