import Testing

@testable import HangarScheduler

@Suite("CompactJobID: the core's memory of ended jobs keys them exactly")
struct CompactJobIDTests {
    @Test("two keys are equal, and hash alike, exactly when their ids are: short, 32-byte, longer and non-ASCII ids")
    func equalExactlyWhenIdsAre() {
        let ids = [
            "", "j", "j1", "j\u{0}", "j1\u{0}", JobIDSample.typical, JobIDSample.typical + "x",
            String(repeating: "a", count: 32), String(repeating: "a", count: 31) + "b",
            String(repeating: "a", count: 33),
            String(repeating: "a", count: 33) + "b", String(repeating: "é", count: 16),
            String(repeating: "é", count: 17),
            "job-🙂",
        ]
        #expect(Set(ids).count == ids.count)
        for first in ids {
            for second in ids {
                let (a, b) = (CompactJobID(first), CompactJobID(second))
                #expect((a == b) == (first == second), "\(first.debugDescription) vs \(second.debugDescription)")
                if first == second { #expect(a.hashValue == b.hashValue) }
            }
        }
        // A key made from a copy of the id (another string's storage) is the same key.
        let copy = String(decoding: Array(JobIDSample.typical.utf8), as: UTF8.self)
        #expect(CompactJobID(copy) == CompactJobID(JobIDSample.typical))
    }

    @Test("10,000 distinct ids give 10,000 keys, each found again from an equal id")
    func manyDistinctIds() {
        var seen = Set<CompactJobID>()
        for index in 0..<10_000 { seen.insert(CompactJobID("j\(index)-\(JobIDSample.typical)")) }
        #expect(seen.count == 10_000)
        #expect(seen.contains(CompactJobID("j9999-\(JobIDSample.typical)")))
        #expect(!seen.contains(CompactJobID("j10000-\(JobIDSample.typical)")))
    }
}

/// An id as `JobID.make` gives them (24 bytes).
enum JobIDSample {
    static let typical = "j01k2m3n4p5qabcdefgh0001"
}
