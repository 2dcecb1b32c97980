import Foundation
import GRDB
import HangarNATS
import HangarShared
import Testing

/// Every request and reply size edge gets a clear, correct answer; nothing hangs.
@Suite("Request and reply size edges")
struct SizeEdgeTests {
    /// `request` serialized and padded with an unknown length-delimited field (number 1000) to exactly
    /// `size` bytes.
    private func padded(_ request: Hangar_V1_SubmitRequest, to size: Int) throws -> Data {
        var bytes = try request.serializedData()
        func varint(_ value: Int) -> [UInt8] {
            var value = UInt64(value)
            var out: [UInt8] = []
            while value >= 0x80 {
                out.append(UInt8(truncatingIfNeeded: value) | 0x80)
                value >>= 7
            }
            out.append(UInt8(value))
            return out
        }
        let tag = varint(1000 << 3 | 2)
        var length = size - bytes.count - tag.count - 4
        while bytes.count + tag.count + varint(length).count + length < size { length += 1 }
        while bytes.count + tag.count + varint(length).count + length > size { length -= 1 }
        bytes.append(contentsOf: tag + varint(length))
        bytes.append(Data(repeating: 0x7A, count: length))
        #expect(bytes.count == size)
        return bytes
    }

    private func reply(_ payload: Data, _ cluster: TestCluster, batch: Bool = false) async throws -> NATSMessage {
        try await cluster.client.request(
            Subjects.submit(tenant: "acme"),
            payload: payload,
            headers: batch ? [SubmitBatch.header: SubmitBatch.value] : [:],
            timeout: .seconds(60)
        )
    }

    @Test(
        "a request of exactly max_payload is LIMIT_EXCEEDED naming the maximum; one at the maximum is accepted without its unknown fields"
    )
    func requestEdges() async throws {
        try await withCluster(nodes: 1, slots: 4) { cluster in
            let maxPayload = cluster.client.maxPayload
            #expect(maxPayload == LocalNATSServer.maxPayload)
            let limit = maxPayload - 4096
            var request = command("/bin/true", runtime: "null")
            request.requestID = "edge-over"
            let over = try Hangar_V1_SubmitReply(
                serializedBytes: try await reply(try padded(request, to: maxPayload), cluster).payload
            )
            guard case .rejected(let rejected) = over.outcome else {
                Issue.record("expected a rejection, got \(over)")
                return
            }
            #expect(rejected.reason == .limitExceeded, "\(rejected)")
            #expect(
                rejected.message.contains("\(limit) bytes") && rejected.message.contains("\(maxPayload)"),
                "\(rejected.message)"
            )
            #expect(rejected.retryAfterMs == 0)

            // At the limit: accepted (the stream takes it with the scheduler's headers), and what is
            // stored is the validated request, not the padding.
            request.requestID = "edge-at"
            request.wait = true
            let at = try Hangar_V1_SubmitReply(
                serializedBytes: try await reply(try padded(request, to: limit), cluster).payload
            )
            guard case .result(let result) = at.outcome else {
                Issue.record("expected a result, got \(at)")
                return
            }
            #expect(result.status == .succeeded)
            let database = try DatabaseQueue(path: cluster.databasePath)
            let stored = try await database.read { db in
                try Int.fetchOne(db, sql: "SELECT length(request) FROM jobs WHERE id = ?", arguments: [result.jobID])
            }
            #expect((stored ?? .max) < 1024, "stored request bytes: \(String(describing: stored))")
        }
    }

    @Test("a wait-mode batch whose results exceed max_payload is answered: output left out and flagged")
    func batchReplyFits() async throws {
        try await withCluster(nodes: 1, slots: 4) { cluster in
            var batch = Hangar_V1_SubmitBatchRequest()
            for _ in 0..<3 {
                var request = command(
                    "/bin/sh",
                    "-c",
                    "head -c 4000000 /dev/zero; head -c 4000000 /dev/zero >&2",
                    timeoutMs: 60_000
                )
                request.limits.outputBytes = 4 << 20
                request.wait = true
                batch.requests.append(request)
            }
            let answer = try await reply(try batch.serializedData(), cluster, batch: true)
            #expect(answer.payload.count <= cluster.client.maxPayload)
            let replies = try Hangar_V1_SubmitBatchReply(serializedBytes: answer.payload).replies
            #expect(replies.count == 3)
            var omitted = 0
            for reply in replies {
                guard case .result(let result) = reply.outcome else {
                    Issue.record("expected a result, got \(reply)")
                    continue
                }
                #expect(result.status == .succeeded, "\(result.status) \(result.message)")
                #expect(result.usage.stdoutBytes == 4_000_000 && result.usage.stderrBytes == 4_000_000)
                if result.outputOmitted {
                    omitted += 1
                    #expect(result.stdout.isEmpty && result.stderr.isEmpty)
                    // The whole result is stored: fetched by id it has its output.
                    var lookup = Hangar_V1_JobRequest()
                    lookup.jobID = result.jobID
                    let full = try await cluster.client.request(
                        Subjects.job(tenant: "acme"),
                        payload: try lookup.serializedData(),
                        timeout: .seconds(30)
                    )
                    let job = try Hangar_V1_JobReply(serializedBytes: full.payload)
                    #expect(job.result.stdout.count == 4_000_000 && !job.result.outputOmitted)
                } else {
                    #expect(result.stdout.count == 4_000_000)
                }
            }
            #expect(omitted >= 1)
        }
    }

    @Test("a batch that does not decode is answered with a SubmitBatchReply that says why")
    func undecodableBatch() async throws {
        try await withCluster(nodes: 1, slots: 4) { cluster in
            let answer = try await reply(Data([0xFF, 0xFF, 0xFF, 0xFF]), cluster, batch: true)
            let decoded = try Hangar_V1_SubmitBatchReply(serializedBytes: answer.payload)
            #expect(decoded.replies.isEmpty)
            #expect(decoded.rejected.reason == .invalidRequest)
            #expect(decoded.rejected.message.contains("SubmitBatchRequest"))
        }
    }
}
