import Foundation
import Testing

@testable import HangarScheduler

/// Stored databases hold hashes over these bytes: their format must never change.
@Suite("Audit chain format")
struct AuditChainFormatTests {
    @Test("a row's canonical bytes and hash are the documented ones (UTF-8 lengths, a missing job id empty)")
    func canonicalBytes() {
        let row = AuditChain.canonical(
            seq: 12,
            at: 1700,
            actor: "tenant:acme",
            event: "job.accepted",
            jobID: "j1",
            detail: "nüll"
        )
        #expect(String(decoding: row, as: UTF8.self) == "2:12|4:1700|11:tenant:acme|12:job.accepted|2:j1|5:nüll|")
        #expect(
            AuditChain.hash(previous: AuditChain.genesis, canonical: row)
                == "7911e9cd55ed3de62e6e72819af7ca46dd396fa70387bd3942fb2d4c68783c05"
        )
        let noJob = AuditChain.canonical(seq: 1, at: 0, actor: "nats", event: "auth.failed", jobID: nil, detail: "")
        #expect(String(decoding: noJob, as: UTF8.self) == "1:1|1:0|4:nats|11:auth.failed|0:|0:|")
    }
}
